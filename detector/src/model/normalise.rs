//! The feature normaliser: per feature an optional log1p, then standardisation and clipping.
//! Fitted on training rows only and stored with the model (docs/model.md, "Normaliser").

use serde::{Deserialize, Serialize};

/// z-values are clipped to ±this: one absurd counter must not dominate a score.
pub const CLIP: f32 = 8.0;
/// Standard deviations below this are raised to it, so a feature constant in training cannot
/// turn a small difference at scoring time into an unbounded z-value.
pub const STD_FLOOR: f32 = 1e-2;
/// A non-negative feature is log-scaled when its maximum is at least this many times
/// (its median + 1): it spans decades or has a heavy tail (bytes, durations, counts).
pub const LOG_RATIO: f32 = 10.0;
/// At most this many rows are sorted per feature to find the median.
const MEDIAN_SAMPLE: usize = 20_000;

/// What is applied to a raw value before standardisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    /// The value itself.
    Identity,
    /// `ln(1 + max(x, 0))`.
    Log1p,
    /// `sign(x) · ln(1 + |x|)`: the generic transform of a feature set no data was fitted on.
    SignedLog1p,
}

/// Per-feature transform, mean and standard deviation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normaliser {
    /// Feature names, in row order.
    pub features: Vec<String>,
    /// Transform per feature.
    pub transform: Vec<Transform>,
    /// Mean of the transformed training values.
    pub mean: Vec<f32>,
    /// Standard deviation of the transformed training values (floored at [`STD_FLOOR`]).
    pub std: Vec<f32>,
    /// Rows it was fitted on; 0 for the generic, unfitted normaliser.
    pub fitted_rows: u64,
}

impl Normaliser {
    /// The normaliser of a feature set without data: signed log1p, mean 0, std 1.
    pub fn unfitted(features: Vec<String>) -> Self {
        let n = features.len();
        Normaliser {
            features,
            transform: vec![Transform::SignedLog1p; n],
            mean: vec![0.0; n],
            std: vec![1.0; n],
            fitted_rows: 0,
        }
    }

    /// Fits on `rows` (row-major, `features.len()` values each). Log-scales a feature when every
    /// value is ≥ 0 and max ≥ [`LOG_RATIO`] · (median + 1). With no rows, returns
    /// [`Normaliser::unfitted`].
    pub fn fit(features: Vec<String>, rows: &[f32]) -> Self {
        let d = features.len();
        if d == 0 || rows.len() < d {
            return Self::unfitted(features);
        }
        let n = rows.len() / d;
        let stride = n.div_ceil(MEDIAN_SAMPLE).max(1);
        let mut transform = Vec::with_capacity(d);
        let mut mean = Vec::with_capacity(d);
        let mut std = Vec::with_capacity(d);
        let mut col: Vec<f32> = Vec::with_capacity(n);
        for j in 0..d {
            col.clear();
            col.extend((0..n).map(|i| clean(rows[i * d + j])));
            let min = col.iter().copied().fold(f32::INFINITY, f32::min);
            let max = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let t = if min >= 0.0 {
                let mut sample: Vec<f32> = col.iter().step_by(stride).copied().collect();
                let mid = sample.len() / 2;
                let (_, median, _) = sample.select_nth_unstable_by(mid, f32::total_cmp);
                if max >= LOG_RATIO * (*median + 1.0) {
                    Transform::Log1p
                } else {
                    Transform::Identity
                }
            } else {
                Transform::Identity
            };
            let (mut s, mut s2) = (0f64, 0f64);
            for &v in &col {
                let v = apply_transform(t, v) as f64;
                s += v;
                s2 += v * v;
            }
            let m = s / n as f64;
            let var = (s2 / n as f64 - m * m).max(0.0);
            transform.push(t);
            mean.push(m as f32);
            std.push((var.sqrt() as f32).max(STD_FLOOR));
        }
        Normaliser {
            features,
            transform,
            mean,
            std,
            fitted_rows: n as u64,
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// True when there are no features.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Normalises `n` raw rows into `out` (both `n · len()` values). Builds a [`Plan`] for the
    /// call; a caller that normalises batch after batch keeps one instead.
    pub fn apply(&self, raw: &[f32], out: &mut [f32]) {
        Plan::of(self).apply(raw, out)
    }

    /// Normalises `raw` into a new vector.
    pub fn apply_vec(&self, raw: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; raw.len()];
        self.apply(raw, &mut out);
        out
    }

    /// Checks lengths and values (a model file is outside input).
    pub fn validate(&self) -> Result<(), String> {
        let d = self.features.len();
        if self.transform.len() != d || self.mean.len() != d || self.std.len() != d {
            return Err(format!(
                "normaliser has {d} features but {} transforms, {} means, {} stds",
                self.transform.len(),
                self.mean.len(),
                self.std.len()
            ));
        }
        for j in 0..d {
            if !self.mean[j].is_finite() || !self.std[j].is_finite() || self.std[j] <= 0.0 {
                return Err(format!(
                    "normaliser feature `{}` has mean {} and std {}",
                    self.features[j], self.mean[j], self.std[j]
                ));
            }
        }
        Ok(())
    }
}

/// Lanes of the widest vector the kernel is compiled for (AVX-512: 16 `f32`).
const LANES: usize = 16;

/// [`Normaliser::apply`]'s per-value constants, repeated so that a whole batch is one flat run
/// of values: the arrays hold `period` = lcm(features, [`LANES`]) values (at most 16 rows), so
/// every full period is whole vectors. Walked row by row instead, 78 features left a 14-value
/// tail per row that ran as narrow vectors and scalars.
pub struct Plan {
    features: usize,
    log: Vec<bool>,
    signed: Vec<bool>,
    /// The bits kept of a value before its `ln1p`: all but the sign for signed lanes (|v|),
    /// all for the others (then `max(v, 0)`). A mask, not a select: with a select, LLVM
    /// computed `ln1p` of both candidates and picked one.
    magnitude: Vec<u32>,
    mean: Vec<f32>,
    /// 1 / std: a multiplication per value instead of a division (vectorised divisions do not
    /// pipeline; they were half of this function's time in the scoring bench).
    inv_std: Vec<f32>,
}

impl Plan {
    /// The constants of `n`.
    pub fn of(n: &Normaliser) -> Self {
        let d = n.len();
        let period = if d == 0 { 0 } else { d / gcd(d, LANES) * LANES };
        let tile = |j: usize| j % d.max(1);
        Plan {
            features: d,
            log: (0..period)
                .map(|j| n.transform[tile(j)] != Transform::Identity)
                .collect(),
            signed: (0..period)
                .map(|j| n.transform[tile(j)] == Transform::SignedLog1p)
                .collect(),
            magnitude: (0..period)
                .map(|j| match n.transform[tile(j)] {
                    Transform::SignedLog1p => 0x7fff_ffff,
                    _ => u32::MAX,
                })
                .collect(),
            mean: (0..period).map(|j| n.mean[tile(j)]).collect(),
            inv_std: (0..period).map(|j| 1.0 / n.std[tile(j)]).collect(),
        }
    }

    /// Normalises the whole rows of `raw` into `out` (as [`Normaliser::apply`]). Compiled for
    /// AVX-512 / AVX2 where the CPU has them (same operations, same bits).
    pub fn apply(&self, raw: &[f32], out: &mut [f32]) {
        self.apply_up_to(raw, out, true)
    }

    /// [`Plan::apply`] without AVX-512 even where the CPU has it: what an AVX2-only CPU runs
    /// (for the scoring benchmark). Falls back to the portable code without AVX2.
    pub fn apply_avx2(&self, raw: &[f32], out: &mut [f32]) {
        self.apply_up_to(raw, out, false)
    }

    /// [`Plan::apply`] on the widest code this CPU has, AVX-512 only if `avx512` allows it.
    fn apply_up_to(&self, raw: &[f32], out: &mut [f32], avx512: bool) {
        let d = self.features;
        if d == 0 {
            return;
        }
        let whole = raw.len().min(out.len()) / d * d;
        let (raw, out) = (&raw[..whole], &mut out[..whole]);
        #[cfg(target_arch = "x86_64")]
        {
            if avx512 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { apply_avx512(self, raw, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { apply_avx2(self, raw, out) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = avx512;
        apply_flat(self, raw, out)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The same arithmetic as [`apply_transform`] and the standardisation, written with selects,
/// one period of values at a time (the last one may be shorter: whole rows, not whole vectors).
#[inline(always)]
fn apply_flat(p: &Plan, raw: &[f32], out: &mut [f32]) {
    let period = p.mean.len();
    for (r, o) in raw.chunks(period).zip(out.chunks_mut(period)) {
        let k = r.len();
        let consts = p.log[..k]
            .iter()
            .zip(&p.signed[..k])
            .zip(&p.magnitude[..k])
            .zip(&p.mean[..k])
            .zip(&p.inv_std[..k]);
        let values = o.iter_mut().zip(r);
        for ((oj, &rj), ((((&log, &signed), &magnitude), &mean), &inv_std)) in values.zip(consts) {
            let v = clean(rj);
            // |v| for signed lanes, max(v, 0) for the others.
            let a = f32::from_bits(v.to_bits() & magnitude).max(0.0);
            let l = ln1p(a);
            let l = if signed && v < 0.0 { -l } else { l };
            let t = if log { l } else { v };
            *oj = ((t - mean) * inv_std).clamp(-CLIP, CLIP);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn apply_avx512(p: &Plan, raw: &[f32], out: &mut [f32]) {
    apply_flat(p, raw, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_avx2(p: &Plan, raw: &[f32], out: &mut [f32]) {
    apply_flat(p, raw, out)
}

/// NaN becomes 0 (the importers already map NaN cells to 0); other values pass.
#[inline(always)]
fn clean(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v
    }
}

#[inline(always)]
fn apply_transform(t: Transform, v: f32) -> f32 {
    match t {
        Transform::Identity => v,
        Transform::Log1p => ln1p(v.max(0.0)),
        Transform::SignedLog1p => {
            let l = ln1p(v.abs());
            if v < 0.0 {
                -l
            } else {
                l
            }
        }
    }
}

/// `ln(1 + x)` for `x ≥ 0` (finite or +∞), branch-free, without a division, and several times
/// cheaper than libm's; relative error below 1e-6 (tested). Used for fitting and applying, so
/// both agree exactly.
#[inline(always)]
pub fn ln1p(x: f32) -> f32 {
    // ln 2 in two parts (Cody and Waite): e · LN2_HI is exact for the exponents here.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let u = 1.0 + x;
    // u = 2^e · m with m in [√½, √2): ln u = e·ln2 + ln m.
    let bits = u.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    // ln(1 + f) for f in [√½ − 1, √2 − 1): f − f²/2 + f³·P(f), P the minimax polynomial of
    // Cephes' logf. It replaced 2·atanh(f / (2 + f)), whose division was most of this
    // function's time in the scoring bench (vectorised divisions do not pipeline).
    let f = m - 1.0;
    let z = f * f;
    let p = 7.037_683_6e-2;
    let p = p * f - 1.151_461e-1;
    let p = p * f + 1.167_699_9e-1;
    let p = p * f - 1.242_014_1e-1;
    let p = p * f + 1.424_932_3e-1;
    let p = p * f - 1.666_805_8e-1;
    let p = p * f + 2.000_071_5e-1;
    let p = p * f - 2.499_999_4e-1;
    let p = p * f + 3.333_333e-1;
    let ef = e as f32;
    let ln_u = (f + (p * f * z + ef * LN2_LO - 0.5 * z)) + ef * LN2_HI;
    // u rounded 1 + x; this corrects for the rounding: (x − (u − 1)) / u, with 1/u = 2^-e / m
    // and 1/m taken as 2 − m. That is exact to (m − 1)², so where the correction matters
    // (x tiny, m ≈ 1) it is exact, and elsewhere it is far below an ulp of the result. 2^-e
    // is built from its exponent bits (e is 0..=128 here; at 128, u is infinite and handled
    // below).
    let inv_2e = f32::from_bits(((127 - e).clamp(0, 254) as u32) << 23);
    let corr = (x - (u - 1.0)) * (2.0 - m) * inv_2e;
    let r = ln_u + corr;
    if u == f32::INFINITY {
        f32::INFINITY
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn ln1p_matches_libm() {
        let mut x = 0.0f32;
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            let v = match i % 4 {
                0 => x,
                1 => x * 1e-6,
                2 => x * 1e3,
                _ => (i as f32).powf(2.3),
            };
            let want = (v as f64).ln_1p();
            let got = ln1p(v) as f64;
            let rel = if want == 0.0 {
                got.abs()
            } else {
                ((got - want) / want).abs()
            };
            worst = worst.max(rel);
            x += 0.37;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(ln1p(0.0), 0.0);
        assert!((ln1p(1e12) as f64 - (1e12f64).ln_1p()).abs() < 1e-5);
    }

    #[test]
    fn fit_log_scales_heavy_tailed_counts_only() {
        // f0: bytes-like (0..1e6, heavy tail); f1: a rate in [0, 1]; f2: signed; f3: constant.
        let mut rows = Vec::new();
        for i in 0..1000 {
            let heavy = if i % 50 == 0 { 1e6 } else { (i % 7) as f32 };
            rows.extend_from_slice(&[heavy, (i % 10) as f32 / 10.0, (i as f32) - 500.0, 3.0]);
        }
        let n = Normaliser::fit(names(4), &rows);
        assert_eq!(
            n.transform,
            vec![
                Transform::Log1p,
                Transform::Identity,
                Transform::Identity,
                Transform::Identity
            ]
        );
        assert_eq!(n.fitted_rows, 1000);
        assert_eq!(n.std[3], STD_FLOOR, "constant feature gets the floor");
        let z = n.apply_vec(&rows);
        // Standardised: mean ≈ 0, std ≈ 1 for the varying features.
        for j in 0..3 {
            let col: Vec<f64> = (0..1000).map(|i| z[i * 4 + j] as f64).collect();
            let m = col.iter().sum::<f64>() / 1000.0;
            let v = col.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 1000.0;
            assert!(m.abs() < 1e-3, "feature {j} mean {m}");
            assert!((v.sqrt() - 1.0).abs() < 0.1, "feature {j} std {}", v.sqrt());
        }
        assert!(z.iter().all(|v| v.abs() <= CLIP));
        // Constant feature at its training value → 0; far from it → clipped.
        let out = n.apply_vec(&[0.0, 0.5, 0.0, 3.0]);
        assert_eq!(out[3], 0.0);
        let out = n.apply_vec(&[1e12, f32::NAN, 0.0, 1e9]);
        assert_eq!(out[3], CLIP);
        assert!(out[0] <= CLIP && out[0] > 0.0);
        assert!(out[1].is_finite(), "NaN is read as 0");
    }

    #[test]
    fn apply_equals_the_plain_transform() {
        let mut rows = Vec::new();
        for i in 0..500 {
            rows.extend_from_slice(&[
                (i * i) as f32,
                (i % 3) as f32 - 1.0,
                if i % 7 == 0 { f32::NAN } else { i as f32 },
            ]);
        }
        let mut n = Normaliser::fit(names(3), &rows);
        n.transform[1] = Transform::SignedLog1p;
        let fast = n.apply_vec(&rows);
        for (k, &v) in rows.iter().enumerate() {
            let j = k % 3;
            let t = apply_transform(n.transform[j], clean(v));
            let want = ((t - n.mean[j]) * (1.0 / n.std[j])).clamp(-CLIP, CLIP);
            assert_eq!(fast[k].to_bits(), want.to_bits(), "value {k}");
        }
    }

    #[test]
    fn unfitted_is_signed_log() {
        let n = Normaliser::unfitted(names(2));
        let z = n.apply_vec(&[-(std::f32::consts::E - 1.0), 0.0]);
        assert!((z[0] + 1.0).abs() < 1e-6);
        assert_eq!(z[1], 0.0);
        assert!(n.validate().is_ok());
        assert_eq!(Normaliser::fit(names(2), &[]).fitted_rows, 0);
    }
}

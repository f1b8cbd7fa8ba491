//! Novelty against the host's benign baseline: k-means prototypes of benign embeddings, and the
//! distance of a new embedding to the nearest one turned into [0, 1] by the distribution of
//! held-out benign distances (docs/model.md, "Novelty").

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest magnitude of a prototype value or distance in a model file: far above any embedding
/// a valid network produces (weights within `layers::MAX_PARAM`, inputs clipped), low enough that
/// squared distances stay finite.
pub const MAX_VALUE: f32 = 1e15;

/// Prototypes per feature set, fitted by default.
pub const DEFAULT_K: usize = 8;
/// Fewest benign rows [`Prototypes::fit`] accepts.
pub const MIN_ROWS: usize = 20;
/// Stored benign distances are thinned to at most this many quantiles.
const MAX_DISTANCES: usize = 1024;
/// Lloyd iterations.
const ITERATIONS: usize = 25;

/// Benign prototypes in embedding space and the benign distance distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Prototypes {
    /// Embedding width.
    pub dim: usize,
    /// `k × dim`, row-major.
    centroids: Vec<f32>,
    /// The same centroids laid out for the nearest-centroid search.
    by_dim: ByDim,
    /// Sorted distances of held-out benign embeddings to their nearest centroid.
    benign_distances: Vec<f32>,
    /// The tail of `benign_distances` ([`Tail::of`]): computed once here, not per score (it
    /// takes a logarithm per distance above the 90% quantile).
    tail: Tail,
}

/// The Pareto tail of the benign distances: threshold `u` (the 90% quantile), the novelty at
/// `u`, and the index α.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tail {
    u: f32,
    f_u: f32,
    alpha: f32,
}

impl Tail {
    /// Of sorted distances. None at all get a placeholder: [`Prototypes::novelty`] returns 0
    /// for them without reading it, and [`Prototypes::validate`] refuses them.
    fn of(v: &[f32]) -> Self {
        let m = v.len();
        if m == 0 {
            return Tail {
                u: 1e-6,
                f_u: 0.0,
                alpha: 10.0,
            };
        }
        let u = v[(m * 9 / 10).min(m - 1)].max(1e-6);
        let r_u = v.partition_point(|&x| x <= u);
        let f_u = r_u as f32 / (m as f32 + 1.0);
        let excess = &v[r_u..];
        let mean = if excess.is_empty() {
            0.0
        } else {
            excess.iter().map(|&x| (x / u).ln()).sum::<f32>() / excess.len() as f32
        };
        // Hill: α = 1 / mean log excess; without excesses assume a steep tail.
        let alpha = if mean > 0.0 { 1.0 / mean } else { 10.0 };
        Tail {
            u,
            f_u,
            alpha: alpha.clamp(0.5, 50.0),
        }
    }
}

impl Prototypes {
    /// Prototypes from their parts (a model file); [`Prototypes::validate`] checks them.
    pub fn new(dim: usize, centroids: Vec<f32>, benign_distances: Vec<f32>) -> Self {
        let tail = Tail::of(&benign_distances);
        Prototypes {
            dim,
            by_dim: ByDim::of(&centroids, dim),
            centroids,
            benign_distances,
            tail,
        }
    }

    /// The centroids, `k × dim`, row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// Sorted distances of held-out benign embeddings to their nearest centroid.
    pub fn benign_distances(&self) -> &[f32] {
        &self.benign_distances
    }

    /// Fits on `n` benign embeddings (`n × dim`): k-means++ and Lloyd on three quarters of the
    /// rows, the distance distribution on the other quarter (so it is not the optimistic
    /// in-sample one). `None` with fewer than [`MIN_ROWS`] rows.
    pub fn fit(emb: &[f32], dim: usize, k: usize, seed: u64) -> Option<Self> {
        if dim == 0 {
            return None;
        }
        let n = emb.len() / dim;
        if n < MIN_ROWS || k == 0 {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let n_fit = (n * 3 / 4).max(1);
        let (fit_idx, held_idx) = order.split_at(n_fit);
        let fit_rows = gather_rows(emb, dim, fit_idx);
        let held_rows = gather_rows(emb, dim, held_idx);
        Self::fit_with_reference(&fit_rows, &held_rows, dim, k, &mut rng)
    }

    /// k-means on `fit` (rows of width `dim`), the benign distance distribution from
    /// `reference` (e.g. benign rows of other sessions); `fit` itself when `reference` is empty.
    pub fn fit_with_reference(
        fit: &[f32],
        reference: &[f32],
        dim: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> Option<Self> {
        if dim == 0 || k == 0 || fit.len() < dim {
            return None;
        }
        let n_fit = fit.len() / dim;
        let fit_idx: Vec<usize> = (0..n_fit).collect();
        let row = |i: usize| &fit[i * dim..(i + 1) * dim];
        let k = k.min(n_fit);

        // k-means++ seeding.
        let mut centroids: Vec<f32> = Vec::with_capacity(k * dim);
        centroids.extend_from_slice(row(fit_idx[rng.random_range(0..n_fit)]));
        let mut d2: Vec<f32> = fit_idx
            .iter()
            .map(|&i| sq(row(i), &centroids[..dim]))
            .collect();
        while centroids.len() < k * dim {
            let total: f64 = d2.iter().map(|&v| v as f64).sum();
            let pick = if total <= 0.0 {
                rng.random_range(0..n_fit)
            } else {
                let mut t = rng.random::<f64>() * total;
                let mut p = n_fit - 1;
                for (j, &v) in d2.iter().enumerate() {
                    t -= v as f64;
                    if t <= 0.0 {
                        p = j;
                        break;
                    }
                }
                p
            };
            let c = row(fit_idx[pick]).to_vec();
            for (j, &i) in fit_idx.iter().enumerate() {
                d2[j] = d2[j].min(sq(row(i), &c));
            }
            centroids.extend_from_slice(&c);
        }
        // Lloyd.
        let mut assign = vec![0usize; n_fit];
        for _ in 0..ITERATIONS {
            let mut changed = false;
            let by_dim = ByDim::of(&centroids, dim);
            for (j, &i) in fit_idx.iter().enumerate() {
                let (c, _) = by_dim.nearest(row(i));
                if assign[j] != c {
                    assign[j] = c;
                    changed = true;
                }
            }
            let mut sums = vec![0f64; k * dim];
            let mut counts = vec![0usize; k];
            for (j, &i) in fit_idx.iter().enumerate() {
                counts[assign[j]] += 1;
                for (s, &v) in sums[assign[j] * dim..(assign[j] + 1) * dim]
                    .iter_mut()
                    .zip(row(i))
                {
                    *s += v as f64;
                }
            }
            for c in 0..k {
                if counts[c] > 0 {
                    for t in 0..dim {
                        centroids[c * dim + t] = (sums[c * dim + t] / counts[c] as f64) as f32;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let source = if reference.len() >= dim {
            reference
        } else {
            fit
        };
        let by_dim = ByDim::of(&centroids, dim);
        let mut dist: Vec<f32> = source
            .chunks_exact(dim)
            .map(|e| by_dim.nearest(e).1)
            .collect();
        dist.sort_by(f32::total_cmp);
        if dist.len() > MAX_DISTANCES {
            let m = dist.len();
            dist = (0..MAX_DISTANCES)
                .map(|q| dist[q * (m - 1) / (MAX_DISTANCES - 1)])
                .collect();
        }
        Some(Prototypes::new(dim, centroids, dist))
    }

    /// Distance of an embedding to the nearest prototype.
    pub fn distance(&self, e: &[f32]) -> f32 {
        self.by_dim.nearest(e).1
    }

    /// Novelty in [0, 1]: up to the benign 90% quantile `u`, the fraction of benign distances
    /// at or below this one, `r / (m + 1)`; beyond `u`, a Pareto tail fitted to the benign
    /// distances above `u` (Hill estimator), so that the rare high quantiles that decide alerts
    /// are estimated from the tail's shape rather than from the few largest distances.
    pub fn novelty(&self, e: &[f32]) -> f32 {
        let d = self.distance(e);
        let m = self.benign_distances.len();
        if m == 0 {
            return 0.0;
        }
        let Tail { u, f_u, alpha } = self.tail;
        if d <= u {
            let r = self.benign_distances.partition_point(|&v| v <= d);
            return r as f32 / (m as f32 + 1.0);
        }
        1.0 - (1.0 - f_u) * (u / d).powf(alpha)
    }

    /// Number of prototypes.
    pub fn k(&self) -> usize {
        self.centroids.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Checks lengths and values (a model file is outside input).
    pub fn validate(&self, dim: usize) -> Result<(), String> {
        if self.dim != dim || self.dim == 0 || !self.centroids.len().is_multiple_of(dim) {
            return Err(format!(
                "prototypes of width {} ({} values) for an embedding of width {dim}",
                self.dim,
                self.centroids.len()
            ));
        }
        if self.centroids.is_empty() || self.benign_distances.is_empty() {
            return Err("prototypes without centroids or benign distances".into());
        }
        if !self
            .centroids
            .iter()
            .chain(&self.benign_distances)
            .all(|v| v.is_finite() && v.abs() <= MAX_VALUE)
            || self.benign_distances.windows(2).any(|w| w[0] > w[1])
        {
            return Err(format!(
                "prototype values are not finite, exceed {MAX_VALUE:e}, or distances are not sorted"
            ));
        }
        Ok(())
    }
}

fn gather_rows(emb: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| emb[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// Squared Euclidean distance (k-means++ seeding), summed in eight lanes: one running sum is
/// a chain of dependent additions that the compiler may not reorder, so it would not vectorise.
fn sq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Centroids per [`ByDim::nearest`] step.
const GROUP: usize = 8;

/// The centroids laid out by dimension, in groups of [`GROUP`]: value `t` of centroid
/// `GROUP·g + c` at `values[(g·dim + t)·GROUP + c]`. One step of the search then takes one
/// dimension of eight centroids, lane by lane: no per-centroid horizontal sum, and eight
/// independent sums instead of one dependent chain (that chain made the row-major search
/// latency-bound: ~130 ns for 8 × 32 values). The last group's missing centroids repeat the
/// first one; the search takes the lowest index among equal distances, so they never win.
#[derive(Clone, Debug, PartialEq)]
struct ByDim {
    k: usize,
    dim: usize,
    values: Vec<f32>,
}

impl ByDim {
    fn of(centroids: &[f32], dim: usize) -> Self {
        let k = centroids.len().checked_div(dim).unwrap_or(0);
        let groups = k.div_ceil(GROUP);
        let mut values = vec![0f32; groups * dim * GROUP];
        for g in 0..groups {
            for t in 0..dim {
                for c in 0..GROUP {
                    let i = if g * GROUP + c < k { g * GROUP + c } else { 0 };
                    values[(g * dim + t) * GROUP + c] = centroids[i * dim + t];
                }
            }
        }
        ByDim { k, dim, values }
    }

    /// Index of and Euclidean distance to the nearest centroid (the lowest index among equal
    /// distances). Compiled for AVX-512 / AVX2 where the CPU has them (same operations, same
    /// bits).
    fn nearest(&self, e: &[f32]) -> (usize, f32) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { nearest_avx512(self, e) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { nearest_avx2(self, e) };
            }
        }
        nearest_any(self, e)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn nearest_avx512(v: &ByDim, e: &[f32]) -> (usize, f32) {
    nearest_any(v, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nearest_avx2(v: &ByDim, e: &[f32]) -> (usize, f32) {
    nearest_any(v, e)
}

#[inline(always)]
fn nearest_any(v: &ByDim, e: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    if v.dim == 0 {
        return best;
    }
    for (g, block) in v.values.chunks_exact(v.dim * GROUP).enumerate() {
        // Even and odd dimensions in two sums: two chains of additions, not one.
        let (mut even, mut odd) = ([0f32; GROUP], [0f32; GROUP]);
        let pairs = block.chunks_exact(2 * GROUP);
        let last = pairs.remainder();
        for (col, x) in pairs.zip(e.chunks_exact(2)) {
            for c in 0..GROUP {
                let d = col[c] - x[0];
                even[c] += d * d;
                let d = col[GROUP + c] - x[1];
                odd[c] += d * d;
            }
        }
        if let (false, Some(&x)) = (last.is_empty(), e.get(v.dim - 1)) {
            for c in 0..GROUP {
                let d = last[c] - x;
                even[c] += d * d;
            }
        }
        for c in 0..GROUP.min(v.k - g * GROUP) {
            let d = even[c] + odd[c];
            if d < best.1 {
                best = (g * GROUP + c, d);
            }
        }
    }
    (best.0, best.1.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn novelty_is_low_on_benign_and_high_far_away() {
        // Two benign clusters in 2-D.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut emb = Vec::new();
        for i in 0..400 {
            let c = if i % 2 == 0 { 0.0 } else { 10.0 };
            emb.push(c + rng.random_range(-1.0..1.0));
            emb.push(c + rng.random_range(-1.0..1.0));
        }
        let p = Prototypes::fit(&emb, 2, 4, 9).unwrap();
        assert!(p.validate(2).is_ok());
        let near = p.novelty(&[0.1, -0.1]);
        let mid = p.novelty(&[5.0, 5.0]);
        let far = p.novelty(&[100.0, 100.0]);
        assert!(near < 0.5, "near {near}");
        assert!(mid > 0.99, "mid {mid}");
        assert!(far >= mid && far <= 1.0, "far {far}");
        // A non-decreasing function of the distance, across the tail threshold too.
        let mut pts: Vec<(f32, f32)> = (0..600)
            .map(|i| {
                let e = [i as f32 * 0.03 - 6.0, 3.0 - i as f32 * 0.01];
                (p.distance(&e), p.novelty(&e))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            pts.windows(2).all(|w| w[1].1 >= w[0].1),
            "novelty must not decrease"
        );
        // Benign points get roughly uniform novelty: about 10% above 0.9.
        let above = (0..400)
            .filter(|&i| p.novelty(&emb[i * 2..i * 2 + 2]) > 0.9)
            .count();
        assert!(above < 80, "{above} of 400 benign above 0.9");
        assert!(Prototypes::fit(&emb[..20], 2, 4, 9).is_none());
    }

    #[test]
    fn the_search_by_dimension_finds_the_nearest_centroid() {
        // k not a multiple of the group, odd and even widths, and a tie (centroid 10 repeats
        // centroid 3): the nearest by a plain f64 sum, the lowest index on a tie.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for dim in [1usize, 7, 32] {
            let k = 11;
            let mut c: Vec<f32> = (0..k * dim).map(|_| rng.random_range(-4.0..4.0)).collect();
            let third = c[3 * dim..4 * dim].to_vec();
            c[10 * dim..11 * dim].copy_from_slice(&third);
            let by_dim = ByDim::of(&c, dim);
            for q in 0..200 {
                let e: Vec<f32> = if q == 0 {
                    third.clone()
                } else {
                    (0..dim).map(|_| rng.random_range(-5.0..5.0)).collect()
                };
                let plain: Vec<f64> = c
                    .chunks_exact(dim)
                    .map(|r| {
                        r.iter()
                            .zip(&e)
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum()
                    })
                    .collect();
                let (i, d) = by_dim.nearest(&e);
                let best = plain.iter().cloned().fold(f64::INFINITY, f64::min);
                assert!(
                    (d as f64 - best.sqrt()).abs() < 1e-4,
                    "dim {dim}: {d} vs {best}"
                );
                assert!(
                    plain[i] <= best + 1e-4,
                    "dim {dim}: centroid {i} is not nearest"
                );
                if q == 0 {
                    assert_eq!(i, 3, "a tie goes to the lowest index");
                }
            }
        }
    }
}

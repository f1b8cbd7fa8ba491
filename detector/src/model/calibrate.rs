//! Platt calibration of the head's logit: `p = σ(a · logit + b)`, `a > 0`, fitted by Newton's
//! method on held-out validation rows (docs/model.md, "Calibration").

use serde::{Deserialize, Serialize};

/// Smallest slope kept: the map must stay increasing so that ranking (and the explanation's
/// direction) is the head's.
const MIN_SLOPE: f64 = 1e-3;

/// `p = σ(a · logit + b)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Slope (> 0).
    pub a: f32,
    /// Offset.
    pub b: f32,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { a: 1.0, b: 0.0 }
    }
}

impl Calibration {
    /// Calibrated probability of a logit.
    #[inline]
    pub fn probability(&self, logit: f32) -> f32 {
        sigmoid(self.a * logit + self.b)
    }

    /// Fits `a`, `b` minimising the log loss of `labels` (0/1) given `logits`, with Platt's
    /// target smoothing (`(n₊+1)/(n₊+2)` and `1/(n₋+2)` instead of 1 and 0) against
    /// over-confidence on separable data. Returns the identity map when a class is missing.
    pub fn fit(logits: &[f32], labels: &[u8]) -> Self {
        let n_pos = labels.iter().filter(|&&l| l == 1).count();
        let n_neg = labels.len() - n_pos;
        if n_pos == 0 || n_neg == 0 || logits.len() != labels.len() {
            return Self::default();
        }
        let t_pos = (n_pos as f64 + 1.0) / (n_pos as f64 + 2.0);
        let t_neg = 1.0 / (n_neg as f64 + 2.0);
        let (mut a, mut b) = (1.0f64, 0.0f64);
        let loss = |a: f64, b: f64| -> f64 {
            logits
                .iter()
                .zip(labels)
                .map(|(&z, &y)| {
                    let t = if y == 1 { t_pos } else { t_neg };
                    let u = a * z as f64 + b;
                    // Stable log(1 + e^u) - t·u.
                    u.max(0.0) + (-u.abs()).exp().ln_1p() - t * u
                })
                .sum()
        };
        let mut current = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (&z, &y) in logits.iter().zip(labels) {
                let z = z as f64;
                let t = if y == 1 { t_pos } else { t_neg };
                let p = 1.0 / (1.0 + (-(a * z + b)).exp());
                let r = p - t;
                let w = (p * (1.0 - p)).max(1e-12);
                ga += r * z;
                gb += r;
                haa += w * z * z;
                hab += w * z;
                hbb += w;
            }
            // Small ridge keeps the Newton system solvable on degenerate data.
            let (haa, hbb) = (haa + 1e-9, hbb + 1e-9);
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            // Backtracking: Newton can overshoot far from the optimum.
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-6 {
                let (na, nb) = ((a - step * da).max(MIN_SLOPE), b - step * db);
                let l = loss(na, nb);
                if l <= current {
                    a = na;
                    b = nb;
                    improved = current - l > 1e-10 * current.abs().max(1.0);
                    current = l;
                    break;
                }
                step *= 0.5;
            }
            if !improved {
                break;
            }
        }
        Calibration {
            a: a as f32,
            b: b as f32,
        }
    }

    /// True when the map is finite, increasing and within the bounds of any other parameter.
    pub fn is_valid(&self) -> bool {
        use crate::model::layers::MAX_PARAM;
        self.a.is_finite()
            && self.b.is_finite()
            && self.a > 0.0
            && self.a <= MAX_PARAM
            && self.b.abs() <= MAX_PARAM
    }
}

/// Logistic function, stable for large |x|.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn recovers_a_known_platt_map_and_is_monotone() {
        // Labels drawn from p = σ(0.5·z - 1): the fit should find a ≈ 0.5, b ≈ -1.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut z = Vec::new();
        let mut y = Vec::new();
        for _ in 0..20_000 {
            let v: f32 = rng.random_range(-8.0..8.0);
            let p = sigmoid(0.5 * v - 1.0);
            z.push(v);
            y.push((rng.random::<f32>() < p) as u8);
        }
        let c = Calibration::fit(&z, &y);
        assert!((c.a - 0.5).abs() < 0.05, "{c:?}");
        assert!((c.b + 1.0).abs() < 0.1, "{c:?}");
        assert!(c.is_valid());
        let mut last = -1.0;
        for i in -100..=100 {
            let p = c.probability(i as f32 * 0.5);
            assert!(p >= last, "calibrated probability must not decrease");
            assert!((0.0..=1.0).contains(&p));
            last = p;
        }
    }

    #[test]
    fn separable_and_degenerate_data_stay_finite() {
        let c = Calibration::fit(&[-3.0, -2.0, 2.0, 3.0], &[0, 0, 1, 1]);
        assert!(c.is_valid(), "{c:?}");
        assert!(c.probability(3.0) < 1.0 && c.probability(3.0) > 0.5);
        // Inverted logits: the slope is held positive, not flipped.
        let c = Calibration::fit(&[3.0, 2.0, -2.0, -3.0], &[0, 0, 1, 1]);
        assert!(c.a > 0.0);
        assert_eq!(Calibration::fit(&[1.0], &[1]), Calibration::default());
    }
}

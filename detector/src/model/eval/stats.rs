//! Detection metrics of one scored query set, the operating point, averaged ROC curves, and
//! percentile-bootstrap intervals of means over support draws (per family and macro-averaged).

use rand::Rng;
use serde::Serialize;

use crate::model::metrics;

/// The low false-positive rates EVALUATION.md asks TPR at.
pub const LOW_FPRS: [f64; 2] = [1e-3, 1e-4];

/// False-positive rates of the averaged ROC curves (log-spaced, 10⁻⁴ … 1).
pub fn roc_grid() -> Vec<f64> {
    (0..=32)
        .map(|i| 10f64.powf(-4.0 + i as f64 / 8.0))
        .collect()
}

/// How a method turns a score into an alert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Operating {
    /// Alert when score ≥ t (the model's own alert rule).
    AtLeast(f32),
    /// Alert when score > t (a threshold set on benign rows: at most the target rate above).
    Above(f32),
}

impl Operating {
    /// Whether `s` alerts.
    #[inline]
    pub fn alerts(&self, s: f32) -> bool {
        match *self {
            Operating::AtLeast(t) => s >= t,
            Operating::Above(t) => s > t,
        }
    }

    /// The threshold that lets at most `fpr` of `benign` scores alert (`Above`), from a
    /// sample the method may see (training or support rows, never the query).
    pub fn from_benign(benign: &[f32], fpr: f64) -> Self {
        if benign.is_empty() {
            return Operating::Above(f32::INFINITY);
        }
        let mut v = benign.to_vec();
        v.sort_by(|a, b| b.total_cmp(a));
        let allowed = (fpr * v.len() as f64).floor() as usize;
        Operating::Above(v[allowed.min(v.len() - 1)])
    }
}

/// Every number of one method on one query set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    /// ROC-AUC.
    pub roc_auc: f64,
    /// Average precision (at the query set's own class ratio).
    pub pr_auc: f64,
    /// TPR at FPR ≤ 10⁻³ (threshold from the query's benign scores).
    pub tpr_1e3: f64,
    /// TPR at FPR ≤ 10⁻⁴ (with fewer than 10⁴ benign rows: at zero false positives).
    pub tpr_1e4: f64,
    /// TPR at the method's operating threshold.
    pub tpr_op: f64,
    /// FPR at the operating threshold.
    pub fpr_op: f64,
    /// Precision at a base rate of 1 attack in 10⁴, from `tpr_op` and `fpr_op`.
    pub precision: f64,
    /// False alerts per hour of benign traffic (`fpr_op` × benign rows per hour); NaN when the
    /// dataset has no times.
    pub false_alerts_per_hour: f64,
    /// TPR at FPR 10⁻³ on padded attack rows (same benign rows, so the same threshold); NaN
    /// where padding is not defined for the feature set.
    pub evasion_tpr_1e3: f64,
}

/// Names of the metrics of a [`Point`], in field order (keys of the JSON report).
pub const METRICS: [&str; 9] = [
    "roc_auc",
    "pr_auc",
    "tpr_1e3",
    "tpr_1e4",
    "tpr_op",
    "fpr_op",
    "precision",
    "false_alerts_per_hour",
    "evasion_tpr_1e3",
];

impl Point {
    /// The metric called `name` ([`METRICS`]).
    pub fn get(&self, name: &str) -> f64 {
        match name {
            "roc_auc" => self.roc_auc,
            "pr_auc" => self.pr_auc,
            "tpr_1e3" => self.tpr_1e3,
            "tpr_1e4" => self.tpr_1e4,
            "tpr_op" => self.tpr_op,
            "fpr_op" => self.fpr_op,
            "precision" => self.precision,
            "false_alerts_per_hour" => self.false_alerts_per_hour,
            "evasion_tpr_1e3" => self.evasion_tpr_1e3,
            _ => f64::NAN,
        }
    }

    /// The evasion drop: TPR at 10⁻³ before minus after padding.
    pub fn evasion_drop(&self) -> f64 {
        self.tpr_1e3 - self.evasion_tpr_1e3
    }
}

/// Precision at base rate `pi` from an operating point's TPR and FPR; 0 when nothing alerts.
pub fn precision_at(tpr: f64, fpr: f64, pi: f64) -> f64 {
    let tp = tpr * pi;
    let fp = fpr * (1.0 - pi);
    if tp + fp <= 0.0 {
        0.0
    } else {
        tp / (tp + fp)
    }
}

/// What [`evaluate`] needs besides the scores.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// Base rate for the precision.
    pub base_rate: f64,
    /// Benign rows per hour of the dataset (None without times).
    pub benign_per_hour: Option<f64>,
}

/// Metrics of attack scores `pos` against benign scores `neg`, at the operating threshold
/// `op`; `padded`: scores of the padded attack rows, when padding is defined. `None` when a
/// class is empty.
pub fn evaluate(
    pos: &[f32],
    neg: &[f32],
    padded: Option<&[f32]>,
    op: Operating,
    ctx: &Context,
) -> Option<Point> {
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut scores = Vec::with_capacity(pos.len() + neg.len());
    scores.extend_from_slice(pos);
    scores.extend_from_slice(neg);
    let mut labels = vec![1u8; pos.len()];
    labels.resize(scores.len(), 0);
    let mut sorted_neg = neg.to_vec();
    sorted_neg.sort_by(|a, b| b.total_cmp(a));
    let tpr_at = |p: &[f32], fpr: f64| {
        let t = threshold_at(&sorted_neg, fpr);
        p.iter().filter(|&&s| s > t).count() as f64 / p.len().max(1) as f64
    };
    let tpr_op = pos.iter().filter(|&&s| op.alerts(s)).count() as f64 / pos.len() as f64;
    let fpr_op = neg.iter().filter(|&&s| op.alerts(s)).count() as f64 / neg.len() as f64;
    Some(Point {
        roc_auc: metrics::roc_auc(&scores, &labels)?,
        pr_auc: metrics::pr_auc(&scores, &labels)?,
        tpr_1e3: tpr_at(pos, LOW_FPRS[0]),
        tpr_1e4: tpr_at(pos, LOW_FPRS[1]),
        tpr_op,
        fpr_op,
        precision: precision_at(tpr_op, fpr_op, ctx.base_rate),
        false_alerts_per_hour: ctx.benign_per_hour.map_or(f64::NAN, |r| fpr_op * r),
        evasion_tpr_1e3: match padded {
            Some(p) if !p.is_empty() => tpr_at(p, LOW_FPRS[0]),
            _ => f64::NAN,
        },
    })
}

/// The benign score that at most `fpr` of the (descending) benign scores exceed
/// ([`metrics::tpr_at_fpr`]'s rule).
fn threshold_at(sorted_desc: &[f32], fpr: f64) -> f32 {
    let allowed = (fpr * sorted_desc.len() as f64).floor() as usize;
    sorted_desc[allowed.min(sorted_desc.len() - 1)]
}

/// TPR at each FPR of `grid` (one ROC curve sampled for vertical averaging).
pub fn roc_at(pos: &[f32], neg: &[f32], grid: &[f64]) -> Vec<f64> {
    if pos.is_empty() || neg.is_empty() {
        return vec![f64::NAN; grid.len()];
    }
    let mut n = neg.to_vec();
    n.sort_by(|a, b| b.total_cmp(a));
    let mut p = pos.to_vec();
    p.sort_by(|a, b| a.total_cmp(b));
    grid.iter()
        .map(|&f| {
            let t = threshold_at(&n, f);
            // Positives strictly above t.
            let below = p.partition_point(|&s| s <= t);
            (p.len() - below) as f64 / p.len() as f64
        })
        .collect()
}

/// A mean with its 95% percentile-bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// Mean over the finite values.
    pub mean: f64,
    /// 2.5% bootstrap quantile of the mean.
    pub lo: f64,
    /// 97.5% bootstrap quantile of the mean.
    pub hi: f64,
    /// Finite values the mean is over.
    pub n: usize,
}

impl Interval {
    /// An interval with no data.
    pub const NONE: Interval = Interval {
        mean: f64::NAN,
        lo: f64::NAN,
        hi: f64::NAN,
        n: 0,
    };
}

/// Mean of `groups` of values (one group per family: the macro mean is the mean of the group
/// means; one group: a plain mean) and its 95% percentile bootstrap interval, resampling each
/// group's values with replacement `resamples` times. Non-finite values are left out.
pub fn bootstrap(groups: &[&[f64]], resamples: usize, rng: &mut impl Rng) -> Interval {
    let clean: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| g.iter().copied().filter(|v| v.is_finite()).collect())
        .filter(|g: &Vec<f64>| !g.is_empty())
        .collect();
    if clean.is_empty() {
        return Interval::NONE;
    }
    let mean_of = |g: &[f64]| g.iter().sum::<f64>() / g.len() as f64;
    let mean = clean.iter().map(|g| mean_of(g)).sum::<f64>() / clean.len() as f64;
    let n = clean.iter().map(Vec::len).sum();
    if resamples == 0 {
        return Interval {
            mean,
            lo: mean,
            hi: mean,
            n,
        };
    }
    let mut means = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let mut total = 0.0;
        for g in &clean {
            let mut s = 0.0;
            for _ in 0..g.len() {
                s += g[rng.random_range(0..g.len())];
            }
            total += s / g.len() as f64;
        }
        means.push(total / clean.len() as f64);
    }
    means.sort_by(f64::total_cmp);
    let q = |p: f64| means[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Interval {
        mean,
        lo: q(0.025).min(mean),
        hi: q(0.975).max(mean),
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_bootstrap_interval_contains_the_mean_and_shrinks_with_more_draws() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let few: Vec<f64> = (0..10).map(|_| rng.random_range(0.0..1.0)).collect();
        let many: Vec<f64> = (0..1000).map(|_| rng.random_range(0.0..1.0)).collect();
        let a = bootstrap(&[&few], 2000, &mut rng);
        let b = bootstrap(&[&many], 2000, &mut rng);
        for i in [a, b] {
            assert!(i.lo <= i.mean && i.mean <= i.hi, "{i:?}");
        }
        assert!(b.hi - b.lo < a.hi - a.lo, "{a:?} vs {b:?}");
        // The interval of uniform values covers the true mean 0.5.
        assert!(b.lo < 0.5 && 0.5 < b.hi, "{b:?}");
        // Constant values: a zero-width interval at the value; NaN is left out.
        let c = bootstrap(&[&[0.7, 0.7, f64::NAN]], 100, &mut rng);
        assert_eq!((c.mean, c.lo, c.hi, c.n), (0.7, 0.7, 0.7, 2));
        // Macro: the mean of the group means, not of all values.
        let m = bootstrap(&[&[1.0; 10], &[0.0; 1000]], 200, &mut rng);
        assert_eq!(m.mean, 0.5);
        assert_eq!(bootstrap(&[&[]], 10, &mut rng).n, 0);
    }

    #[test]
    fn metrics_of_a_known_query_set() {
        // 1000 benign scores 0..1 and 10 attacks: 8 above every benign score, 2 in the middle.
        let neg: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let mut pos = vec![2.0f32; 8];
        pos.extend([0.5, 0.25]);
        let ctx = Context {
            base_rate: 1e-4,
            benign_per_hour: Some(3600.0),
        };
        let op = Operating::Above(0.9985);
        let p = evaluate(&pos, &neg, Some(&[0.1; 4]), op, &ctx).unwrap();
        assert!((p.tpr_1e3 - 0.8).abs() < 1e-12, "{p:?}");
        assert!((p.tpr_1e4 - 0.8).abs() < 1e-12);
        assert!((p.tpr_op - 0.8).abs() < 1e-12);
        assert!((p.fpr_op - 0.001).abs() < 1e-12, "one benign score above");
        assert!((p.false_alerts_per_hour - 3.6).abs() < 1e-9);
        let want = 0.8e-4 / (0.8e-4 + 0.001 * (1.0 - 1e-4));
        assert!((p.precision - want).abs() < 1e-12);
        assert_eq!(p.evasion_tpr_1e3, 0.0);
        assert!((p.evasion_drop() - 0.8).abs() < 1e-12);
        assert!(p.roc_auc > 0.8 && p.roc_auc < 1.0);
        assert!(evaluate(&[], &neg, None, op, &ctx).is_none());
        // The averaged-ROC sampler agrees with the TPR at 10⁻³.
        let grid = roc_grid();
        let r = roc_at(&pos, &neg, &grid);
        let i = grid.iter().position(|&g| (g - 1e-3).abs() < 1e-12).unwrap();
        assert!((r[i] - p.tpr_1e3).abs() < 1e-12);
        assert!(r.windows(2).all(|w| w[0] <= w[1]), "TPR grows with FPR");
        assert_eq!(precision_at(0.0, 0.0, 1e-4), 0.0);
        // A threshold from benign rows lets the target share through at most.
        let Operating::Above(t) = Operating::from_benign(&neg, 1e-2) else {
            panic!()
        };
        assert!(neg.iter().filter(|&&s| s > t).count() <= 10);
    }
}

//! `detector eval`: the detection-quality protocol of EVALUATION.md, run for real.
//!
//! Per dataset, the benign sessions are split once into training and query sessions. Then for
//! every attack family F (leave one family out): a model is meta-trained and a conventional
//! network pre-trained on everything but F and the query sessions; for each K, support draws
//! take K rows of F from whole sessions (the query gets every row of F's other sessions and
//! the benign query sessions), the meta-learned model is adapted as the agent adapts it, and
//! the baselines are trained or scored on the same draw. Metrics per draw, means with 95%
//! bootstrap intervals per family and macro-averaged, int8 against f32, and the evasion check
//! (attack rows padded with benign-looking packets). [`report`] writes the markdown, JSON and
//! PNG files.

pub mod iforest;
pub mod padding;
pub mod plot;
pub mod protocol;
pub mod report;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use self::iforest::{ForestConfig, IsolationForest};
use self::padding::{BenignPackets, Columns, PoolUse};
use self::protocol::{BenignSplit, FamilyRows};
use self::stats::{Context, Interval, Operating, Point};
use super::{
    adapt, episodes, gather, metrics, net, scorer, AdaptConfig, Algo, Model, ModelError,
    Normaliser, Rows, Score, ScorePath, TrainConfig, Trainable,
};
use crate::dataset::Dataset;

/// The meta-learned model adapted on the K shots (K = 0: as meta-trained), combined score
/// (probability and novelty, as the agent alerts), f32.
pub const META: &str = "meta";
/// The same, probability only.
pub const META_PROB: &str = "meta-prob";
/// What the agent would serve: the adapted model unless its false-alert check refused it, then
/// the unadapted one.
pub const META_SERVED: &str = "meta-served";
/// The meta-learned model on the int8 path.
pub const META_INT8: &str = "meta-int8";
/// Baseline (a): the meta-learned model without adaptation, combined score.
pub const ZERO: &str = "zero-shot";
/// Baseline (a), probability only.
pub const ZERO_PROB: &str = "zero-shot-prob";
/// Baseline (b): the same network trained from scratch on the support.
pub const SCRATCH: &str = "scratch";
/// Baseline (c): last-layer fine-tuning of a conventionally (supervised) pre-trained network;
/// at K = 0 the pre-trained network as it is.
pub const HEAD: &str = "head-ft";
/// Baseline (d): the one feature with the best training-data ROC-AUC, thresholded.
pub const FEATURE: &str = "feature";
/// Baseline (d'): the one feature that best separates the support (K shots against the benign
/// support), thresholded.
pub const FEATURE_SUPPORT: &str = "feature-support";
/// Baseline (e): an isolation forest on training benign rows.
pub const IFOREST: &str = "iforest";

/// Methods scored at K = 0 (on every row of the held-out family).
pub const K0_METHODS: [&str; 6] = [META, META_PROB, META_INT8, HEAD, FEATURE, IFOREST];
/// Methods scored on every draw of K > 0.
pub const METHODS: [&str; 11] = [
    META,
    META_PROB,
    META_SERVED,
    META_INT8,
    ZERO,
    ZERO_PROB,
    SCRATCH,
    HEAD,
    FEATURE,
    FEATURE_SUPPORT,
    IFOREST,
];
/// The baselines the meta-learned model must beat, with their letter in EVALUATION.md.
pub const BASELINES: [(&str, &str); 7] = [
    (ZERO, "a"),
    (ZERO_PROB, "a"),
    (SCRATCH, "b"),
    (HEAD, "c"),
    (FEATURE, "d"),
    (FEATURE_SUPPORT, "d'"),
    (IFOREST, "e"),
];
/// Metrics summarised per (family, K, method): the point metrics and the evasion drop.
pub const SUMMARY_METRICS: [&str; 10] = [
    "roc_auc",
    "pr_auc",
    "tpr_1e3",
    "tpr_1e4",
    "tpr_op",
    "fpr_op",
    "precision",
    "false_alerts_per_hour",
    "evasion_tpr_1e3",
    "evasion_drop",
];
/// Metrics the verdict "beats the baseline" is given on.
pub const VERDICT_METRICS: [&str; 3] = ["roc_auc", "pr_auc", "tpr_1e3"];

/// Evaluation options; every field has a default ([`EvalConfig::default`]).
#[derive(Clone, Debug, Serialize)]
pub struct EvalConfig {
    /// Families to hold out (empty: every attack family of each dataset).
    pub families: Vec<String>,
    /// Support sizes (0: no adaptation).
    pub ks: Vec<usize>,
    /// Support draws per (family, K > 0).
    pub draws: usize,
    /// Seed of everything (splits, training, draws, bootstrap).
    pub seed: u64,
    /// Meta-training options (holdout and seed are set per family); the supervised baseline
    /// uses the same with `algo = supervised`.
    pub train: TrainConfig,
    /// Share of benign sessions kept for the query (never trained on).
    pub benign_query_fraction: f64,
    /// At most this many benign query rows (uniform sample of the query sessions' rows).
    pub max_benign_query: usize,
    /// Benign rows given to each adaptation (the agent passes 2000 recent benign records).
    pub benign_support: usize,
    /// Benign training rows that set the thresholds of methods without an alert rule.
    pub threshold_rows: usize,
    /// The operating point of those methods: at most this share of those rows alerts.
    pub target_fpr: f64,
    /// The agent's adaptation budget (meta-served: refused above it).
    pub fpr_budget: f64,
    /// SGD steps and rate of the from-scratch baseline.
    pub scratch_steps: usize,
    /// Learning rate of the from-scratch baseline.
    pub scratch_lr: f32,
    /// SGD steps and rate of last-layer fine-tuning.
    pub head_steps: usize,
    /// Learning rate of last-layer fine-tuning.
    pub head_lr: f32,
    /// Base rate for the precision (attack rows per row).
    pub base_rate: f64,
    /// Padding: extra packets per packet of an attack flow.
    pub pad_fraction: f64,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// Families evaluated at once (threads).
    pub threads: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            families: vec![],
            ks: vec![0, 1, 5, 10],
            draws: 100,
            seed: 1,
            train: TrainConfig {
                eval_every: 0,
                ..TrainConfig::default()
            },
            benign_query_fraction: 0.5,
            max_benign_query: 20_000,
            benign_support: 2000,
            threshold_rows: 4000,
            target_fpr: 1e-3,
            fpr_budget: 1e-3,
            scratch_steps: 100,
            scratch_lr: 0.1,
            head_steps: 100,
            head_lr: 0.1,
            base_rate: 1e-4,
            pad_fraction: 0.3,
            bootstrap: 2000,
            threads: 1,
        }
    }
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Bad options or data.
    #[error("{0}")]
    Invalid(String),
    /// Model maths failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A dataset to evaluate on and where it came from.
pub struct Input<'a> {
    /// The file (for the report).
    pub file: String,
    /// The data.
    pub data: &'a Dataset,
}

/// The summary of one (family or macro, K, method): each metric's mean and interval.
pub type Summary = BTreeMap<String, Interval>;

/// Results of one K on one family.
#[derive(Clone, Debug, Serialize)]
pub struct KResult {
    /// Support rows.
    pub k: usize,
    /// Draws made.
    pub draws: usize,
    /// Mean and largest number of sessions a support was dealt.
    pub support_sessions_mean: f64,
    /// Largest.
    pub support_sessions_max: usize,
    /// Mean attack rows in the query.
    pub query_attack_rows_mean: f64,
    /// Adaptations the agent's check would have refused (false alerts on held-back benign
    /// rows rose by more than the budget).
    pub refused: usize,
    /// Adaptations that failed outright (meta, head fine-tuning), with the first reason.
    pub failed: usize,
    /// The first failure's message.
    pub first_failure: Option<String>,
    /// Per method: every metric's mean and interval over the draws.
    pub summary: BTreeMap<String, Summary>,
    /// Per baseline: the paired difference meta − baseline, per metric.
    pub paired: BTreeMap<String, Summary>,
    /// Per method: the ROC curve averaged over draws (TPR at [`stats::roc_grid`]).
    pub roc: BTreeMap<String, Vec<f64>>,
    /// int8 against f32 per draw: |ΔROC-AUC| of the combined score, mean and largest.
    pub int8_gap_mean: f64,
    /// Largest.
    pub int8_gap_max: f64,
    /// Every draw's numbers per method.
    #[serde(skip)]
    pub per_draw: BTreeMap<String, Vec<Point>>,
}

/// The strongest single feature of a baseline.
#[derive(Clone, Debug, Serialize)]
pub struct FeatureChoice {
    /// Column.
    pub index: usize,
    /// Name.
    pub name: String,
    /// +1: high values are attacks; −1: low values.
    pub sign: f32,
    /// ROC-AUC in that direction on the data it was chosen on.
    pub auc: f64,
}

/// Padding statistics of one family's attack rows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PaddingStats {
    /// Attack rows.
    pub rows: usize,
    /// Rows that changed (one-packet records and rounding-to-zero rows do not).
    pub changed: usize,
    /// Extra packets / original packets over all rows.
    pub extra_packet_ratio: f64,
    /// Where sizes and gaps came from.
    pub pools: PoolUse,
}

/// Everything about one held-out family.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyResult {
    /// Family.
    pub family: String,
    /// Its sessions and attack rows.
    pub sessions: usize,
    /// Attack rows.
    pub rows: usize,
    /// Rows of the training set (benign training sessions + other families).
    pub train_rows: usize,
    /// Meta-training and pre-training wall time, s.
    pub train_seconds: [f64; 2],
    /// Meta-training tasks.
    pub tasks: Vec<String>,
    /// Tasks skipped by meta-training (too few sessions).
    pub skipped_tasks: Vec<String>,
    /// The meta-learned model's alert threshold and novelty weight for this feature set.
    pub alert_threshold: f32,
    /// Novelty weight.
    pub novelty_weight: f32,
    /// Baseline (d)'s feature.
    pub feature: FeatureChoice,
    /// Support-chosen features (d'): how often each was picked, over all draws.
    pub support_features: BTreeMap<String, usize>,
    /// K = 0 on every row of the family: every method's numbers.
    pub k0: BTreeMap<String, Point>,
    /// int8 against f32 at K = 0: |ΔROC-AUC| of the combined score and of the logit.
    pub int8_gap_k0: [f64; 2],
    /// K = 0 averaged ROC (one curve per method).
    pub roc_k0: BTreeMap<String, Vec<f64>>,
    /// Per K > 0.
    pub by_k: Vec<KResult>,
    /// Padding (when defined for the feature set).
    pub padding: Option<PaddingStats>,
    /// Wall time of the draws, s.
    pub draw_seconds: f64,
}

/// A comparison of meta against one baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Family, or "macro".
    pub family: String,
    /// K.
    pub k: usize,
    /// Baseline.
    pub baseline: String,
    /// Metric.
    pub metric: String,
    /// Meta's mean and interval.
    pub meta: Interval,
    /// The baseline's.
    pub other: Interval,
    /// The paired difference meta − baseline.
    pub diff: Interval,
    /// "beats" (intervals apart, meta above), "worse" (apart, below), or "overlap" (then
    /// `paired_beats` says whether the paired difference's interval is above 0).
    pub outcome: String,
    /// The paired difference's interval lies above 0.
    pub paired_beats: bool,
}

/// Results on one dataset.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetResult {
    /// File.
    pub file: String,
    /// Feature set.
    pub feature_set: String,
    /// `Dataset::digest()`.
    pub sha256: String,
    /// Rows.
    pub rows: usize,
    /// Benign sessions for training / for the query.
    pub benign_sessions: [usize; 2],
    /// Benign rows of the training sessions, and in the query (after sampling).
    pub benign_rows: [usize; 2],
    /// Benign rows per hour of recording (from the timestamps), if any.
    pub benign_per_hour: Option<f64>,
    /// Why padding is not applied, when it is not.
    pub padding_na: Option<String>,
    /// What the sessions are, when they are not real ones.
    pub sessions_note: Option<String>,
    /// Held-out families.
    pub families: Vec<FamilyResult>,
    /// Families not evaluated and why.
    pub skipped: Vec<(String, String)>,
    /// Per K: per method, macro-averaged summaries (K = 0: over the families' single values).
    pub macro_summary: BTreeMap<usize, BTreeMap<String, Summary>>,
    /// Per K > 0: per baseline, the macro paired difference.
    pub macro_paired: BTreeMap<usize, BTreeMap<String, Summary>>,
    /// Meta against every baseline, per family and macro, K > 0.
    pub verdicts: Vec<Verdict>,
    /// Wall time, s.
    pub seconds: f64,
}

/// A seed from the run's seed and names (stable across runs, threads and machines).
pub fn mix(seed: u64, parts: &[&str], nums: &[u64]) -> u64 {
    fn sm(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut h = sm(seed);
    for p in parts {
        for b in p.bytes() {
            h = sm(h ^ b as u64);
        }
        h = sm(h ^ 0xff);
    }
    for &n in nums {
        h = sm(h ^ n);
    }
    h
}

/// Checks a dataset can be evaluated at all.
pub fn check_dataset(file: &str, ds: &Dataset) -> Result<(), EvalError> {
    let bad = |s: String| EvalError::Invalid(format!("{file}: {s}"));
    ds.validate().map_err(bad)?;
    if ds.rows() == 0 {
        return Err(bad("the dataset has no rows".into()));
    }
    if ds.n_features() == 0 {
        return Err(bad("the dataset has no features".into()));
    }
    let attacks = ds.label.iter().filter(|&&l| l == 1).count();
    if attacks == 0 {
        return Err(bad(format!(
            "single class: {} benign rows and no attack rows",
            ds.rows()
        )));
    }
    if attacks == ds.rows() {
        return Err(bad(format!(
            "single class: {attacks} attack rows and no benign rows"
        )));
    }
    Ok(())
}

/// Attack families of a dataset, sorted, with their session counts.
pub fn families_of(ds: &Dataset) -> BTreeMap<String, usize> {
    let mut f: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for i in 0..ds.rows() {
        if ds.label[i] == 1 {
            f.entry(ds.family_of(i).to_string())
                .or_default()
                .insert(ds.session[i]);
        }
    }
    f.into_iter().map(|(k, v)| (k, v.len())).collect()
}

/// Checks `--families` against the datasets: each must be an attack family of at least one.
pub fn check_families(inputs: &[Input], families: &[String]) -> Result<(), EvalError> {
    for f in families {
        if !inputs.iter().any(|i| families_of(i.data).contains_key(f)) {
            let known: Vec<String> = inputs
                .iter()
                .map(|i| {
                    let names: Vec<String> = families_of(i.data).into_keys().collect();
                    format!("{}: {}", i.file, names.join(", "))
                })
                .collect();
            return Err(EvalError::Invalid(format!(
                "unknown family `{f}`: no dataset has attack rows of it ({})",
                known.join("; ")
            )));
        }
    }
    Ok(())
}

/// The column with the best ROC-AUC (either direction) of `rows` (width `d`) against
/// `labels`; ties go to the largest standardised mean difference (on `norm`'s scale).
pub fn strongest_feature(
    rows: &[f32],
    d: usize,
    labels: &[u8],
    names: &[String],
    norm: &Normaliser,
) -> Option<FeatureChoice> {
    let n = labels.len();
    if d == 0 || rows.len() != n * d {
        return None;
    }
    let z = norm.apply_vec(rows);
    let mut best: Option<(f64, f64, FeatureChoice)> = None;
    let mut col = vec![0f32; n];
    for j in 0..d {
        for i in 0..n {
            col[i] = rows[i * d + j];
        }
        let auc = metrics::roc_auc(&col, labels)?;
        let (sign, strength) = if auc >= 0.5 {
            (1.0, auc)
        } else {
            (-1.0, 1.0 - auc)
        };
        let (mut sp, mut np, mut sn, mut sn2, mut nn) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for i in 0..n {
            let v = z[i * d + j] as f64;
            if labels[i] == 1 {
                sp += v;
                np += 1.0;
            } else {
                sn += v;
                sn2 += v * v;
                nn += 1.0;
            }
        }
        let (mp, mn) = (sp / np.max(1.0), sn / nn.max(1.0));
        let sd = (sn2 / nn.max(1.0) - mn * mn).max(0.0).sqrt().max(1e-3);
        let gap = (mp - mn).abs() / sd;
        let better = match &best {
            None => true,
            Some((s, g, _)) => {
                strength > *s + 1e-12 || ((strength - *s).abs() <= 1e-12 && gap > *g)
            }
        };
        if better {
            best = Some((
                strength,
                gap,
                FeatureChoice {
                    index: j,
                    name: names.get(j).cloned().unwrap_or_default(),
                    sign,
                    auc: strength,
                },
            ));
        }
    }
    best.map(|b| b.2)
}

/// Logits, embeddings and scores of some rows.
type Outputs = (Vec<f32>, Vec<f32>, Vec<Score>);

/// Logits, embeddings and scores of normalised rows on one path.
fn run_model(
    model: &Model,
    fs: &str,
    path: ScorePath,
    x: &[f32],
    n: usize,
) -> Result<Outputs, ModelError> {
    let sc = scorer::scorer(model, fs, path)?;
    let e = model.embed_dim();
    let mut logits = vec![0f32; n];
    let mut emb = vec![0f32; n * e];
    sc.forward(x, n, &mut logits, Some(&mut emb))?;
    let scores = model.finish(fs, &logits, &emb);
    Ok((logits, emb, scores))
}

/// Per-row scores of one method on the family's attack rows (all of them), the benign query,
/// the benign threshold rows and the padded attack rows.
#[derive(Clone, Debug, Default)]
struct Scored {
    attack: Vec<f32>,
    benign: Vec<f32>,
    threshold: Vec<f32>,
    padded: Vec<f32>,
}

impl Scored {
    /// Splits one score vector laid out as attack | benign | threshold | padded.
    fn split(v: &[f32], na: usize, nb: usize, nt: usize) -> Scored {
        Scored {
            attack: v[..na].to_vec(),
            benign: v[na..na + nb].to_vec(),
            threshold: v[na + nb..na + nb + nt].to_vec(),
            padded: v[na + nb + nt..].to_vec(),
        }
    }
}

/// What every family of a dataset shares.
struct Shared<'a> {
    ds: &'a Dataset,
    cfg: &'a EvalConfig,
    split: BenignSplit,
    /// Benign query rows (dataset indices), sampled.
    bq: Vec<usize>,
    /// Benign threshold rows (from training sessions).
    bt: Vec<usize>,
    ctx: Context,
    pad: Option<(Columns, BenignPackets)>,
}

fn subset(v: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter().map(|&i| v[i]).collect()
}

fn nan_point() -> Point {
    Point {
        roc_auc: f64::NAN,
        pr_auc: f64::NAN,
        tpr_1e3: f64::NAN,
        tpr_1e4: f64::NAN,
        tpr_op: f64::NAN,
        fpr_op: f64::NAN,
        precision: f64::NAN,
        false_alerts_per_hour: f64::NAN,
        evasion_tpr_1e3: f64::NAN,
    }
}

fn metric_of(p: &Point, m: &str) -> f64 {
    if m == "evasion_drop" {
        p.evasion_drop()
    } else {
        p.get(m)
    }
}

/// One method's scores on a draw's query, and its operating point.
struct Eval<'a> {
    pos: Vec<f32>,
    neg: &'a [f32],
    padded: Option<Vec<f32>>,
    op: Operating,
}

impl Eval<'_> {
    fn point(&self, ctx: &Context) -> Point {
        stats::evaluate(&self.pos, self.neg, self.padded.as_deref(), self.op, ctx)
            .unwrap_or_else(nan_point)
    }
}

/// Runs one held-out family.
fn eval_family(
    sh: &Shared,
    fam: &FamilyRows,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<FamilyResult, EvalError> {
    let (ds, cfg) = (sh.ds, sh.cfg);
    let fs = ds.source.as_str();
    let names = &ds.feature_names;
    let d = ds.n_features();
    let fname = fam.name.as_str();
    let tag = format!("{fs}/{fname}");
    let invalid = |s: String| EvalError::Invalid(format!("{tag}: {s}"));

    // Training: everything but F and the benign query sessions.
    let train_ds = protocol::training_set(ds, &sh.split.train, fname);
    let mut tcfg = cfg.train.clone();
    tcfg.holdout_families = vec![fname.to_string()];
    tcfg.eval_every = 0;
    tcfg.seed = mix(cfg.seed, &[fs, fname, "meta"], &[]);
    progress(&format!(
        "{tag}: meta-training ({:?}, {} iterations) on {} rows",
        tcfg.algo,
        tcfg.iterations,
        train_ds.rows()
    ));
    let t0 = Instant::now();
    let (meta, rep) = super::train(&[&train_ds], &tcfg, &mut |_| {})
        .map_err(|e| invalid(format!("meta-training failed: {e}")))?;
    let meta_s = t0.elapsed().as_secs_f64();
    let mut scfg = tcfg.clone();
    scfg.algo = Algo::Supervised;
    scfg.meta_lr = None;
    scfg.seed = mix(cfg.seed, &[fs, fname, "supervised"], &[]);
    let t1 = Instant::now();
    let (sup, _) = super::train(&[&train_ds], &scfg, &mut |_| {})
        .map_err(|e| invalid(format!("supervised pre-training failed: {e}")))?;
    let sup_s = t1.elapsed().as_secs_f64();
    progress(&format!(
        "{tag}: trained in {meta_s:.1} s (meta) + {sup_s:.1} s (supervised)"
    ));

    let norm_m = meta.input(fs)?.normaliser.clone();
    let norm_s = sup.input(fs)?.normaliser.clone();
    let rule = meta.input(fs)?.rule;
    let f_rows = fam.rows();
    let pos_of: HashMap<usize, usize> = f_rows.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let (na, nb, nt) = (f_rows.len(), sh.bq.len(), sh.bt.len());
    let raw_f = gather(&ds.features, d, &f_rows);
    let raw_q = gather(&ds.features, d, &sh.bq);
    let raw_t = gather(&ds.features, d, &sh.bt);

    // Padded attack rows (one padded version of each, fixed for all draws).
    let mut padding = None;
    let raw_pad = match &sh.pad {
        Some((cols, pool)) => {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, &[fs, fname, "pad"], &[]));
            let mut st = PaddingStats {
                rows: na,
                ..Default::default()
            };
            let (mut extra, mut orig) = (0u64, 0u64);
            let mut out = Vec::with_capacity(raw_f.len());
            for v in raw_f.chunks_exact(d) {
                let (_, s) = padding::state_from_features(cols, v);
                orig += s.total_packets();
                match pool.pad_row(cols, v, cfg.pad_fraction, &mut st.pools, &mut rng) {
                    Some((row, m)) => {
                        extra += m;
                        st.changed += (row != v) as usize;
                        out.extend(row);
                    }
                    None => out.extend_from_slice(v),
                }
            }
            st.extra_packet_ratio = extra as f64 / orig.max(1) as f64;
            padding = Some(st);
            Some(out)
        }
        None => None,
    };
    let npad = if raw_pad.is_some() { na } else { 0 };
    let mut all_raw = Vec::with_capacity((na + nb + nt + npad) * d);
    all_raw.extend_from_slice(&raw_f);
    all_raw.extend_from_slice(&raw_q);
    all_raw.extend_from_slice(&raw_t);
    if let Some(p) = &raw_pad {
        all_raw.extend_from_slice(p);
    }
    let n_all = na + nb + nt + npad;
    let x_m = norm_m.apply_vec(&all_raw);
    let x_s = if norm_s == norm_m {
        x_m.clone()
    } else {
        norm_s.apply_vec(&all_raw)
    };
    let pad_of = |s: &Scored, q: &[usize]| (npad > 0).then(|| subset(&s.padded, q));

    // K = 0 scores.
    let (meta_logit, _, meta_sc) = run_model(&meta, fs, ScorePath::Reference, &x_m, n_all)?;
    let (int8_logit, _, int8_sc) = run_model(&meta, fs, ScorePath::Int8(None), &x_m, n_all)?;
    let (sup_logit, sup_emb, _) = run_model(&sup, fs, ScorePath::Reference, &x_s, n_all)?;
    let comb = |s: &[Score]| s.iter().map(|s| s.score).collect::<Vec<f32>>();
    let prob = |s: &[Score]| {
        s.iter()
            .map(|s| s.probability.unwrap_or(0.0))
            .collect::<Vec<f32>>()
    };
    let meta_comb = Scored::split(&comb(&meta_sc), na, nb, nt);
    let meta_prob = Scored::split(&prob(&meta_sc), na, nb, nt);
    let int8_comb = Scored::split(&comb(&int8_sc), na, nb, nt);
    let sup_sc = Scored::split(&sup_logit, na, nb, nt);
    // (d): the strongest feature on the training data.
    let labels: Vec<u8> = train_ds.label.clone();
    let feature = strongest_feature(&train_ds.features, d, &labels, names, &norm_m)
        .ok_or_else(|| invalid("no feature has a training ROC-AUC (one class?)".into()))?;
    let feat_col = |raw: &[f32], j: usize, sign: f32| {
        raw.chunks_exact(d)
            .map(|r| sign * r[j])
            .collect::<Vec<f32>>()
    };
    let feat_sc = Scored::split(&feat_col(&all_raw, feature.index, feature.sign), na, nb, nt);
    // (e): isolation forest on training benign rows, normalised with the training normaliser.
    let forest = {
        let mut benign_train = sh.split.train.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, &[fs, fname, "iforest"], &[]));
        let idx = episodes::sample(&mut benign_train, 50_000, &mut rng);
        let rows = norm_m.apply_vec(&gather(&ds.features, d, &idx));
        IsolationForest::fit(&rows, d, ForestConfig::default(), &mut rng)
            .ok_or_else(|| invalid("no benign training rows for the isolation forest".into()))?
    };
    let if_sc = Scored::split(&forest.score(&x_m), na, nb, nt);

    let ops = |s: &Scored| Operating::from_benign(&s.threshold, cfg.target_fpr);
    let meta_op = Operating::AtLeast(rule.alert_threshold);
    let all_q: Vec<usize> = (0..na).collect();
    let grid = stats::roc_grid();
    let mut k0 = BTreeMap::new();
    let mut roc_k0 = BTreeMap::new();
    for (name, s, op) in [
        (META, &meta_comb, meta_op),
        (META_PROB, &meta_prob, meta_op),
        (META_INT8, &int8_comb, meta_op),
        (HEAD, &sup_sc, ops(&sup_sc)),
        (FEATURE, &feat_sc, ops(&feat_sc)),
        (IFOREST, &if_sc, ops(&if_sc)),
    ] {
        let e = Eval {
            pos: s.attack.clone(),
            neg: &s.benign,
            padded: pad_of(s, &all_q),
            op,
        };
        k0.insert(name.to_string(), e.point(&sh.ctx));
        roc_k0.insert(name.to_string(), stats::roc_at(&s.attack, &s.benign, &grid));
    }
    let auc_gap = |a: &[f32], b: &[f32]| {
        let mut y = vec![1u8; na];
        y.resize(na + nb, 0);
        match (
            metrics::roc_auc(&a[..na + nb], &y),
            metrics::roc_auc(&b[..na + nb], &y),
        ) {
            (Some(x), Some(z)) => (x - z).abs(),
            _ => f64::NAN,
        }
    };
    let int8_gap_k0 = [
        auc_gap(&comb(&meta_sc), &comb(&int8_sc)),
        auc_gap(&meta_logit, &int8_logit),
    ];

    // K > 0: the draws.
    let t2 = Instant::now();
    let dev = Device::Cpu;
    let mut by_k = Vec::new();
    let mut support_features: BTreeMap<String, usize> = BTreeMap::new();
    for &k in cfg.ks.iter().filter(|&&k| k > 0) {
        let mut per: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        let mut roc_sum: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new();
        let (mut sess_sum, mut sess_max, mut q_sum) = (0usize, 0usize, 0usize);
        let (mut refused, mut failed) = (0usize, 0usize);
        let mut first_failure = None;
        let mut gaps = Vec::new();
        for draw_i in 0..cfg.draws {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(
                cfg.seed,
                &[fs, fname, "draw"],
                &[k as u64, draw_i as u64],
            ));
            let Some(dr) = (0..100).find_map(|_| protocol::draw(fam, k, &mut rng)) else {
                return Err(invalid(format!(
                    "no support of K = {k} leaves a session for the query"
                )));
            };
            sess_sum += dr.support_sessions.len();
            sess_max = sess_max.max(dr.support_sessions.len());
            q_sum += dr.query.len();
            let qi: Vec<usize> = dr.query.iter().map(|i| pos_of[i]).collect();
            let mut pool = sh.split.train.clone();
            let bs = episodes::sample(&mut pool, cfg.benign_support, &mut rng);
            let sx = gather(&ds.features, d, &dr.support);
            let bx = gather(&ds.features, d, &bs);
            let pos_rows = Rows {
                feature_set: fs,
                features: names,
                values: &sx,
            };
            let ben_rows = pos_rows.with_values(&bx);
            // The query rows to score per draw: attack query | benign query | threshold |
            // padded attack query.
            let nq = qi.len();
            let mut xq = gather(&x_m, d, &qi);
            xq.extend_from_slice(&x_m[na * d..(na + nb + nt) * d]);
            if npad > 0 {
                xq.extend(gather(&x_m[(na + nb + nt) * d..], d, &qi));
            }
            let nxq = nq + nb + nt + if npad > 0 { nq } else { 0 };
            let q_scored = |v: &[f32]| Scored::split(v, nq, nb, nt);

            // The meta-learned model, adapted as the agent adapts it (budget checked below).
            let acfg = AdaptConfig {
                fpr_budget: f64::INFINITY,
                seed: rng.random(),
                family: Some(fname.to_string()),
                ..AdaptConfig::default()
            };
            let (m_comb, m_prob, m_int8, served_refused) =
                match adapt(&meta, &pos_rows, &ben_rows, &acfg) {
                    Ok(a) => {
                        let refuse = a.report.fpr_after - a.report.fpr_before > cfg.fpr_budget;
                        let xa = if a.model.input(fs)?.normaliser == norm_m {
                            xq.clone()
                        } else {
                            // The normaliser stays the training one; recompute if it ever did not.
                            let mut raw = gather(&all_raw, d, &qi);
                            raw.extend_from_slice(&all_raw[na * d..(na + nb + nt) * d]);
                            if npad > 0 {
                                raw.extend(gather(&all_raw[(na + nb + nt) * d..], d, &qi));
                            }
                            a.model.normalise(&Rows::of(ds).with_values(&raw))?
                        };
                        let (_, _, s) = run_model(&a.model, fs, ScorePath::Reference, &xa, nxq)?;
                        let (_, _, si) = run_model(&a.model, fs, ScorePath::Int8(None), &xa, nxq)?;
                        let mut y = vec![1u8; nq];
                        y.resize(nq + nb, 0);
                        let g = match (
                            metrics::roc_auc(&comb(&s)[..nq + nb], &y),
                            metrics::roc_auc(&comb(&si)[..nq + nb], &y),
                        ) {
                            (Some(x), Some(z)) => (x - z).abs(),
                            _ => f64::NAN,
                        };
                        gaps.push(g);
                        if refuse {
                            refused += 1;
                        }
                        (
                            q_scored(&comb(&s)),
                            q_scored(&prob(&s)),
                            q_scored(&comb(&si)),
                            refuse,
                        )
                    }
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert_with(|| format!("meta adaptation: {e}"));
                        let z = Scored {
                            attack: vec![f32::NAN; nq],
                            ..Default::default()
                        };
                        (z.clone(), z.clone(), z, true)
                    }
                };
            // Zero-shot on the same query.
            let zq = |s: &Scored| Scored {
                attack: subset(&s.attack, &qi),
                benign: s.benign.clone(),
                threshold: s.threshold.clone(),
                padded: if npad > 0 {
                    subset(&s.padded, &qi)
                } else {
                    vec![]
                },
            };
            let z_comb = zq(&meta_comb);
            let z_prob = zq(&meta_prob);
            let served = if served_refused { &z_comb } else { &m_comb };

            // (b) From scratch: the same architecture, the training normaliser, the support.
            let scratch = {
                let mut m0 = Model::new(
                    meta.arch.clone(),
                    &[(fs.to_string(), norm_m.clone())],
                    rng.random(),
                );
                let nbt = bs.len().min(256);
                let mut x = norm_m.apply_vec(&sx);
                x.extend(norm_m.apply_vec(&bx[..nbt * d]));
                let mut y = vec![1u8; k];
                y.resize(k + nbt, 0);
                let batch = net::Batch::new(&x, d, &y, &dev).map_err(ModelError::from)?;
                let p = net::params_of(&m0, fs, &dev).map_err(ModelError::from)?;
                let p = net::sgd(p, &batch, cfg.scratch_steps, cfg.scratch_lr, &[])
                    .map_err(ModelError::from)?;
                net::store(&mut m0, fs, &p)?;
                let (l, _, _) = run_model(&m0, fs, ScorePath::Reference, &xq, nxq)?;
                q_scored(&l)
            };
            // (c) Last-layer fine-tuning of the supervised network (embeddings fixed).
            let hcfg = AdaptConfig {
                trainable: Trainable::Head,
                steps: Some(cfg.head_steps),
                lr: Some(cfg.head_lr),
                fpr_budget: f64::INFINITY,
                seed: rng.random(),
                ..AdaptConfig::default()
            };
            let head = match adapt(&sup, &pos_rows, &ben_rows, &hcfg) {
                Ok(a) => {
                    let e = sup.embed_dim();
                    let h = &a.model.head;
                    let logit = |r: usize| {
                        h.bias[0] + super::layers::dot(&h.weight[..e], &sup_emb[r * e..(r + 1) * e])
                    };
                    let mut v: Vec<f32> = qi.iter().map(|&r| logit(r)).collect();
                    v.extend((na..na + nb + nt).map(logit));
                    if npad > 0 {
                        v.extend(qi.iter().map(|&r| logit(na + nb + nt + r)));
                    }
                    q_scored(&v)
                }
                Err(e) => {
                    failed += 1;
                    first_failure.get_or_insert_with(|| format!("head fine-tuning: {e}"));
                    Scored {
                        attack: vec![f32::NAN; nq],
                        ..Default::default()
                    }
                }
            };
            // (d') The feature that best separates the support.
            let mut sl = vec![1u8; k];
            sl.resize(k + bs.len(), 0);
            let mut srows = sx.clone();
            srows.extend_from_slice(&bx);
            let fsup = strongest_feature(&srows, d, &sl, names, &norm_m)
                .ok_or_else(|| invalid("support without both classes".into()))?;
            *support_features.entry(fsup.name.clone()).or_default() += 1;
            let fsup_sc = {
                let col = |r: usize| fsup.sign * all_raw[r * d + fsup.index];
                let mut v: Vec<f32> = qi.iter().map(|&r| col(r)).collect();
                v.extend((na..na + nb + nt).map(col));
                if npad > 0 {
                    v.extend(qi.iter().map(|&r| col(na + nb + nt + r)));
                }
                q_scored(&v)
            };

            let evals: [(&str, &Scored, Operating); 11] = [
                (META, &m_comb, meta_op),
                (META_PROB, &m_prob, meta_op),
                (META_SERVED, served, meta_op),
                (META_INT8, &m_int8, meta_op),
                (ZERO, &z_comb, meta_op),
                (ZERO_PROB, &z_prob, meta_op),
                (SCRATCH, &scratch, ops(&scratch)),
                (HEAD, &head, ops(&head)),
                (FEATURE, &zq(&feat_sc), ops(&feat_sc)),
                (FEATURE_SUPPORT, &fsup_sc, ops(&fsup_sc)),
                (IFOREST, &zq(&if_sc), ops(&if_sc)),
            ];
            for (name, s, op) in evals {
                let point = if s.benign.is_empty() {
                    nan_point()
                } else {
                    Eval {
                        pos: s.attack.clone(),
                        neg: &s.benign,
                        padded: (npad > 0).then(|| s.padded.clone()),
                        op,
                    }
                    .point(&sh.ctx)
                };
                per.entry(name.to_string()).or_default().push(point);
                if !s.benign.is_empty() {
                    let r = stats::roc_at(&s.attack, &s.benign, &grid);
                    let e = roc_sum
                        .entry(name.to_string())
                        .or_insert_with(|| (vec![0.0; grid.len()], 0));
                    e.0.iter_mut().zip(&r).for_each(|(a, b)| *a += b);
                    e.1 += 1;
                }
            }
            if (draw_i + 1) % 25 == 0 || draw_i + 1 == cfg.draws {
                progress(&format!(
                    "{tag}: K = {k}: {}/{} draws ({:.0} s)",
                    draw_i + 1,
                    cfg.draws,
                    t2.elapsed().as_secs_f64()
                ));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, &[fs, fname, "boot"], &[k as u64]));
        let summary = summarise(&per, cfg.bootstrap, &mut rng);
        let paired = paired_diffs(&[&per], cfg.bootstrap, &mut rng);
        let finite: Vec<f64> = gaps.iter().copied().filter(|g| g.is_finite()).collect();
        by_k.push(KResult {
            k,
            draws: cfg.draws,
            support_sessions_mean: sess_sum as f64 / cfg.draws.max(1) as f64,
            support_sessions_max: sess_max,
            query_attack_rows_mean: q_sum as f64 / cfg.draws.max(1) as f64,
            refused,
            failed,
            first_failure,
            summary,
            paired,
            roc: roc_sum
                .into_iter()
                .map(|(m, (s, n))| (m, s.iter().map(|v| v / n.max(1) as f64).collect()))
                .collect(),
            int8_gap_mean: finite.iter().sum::<f64>() / finite.len().max(1) as f64,
            int8_gap_max: finite.iter().cloned().fold(0.0, f64::max),
            per_draw: per,
        });
    }
    Ok(FamilyResult {
        family: fname.to_string(),
        sessions: fam.sessions.len(),
        rows: na,
        train_rows: train_ds.rows(),
        train_seconds: [meta_s, sup_s],
        tasks: rep.tasks,
        skipped_tasks: rep.skipped_tasks,
        alert_threshold: rule.alert_threshold,
        novelty_weight: rule.novelty_weight,
        feature,
        support_features,
        k0,
        int8_gap_k0,
        roc_k0,
        by_k,
        padding,
        draw_seconds: t2.elapsed().as_secs_f64(),
    })
}

/// Mean and interval of every metric of every method.
fn summarise(
    per: &BTreeMap<String, Vec<Point>>,
    resamples: usize,
    rng: &mut impl Rng,
) -> BTreeMap<String, Summary> {
    per.iter()
        .map(|(m, pts)| {
            let s = SUMMARY_METRICS
                .iter()
                .map(|&k| {
                    let v: Vec<f64> = pts.iter().map(|p| metric_of(p, k)).collect();
                    (k.to_string(), stats::bootstrap(&[&v], resamples, rng))
                })
                .collect();
            (m.clone(), s)
        })
        .collect()
}

/// Paired differences meta − baseline per metric, macro over `groups` (one per family; each
/// family's draws are paired by draw index).
fn paired_diffs(
    groups: &[&BTreeMap<String, Vec<Point>>],
    resamples: usize,
    rng: &mut impl Rng,
) -> BTreeMap<String, Summary> {
    let mut out = BTreeMap::new();
    for (b, _) in BASELINES {
        let mut s = Summary::new();
        for &metric in &SUMMARY_METRICS {
            let diffs: Vec<Vec<f64>> = groups
                .iter()
                .filter_map(|g| {
                    let (m, o) = (g.get(META)?, g.get(b)?);
                    Some(
                        m.iter()
                            .zip(o)
                            .map(|(x, y)| metric_of(x, metric) - metric_of(y, metric))
                            .collect(),
                    )
                })
                .collect();
            let refs: Vec<&[f64]> = diffs.iter().map(Vec::as_slice).collect();
            s.insert(metric.to_string(), stats::bootstrap(&refs, resamples, rng));
        }
        out.insert(b.to_string(), s);
    }
    out
}

/// The three intervals a verdict compares: meta's, the baseline's, and their paired
/// difference.
#[derive(Clone, Copy)]
struct Compared {
    meta: Interval,
    other: Interval,
    diff: Interval,
}

impl Verdict {
    /// Meta against `baseline` on `metric` for `family` at K = `k`.
    fn of(family: &str, k: usize, baseline: &str, metric: &str, c: Compared) -> Verdict {
        let Compared { meta, other, diff } = c;
        let outcome = if meta.n == 0 || other.n == 0 {
            "n/a"
        } else if meta.lo > other.hi {
            "beats"
        } else if meta.hi < other.lo {
            "worse"
        } else {
            "overlap"
        };
        Verdict {
            family: family.to_string(),
            k,
            baseline: baseline.to_string(),
            metric: metric.to_string(),
            meta,
            other,
            diff,
            outcome: outcome.to_string(),
            paired_beats: diff.n > 0 && diff.lo > 0.0,
        }
    }
}

/// Evaluates one dataset (every eligible family, or those of `cfg.families` it has).
pub fn evaluate_dataset(
    input: &Input,
    cfg: &EvalConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<DatasetResult, EvalError> {
    let start = Instant::now();
    let ds = input.data;
    check_dataset(&input.file, ds)?;
    if cfg.ks.is_empty() || cfg.draws == 0 {
        return Err(EvalError::Invalid(
            "--k needs at least one value and --draws at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.benign_query_fraction) || cfg.benign_query_fraction == 0.0 {
        return Err(EvalError::Invalid(
            "the benign query fraction must be in (0, 1)".into(),
        ));
    }
    let fs = ds.source.as_str();
    let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, &[fs, "split"], &[]));
    let split = protocol::split_benign(ds, cfg.benign_query_fraction, &mut rng)
        .map_err(|e| EvalError::Invalid(format!("{}: {e}", input.file)))?;
    let mut q = split.query.clone();
    let mut bq = episodes::sample(&mut q, cfg.max_benign_query, &mut rng);
    bq.sort_unstable();
    let mut t = split.train.clone();
    let mut bt = episodes::sample(&mut t, cfg.threshold_rows, &mut rng);
    bt.sort_unstable();
    // Benign rows per hour of recording: the dataset's benign rows over its time span.
    let benign_per_hour = ds.timestamp_ns.as_ref().and_then(|ts| {
        let (lo, hi) = (ts.iter().min()?, ts.iter().max()?);
        let hours = (hi - lo) as f64 / 3.6e12;
        let benign = ds.label.iter().filter(|&&l| l == 0).count();
        (hours > 0.0).then(|| benign as f64 / hours)
    });
    let cols = Columns::of(&ds.feature_names);
    let padding_na = match &cols {
        Some(_) => None,
        None if fs == "nsl-kdd" => Some(
            "NSL-KDD's features describe whole connections (bytes, duration, flags, content \
             indicators such as `hot` or `num_failed_logins`, and counts over the last 2 s or \
             100 connections) and hold no packet count, packet sizes or gaps: 30% more packets \
             has no defined size here (the bytes added depend on packets the data does not \
             count), and the connection-window features, which count connections, would not \
             change at all. A byte-level stand-in would measure the stand-in, not padding; \
             not evaluated"
                .to_string(),
        ),
        None => Some(format!(
            "`{fs}` has no packet counts, sizes or gaps per flow: padding is not defined on \
             its features; not evaluated"
        )),
    };
    // Sources without addresses or times get pseudo-sessions (docs/dataset-format.md).
    let sessions_note = ds.timestamp_ns.is_none().then(|| {
        "the source has no addresses or times, so sessions are the importer's pseudo-sessions \
         (blocks of consecutive rows per attack label); in a shuffled file such as NSL-KDD's \
         they are random groups of rows, and keeping support and query in different \
         pseudo-sessions is no stronger than a random split of rows"
            .to_string()
    });
    let pad = cols.map(|c| {
        let rows = gather(&ds.features, ds.n_features(), &split.train);
        let pool = BenignPackets::collect(&c, &rows, ds.n_features());
        (c, pool)
    });
    let sh = Shared {
        ds,
        cfg,
        ctx: Context {
            base_rate: cfg.base_rate,
            benign_per_hour,
        },
        bq,
        bt,
        split,
        pad,
    };

    // Eligible families.
    let max_k = cfg.ks.iter().copied().max().unwrap_or(0);
    let mut skipped = Vec::new();
    let mut todo = Vec::new();
    for (name, sessions) in families_of(ds) {
        if !cfg.families.is_empty() && !cfg.families.contains(&name) {
            continue;
        }
        let fam = FamilyRows::of(ds, &name);
        if sessions < 2 {
            skipped.push((
                name,
                format!(
                    "{sessions} session ({} rows): needs two, one for the support and one for \
                     the query",
                    fam.rows().len()
                ),
            ));
            continue;
        }
        let mut r = ChaCha8Rng::seed_from_u64(1);
        if max_k > 0 && (0..200).all(|_| protocol::draw(&fam, max_k, &mut r).is_none()) {
            skipped.push((
                name,
                format!(
                    "{sessions} sessions, {} rows: no support of K = {max_k} leaves a session \
                     for the query",
                    fam.rows().len()
                ),
            ));
            continue;
        }
        todo.push(fam);
    }
    for f in &cfg.families {
        if !families_of(ds).contains_key(f) {
            skipped.push((f.clone(), "not in this dataset".into()));
        }
    }
    progress(&format!(
        "{}: {} rows; benign sessions {} for training, {} for the query ({} query rows); \
         families: {}",
        input.file,
        ds.rows(),
        sh.split.train_sessions,
        sh.split.query_sessions,
        sh.bq.len(),
        todo.iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Families in parallel (each is seeded by its name: the result does not depend on this).
    let next = AtomicUsize::new(0);
    type Slot = Option<Result<FamilyResult, EvalError>>;
    let results: Mutex<Vec<Slot>> = Mutex::new((0..todo.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..cfg.threads.clamp(1, todo.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= todo.len() {
                    break;
                }
                let r = eval_family(&sh, &todo[i], progress);
                if let Err(e) = &r {
                    progress(&format!(
                        "{}/{}: not evaluated: {e}",
                        sh.ds.source, todo[i].name
                    ));
                }
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let mut families = Vec::new();
    let results = results.into_inner().unwrap_or_default();
    for (fam, r) in todo.iter().zip(results) {
        match r {
            Some(Ok(f)) => families.push(f),
            // Data that cannot make this family's tasks: skipped, with the reason.
            Some(Err(EvalError::Invalid(e))) => skipped.push((fam.name.clone(), e)),
            Some(Err(e)) => return Err(e),
            None => skipped.push((fam.name.clone(), "not evaluated".into())),
        }
    }
    if families.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: no family could be evaluated ({})",
            input.file,
            skipped
                .iter()
                .map(|(f, w)| format!("{f}: {w}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }

    // Macro averages.
    let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, &[fs, "macro"], &[]));
    let mut macro_summary = BTreeMap::new();
    let mut macro_paired = BTreeMap::new();
    let mut k0 = BTreeMap::new();
    for m in K0_METHODS {
        let mut s = Summary::new();
        for &metric in &SUMMARY_METRICS {
            let v: Vec<f64> = families
                .iter()
                .filter_map(|f| f.k0.get(m).map(|p| metric_of(p, metric)))
                .collect();
            let groups: Vec<[f64; 1]> = v.iter().map(|&x| [x]).collect();
            let refs: Vec<&[f64]> = groups.iter().map(|g| &g[..]).collect();
            s.insert(metric.to_string(), stats::bootstrap(&refs, 0, &mut rng));
        }
        k0.insert(m.to_string(), s);
    }
    macro_summary.insert(0, k0);
    let mut verdicts = Vec::new();
    for &k in cfg.ks.iter().filter(|&&k| k > 0) {
        let groups: Vec<&BTreeMap<String, Vec<Point>>> = families
            .iter()
            .filter_map(|f| f.by_k.iter().find(|r| r.k == k).map(|r| &r.per_draw))
            .collect();
        let mut per_method = BTreeMap::new();
        for m in METHODS {
            let mut s = Summary::new();
            for &metric in &SUMMARY_METRICS {
                let vals: Vec<Vec<f64>> = groups
                    .iter()
                    .filter_map(|g| g.get(m))
                    .map(|pts| pts.iter().map(|p| metric_of(p, metric)).collect())
                    .collect();
                let refs: Vec<&[f64]> = vals.iter().map(Vec::as_slice).collect();
                s.insert(
                    metric.to_string(),
                    stats::bootstrap(&refs, cfg.bootstrap, &mut rng),
                );
            }
            per_method.insert(m.to_string(), s);
        }
        let paired = paired_diffs(&groups, cfg.bootstrap, &mut rng);
        for (b, _) in BASELINES {
            for metric in VERDICT_METRICS {
                for f in &families {
                    if let Some(r) = f.by_k.iter().find(|r| r.k == k) {
                        let c = Compared {
                            meta: r.summary[META][metric],
                            other: r.summary[b][metric],
                            diff: r.paired[b][metric],
                        };
                        verdicts.push(Verdict::of(&f.family, k, b, metric, c));
                    }
                }
                let c = Compared {
                    meta: per_method[META][metric],
                    other: per_method[b][metric],
                    diff: paired[b][metric],
                };
                verdicts.push(Verdict::of("macro", k, b, metric, c));
            }
        }
        macro_summary.insert(k, per_method);
        macro_paired.insert(k, paired);
    }
    families.sort_by(|a, b| a.family.cmp(&b.family));
    Ok(DatasetResult {
        file: input.file.clone(),
        feature_set: ds.source.clone(),
        sha256: ds.digest(),
        rows: ds.rows(),
        benign_sessions: [sh.split.train_sessions, sh.split.query_sessions],
        benign_rows: [sh.split.train.len(), sh.bq.len()],
        benign_per_hour,
        padding_na,
        sessions_note,
        families,
        skipped,
        macro_summary,
        macro_paired,
        verdicts,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::train::tests::synthetic;

    fn small() -> EvalConfig {
        let mut cfg = EvalConfig {
            ks: vec![0, 1, 5],
            draws: 4,
            bootstrap: 50,
            benign_support: 60,
            threshold_rows: 100,
            scratch_steps: 10,
            head_steps: 10,
            threads: 2,
            ..Default::default()
        };
        cfg.train = crate::model::train::tests::small_cfg(Algo::Reptile);
        cfg.train.iterations = 20;
        cfg
    }

    #[test]
    fn a_small_evaluation_runs_end_to_end_and_is_reproducible() {
        let ds = synthetic(&["a", "b", "c"], 5, 12, 11);
        let input = Input {
            file: "synth.dds".into(),
            data: &ds,
        };
        let cfg = small();
        let r = evaluate_dataset(&input, &cfg, &|_| {}).unwrap();
        assert_eq!(r.families.len(), 3);
        assert!(r.padding_na.is_some(), "synthetic columns: no padding");
        for f in &r.families {
            assert_eq!(f.by_k.len(), 2);
            for kr in &f.by_k {
                assert_eq!(kr.per_draw[META].len(), 4);
                assert!(kr.summary[META]["roc_auc"].mean.is_finite());
                for m in METHODS {
                    assert!(kr.per_draw.contains_key(m), "{m}");
                }
            }
            assert!(f.k0[META].roc_auc.is_finite());
        }
        assert!(r.verdicts.iter().any(|v| v.family == "macro"));
        // The same seed gives the same numbers, whatever the thread count.
        let cfg1 = EvalConfig {
            threads: 1,
            ..cfg.clone()
        };
        let r1 = evaluate_dataset(&input, &cfg1, &|_| {}).unwrap();
        for (a, b) in r.families.iter().zip(&r1.families) {
            // Debug text: NaN fields (no timestamps, no padding) compare equal that way.
            for m in [META, SCRATCH, HEAD, IFOREST] {
                assert_eq!(
                    format!("{:?}", a.by_k[1].per_draw[m]),
                    format!("{:?}", b.by_k[1].per_draw[m])
                );
            }
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let names = vec!["x".to_string()];
        let empty = Dataset::new("t", names.clone());
        let e = check_dataset("e.dds", &empty).unwrap_err().to_string();
        assert!(e.contains("e.dds") && e.contains("no rows"), "{e}");
        let mut benign = Dataset::new("t", names);
        benign.push(&[1.0], 0, "benign", "normal", "s", None);
        let e = check_dataset("b.dds", &benign).unwrap_err().to_string();
        assert!(e.contains("single class"), "{e}");
        let ds = synthetic(&["a", "b"], 3, 5, 1);
        let inputs = [Input {
            file: "s.dds".into(),
            data: &ds,
        }];
        let e = check_families(&inputs, &["zzz".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown family `zzz`") && e.contains("a, b"),
            "{e}"
        );
        assert!(check_families(&inputs, &["a".into()]).is_ok());
        // A family with one session is skipped with the reason.
        let mut one = synthetic(&["a", "b"], 3, 5, 2);
        one.push(&[9.0; 8], 1, "lonely", "lonely", "only", None);
        let cfg = EvalConfig {
            families: vec!["lonely".into()],
            ..small()
        };
        let e = evaluate_dataset(
            &Input {
                file: "o.dds".into(),
                data: &one,
            },
            &cfg,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lonely") && e.contains("needs two"), "{e}");
    }

    #[test]
    fn the_strongest_feature_is_found_in_either_direction() {
        let names: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
        // f1 separates (attacks low), f0 and f2 are noise.
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for i in 0..40 {
            let a = i % 2 == 0;
            rows.extend([
                (i % 7) as f32,
                if a { -5.0 } else { 5.0 + i as f32 },
                (i % 3) as f32,
            ]);
            y.push(a as u8);
        }
        let norm = Normaliser::fit(names.clone(), &rows);
        let f = strongest_feature(&rows, 3, &y, &names, &norm).unwrap();
        assert_eq!((f.index, f.sign, f.auc), (1, -1.0, 1.0));
    }
}

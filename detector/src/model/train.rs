//! Meta-training: episodic tasks (one attack family or type against benign, support and query
//! from different sessions, sampled across datasets), Reptile, first-order and second-order
//! MAML, and plain supervised training (the conventional baseline). Then calibration, the
//! alert threshold and benign prototypes on held-out validation sessions.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    episodes::{self, split_sessions, Split, TaskBy, TaskIndex},
    gather, metrics, net, novelty, Arch, Calibration, DataDigest, InnerLoop, Model, ModelError,
    Normaliser, Prototypes, ScoreRule,
};
use crate::dataset::Dataset;

/// Meta-learning algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// Reptile (Nichol et al. 2018): move θ towards the task-adapted weights.
    Reptile,
    /// First-order MAML: the query gradient at the adapted weights.
    Fomaml,
    /// Second-order MAML: the exact gradient through the inner loop.
    Maml,
    /// No episodes: mini-batches of benign against all attacks (the conventional baseline).
    Supervised,
}

/// Training options; every field has a default ([`TrainConfig::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Algorithm.
    pub algo: Algo,
    /// Meta-iterations (outer updates).
    pub iterations: usize,
    /// Tasks per outer update.
    pub meta_batch: usize,
    /// Inner-loop SGD steps (also the adaptation default stored in the model).
    pub inner_steps: usize,
    /// Inner-loop SGD learning rate.
    pub inner_lr: f32,
    /// Outer step: Reptile's ε (annealed linearly to 0), or Adam's rate for the others.
    /// `None`: 1.0 for Reptile, 1e-3 otherwise.
    pub meta_lr: Option<f32>,
    /// Largest K: each episode draws K uniformly from 1..=k_shot attack rows.
    pub k_shot: usize,
    /// Benign rows in each support set.
    pub benign_shot: usize,
    /// Attack rows and benign rows (each) in each query set.
    pub query: usize,
    /// RNG seed: the same seed, data and machine give the same model.
    pub seed: u64,
    /// Families excluded from training, validation and the normaliser.
    pub holdout_families: Vec<String>,
    /// What a task's positive class is.
    pub task_by: TaskBy,
    /// Fraction of each family's sessions kept for validation.
    pub val_fraction: f64,
    /// Validation AUC every this many iterations (0: only at the end).
    pub eval_every: usize,
    /// Layer widths.
    pub arch: Arch,
    /// The alert threshold is set so that at most this fraction of validation benign rows
    /// alert on probability (never below 0.5).
    pub target_fpr: f64,
    /// Novelty alone reaches the alert threshold at this benign quantile.
    pub novelty_quantile: f32,
    /// Alert only on flows that are attack-like and unusual ([`ScoreRule::require_novelty`]).
    #[serde(default)]
    pub require_novelty: bool,
    /// Known feature sets to give an (untrained) input layer although no data has them.
    pub extra_feature_sets: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            algo: Algo::Reptile,
            iterations: 2000,
            meta_batch: 4,
            inner_steps: 10,
            inner_lr: 0.1,
            meta_lr: None,
            k_shot: 10,
            benign_shot: 64,
            query: 64,
            seed: 1,
            holdout_families: vec![],
            task_by: TaskBy::Family,
            val_fraction: 0.2,
            eval_every: 100,
            arch: Arch::default(),
            target_fpr: 1e-3,
            novelty_quantile: 0.999,
            require_novelty: false,
            extra_feature_sets: vec![],
        }
    }
}

impl TrainConfig {
    /// The outer step size in use.
    pub fn meta_lr(&self) -> f32 {
        self.meta_lr.unwrap_or(match self.algo {
            Algo::Reptile => 1.0,
            _ => 1e-3,
        })
    }
}

/// What can stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad options or data that cannot make tasks.
    #[error("{0}")]
    Invalid(String),
    /// Model maths failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// candle failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Progress, reported to the caller's callback.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Iterations done.
    pub iteration: usize,
    /// Of this many.
    pub iterations: usize,
    /// Mean query loss after adaptation (training loss for `supervised`) over recent tasks.
    pub loss: f32,
    /// Macro-averaged validation ROC-AUC of the unadapted model (K = 0), when just measured.
    pub val_auc: Option<f64>,
}

/// What training did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Wall time.
    pub seconds: f64,
    /// Tasks (dataset/group) that episodes were drawn from.
    pub tasks: Vec<String>,
    /// Groups skipped (too few sessions to keep support and query apart).
    pub skipped_tasks: Vec<String>,
    /// Final metrics (also stored in the model).
    pub metrics: BTreeMap<String, f64>,
    /// The session split of each dataset, in input order (for evaluation on the same split).
    #[serde(skip)]
    pub splits: Vec<Split>,
}

struct Prepared<'a> {
    ds: &'a Dataset,
    x: Vec<f32>,
    d: usize,
    split: Split,
    tasks: TaskIndex,
    usable: Vec<usize>,
}

/// Adam state of one parameter array.
#[derive(Default)]
struct AdamState {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

/// Meta-trains a model on `datasets` (any mix of feature sets). `progress` is called after
/// every iteration.
pub fn train(
    datasets: &[&Dataset],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Model, TrainReport), TrainError> {
    let start = Instant::now();
    let invalid = |s: String| TrainError::Invalid(s);
    cfg.arch.validate().map_err(invalid)?;
    if datasets.is_empty() {
        return Err(invalid("no training data".into()));
    }
    if cfg.k_shot == 0 || cfg.meta_batch == 0 || cfg.query == 0 || cfg.benign_shot == 0 {
        return Err(invalid(
            "--k-shot, --meta-batch, --query and --benign-shot must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(invalid("--val-fraction must be in [0, 1)".into()));
    }
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);

    // Feature sets: one set of columns per name.
    let mut columns: BTreeMap<&str, &[String]> = BTreeMap::new();
    for ds in datasets {
        ds.validate()
            .map_err(|e| invalid(format!("dataset `{}`: {e}", ds.source)))?;
        if ds.n_features() == 0 {
            return Err(invalid(format!("dataset `{}` has no features", ds.source)));
        }
        if let Some(prev) = columns.insert(&ds.source, &ds.feature_names) {
            super::check_features(&ds.source, prev, &ds.feature_names)?;
        }
    }
    let splits: Vec<Split> = datasets
        .iter()
        .map(|ds| split_sessions(ds, cfg.val_fraction, &cfg.holdout_families, &mut rng))
        .collect();
    // Normalisers on training rows only.
    let mut norms = Vec::new();
    for (&fs, names) in &columns {
        let mut rows = Vec::new();
        for (ds, sp) in datasets.iter().zip(&splits) {
            if ds.source == fs {
                rows.extend(gather(&ds.features, ds.n_features(), &sp.train));
            }
        }
        if rows.is_empty() {
            return Err(invalid(format!(
                "feature set `{fs}` has no training rows left (held out: {:?})",
                cfg.holdout_families
            )));
        }
        norms.push((fs.to_string(), Normaliser::fit(names.to_vec(), &rows)));
    }
    for extra in &cfg.extra_feature_sets {
        if columns.contains_key(extra.as_str()) {
            continue;
        }
        let names = known_feature_set(extra).ok_or_else(|| {
            invalid(format!(
                "--add-feature-set {extra}: only `{}` and `{}` can be added without data",
                crate::features::FEATURE_SET,
                crate::features::LIVE_FEATURE_SET
            ))
        })?;
        norms.push((extra.clone(), Normaliser::unfitted(names)));
    }
    let mut model = Model::new(cfg.arch.clone(), &norms, cfg.seed);

    let mut prepared = Vec::new();
    let mut report_tasks = Vec::new();
    let mut skipped = Vec::new();
    for (ds, split) in datasets.iter().zip(splits.iter()) {
        let x = model.input(&ds.source)?.normaliser.apply_vec(&ds.features);
        let tasks = TaskIndex::build(ds, &split.train, cfg.task_by);
        let usable = tasks.usable();
        for (g, grp) in tasks.groups.iter().enumerate() {
            let name = format!("{}/{}", ds.source, grp.name);
            if usable.contains(&g) {
                report_tasks.push(name);
            } else {
                skipped.push(format!("{name} ({} sessions)", grp.sessions.len()));
            }
        }
        prepared.push(Prepared {
            ds,
            d: ds.n_features(),
            x,
            split: split.clone(),
            tasks,
            usable,
        });
    }
    let active: Vec<usize> = (0..prepared.len())
        .filter(|&i| !prepared[i].usable.is_empty())
        .collect();
    if active.is_empty() {
        return Err(invalid(format!(
            "no task has two sessions of attack rows and two benign sessions to keep support and \
             query apart (skipped: {})",
            skipped.join(", ")
        )));
    }
    // Validation rows for the progress AUC: at most 4000 per dataset.
    let val_sample: Vec<Vec<usize>> = prepared
        .iter()
        .map(|p| {
            let mut v = p.split.val.clone();
            episodes::sample(&mut v, 4000, &mut rng)
        })
        .collect();

    let meta_lr = cfg.meta_lr();
    let mut adam: HashMap<String, AdamState> = HashMap::new();
    let mut loss_ema: Option<f32> = None;
    for it in 0..cfg.iterations {
        // Sum of updates (Reptile deltas or meta-gradients) per layer key, and task counts.
        let mut acc: BTreeMap<String, (Vec<f32>, usize)> = BTreeMap::new();
        let mut losses = Vec::new();
        for _ in 0..cfg.meta_batch {
            let pi = active[rng.random_range(0..active.len())];
            let p = &prepared[pi];
            let fs = p.ds.source.as_str();
            let theta = net::params_of(&model, fs, &dev)?;
            let (update, loss) = match cfg.algo {
                Algo::Supervised => {
                    let b = supervised_batch(p, cfg.benign_shot, &mut rng, &dev)?;
                    let Some(b) = b else { continue };
                    let l = net::loss_value(&theta, &b)?;
                    (net::grads(&theta, &b)?, l)
                }
                _ => {
                    let g = p.usable[rng.random_range(0..p.usable.len())];
                    let k = rng.random_range(1..=cfg.k_shot);
                    let Some(ep) =
                        p.tasks
                            .draw(g, k, cfg.benign_shot, cfg.query, cfg.query, &mut rng)
                    else {
                        continue;
                    };
                    let support = episode_batch(p, &ep.support_pos, &ep.support_neg, &dev)?;
                    let query = episode_batch(p, &ep.query_pos, &ep.query_neg, &dev)?;
                    match cfg.algo {
                        Algo::Reptile => {
                            let adapted = net::sgd(
                                theta.clone(),
                                &support,
                                cfg.inner_steps,
                                cfg.inner_lr,
                                &[],
                            )?;
                            let l = net::loss_value(&adapted, &query)?;
                            let delta = adapted
                                .iter()
                                .zip(&theta)
                                .map(|(a, t)| a - t)
                                .collect::<Result<Vec<Tensor>, _>>()?;
                            (delta, l)
                        }
                        Algo::Fomaml => net::fomaml_meta_gradient(
                            &theta,
                            &support,
                            &query,
                            cfg.inner_steps,
                            cfg.inner_lr,
                        )?,
                        _ => net::maml_meta_gradient(
                            &theta,
                            &support,
                            &query,
                            cfg.inner_steps,
                            cfg.inner_lr,
                        )?,
                    }
                }
            };
            losses.push(loss);
            let keys = layer_keys(&model, fs);
            for (i, t) in update.iter().enumerate() {
                let key = format!("{}/{}", keys[i / 2], if i % 2 == 0 { "w" } else { "b" });
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                let e = acc.entry(key).or_insert_with(|| (vec![0.0; v.len()], 0));
                e.0.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
                e.1 += 1;
            }
        }
        // Apply the outer update.
        let eps = meta_lr * (1.0 - it as f32 / cfg.iterations.max(1) as f32);
        for (key, (sum, count)) in acc {
            let mean: Vec<f32> = sum.iter().map(|v| v / count as f32).collect();
            let target = param_mut(&mut model, &key)?;
            match cfg.algo {
                Algo::Reptile => target
                    .iter_mut()
                    .zip(&mean)
                    .for_each(|(t, d)| *t += eps * d),
                _ => adam_step(adam.entry(key).or_default(), target, &mean, meta_lr),
            }
        }
        if !losses.is_empty() {
            let l = losses.iter().sum::<f32>() / losses.len() as f32;
            loss_ema = Some(loss_ema.map_or(l, |e| 0.9 * e + 0.1 * l));
        }
        let last = it + 1 == cfg.iterations;
        let val_auc = if last || (cfg.eval_every > 0 && (it + 1) % cfg.eval_every == 0) {
            validation_auc(&model, &prepared, &val_sample)?
        } else {
            None
        };
        progress(&Progress {
            iteration: it + 1,
            iterations: cfg.iterations,
            loss: loss_ema.unwrap_or(f32::NAN),
            val_auc,
        });
    }

    // Calibration, threshold and prototypes on validation sessions.
    for p in &prepared {
        if let Some(l) = model.inputs.get_mut(&p.ds.source) {
            l.trained = true;
        }
    }
    let mut metrics = BTreeMap::new();
    // Validation logits per feature set: each has its own calibration and threshold (base
    // rates and score distributions differ between sources).
    let mut by_fs: BTreeMap<String, (Vec<f32>, Vec<u8>)> = BTreeMap::new();
    // Calibration and threshold from datasets with attacks (those that trained the
    // probability); a benign-only dataset describes normal traffic, for the prototypes.
    for (p, sample) in prepared
        .iter()
        .zip(&val_sample)
        .filter(|(p, _)| !p.usable.is_empty())
    {
        let (logits, labels) = logits_of(&model, p, sample)?;
        if let Some(auc) = metrics::roc_auc(&logits, &labels) {
            metrics.insert(format!("val_auc/{}", p.ds.source), auc);
        }
        per_family_auc(p, sample, &logits, &mut metrics);
        let e = by_fs.entry(p.ds.source.clone()).or_default();
        e.0.extend(logits);
        e.1.extend(labels);
    }
    for (fs, (logits, labels)) in &by_fs {
        let calibration = Calibration::fit(logits, labels);
        let mut benign_p: Vec<f32> = logits
            .iter()
            .zip(labels)
            .filter(|(_, &y)| y == 0)
            .map(|(&z, _)| calibration.probability(z))
            .collect();
        benign_p.sort_by(|a, b| b.total_cmp(a));
        let allowed = (cfg.target_fpr * benign_p.len() as f64).floor() as usize;
        let threshold = benign_p
            .get(allowed)
            .map(|&p| (p + 1e-6).min(0.999))
            .unwrap_or(0.5)
            .max(0.5);
        if let Some(layer) = model.inputs.get_mut(fs) {
            layer.calibration = calibration;
            layer.rule = ScoreRule {
                alert_threshold: threshold,
                novelty_weight: threshold / cfg.novelty_quantile.clamp(0.5, 1.0),
                require_novelty: cfg.require_novelty,
            };
        }
    }
    // Prototypes per feature set from the benign rows of every dataset of it (benign traffic
    // of many networks: up to 4000 rows of each dataset), from training sessions; the benign
    // distance distribution from validation sessions, so novelty is calibrated on benign
    // traffic the prototypes have not seen.
    let fs_names: Vec<String> = columns.keys().map(|s| s.to_string()).collect();
    for fs in fs_names {
        let (mut fit, mut refe) = (Vec::new(), Vec::new());
        let (mut n_fit, mut n_ref) = (0, 0);
        for p in prepared.iter().filter(|p| p.ds.source == fs) {
            let benign_of = |rows: &[usize], rng: &mut ChaCha8Rng| {
                let mut v: Vec<usize> = rows
                    .iter()
                    .copied()
                    .filter(|&i| p.ds.label[i] == 0)
                    .collect();
                episodes::sample(&mut v, 4000, rng)
            };
            let benign = benign_of(&p.split.train, &mut rng);
            let reference = benign_of(&p.split.val, &mut rng);
            let embed = |rows: &[usize]| -> Result<Vec<f32>, ModelError> {
                let x = gather(&p.x, p.d, rows);
                let mut logits = vec![0f32; rows.len()];
                let mut emb = vec![0f32; rows.len() * model.embed_dim()];
                model
                    .stack(&fs)?
                    .forward(&x, rows.len(), &mut logits, Some(&mut emb));
                Ok(emb)
            };
            fit.extend(embed(&benign)?);
            refe.extend(embed(&reference)?);
            n_fit += benign.len();
            n_ref += reference.len();
        }
        if n_fit >= novelty::MIN_ROWS {
            let dim = model.embed_dim();
            let pr = if n_ref >= novelty::MIN_ROWS {
                Prototypes::fit_with_reference(&fit, &refe, dim, novelty::DEFAULT_K, &mut rng)
            } else {
                Prototypes::fit(&fit, dim, novelty::DEFAULT_K, cfg.seed)
            };
            if let Some(pr) = pr {
                model.prototypes.insert(fs, pr);
            }
        }
    }
    // Final scores on validation: the combined score's AUC and the false-alert rate.
    for (p, sample) in prepared.iter().zip(&val_sample) {
        let x = gather(&p.ds.features, p.d, sample);
        let rows = super::Rows {
            feature_set: &p.ds.source,
            features: &p.ds.feature_names,
            values: &x,
        };
        let scores = model.score(&rows)?;
        let labels: Vec<u8> = sample.iter().map(|&i| p.ds.label[i]).collect();
        let s: Vec<f32> = scores.iter().map(|s| s.score).collect();
        if let Some(auc) = metrics::roc_auc(&s, &labels) {
            metrics.insert(format!("val_auc_combined/{}", p.ds.source), auc);
        }
        let benign: Vec<&super::Score> = scores
            .iter()
            .zip(&labels)
            .filter(|(_, &y)| y == 0)
            .map(|(s, _)| s)
            .collect();
        if !benign.is_empty() {
            let fa = benign.iter().filter(|s| s.alert).count() as f64 / benign.len() as f64;
            metrics.insert(format!("val_false_alert_rate/{}", p.ds.source), fa);
        }
        let attack_alerts = scores
            .iter()
            .zip(&labels)
            .filter(|(s, &y)| y == 1 && s.alert)
            .count();
        let attacks = labels.iter().filter(|&&y| y == 1).count();
        if attacks > 0 {
            metrics.insert(
                format!("val_detection_rate/{}", p.ds.source),
                attack_alerts as f64 / attacks as f64,
            );
        }
    }
    if let Some(l) = loss_ema {
        metrics.insert("final_query_loss".into(), l as f64);
    }
    // Wall time stays out of the model, so the same seed and data give the same file.
    model.info.metrics = metrics.clone();
    metrics.insert("seconds".into(), start.elapsed().as_secs_f64());
    model.info.inner = InnerLoop {
        steps: cfg.inner_steps,
        lr: cfg.inner_lr,
    };
    model.info.training = serde_json::to_value(cfg).ok();
    model.info.data = datasets
        .iter()
        .map(|ds| DataDigest {
            feature_set: ds.source.clone(),
            sha256: ds.digest(),
            rows: ds.rows() as u64,
            file: String::new(),
        })
        .collect();
    Ok((
        model,
        TrainReport {
            seconds: start.elapsed().as_secs_f64(),
            tasks: report_tasks,
            skipped_tasks: skipped,
            metrics,
            splits,
        },
    ))
}

/// Feature names of a feature set the code defines (for an input layer without data): the
/// per-flow set and the live set the agent scores (flow features + context).
pub fn known_feature_set(name: &str) -> Option<Vec<String>> {
    use crate::features;
    match name {
        features::FEATURE_SET => Some(features::names()),
        features::LIVE_FEATURE_SET => Some(features::live_names()),
        _ => None,
    }
}

fn episode_batch(
    p: &Prepared,
    pos: &[usize],
    neg: &[usize],
    dev: &Device,
) -> Result<net::Batch, candle_core::Error> {
    let idx: Vec<usize> = pos.iter().chain(neg).copied().collect();
    let labels: Vec<u8> = idx.iter().map(|&i| p.ds.label[i]).collect();
    net::Batch::new(&gather(&p.x, p.d, &idx), p.d, &labels, dev)
}

fn supervised_batch(
    p: &Prepared,
    per_class: usize,
    rng: &mut impl Rng,
    dev: &Device,
) -> Result<Option<net::Batch>, candle_core::Error> {
    let n = p.split.train.len();
    if n == 0 {
        return Ok(None);
    }
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for _ in 0..per_class * 20 {
        if pos.len() >= per_class && neg.len() >= per_class {
            break;
        }
        let i = p.split.train[rng.random_range(0..n)];
        let v = if p.ds.label[i] == 1 {
            &mut pos
        } else {
            &mut neg
        };
        if v.len() < per_class {
            v.push(i);
        }
    }
    if pos.is_empty() || neg.is_empty() {
        return Ok(None);
    }
    episode_batch(p, &pos, &neg, dev).map(Some)
}

/// Layer keys of a feature set's stack, in parameter order.
fn layer_keys(model: &Model, fs: &str) -> Vec<String> {
    let mut k = vec![format!("input/{fs}")];
    k.extend((0..model.encoder.len()).map(|i| format!("encoder/{i}")));
    k.push("head".into());
    k
}

fn param_mut<'a>(model: &'a mut Model, key: &str) -> Result<&'a mut Vec<f32>, TrainError> {
    let (layer, which) = key
        .rsplit_once('/')
        .ok_or_else(|| TrainError::Invalid(format!("bad key {key}")))?;
    let lin = if let Some(fs) = layer.strip_prefix("input/") {
        &mut model
            .inputs
            .get_mut(fs)
            .ok_or_else(|| TrainError::Invalid(format!("no input layer {fs}")))?
            .linear
    } else if let Some(i) = layer.strip_prefix("encoder/") {
        let i: usize = i
            .parse()
            .map_err(|_| TrainError::Invalid(format!("bad key {key}")))?;
        &mut model.encoder[i]
    } else {
        &mut model.head
    };
    Ok(if which == "w" {
        &mut lin.weight
    } else {
        &mut lin.bias
    })
}

fn adam_step(s: &mut AdamState, theta: &mut [f32], g: &[f32], lr: f32) {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    if s.m.len() != g.len() {
        s.m = vec![0.0; g.len()];
        s.v = vec![0.0; g.len()];
    }
    s.t += 1;
    let c1 = 1.0 - B1.powi(s.t);
    let c2 = 1.0 - B2.powi(s.t);
    for i in 0..g.len() {
        s.m[i] = B1 * s.m[i] + (1.0 - B1) * g[i];
        s.v[i] = B2 * s.v[i] + (1.0 - B2) * g[i] * g[i];
        theta[i] -= lr * (s.m[i] / c1) / ((s.v[i] / c2).sqrt() + 1e-8);
    }
}

fn logits_of(
    model: &Model,
    p: &Prepared,
    rows: &[usize],
) -> Result<(Vec<f32>, Vec<u8>), ModelError> {
    let x = gather(&p.x, p.d, rows);
    let mut logits = vec![0f32; rows.len()];
    model
        .stack(&p.ds.source)?
        .forward(&x, rows.len(), &mut logits, None);
    Ok((logits, rows.iter().map(|&i| p.ds.label[i]).collect()))
}

fn validation_auc(
    model: &Model,
    prepared: &[Prepared],
    samples: &[Vec<usize>],
) -> Result<Option<f64>, ModelError> {
    let mut aucs = Vec::new();
    for (p, s) in prepared.iter().zip(samples) {
        let (logits, labels) = logits_of(model, p, s)?;
        if let Some(a) = metrics::roc_auc(&logits, &labels) {
            aucs.push(a);
        }
    }
    Ok((!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64))
}

/// Validation AUC of each family against all validation benign rows.
fn per_family_auc(
    p: &Prepared,
    sample: &[usize],
    logits: &[f32],
    metrics: &mut BTreeMap<String, f64>,
) {
    let mut fams: BTreeMap<&str, ()> = BTreeMap::new();
    for &i in sample {
        if p.ds.label[i] == 1 {
            fams.insert(p.ds.family_of(i), ());
        }
    }
    for fam in fams.keys() {
        let (mut s, mut l) = (Vec::new(), Vec::new());
        for (k, &i) in sample.iter().enumerate() {
            if p.ds.label[i] == 0 || p.ds.family_of(i) == *fam {
                s.push(logits[k]);
                l.push(p.ds.label[i]);
            }
        }
        if let Some(a) = metrics::roc_auc(&s, &l) {
            metrics.insert(format!("val_auc/{}/{fam}", p.ds.source), a);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic dataset: benign rows near the origin; each attack family shifts a different
    /// pair of features. Many small sessions per family.
    pub(crate) fn synthetic(families: &[&str], sessions: usize, per: usize, seed: u64) -> Dataset {
        let d = 8;
        let names: Vec<String> = (0..d).map(|i| format!("f{i}")).collect();
        let mut ds = Dataset::new("synth", names);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let row = |shift: &[(usize, f32)], rng: &mut ChaCha8Rng| {
            let mut v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0f32)).collect();
            for &(j, s) in shift {
                v[j] += s;
            }
            v
        };
        for s in 0..sessions * 2 {
            for _ in 0..per {
                let v = row(&[], &mut rng);
                ds.push(&v, 0, "benign", "normal", &format!("b{s}"), None);
            }
        }
        for (k, fam) in families.iter().enumerate() {
            let shift = [(k % d, 2.5f32), ((k + 3) % d, -2.0f32)];
            for s in 0..sessions {
                for _ in 0..per {
                    let v = row(&shift, &mut rng);
                    ds.push(&v, 1, fam, fam, &format!("{fam}{s}"), None);
                }
            }
        }
        ds
    }

    pub(crate) fn small_cfg(algo: Algo) -> TrainConfig {
        TrainConfig {
            algo,
            iterations: 30,
            meta_batch: 2,
            inner_steps: 3,
            inner_lr: 0.2,
            k_shot: 5,
            benign_shot: 16,
            query: 16,
            eval_every: 0,
            arch: Arch {
                hidden: vec![16, 16],
            },
            ..Default::default()
        }
    }

    /// Mean query loss after adaptation over fixed episodes of `fam`.
    fn adapted_query_loss(model: &Model, ds: &Dataset, fam: &str, seed: u64) -> f32 {
        let dev = Device::Cpu;
        let all: Vec<usize> = (0..ds.rows()).collect();
        let idx = TaskIndex::build(ds, &all, TaskBy::Family);
        let g = idx.groups.iter().position(|g| g.name == fam).unwrap();
        let x = model
            .input("synth")
            .unwrap()
            .normaliser
            .apply_vec(&ds.features);
        let p = Prepared {
            ds,
            x,
            d: ds.n_features(),
            split: Split::default(),
            tasks: idx.clone(),
            usable: vec![],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut total = 0.0;
        for _ in 0..6 {
            let ep = idx.draw(g, 3, 16, 32, 32, &mut rng).unwrap();
            let s = episode_batch(&p, &ep.support_pos, &ep.support_neg, &dev).unwrap();
            let q = episode_batch(&p, &ep.query_pos, &ep.query_neg, &dev).unwrap();
            let theta = net::params_of(model, "synth", &dev).unwrap();
            let a = net::sgd(theta, &s, 3, 0.2, &[]).unwrap();
            total += net::loss_value(&a, &q).unwrap();
        }
        total / 6.0
    }

    #[test]
    fn reptile_and_fomaml_reduce_query_loss() {
        let ds = synthetic(&["a", "b", "c", "d"], 6, 12, 1);
        for algo in [Algo::Reptile, Algo::Fomaml] {
            let mut cfg = small_cfg(algo);
            cfg.iterations = 0;
            let (init, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
            cfg.iterations = if algo == Algo::Reptile { 40 } else { 60 };
            if algo == Algo::Fomaml {
                cfg.meta_lr = Some(0.01);
            }
            let (trained, report) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
            assert_eq!(report.tasks.len(), 4);
            let before = adapted_query_loss(&init, &ds, "a", 5);
            let after = adapted_query_loss(&trained, &ds, "a", 5);
            assert!(
                after < before * 0.8,
                "{algo:?}: query loss {before} → {after}"
            );
        }
    }

    #[test]
    fn maml_trains_and_the_result_round_trips() {
        let ds = synthetic(&["a", "b"], 4, 10, 2);
        let mut cfg = small_cfg(Algo::Maml);
        cfg.iterations = 5;
        cfg.meta_lr = Some(0.01);
        let mut last = None;
        let (m, report) = train(&[&ds], &cfg, &mut |p| last = Some(p.clone())).unwrap();
        let last = last.unwrap();
        assert_eq!(last.iteration, 5);
        assert!(last.loss.is_finite() && last.val_auc.is_some());
        assert!(report.metrics.contains_key("val_auc/synth"));
        assert!(m.inputs["synth"].trained && m.prototypes.contains_key("synth"));
        assert!(m.inputs["synth"].rule.alert_threshold >= 0.5);
        let back = Model::from_bytes(&m.to_bytes().unwrap(), "mem").unwrap();
        assert!(back == m, "round trip changed the model");
    }

    #[test]
    fn training_is_reproducible_from_the_seed() {
        let ds = synthetic(&["a", "b"], 4, 10, 3);
        let mut cfg = small_cfg(Algo::Reptile);
        cfg.iterations = 5;
        let (a, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
        let (b, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
        assert_eq!(
            a.to_bytes().unwrap(),
            b.to_bytes().unwrap(),
            "same seed, different file"
        );
        cfg.seed = 2;
        let (c, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
        assert_ne!(a.head, c.head);
    }

    #[test]
    fn bad_training_input_is_an_error() {
        let ds = synthetic(&["a"], 1, 10, 4);
        let cfg = small_cfg(Algo::Reptile);
        let e = train(&[&ds], &cfg, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("two sessions"), "{e}");
        assert!(train(&[], &cfg, &mut |_| {}).is_err());
        let ok = synthetic(&["a", "b"], 4, 10, 4);
        let mut held = cfg.clone();
        held.holdout_families = vec!["a".into()];
        let (m, r) = train(&[&ok], &held, &mut |_| {}).unwrap();
        assert_eq!(r.tasks, vec!["synth/b".to_string()]);
        assert!(r.splits[0].held_out.iter().all(|&i| ok.family_of(i) == "a"));
        assert!(m.info.metrics.keys().all(|k| !k.ends_with("/a")));
        let mut extra = cfg.clone();
        extra.extra_feature_sets = vec!["no-such-set".into()];
        assert!(train(&[&ok], &extra, &mut |_| {}).is_err());
    }
}

//! The flow-scoring model (docs/model.md): a per-feature-set input layer into a shared MLP
//! encoder, a scoring head with Platt calibration, gradient × input explanations, novelty
//! against benign prototypes, episodic meta-training (Reptile, first-order and second-order
//! MAML), few-shot adaptation with a false-alert check, and three inference paths behind
//! [`Scorer`]: int8 on CPU SIMD, candle f32 on CPU, candle on CUDA (`cuda` feature).

pub mod adapt;
pub mod calibrate;
#[cfg(feature = "trainer")]
pub mod cli;
pub mod episodes;
#[cfg(feature = "trainer")]
pub mod eval;
pub mod file;
pub mod int8;
pub mod layers;
pub mod metrics;
pub mod net;
pub mod normalise;
pub mod novelty;
pub mod scorer;
pub mod serving;
#[cfg(feature = "trainer")]
pub mod train;

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use adapt::{adapt, AdaptConfig, AdaptRefusal, AdaptReport, Adapted, FalseAlerts, Trainable};
pub use calibrate::Calibration;
pub use episodes::TaskBy;
pub use layers::{Arch, Linear};
pub use normalise::Normaliser;
pub use novelty::Prototypes;
pub use scorer::{Pipeline, ScorePath, Scorer};
#[cfg(feature = "trainer")]
pub use train::{train, Algo, TrainConfig, TrainError, TrainReport};

use crate::dataset::Dataset;

/// Version of the model file's metadata this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What can go wrong loading, saving or using a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing the file failed.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid model file (truncated, corrupt, wrong version, inconsistent).
    #[error("{file}: not a valid model file: {reason}")]
    Format {
        /// The file (or "embedded").
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The model has no input layer for this feature set.
    #[error("the model has no input layer for feature set `{found}` (it has: {known})")]
    UnknownFeatureSet {
        /// The rows' feature set.
        found: String,
        /// The model's feature sets, comma-separated.
        known: String,
    },
    /// The rows' feature columns differ from the input layer's.
    #[error("feature set `{feature_set}`: {reason}")]
    FeatureMismatch {
        /// The feature set.
        feature_set: String,
        /// Which column differs, or the counts.
        reason: String,
    },
    /// A buffer has the wrong length.
    #[error("{0}")]
    Shape(String),
    /// candle failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The requested inference path is not available in this build or on this machine.
    #[error("inference path {0} is not available: {1}")]
    PathUnavailable(String, String),
}

/// Rows of one feature set, row-major, as raw (un-normalised) feature values.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    /// Feature-set name ("nsl-kdd", "detector-flow-v1", …).
    pub feature_set: &'a str,
    /// Column names, in row order.
    pub features: &'a [String],
    /// `n × features.len()` values.
    pub values: &'a [f32],
}

impl<'a> Rows<'a> {
    /// All rows of a dataset.
    pub fn of(ds: &'a Dataset) -> Self {
        Rows {
            feature_set: &ds.source,
            features: &ds.feature_names,
            values: &ds.features,
        }
    }

    /// The same columns over other values (e.g. from [`gather`]).
    pub fn with_values(&self, values: &'a [f32]) -> Rows<'a> {
        Rows { values, ..*self }
    }

    /// Number of rows.
    pub fn n(&self) -> usize {
        self.values
            .len()
            .checked_div(self.features.len())
            .unwrap_or(0)
    }
}

/// Copies rows `idx` of a row-major table of width `d`.
pub fn gather(values: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        out.extend_from_slice(&values[i * d..(i + 1) * d]);
    }
    out
}

/// One feature set's input layer and normaliser.
#[derive(Clone, Debug, PartialEq)]
pub struct InputLayer {
    /// Fitted on this feature set's training rows (or unfitted: see [`Normaliser::unfitted`]).
    pub normaliser: Normaliser,
    /// Features → first hidden width.
    pub linear: Linear,
    /// False while no labelled data of this feature set has trained the layer: its
    /// probability is then withheld from scores (only novelty counts).
    pub trained: bool,
    /// Logit → probability, fitted on this feature set's validation rows.
    pub calibration: Calibration,
    /// Probability and novelty → score, and the alert threshold, for this feature set.
    pub rule: ScoreRule,
}

/// How the probability and the novelty make the final score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRule {
    /// Novelty's share of the score: `novelty_weight · novelty` reaches the alert threshold
    /// exactly at the benign quantile the model was trained with.
    pub novelty_weight: f32,
    /// A flow alerts when its final score ≥ this.
    pub alert_threshold: f32,
    /// Attack-like and unusual: score = min(probability, novelty_weight · novelty), so a flow
    /// alerts only when both parts reach the threshold. Otherwise (files without the field
    /// too) either part alone: score = max(probability, novelty_weight · novelty). Without
    /// prototypes the probability alone counts either way.
    #[serde(default)]
    pub require_novelty: bool,
}

impl Default for ScoreRule {
    fn default() -> Self {
        ScoreRule {
            novelty_weight: 0.5 / 0.999,
            alert_threshold: 0.5,
            require_novelty: false,
        }
    }
}

impl ScoreRule {
    /// Combines the parts; a missing part counts as 0, except a missing novelty under
    /// `require_novelty`, which leaves the probability alone.
    #[inline]
    pub fn combine(&self, probability: Option<f32>, novelty: Option<f32>) -> f32 {
        let p = probability.unwrap_or(0.0);
        match novelty {
            Some(n) if self.require_novelty => p.min(self.novelty_weight * n),
            Some(n) => p.max(self.novelty_weight * n),
            None => p,
        }
    }
}

/// The score of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Calibrated P(malicious); `None` when the feature set's input layer is untrained.
    pub probability: Option<f32>,
    /// Novelty against the benign prototypes, in [0, 1); `None` without prototypes.
    pub novelty: Option<f32>,
    /// The combined score ([`ScoreRule::combine`]).
    pub score: f32,
    /// `score ≥ alert_threshold`.
    pub alert: bool,
}

/// One feature's contribution to a score (gradient × input on the normalised value).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Contribution {
    /// Feature name.
    pub feature: String,
    /// ∂logit/∂z · z, in logit units; positive pushes towards malicious.
    pub contribution: f32,
}

/// A dataset's identity in a model's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataDigest {
    /// Feature set.
    pub feature_set: String,
    /// `Dataset::digest()`.
    pub sha256: String,
    /// Rows in the file.
    pub rows: u64,
    /// Where it was read from (informational).
    pub file: String,
}

/// The inner loop that adaptation runs by default (the one the model was meta-trained with).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InnerLoop {
    /// SGD steps.
    pub steps: usize,
    /// SGD learning rate.
    pub lr: f32,
}

impl Default for InnerLoop {
    fn default() -> Self {
        InnerLoop {
            steps: 10,
            lr: 0.05,
        }
    }
}

/// Everything in the file's JSON header that is not weights or scoring maths.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// "detector <version>".
    pub created_by: String,
    /// The training configuration, when trained (`TrainConfig` as JSON: a daemon built without
    /// the trainer reads it without knowing the type).
    pub training: Option<serde_json::Value>,
    /// Training datasets.
    pub data: Vec<DataDigest>,
    /// Validation metrics from training and adaptation, by name.
    pub metrics: BTreeMap<String, f64>,
    /// Adaptation defaults.
    pub inner: InnerLoop,
    /// Adaptations applied to this model, oldest first (free-form JSON each).
    pub adaptations: Vec<serde_json::Value>,
}

/// A model: input layers per feature set, the shared encoder and head, calibration, novelty
/// prototypes per feature set, and the score rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Layer widths.
    pub arch: Arch,
    /// Input layer per feature-set name.
    pub inputs: BTreeMap<String, InputLayer>,
    /// Shared layers after the input layer (ReLU after each).
    pub encoder: Vec<Linear>,
    /// Embedding → logit.
    pub head: Linear,
    /// Benign prototypes per feature set (the host's baseline, or the training data's).
    pub prototypes: BTreeMap<String, Prototypes>,
    /// Provenance and metrics.
    pub info: ModelInfo,
}

impl Model {
    /// A freshly initialised model (He-uniform, seeded) with one input layer per
    /// `(feature set, normaliser)`; layers are marked untrained.
    pub fn new(arch: Arch, feature_sets: &[(String, Normaliser)], seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let first = arch.hidden.first().copied().unwrap_or(0);
        let inputs = feature_sets
            .iter()
            .map(|(name, norm)| {
                (
                    name.clone(),
                    InputLayer {
                        normaliser: norm.clone(),
                        linear: Linear::init(first, norm.len(), &mut rng),
                        trained: false,
                        calibration: Calibration::default(),
                        rule: ScoreRule::default(),
                    },
                )
            })
            .collect();
        let encoder = arch
            .hidden
            .windows(2)
            .map(|w| Linear::init(w[1], w[0], &mut rng))
            .collect();
        let head = Linear::init(1, arch.embed_dim(), &mut rng);
        Model {
            arch,
            inputs,
            encoder,
            head,
            prototypes: BTreeMap::new(),
            info: ModelInfo {
                created_by: format!("detector {}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            },
        }
    }

    /// Feature-set names, sorted.
    pub fn feature_sets(&self) -> Vec<&str> {
        self.inputs.keys().map(String::as_str).collect()
    }

    /// Width of the embedding.
    pub fn embed_dim(&self) -> usize {
        self.arch.embed_dim()
    }

    /// The input layer for `rows`, checking the feature set, the column names and the length.
    pub fn input_for(&self, rows: &Rows) -> Result<&InputLayer, ModelError> {
        let layer = self.input(rows.feature_set)?;
        check_features(rows.feature_set, &layer.normaliser.features, rows.features)?;
        let d = rows.features.len();
        if d == 0 || !rows.values.len().is_multiple_of(d) {
            return Err(ModelError::Shape(format!(
                "{} values are not whole rows of {d} features",
                rows.values.len()
            )));
        }
        Ok(layer)
    }

    /// The input layer of a feature set.
    pub fn input(&self, feature_set: &str) -> Result<&InputLayer, ModelError> {
        self.inputs
            .get(feature_set)
            .ok_or_else(|| ModelError::UnknownFeatureSet {
                found: feature_set.to_string(),
                known: self.feature_sets().join(", "),
            })
    }

    /// The layers a feature set's rows pass through.
    pub fn stack(&self, feature_set: &str) -> Result<layers::Stack<'_>, ModelError> {
        let input = self.input(feature_set)?;
        let mut body = vec![&input.linear];
        body.extend(self.encoder.iter());
        Ok(layers::Stack {
            body,
            head: &self.head,
        })
    }

    /// Normalised copies of `rows`.
    pub fn normalise(&self, rows: &Rows) -> Result<Vec<f32>, ModelError> {
        let layer = self.input_for(rows)?;
        Ok(layer.normaliser.apply_vec(rows.values))
    }

    /// Logits and embeddings (f32 reference path) of raw rows.
    pub fn forward(&self, rows: &Rows) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let x = self.normalise(rows)?;
        let n = rows.n();
        let stack = self.stack(rows.feature_set)?;
        let mut logits = vec![0f32; n];
        let mut emb = vec![0f32; n * self.embed_dim()];
        stack.forward(&x, n, &mut logits, Some(&mut emb));
        Ok((logits, emb))
    }

    /// Scores raw rows on the f32 reference path (for the fast paths see [`Model::pipeline`]).
    pub fn score(&self, rows: &Rows) -> Result<Vec<Score>, ModelError> {
        let (logits, emb) = self.forward(rows)?;
        Ok(self.finish(rows.feature_set, &logits, &emb))
    }

    /// Turns logits and embeddings into scores (calibration, novelty, rule).
    pub fn finish(&self, feature_set: &str, logits: &[f32], emb: &[f32]) -> Vec<Score> {
        let e = self.embed_dim();
        let Some(layer) = self.inputs.get(feature_set) else {
            return vec![];
        };
        let proto = self.prototypes.get(feature_set);
        logits
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let probability = layer.trained.then(|| layer.calibration.probability(z));
                let novelty = proto.map(|p| p.novelty(&emb[i * e..(i + 1) * e]));
                let score = layer.rule.combine(probability, novelty);
                Score {
                    probability,
                    novelty,
                    score,
                    alert: score >= layer.rule.alert_threshold,
                }
            })
            .collect()
    }

    /// The `top` features that pushed one raw row's logit most (by |gradient × input| on the
    /// normalised values), largest first. One forward and one backward pass (~2× a score).
    pub fn explain(
        &self,
        feature_set: &str,
        features: &[String],
        row: &[f32],
        top: usize,
    ) -> Result<Vec<Contribution>, ModelError> {
        let rows = Rows {
            feature_set,
            features,
            values: row,
        };
        if rows.n() != 1 {
            return Err(ModelError::Shape(format!(
                "explain takes one row of {} features, got {} values",
                features.len(),
                row.len()
            )));
        }
        let x = self.normalise(&rows)?;
        self.explain_normalised(feature_set, features, &x, top)
    }

    /// [`Model::explain`] of a row already normalised (`x`, one value per feature): for a
    /// caller that keeps the normaliser's plan ([`Pipeline::explain`]). Only the `top` names are
    /// copied.
    pub fn explain_normalised(
        &self,
        feature_set: &str,
        features: &[String],
        x: &[f32],
        top: usize,
    ) -> Result<Vec<Contribution>, ModelError> {
        let (grad, _) = self.stack(feature_set)?.input_gradient(x);
        let n = grad.len().min(x.len()).min(features.len());
        let contribution = |i: usize| grad[i] * x[i];
        // Stable: features of equal weight keep their column order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| contribution(b).abs().total_cmp(&contribution(a).abs()));
        Ok(order
            .into_iter()
            .take(top)
            .map(|i| Contribution {
                feature: features[i].clone(),
                contribution: contribution(i),
            })
            .collect())
    }

    /// Fits the benign prototypes of `rows`' feature set from benign rows (e.g. the host's
    /// recent traffic), replacing any there were. Errors with fewer than
    /// [`novelty::MIN_ROWS`] rows.
    pub fn fit_prototypes(&mut self, benign: &Rows, seed: u64) -> Result<(), ModelError> {
        let (_, emb) = self.forward(benign)?;
        let p =
            Prototypes::fit(&emb, self.embed_dim(), novelty::DEFAULT_K, seed).ok_or_else(|| {
                ModelError::Shape(format!(
                    "prototypes need at least {} benign rows, got {}",
                    novelty::MIN_ROWS,
                    benign.n()
                ))
            })?;
        self.prototypes.insert(benign.feature_set.to_string(), p);
        Ok(())
    }

    /// Builds a scoring pipeline (normaliser, a [`Scorer`] on the chosen path, calibration,
    /// novelty, rule) for one feature set.
    pub fn pipeline(&self, feature_set: &str, path: ScorePath) -> Result<Pipeline, ModelError> {
        Pipeline::new(self, feature_set, path)
    }

    /// Checks every array against the architecture (a model file is outside input).
    pub fn validate(&self) -> Result<(), String> {
        self.arch.validate()?;
        let h = &self.arch.hidden;
        if self.inputs.is_empty() {
            return Err("no input layers".into());
        }
        for (name, l) in &self.inputs {
            l.normaliser.validate()?;
            let d = l.normaliser.len();
            if !l.calibration.is_valid() {
                return Err(format!(
                    "input layer `{name}`: calibration {:?} is not increasing",
                    l.calibration
                ));
            }
            let r = &l.rule;
            let weight_ok = r.novelty_weight.is_finite() && r.novelty_weight >= 0.0;
            let threshold_ok = r.alert_threshold.is_finite() && r.alert_threshold > 0.0;
            if !(weight_ok && threshold_ok) {
                return Err(format!(
                    "input layer `{name}`: score rule {r:?} is out of range"
                ));
            }
            if d == 0 || l.linear.in_dim != d || l.linear.out_dim != h[0] || !l.linear.is_valid() {
                return Err(format!(
                    "input layer `{name}`: {}×{} weights for {d} features and width {}",
                    l.linear.out_dim, l.linear.in_dim, h[0]
                ));
            }
        }
        if self.encoder.len() + 1 != h.len() {
            return Err(format!(
                "{} encoder layers for {} hidden widths",
                self.encoder.len(),
                h.len()
            ));
        }
        for (i, l) in self.encoder.iter().enumerate() {
            if l.in_dim != h[i] || l.out_dim != h[i + 1] || !l.is_valid() {
                return Err(format!("encoder layer {i} does not match widths {h:?}"));
            }
        }
        if self.head.in_dim != self.embed_dim() || self.head.out_dim != 1 || !self.head.is_valid() {
            return Err("head does not match the embedding width".into());
        }
        Ok(())
    }
}

/// Checks that `found` columns equal `expected`, naming the first difference.
pub fn check_features(
    feature_set: &str,
    expected: &[String],
    found: &[String],
) -> Result<(), ModelError> {
    if expected == found {
        return Ok(());
    }
    let reason = match expected.iter().zip(found).position(|(a, b)| a != b) {
        Some(i) => format!(
            "column {i} is `{}` in the data, `{}` in the model",
            found[i], expected[i]
        ),
        None => format!(
            "the data has {} features, the model's input layer {}",
            found.len(),
            expected.len()
        ),
    };
    Err(ModelError::FeatureMismatch {
        feature_set: feature_set.to_string(),
        reason,
    })
}

/// The model compiled into the binary (`detector/models/default.safetensors`, written by
/// `cargo xtask train-default`).
pub fn default_model() -> Result<Model, ModelError> {
    Model::from_bytes(DEFAULT_MODEL, "embedded default model")
}

/// The bytes of the embedded default model.
pub static DEFAULT_MODEL: &[u8] = include_bytes!("../../models/default.safetensors");

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn explanation_on_a_linear_toy_is_w_times_x() {
        // Input layer with positive weights and biases, encoder and head that keep every ReLU
        // active: the network is linear in the normalised input, so gradient × input must be
        // exactly w_eff · z with w_eff = W_head · W_enc · W_in.
        let d = 4;
        let norm = Normaliser::unfitted(names(d));
        let mut m = Model::new(
            Arch {
                hidden: vec![16, 16],
            },
            &[("toy".into(), norm)],
            1,
        );
        let input = m.inputs.get_mut("toy").unwrap();
        input.trained = true;
        for (k, w) in input.linear.weight.iter_mut().enumerate() {
            *w = 0.1 + (k % 5) as f32 * 0.05;
        }
        input.linear.bias.iter_mut().for_each(|b| *b = 10.0);
        for (k, w) in m.encoder[0].weight.iter_mut().enumerate() {
            *w = 0.01 * ((k % 7) as f32 + 1.0);
        }
        m.encoder[0].bias.iter_mut().for_each(|b| *b = 1.0);
        m.head.weight = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
        // Effective linear weights.
        let win = &m.inputs["toy"].linear;
        let mut w_eff = vec![0f32; d];
        for (j, wj) in w_eff.iter_mut().enumerate() {
            for o2 in 0..16 {
                let mut via = 0f32;
                for o1 in 0..16 {
                    via += m.encoder[0].weight[o2 * 16 + o1] * win.weight[o1 * d + j];
                }
                *wj += m.head.weight[o2] * via;
            }
        }
        let raw = [1.0f32, -2.0, 0.5, 3.0];
        let z = m.inputs["toy"].normaliser.apply_vec(&raw);
        let feats = names(d);
        let c = m.explain("toy", &feats, &raw, d).unwrap();
        assert_eq!(c.len(), d);
        for item in &c {
            let j: usize = item.feature[1..].parse().unwrap();
            let want = w_eff[j] * z[j];
            assert!(
                (item.contribution - want).abs() < 1e-4 * want.abs().max(1.0),
                "{}: {} vs {want}",
                item.feature,
                item.contribution
            );
        }
        // Sorted by magnitude.
        assert!(c
            .windows(2)
            .all(|w| w[0].contribution.abs() >= w[1].contribution.abs()));
        // Bad input: wrong width, unknown feature set, renamed column.
        assert!(m.explain("toy", &feats, &raw[..3], 2).is_err());
        assert!(matches!(
            m.explain("other", &feats, &raw, 2),
            Err(ModelError::UnknownFeatureSet { .. })
        ));
        let mut renamed = feats.clone();
        renamed[2] = "x".into();
        assert!(matches!(
            m.explain("toy", &renamed, &raw, 2),
            Err(ModelError::FeatureMismatch { .. })
        ));
    }

    #[test]
    fn forward_shapes_and_scores() {
        let norm = Normaliser::unfitted(names(10));
        let mut m = Model::new(Arch::default(), &[("a".into(), norm)], 5);
        assert!(m.validate().is_ok());
        let feats = names(10);
        let values: Vec<f32> = (0..70).map(|i| i as f32).collect();
        let rows = Rows {
            feature_set: "a",
            features: &feats,
            values: &values,
        };
        let (logits, emb) = m.forward(&rows).unwrap();
        assert_eq!(logits.len(), 7);
        assert_eq!(emb.len(), 7 * 32);
        assert!(emb.iter().all(|&v| v >= 0.0), "embeddings are ReLU outputs");
        let s = m.score(&rows).unwrap();
        assert!(s
            .iter()
            .all(|s| s.probability.is_none() && s.novelty.is_none()));
        m.inputs.get_mut("a").unwrap().trained = true;
        let s = m.score(&rows).unwrap();
        assert!(s
            .iter()
            .all(|s| s.probability.is_some_and(|p| (0.0..=1.0).contains(&p))));
        let bad = Rows {
            values: &values[..65],
            ..rows
        };
        assert!(matches!(m.forward(&bad), Err(ModelError::Shape(_))));
    }

    #[test]
    fn the_embedded_default_model_loads() {
        // The agent's feature sets must match the code's: retrain with `cargo xtask
        // train-default` when a feature is added or renamed.
        let m = default_model().expect("embedded model");
        use crate::features::{live_names, LIVE_FEATURE_SET};
        let layer = m
            .inputs
            .get(LIVE_FEATURE_SET)
            .expect("input layer of the live feature set");
        assert_eq!(
            layer.normaliser.features,
            live_names(),
            "{LIVE_FEATURE_SET}: retrain the default model"
        );
        assert!(
            layer.trained,
            "the live input layer is trained (on the lab recording)"
        );
        assert!(m.inputs["nsl-kdd"].trained);
    }
}

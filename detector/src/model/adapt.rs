//! Few-shot adaptation: the inner loop on K confirmed attack rows plus benign rows of the host,
//! then a check on held-back benign rows that the false-alert rate at the model's alert
//! threshold did not rise beyond a budget; refused, with the numbers, if it did.

use std::time::Instant;

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{episodes, gather, net, novelty, Model, ModelError, Normaliser, Rows};

/// At most this many benign rows (not held back) refit the prototypes.
const MAX_PROTOTYPE_ROWS: usize = 4000;

/// Which parameters the inner loop may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Trainable {
    /// Input layer, encoder and head (the meta-learned inner loop).
    All,
    /// The head only (last-layer fine-tuning; embeddings and prototypes stay as they are).
    Head,
}

/// Adaptation options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdaptConfig {
    /// SGD steps; `None`: the model's own inner loop ([`super::InnerLoop`]).
    pub steps: Option<usize>,
    /// SGD learning rate; `None`: the model's own.
    pub lr: Option<f32>,
    /// What may change.
    pub trainable: Trainable,
    /// Largest allowed rise of the benign false-alert rate (after − before) on held-back rows.
    pub fpr_budget: f64,
    /// Fraction of the benign rows held back for the check (never used in the inner loop).
    pub holdout_fraction: f64,
    /// Fewest held-back benign rows for the check to mean anything.
    pub min_holdout: usize,
    /// At most this many benign rows go into the inner loop.
    pub max_benign_train: usize,
    /// Seed for the benign split and the prototypes.
    pub seed: u64,
    /// The incident family, recorded in the model's history.
    pub family: Option<String>,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        AdaptConfig {
            steps: None,
            lr: None,
            trainable: Trainable::All,
            fpr_budget: 1e-3,
            holdout_fraction: 0.5,
            min_holdout: 20,
            max_benign_train: 256,
            seed: 1,
            family: None,
        }
    }
}

/// What adaptation did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdaptReport {
    /// Attack rows (K).
    pub k: usize,
    /// Benign rows in the inner loop.
    pub benign_train: usize,
    /// Held-back benign rows of the check.
    pub benign_holdout: usize,
    /// SGD steps and rate used.
    pub steps: usize,
    /// SGD learning rate used.
    pub lr: f32,
    /// Alert threshold of the check.
    pub threshold: f32,
    /// Held-back benign rows alerting before and after.
    pub false_alerts_before: usize,
    /// After adaptation.
    pub false_alerts_after: usize,
    /// Of the held-back false alerts after adaptation: those the probability alone raises, and
    /// those novelty alone raises (a row can count in both).
    pub false_alerts_after_by_part: (usize, usize),
    /// False-alert rates.
    pub fpr_before: f64,
    /// After adaptation.
    pub fpr_after: f64,
    /// Fraction of the K attack rows alerting before and after.
    pub support_alert_before: f64,
    /// After adaptation.
    pub support_alert_after: f64,
    /// Inner-loop loss before and after.
    pub loss_before: f32,
    /// After adaptation.
    pub loss_after: f32,
    /// Whether the normaliser was fitted here (the feature set had never seen data).
    pub fitted_normaliser: bool,
    /// Whether prototypes were refitted from the benign rows.
    pub refitted_prototypes: bool,
    /// Wall time.
    pub seconds: f64,
}

/// An adapted model and what was done.
#[derive(Clone, Debug)]
pub struct Adapted {
    /// The new model.
    pub model: Model,
    /// The numbers.
    pub report: AdaptReport,
}

/// Why adaptation did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum AdaptRefusal {
    /// No attack rows.
    #[error("the support set is empty: adaptation needs at least one attack row")]
    EmptySupport,
    /// Attack rows but no benign rows: one class cannot train a classifier.
    #[error(
        "the support set has a single class ({0}): adaptation needs attack rows and benign rows"
    )]
    SingleClass(String),
    /// Too few benign rows to hold some back for the false-alert check.
    #[error("{have} benign rows are too few: the check holds back at least {min_holdout} and the inner loop needs at least one more")]
    TooFewBenign {
        /// Benign rows given.
        have: usize,
        /// Held-back minimum.
        min_holdout: usize,
    },
    /// The attack rows and benign rows are of different feature sets.
    #[error("attack rows are `{positives}` but benign rows are `{benign}`")]
    MixedFeatureSets {
        /// Feature set of the attack rows.
        positives: String,
        /// Feature set of the benign rows.
        benign: String,
    },
    /// The false-alert rate rose beyond the budget.
    #[error("refused: on {} held-back benign rows {}", check.rows, check.rise(*budget))]
    FprBudget {
        /// The check on the held-back rows.
        check: FalseAlerts,
        /// The budget.
        budget: f64,
        /// The full report (what the adapted model would have been like).
        report: Box<AdaptReport>,
    },
    /// The inner loop produced non-finite weights (learning rate too high).
    #[error("the inner loop diverged (non-finite weights); try a smaller learning rate")]
    Diverged,
    /// Model or data problem (unknown feature set, mismatched columns, candle failure).
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for AdaptRefusal {
    fn from(e: candle_core::Error) -> Self {
        AdaptRefusal::Model(ModelError::Candle(e))
    }
}

/// The false-alert check: benign rows scored by the model in force and by its candidate; the
/// candidate is refused when the false-alert rate rises by more than a budget. Local adaptation
/// runs it on held-back benign rows of the incident's host; an agent offered a fleet model runs
/// it on its own recent benign rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FalseAlerts {
    /// Benign rows scored.
    pub rows: usize,
    /// The alert threshold of the model in force (on the rows' feature set).
    pub threshold: f32,
    /// Rows alerting under the model in force.
    pub before: usize,
    /// Rows alerting under the candidate.
    pub after: usize,
    /// Of `after`: those the probability alone raises, and those novelty alone raises (a row
    /// can count in both).
    pub after_by_part: (usize, usize),
}

impl FalseAlerts {
    /// Scores `benign` with `old` and `new`.
    pub fn measure(old: &Model, new: &Model, benign: &Rows) -> Result<Self, ModelError> {
        let fs = benign.feature_set;
        let threshold = old.input(fs)?.rule.alert_threshold;
        let novelty_weight = new.input(fs)?.rule.novelty_weight;
        let before = old.score(benign)?.iter().filter(|s| s.alert).count();
        let after = new.score(benign)?;
        let by_p = after
            .iter()
            .filter(|s| s.probability.unwrap_or(0.0) >= threshold)
            .count();
        let by_n = after
            .iter()
            .filter(|s| novelty_weight * s.novelty.unwrap_or(0.0) >= threshold)
            .count();
        Ok(FalseAlerts {
            rows: benign.n(),
            threshold,
            before,
            after: after.iter().filter(|s| s.alert).count(),
            after_by_part: (by_p, by_n),
        })
    }

    /// False-alert rate under the model in force.
    pub fn fpr_before(&self) -> f64 {
        self.before as f64 / self.rows.max(1) as f64
    }

    /// False-alert rate under the candidate.
    pub fn fpr_after(&self) -> f64 {
        self.after as f64 / self.rows.max(1) as f64
    }

    /// The rise in words, for a refusal: "the false-alert rate at threshold … would rise from
    /// … to …, more than the budget of …".
    pub fn rise(&self, budget: f64) -> String {
        format!(
            "the false-alert rate at threshold {:.4} would rise from {:.5} ({} rows) to {:.5} ({} rows: {} by probability, {} by novelty), more than the budget of {budget}",
            self.threshold,
            self.fpr_before(),
            self.before,
            self.fpr_after(),
            self.after,
            self.after_by_part.0,
            self.after_by_part.1
        )
    }

    /// Whether the rise stays within `budget`.
    pub fn within(&self, budget: f64) -> bool {
        self.fpr_after() - self.fpr_before() <= budget
    }
}

/// Adapts `model` to K attack rows (`positives`) using benign rows of the same feature set: a
/// share of the benign rows is held back, the inner loop runs on the attack rows and the rest,
/// and the result is refused if the held-back false-alert rate rises by more than the budget.
pub fn adapt(
    model: &Model,
    positives: &Rows,
    benign: &Rows,
    cfg: &AdaptConfig,
) -> Result<Adapted, AdaptRefusal> {
    let start = Instant::now();
    let k = positives.n();
    if k == 0 {
        return Err(AdaptRefusal::EmptySupport);
    }
    if benign.n() == 0 {
        return Err(AdaptRefusal::SingleClass(format!(
            "{k} attack rows, no benign rows"
        )));
    }
    if positives.feature_set != benign.feature_set {
        return Err(AdaptRefusal::MixedFeatureSets {
            positives: positives.feature_set.into(),
            benign: benign.feature_set.into(),
        });
    }
    let fs = positives.feature_set;
    model.input_for(positives)?;
    model.input_for(benign)?;
    let d = positives.features.len();
    let nb = benign.n();
    let holdout = ((nb as f64 * cfg.holdout_fraction).round() as usize).max(cfg.min_holdout);
    if holdout >= nb {
        return Err(AdaptRefusal::TooFewBenign {
            have: nb,
            min_holdout: cfg.min_holdout,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..nb).collect();
    episodes::shuffle(&mut order, &mut rng);
    let (held, rest) = order.split_at(holdout);
    let train_idx = &rest[..rest.len().min(cfg.max_benign_train)];
    let held_rows = gather(benign.values, d, held);
    let train_rows = gather(benign.values, d, train_idx);
    // Prototypes may use every benign row not held back (more rows, a better tail estimate).
    let proto_rows = gather(
        benign.values,
        d,
        &rest[..rest.len().min(MAX_PROTOTYPE_ROWS)],
    );

    let mut new = model.clone();
    let layer = new
        .inputs
        .get_mut(fs)
        .ok_or_else(|| ModelError::UnknownFeatureSet {
            found: fs.into(),
            known: model.feature_sets().join(", "),
        })?;
    let fitted_normaliser = layer.normaliser.fitted_rows == 0;
    if fitted_normaliser {
        let mut rows = positives.values.to_vec();
        rows.extend_from_slice(&train_rows);
        layer.normaliser = Normaliser::fit(positives.features.to_vec(), &rows);
    }
    layer.trained = true;
    let norm = layer.normaliser.clone();

    let steps = cfg.steps.unwrap_or(model.info.inner.steps);
    let lr = cfg.lr.unwrap_or(model.info.inner.lr);
    let dev = Device::Cpu;
    let mut x = norm.apply_vec(positives.values);
    x.extend(norm.apply_vec(&train_rows));
    let mut labels = vec![1u8; k];
    labels.resize(k + train_idx.len(), 0);
    let batch = net::Batch::new(&x, d, &labels, &dev)?;
    let theta = net::params_of(&new, fs, &dev)?;
    let layers = theta.len() / 2;
    let trainable: Vec<bool> = (0..theta.len())
        .map(|i| match cfg.trainable {
            Trainable::All => true,
            Trainable::Head => i / 2 == layers - 1,
        })
        .collect();
    let loss_before = net::loss_value(&theta, &batch)?;
    let adapted = net::sgd(theta, &batch, steps, lr, &trainable)?;
    let loss_after = net::loss_value(&adapted, &batch)?;
    net::store(&mut new, fs, &adapted)?;
    if !loss_after.is_finite() || new.validate().is_err() {
        return Err(AdaptRefusal::Diverged);
    }
    // Embeddings moved unless only the head changed: the old prototypes are stale. A model
    // without prototypes stays without: novelty is off until whoever serves the model fits
    // them on enough of the host's traffic (the agent's baseline), not on an incident's sample.
    let had_prototypes = model.prototypes.contains_key(fs);
    let refit = had_prototypes && (cfg.trainable != Trainable::Head || fitted_normaliser);
    let mut refitted_prototypes = false;
    if refit {
        new.prototypes.remove(fs);
        if rest.len() >= novelty::MIN_ROWS {
            new.fit_prototypes(&benign.with_values(&proto_rows), cfg.seed)?;
            refitted_prototypes = true;
        }
    }

    let threshold = model.input(fs)?.rule.alert_threshold;
    let alerts = |m: &Model, rows: &[f32]| -> Result<usize, ModelError> {
        Ok(m.score(&benign.with_values(rows))?
            .iter()
            .filter(|s| s.alert)
            .count())
    };
    let check = FalseAlerts::measure(model, &new, &benign.with_values(&held_rows))?;
    let (fa_before, fa_after, by_p, by_n) = (
        check.before,
        check.after,
        check.after_by_part.0,
        check.after_by_part.1,
    );
    let sup_before = alerts(model, positives.values)?;
    let sup_after = alerts(&new, positives.values)?;
    let report = AdaptReport {
        k,
        benign_train: train_idx.len(),
        benign_holdout: holdout,
        steps,
        lr,
        threshold,
        false_alerts_before: fa_before,
        false_alerts_after: fa_after,
        false_alerts_after_by_part: (by_p, by_n),
        fpr_before: check.fpr_before(),
        fpr_after: check.fpr_after(),
        support_alert_before: sup_before as f64 / k as f64,
        support_alert_after: sup_after as f64 / k as f64,
        loss_before,
        loss_after,
        fitted_normaliser,
        refitted_prototypes,
        seconds: start.elapsed().as_secs_f64(),
    };
    if !check.within(cfg.fpr_budget) {
        return Err(AdaptRefusal::FprBudget {
            check,
            budget: cfg.fpr_budget,
            report: Box::new(report),
        });
    }
    new.info.adaptations.push(serde_json::json!({
        "feature_set": fs,
        "family": cfg.family,
        "config": cfg,
        "report": report,
    }));
    Ok(Adapted { model: new, report })
}

// The tests adapt models that `train` makes: with the trainer only.
#[cfg(all(test, feature = "trainer"))]
mod tests {
    use super::*;
    use crate::dataset::Dataset;
    use crate::model::{
        metrics::roc_auc,
        train::{
            tests::{small_cfg, synthetic},
            train, Algo,
        },
    };

    fn rows_of<'a>(ds: &'a Dataset, v: &'a [f32]) -> Rows<'a> {
        Rows::of(ds).with_values(v)
    }

    fn pick(ds: &Dataset, f: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..ds.rows()).filter(|&i| f(i)).collect()
    }

    #[test]
    fn adaptation_improves_a_held_out_family() {
        let ds = synthetic(&["a", "b", "c", "d"], 6, 12, 7);
        let mut cfg = small_cfg(Algo::Reptile);
        cfg.iterations = 40;
        cfg.holdout_families = vec!["d".into()];
        let (model, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
        let d = ds.n_features();
        // Support: 5 rows of one `d` session; benign from sessions b0..b5; query: other sessions.
        let sup = pick(&ds, |i| ds.session_of(i) == "d0");
        let sup = gather(&ds.features, d, &sup[..5]);
        let ben = pick(&ds, |i| ds.label[i] == 0 && ds.session[i].is_multiple_of(2));
        let ben = gather(&ds.features, d, &ben);
        let q = pick(&ds, |i| {
            (ds.family_of(i) == "d" && ds.session_of(i) != "d0")
                || (ds.label[i] == 0 && ds.session[i] % 2 == 1)
        });
        let qx = gather(&ds.features, d, &q);
        let qy: Vec<u8> = q.iter().map(|&i| ds.label[i]).collect();
        let auc = |m: &Model| {
            let (logits, _) = m.forward(&rows_of(&ds, &qx)).unwrap();
            roc_auc(&logits, &qy).unwrap()
        };
        let acfg = AdaptConfig {
            fpr_budget: 1.0,
            ..Default::default()
        };
        let a = adapt(&model, &rows_of(&ds, &sup), &rows_of(&ds, &ben), &acfg).unwrap();
        let (before, after) = (auc(&model), auc(&a.model));
        assert!(
            after > before + 0.02 || after > 0.97,
            "AUC {before} → {after}"
        );
        assert!(a.report.loss_after < a.report.loss_before);
        assert!(a.report.refitted_prototypes);
        assert_eq!(a.report.k, 5);
        assert_eq!(a.model.info.adaptations.len(), 1);
        // Last-layer fine-tuning leaves the encoder alone.
        let h = AdaptConfig {
            trainable: Trainable::Head,
            ..acfg.clone()
        };
        let a = adapt(&model, &rows_of(&ds, &sup), &rows_of(&ds, &ben), &h).unwrap();
        assert_eq!(a.model.encoder, model.encoder);
        assert_ne!(a.model.head, model.head);
    }

    #[test]
    fn refuses_when_benign_false_alerts_would_rise() {
        let ds = synthetic(&["a", "b"], 4, 12, 8);
        let mut cfg = small_cfg(Algo::Reptile);
        cfg.iterations = 10;
        let (model, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
        let d = ds.n_features();
        let ben = pick(&ds, |i| ds.label[i] == 0);
        let ben = gather(&ds.features, d, &ben);
        // "Attack" rows that are benign rows: learning them must raise benign alerts.
        let fake = ben[..10 * d].to_vec();
        let acfg = AdaptConfig {
            fpr_budget: 0.0,
            steps: Some(30),
            lr: Some(0.5),
            ..Default::default()
        };
        match adapt(&model, &rows_of(&ds, &fake), &rows_of(&ds, &ben), &acfg) {
            Err(AdaptRefusal::FprBudget { check, .. }) => {
                let (before, after) = (check.fpr_before(), check.fpr_after());
                assert!(after > before, "{before} → {after}");
                assert_eq!(check.rows, ben.len() / d / 2);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_support_is_a_typed_error() {
        let ds = synthetic(&["a", "b"], 4, 12, 9);
        let mut cfg = small_cfg(Algo::Reptile);
        cfg.iterations = 2;
        let (model, _) = train(&[&ds], &cfg, &mut |_| {}).unwrap();
        let d = ds.n_features();
        let ben = gather(&ds.features, d, &pick(&ds, |i| ds.label[i] == 0));
        let pos = gather(&ds.features, d, &pick(&ds, |i| ds.label[i] == 1)[..3]);
        let c = AdaptConfig::default();
        let e = adapt(&model, &rows_of(&ds, &[]), &rows_of(&ds, &ben), &c).unwrap_err();
        assert!(matches!(e, AdaptRefusal::EmptySupport), "{e}");
        let e = adapt(&model, &rows_of(&ds, &pos), &rows_of(&ds, &[]), &c).unwrap_err();
        assert!(matches!(e, AdaptRefusal::SingleClass(_)), "{e}");
        let e = adapt(
            &model,
            &rows_of(&ds, &pos),
            &rows_of(&ds, &ben[..10 * d]),
            &c,
        )
        .unwrap_err();
        assert!(matches!(e, AdaptRefusal::TooFewBenign { .. }), "{e}");
        let other: Vec<String> = (0..d).map(|i| format!("g{i}")).collect();
        let wrong = Rows {
            feature_set: "synth",
            features: &other,
            values: &pos,
        };
        let e = adapt(&model, &wrong, &rows_of(&ds, &ben), &c).unwrap_err();
        assert!(
            matches!(e, AdaptRefusal::Model(ModelError::FeatureMismatch { .. })),
            "{e}"
        );
        let unknown = Rows {
            feature_set: "nsl-kdd",
            ..wrong
        };
        let e = adapt(&model, &unknown, &unknown, &c).unwrap_err();
        assert!(
            matches!(e, AdaptRefusal::Model(ModelError::UnknownFeatureSet { .. })),
            "{e}"
        );
    }
}

//! The host defines normal: after a warm-up on its own traffic, the agent fits novelty
//! prototypes to this host's quiet records and alerts only on flows that are both attack-like to
//! the model and unusual for this host (docs/model.md, "The host's baseline"). The live agent
//! and offline detection (`replay --detect --baseline`, `detector eval-offlab`) fit it the same
//! way.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{
    detect::Detector,
    features::{live_names, LIVE_FEATURE_SET},
    model::{Model, Rows},
    recent::Recent,
};

/// Most rows a fit takes (an even spread over the recent records).
const MAX_ROWS: usize = 10_000;

/// A fit of the host's benign baseline (the live feature set's novelty prototypes), prepared on
/// the agent's loop and run on a blocking thread: embedding and k-means over up to 10 000 rows
/// take tens of milliseconds, in which the loop would not read the ring buffer (at a million
/// records a second, 16 ms fill the default 4 MiB ring buffer).
pub struct BaselineJob {
    model: Model,
    version: String,
    values: Vec<f32>,
    rows: usize,
    quantile: f32,
}

/// A finished [`BaselineJob`]: the version it was fitted on, and the model with the host's
/// prototypes and rule.
pub struct BaselineDone {
    pub version: String,
    pub rows: usize,
    pub took: Duration,
    pub result: anyhow::Result<Model>,
}

impl BaselineJob {
    /// From recent records that scored below the alert threshold (an alert held back by the
    /// cooldown has no id but is no baseline either), once at least `min` of them are at hand:
    /// what alerted is never learnt as this host's normal, so an attack during the warm-up
    /// does not teach the host to accept it. (Learning every record instead silenced the
    /// corpus's recurring false alerts after warm-up, and also every lab attack session that
    /// followed one of its kind: docs/model.md.) `quantile`: the host's novelty quantile
    /// ([`host_rule`]).
    pub fn prepare(detector: &Detector, min: usize, quantile: f32) -> Option<Self> {
        let threshold = detector.policy.alert_threshold();
        let quiet: Vec<&Recent> = detector
            .recent()
            .iter()
            .filter(|r| r.alert_id.is_none() && r.score < threshold)
            .collect();
        if quiet.len() < min.max(crate::model::novelty::MIN_ROWS) {
            return None;
        }
        let step = (quiet.len() / MAX_ROWS).max(1);
        let mut values = Vec::new();
        let mut rows = 0;
        for r in quiet.iter().step_by(step) {
            values.extend_from_slice(&r.row);
            rows += 1;
        }
        Some(BaselineJob {
            model: (**detector.model()).clone(),
            version: detector.model_version.clone(),
            values,
            rows,
            quantile,
        })
    }

    /// Fits the prototypes and puts the host's rule in force on the model.
    pub fn run(mut self) -> BaselineDone {
        let start = Instant::now();
        let names = live_names();
        let rows = Rows {
            feature_set: LIVE_FEATURE_SET,
            features: &names,
            values: &self.values,
        };
        let result = self
            .model
            .fit_prototypes(&rows, 1)
            .context("fitting the novelty prototypes")
            .and_then(|_| host_rule(&mut self.model, self.quantile))
            .map(|_| self.model);
        BaselineDone {
            version: self.version,
            rows: self.rows,
            took: start.elapsed(),
            result,
        }
    }
}

/// The host's rule on the live feature set: a flow alerts only when its probability reaches
/// the alert threshold *and* it lies farther from this host's prototypes than `quantile` of
/// the host's own quiet flows (score = min(p, w · novelty), w = threshold / quantile).
pub fn host_rule(model: &mut Model, quantile: f32) -> anyhow::Result<()> {
    let layer = model
        .inputs
        .get_mut(LIVE_FEATURE_SET)
        .with_context(|| format!("the model has no {LIVE_FEATURE_SET} input layer"))?;
    layer.rule.require_novelty = true;
    layer.rule.novelty_weight = layer.rule.alert_threshold / quantile.clamp(0.5, 1.0);
    Ok(())
}

/// Offline: fits the host baseline from the detector's recent quiet records and serves it
/// (what the agent does at the end of its warm-up). False when too few quiet records were seen
/// (fewer than `min`); the detector then keeps its model.
pub fn fit_now(detector: &mut Detector, min: usize, quantile: f32) -> anyhow::Result<bool> {
    let Some(job) = BaselineJob::prepare(detector, min, quantile) else {
        return Ok(false);
    };
    let path = detector.score_path();
    let done = job.run();
    let model = done.result?;
    let version = format!("{}+host", done.version);
    detector.set_model(crate::detect::Serving {
        model: std::sync::Arc::new(model),
        version,
        path,
    })?;
    Ok(true)
}

/// How long this host has been learnt, kept in the state directory (`warmup.json`) so that a
/// restart does not start the warm-up again.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Warmup {
    /// Seconds the agent has run on this host, over all its runs.
    pub learned_s: f64,
}

impl Warmup {
    /// The file in the state directory.
    pub fn path(state_dir: &std::path::Path) -> std::path::PathBuf {
        state_dir.join("warmup.json")
    }

    /// The saved progress; none yet is a new host. A damaged file is an error naming it (the
    /// agent then starts the warm-up over rather than trusting it).
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let w: Warmup = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a warm-up record", path.display()))?;
                if !(w.learned_s.is_finite() && w.learned_s >= 0.0) {
                    anyhow::bail!("{}: learned_s must be a number ≥ 0", path.display());
                }
                Ok(w)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Warmup { learned_s: 0.0 }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Saves the progress atomically.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        crate::state::write_atomic(path, &serde_json::to_vec(self)?)
    }

    /// Whether `needed` of learning are done.
    pub fn done(&self, needed: Duration) -> bool {
        self.learned_s >= needed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_progress_survives_a_restart_and_a_bad_file_is_named() {
        let dir = std::env::temp_dir().join(format!("detector-warmup-{}", std::process::id()));
        let p = Warmup::path(&dir);
        let fresh = Warmup::load(&p).unwrap();
        assert_eq!(fresh.learned_s, 0.0);
        assert!(!fresh.done(Duration::from_secs(3600)));
        Warmup { learned_s: 3700.0 }.save(&p).unwrap();
        let back = Warmup::load(&p).unwrap();
        assert!(back.done(Duration::from_secs(3600)));
        std::fs::write(&p, b"{\"learned_s\": -1}").unwrap();
        let e = format!("{:#}", Warmup::load(&p).unwrap_err());
        assert!(e.contains("warmup.json") && e.contains("learned_s"), "{e}");
        std::fs::write(&p, b"garbage").unwrap();
        let e = format!("{:#}", Warmup::load(&p).unwrap_err());
        assert!(e.contains("warmup.json"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The host defines normal (docs/model.md, "The host's baseline"): the warm-up's progress is
//! counted and kept in the state directory; once it is done, the host's baseline is fitted from
//! quiet records beside the loop and served with the host's rule, then refitted now and then.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    baseline::{BaselineDone, BaselineJob, Warmup},
    config::AdaptationSection,
    control::{Envelope, WarmupStatus},
    detect::Detector,
    model::ScorePath,
};

/// The warm-up and the baseline fits.
pub struct Learning {
    warmup: Warmup,
    path: std::path::PathBuf,
    warm: bool,
    /// Since when running time has not been added to `warmup`.
    since: Instant,
    /// When the last fit ended.
    fitted_at: Option<Instant>,
    /// Rows of the last fit this agent made.
    pub baseline_rows: Option<usize>,
    fitting: bool,
    tx: mpsc::Sender<BaselineDone>,
    pub rx: mpsc::Receiver<BaselineDone>,
    /// Requests that wait for the running fit (incidents: an adaptation started from the model
    /// without the new baseline would, finishing later, replace the model that has it).
    deferred: Vec<Envelope>,
}

impl Learning {
    /// The warm-up's progress from the state directory (a damaged file starts it over, loudly).
    pub fn open(state_dir: &std::path::Path, cfg: &AdaptationSection) -> Self {
        let path = Warmup::path(state_dir);
        let warmup = Warmup::load(&path).unwrap_or_else(|e| {
            error!("{e:#}; the warm-up starts over");
            Warmup { learned_s: 0.0 }
        });
        let warm = warmup.done(cfg.warmup.0);
        info!(
            learned_s = warmup.learned_s as u64,
            needed_s = cfg.warmup.0.as_secs(),
            "{}",
            if warm {
                "this host has been learnt: its baseline is fitted from its next quiet records"
            } else {
                "learning this host (warm-up): alerting as out of the box until it is done"
            }
        );
        let (tx, rx) = mpsc::channel(1);
        Learning {
            warmup,
            path,
            warm,
            since: Instant::now(),
            fitted_at: None,
            baseline_rows: None,
            fitting: false,
            tx,
            rx,
            deferred: Vec::new(),
        }
    }

    /// Whether a fit is running.
    pub fn fitting(&self) -> bool {
        self.fitting
    }

    /// Adds the running time since the last call; at the end of the warm-up, and every
    /// `baseline_refresh` after, starts a fit beside the loop (not while an adaptation runs).
    pub fn tick(
        &mut self,
        now: Instant,
        detector: &Detector,
        cfg: &AdaptationSection,
        adapting: bool,
    ) {
        if let Some(job) = self.due(now, detector, cfg, adapting) {
            self.fitting = true;
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = tx.blocking_send(job.run());
            });
        }
    }

    /// The fit to start now, if one is due and enough quiet records are at hand.
    fn due(
        &mut self,
        now: Instant,
        detector: &Detector,
        cfg: &AdaptationSection,
        adapting: bool,
    ) -> Option<BaselineJob> {
        self.warmup.learned_s += now.saturating_duration_since(self.since).as_secs_f64();
        self.since = now;
        if !self.warm && self.warmup.done(cfg.warmup.0) {
            self.warm = true;
            info!("warm-up done: fitting this host's baseline; from then on only what is attack-like and unusual for this host alerts");
        }
        let due = self.warm
            && self
                .fitted_at
                .is_none_or(|t| now.saturating_duration_since(t) >= cfg.baseline_refresh.0);
        if !due || adapting || self.fitting {
            return None;
        }
        BaselineJob::prepare(detector, cfg.baseline_records, cfg.host_novelty_quantile)
    }

    /// Saves the warm-up's progress (stats interval, and at exit).
    pub fn save(&mut self) {
        self.warmup.learned_s += self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        if let Err(e) = self.warmup.save(&self.path) {
            warn!("cannot save the warm-up progress: {e:#}");
        }
    }

    /// A finished fit: served unless the model changed while it ran. Returns the requests that
    /// waited for it.
    pub fn done(
        &mut self,
        done: BaselineDone,
        detector: &mut Detector,
        path: ScorePath,
    ) -> Vec<Envelope> {
        self.fitting = false;
        self.fitted_at = Some(Instant::now());
        match done.result {
            Err(e) => warn!("cannot fit the host baseline: {e:#}"),
            // A rollback or an adaptation while it ran: the fit belongs to a model no longer
            // serving.
            Ok(_) if done.version != detector.model_version => info!(
                fitted_on = %done.version,
                serving = %detector.model_version,
                "the model changed while the host baseline was fitted: fit dropped until the next refresh"
            ),
            Ok(m) => match detector.set_model(crate::detect::Serving {
                model: Arc::new(m),
                version: done.version,
                path,
            }) {
                Err(e) => warn!("cannot serve the host baseline: {e:#}"),
                Ok(()) => {
                    self.baseline_rows = Some(done.rows);
                    info!(records = done.rows, took_ms = done.took.as_millis() as u64, "fitted this host's benign baseline: only what is attack-like and unusual for this host alerts");
                }
            },
        }
        std::mem::take(&mut self.deferred)
    }

    /// Holds a request until the running fit ends.
    pub fn defer(&mut self, env: Envelope) {
        self.deferred.push(env);
    }

    /// For `detector status`.
    pub fn status(&self, needed: Duration) -> WarmupStatus {
        WarmupStatus {
            done: self.warm,
            learned_s: (self.warmup.learned_s + self.since.elapsed().as_secs_f64()) as u64,
            needed_s: needed.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{detector_with_a_scan, temp_dir};

    #[test]
    fn the_warm_up_counts_running_time_and_then_a_fit_is_due_now_and_then() {
        let dir = temp_dir("learning");
        let cfg = AdaptationSection {
            warmup: crate::config::Dur(Duration::from_secs(60)),
            baseline_records: 20,
            baseline_refresh: crate::config::Dur(Duration::from_secs(600)),
            ..AdaptationSection::default()
        };
        let mut l = Learning::open(&dir, &cfg);
        let (det, _) = detector_with_a_scan();
        let t0 = l.since;
        assert!(l
            .due(t0 + Duration::from_secs(30), &det, &cfg, false)
            .is_none());
        assert!(!l.status(cfg.warmup.0).done);
        // Done at 60 s; not while an adaptation runs.
        assert!(l
            .due(t0 + Duration::from_secs(61), &det, &cfg, true)
            .is_none());
        assert!(l.status(cfg.warmup.0).done);
        assert!(l
            .due(t0 + Duration::from_secs(62), &det, &cfg, false)
            .is_some());
        // After a fit, the next is due a refresh later.
        l.fitted_at = Some(t0 + Duration::from_secs(62));
        assert!(l
            .due(t0 + Duration::from_secs(300), &det, &cfg, false)
            .is_none());
        assert!(l
            .due(t0 + Duration::from_secs(700), &det, &cfg, false)
            .is_some());
        // Saved, the progress outlives the agent.
        l.save();
        let again = Learning::open(&dir, &cfg);
        assert!(again.status(cfg.warmup.0).done);
        assert!(again.status(cfg.warmup.0).learned_s >= 700);
        let _ = std::fs::remove_dir_all(dir);
    }
}

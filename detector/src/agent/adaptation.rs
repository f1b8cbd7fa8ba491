//! The host's models: a confirmed incident adapts the serving model on a blocking thread; the
//! result is saved, then served (the agent's false-alert check may refuse it, and the model in
//! force stays); `model history` and `model rollback` read and move the host's versions.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::{
    clock::{self, TimeBase},
    config::Config,
    control::{self, Adapted, History, Response, RolledBack},
    detect::{Detector, FamilySignature, Serving},
    dismissals,
    incidents::{self, HistoryEntry, ModelStore, Selector},
    metrics::Metrics,
    model::{Model, ScorePath},
    recent,
};

/// A confirmed incident, as the fleet receives it.
pub struct Confirmed {
    pub family: String,
    pub flows: usize,
    /// The selected records' feature rows, one after another.
    pub rows: Vec<f32>,
    /// The benign sample the adaptation learns against, one row after another.
    pub benign: Vec<f32>,
}

/// A finished adaptation, with the request's answer channel.
pub struct AdaptDone {
    result: anyhow::Result<crate::model::Adapted>,
    family: String,
    flows: usize,
    signature: Vec<f32>,
    reply: oneshot::Sender<Response>,
}

/// The host's models and the adaptation in progress.
pub struct Models {
    store: ModelStore,
    /// The model the host had before any adaptation, and its version.
    base: Model,
    pub base_version: String,
    pub score_path: ScorePath,
    adapting: bool,
    tx: mpsc::Sender<AdaptDone>,
    pub rx: mpsc::Receiver<AdaptDone>,
}

impl Models {
    /// The base model, the host's store, and the model to serve now with its version: the
    /// host's newest adapted model, else the base (also when the newest cannot be read, loudly).
    pub fn open(cfg: &Config, score_path: ScorePath) -> anyhow::Result<(Self, Model, String)> {
        let (base, base_version) = crate::model::serving::base_model(&cfg.scoring.model)?;
        crate::state::ensure_dir(&cfg.agent.state_dir)?;
        let store = ModelStore::open(&cfg.agent.state_dir, cfg.adaptation.keep_models)?;
        let (model, version) = match store.load_current() {
            Ok(Some((m, e))) => (m, e.version),
            Ok(None) => (base.clone(), base_version.clone()),
            Err(e) => {
                // A damaged host model must not keep the agent down: fall back, loudly.
                error!("{e:#}; using the base model {base_version}");
                (base.clone(), base_version.clone())
            }
        };
        let (tx, rx) = mpsc::channel(1);
        let models = Models {
            store,
            base,
            base_version,
            score_path,
            adapting: false,
            tx,
            rx,
        };
        Ok((models, model, version))
    }

    /// Whether an adaptation is running.
    pub fn adapting(&self) -> bool {
        self.adapting
    }

    /// The confirmed families the store holds, as the detector names alerts by them.
    pub fn families(&self) -> Vec<FamilySignature> {
        self.store
            .signatures()
            .into_iter()
            .map(|(family, exemplars)| FamilySignature { family, exemplars })
            .collect()
    }

    /// `model history`.
    pub fn history(&self, detector: &Detector) -> Response {
        Response::History(History {
            ok: true,
            current: detector.model_version.clone(),
            base: self.base_version.clone(),
            history: self.store.entries().to_vec(),
        })
    }

    /// `model rollback`: the previous version serves (the base model after the first).
    pub fn rollback(&mut self, detector: &mut Detector) -> Response {
        let prev = match self.store.rollback() {
            Ok(p) => p,
            Err(e) => return control::error(format!("{e:#}")),
        };
        let (m, v) = match prev {
            Some(_) => match self.store.load_current() {
                Ok(Some((m, e))) => (m, e.version),
                Ok(None) => (self.base.clone(), self.base_version.clone()),
                Err(e) => return control::error(format!("{e:#}")),
            },
            None => (self.base.clone(), self.base_version.clone()),
        };
        match detector.set_model(Serving {
            model: Arc::new(m),
            version: v.clone(),
            path: self.score_path,
        }) {
            Ok(()) => {
                detector.set_families(self.families());
                info!(model = %v, "rolled back");
                Response::RolledBack(RolledBack { ok: true, model: v })
            }
            Err(e) => control::error(format!("{e:#}")),
        }
    }

    /// `incident confirm`: adapts the serving model from the selected recent flows on a
    /// blocking thread; the answer goes to `reply` when it is done (or at once if refused).
    /// Returns the confirmed incident's rows when the selection was accepted.
    pub fn start(
        &mut self,
        detector: &Detector,
        family: String,
        sel: &Selector,
        fpr_budget: f64,
        reply: oneshot::Sender<Response>,
    ) -> Option<Confirmed> {
        let refuse = |reply: oneshot::Sender<Response>, msg: String| {
            let _ = reply.send(control::error(msg));
            None
        };
        if family == dismissals::FAMILY {
            return refuse(
                reply,
                format!("`{family}` is reserved for dismissed alerts (detector incident dismiss)"),
            );
        }
        if self.adapting {
            return refuse(
                reply,
                "an adaptation is already running; try again when it finishes".into(),
            );
        }
        let threshold = detector.policy.alert_threshold();
        let support =
            match incidents::select(detector.recent(), sel, threshold, incidents::MAX_BENIGN) {
                Ok(s) => s,
                Err(e) => return refuse(reply, format!("{e:#}")),
            };
        self.adapting = true;
        let model = detector.model().clone();
        let signature = recent::exemplars(&support.positives, recent::SIGNATURE_EXEMPLARS);
        let tx = self.tx.clone();
        info!(%family, flows = support.flows, "incident confirmed: adapting");
        let confirmed = Confirmed {
            family: family.clone(),
            flows: support.flows,
            rows: support.positives.clone(),
            benign: support.benign.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let result = incidents::adapt_model(&model, &support, &family, fpr_budget);
            let _ = tx.blocking_send(AdaptDone {
                result,
                family,
                flows: support.flows,
                signature,
                reply,
            });
        });
        Some(confirmed)
    }

    /// A finished adaptation: saved, then served; the answer goes back to the request.
    pub fn finish(&mut self, done: AdaptDone, detector: &mut Detector, metrics: &Metrics) {
        self.adapting = false;
        let AdaptDone {
            result,
            family,
            flows,
            signature,
            reply,
        } = done;
        let answer = match result {
            Err(e) => {
                metrics.adaptations_refused.inc();
                warn!("{e:#}");
                control::error(format!("{e:#}"))
            }
            Ok(adapted) => self.serve(adapted, detector, metrics, family, flows, signature),
        };
        let _ = reply.send(answer);
    }

    fn serve(
        &mut self,
        adapted: crate::model::Adapted,
        detector: &mut Detector,
        metrics: &Metrics,
        family: String,
        flows: usize,
        signature: Vec<f32>,
    ) -> Response {
        let report = serde_json::to_value(&adapted.report).unwrap_or_default();
        let entry = HistoryEntry {
            version: String::new(),
            file: String::new(),
            parent: Some(detector.model_version.clone()),
            created_unix_ns: TimeBase::monotonic().to_unix_ns(clock::monotonic_ns()),
            family: Some(family.clone()),
            flows,
            report: Some(report.clone()),
            signature: signature.clone(),
        };
        // The old model keeps serving when the new one cannot be saved.
        let entry = match self.store.add(&adapted.model, entry) {
            Ok(e) => e,
            Err(e) => {
                error!("{e:#}");
                return control::error(format!("{e:#}"));
            }
        };
        let version = entry.version.clone();
        if let Err(e) = detector.set_model(Serving {
            model: Arc::new(adapted.model),
            version: version.clone(),
            path: self.score_path,
        }) {
            return control::error(format!("{e:#}"));
        }
        detector.add_family(FamilySignature {
            family: family.clone(),
            exemplars: signature,
        });
        metrics.adaptations.inc();
        info!(model = %version, %family, flows, "adapted model serving");
        Response::Adapted(Adapted {
            ok: true,
            model: version,
            family,
            flows,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{detector_with_a_scan, temp_dir};

    fn models(dir: &std::path::Path) -> Models {
        let mut cfg = Config::default();
        cfg.agent.state_dir = dir.to_path_buf();
        Models::open(&cfg, ScorePath::Reference).unwrap().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_incident_adapts_saves_serves_and_rolls_back() {
        let dir = temp_dir("adapt");
        let mut m = models(&dir);
        let (mut det, scanner) = detector_with_a_scan();
        let base = det.model_version.clone();
        let sel = Selector::from_request(vec![], Some(&scanner), None, None).unwrap();
        let (tx, rx) = oneshot::channel();
        m.start(&det, "scan".into(), &sel, 1.0, tx);
        assert!(m.adapting());
        // A second incident while the first runs is refused at once.
        let (tx2, rx2) = oneshot::channel();
        m.start(&det, "scan".into(), &sel, 1.0, tx2);
        assert!(matches!(rx2.await.unwrap(), Response::Failure(_)));
        let done = m.rx.recv().await.unwrap();
        m.finish(done, &mut det, &Metrics::default());
        let Response::Adapted(a) = rx.await.unwrap() else {
            panic!("not adapted")
        };
        assert_eq!(
            (a.model.as_str(), det.model_version.as_str()),
            ("host-1", "host-1")
        );
        assert!(!m.adapting());
        let Response::History(h) = m.history(&det) else {
            panic!()
        };
        assert_eq!(h.history.len(), 1);
        assert!(matches!(m.rollback(&mut det), Response::RolledBack(_)));
        assert_eq!(det.model_version, base);
        assert!(
            matches!(m.rollback(&mut det), Response::Failure(_)),
            "nothing left to roll back"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_dismissal_family_cannot_be_confirmed() {
        let dir = temp_dir("adapt-reserved");
        let mut m = models(&dir);
        let (det, scanner) = detector_with_a_scan();
        let sel = Selector::from_request(vec![], Some(&scanner), None, None).unwrap();
        let (tx, rx) = oneshot::channel();
        m.start(&det, dismissals::FAMILY.into(), &sel, 1.0, tx);
        let Response::Failure(f) = rx.await.unwrap() else {
            panic!()
        };
        assert!(f.error.contains("reserved"), "{}", f.error);
        assert!(!m.adapting());
        let _ = std::fs::remove_dir_all(dir);
    }
}

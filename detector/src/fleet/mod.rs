//! The fleet: the agent's alerts, confirmed incidents and heartbeats go to NATS JetStream
//! (`detector.<host>.alert|incident|heartbeat`), spooled to disk while the servers are away.
//! Off unless `[fleet] servers` is set; see docs/fleet.md.
//!
//! - [`config`]: the `[fleet]` section;
//! - [`subjects`]: subject and stream names;
//! - [`events`]: the messages;
//! - [`spool`]: the bounded on-disk spool;
//! - [`publisher`]: the task that publishes and spools;
//! - [`connect`]: the NATS connection from the configuration;
//! - [`streams`]: `detector fleet init` (the streams) and `detector fleet status`;
//! - [`models`]: fleet models: keys, `detector fleet train` and `rollback`, verification;
//! - [`follow`]: the agent follows the fleet model pointer.

pub mod config;
pub mod connect;
pub mod events;
pub mod follow;
pub mod models;
pub mod publisher;
pub mod spool;
pub mod streams;
pub mod subjects;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{error, info, warn};

pub use config::FleetSection;
pub use events::{Heartbeat, IncidentEvent, Outgoing, Refusal};
use subjects::Kind;

/// The fleet's counters: in `detector status` and as `detector_fleet_*` metrics.
#[derive(Debug, Default)]
pub struct FleetMetrics {
    /// Alert events handed to the publisher.
    pub alerts: Counter,
    pub published: Counter,
    /// Publishes the stream recognised as duplicates (same `Nats-Msg-Id`) and did not store.
    pub duplicates: Counter,
    pub spooled: Counter,
    /// Events dropped because the spool was full (or unwritable, or a line of it unreadable).
    pub spool_dropped: Counter,
    /// Events dropped because the publisher's queue was full.
    pub queue_dropped: Counter,
    pub publish_failed: Counter,
    pub permission_errors: Counter,
    pub spool_entries: Gauge,
    pub spool_bytes: Gauge,
    pub connected: Gauge,
    last_error: Mutex<Option<String>>,
}

impl FleetMetrics {
    /// Registers the series (`fleet_*`) in `r`.
    pub fn register(&self, r: &mut Registry) {
        for (name, help, c) in [
            (
                "fleet_alerts",
                "Alert events handed to the fleet publisher",
                &self.alerts,
            ),
            (
                "fleet_published",
                "Events the fleet's streams acknowledged",
                &self.published,
            ),
            (
                "fleet_duplicates",
                "Publishes the stream discarded as duplicates (same message id)",
                &self.duplicates,
            ),
            (
                "fleet_spooled",
                "Events written to the fleet spool",
                &self.spooled,
            ),
            (
                "fleet_spool_dropped",
                "Events dropped: the fleet spool was full or unwritable",
                &self.spool_dropped,
            ),
            (
                "fleet_queue_dropped",
                "Events dropped: the fleet publisher's queue was full",
                &self.queue_dropped,
            ),
            (
                "fleet_publish_failed",
                "Publishes not acknowledged in time",
                &self.publish_failed,
            ),
            (
                "fleet_permission_errors",
                "Publishes the NATS server refused for permissions",
                &self.permission_errors,
            ),
        ] {
            r.register(name, help, c.clone());
        }
        for (name, help, g) in [
            (
                "fleet_spool_entries",
                "Events waiting in the fleet spool",
                &self.spool_entries,
            ),
            (
                "fleet_spool_bytes",
                "Bytes of the fleet spool",
                &self.spool_bytes,
            ),
            (
                "fleet_connected",
                "1 while connected to a NATS server",
                &self.connected,
            ),
        ] {
            r.register(name, help, g.clone());
        }
    }

    /// Remembers the last error for `detector status`.
    pub fn set_last_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// Every event dropped so far.
    pub fn dropped(&self) -> u64 {
        self.spool_dropped.get() + self.queue_dropped.get()
    }

    /// The counters for `detector status`.
    pub fn status(&self, host: &str, servers: &[String]) -> FleetStatus {
        FleetStatus {
            host: host.to_string(),
            servers: servers.to_vec(),
            connected: self.connected.get() == 1,
            published: self.published.get(),
            duplicates: self.duplicates.get(),
            spooled: self.spooled.get(),
            spool_entries: self.spool_entries.get().max(0) as u64,
            spool_bytes: self.spool_bytes.get().max(0) as u64,
            spool_dropped: self.spool_dropped.get(),
            queue_dropped: self.queue_dropped.get(),
            publish_failed: self.publish_failed.get(),
            permission_errors: self.permission_errors.get(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The fleet part of `detector status`.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    pub host: String,
    pub servers: Vec<String>,
    pub connected: bool,
    pub published: u64,
    pub duplicates: u64,
    pub spooled: u64,
    pub spool_entries: u64,
    pub spool_bytes: u64,
    pub spool_dropped: u64,
    pub queue_dropped: u64,
    pub publish_failed: u64,
    pub permission_errors: u64,
    pub last_error: Option<String>,
}

/// The agent's side of the fleet: hands events to the publisher without waiting. Cheap to
/// clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Outgoing>,
    host: Arc<str>,
    /// `<host>.<start time>`: message ids stay unique over restarts.
    id_prefix: Arc<str>,
    seq: Arc<AtomicU64>,
    metrics: Arc<FleetMetrics>,
}

impl Sender {
    /// This host's id.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// An alert event (the JSON the agent writes, with `host`).
    pub fn alert<T: Serialize>(&self, alert: &T) {
        match events::with_host(alert, &self.host) {
            Ok(p) => {
                self.metrics.alerts.inc();
                self.offer(Kind::Alert, p)
            }
            Err(e) => error!("fleet: cannot encode an alert: {e}"),
        }
    }

    /// A confirmed incident.
    pub fn incident(&self, ev: &IncidentEvent) {
        match serde_json::to_string(ev) {
            Ok(p) => self.offer(Kind::Incident, p),
            Err(e) => error!("fleet: cannot encode an incident: {e}"),
        }
    }

    /// A heartbeat.
    pub fn heartbeat(&self, hb: &Heartbeat) {
        match serde_json::to_string(hb) {
            Ok(p) => self.offer(Kind::Heartbeat, p),
            Err(e) => error!("fleet: cannot encode a heartbeat: {e}"),
        }
    }

    /// A fleet model this host refused.
    pub fn refusal(&self, r: &Refusal) {
        match serde_json::to_string(r) {
            Ok(p) => self.offer(Kind::Refusal, p),
            Err(e) => error!("fleet: cannot encode a refusal: {e}"),
        }
    }

    /// Counters for the heartbeat and status.
    pub fn metrics(&self) -> &FleetMetrics {
        &self.metrics
    }

    /// Queues one event; a full queue drops it (counted) rather than wait.
    fn offer(&self, kind: Kind, payload: String) {
        let seq = self.seq.fetch_add(1, Relaxed);
        let ev = Outgoing {
            kind,
            subject: subjects::subject(&self.host, kind),
            msg_id: format!("{}.{seq}", self.id_prefix),
            payload,
        };
        if self.tx.try_send(ev).is_err() {
            self.metrics.queue_dropped.inc();
            if self.metrics.queue_dropped.get().is_power_of_two() {
                warn!(
                    dropped = self.metrics.queue_dropped.get(),
                    "fleet: publisher queue full (fleet.queue): events dropped"
                );
            }
        }
    }
}

/// The running publisher.
pub struct Fleet {
    pub sender: Sender,
    pub cfg: FleetSection,
    /// Verified fleet models for the agent's own check (when `fleet.model_public_key` is set).
    pub offers: Option<mpsc::Receiver<follow::Checked>>,
    follower: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Fleet {
    /// Starts the publisher for `cfg` (which must be on). `previous` is the publisher this one
    /// replaces (SIGHUP): it is stopped and awaited first, so that one task owns the spool at
    /// a time.
    pub fn start(
        cfg: &FleetSection,
        state_dir: &Path,
        metrics: Arc<FleetMetrics>,
        previous: Option<Fleet>,
    ) -> anyhow::Result<Self> {
        let host = cfg.host()?;
        let public_key = cfg.model_public_key()?;
        let (tx, rx) = mpsc::channel(cfg.queue);
        let (stop_tx, stop_rx) = oneshot::channel();
        let started = crate::clock::TimeBase::monotonic().to_unix_ns(crate::clock::monotonic_ns());
        let sender = Sender {
            tx,
            host: host.as_str().into(),
            id_prefix: format!("{host}.{started:x}").into(),
            seq: Arc::new(AtomicU64::new(0)),
            metrics: metrics.clone(),
        };
        let previous = previous.map(Fleet::stop);
        let (c, dir, name) = (
            cfg.clone(),
            state_dir.to_path_buf(),
            format!("detector-{host}"),
        );
        let task = tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            metrics.connected.set(0);
            let client = match connect::connect(&c, &name, Some(metrics.clone())).await {
                Ok(client) => Some(client),
                Err(e) => {
                    error!("fleet: {e:#}; events are spooled until the configuration is fixed (SIGHUP)");
                    metrics.set_last_error(format!("{e:#}"));
                    None
                }
            };
            let task = publisher::Task {
                client,
                state_dir: dir,
                spool_bytes: c.spool_bytes,
                ack_timeout: c.ack_timeout.0,
                metrics,
            };
            publisher::run(task, rx, stop_rx).await;
        });
        info!(%host, servers = ?cfg.servers, "fleet: publishing alerts, incidents and heartbeats");
        let (offers, follower) = match public_key {
            Some(k) => {
                let (otx, orx) = mpsc::channel(1);
                (Some(orx), Some(follow::spawn(cfg, &host, k, otx)))
            }
            None => {
                info!("fleet: fleet.model_public_key is not set: fleet models are not followed");
                (None, None)
            }
        };
        Ok(Self {
            sender,
            cfg: cfg.clone(),
            offers,
            follower,
            stop: Some(stop_tx),
            task,
        })
    }

    /// Asks the publisher to stop (it spools what is still queued); the task to await.
    pub fn stop(mut self) -> JoinHandle<()> {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task
    }

    /// Stops the publisher and waits for it, at most `limit`.
    pub async fn shutdown(self, limit: Duration) {
        if tokio::time::timeout(limit, self.stop()).await.is_err() {
            warn!("fleet: the publisher did not stop in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No server listens: alerts and incidents go to the spool (and survive the publisher),
    /// heartbeats do not; a full queue drops and counts rather than wait.
    #[tokio::test]
    async fn without_a_server_events_are_spooled_and_heartbeats_are_not() {
        let dir = std::env::temp_dir().join(format!("detector-fleet-off-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = FleetSection {
            servers: vec!["nats://127.0.0.1:1".into()],
            host_id: "h1".into(),
            queue: 4,
            ..Default::default()
        };
        let metrics = Arc::new(FleetMetrics::default());
        let fleet = Fleet::start(&cfg, &dir, metrics.clone(), None).unwrap();
        for i in 0..3 {
            fleet
                .sender
                .alert(&serde_json::json!({"type": "alert", "id": i}));
        }
        fleet.sender.heartbeat(&Heartbeat {
            kind: "heartbeat".into(),
            host: "h1".into(),
            ts_ns: 1,
            uptime_s: 1,
            model: "m".into(),
            agent_version: "v".into(),
            records_read: 0,
            alerts: 3,
            fleet_dropped: 0,
            spool_entries: 0,
        });
        // The fifth and later wait behind a full queue: dropped and counted, never waited for.
        for i in 3..40 {
            fleet
                .sender
                .alert(&serde_json::json!({"type": "alert", "id": i}));
        }
        assert!(metrics.queue_dropped.get() >= 1);
        fleet.shutdown(Duration::from_secs(10)).await;
        let (spool, bad) = spool::Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(bad, 0);
        let kept = spool.front(100);
        assert!(kept.iter().all(|e| e.kind == Kind::Alert), "{kept:?}");
        assert_eq!(
            kept.len() as u64 + metrics.queue_dropped.get(),
            40,
            "every alert is spooled or counted as dropped"
        );
        let first: serde_json::Value = serde_json::from_str(&kept[0].payload).unwrap();
        assert_eq!(
            (first["host"].as_str(), first["id"].as_u64()),
            (Some("h1"), Some(0))
        );
        assert_eq!(kept[0].subject, "detector.h1.alert");
        let _ = std::fs::remove_dir_all(dir);
    }
}

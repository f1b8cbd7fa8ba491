//! The publisher task: takes events from the agent's loop through a bounded channel and
//! publishes them to JetStream, awaiting each acknowledgement. While the servers are
//! unreachable (or an event is not acknowledged in time) alerts and incidents go to the
//! [`Spool`], which is sent, oldest first, as soon as the connection is back; heartbeats are
//! only worth their moment and are not spooled. Nothing here runs on the agent's loop.

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_nats::{
    connection::State,
    jetstream::{self, message::PublishMessage},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::{events::Outgoing, spool::Spool, subjects::Kind, FleetMetrics};

/// Events taken from the channel (or the spool) per round of publishes.
const BATCH: usize = 256;
/// How often the spool is retried while the servers are away.
const RETRY: Duration = Duration::from_secs(1);

/// What the task needs.
pub struct Task {
    pub client: Option<async_nats::Client>,
    pub state_dir: PathBuf,
    pub spool_bytes: u64,
    pub ack_timeout: Duration,
    pub metrics: Arc<FleetMetrics>,
}

/// Runs until `stop` fires (or every sender is gone); then moves what is still queued to the
/// spool, so that a restart or a reload loses nothing.
pub async fn run(task: Task, mut rx: mpsc::Receiver<Outgoing>, mut stop: oneshot::Receiver<()>) {
    let mut p = Publisher::new(task);
    let mut retry = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            first = rx.recv() => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                p.offer(batch).await;
            }
            _ = retry.tick() => p.drain_spool().await,
        }
    }
    rx.close();
    let mut rest = Vec::new();
    while let Ok(e) = rx.try_recv() {
        rest.push(e);
    }
    // Durable first; then, briefly, sent if the servers are there (whatever is cut short
    // stays in the spool, and a resend is a duplicate the stream drops).
    p.spool_events(rest);
    let _ = tokio::time::timeout(Duration::from_secs(2), p.drain_spool()).await;
    info!(
        spooled = p.spool.as_ref().map_or(0, |s| s.len()),
        "fleet: publisher stopped"
    );
}

struct Publisher {
    client: Option<async_nats::Client>,
    js: Option<jetstream::Context>,
    spool: Option<Spool>,
    metrics: Arc<FleetMetrics>,
}

impl Publisher {
    fn new(t: Task) -> Self {
        let spool = match Spool::open(&t.state_dir, t.spool_bytes) {
            Ok((s, bad)) => {
                if bad > 0 {
                    warn!(
                        bad,
                        "fleet: unreadable lines in the spool were dropped (a torn write?)"
                    );
                    t.metrics.spool_dropped.inc_by(bad as u64);
                }
                if !s.is_empty() {
                    info!(
                        entries = s.len(),
                        "fleet: spooled events from before; sending them when connected"
                    );
                }
                Some(s)
            }
            Err(e) => {
                error!(
                    "fleet: cannot open the spool in {}: {e}; events that cannot be published at once are dropped",
                    t.state_dir.display()
                );
                t.metrics.set_last_error(format!("spool: {e}"));
                None
            }
        };
        let js = t.client.clone().map(|c| {
            jetstream::context::ContextBuilder::new()
                .timeout(t.ack_timeout)
                .build(c)
        });
        let p = Self {
            client: t.client,
            js,
            spool,
            metrics: t.metrics,
        };
        p.gauge_spool();
        p
    }

    fn connected(&self) -> bool {
        self.client
            .as_ref()
            .is_some_and(|c| c.connection_state() == State::Connected)
    }

    /// New events: published at once when the spool is empty and the servers are there;
    /// otherwise (and when not acknowledged) spooled behind what waits already.
    async fn offer(&mut self, batch: Vec<Outgoing>) {
        if !self.spool.as_ref().is_none_or(|s| s.is_empty()) || !self.connected() {
            self.spool_events(batch);
            self.drain_spool().await;
            return;
        }
        let sent = self.publish(&batch).await;
        let failed = batch
            .into_iter()
            .zip(sent)
            .filter(|(_, ok)| !ok)
            .map(|(e, _)| e)
            .collect();
        self.spool_events(failed);
    }

    /// Spools alerts and incidents (heartbeats are dropped: stale by the time they would go).
    fn spool_events(&mut self, events: Vec<Outgoing>) {
        let mut full = 0u64;
        for e in events.iter().filter(|e| e.kind != Kind::Heartbeat) {
            let stored = match &mut self.spool {
                Some(s) => match s.push(e) {
                    Ok(ok) => ok,
                    Err(err) => {
                        error!("fleet: cannot write the spool: {err}");
                        self.metrics.set_last_error(format!("spool: {err}"));
                        false
                    }
                },
                None => false,
            };
            if stored {
                self.metrics.spooled.inc();
            } else {
                full += 1;
            }
        }
        if let Some(s) = &mut self.spool {
            if let Err(err) = s.sync() {
                error!("fleet: cannot sync the spool: {err}");
            }
        }
        if full > 0 {
            self.metrics.spool_dropped.inc_by(full);
            error!(
                dropped = full,
                "fleet: spool full (fleet.spool_bytes): events dropped"
            );
        }
        self.gauge_spool();
    }

    /// Sends the spool, oldest first, while the servers acknowledge.
    async fn drain_spool(&mut self) {
        while self.connected() {
            let Some(batch) = self.spool.as_ref().map(|s| s.front(BATCH)) else {
                return;
            };
            if batch.is_empty() {
                return;
            }
            let sent = self.publish(&batch).await;
            let n = sent.iter().take_while(|ok| **ok).count();
            if let Some(s) = &mut self.spool {
                if let Err(e) = s.remove_front(n) {
                    error!("fleet: cannot rewrite the spool: {e}");
                }
            }
            self.gauge_spool();
            if n < batch.len() {
                return;
            }
            info!(sent = n, "fleet: spooled events published");
        }
    }

    /// Publishes `batch`, then awaits the acknowledgements; whether each was stored.
    async fn publish(&self, batch: &[Outgoing]) -> Vec<bool> {
        let mut ok = vec![false; batch.len()];
        let Some(js) = &self.js else { return ok };
        let mut acks = Vec::with_capacity(batch.len());
        for e in batch {
            let msg = PublishMessage::build()
                .payload(e.payload.clone().into())
                .message_id(&e.msg_id);
            match js.send_publish(e.subject.clone(), msg).await {
                Ok(f) => acks.push(f),
                Err(err) => {
                    self.failed(&e.subject, &err.to_string());
                    break;
                }
            }
        }
        for (i, f) in acks.into_iter().enumerate() {
            match f.await {
                Ok(ack) => {
                    ok[i] = true;
                    self.metrics.published.inc();
                    if ack.duplicate {
                        self.metrics.duplicates.inc();
                    }
                }
                Err(err) => self.failed(&batch[i].subject, &err.to_string()),
            }
        }
        ok
    }

    fn failed(&self, subject: &str, err: &str) {
        self.metrics.publish_failed.inc();
        warn!("fleet: publish to {subject} not acknowledged: {err}");
        self.metrics.set_last_error(format!("{subject}: {err}"));
    }

    fn gauge_spool(&self) {
        let (n, b) = self
            .spool
            .as_ref()
            .map_or((0, 0), |s| (s.len() as i64, s.file_bytes() as i64));
        self.metrics.spool_entries.set(n);
        self.metrics.spool_bytes.set(b);
    }
}

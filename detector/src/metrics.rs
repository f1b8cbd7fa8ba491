//! Prometheus metrics on a local address: counters the agent keeps, plus the kernel's counters
//! and map occupancy read at scrape time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::warn;

/// Upper bounds (µs) of the scoring-latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 10] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000, 250_000];

/// Counters the agent updates as it works.
#[derive(Default)]
pub struct Metrics {
    pub flow_records: AtomicU64,
    pub process_events: AtomicU64,
    pub scored: AtomicU64,
    pub adaptations: AtomicU64,
    pub adaptations_refused: AtomicU64,
    /// Alerts not raised because they matched a dismissed pattern.
    pub dismissed_alerts: AtomicU64,
    pub alerts: Mutex<BTreeMap<String, u64>>,
    pub drops: Mutex<BTreeMap<String, u64>>,
    pub shadow_drops: Mutex<BTreeMap<String, u64>>,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    /// Filled by the agent before each scrape: kernel counters, map occupancy, model.
    pub gauges: Mutex<BTreeMap<String, f64>>,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, family: &str) {
    if let Ok(mut m) = m.lock() {
        *m.entry(family.to_string()).or_default() += 1;
    }
}

impl Metrics {
    pub fn alert(&self, family: &str) {
        bump(&self.alerts, family);
    }
    pub fn dropped(&self, family: &str) {
        bump(&self.drops, family);
    }
    pub fn shadow_dropped(&self, family: &str) {
        bump(&self.shadow_drops, family);
    }

    /// Records a batch's scoring latencies (record read → score done): counted locally, then
    /// one atomic add per bucket used (two atomic adds per record were 2% of the agent's time
    /// at full load).
    pub fn latencies(&self, ds: impl IntoIterator<Item = Duration>) {
        let mut counts = [0u64; LATENCY_BUCKETS_US.len() + 1];
        let mut sum = 0u64;
        for d in ds {
            let us = d.as_micros() as u64;
            let i = LATENCY_BUCKETS_US
                .iter()
                .position(|&b| us <= b)
                .unwrap_or(LATENCY_BUCKETS_US.len());
            counts[i] += 1;
            sum += us;
        }
        for (c, n) in self.latency.iter().zip(counts) {
            if n > 0 {
                c.fetch_add(n, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(sum, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "detector_flow_records_total",
            "Flow records read from the kernel.",
            self.flow_records.load(Relaxed),
        );
        counter(
            &mut o,
            "detector_process_events_total",
            "Process events read from the kernel.",
            self.process_events.load(Relaxed),
        );
        counter(
            &mut o,
            "detector_scored_total",
            "Flow records scored.",
            self.scored.load(Relaxed),
        );
        counter(
            &mut o,
            "detector_adaptations_total",
            "Models adapted from confirmed incidents.",
            self.adaptations.load(Relaxed),
        );
        counter(
            &mut o,
            "detector_dismissed_alerts_total",
            "Alerts not raised: they matched a pattern the operator dismissed.",
            self.dismissed_alerts.load(Relaxed),
        );
        counter(
            &mut o,
            "detector_adaptations_refused_total",
            "Adaptations refused by the false-alert check.",
            self.adaptations_refused.load(Relaxed),
        );
        for (name, help, m) in [
            (
                "detector_alerts_total",
                "Alerts written, by family.",
                &self.alerts,
            ),
            (
                "detector_drops_total",
                "Blocklist entries inserted, by family.",
                &self.drops,
            ),
            (
                "detector_shadow_drops_total",
                "Drops logged in shadow mode, by family.",
                &self.shadow_drops,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(m) = m.lock() {
                for (family, v) in m.iter() {
                    let _ = writeln!(o, "{name}{{family=\"{}\"}} {v}", escape(family));
                }
            }
        }
        let name = "detector_scoring_latency_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time from reading a record to its score.\n# TYPE {name} histogram"
        );
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cum += self.latency[i].load(Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {cum}", *b as f64 / 1e6);
        }
        cum += self.latency[LATENCY_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            o,
            "{name}_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{name}_count {cum}");
        if let Ok(g) = self.gauges.lock() {
            for (k, v) in g.iter() {
                let (metric, _) = k.split_once('{').unwrap_or((k.as_str(), ""));
                let _ = writeln!(o, "# TYPE {metric} gauge\n{k} {v}");
            }
        }
        o
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` (any path, really) on `listener`; `refresh` updates the gauges first.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
) {
    loop {
        let (mut s, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            // The request itself does not matter; read what came so the client is not reset.
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            let (tx, rx) = tokio::sync::oneshot::channel();
            if refresh.send(tx).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            }
            let body = metrics.render();
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.flow_records.fetch_add(3, Relaxed);
        m.alert("scan");
        m.alert("scan");
        m.dropped("brute\"force");
        m.latencies([
            Duration::from_micros(40),
            Duration::from_micros(700),
            Duration::from_secs(2),
        ]);
        m.gauges
            .lock()
            .unwrap()
            .insert("detector_flow_table_entries".into(), 12.0);
        let t = m.render();
        assert!(t.contains("detector_flow_records_total 3"), "{t}");
        assert!(
            t.contains("detector_alerts_total{family=\"scan\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("detector_drops_total{family=\"brute\\\"force\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("detector_scoring_latency_seconds_bucket{le=\"0.00005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("detector_scoring_latency_seconds_bucket{le=\"0.001\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("detector_scoring_latency_seconds_bucket{le=\"+Inf\"} 3"),
            "{t}"
        );
        assert!(t.contains("detector_flow_table_entries 12"), "{t}");
    }
}

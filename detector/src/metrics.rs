//! Prometheus metrics on a local address: counters the agent keeps, plus the kernel's counters,
//! map occupancy and the serving model, copied in at scrape time. Names, types, HELP lines and
//! label escaping come from `prometheus-client`; what is ours is the batched latency histogram
//! and the one-route HTTP responder (a GET of `/metrics` is all it serves, not worth an HTTP
//! stack in a privileged daemon).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use detector_common::flow::stat;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{
        counter::Counter, exemplar::Exemplar, family::Family, gauge::Gauge, MetricType, TypedMetric,
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::warn;

/// Upper bounds (µs) of the scoring-latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 10] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000, 250_000];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByFamily {
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelVersion {
    version: String,
}

/// The counters the agent updates as it works, and the values a scrape copies in.
pub struct Metrics {
    registry: Registry,
    pub flow_records: Counter,
    pub process_events: Counter,
    pub scored: Counter,
    pub adaptations: Counter,
    pub adaptations_refused: Counter,
    /// Alerts not raised because they matched a dismissed pattern.
    pub dismissed_alerts: Counter,
    alerts: Family<ByFamily, Counter>,
    drops: Family<ByFamily, Counter>,
    shadow_drops: Family<ByFamily, Counter>,
    latency: Latency,
    /// Copied in before each scrape ([`Metrics::set_host`]).
    host: HostSeries,
    /// The fleet publisher's counters (`detector_fleet_*`), zero while the fleet is off.
    pub fleet: std::sync::Arc<crate::fleet::FleetMetrics>,
}

/// Series whose values live elsewhere (the kernel's per-CPU counters, the flow table, the
/// policy) and are copied in before each scrape. The kernel and policy counts only grow, so they
/// are counters whose value is stored rather than added to.
struct HostSeries {
    kernel: Vec<Counter>,
    table_entries: Gauge,
    table_evicted: Counter,
    table_capacity: Gauge,
    blocklist_entries: Gauge,
    tracked_sources: Gauge,
    records_per_second: Gauge<f64, AtomicU64>,
    alerts_rate_limited: Counter,
    thin_evidence: Counter,
    model_info: Family<ModelVersion, Gauge>,
}

/// What a scrape shows of the host at this moment (the agent fills it, see
/// `agent::outputs::Gauges`).
pub struct HostValues<'a> {
    /// The kernel's counters, in `stat::NAMES` order.
    pub kernel: &'a [u64],
    pub table_entries: u64,
    pub table_evicted: u64,
    pub table_capacity: u64,
    pub blocklist_entries: u64,
    pub tracked_sources: u64,
    pub records_per_second: f64,
    pub alerts_rate_limited: u64,
    pub thin_evidence: u64,
    pub model_version: &'a str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("detector");
        // prometheus-client appends `_total` to counters and a full stop to HELP texts.
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let by_family = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<ByFamily, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let flow_records = counter(&mut r, "flow_records", "Flow records read from the kernel");
        let process_events = counter(
            &mut r,
            "process_events",
            "Process events read from the kernel",
        );
        let scored = counter(&mut r, "scored", "Flow records scored");
        let adaptations = counter(
            &mut r,
            "adaptations",
            "Models adapted from confirmed incidents",
        );
        let adaptations_refused = counter(
            &mut r,
            "adaptations_refused",
            "Adaptations refused by the false-alert check",
        );
        let dismissed_alerts = counter(
            &mut r,
            "dismissed_alerts",
            "Alerts not raised: they matched a pattern the operator dismissed",
        );
        let alerts = by_family(&mut r, "alerts", "Alerts written, by family");
        let drops = by_family(&mut r, "drops", "Blocklist entries inserted, by family");
        let shadow_drops = by_family(
            &mut r,
            "shadow_drops",
            "Drops logged in shadow mode, by family",
        );
        let latency = Latency::default();
        r.register(
            "scoring_latency_seconds",
            "Time from reading a record to its score",
            latency.clone(),
        );
        let kernel = stat::NAMES
            .iter()
            .map(|n| {
                counter(
                    &mut r,
                    &format!("kernel_{n}"),
                    &format!("The eBPF programs' {n} counter, summed over CPUs"),
                )
            })
            .collect();
        let host = HostSeries {
            kernel,
            table_entries: gauge(&mut r, "flow_table_entries", "Flows in the kernel's table"),
            table_evicted: counter(
                &mut r,
                "flow_table_evicted",
                "Live flows the kernel's full flow table evicted before their final record",
            ),
            table_capacity: gauge(
                &mut r,
                "flow_table_capacity",
                "Capacity of the kernel's flow table",
            ),
            blocklist_entries: gauge(&mut r, "blocklist_entries", "Sources the XDP program drops"),
            tracked_sources: gauge(
                &mut r,
                "tracked_sources",
                "Sources the agent keeps recent records of",
            ),
            records_per_second: {
                let g = Gauge::<f64, AtomicU64>::default();
                r.register(
                    "records_per_second",
                    "Flow records read per second over the last stats interval",
                    g.clone(),
                );
                g
            },
            alerts_rate_limited: counter(
                &mut r,
                "alerts_rate_limited",
                "Alerts held back by the per-source rate limit",
            ),
            thin_evidence: counter(
                &mut r,
                "thin_evidence",
                "Scores over the threshold not acted on: too little evidence",
            ),
            model_info: {
                let f = Family::<ModelVersion, Gauge>::default();
                r.register("model_info", "The model serving (value 1)", f.clone());
                f
            },
        };
        let fleet = std::sync::Arc::new(crate::fleet::FleetMetrics::default());
        fleet.register(&mut r);
        Metrics {
            registry: r,
            flow_records,
            process_events,
            scored,
            adaptations,
            adaptations_refused,
            dismissed_alerts,
            alerts,
            drops,
            shadow_drops,
            latency,
            host,
            fleet,
        }
    }
}

impl Metrics {
    pub fn alert(&self, family: &str) {
        self.alerts.get_or_create(&by(family)).inc();
    }
    pub fn dropped(&self, family: &str) {
        self.drops.get_or_create(&by(family)).inc();
    }
    pub fn shadow_dropped(&self, family: &str) {
        self.shadow_drops.get_or_create(&by(family)).inc();
    }

    /// Records a batch's scoring latencies (record read → score done).
    pub fn latencies(&self, ds: impl IntoIterator<Item = Duration>) {
        self.latency.observe_batch(ds);
    }

    /// Copies in what the host shows now. The model's info series is replaced, not added to:
    /// after a swap only the serving version reports 1.
    pub fn set_host(&self, v: &HostValues) {
        let h = &self.host;
        for (c, x) in h.kernel.iter().zip(v.kernel) {
            c.inner().store(*x, Relaxed);
        }
        h.table_entries.set(v.table_entries as i64);
        h.table_evicted.inner().store(v.table_evicted, Relaxed);
        h.table_capacity.set(v.table_capacity as i64);
        h.blocklist_entries.set(v.blocklist_entries as i64);
        h.tracked_sources.set(v.tracked_sources as i64);
        h.records_per_second.set(v.records_per_second);
        h.alerts_rate_limited
            .inner()
            .store(v.alerts_rate_limited, Relaxed);
        h.thin_evidence.inner().store(v.thin_evidence, Relaxed);
        let version = ModelVersion {
            version: v.model_version.to_string(),
        };
        if h.model_info.get(&version).is_none() {
            h.model_info.clear();
        }
        h.model_info.get_or_create(&version).set(1);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        // Writing into a String does not fail; the encoder's errors are fmt::Error from it.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut o, &self.registry);
        o
    }
}

fn by(family: &str) -> ByFamily {
    ByFamily {
        family: family.to_string(),
    }
}

/// The scoring-latency histogram. Ours rather than the crate's `Histogram` (a lock per
/// observation): a batch is counted locally, then one atomic add per bucket used; two atomic
/// adds per record were 2% of the agent's time at full load.
#[derive(Clone, Debug, Default)]
struct Latency(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    fn observe_batch(&self, ds: impl IntoIterator<Item = Duration>) {
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
        for (c, n) in self.0.buckets.iter().zip(counts) {
            if n > 0 {
                c.fetch_add(n, Relaxed);
            }
        }
        self.0.sum_us.fetch_add(sum, Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket counts (the encoder accumulates them), the last one unbounded.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(self.0.buckets.iter().map(|c| c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_us.load(Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What a request asked for, from its request line.
#[derive(Debug, PartialEq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    // A query string does not change what is served (Prometheus may add one).
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// Serves `GET /metrics` on `listener`; `refresh` has the agent copy in the host's values first.
/// Other paths get 404, other methods 405.
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
            let n = match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head_only = buf[..n].starts_with(b"HEAD ");
            let (status, body) = match route(&buf[..n]) {
                Route::Metrics => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if refresh.send(tx).await.is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                    }
                    ("200 OK", metrics.render())
                }
                Route::NotFound => ("404 Not Found", "only /metrics is served\n".into()),
                Route::MethodNotAllowed => ("405 Method Not Allowed", "use GET\n".into()),
                Route::BadRequest => ("400 Bad Request", "not an HTTP request\n".into()),
            };
            let content_type = if status.starts_with("200") {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            } else {
                "text/plain; charset=utf-8"
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            if !head_only {
                let _ = s.write_all(body.as_bytes()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(version: &str) -> HostValues<'_> {
        HostValues {
            kernel: &[5; stat::COUNT as usize],
            table_entries: 12,
            table_evicted: 3,
            table_capacity: 100,
            blocklist_entries: 0,
            tracked_sources: 1,
            records_per_second: 0.5,
            alerts_rate_limited: 2,
            thin_evidence: 0,
            model_version: version,
        }
    }

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.flow_records.inc_by(3);
        m.alert("scan");
        m.alert("scan");
        m.dropped("brute\"force");
        m.latencies([
            Duration::from_micros(40),
            Duration::from_micros(700),
            Duration::from_secs(2),
        ]);
        m.set_host(&host("default-1"));
        let t = m.render();
        for want in [
            "# TYPE detector_flow_records_total counter",
            "detector_flow_records_total 3",
            "detector_alerts_total{family=\"scan\"} 2",
            "detector_drops_total{family=\"brute\\\"force\"} 1",
            "detector_scoring_latency_seconds_bucket{le=\"5e-05\"} 1",
            "detector_scoring_latency_seconds_bucket{le=\"0.001\"} 2",
            "detector_scoring_latency_seconds_bucket{le=\"+Inf\"} 3",
            "detector_scoring_latency_seconds_count 3",
            "# TYPE detector_kernel_packets_total counter",
            "detector_kernel_packets_total 5",
            "# TYPE detector_flow_table_entries gauge",
            "detector_flow_table_entries 12",
            "detector_alerts_rate_limited_total 2",
            "detector_model_info{version=\"default-1\"} 1",
        ] {
            assert!(t.lines().any(|l| l == want), "no line {want:?} in:\n{t}");
        }
        // One TYPE line per metric, however many labelled series it has.
        let types: Vec<&str> = t.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{t}");
    }

    #[test]
    fn a_model_swap_leaves_one_model_info_series() {
        let m = Metrics::default();
        m.set_host(&host("default-1"));
        m.set_host(&host("host-1"));
        let t = m.render();
        let info: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("detector_model_info"))
            .collect();
        assert_eq!(info, ["detector_model_info{version=\"host-1\"} 1"], "{t}");
    }

    #[test]
    fn only_get_of_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.1\r\n"), Route::Metrics);
        assert_eq!(route(b"HEAD /metrics HTTP/1.0\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"\r\n"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }
}

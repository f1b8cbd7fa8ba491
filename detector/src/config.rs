//! The agent's configuration: one TOML file (`/etc/detector/detector.toml` by default), every
//! key with a default, unknown keys rejected (a typo must not silently fall back to a default).
//! `detector config` prints the defaults as a commented file.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::clock::parse_duration;

/// Where the agent looks for its configuration when none is named.
pub const DEFAULT_PATH: &str = "/etc/detector/detector.toml";

/// A duration written as "30s", "500ms", "10m", "1h 30m" ([`parse_duration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    /// humantime's form ("30s", "1ms 500us"): exact to the nanosecond, so what `detector config
    /// --check` prints parses back to the same duration.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// True when `ip` is inside the block (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl From<IpAddr> for Cidr {
    /// The block of that one address.
    fn from(ip: IpAddr) -> Self {
        Cidr(ip.into())
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(net) = t.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net));
        }
        match t.split_once('/') {
            None => t
                .parse::<IpAddr>()
                .map(Cidr::from)
                .map_err(|_| format!("{s:?} is not an address or address block (e.g. 10.0.0.0/8)")),
            Some((a, _)) => {
                let max = match a.trim().parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => 32,
                    Ok(IpAddr::V6(_)) => 128,
                    Err(_) => {
                        return Err(format!(
                            "{s:?} is not an address or address block (e.g. 10.0.0.0/8)"
                        ))
                    }
                };
                Err(format!("{s:?}: prefix length must be 0..={max}"))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    pub flows: FlowsSection,
    pub context: ContextSection,
    pub scoring: ScoringSection,
    pub policy: PolicySection,
    pub adaptation: AdaptationSection,
    /// Off (no servers) by default: see docs/fleet.md.
    pub fleet: crate::fleet::FleetSection,
}

/// `[agent]`: where the agent attaches and where it writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Interfaces to attach to; empty = the default-route interface.
    pub interfaces: Vec<String>,
    /// "auto" (native mode, generic where the driver refuses it), "native" or "skb".
    pub xdp_mode: String,
    /// Models, incidents and the blocklist survive restarts here.
    pub state_dir: PathBuf,
    /// Root-only control socket (`detector status`, `detector incident confirm`, ...).
    pub control_socket: PathBuf,
    /// Alert events (JSON lines): "-" for stdout, or a file (appended).
    pub events: String,
    /// Flow, process and stats records (JSON lines): "-" for stdout, a file, or "" for none.
    pub records: String,
    /// Prometheus metrics on this address ("" = off). Keep it on localhost.
    pub metrics_listen: String,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: "auto".into(),
            state_dir: PathBuf::from("/var/lib/detector"),
            control_socket: PathBuf::from("/run/detector/control.sock"),
            events: "-".into(),
            records: "".into(),
            metrics_listen: "127.0.0.1:9477".into(),
        }
    }
}

/// `[flows]`: the kernel flow table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsSection {
    pub idle_timeout: Dur,
    pub active_timeout: Dur,
    pub early_packets: u32,
    pub new_records: bool,
    pub table_size: u32,
    pub ringbuf_bytes: u32,
    pub proc_ringbuf_bytes: u32,
}

impl Default for FlowsSection {
    fn default() -> Self {
        Self {
            idle_timeout: Dur(Duration::from_secs(30)),
            active_timeout: Dur(Duration::from_secs(60)),
            early_packets: 8,
            new_records: true,
            table_size: detector_common::flow::DEFAULT_TABLE_SIZE,
            ringbuf_bytes: 4 << 20,
            proc_ringbuf_bytes: 1 << 20,
        }
    }
}

/// `[context]`: per-source windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextSection {
    /// The sliding window of the per-source and per-service features. The embedded model was
    /// trained with 10 s: another value changes what those features mean to it.
    pub window: Dur,
    /// Sources (and services) tracked at once; beyond, the least recently seen are forgotten.
    /// About 1 KB each, and a spoofed flood fills the table: at 16,384 the agent peaked at
    /// 66 MiB under a random-source flood where 65,536 took it to 128 MiB (BENCHMARKS.md),
    /// while far more hosts than a server talks to within one window keep their context.
    pub max_sources: usize,
}

impl ContextSection {
    /// The tracker settings these describe.
    pub fn tracker(&self) -> crate::context::ContextConfig {
        crate::context::ContextConfig {
            window_ns: self.window.0.as_nanos().min(u64::MAX as u128) as u64,
            max_sources: self.max_sources,
            ..crate::context::ContextConfig::default()
        }
    }
}

impl Default for ContextSection {
    fn default() -> Self {
        Self {
            window: Dur(Duration::from_secs(10)),
            max_sources: 16_384,
        }
    }
}

/// `[scoring]`: the model and batching.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringSection {
    /// A model file; "" = the newest adapted model in the state dir, else the embedded one.
    pub model: String,
    /// "auto" (the fastest path on this CPU, by its features: docs/model.md, "Choosing a
    /// path"), "int8" (best SIMD level here), "int8-avx512-vnni", "int8-avx-vnni", "int8-avx2",
    /// "int8-scalar", "f32" (plain Rust), "candle-cpu", or "cuda" (builds with the `cuda`
    /// feature).
    pub path: String,
    /// A batch is scored when it has this many records ...
    pub batch_size: usize,
    /// ... or when its oldest record has waited this long.
    pub batch_deadline: Dur,
}

impl Default for ScoringSection {
    fn default() -> Self {
        Self {
            model: String::new(),
            path: "auto".into(),
            batch_size: 256,
            batch_deadline: Dur(Duration::from_millis(5)),
        }
    }
}

/// What the `drop` action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropMode {
    /// Never drop.
    Off,
    /// Log what would be dropped (the default: an operator turns drops on knowingly).
    Shadow,
    /// Insert blocklist entries: the XDP program drops.
    Drop,
}

/// What a drop blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropTarget {
    /// Every packet from the flow's initiator.
    Source,
    /// Both directions of the flow's 5-tuple.
    Flow,
}

/// Writes an f32 as the shortest decimal that reads back to it (`0.9`, not the f64 widening
/// `0.8999999761581421` TOML would print): `detector config` output is read by people.
fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse::<f64>().unwrap_or(f64::from(*v)))
}

fn short_f32_opt<S: serde::Serializer>(v: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => short_f32(v, s),
        None => s.serialize_none(),
    }
}

/// `[policy]`: thresholds and actions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// A record whose score reaches this raises an alert. Unset: the model's own threshold,
    /// calibrated on its training data for a low false-alert rate.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "short_f32_opt"
    )]
    pub alert_threshold: Option<f32>,
    /// A record whose score reaches this is dropped (per `drop`).
    #[serde(serialize_with = "short_f32")]
    pub drop_threshold: f32,
    pub drop: DropMode,
    pub drop_target: DropTarget,
    /// Blocklist entries expire after this.
    pub drop_ttl: Dur,
    /// At most this many new blocklist entries per second (token bucket) ...
    pub max_drops_per_s: f64,
    /// ... with bursts up to this many.
    pub drop_burst: u32,
    /// Never dropped, whatever the score (alerts still go out).
    pub allowlist: Vec<Cidr>,
    /// Also never drop the address of the SSH client the agent was started from ($SSH_CONNECTION).
    pub allow_ssh_client: bool,
    /// After an alert for a source, further alerts for it are counted, not written, this long.
    pub alert_cooldown: Dur,
    /// At most this many alert events per second over all sources (token bucket; the rest are
    /// counted in each source's `suppressed`): a spoofed flood is one new source per packet,
    /// and the per-source cooldown alone would write an alert for every one of them.
    pub max_alerts_per_s: f64,
    /// ... with bursts up to this many.
    pub alert_burst: u32,
    /// A record is alerted or dropped only when its score rests on at least this much: its
    /// flow's packets (both directions) plus the other flows its source and its service had in
    /// the context window. A lone DNS query, ping or handshake from a source that does nothing
    /// else cannot be told from a beacon's or a probe's first packet, whatever the model says;
    /// scans and floods fill their source's or service's window and are not held back.
    /// Held-back records are counted (`thin_evidence` in stats). 0 or 1: no gate.
    pub min_evidence: u32,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            alert_threshold: None,
            drop_threshold: 0.9,
            drop: DropMode::Shadow,
            drop_target: DropTarget::Source,
            drop_ttl: Dur(Duration::from_secs(600)),
            max_drops_per_s: 5.0,
            drop_burst: 20,
            allowlist: vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
            allow_ssh_client: true,
            alert_cooldown: Dur(Duration::from_secs(60)),
            max_alerts_per_s: 20.0,
            alert_burst: 100,
            min_evidence: 3,
        }
    }
}

/// `[adaptation]`: learning from confirmed incidents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptationSection {
    /// An adapted model is refused if its false-alert rate on held-back benign flows exceeds this.
    pub fpr_budget: f64,
    /// Recent records kept for incidents to refer to (and benign samples to come from).
    pub recent_records: usize,
    /// Models kept in the state dir's history.
    pub keep_models: usize,
    /// The host's warm-up: for this long (running time, over restarts: `warmup.json` in the
    /// state directory) the agent alerts as out of the box; then it fits this host's baseline
    /// and alerts only on what is both attack-like and unusual for this host.
    pub warmup: Dur,
    /// The baseline is fitted once this many recent records that raised no alert are at hand
    /// (after the warm-up; until then the rule stays the out-of-the-box one).
    pub baseline_records: usize,
    /// ... and refitted this often.
    pub baseline_refresh: Dur,
    /// Once fitted, a flow alerts only when it is attack-like (probability) and farther from
    /// this host's prototypes than this quantile of the host's own quiet flows.
    pub host_novelty_quantile: f32,
}

impl Default for AdaptationSection {
    fn default() -> Self {
        Self {
            fpr_budget: 0.001,
            recent_records: 50_000,
            keep_models: 10,
            warmup: Dur(Duration::from_secs(3600)),
            baseline_records: 2000,
            baseline_refresh: Dur(Duration::from_secs(3600)),
            host_novelty_quantile: 0.95,
        }
    }
}

impl Config {
    /// Parses and checks a configuration text; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        cfg.validate()
            .with_context(|| format!("{name}: invalid configuration"))?;
        Ok(cfg)
    }

    /// Reads `path`; a missing file at the default path means all defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read configuration {}", p.display()))?;
                Self::parse(&text, &p.display().to_string())
            }
            None => match std::fs::read_to_string(DEFAULT_PATH) {
                Ok(text) => Self::parse(&text, DEFAULT_PATH),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
                Err(e) => {
                    Err(e).with_context(|| format!("cannot read configuration {DEFAULT_PATH}"))
                }
            },
        }
    }

    /// Cross-field checks serde cannot express; names the key that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.policy;
        for (k, v) in [
            ("policy.alert_threshold", p.alert_threshold),
            ("policy.drop_threshold", Some(p.drop_threshold)),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                bail!("{k} must be between 0 and 1, got {v}");
            }
        }
        if !(p.max_drops_per_s.is_finite() && p.max_drops_per_s >= 0.0) {
            bail!("policy.max_drops_per_s must be a number ≥ 0");
        }
        if !(p.max_alerts_per_s.is_finite() && p.max_alerts_per_s > 0.0) || p.alert_burst == 0 {
            bail!("policy.max_alerts_per_s must be a number > 0 and policy.alert_burst at least 1");
        }
        self.agent
            .xdp_mode
            .parse::<crate::ebpf::XdpAttach>()
            .map_err(|e| anyhow::anyhow!(e))?;
        self.scoring
            .path
            .parse::<crate::model::ScorePath>()
            .map_err(|e| anyhow::anyhow!("scoring.path: {e}"))?;
        if self.scoring.batch_size == 0 {
            bail!("scoring.batch_size must be at least 1");
        }
        if self.flows.idle_timeout.0.is_zero() || self.flows.active_timeout.0.is_zero() {
            bail!("flows.idle_timeout and flows.active_timeout must be greater than zero");
        }
        if self.flows.table_size == 0 {
            bail!("flows.table_size must be at least 1");
        }
        for (k, v) in [
            ("flows.ringbuf_bytes", self.flows.ringbuf_bytes),
            ("flows.proc_ringbuf_bytes", self.flows.proc_ringbuf_bytes),
        ] {
            crate::ebpf::check_ringbuf_size(k, v)?;
        }
        if self.context.window.0.is_zero() || self.context.max_sources == 0 {
            bail!("context.window and context.max_sources must be greater than zero");
        }
        if !(0.0..1.0).contains(&self.adaptation.fpr_budget) {
            bail!(
                "adaptation.fpr_budget must be in [0, 1), got {}",
                self.adaptation.fpr_budget
            );
        }
        let q = self.adaptation.host_novelty_quantile;
        if !(0.5..1.0).contains(&q) {
            bail!("adaptation.host_novelty_quantile must be in [0.5, 1), got {q}");
        }
        if self.adaptation.keep_models == 0 {
            bail!("adaptation.keep_models must be at least 1");
        }
        self.fleet.validate()?;
        if !self.agent.metrics_listen.is_empty() {
            self.agent
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "agent.metrics_listen must be host:port, got {:?}",
                        self.agent.metrics_listen
                    )
                })?;
        }
        Ok(())
    }

    /// The defaults as a TOML document (`detector config`).
    pub fn defaults_toml() -> String {
        toml::to_string_pretty(&Self::default()).expect("the defaults serialise")
    }

    /// The flow-table settings for the kernel.
    pub fn flow_config(&self) -> detector_common::flow::FlowConfig {
        let f = &self.flows;
        detector_common::flow::FlowConfig {
            active_timeout_ns: f.active_timeout.0.as_nanos().clamp(1, u64::MAX as u128) as u64,
            idle_timeout_ns: f.idle_timeout.0.as_nanos().clamp(1, u64::MAX as u128) as u64,
            early_packets: f.early_packets,
            new_records: f.new_records as u32,
        }
    }

    /// The allowlist with the current SSH client added when configured and present.
    pub fn effective_allowlist(&self) -> Vec<Cidr> {
        let mut v = self.policy.allowlist.clone();
        if self.policy.allow_ssh_client {
            if let Some(ip) = ssh_client() {
                v.push(Cidr::from(ip));
            }
        }
        v
    }
}

/// The client address of the SSH session this process runs under ($SSH_CONNECTION or
/// $SSH_CLIENT: "client_ip client_port server_ip server_port").
pub fn ssh_client() -> Option<IpAddr> {
    ["SSH_CONNECTION", "SSH_CLIENT"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|s| s.split_whitespace().next().and_then(|a| a.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Config::defaults_toml();
        assert_eq!(Config::parse(&text, "defaults").unwrap(), Config::default());
        assert_eq!(Config::parse("", "empty").unwrap(), Config::default());
        assert!(text.contains("drop_threshold = 0.9\n"), "{text}");
        // Thresholds are written as people typed them, and read back to the same f32.
        for v in [0.9f32, 0.97, 1e-7, 0.123_456_79, 1.0] {
            let mut c = Config::default();
            c.policy.drop_threshold = v;
            c.policy.alert_threshold = Some(v);
            let text = toml::to_string(&c).unwrap();
            let back = Config::parse(&text, "t").unwrap();
            assert_eq!(back.policy.drop_threshold, v, "{text}");
            assert_eq!(back.policy.alert_threshold, Some(v));
        }
    }

    /// Found by the `config_parse` fuzz target's round trip (docs/fuzzing.md).
    #[test]
    fn durations_serialise_to_what_parses_back() {
        for text in [
            "30s",
            "500ms",
            "1.5s",
            "1500us",
            "1us",
            "7ns",
            "94068.6617m",
            "1677.14713h",
        ] {
            let d = Dur(parse_duration(text).unwrap());
            let json = serde_json::to_value(d).unwrap();
            let back: Dur = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(back, d, "{text} → {json}");
        }
        let ser = |d: Duration| serde_json::to_value(Dur(d)).unwrap();
        assert_eq!(ser(Duration::from_secs(30)), "30s");
        assert_eq!(ser(Duration::from_millis(5)), "5ms");
        assert_eq!(ser(Duration::from_micros(1500)), "1ms 500us");
    }

    #[test]
    fn values_override_defaults() {
        let cfg = Config::parse(
            "[policy]\ndrop = \"drop\"\ndrop_ttl = \"2m\"\nallowlist = [\"10.0.0.0/8\", \"2001:db8::1\"]\n[flows]\nidle_timeout = \"5s\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.policy.drop, DropMode::Drop);
        assert_eq!(cfg.policy.drop_ttl.0, Duration::from_secs(120));
        assert_eq!(cfg.policy.allowlist[1].0.prefix_len(), 128);
        assert_eq!(cfg.flow_config().idle_timeout_ns, 5_000_000_000);
        assert_eq!(cfg.scoring, ScoringSection::default());
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let err = format!(
            "{:#}",
            Config::parse("[policy]\ndrop_ttl = \"soon\"\n", "/etc/x.toml").unwrap_err()
        );
        assert!(
            err.contains("/etc/x.toml") && err.contains("line 2") && err.contains("not a duration"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Config::parse("[policy]\ndrop_treshold = 0.5\n", "x.toml").unwrap_err()
        );
        assert!(
            err.contains("unknown field") && err.contains("drop_treshold"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Config::parse("[policy]\nalert_threshold = 3.0\n", "x.toml").unwrap_err()
        );
        assert!(err.contains("policy.alert_threshold"), "{err}");
        let err = format!(
            "{:#}",
            Config::parse("[policy]\nallowlist = [\"10.0.0.0/33\"]\n", "x.toml").unwrap_err()
        );
        assert!(err.contains("prefix length"), "{err}");
        let err = format!(
            "{:#}",
            Config::parse("[flows]\nringbuf_bytes = 1000\n", "x.toml").unwrap_err()
        );
        assert!(
            err.contains("flows.ringbuf_bytes") && err.contains("power of two"),
            "{err}"
        );
        let err = format!("{:#}", Config::parse("[agent\n", "x.toml").unwrap_err());
        assert!(err.contains("x.toml"), "{err}");
        let err = format!(
            "{:#}",
            Config::parse("[scoring]\npath = \"int9\"\n", "x.toml").unwrap_err()
        );
        assert!(
            err.contains("scoring.path") && err.contains("int9") && err.contains("auto"),
            "{err}"
        );
    }

    #[test]
    fn scoring_path_defaults_to_auto_and_explicit_values_parse() {
        assert_eq!(ScoringSection::default().path, "auto");
        for path in [
            "auto",
            "int8",
            "int8-avx2",
            "int8-scalar",
            "f32",
            "candle-cpu",
        ] {
            let toml = format!("[scoring]\npath = \"{path}\"\n");
            assert_eq!(Config::parse(&toml, "x.toml").unwrap().scoring.path, path);
        }
    }

    #[test]
    fn cidr_membership() {
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(&"10.1.200.3".parse().unwrap()));
        assert!(!n.contains(&"10.2.0.1".parse().unwrap()));
        assert!(!n.contains(&"::ffff:10.1.0.1".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains(&"2001:db8::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(
            one.contains(&"192.0.2.7".parse().unwrap())
                && !one.contains(&"192.0.2.8".parse().unwrap())
        );
        assert!("nonsense".parse::<Cidr>().is_err());
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert!(err.contains("0..=32"), "{err}");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert_eq!(n.to_string(), "10.1.0.0/16");
    }
}

//! Where the agent writes: records and alert events as JSON lines, the periodic stats line, and
//! the gauges a metrics scrape reads.

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use detector_common::flow::stat;
use serde::Serialize;

use crate::{
    clock::{self, TimeBase},
    metrics::{HostValues, Metrics},
    output::JsonLines,
    policy::Policy,
};

/// The agent's output files: records and events may share one (stdout, say), written through
/// one buffer so that lines never interleave.
pub struct Outputs {
    files: Vec<JsonLines>,
    records: Option<usize>,
    events: usize,
}

impl Outputs {
    /// Opens the targets ("-" = stdout, "" = none for records).
    pub fn open(records: &str, events: &str) -> anyhow::Result<Self> {
        let open = |t: &str| JsonLines::open(Some(std::path::Path::new(t)));
        let mut files = vec![open(events)?];
        let records = match records {
            "" => None,
            r if r == events => Some(0),
            r => {
                files.push(open(r)?);
                Some(1)
            }
        };
        Ok(Self {
            files,
            records,
            events: 0,
        })
    }

    /// Whether records (flow, process, stats) are written.
    pub fn records_on(&self) -> bool {
        self.records.is_some()
    }

    /// Writes a record line (flow, process, stats) when records are on.
    pub fn record<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        match self.records {
            Some(i) => self.files[i].write(v),
            None => Ok(()),
        }
    }

    /// Writes an event line (alert).
    pub fn event<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        self.files[self.events].write(v)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.files.iter_mut().try_for_each(|f| f.flush())
    }
}

/// Kernel counters, summed over CPUs.
pub type Counters = [u64; stat::COUNT as usize];

/// Kernel counters and the agent's own, as a JSON line.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StatsJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts_ns: u64,
    pub packets: u64,
    pub malformed: u64,
    pub not_ip: u64,
    pub blocked: u64,
    /// Flow records lost because the ring buffer was full.
    pub ringbuf_full: u64,
    pub flows_created: u64,
    pub records: u64,
    pub table_full: u64,
    /// Process events lost because their ring buffer was full.
    pub proc_ringbuf_full: u64,
    pub table_inserts: u64,
    /// Live flows the full flow table evicted before their final record (as of the last sweep).
    pub table_evicted: u64,
    /// Records the agent read (flow and process).
    pub read: u64,
    /// Flow records scored.
    pub scored: u64,
    /// Active blocklist entries.
    pub blocks: usize,
    /// Alert events held back by `policy.max_alerts_per_s` since the start.
    pub alerts_rate_limited: u64,
    /// Records that reached a threshold on too little evidence (`policy.min_evidence`).
    pub thin_evidence: u64,
}

impl StatsJson {
    /// The stats line of these counters.
    pub fn new(c: &Counters, read: u64, m: &Metrics, blocks: usize, policy: &Policy) -> Self {
        StatsJson {
            kind: "stats",
            ts_ns: TimeBase::monotonic().to_unix_ns(clock::monotonic_ns()),
            packets: c[stat::PACKETS as usize],
            malformed: c[stat::MALFORMED as usize],
            not_ip: c[stat::NOT_IP as usize],
            blocked: c[stat::BLOCKED as usize],
            ringbuf_full: c[stat::RINGBUF_FULL as usize],
            flows_created: c[stat::FLOWS_CREATED as usize],
            records: c[stat::RECORDS as usize],
            table_full: c[stat::TABLE_FULL as usize],
            proc_ringbuf_full: c[stat::PROC_RINGBUF_FULL as usize],
            table_inserts: c[stat::TABLE_INSERTS as usize],
            table_evicted: 0,
            read,
            scored: m.scored.get(),
            blocks,
            alerts_rate_limited: policy.rate_limited_alerts,
            thin_evidence: policy.thin_evidence,
        }
    }
}

impl StatsJson {
    /// The line with the flow table's evictions (the sweep's count, not a kernel counter).
    pub fn with_evicted(self, table_evicted: u64) -> Self {
        Self {
            table_evicted,
            ..self
        }
    }
}

/// Records lost to full ring buffers (flow and process), from the counters.
pub fn lost(c: &Counters) -> u64 {
    c[stat::RINGBUF_FULL as usize] + c[stat::PROC_RINGBUF_FULL as usize]
}

/// Sums the per-CPU STATS counters.
pub fn read_stats(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<Counters> {
    let mut out = [0u64; stat::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = map
            .get(&(i as u32), 0)
            .with_context(|| format!("cannot read counter {}", stat::NAMES[i]))?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

/// What a metrics scrape shows beside the counters the agent keeps itself.
pub struct Gauges<'a> {
    pub counters: &'a Counters,
    pub table_entries: u64,
    pub table_evicted: u64,
    pub table_capacity: u32,
    pub blocks: usize,
    pub tracked_sources: usize,
    pub model_version: &'a str,
    pub records_per_s: f64,
    pub policy: &'a Policy,
}

impl Gauges<'_> {
    /// Copies these values into `m` for the scrape.
    pub fn publish(&self, m: &Metrics) {
        m.set_host(&HostValues {
            kernel: self.counters,
            table_entries: self.table_entries,
            table_evicted: self.table_evicted,
            table_capacity: self.table_capacity as u64,
            blocklist_entries: self.blocks as u64,
            tracked_sources: self.tracked_sources as u64,
            records_per_second: self.records_per_s,
            alerts_rate_limited: self.policy.rate_limited_alerts,
            thin_evidence: self.policy.thin_evidence,
            model_version: self.model_version,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy() -> Policy {
        let cfg = Config::default();
        Policy::new(cfg.policy.clone(), cfg.effective_allowlist())
    }

    #[test]
    fn records_and_events_share_a_file_or_records_are_off() {
        let dir = std::env::temp_dir().join(format!("detector-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let both = dir.join("both.jsonl");
        let b = both.to_str().unwrap();
        let mut o = Outputs::open(b, b).unwrap();
        assert!(o.records_on());
        o.record(&serde_json::json!({"type": "flow"})).unwrap();
        o.event(&serde_json::json!({"type": "alert"})).unwrap();
        o.flush().unwrap();
        let text = std::fs::read_to_string(&both).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let events = dir.join("events.jsonl");
        let mut o = Outputs::open("", events.to_str().unwrap()).unwrap();
        assert!(!o.records_on());
        o.record(&serde_json::json!({"type": "flow"})).unwrap();
        o.event(&serde_json::json!({"type": "alert"})).unwrap();
        o.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&events).unwrap().lines().count(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn stats_name_each_counter_and_losses_add_both_ring_buffers() {
        let mut c: Counters = [0; stat::COUNT as usize];
        c[stat::PACKETS as usize] = 10;
        c[stat::RINGBUF_FULL as usize] = 2;
        c[stat::PROC_RINGBUF_FULL as usize] = 3;
        let s = StatsJson::new(&c, 7, &Metrics::default(), 1, &policy());
        assert_eq!((s.packets, s.ringbuf_full, s.read, s.blocks), (10, 2, 7, 1));
        assert_eq!(lost(&c), 5);
    }
}

//! Records in: flow records from the ring buffer and from the sweep, process events from theirs.
//! Each flow record is written (when records are on) and queued for scoring; full batches are
//! scored and acted on at once, the rest at their deadline.

use std::{sync::Arc, time::Instant};

use aya::maps::{MapData, RingBuf};
use detector_common::{
    block::BlockKey,
    flow::{FlowKey, FlowRecord, FlowState, Reason},
    proc::ProcEvent,
    user::{item_in_place, read_item},
};
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use tracing::{error, info, warn};

use super::outputs::Outputs;
use crate::{
    blocklist::{self, Block, BlockStore, Blocklist},
    clock::{self, TimeBase},
    detect::{Actions, AlertJson, Detector},
    metrics::Metrics,
    record::{FlowJson, ProcessJson, ProcessRef},
    sockets::Attribution,
};

/// Records taken from the flow ring buffer before the outputs are flushed and the other work
/// (batch deadlines, the control socket, stats) gets its turn. Without a bound, a flood that
/// keeps the ring buffer from ever running dry kept the loop inside one wakeup for the whole
/// flood, and its alerts sat in the output buffer: seconds of alert latency (BENCHMARKS.md).
pub const DRAIN_MAX: usize = 4096;

/// The two ring buffers.
pub struct Rings {
    pub flows: AsyncFd<RingBuf<MapData>>,
    pub procs: AsyncFd<RingBuf<MapData>>,
}

/// What a record goes through: the detector, the outputs, the blocklist it acts on, and the
/// process attribution of its socket.
pub struct Core<S: BlockStore> {
    pub detector: Detector,
    pub out: Outputs,
    pub blocks: Blocklist<S>,
    pub attribution: Attribution,
    pub metrics: Arc<Metrics>,
    /// Records read (flow and process).
    pub read: u64,
    pub time: TimeBase,
    /// Alerts also go to the fleet, when `[fleet]` is on.
    pub fleet: Option<crate::fleet::Sender>,
}

/// Live actions: the blocklist, the events output, and process lookups for alerts.
struct LiveActions<'a, S: BlockStore> {
    blocklist: &'a mut Blocklist<S>,
    out: &'a mut Outputs,
    attribution: &'a Attribution,
    fleet: Option<&'a crate::fleet::Sender>,
}

impl<S: BlockStore> Actions for LiveActions<'_, S> {
    fn blocked(&self, key: &BlockKey) -> bool {
        self.blocklist.contains(key)
    }
    fn block(&mut self, b: Block) -> anyhow::Result<()> {
        let what = blocklist::describe(&b.key);
        let now_unix = TimeBase::monotonic().to_unix_ns(clock::monotonic_ns());
        match self.blocklist.block(b, now_unix, clock::monotonic_ns()) {
            Ok(()) => info!("blocked {what}"),
            // Not fatal: the kernel map may be full, or the state file unwritable. Say so and
            // keep serving; the alert still goes out.
            Err(e) => error!("blocking {what} failed: {e:#}"),
        }
        Ok(())
    }
    fn alert(&mut self, a: &AlertJson) -> anyhow::Result<()> {
        if let Some(f) = self.fleet {
            f.alert(a);
        }
        self.out.event(a)
    }
    fn process_of(&self, key: &FlowKey) -> Option<ProcessRef> {
        self.attribution.lookup(key)
    }
}

impl<S: BlockStore> Core<S> {
    /// One flow record from the kernel (ring buffer or sweep): written, queued for scoring,
    /// and the batch scored when full. `read_at` is when the agent's turn at the records began
    /// (one clock read per turn, not per record): the scoring latency it starts is then at
    /// least the true one, never less.
    pub fn on_flow(
        &mut self,
        key: &FlowKey,
        state: &FlowState,
        reason: Reason,
        read_at: Instant,
    ) -> anyhow::Result<()> {
        // Up to three map lookups (syscalls) per TCP record: only when the record is written;
        // otherwise an alert looks its process up itself (`process_of`).
        let process = if self.out.records_on() {
            self.attribution.lookup(key)
        } else {
            None
        };
        self.read += 1;
        self.metrics.flow_records.inc();
        if self.out.records_on() {
            let mut j = FlowJson::new(key, state, reason, self.time);
            j.process = process.clone();
            self.out.record(&j)?;
        }
        if self.detector.push(key, state, reason, process, read_at) {
            self.score()?;
        }
        Ok(())
    }

    /// Scores what is queued and acts on it.
    pub fn score(&mut self) -> anyhow::Result<()> {
        self.detector.flush(&mut LiveActions {
            blocklist: &mut self.blocks,
            out: &mut self.out,
            attribution: &self.attribution,
            fleet: self.fleet.as_ref(),
        })
    }

    /// One process event, written as a record.
    pub fn on_process(&mut self, ev: &ProcEvent) -> anyhow::Result<()> {
        if let Some(mut json) = ProcessJson::new(ev, self.time) {
            if json.ppid == 0 && json.pid != 0 {
                json.ppid = ppid_from_proc(json.pid);
            }
            self.out.record(&json)?;
        }
        Ok(())
    }

    /// Up to [`DRAIN_MAX`] records from the flow ring buffer; leaves it ready when records
    /// remain, so that the loop comes straight back after the other branches had their turn.
    pub fn drain_flows(
        &mut self,
        guard: &mut AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
    ) -> anyhow::Result<()> {
        let read_at = Instant::now();
        let mut taken = 0;
        while let Some(item) = guard.get_inner_mut().next() {
            match flow_record(&item) {
                Some((reason, rec)) => self.on_flow(&rec.key, &rec.state, reason, read_at)?,
                None => warn!(len = item.len(), "skipped a malformed flow record"),
            }
            taken += 1;
            if taken == DRAIN_MAX {
                break;
            }
        }
        if taken < DRAIN_MAX {
            guard.clear_ready();
        }
        self.out.flush()
    }

    /// Every process event waiting in its ring buffer.
    pub fn drain_procs(
        &mut self,
        guard: &mut AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
    ) -> anyhow::Result<()> {
        while let Some(item) = guard.get_inner_mut().next() {
            self.read += 1;
            self.metrics.process_events.inc();
            match read_item::<ProcEvent>(&item) {
                Some(ev) => self.on_process(&ev)?,
                None => warn!(len = item.len(), "skipped a malformed process event"),
            }
        }
        guard.clear_ready();
        self.out.flush()
    }

    /// At the end: whatever the ring buffers still hold, read without waiting.
    pub fn drain_rest(&mut self, rings: &mut Rings) -> anyhow::Result<()> {
        while let Some(item) = rings.flows.get_mut().next() {
            if let Some((reason, rec)) = flow_record(&item) {
                let (key, state) = (rec.key, rec.state);
                drop(item);
                self.on_flow(&key, &state, reason, Instant::now())?;
            }
        }
        while let Some(item) = rings.procs.get_mut().next() {
            if let Some(ev) = read_item::<ProcEvent>(&item) {
                self.on_process(&ev)?;
            }
        }
        Ok(())
    }
}

/// A ring-buffer item as a flow record with its reason; None for a malformed one (wrong size,
/// unknown reason).
fn flow_record(item: &[u8]) -> Option<(Reason, std::borrow::Cow<'_, FlowRecord>)> {
    let rec = item_in_place::<FlowRecord>(item)?;
    Some((Reason::from_u8(rec.reason)?, rec))
}

/// Parent pid from /proc, for processes that existed before the agent saw their fork.
fn ppid_from_proc(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The comm field may contain spaces and parentheses: parse after the last ')'.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        blocklist::MemStore,
        config::{Config, DropMode},
        detect::DetectConfig,
        model::ScorePath,
        policy::Policy,
    };
    use detector_common::{
        flow::{
            process_packet,
            user::{MemEnv, MemTable},
            FlowConfig,
        },
        packet::{Captured, TCP_ACK, TCP_RST, TCP_SYN},
        testpkt::tcp4,
    };

    fn core(dir: &std::path::Path, records: bool) -> Core<MemStore> {
        let mut cfg = Config::default();
        cfg.policy.drop = DropMode::Drop;
        let (model, version) = crate::model::serving::base_model("").unwrap();
        let metrics = Arc::new(Metrics::default());
        let detector = Detector::new(
            crate::detect::Serving {
                model: Arc::new(model),
                version,
                path: ScorePath::Reference,
            },
            Policy::new(cfg.policy.clone(), Vec::new()),
            DetectConfig::default(),
            TimeBase::Unix,
            metrics.clone(),
        )
        .unwrap();
        let events = dir.join("events.jsonl");
        let recs = dir.join("records.jsonl");
        Core {
            detector,
            out: Outputs::open(
                if records { recs.to_str().unwrap() } else { "" },
                events.to_str().unwrap(),
            )
            .unwrap(),
            blocks: Blocklist::new(MemStore::default(), None),
            attribution: Attribution::new(None),
            metrics,
            read: 0,
            time: TimeBase::Unix,
            fleet: None,
        }
    }

    /// A port scan's records (SYN, the victim's RST) through the core, as the ring buffer
    /// would hand them over.
    fn scan(core: &mut Core<MemStore>) {
        let (atk, victim) = ([10, 0, 0, 66], [10, 0, 0, 1]);
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        for p in 0..300u16 {
            let ts = 1_000_000_000 + p as u64 * 1_000_000;
            for f in [
                tcp4(atk, 40000, victim, 1000 + p, TCP_SYN, 1, 0),
                tcp4(victim, 1000 + p, atk, 40000, TCP_RST | TCP_ACK, 0, 0),
            ] {
                process_packet(
                    &Captured::whole(&f),
                    ts,
                    &FlowConfig::DEFAULT,
                    &mut t,
                    &mut env,
                );
            }
            for (k, s, r) in env.records.drain(..) {
                core.on_flow(&k, &s, r, Instant::now()).unwrap();
            }
        }
        core.score().unwrap();
        core.out.flush().unwrap();
    }

    #[test]
    fn a_scan_is_alerted_and_blocked_and_its_records_written() {
        let dir = std::env::temp_dir().join(format!("detector-ingest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = core(&dir, true);
        scan(&mut c);
        assert!(c.read >= 600, "{} records read", c.read);
        let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        assert!(events.contains("\"type\":\"alert\""), "no alert");
        assert!(!c.blocks.is_empty(), "the scanner is not blocked");
        let records = std::fs::read_to_string(dir.join("records.jsonl")).unwrap();
        assert_eq!(records.lines().count() as u64, c.read);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_records_only_alerts_are_written() {
        let dir = std::env::temp_dir().join(format!("detector-ingest-nr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = core(&dir, false);
        scan(&mut c);
        let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        assert!(events.lines().all(|l| l.contains("\"type\":\"alert\"")));
        assert!(!dir.join("records.jsonl").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_malformed_ring_buffer_item_is_refused() {
        assert!(flow_record(&[0u8; 7]).is_none(), "wrong size");
        let mut bytes = vec![0u8; std::mem::size_of::<FlowRecord>()];
        bytes[std::mem::offset_of!(FlowRecord, reason)] = 250;
        assert!(flow_record(&bytes).is_none(), "unknown reason");
        bytes[std::mem::offset_of!(FlowRecord, reason)] = Reason::Fin as u8;
        assert_eq!(flow_record(&bytes).map(|(r, _)| r), Some(Reason::Fin));
    }
}

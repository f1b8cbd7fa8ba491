//! Idle flows: the kernel's flow table is walked once a sweep interval, on a thread of its own,
//! and the flows idle past the timeout come back to the loop as final records.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{HashMap, IterableMap, MapData};
use detector_common::flow::{self, FlowConfig, FlowKey, FlowState};
use tokio::sync::mpsc;
use tracing::warn;

use crate::clock;

/// Expired flows handed to the loop at once, at most: the loop scores one piece per turn and
/// the ring buffer has its turns in between (the ingest room's `DRAIN_MAX` for the same reason).
pub const PIECE: usize = super::ingest::DRAIN_MAX;

/// A flow table the sweep walks: the kernel's map, or a test's.
pub trait FlowTable {
    /// Hands every entry to `f` in turn, without collecting them; an `Err` entry (a table that
    /// cannot be read further) ends the walk after it.
    fn walk(&self, f: &mut dyn FnMut(Result<(FlowKey, FlowState), String>));
    fn remove(&mut self, key: &FlowKey);
}

impl FlowTable for HashMap<MapData, FlowKey, FlowState> {
    fn walk(&self, f: &mut dyn FnMut(Result<(FlowKey, FlowState), String>)) {
        for e in self.iter() {
            let failed = e.is_err();
            f(e.map_err(|e| e.to_string()));
            if failed {
                break;
            }
        }
    }
    fn remove(&mut self, key: &FlowKey) {
        // A packet may have refreshed the entry since it was read; it then starts a new flow
        // on its next packet. Losing that one packet's count is the price of not locking.
        let _ = HashMap::remove(self, key);
    }
}

/// Emits final records for flows idle past the timeout (or all of them, when `all`), removes
/// them from the table, and returns them.
pub fn sweep(
    table: &mut impl FlowTable,
    cfg: &FlowConfig,
    now_mono: u64,
    all: bool,
) -> Vec<(FlowKey, FlowState)> {
    sweep_counting(table, cfg, now_mono, all).0
}

/// [`sweep`], also returning how many entries the table held when walked.
fn sweep_counting(
    table: &mut impl FlowTable,
    cfg: &FlowConfig,
    now_mono: u64,
    all: bool,
) -> (Vec<(FlowKey, FlowState)>, u64) {
    // Collect first: deleting while walking with get_next_key restarts the walk.
    let mut expired = Vec::new();
    let mut seen = 0u64;
    table.walk(&mut |entry| {
        seen += 1;
        match entry {
            Ok((key, state)) if all || flow::idle_expired(&state, now_mono, cfg) => {
                expired.push((key, state))
            }
            Ok(_) => {}
            Err(e) => warn!("cannot read the flow table: {e}"),
        }
    });
    for (key, _) in &expired {
        table.remove(key);
    }
    (expired, seen)
}

/// The sweep thread and what it shares with the loop.
pub struct Sweeper {
    /// The flow timeouts in force (SIGHUP changes them).
    pub cfg: Arc<Mutex<FlowConfig>>,
    /// Entries in the table after the last walk (for the metrics).
    pub entries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sweeper {
    /// The idle-timeout sweep on a thread of its own, over a second handle to the flow table:
    /// a walk of a full table is two syscalls per entry (130,000 for 65,536 flows, ~0.1 s), and
    /// on the agent's loop it held up every alert behind it once a second under a flood
    /// (BENCHMARKS.md). Expired flows come back through `tx`, at most [`PIECE`] at a time.
    pub fn spawn(
        flows: &HashMap<MapData, FlowKey, FlowState>,
        cfg: FlowConfig,
        every: Duration,
        tx: mpsc::Sender<Vec<(FlowKey, FlowState)>>,
    ) -> anyhow::Result<Self> {
        use std::os::fd::AsFd;
        let fd = flows
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot duplicate the flow table's descriptor")?;
        let data = MapData::from_fd(fd).context("cannot open the flow table a second time")?;
        let table: HashMap<MapData, FlowKey, FlowState> =
            HashMap::try_from(aya::maps::Map::LruHashMap(data))
                .context("the flow table has an unexpected type")?;
        let cfg = Arc::new(Mutex::new(cfg));
        let stop = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicU64::new(0));
        let (c, s, e) = (cfg.clone(), stop.clone(), entries.clone());
        let thread = std::thread::Builder::new()
            .name("detector-sweep".into())
            .spawn(move || sweep_loop(table, c, every, tx, s, e))
            .context("cannot start the sweep thread")?;
        Ok(Self {
            cfg,
            entries,
            stop,
            thread,
        })
    }

    /// Stops the thread and waits for it (it ends within one tick, 20 ms).
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.thread.join();
    }
}

fn sweep_loop(
    mut table: HashMap<MapData, FlowKey, FlowState>,
    cfg: Arc<Mutex<FlowConfig>>,
    every: Duration,
    tx: mpsc::Sender<Vec<(FlowKey, FlowState)>>,
    stop: Arc<AtomicBool>,
    entries: Arc<AtomicU64>,
) {
    // The lowest priority (nice 19) for this thread alone: a walk of a full table takes ~0.1 s
    // of CPU, and at equal weight it took half of the core from the agent's loop for that long
    // (alerts waited behind it under a flood). The loop leaves it the CPU it does not use.
    // SAFETY: setpriority on this thread's own id changes its nice value only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0 {
        warn!(
            "cannot lower the sweep thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
    let tick = Duration::from_millis(20).min(every);
    let mut next = Instant::now() + every;
    while !stop.load(Relaxed) {
        std::thread::sleep(tick);
        if Instant::now() < next {
            continue;
        }
        next += every;
        let cfg = *cfg.lock().unwrap_or_else(|e| e.into_inner());
        let (expired, seen) = sweep_counting(&mut table, &cfg, clock::monotonic_ns(), false);
        entries.store(seen.saturating_sub(expired.len() as u64), Relaxed);
        // Whole, a spoofed flood's sweep (tens of thousands of one-packet flows a second) held
        // every alert behind it for tens of milliseconds (BENCHMARKS.md, flood).
        for piece in expired.chunks(PIECE) {
            if tx.blocking_send(piece.to_vec()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table in memory; `broken_at` makes the walk fail at that entry.
    #[derive(Default)]
    struct Table {
        rows: Vec<(FlowKey, FlowState)>,
        broken_at: Option<usize>,
    }

    impl FlowTable for Table {
        fn walk(&self, f: &mut dyn FnMut(Result<(FlowKey, FlowState), String>)) {
            for (i, r) in self.rows.iter().enumerate() {
                if self.broken_at == Some(i) {
                    f(Err("bad entry".into()));
                    return;
                }
                f(Ok(*r));
            }
        }
        fn remove(&mut self, key: &FlowKey) {
            self.rows.retain(|(k, _)| k != key);
        }
    }

    fn flow(port: u16, last_seen_ns: u64) -> (FlowKey, FlowState) {
        let key = FlowKey {
            port_lo: port,
            proto: 17,
            family: 4,
            ..FlowKey::default()
        };
        let state = FlowState {
            first_seen_ns: last_seen_ns,
            last_seen_ns,
            packets: [1, 0],
            ..FlowState::default()
        };
        (key, state)
    }

    #[test]
    fn idle_flows_leave_the_table_and_live_ones_stay() {
        let cfg = FlowConfig::DEFAULT;
        let now = 1_000 * 1_000_000_000;
        let mut t = Table {
            rows: vec![flow(1, now - cfg.idle_timeout_ns - 1), flow(2, now)],
            broken_at: None,
        };
        let (gone, seen) = sweep_counting(&mut t, &cfg, now, false);
        assert_eq!(seen, 2);
        assert_eq!(gone.iter().map(|(k, _)| k.port_lo).collect::<Vec<_>>(), [1]);
        assert_eq!(t.rows.len(), 1);
        // At the end, every flow goes.
        assert_eq!(sweep(&mut t, &cfg, now, true).len(), 1);
        assert!(t.rows.is_empty());
    }

    #[test]
    fn an_unreadable_table_ends_the_walk_with_what_was_read() {
        let cfg = FlowConfig::DEFAULT;
        let mut t = Table {
            rows: vec![flow(1, 0), flow(2, 0), flow(3, 0)],
            broken_at: Some(1),
        };
        let gone = sweep(&mut t, &cfg, u64::MAX / 2, false);
        assert_eq!(gone.len(), 1);
        assert_eq!(t.rows.len(), 2);
    }
}

//! Idle flows: the kernel's flow table is walked once a sweep interval, on a thread of its own,
//! and the flows idle past the timeout come back to the loop as final records.
//!
//! The walk also counts the flows the kernel's LRU table evicted to make room, which it does
//! silently (a batch at a time, each flow's final record lost): every entry the programs
//! inserted (`table_inserts`) is either still in the table, removed by a sweep, or evicted.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{HashMap, IterableMap, MapData, PerCpuArray};
use detector_common::flow::{self, FlowConfig, FlowKey, FlowState};
use tokio::sync::mpsc;
use tracing::warn;

use super::outputs::read_stats;

use crate::clock;

/// Expired flows handed to the loop at once, at most: the loop scores one piece per turn and
/// the ring buffer has its turns in between (the ingest room's `DRAIN_MAX` for the same reason).
pub const PIECE: usize = super::ingest::DRAIN_MAX;

/// A flow table the sweep walks: the kernel's map, or a test's.
pub trait FlowTable {
    /// Hands every entry to `f` in turn, without collecting them; an `Err` entry (a table that
    /// cannot be read further) ends the walk after it.
    fn walk(&self, f: &mut dyn FnMut(Result<(FlowKey, FlowState), String>));
    /// Removes `key`; false when it was not there (evicted since the walk read it).
    fn remove(&mut self, key: &FlowKey) -> bool;
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
    fn remove(&mut self, key: &FlowKey) -> bool {
        // A packet may have refreshed the entry since it was read; it then starts a new flow
        // on its next packet. Losing that one packet's count is the price of not locking.
        HashMap::remove(self, key).is_ok()
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
    sweep_counting(table, cfg, now_mono, all).expired
}

/// What one walk found.
struct Walk {
    /// Flows ended by the sweep (removed from the table).
    expired: Vec<(FlowKey, FlowState)>,
    /// Entries the walk read.
    seen: u64,
    /// Entries the sweep removed (an expired flow evicted meanwhile is not one).
    removed: u64,
}

/// [`sweep`], also counting what the table held and what was removed.
fn sweep_counting(table: &mut impl FlowTable, cfg: &FlowConfig, now_mono: u64, all: bool) -> Walk {
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
    let removed = expired.iter().filter(|(key, _)| table.remove(key)).count() as u64;
    Walk {
        expired,
        seen,
        removed,
    }
}

/// Evictions so far, from the flow table's accounts: entries inserted (read before the walk),
/// removed by earlier sweeps, and seen by the walk. Entries inserted during the walk and seen
/// by it make this an underestimate for a moment, so the count never goes down: a lower bound
/// at each sweep, exact when the table was quiet during the walk.
fn evictions(before: u64, inserted: u64, removed: u64, seen: u64) -> u64 {
    before.max(inserted.saturating_sub(removed).saturating_sub(seen))
}

/// The sweep thread and what it shares with the loop.
pub struct Sweeper {
    pub shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

/// What the sweep thread shares with the loop.
pub struct Shared {
    /// The flow timeouts in force (SIGHUP changes them).
    pub cfg: Mutex<FlowConfig>,
    /// Entries in the table after the last walk (for the metrics).
    pub entries: AtomicU64,
    /// Flows the kernel's table evicted before their final record (a lower bound, see
    /// [`evictions`]).
    pub evicted: AtomicU64,
    stop: AtomicBool,
}

impl Sweeper {
    /// The idle-timeout sweep on a thread of its own, over a second handle to the flow table:
    /// a walk of a full table is two syscalls per entry (130,000 for 65,536 flows, ~0.1 s), and
    /// on the agent's loop it held up every alert behind it once a second under a flood
    /// (BENCHMARKS.md). Expired flows come back through `tx`, at most [`PIECE`] at a time.
    /// `stats` (the kernel's counters) gives the thread the table's inserts.
    pub fn spawn(
        flows: &HashMap<MapData, FlowKey, FlowState>,
        stats: &PerCpuArray<MapData, u64>,
        cfg: FlowConfig,
        every: Duration,
        tx: mpsc::Sender<Vec<(FlowKey, FlowState)>>,
    ) -> anyhow::Result<Self> {
        let table: HashMap<MapData, FlowKey, FlowState> = HashMap::try_from(
            aya::maps::Map::LruHashMap(reopen(flows.map(), "flow table")?),
        )
        .context("the flow table has an unexpected type")?;
        let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
            reopen(stats.map(), "counters")?,
        ))
        .context("the counters have an unexpected type")?;
        let shared = Arc::new(Shared {
            cfg: Mutex::new(cfg),
            entries: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("detector-sweep".into())
            .spawn(move || sweep_loop(table, stats, every, tx, &s))
            .context("cannot start the sweep thread")?;
        Ok(Self { shared, thread })
    }

    /// Stops the thread and waits for it (it ends within one tick, 20 ms).
    pub fn stop(self) {
        self.shared.stop.store(true, Relaxed);
        let _ = self.thread.join();
    }
}

/// A second handle to a map, for the sweep thread.
fn reopen(map: &MapData, what: &str) -> anyhow::Result<MapData> {
    use std::os::fd::AsFd;
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("cannot duplicate the descriptor of the {what}"))?;
    MapData::from_fd(fd).with_context(|| format!("cannot open the {what} a second time"))
}

/// Evictions are warned of at most this often (a flood evicts on every sweep).
const EVICTION_WARNING_EVERY: Duration = Duration::from_secs(60);

fn sweep_loop(
    mut table: HashMap<MapData, FlowKey, FlowState>,
    stats: PerCpuArray<MapData, u64>,
    every: Duration,
    tx: mpsc::Sender<Vec<(FlowKey, FlowState)>>,
    shared: &Shared,
) {
    let Shared {
        cfg,
        entries,
        evicted,
        stop,
    } = shared;
    let mut removed = 0u64;
    let mut warned = (None::<Instant>, 0u64);
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
        let inserted = read_stats(&stats).map(|c| c[flow::stat::TABLE_INSERTS as usize]);
        let walk = sweep_counting(&mut table, &cfg, clock::monotonic_ns(), false);
        entries.store(walk.seen.saturating_sub(walk.removed), Relaxed);
        match inserted {
            Ok(inserted) => {
                let before = evicted.load(Relaxed);
                let now = evictions(before, inserted, removed, walk.seen);
                evicted.store(now, Relaxed);
                if now > warned.1
                    && warned
                        .0
                        .is_none_or(|t| t.elapsed() >= EVICTION_WARNING_EVERY)
                {
                    warn!(
                        evicted = now - warned.1,
                        evicted_total = now,
                        "the flow table was full: the kernel evicted live flows to make room, \
                         and their final records are lost (a flood of new flows, or \
                         flows.table_size too small for this host)"
                    );
                    warned = (Some(Instant::now()), now);
                }
            }
            Err(e) => warn!("cannot read the flow table's inserts: {e:#}"),
        }
        removed += walk.removed;
        let expired = walk.expired;
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
        fn remove(&mut self, key: &FlowKey) -> bool {
            let n = self.rows.len();
            self.rows.retain(|(k, _)| k != key);
            self.rows.len() < n
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
        let walk = sweep_counting(&mut t, &cfg, now, false);
        assert_eq!((walk.seen, walk.removed), (2, 1));
        let ports: Vec<u16> = walk.expired.iter().map(|(k, _)| k.port_lo).collect();
        assert_eq!(ports, [1]);
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

    #[test]
    fn evictions_are_what_the_table_lost_and_never_go_down() {
        // 10 inserted, 2 removed by sweeps, 5 in the table: 3 evicted.
        assert_eq!(evictions(0, 10, 2, 5), 3);
        // A walk that met entries inserted after the count was read undercounts: kept.
        assert_eq!(evictions(3, 10, 2, 7), 3);
        // More inserts into a full table: more evictions.
        assert_eq!(evictions(3, 30, 2, 5), 23);
        // Nothing lost.
        assert_eq!(evictions(0, 4, 1, 3), 0);
    }
}

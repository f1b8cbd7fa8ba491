//! The flow table in user space: what the replayer (and unit tests) run `process_packet`
//! against, in place of the kernel's LRU map and ring buffer.

use std::{collections::HashMap, vec::Vec};

use crate::{
    block::{BlockEntry, BlockKey},
    flow::{self, stat, FlowConfig, FlowEnv, FlowKey, FlowState, FlowTable, Reason},
    packet::Parsed,
};

/// A `HashMap` flow table; idle flows are expired by capture time with [`MemTable::expire`].
/// Unbounded by default (a capture is finite); [`MemTable::bounded`] holds at most as many
/// flows as the kernel's table and, like the kernel's LRU map when its free list runs dry,
/// evicts a batch of the least recently seen flows to make room, silently: their final records
/// are lost, as they are in the agent, and counted in [`MemTable::evicted`].
#[derive(Default)]
pub struct MemTable {
    /// Keyed with per-process random state (aHash), so that a spoofed flood cannot aim its keys
    /// at one bucket; SipHash, the standard hasher, made inserts a large part of a flood's replay.
    pub flows: HashMap<FlowKey, FlowState, ahash::RandomState>,
    /// At most this many flows (0: unbounded).
    capacity: usize,
    /// Flows evicted to make room.
    pub evicted: u64,
}

/// The kernel's LRU frees up to 128 entries at once when it has none left (`LOCAL_FREE_TARGET`
/// in kernel/bpf/bpf_lru_list.c, or less for small maps: its target is the map's size over
/// twice the CPUs); the replayer frees as many, the least recently seen first.
const EVICT_BATCH: usize = 128;

impl FlowTable for MemTable {
    fn get(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        self.flows.get_mut(key)
    }
    fn insert_zeroed(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        if self.capacity > 0 && self.flows.len() >= self.capacity && !self.flows.contains_key(key) {
            self.evict();
        }
        Some(self.flows.entry(*key).or_default())
    }
}

impl MemTable {
    /// A table that holds at most `capacity` flows (at least one).
    pub fn bounded(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::default()
        }
    }

    /// Drops the least recently seen flows: a batch of up to [`EVICT_BATCH`], at most an
    /// eighth of the table, at least one.
    fn evict(&mut self) {
        let n = (self.capacity / 8)
            .clamp(1, EVICT_BATCH)
            .min(self.flows.len());
        let mut by_age: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .map(|(k, s)| (s.last_seen_ns, *k))
            .collect();
        if n < by_age.len() {
            by_age.select_nth_unstable(n - 1);
        }
        for (_, key) in &by_age[..n] {
            self.flows.remove(key);
        }
        self.evicted += n as u64;
    }

    /// Removes the flows idle at `now` (all of them when `all`), emitting each one's final
    /// record. Returns how many were removed.
    pub fn expire<E: FlowEnv>(
        &mut self,
        now: u64,
        cfg: &FlowConfig,
        all: bool,
        env: &mut E,
    ) -> usize {
        let reason = if all {
            Reason::Flush
        } else {
            Reason::IdleTimeout
        };
        // Taken out in one pass over the table (removing them one key at a time hashed and
        // probed each again), then ordered by small (time, key, index) triples, not whole
        // states: deterministic output order (by first packet, then key) without moving
        // 250-byte entries around.
        let gone: Vec<(FlowKey, FlowState)> = if all {
            self.flows.drain().collect()
        } else {
            self.flows
                .extract_if(|_, s| flow::idle_expired(s, now, cfg))
                .collect()
        };
        let mut order: Vec<(u64, FlowKey, usize)> = gone
            .iter()
            .enumerate()
            .map(|(i, (k, s))| (s.first_seen_ns, *k, i))
            .collect();
        order.sort_unstable();
        for &(_, _, i) in &order {
            let (key, mut state) = gone[i];
            state.last_export_ns = now;
            state.exported_packets = state.total_packets();
            if env.emit(&key, &state, reason) {
                env.count(stat::RECORDS);
            }
        }
        gone.len()
    }
}

/// Collects emitted records and counters in memory, with an optional blocklist.
#[derive(Default)]
pub struct MemEnv {
    pub records: Vec<(FlowKey, FlowState, Reason)>,
    pub stats: [u64; stat::COUNT as usize],
    blocklist: HashMap<BlockKey, BlockEntry>,
    /// Moves on with every [`MemEnv::block`], as the agent moves the kernel's on.
    block_generation: u32,
}

impl MemEnv {
    /// The blocklist entries.
    pub fn blocklist(&self) -> &HashMap<BlockKey, BlockEntry> {
        &self.blocklist
    }
    /// Inserts a blocklist entry (as the agent does into the kernel map).
    pub fn block(&mut self, key: BlockKey, entry: BlockEntry) {
        self.blocklist.insert(key, entry);
        self.block_generation = next_block_generation(self.block_generation);
    }
}

/// The blocklist generation after one more insert: never 0, which means "nothing blocked".
pub fn next_block_generation(g: u32) -> u32 {
    g.wrapping_add(1).max(1)
}

impl FlowEnv for MemEnv {
    fn emit(&mut self, key: &FlowKey, state: &FlowState, reason: Reason) -> bool {
        self.records.push((*key, *state, reason));
        true
    }
    fn count(&mut self, stat: u32) {
        self.stats[stat as usize] += 1;
    }
    fn block_generation(&mut self) -> Option<u32> {
        Some(self.block_generation)
    }
    fn blocked(&mut self, p: &Parsed, now_ns: u64) -> bool {
        [BlockKey::source_of(p), BlockKey::flow(&p.key)]
            .iter()
            .any(|k| self.blocklist.get(k).is_some_and(|e| e.active(now_ns)))
    }
}

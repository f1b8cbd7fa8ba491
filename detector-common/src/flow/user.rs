//! The flow table in user space: what the replayer (and unit tests) run `process_packet`
//! against, in place of the kernel's LRU map and ring buffer.

use std::{collections::HashMap, vec::Vec};

use crate::{
    block::{BlockEntry, BlockKey},
    flow::{self, stat, FlowConfig, FlowEnv, FlowKey, FlowState, FlowTable, Reason},
    packet::Parsed,
};

/// A hash-indexed flow table; idle flows are expired by capture time with [`MemTable::expire`].
/// Unbounded by default (a capture is finite); [`MemTable::bounded`] holds at most as many
/// flows as the kernel's table and, like the kernel's LRU map when its free list runs dry,
/// evicts a batch of the least recently seen flows to make room, silently: their final records
/// are lost, as they are in the agent, and counted in [`MemTable::evicted`].
///
/// The flows sit in slots of one vector, the map holds their slot numbers: growing the map
/// moves 48-byte entries, not 300-byte flows, and a flood of new flows fills the vector's
/// pages once instead of each of the map's doubling sizes in turn.
#[derive(Default)]
pub struct MemTable {
    /// Flow key → its slot in `slots`. Keyed with per-process random state (aHash), so that a
    /// spoofed flood cannot aim its keys at one bucket.
    index: HashMap<FlowKey, u32, ahash::RandomState>,
    slots: Vec<(FlowKey, FlowState)>,
    /// Slots of removed flows, for the next new ones.
    free: Vec<u32>,
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
        let slot = *self.index.get(key)?;
        Some(&mut self.slots[slot as usize].1)
    }
    fn insert_zeroed(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        if self.capacity > 0 && self.index.len() >= self.capacity && !self.index.contains_key(key) {
            self.evict();
        }
        let slot = match self.index.get(key) {
            Some(&slot) => slot,
            None => {
                let flow = (*key, FlowState::default());
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = flow;
                        slot
                    }
                    None => {
                        self.slots.push(flow);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(*key, slot);
                slot
            }
        };
        Some(&mut self.slots[slot as usize].1)
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

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The flows in the table, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowState)> {
        self.index.values().map(|&slot| {
            let (k, s) = &self.slots[slot as usize];
            (k, s)
        })
    }

    /// `key`'s flow.
    pub fn flow(&self, key: &FlowKey) -> Option<&FlowState> {
        let slot = *self.index.get(key)?;
        Some(&self.slots[slot as usize].1)
    }

    /// Forgets every flow, without records.
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }

    /// Takes `key`'s flow out of the table.
    fn remove(&mut self, key: &FlowKey) {
        if let Some(slot) = self.index.remove(key) {
            self.free.push(slot);
        }
    }

    /// Drops the least recently seen flows: a batch of up to [`EVICT_BATCH`], at most an
    /// eighth of the table, at least one.
    fn evict(&mut self) {
        let n = (self.capacity / 8).clamp(1, EVICT_BATCH).min(self.len());
        let mut by_age: Vec<(u64, FlowKey)> =
            self.iter().map(|(k, s)| (s.last_seen_ns, *k)).collect();
        if n < by_age.len() {
            by_age.select_nth_unstable(n - 1);
        }
        for (_, key) in &by_age[..n] {
            self.remove(key);
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
        // Ordered by small (time, key, slot) triples, not whole states: deterministic output
        // order (by first packet, then key) without moving 300-byte flows around. Taken out of
        // the map in one pass (removing them one key at a time hashed and probed each again).
        let slots = &self.slots;
        let mut order: Vec<(u64, FlowKey, u32)> = if all {
            self.index
                .drain()
                .map(|(k, i)| (slots[i as usize].1.first_seen_ns, k, i))
                .collect()
        } else {
            self.index
                .extract_if(|_, i| flow::idle_expired(&slots[*i as usize].1, now, cfg))
                .map(|(k, i)| (slots[i as usize].1.first_seen_ns, k, i))
                .collect()
        };
        order.sort_unstable();
        for &(_, key, i) in &order {
            let mut state = self.slots[i as usize].1;
            state.last_export_ns = now;
            state.exported_packets = state.total_packets();
            if env.emit(&key, &state, reason) {
                env.count(stat::RECORDS);
            }
        }
        if all {
            self.slots.clear();
            self.free.clear();
        } else {
            self.free.extend(order.iter().map(|&(_, _, i)| i));
        }
        order.len()
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

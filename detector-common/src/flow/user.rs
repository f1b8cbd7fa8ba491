//! The flow table in user space: what the replayer (and unit tests) run `process_packet`
//! against, in place of the kernel's LRU map and ring buffer.

use std::{collections::HashMap, vec::Vec};

use hashbrown::HashTable;

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
/// The flows sit in slots of one vector, and the index holds only their slot numbers (the key
/// is read from the slot): growing the index moves 4-byte entries, not 300-byte flows nor
/// 48-byte key-and-slot pairs, and a flood of new flows fills the vector's pages once instead
/// of each of the index's doubling sizes in turn. Each page first touched costs a fault (a few
/// µs on a VM): the index of 48-byte entries took a fifth of `replay --detect`'s page faults on
/// a spoofed flood.
#[derive(Default)]
pub struct MemTable {
    /// Slot numbers in `slots`, found by their flow key's hash. Keyed with per-process random
    /// state (aHash, `hasher`), so that a spoofed flood cannot aim its keys at one bucket.
    index: HashTable<u32>,
    hasher: ahash::RandomState,
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
        let slot = self.slot_of(key)?;
        Some(&mut self.slots[slot as usize].1)
    }
    fn insert_zeroed(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        if let Some(slot) = self.slot_of(key) {
            return Some(&mut self.slots[slot as usize].1);
        }
        if self.capacity > 0 && self.index.len() >= self.capacity {
            self.evict();
        }
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
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hasher.hash_one(key), slot, |&i| {
            hasher.hash_one(slots[i as usize].0)
        });
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

    /// The slot of `key`'s flow.
    fn slot_of(&self, key: &FlowKey) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(key), |&i| slots[i as usize].0 == *key)
            .copied()
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
        self.index.iter().map(|&slot| {
            let (k, s) = &self.slots[slot as usize];
            (k, s)
        })
    }

    /// `key`'s flow.
    pub fn flow(&self, key: &FlowKey) -> Option<&FlowState> {
        let slot = self.slot_of(key)?;
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
        let slots = &self.slots;
        if let Ok(e) = self
            .index
            .find_entry(self.hasher.hash_one(key), |&i| slots[i as usize].0 == *key)
        {
            self.free.push(e.remove().0);
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
        // Ordered by (first packet, key, slot) without moving 300-byte flows around: the
        // order holds (time, slot) pairs and reads keys from the slots for ties, 16 bytes a
        // flow where (time, key, slot) triples took 56 (a flood's final flush sorts them all,
        // and their pages are faulted in fresh). Taken out of the index in one pass (removing
        // them one key at a time hashed and probed each again).
        let slots = &self.slots;
        let mut order: Vec<(u64, u32)> = if all {
            self.index
                .drain()
                .map(|i| (slots[i as usize].1.first_seen_ns, i))
                .collect()
        } else {
            self.index
                .extract_if(|i| flow::idle_expired(&slots[*i as usize].1, now, cfg))
                .map(|i| (slots[i as usize].1.first_seen_ns, i))
                .collect()
        };
        order.sort_unstable_by(|&(ta, a), &(tb, b)| {
            (ta, &slots[a as usize].0, a).cmp(&(tb, &slots[b as usize].0, b))
        });
        for &(_, i) in &order {
            let (key, mut state) = self.slots[i as usize];
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
            self.free.extend(order.iter().map(|&(_, i)| i));
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

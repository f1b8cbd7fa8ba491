//! Blocklist entries: the XDP program drops packets whose source, or whose flow, is listed.

use crate::{flow::FlowKey, packet::Parsed};

/// [`BlockKey::kind`]: block every packet from `flow.addr_lo` (the rest of `flow` is zero
/// except `family`).
pub const BLOCK_SOURCE: u32 = 1;
/// [`BlockKey::kind`]: block both directions of the flow `flow` (canonical key).
pub const BLOCK_FLOW: u32 = 2;

/// Key of the `BLOCKLIST` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BlockKey {
    pub kind: u32,
    /// Explicit, always zero: hash-map keys are compared byte for byte, padding included.
    pub _pad: u32,
    pub flow: FlowKey,
}

impl BlockKey {
    /// The key that blocks every packet from `addr` (16-byte form; IPv4 in the first 4).
    #[inline(always)]
    pub fn source(family: u8, addr: &[u8; 16]) -> Self {
        Self {
            kind: BLOCK_SOURCE,
            _pad: 0,
            flow: FlowKey {
                addr_lo: *addr,
                family,
                ..FlowKey::default()
            },
        }
    }
    /// The key that blocks one flow.
    #[inline(always)]
    pub fn flow(key: &FlowKey) -> Self {
        Self {
            kind: BLOCK_FLOW,
            _pad: 0,
            flow: *key,
        }
    }
    /// The source key for this packet's sender.
    #[inline(always)]
    pub fn source_of(p: &Parsed) -> Self {
        Self::source(p.key.family, p.src_addr())
    }
}

/// Value of the `BLOCKLIST` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BlockEntry {
    /// CLOCK_MONOTONIC time after which the entry no longer drops (0 = until removed).
    pub expires_ns: u64,
    /// Packets dropped by this entry (added atomically: exact across CPUs).
    pub hits: u64,
}

impl BlockEntry {
    /// True when the entry still drops at `now_ns`.
    #[inline(always)]
    pub fn active(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || now_ns < self.expires_ns
    }
}

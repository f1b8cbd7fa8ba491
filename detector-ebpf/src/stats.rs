//! Per-CPU counters shared by every program (indexes in `detector_common::flow::stat`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use detector_common::flow::stat;

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Adds one to counter `index`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(v) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *v += 1 };
    }
}

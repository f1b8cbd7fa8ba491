//! User-space side: `aya::Pod` for every type that crosses a map or ring buffer, and byte
//! views of ring-buffer items.

use crate::{
    block::{BlockEntry, BlockKey},
    flow::{FlowConfig, FlowKey, FlowRecord, FlowState},
    proc::{ProcEvent, SockKey, SockOwner},
};

// SAFETY: all are #[repr(C)] plain data with explicit padding fields, valid for any bytes.
// The layout checks below keep them free of implicit padding, which would make map keys
// compare unequal and leak uninitialised bytes.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowState {}
unsafe impl aya::Pod for FlowRecord {}
unsafe impl aya::Pod for FlowConfig {}
unsafe impl aya::Pod for BlockKey {}
unsafe impl aya::Pod for BlockEntry {}
unsafe impl aya::Pod for ProcEvent {}
unsafe impl aya::Pod for SockKey {}
unsafe impl aya::Pod for SockOwner {}

/// Reads a plain-data item from a ring-buffer slice; None when the size is wrong.
pub fn read_item<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is Pod (any bit pattern is valid) and the length matches; read_unaligned
    // because ring-buffer items are only 8-byte aligned by convention.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<FlowKey>() == 16 + 16 + 2 + 2 + 1 + 1 + 2);
    assert!(size_of::<BlockKey>() == 8 + size_of::<FlowKey>());
    assert!(size_of::<SockKey>() == 16 + 16 + 2 + 2 + 1 + 1 + 2);
    assert!(size_of::<FlowState>() == 13 * 8 + 19 * 4 + 12 * 2 + 6 + 6);
    assert!(size_of::<FlowRecord>() == size_of::<FlowKey>() + 8 + size_of::<FlowState>());
    assert!(size_of::<ProcEvent>() == 8 + 8 + 6 * 4 + 16 + 16 + 2 + 2 + 4 + 16 + 128);
};

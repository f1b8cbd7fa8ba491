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

/// A plain-data item of a ring-buffer slice, in place when the slice is aligned for `T` (ring
/// buffer records are 8-byte aligned), copied otherwise; None when the size is wrong. In place,
/// the agent's loop saves a copy of each 272-byte flow record.
pub fn item_in_place<T: aya::Pod + Clone>(bytes: &[u8]) -> Option<std::borrow::Cow<'_, T>> {
    if bytes.len() != core::mem::size_of::<T>() {
        return None;
    }
    let p = bytes.as_ptr().cast::<T>();
    if p.is_aligned() {
        // SAFETY: T is Pod (any bit pattern is valid), the length matches and the pointer is
        // aligned; the borrow of `bytes` keeps the memory alive and unchanged (the kernel does
        // not reuse a ring-buffer record before the consumer moves past it).
        Some(std::borrow::Cow::Borrowed(unsafe { &*p }))
    } else {
        read_item(bytes).map(std::borrow::Cow::Owned)
    }
}

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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn record_bytes() -> (Vec<u64>, FlowRecord) {
        let mut rec = FlowRecord::default();
        rec.key.port_lo = 443;
        rec.reason = 5;
        rec.state.last_seen_ns = 123_456_789;
        let n = core::mem::size_of::<FlowRecord>();
        // u64 storage: 8-byte aligned, one word spare to make an unaligned view.
        let mut words = vec![0u64; n / 8 + 1];
        // SAFETY: the buffer holds n + 8 bytes; FlowRecord is plain data.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (&rec as *const FlowRecord).cast::<u8>(),
                words.as_mut_ptr().cast::<u8>(),
                n,
            )
        };
        (words, rec)
    }

    #[test]
    fn an_aligned_item_is_read_in_place_and_an_unaligned_one_is_copied() {
        let n = core::mem::size_of::<FlowRecord>();
        let (words, rec) = record_bytes();
        // SAFETY: the buffer holds n + 8 initialised bytes.
        let bytes = unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), n + 8) };
        match item_in_place::<FlowRecord>(&bytes[..n]) {
            Some(Cow::Borrowed(r)) => {
                assert_eq!(*r, rec);
                assert_eq!((r as *const FlowRecord).cast::<u8>(), bytes.as_ptr());
            }
            other => panic!("aligned bytes were not read in place: {other:?}"),
        }
        // The same bytes one past an 8-byte boundary: copied out, the same record.
        let mut other = vec![0u64; n / 8 + 1];
        // SAFETY: the buffer holds n + 8 bytes.
        let shifted =
            unsafe { core::slice::from_raw_parts_mut(other.as_mut_ptr().cast::<u8>(), n + 8) };
        shifted[1..=n].copy_from_slice(&bytes[..n]);
        match item_in_place::<FlowRecord>(&shifted[1..=n]) {
            Some(Cow::Owned(r)) => assert_eq!(r, rec),
            other => panic!("unaligned bytes were not copied: {other:?}"),
        }
        assert!(item_in_place::<FlowRecord>(&bytes[..n - 8]).is_none());
        assert!(item_in_place::<FlowRecord>(&bytes[..n + 8]).is_none());
    }
}

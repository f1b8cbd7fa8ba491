//! User-space side: `aya::Pod` for every type that crosses a map or ring buffer, and byte
//! views of ring-buffer items (bytemuck).

use crate::{
    block::{BlockEntry, BlockKey},
    flow::{FlowConfig, FlowKey, FlowRecord, FlowState},
    proc::{ProcEvent, SockKey, SockOwner},
};

// SAFETY: each type derives bytemuck::Pod, whose derive refuses to compile a type with
// implicit padding or a field that is not itself plain data: any bytes are a valid value, and
// map keys never carry uninitialised bytes that would make them compare unequal.
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
pub fn item_in_place<T: bytemuck::Pod>(bytes: &[u8]) -> Option<std::borrow::Cow<'_, T>> {
    match bytemuck::try_from_bytes::<T>(bytes) {
        Ok(t) => Some(std::borrow::Cow::Borrowed(t)),
        Err(bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned) => {
            read_item(bytes).map(std::borrow::Cow::Owned)
        }
        Err(_) => None,
    }
}

/// Reads a plain-data item from a ring-buffer slice; None when the size is wrong.
pub fn read_item<T: bytemuck::Pod>(bytes: &[u8]) -> Option<T> {
    bytemuck::try_pod_read_unaligned(bytes).ok()
}

// The layouts the eBPF side writes (it does not build bytemuck's checks): the sizes spelt out
// field by field, so that a field added on one side only fails here.
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

    #[test]
    fn an_aligned_item_is_read_in_place_and_an_unaligned_one_is_copied() {
        let mut rec = FlowRecord::default();
        rec.key.port_lo = 443;
        rec.reason = 5;
        rec.state.last_seen_ns = 123_456_789;
        let n = core::mem::size_of::<FlowRecord>();
        // u64 storage: 8-byte aligned, one word spare to make an unaligned view.
        let mut words = vec![0u64; n / 8 + 1];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        bytes[..n].copy_from_slice(bytemuck::bytes_of(&rec));
        match item_in_place::<FlowRecord>(&bytes[..n]) {
            Some(Cow::Borrowed(r)) => {
                assert_eq!(*r, rec);
                assert_eq!((r as *const FlowRecord).cast::<u8>(), bytes.as_ptr());
            }
            other => panic!("aligned bytes were not read in place: {other:?}"),
        }
        // The same bytes one past an 8-byte boundary: copied out, the same record.
        bytes.copy_within(..n, 1);
        match item_in_place::<FlowRecord>(&bytes[1..=n]) {
            Some(Cow::Owned(r)) => assert_eq!(r, rec),
            other => panic!("unaligned bytes were not copied: {other:?}"),
        }
        assert!(item_in_place::<FlowRecord>(&bytes[..n - 8]).is_none());
        assert!(item_in_place::<FlowRecord>(&bytes[..n + 8]).is_none());
    }
}

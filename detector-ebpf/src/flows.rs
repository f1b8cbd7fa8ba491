//! Flow extraction: XDP on ingress and a TC classifier on egress run the shared
//! `detector_common::flow::process_packet_at` against the same flow table, so a host sees both
//! directions of its flows. Only the XDP side enforces the blocklist.

use core::arch::asm;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::{TcContext, XdpContext},
};
use detector_common::{
    block::{BlockEntry, BlockKey},
    flow::{
        process_packet_at, FlowConfig, FlowEnv, FlowKey, FlowRecord, FlowState, FlowTable, Reason,
        Verdict,
    },
    packet::{PacketBytes, Parsed},
};

use crate::stats::count;

/// Per-flow state; least recently used flows are evicted when full. Size set by the agent.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(detector_common::flow::DEFAULT_TABLE_SIZE, 0);
/// Flow records for the agent. Size set by the agent.
#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);
/// Timeouts and early-record threshold, written by the agent. All-zero means "not set yet".
#[map]
static CONFIG: Array<FlowConfig> = Array::with_max_entries(1, 0);
/// Sources and flows to drop, with an expiry.
#[map]
static BLOCKLIST: HashMap<BlockKey, BlockEntry> = HashMap::with_max_entries(65536, 0);
/// The blocklist's generation: 0 until user space puts an entry in BLOCKLIST, then moved on
/// with every entry it puts there. Each side of a flow is looked up in BLOCKLIST once per
/// generation (`process_packet_at`), and nothing is looked up while this is 0.
#[map]
static BLOCKLIST_GEN: Array<u32> = Array::with_max_entries(1, 0);
/// One all-zero flow state: the value inserted for a new flow, so it never sits on the stack.
#[map]
static ZERO_STATE: Array<FlowState> = Array::with_max_entries(1, 0);

pub(crate) struct Table;

impl FlowTable for Table {
    #[inline(always)]
    fn get(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        // SAFETY: map values live as long as the program run; no other reference exists here.
        FLOWS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
    }
    #[inline(always)]
    fn insert_zeroed(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        let zero = unsafe { &*ZERO_STATE.get_ptr(0)? };
        // BPF_NOEXIST: another CPU may have created it meanwhile; then use theirs.
        let _ = FLOWS.insert(key, zero, 1);
        self.get(key)
    }
}

/// Records go to the ring buffer; `enforce` is true where the blocklist applies (ingress).
struct Env {
    enforce: bool,
}

impl FlowEnv for Env {
    #[inline(always)]
    fn emit(&mut self, key: &FlowKey, state: &FlowState, reason: Reason) -> bool {
        match FLOW_EVENTS.reserve::<FlowRecord>(0) {
            Some(mut entry) => {
                let rec = entry.as_mut_ptr();
                // SAFETY: `rec` points at a reserved, writable FlowRecord-sized slot.
                unsafe {
                    (*rec).key = *key;
                    (*rec).reason = reason as u8;
                    (*rec)._pad = [0; 7];
                    // An explicit copy: a struct assignment would stage the state on the stack.
                    core::ptr::copy_nonoverlapping(state, &mut (*rec).state, 1);
                }
                entry.submit(0);
                true
            }
            None => false,
        }
    }
    #[inline(always)]
    fn count(&mut self, stat: u32) {
        count(stat);
    }
    #[inline(always)]
    fn block_generation(&mut self) -> Option<u32> {
        if !self.enforce {
            return None;
        }
        Some(BLOCKLIST_GEN.get(0).copied().unwrap_or(0))
    }
    #[inline(always)]
    fn blocked(&mut self, p: &Parsed, now_ns: u64) -> bool {
        hit(&BlockKey::source_of(p), now_ns) || hit(&BlockKey::flow(&p.key), now_ns)
    }
}

#[inline(always)]
fn hit(key: &BlockKey, now_ns: u64) -> bool {
    match BLOCKLIST.get_ptr_mut(key) {
        Some(e) => unsafe {
            if (*e).active(now_ns) {
                // Atomic (BPF's `lock ... +=`; core has no 64-bit atomics for this target):
                // CPUs drop the same source's packets at once, and a plain increment lost
                // counts between them (tests/tests/xdp_program.rs).
                asm!("lock *(u64 *)({p} + 0) += {v}",
                    p = in(reg) core::ptr::addr_of_mut!((*e).hits), v = in(reg) 1u64,
                    options(nostack, preserves_flags));
                true
            } else {
                false
            }
        },
        None => false,
    }
}

#[inline(always)]
fn config() -> FlowConfig {
    match CONFIG.get(0) {
        Some(c) if c.idle_timeout_ns != 0 => *c,
        _ => FlowConfig::DEFAULT,
    }
}

/// An XDP packet. Headers are read straight from the frame's linear part; what lies beyond it
/// (a multi-buffer frame whose first buffer ends inside the headers) through
/// `bpf_xdp_load_bytes`, which reads across fragments.
pub struct XdpPacket<'a>(pub &'a XdpContext);

/// Offsets beyond this take the helper. The verifier only accepts packet-pointer arithmetic with
/// an offset it can bound, and no header the parser reads starts this deep in a linear part.
const DIRECT_MAX_OFFSET: usize = 0x3fff;

impl PacketBytes for XdpPacket<'_> {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        // All fragments of a multi-buffer frame (jumbo frames, big veth packets), not just the
        // linear part: bpf_xdp_load_bytes reads across fragments too.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as usize }
    }
    #[inline(always)]
    fn load(&self, offset: usize, buf: &mut [u8]) -> bool {
        if load_linear(self.0.data(), self.0.data_end(), offset, buf) {
            return true;
        }
        // SAFETY: the helper bounds-checks against the packet and writes buf.len() bytes.
        unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                offset as u32,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
            ) == 0
        }
    }
}

/// Copies `buf.len()` bytes at `offset` from the linear part `data..data_end` of a packet, when
/// they lie inside it; returns false (and copies nothing) otherwise.
#[inline(always)]
fn load_linear(data: usize, data_end: usize, offset: usize, buf: &mut [u8]) -> bool {
    let len = buf.len();
    if offset > DIRECT_MAX_OFFSET || data + offset + len > data_end {
        return false;
    }
    // SAFETY: the bytes lie inside the linear part (checked just above, and the verifier checks
    // it again); `buf` holds `len` bytes.
    unsafe { copy_words((data + offset) as *const u8, buf.as_mut_ptr(), len) };
    true
}

/// Copies `len` (a constant once inlined) bytes in 8-, 4-, 2- and 1-byte moves. A helper call
/// per header cost more than the parsing itself (three calls deep, and its byte-wise copy into
/// the stack stalled the wider loads that followed; BENCHMARKS.md). The moves are written in
/// assembly because the BPF backend splits any load it cannot prove aligned into single bytes,
/// and packet headers are not aligned (the IP header starts at offset 14); the kernel allows
/// unaligned packet access on the architectures we run on (x86_64, arm64).
///
/// # Safety
/// `src` and `dst` are valid for `len` bytes.
#[inline(always)]
unsafe fn copy_words(src: *const u8, dst: *mut u8, len: usize) {
    let mut i = 0;
    while i + 8 <= len {
        asm!("{v} = *(u64 *)({s} + 0)", "*(u64 *)({d} + 0) = {v}",
            s = in(reg) src.add(i), d = in(reg) dst.add(i), v = out(reg) _,
            options(nostack, preserves_flags));
        i += 8;
    }
    if i + 4 <= len {
        asm!("{v} = *(u32 *)({s} + 0)", "*(u32 *)({d} + 0) = {v}",
            s = in(reg) src.add(i), d = in(reg) dst.add(i), v = out(reg) _,
            options(nostack, preserves_flags));
        i += 4;
    }
    if i + 2 <= len {
        asm!("{v} = *(u16 *)({s} + 0)", "*(u16 *)({d} + 0) = {v}",
            s = in(reg) src.add(i), d = in(reg) dst.add(i), v = out(reg) _,
            options(nostack, preserves_flags));
        i += 2;
    }
    if i < len {
        *dst.add(i) = *src.add(i);
    }
}

/// A socket buffer on egress: headers from its linear part, the rest through
/// `bpf_skb_load_bytes` (which reads paged data too).
struct SkbPacket<'a>(&'a TcContext);

impl PacketBytes for SkbPacket<'_> {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.0.len() as usize
    }
    #[inline(always)]
    fn load(&self, offset: usize, buf: &mut [u8]) -> bool {
        if load_linear(self.0.data(), self.0.data_end(), offset, buf) {
            return true;
        }
        // SAFETY: the helper bounds-checks against the skb and writes buf.len() bytes.
        unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb.cast(),
                offset as u32,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
            ) == 0
        }
    }
}

/// Ingress: flow update and blocklist. Never returns anything but PASS or DROP. Frags-aware,
/// so it also attaches where the MTU exceeds a page.
#[xdp(frags)]
pub fn detector_xdp(ctx: XdpContext) -> u32 {
    let cfg = config();
    match process_packet_at(
        &XdpPacket(&ctx),
        // SAFETY: a helper without arguments or preconditions.
        || unsafe { bpf_ktime_get_ns() },
        &cfg,
        &mut Table,
        &mut Env { enforce: true },
    ) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Egress: flow update only; hands the packet on to whatever else is attached.
#[classifier]
pub fn detector_tc_egress(ctx: TcContext) -> i32 {
    let cfg = config();
    let _ = process_packet_at(
        &SkbPacket(&ctx),
        // SAFETY: as on ingress.
        || unsafe { bpf_ktime_get_ns() },
        &cfg,
        &mut Table,
        &mut Env { enforce: false },
    );
    TC_ACT_UNSPEC
}

//! Baselines for the per-packet cost benchmark. `detector_xdp_parse_only` is the bare program
//! the issue compares against: the same header parsing as the flow programs, then XDP_PASS, with
//! no map, no flow update and no blocklist. The two "step" programs stop part way along the full
//! path (after the clock read; after the flow-table lookup), so the benchmark can say what each
//! step costs by difference, measured in the same rounds, rather than from profile shares.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use detector_common::{flow::FlowTable, packet::parse};

use crate::flows::{Table, XdpPacket};

/// Parses and passes (benchmark baseline; never attached by the agent).
#[xdp(frags)]
pub fn detector_xdp_parse_only(ctx: XdpContext) -> u32 {
    match parse(&XdpPacket(&ctx)) {
        Ok(p) => {
            // Keep the parse from being optimised away.
            core::hint::black_box(&p);
            xdp_action::XDP_PASS
        }
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// Parses and reads the clock, as the full program does once a packet has parsed (benchmark
/// step; never attached).
#[xdp(frags)]
pub fn detector_xdp_step_clock(ctx: XdpContext) -> u32 {
    if let Ok(p) = parse(&XdpPacket(&ctx)) {
        // SAFETY: a helper without arguments or preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        core::hint::black_box(&p);
        core::hint::black_box(now);
    }
    xdp_action::XDP_PASS
}

/// Parses, reads the clock and looks the flow up in the flow table, without updating it
/// (benchmark step; never attached).
#[xdp(frags)]
pub fn detector_xdp_step_lookup(ctx: XdpContext) -> u32 {
    if let Ok(p) = parse(&XdpPacket(&ctx)) {
        // SAFETY: as above.
        let now = unsafe { bpf_ktime_get_ns() };
        let found = Table.get(&p.key).map_or(0, |s| s.last_seen_ns);
        core::hint::black_box(&p);
        core::hint::black_box(now ^ found);
    }
    xdp_action::XDP_PASS
}

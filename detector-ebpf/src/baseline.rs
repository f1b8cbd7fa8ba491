//! A baseline for the per-packet cost benchmark: the same header parsing as the flow programs,
//! then XDP_PASS, with no map, no flow update and no blocklist.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use detector_common::packet::parse;

use crate::flows::XdpPacket;

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

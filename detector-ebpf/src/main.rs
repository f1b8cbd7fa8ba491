//! Kernel programs of the detector: flow extraction on XDP (ingress) and TC (egress), process
//! events on tracepoints. One module per program family; each declares the maps it owns.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for unaligned packet reads (flows.rs).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod baseline;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    unsafe { core::hint::unreachable_unchecked() }
}

/// The crate only means something for the BPF target; on the host it builds to nothing so
/// that workspace-wide `cargo clippy` and `cargo test` work.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

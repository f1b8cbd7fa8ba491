//! The detector agent as a library: loading and attaching the eBPF programs, reading their ring
//! buffers, turning records into JSON lines. `main.rs` is a thin CLI over it.

pub mod agent;
pub mod clock;
pub mod context;
pub mod dataset;
pub mod ebpf;
pub mod features;
pub mod iface;
pub mod output;
pub mod pcap;
pub mod record;
pub mod replay;
pub mod sockets;
pub mod tracefs;

//! The detector agent as a library: loading and attaching the eBPF programs, reading their ring
//! buffers, turning records into JSON lines. `main.rs` is a thin CLI over it.

pub mod agent;
pub mod baseline;
pub mod blocklist;
pub mod clock;
pub mod config;
pub mod context;
pub mod control;
pub mod corpus;
pub mod dataset;
pub mod detect;
pub mod dismissals;
pub mod ebpf;
pub mod features;
pub mod iface;
pub mod incidents;
pub mod metrics;
pub mod model;
pub mod offlab;
pub mod output;
pub mod pcap;
pub mod policy;
pub mod recent;
pub mod record;
pub mod replay;
pub mod sockets;
pub mod state;
pub mod tracefs;

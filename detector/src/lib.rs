//! The detector as a library; `main.rs` is a thin CLI over it.
//!
//! - The agent (`agent`, a loop over rooms): the eBPF programs loaded and attached (`ebpf`),
//!   their records featurised (`features`, `context`), scored and judged (`detect`, `model`,
//!   `policy`), acted on (`blocklist`), written (`record`, `output`, `metrics`); the operator's
//!   requests (`control`), confirmed incidents (`incidents`), dismissals (`dismissals`), the
//!   host's baseline (`baseline`) and what is kept of recent records (`recent`).
//! - Offline, the same code over captures (`pcap`, `replay`) and the model the agent and they
//!   serve (`model::serving`).
//! - With the `trainer` feature (the default; the daemon the .deb installs is built without it):
//!   meta-training (`model::train`), the evaluation protocol (`model::eval`, `offlab`) and
//!   dataset imports (`dataset`'s importers).

pub mod agent;
pub mod atomic_write;
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
pub mod fleet;
pub mod iface;
pub mod incidents;
pub mod linktype;
pub mod metrics;
pub mod model;
#[cfg(feature = "trainer")]
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

//! Types and logic shared by the eBPF programs and the user-space agent.
//!
//! `no_std` and plain `#[repr(C)]` data, so one definition serves the kernel and user space.
//! The `user` feature adds `aya::Pod` impls and conversions (in `user.rs`).
#![cfg_attr(not(any(test, feature = "user")), no_std)]

pub mod block;
pub mod flow;
pub mod key;
pub mod packet;
pub mod proc;

#[cfg(any(test, feature = "user"))]
pub mod testpkt;
#[cfg(feature = "user")]
pub mod user;

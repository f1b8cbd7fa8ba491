//! The programs in the kernel: loaded with the configured sizes, attached to the interfaces
//! (XDP ingress, TC egress) and tracepoints, watched while they run (an interface deleted takes
//! its programs with it), detached at the end.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use aya::Ebpf;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    config::Config,
    control::XdpStatus,
    ebpf::{self, Link, Sizes, XdpAttach},
    iface,
};

/// The loaded object and where its programs are attached.
pub struct Kernel {
    pub ebpf: Ebpf,
    links: Vec<Link>,
    /// Tracepoints that could not be attached, and why.
    tp_failures: Vec<(String, anyhow::Error)>,
    /// Interfaces with programs on them, by index: one deleted (or replaced by another of the
    /// same name) is reported once and its programs are not detached again.
    watched: Vec<(String, u32)>,
    removed: Vec<String>,
    /// aya-log's reader: must stay alive (dropping it closes its map) and be polled.
    pub log: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
}

impl Kernel {
    /// Loads the object, sets the flow configuration, and attaches XDP and TC egress to each
    /// interface and the process programs to their tracepoints. Fails when XDP is on no
    /// interface; any other program that could not be attached is logged and reported in
    /// `detector status`.
    pub fn attach(
        cfg: &Config,
        object: Option<&Path>,
        interfaces: &[String],
        tracefs: &Path,
    ) -> anyhow::Result<Self> {
        let xdp_attach: XdpAttach = cfg.agent.xdp_mode.parse().map_err(|e: String| anyhow!(e))?;
        let sizes = Sizes {
            flow_table: cfg.flows.table_size,
            flow_ringbuf: cfg.flows.ringbuf_bytes,
            proc_ringbuf: cfg.flows.proc_ringbuf_bytes,
        };
        let mut ebpf = ebpf::load(object, &sizes)?;
        ebpf::write_config(&mut ebpf, &cfg.flow_config())?;
        let log = match aya_log::EbpfLogger::init(&mut ebpf) {
            // SAFETY: the logger owns its fd for as long as the AsyncFd lives.
            Ok(logger) => {
                Some(unsafe { AsyncFd::register(logger) }.context("cannot poll the eBPF log")?)
            }
            Err(e) => {
                warn!("eBPF log messages will not be shown: {e}");
                None
            }
        };
        ebpf::load_flow_programs(&mut ebpf)?;
        let mut links = Vec::new();
        for name in interfaces {
            for attach in [
                ebpf::attach_xdp(&mut ebpf, name, xdp_attach),
                ebpf::attach_tc_egress(&mut ebpf, name),
            ] {
                match attach {
                    Ok(link) => {
                        info!("attached {link}");
                        links.push(link);
                    }
                    Err(e) => warn!("not attached: {e:#}"),
                }
            }
        }
        let on: Vec<&str> = links.iter().filter_map(interface_of).collect();
        if !links.iter().any(|l| matches!(l, Link::Xdp { .. })) {
            bail!(
                "XDP could not be attached to any of {}",
                interfaces.join(", ")
            );
        }
        let watched = interfaces
            .iter()
            .filter(|n| on.contains(&n.as_str()))
            .filter_map(|n| iface::index(n).ok().map(|i| (n.clone(), i)))
            .collect();
        let (tp_links, tp_failures) = ebpf::attach_tracepoints(&mut ebpf, tracefs);
        for link in tp_links {
            info!("attached {link}");
            links.push(link);
        }
        for (what, e) in &tp_failures {
            warn!("not attached: {what}: {e:#}");
        }
        Ok(Kernel {
            ebpf,
            links,
            tp_failures,
            watched,
            removed: Vec::new(),
            log,
        })
    }

    /// Takes a map out of the object (each once), as the type it must have.
    pub fn take<T>(&mut self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no {name} map"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }

    /// What is attached, one line each.
    pub fn attached(&self) -> Vec<String> {
        self.links.iter().map(|l| l.to_string()).collect()
    }

    /// What could not be attached, and why.
    pub fn not_attached(&self) -> Vec<String> {
        self.tp_failures
            .iter()
            .map(|(w, e)| format!("{w}: {e:#}"))
            .collect()
    }

    /// The XDP mode each interface got.
    pub fn xdp(&self) -> Vec<XdpStatus> {
        self.links
            .iter()
            .filter_map(|l| match l {
                Link::Xdp {
                    iface,
                    mode,
                    fallback,
                    ..
                } => Some(XdpStatus {
                    interface: iface.clone(),
                    mode,
                    native_refused: fallback.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Notices interfaces that were deleted (their programs went with them); the agent keeps
    /// running on the others.
    pub fn check_interfaces(&mut self) {
        for name in still_present(&mut self.watched, |n| iface::index(n).ok()) {
            warn!("interface {name} was removed: its XDP and TC programs went with it; the agent keeps running");
            self.removed.push(name);
        }
    }

    /// Detaches every program, newest first, except those whose interface is gone.
    pub fn detach(&mut self) {
        for link in std::mem::take(&mut self.links).into_iter().rev() {
            let what = link.to_string();
            if interface_of(&link).is_some_and(|i| self.removed.iter().any(|r| r == i)) {
                info!("{what}: the interface was removed, nothing to detach");
                continue;
            }
            match ebpf::detach(&mut self.ebpf, link) {
                Ok(()) => info!("detached {what}"),
                Err(e) => warn!("detaching {what} failed: {e:#}"),
            }
        }
    }
}

/// The interface a link sits on (none for tracepoints).
fn interface_of(l: &Link) -> Option<&str> {
    match l {
        Link::Xdp { iface, .. } | Link::TcEgress { iface, .. } => Some(iface),
        Link::TracePoint { .. } => None,
    }
}

/// Keeps the watched interfaces whose name still has the index they had, and returns the
/// others (deleted, or replaced by another interface of the same name).
fn still_present(
    watched: &mut Vec<(String, u32)>,
    index_of: impl Fn(&str) -> Option<u32>,
) -> Vec<String> {
    let mut gone = Vec::new();
    watched.retain(|(name, idx)| {
        let here = index_of(name) == Some(*idx);
        if !here {
            gone.push(name.clone());
        }
        here
    });
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_interface_is_reported_once() {
        let mut watched = vec![("eth0".to_string(), 2), ("veth1".to_string(), 7)];
        // veth1 was deleted and made again: same name, another index.
        let now = |n: &str| match n {
            "eth0" => Some(2),
            "veth1" => Some(9),
            _ => None,
        };
        assert_eq!(still_present(&mut watched, now), ["veth1"]);
        assert_eq!(watched, [("eth0".to_string(), 2)]);
        assert!(still_present(&mut watched, now).is_empty());
        assert_eq!(still_present(&mut watched, |_| None), ["eth0"]);
    }
}

//! The eBPF object: embedded in the binary, loaded with sizes from the command line, attached
//! to interfaces (XDP ingress, TC egress) and tracepoints.

use std::{fmt, path::Path};

use anyhow::{anyhow, Context};
use aya::{
    maps::{Array, MapData},
    programs::{
        tc::{self, SchedClassifierLinkId, TcAttachType},
        trace_point::TracePointLinkId,
        xdp::XdpLinkId,
        SchedClassifier, TracePoint, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use detector_common::flow::FlowConfig;

use crate::tracefs;

/// The eBPF object built by build.rs from `detector-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector"));

/// Program names in the object.
pub const XDP_PROGRAM: &str = "detector_xdp";
pub const TC_EGRESS_PROGRAM: &str = "detector_tc_egress";
/// Benchmark baseline: the same parsing, then XDP_PASS (never attached by the agent).
pub const XDP_PARSE_ONLY_PROGRAM: &str = "detector_xdp_parse_only";
/// Benchmark steps between the baseline and the full program: parsing plus the clock read, and
/// plus the flow-table lookup (never attached by the agent).
pub const XDP_STEP_PROGRAMS: [&str; 2] = ["detector_xdp_step_clock", "detector_xdp_step_lookup"];

/// Map names in the object.
pub mod maps {
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const CONFIG: &str = "CONFIG";
    pub const BLOCKLIST: &str = "BLOCKLIST";
    /// One u32: the blocklist's generation, moved on with every insert into BLOCKLIST (0: never;
    /// the program skips BLOCKLIST while it is 0 and looks a flow up once per generation).
    pub const BLOCKLIST_GEN: &str = "BLOCKLIST_GEN";
    pub const STATS: &str = "STATS";
    pub const PROC_EVENTS: &str = "PROC_EVENTS";
    pub const SOCKETS: &str = "SOCKETS";
}

/// Map sizes chosen at load time.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Flow-table entries.
    pub flow_table: u32,
    /// Flow ring buffer, bytes (a power of two, at least one page).
    pub flow_ringbuf: u32,
    /// Process-event ring buffer, bytes (a power of two, at least one page).
    pub proc_ringbuf: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            flow_table: detector_common::flow::DEFAULT_TABLE_SIZE,
            flow_ringbuf: 4 << 20,
            proc_ringbuf: 1 << 20,
        }
    }
}

/// Checks a ring-buffer size: the kernel wants a power-of-two multiple of the page size.
pub fn check_ringbuf_size(what: &str, bytes: u32) -> anyhow::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    if bytes < page || !bytes.is_power_of_two() {
        return Err(anyhow!(
            "{what} must be a power of two of at least {page} bytes (the page size), got {bytes}"
        ));
    }
    Ok(())
}

/// Loads the embedded object, or the one at `path`, with the given map sizes.
pub fn load(path: Option<&Path>, sizes: &Sizes) -> anyhow::Result<Ebpf> {
    check_ringbuf_size("the flow ring buffer size", sizes.flow_ringbuf)?;
    check_ringbuf_size("the process ring buffer size", sizes.proc_ringbuf)?;
    if sizes.flow_table == 0 {
        return Err(anyhow!("the flow table size must be at least 1"));
    }
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(maps::FLOWS, sizes.flow_table)
        .map_max_entries(maps::FLOW_EVENTS, sizes.flow_ringbuf)
        .map_max_entries(maps::PROC_EVENTS, sizes.proc_ringbuf);
    match path {
        Some(p) => {
            let bytes = std::fs::read(p)
                .with_context(|| format!("cannot read eBPF object {}", p.display()))?;
            loader
                .load(&bytes)
                .with_context(|| format!("cannot load eBPF object {} ({PRIVILEGES})", p.display()))
        }
        None => loader
            .load(OBJECT)
            .with_context(|| format!("cannot load the embedded eBPF object ({PRIVILEGES})")),
    }
}

/// Writes the flow-table settings into the CONFIG map.
pub fn write_config(ebpf: &mut Ebpf, cfg: &FlowConfig) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or_else(|| anyhow!("the eBPF object has no {} map", maps::CONFIG))?;
    let mut config: Array<&mut MapData, FlowConfig> = Array::try_from(map)?;
    config
        .set(0, cfg, 0)
        .context("cannot write the flow configuration")?;
    Ok(())
}

/// What was attached where, for the start-up report and the clean detach.
#[derive(Debug)]
pub enum Link {
    Xdp {
        iface: String,
        id: XdpLinkId,
        /// The mode it runs in: "native" or "skb".
        mode: &'static str,
        /// Why native mode was refused, where `auto` fell back to generic mode.
        fallback: Option<String>,
    },
    TcEgress {
        iface: String,
        id: SchedClassifierLinkId,
    },
    TracePoint {
        program: &'static str,
        target: String,
        id: TracePointLinkId,
    },
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Xdp {
                iface,
                mode,
                fallback: None,
                ..
            } => write!(f, "XDP ingress on {iface} ({mode} mode)"),
            Link::Xdp {
                iface,
                mode,
                fallback: Some(why),
                ..
            } => write!(
                f,
                "XDP ingress on {iface} ({mode} mode; native mode was refused: {why})"
            ),
            Link::TcEgress { iface, .. } => write!(f, "TC egress on {iface}"),
            Link::TracePoint {
                program, target, ..
            } => write!(f, "{program} on tracepoint {target}"),
        }
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    <&mut T>::try_from(prog).with_context(|| format!("program {name} has an unexpected type"))
}

/// What to check when the kernel refuses to load: most often, missing privileges.
const PRIVILEGES: &str = "the agent needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN";

/// Loads the flow programs into the kernel (once, before attaching anywhere).
pub fn load_flow_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    program_mut::<Xdp>(ebpf, XDP_PROGRAM)?
        .load()
        .with_context(|| format!("the kernel rejected {XDP_PROGRAM} ({PRIVILEGES})"))?;
    program_mut::<SchedClassifier>(ebpf, TC_EGRESS_PROGRAM)?
        .load()
        .with_context(|| format!("the kernel rejected {TC_EGRESS_PROGRAM} ({PRIVILEGES})"))?;
    Ok(())
}

/// How XDP is attached (`agent.xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    /// Native (driver) mode, and generic (skb) mode on each interface whose driver refuses it.
    Auto,
    /// Native mode only: fails where the driver cannot run XDP (virtio_net with one queue
    /// pair, a veth whose MTU is too large for a page, devices without XDP support).
    Native,
    /// Generic mode: any interface, after the kernel has built its socket buffer (slower).
    Skb,
}

impl std::str::FromStr for XdpAttach {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "skb" => Ok(Self::Skb),
            _ => Err(format!(
                "agent.xdp_mode must be \"auto\", \"native\" or \"skb\", got {s:?}"
            )),
        }
    }
}

/// Attaches XDP (ingress) to `iface` as `how` says; the link tells which mode it got.
pub fn attach_xdp(ebpf: &mut Ebpf, iface: &str, how: XdpAttach) -> anyhow::Result<Link> {
    let prog = program_mut::<Xdp>(ebpf, XDP_PROGRAM)?;
    let (id, mode, fallback) = match how {
        XdpAttach::Native => {
            let id = prog.attach(iface, XdpMode::Driver).with_context(|| {
                format!("cannot attach XDP to {iface} in native mode (agent.xdp_mode = \"native\"; \"auto\" falls back to generic mode)")
            })?;
            (id, "native", None)
        }
        XdpAttach::Skb => {
            let id = prog
                .attach(iface, XdpMode::Skb)
                .with_context(|| format!("cannot attach XDP to {iface} in generic (skb) mode"))?;
            (id, "skb", None)
        }
        // Not the kernel's own choice (flags 0): it picks native mode whenever the driver has
        // an XDP hook, and virtio_net has one that refuses a single queue pair.
        XdpAttach::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native", None),
            Err(native) => {
                let why = format!("{:#}", anyhow::Error::from(native));
                let id = prog.attach(iface, XdpMode::Skb).with_context(|| {
                    format!("cannot attach XDP to {iface}: native mode refused ({why}), and generic (skb) mode too")
                })?;
                (id, "skb", Some(why))
            }
        },
    };
    Ok(Link::Xdp {
        iface: iface.to_string(),
        id,
        mode,
        fallback,
    })
}

/// Attaches the TC egress program to `iface` (TCX on kernels ≥ 6.6, else a clsact qdisc).
pub fn attach_tc_egress(ebpf: &mut Ebpf, iface: &str) -> anyhow::Result<Link> {
    let prog = program_mut::<SchedClassifier>(ebpf, TC_EGRESS_PROGRAM)?;
    let id = match prog.attach(iface, TcAttachType::Egress) {
        Ok(id) => id,
        Err(first) => {
            // Older kernels need the clsact qdisc first; it may already be there.
            let _ = tc::qdisc_add_clsact(iface);
            prog.attach(iface, TcAttachType::Egress)
                .map_err(|_| first)
                .with_context(|| format!("cannot attach TC egress to {iface}"))?
        }
    };
    Ok(Link::TcEgress {
        iface: iface.to_string(),
        id,
    })
}

/// A tracepoint program, where it attaches, and the record fields it reads.
pub struct TracePointSpec {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [(&'static str, usize, usize)],
}

const SYSCALL_ENTER_ADDR: &[(&str, usize, usize)] = &[("uservaddr", 24, 8)];
const SYSCALL_ENTER_PEER: &[(&str, usize, usize)] = &[("upeer_sockaddr", 24, 8)];
const SYSCALL_EXIT: &[(&str, usize, usize)] = &[("ret", 16, 8)];

/// Every tracepoint the process programs use, with the layout they were written against.
pub const TRACEPOINTS: &[TracePointSpec] = &[
    TracePointSpec {
        program: "sched_process_fork",
        category: "sched",
        name: "sched_process_fork",
        fields: &[("parent_pid", 12, 4), ("child_pid", 20, 4)],
    },
    TracePointSpec {
        program: "sched_process_exec",
        category: "sched",
        name: "sched_process_exec",
        fields: &[("filename", 8, 4), ("pid", 12, 4)],
    },
    TracePointSpec {
        program: "sched_process_exit",
        category: "sched",
        name: "sched_process_exit",
        fields: &[("group_dead", 32, 1)],
    },
    TracePointSpec {
        program: "sys_enter_connect",
        category: "syscalls",
        name: "sys_enter_connect",
        fields: SYSCALL_ENTER_ADDR,
    },
    TracePointSpec {
        program: "sys_exit_connect",
        category: "syscalls",
        name: "sys_exit_connect",
        fields: SYSCALL_EXIT,
    },
    TracePointSpec {
        program: "sys_enter_accept",
        category: "syscalls",
        name: "sys_enter_accept",
        fields: SYSCALL_ENTER_PEER,
    },
    TracePointSpec {
        program: "sys_enter_accept",
        category: "syscalls",
        name: "sys_enter_accept4",
        fields: SYSCALL_ENTER_PEER,
    },
    TracePointSpec {
        program: "sys_exit_accept",
        category: "syscalls",
        name: "sys_exit_accept",
        fields: SYSCALL_EXIT,
    },
    TracePointSpec {
        program: "sys_exit_accept",
        category: "syscalls",
        name: "sys_exit_accept4",
        fields: SYSCALL_EXIT,
    },
    TracePointSpec {
        program: "inet_sock_set_state",
        category: "sock",
        name: "inet_sock_set_state",
        fields: &[
            ("skaddr", 8, 8),
            ("oldstate", 16, 4),
            ("newstate", 20, 4),
            ("sport", 24, 2),
            ("dport", 26, 2),
            ("family", 28, 2),
            ("protocol", 30, 2),
            ("saddr", 32, 4),
            ("daddr", 36, 4),
            ("saddr_v6", 40, 16),
            ("daddr_v6", 56, 16),
        ],
    },
];

/// Attaches every tracepoint program; each failure is reported, not fatal: flows still work
/// without process events.
pub fn attach_tracepoints(
    ebpf: &mut Ebpf,
    tracefs_path: &Path,
) -> (Vec<Link>, Vec<(String, anyhow::Error)>) {
    let mut links = Vec::new();
    let mut failures = Vec::new();
    for spec in TRACEPOINTS {
        let target = format!("{}/{}", spec.category, spec.name);
        let result = tracefs::check_layout(tracefs_path, spec.category, spec.name, spec.fields)
            .and_then(|()| {
                let prog = program_mut::<TracePoint>(ebpf, spec.program)?;
                if prog.fd().is_err() {
                    prog.load()
                        .with_context(|| format!("the kernel rejected {}", spec.program))?;
                }
                prog.attach(spec.category, spec.name)
                    .with_context(|| format!("cannot attach {} to {target}", spec.program))
            });
        match result {
            Ok(id) => links.push(Link::TracePoint {
                program: spec.program,
                target,
                id,
            }),
            Err(e) => failures.push((format!("{} on tracepoint {target}", spec.program), e)),
        }
    }
    (links, failures)
}

/// Detaches one link; errors (e.g. the interface is gone) are returned for logging.
pub fn detach(ebpf: &mut Ebpf, link: Link) -> anyhow::Result<()> {
    match link {
        Link::Xdp { id, .. } => program_mut::<Xdp>(ebpf, XDP_PROGRAM)?.detach(id)?,
        Link::TcEgress { id, .. } => {
            program_mut::<SchedClassifier>(ebpf, TC_EGRESS_PROGRAM)?.detach(id)?
        }
        Link::TracePoint { program, id, .. } => {
            program_mut::<TracePoint>(ebpf, program)?.detach(id)?
        }
    }
    Ok(())
}

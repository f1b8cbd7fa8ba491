//! `detector run`: load and attach the programs, stream flow and process records as JSON lines,
//! expire idle flows, and detach cleanly on SIGINT/SIGTERM.

use std::{collections::HashSet, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::XdpMode,
    Ebpf,
};
use detector_common::{
    flow::{self, stat, FlowConfig, FlowKey, FlowRecord, FlowState, Reason},
    proc::{ProcEvent, SockKey, SockOwner},
    user::read_item,
};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    clock::{self, TimeBase},
    ebpf::{self, maps, Link, Sizes},
    iface,
    output::JsonLines,
    record::{addr, cstr, FlowJson, ProcessJson, ProcessRef},
    tracefs,
};

/// Everything `detector run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Interfaces to attach to; empty means the default-route interface.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// JSON lines go here (None or "-" = stdout).
    pub output: Option<PathBuf>,
    pub flow: FlowConfig,
    pub sizes: Sizes,
    /// Load this object instead of the embedded one.
    pub object: Option<PathBuf>,
    /// How often idle flows are looked for.
    pub sweep_interval: Duration,
    /// How often a stats line is written (also written once at exit).
    pub stats_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::Default,
            output: None,
            flow: FlowConfig::DEFAULT,
            sizes: Sizes::default(),
            object: None,
            sweep_interval: Duration::from_secs(1),
            stats_interval: Duration::from_secs(10),
        }
    }
}

/// Kernel counters, summed over CPUs, as a JSON line.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StatsJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts_ns: u64,
    pub packets: u64,
    pub malformed: u64,
    pub not_ip: u64,
    pub blocked: u64,
    /// Flow records lost because the ring buffer was full.
    pub ringbuf_full: u64,
    pub flows_created: u64,
    pub records: u64,
    pub table_full: u64,
    /// Process events lost because their ring buffer was full.
    pub proc_ringbuf_full: u64,
    /// Records the agent read and wrote (flow and process).
    pub written: u64,
}

/// Sums the per-CPU STATS counters.
pub fn read_stats(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<[u64; stat::COUNT as usize]> {
    let mut out = [0u64; stat::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = map
            .get(&(i as u32), 0)
            .with_context(|| format!("cannot read counter {}", stat::NAMES[i]))?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

impl StatsJson {
    fn new(c: &[u64; stat::COUNT as usize], written: u64) -> Self {
        Self {
            kind: "stats",
            ts_ns: TimeBase::monotonic().to_unix_ns(clock::monotonic_ns()),
            packets: c[stat::PACKETS as usize],
            malformed: c[stat::MALFORMED as usize],
            not_ip: c[stat::NOT_IP as usize],
            blocked: c[stat::BLOCKED as usize],
            ringbuf_full: c[stat::RINGBUF_FULL as usize],
            flows_created: c[stat::FLOWS_CREATED as usize],
            records: c[stat::RECORDS as usize],
            table_full: c[stat::TABLE_FULL as usize],
            proc_ringbuf_full: c[stat::PROC_RINGBUF_FULL as usize],
            written,
        }
    }
}

/// Finds the process that owns a flow's local end, through the kernel's SOCKETS map.
pub struct Attribution {
    sockets: Option<HashMap<MapData, SockKey, SockOwner>>,
    local: HashSet<IpAddr>,
}

impl Attribution {
    /// Refreshes the set of local addresses (they change as interfaces come and go).
    pub fn refresh(&mut self) {
        self.local = iface::local_addresses();
    }

    /// The owner of the flow's local TCP socket, if the map knows it.
    pub fn lookup(&self, key: &FlowKey) -> Option<ProcessRef> {
        let sockets = self.sockets.as_ref()?;
        if key.proto != 6 {
            return None;
        }
        let ends = [
            (&key.addr_lo, key.port_lo, &key.addr_hi, key.port_hi),
            (&key.addr_hi, key.port_hi, &key.addr_lo, key.port_lo),
        ];
        for (local, lport, remote, rport) in ends {
            if !self.local.contains(&addr(key.family, local)) {
                continue;
            }
            let exact = SockKey {
                local_addr: *local,
                remote_addr: *remote,
                local_port: lport,
                remote_port: rport,
                family: key.family,
                protocol: key.proto,
                _pad: [0; 2],
            };
            let listener = SockKey {
                remote_addr: [0; 16],
                remote_port: 0,
                ..exact
            };
            let any = SockKey {
                local_addr: [0; 16],
                ..listener
            };
            for k in [exact, listener, any] {
                if let Ok(o) = sockets.get(&k, 0) {
                    return Some(ProcessRef {
                        pid: o.pid,
                        uid: o.uid,
                        comm: cstr(&o.comm),
                    });
                }
            }
        }
        None
    }
}

/// Parent pid from /proc, for processes that existed before the agent saw their fork.
fn ppid_from_proc(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The comm field may contain spaces and parentheses: parse after the last ')'.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Writes records as JSON lines.
pub struct Sink {
    pub out: JsonLines,
    pub time: TimeBase,
    pub attribution: Attribution,
    pub written: u64,
}

impl Sink {
    /// Writes one flow record, with the owning process when known.
    pub fn flow(&mut self, key: &FlowKey, state: &FlowState, reason: Reason) -> anyhow::Result<()> {
        let mut json = FlowJson::new(key, state, reason, self.time);
        json.process = self.attribution.lookup(key);
        self.out.write(&json)?;
        self.written += 1;
        Ok(())
    }

    /// Writes one process event.
    pub fn process(&mut self, ev: &ProcEvent) -> anyhow::Result<()> {
        if let Some(mut json) = ProcessJson::new(ev, self.time) {
            if json.ppid == 0 && json.pid != 0 {
                json.ppid = ppid_from_proc(json.pid);
            }
            self.out.write(&json)?;
            self.written += 1;
        }
        Ok(())
    }
}

/// Reads every record waiting in the flow ring buffer.
fn drain_flows(rb: &mut RingBuf<MapData>, sink: &mut Sink) -> anyhow::Result<usize> {
    let mut n = 0;
    while let Some(item) = rb.next() {
        match read_item::<FlowRecord>(&item).and_then(|r| Some((Reason::from_u8(r.reason)?, r))) {
            Some((reason, rec)) => sink.flow(&rec.key, &rec.state, reason)?,
            None => warn!(len = item.len(), "skipped a malformed flow record"),
        }
        n += 1;
    }
    Ok(n)
}

/// Reads every event waiting in the process ring buffer.
fn drain_procs(rb: &mut RingBuf<MapData>, sink: &mut Sink) -> anyhow::Result<usize> {
    let mut n = 0;
    while let Some(item) = rb.next() {
        match read_item::<ProcEvent>(&item) {
            Some(ev) => sink.process(&ev)?,
            None => warn!(len = item.len(), "skipped a malformed process event"),
        }
        n += 1;
    }
    Ok(n)
}

/// Emits final records for flows idle past the timeout (or all of them, when `all`), and
/// removes them from the table. Returns how many were removed.
pub fn sweep(
    flows: &mut HashMap<MapData, FlowKey, FlowState>,
    sink: &mut Sink,
    cfg: &FlowConfig,
    now_mono: u64,
    all: bool,
) -> anyhow::Result<usize> {
    // Collect first: deleting while walking with get_next_key restarts the walk.
    let mut expired = Vec::new();
    for entry in flows.iter() {
        let (key, state) = match entry {
            Ok(kv) => kv,
            Err(e) => {
                warn!("cannot read the flow table: {e}");
                break;
            }
        };
        if all || flow::idle_expired(&state, now_mono, cfg) {
            expired.push((key, state));
        }
    }
    let reason = if all {
        Reason::Flush
    } else {
        Reason::IdleTimeout
    };
    for (key, state) in &expired {
        // Every flow ends with exactly one final record, even when nothing changed since its
        // last one (e.g. a `rst` record): consumers keep one row per flow from it.
        sink.flow(key, state, reason)?;
        // A packet may have refreshed the entry since we read it; it then starts a new flow
        // on its next packet. Losing that one packet's count is the price of not locking.
        let _ = flows.remove(key);
    }
    Ok(expired.len())
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no {name} map"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Fail fast on what the operator can fix, before touching the kernel.
    let tracefs_path = tracefs::find()?;
    let interfaces = if opts.interfaces.is_empty() {
        vec![iface::default_route()?]
    } else {
        opts.interfaces.clone()
    };
    for name in &interfaces {
        iface::index(name)?;
    }
    let out = JsonLines::open(opts.output.as_deref())?;

    let mut ebpf = ebpf::load(opts.object.as_deref(), &opts.sizes)?;
    ebpf::write_config(&mut ebpf, &opts.flow)?;
    // Log lines from the eBPF programs (aya-log), forwarded into our log. Must stay alive:
    // dropping it closes its map.
    let mut ebpf_log = match aya_log::EbpfLogger::init(&mut ebpf) {
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

    let mut links: Vec<Link> = Vec::new();
    for name in &interfaces {
        for attach in [
            ebpf::attach_xdp(&mut ebpf, name, opts.xdp_mode),
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
    if !links.iter().any(|l| matches!(l, Link::Xdp { .. })) {
        bail!(
            "XDP could not be attached to any of {}",
            interfaces.join(", ")
        );
    }
    let (tp_links, tp_failures) = ebpf::attach_tracepoints(&mut ebpf, &tracefs_path);
    for link in tp_links {
        info!("attached {link}");
        links.push(link);
    }
    for (what, e) in &tp_failures {
        warn!("not attached: {what}: {e:#}");
    }

    // SAFETY (both): the RingBuf owns its map fd and keeps it open for as long as the AsyncFd
    // that wraps it lives.
    let mut flow_rb =
        unsafe { AsyncFd::register(take::<RingBuf<MapData>>(&mut ebpf, maps::FLOW_EVENTS)?) }
            .context("cannot poll the flow ring buffer")?;
    let mut proc_rb =
        unsafe { AsyncFd::register(take::<RingBuf<MapData>>(&mut ebpf, maps::PROC_EVENTS)?) }
            .context("cannot poll the process ring buffer")?;
    let mut flows: HashMap<MapData, FlowKey, FlowState> = take(&mut ebpf, maps::FLOWS)?;
    let stats: PerCpuArray<MapData, u64> = take(&mut ebpf, maps::STATS)?;
    let mut sockets: HashMap<MapData, SockKey, SockOwner> = take(&mut ebpf, maps::SOCKETS)?;
    let seeded = crate::sockets::seed(&mut sockets);
    info!(
        seeded,
        "learned the owners of existing TCP sockets from /proc"
    );

    let mut sink = Sink {
        out,
        time: TimeBase::monotonic(),
        attribution: Attribution {
            sockets: Some(sockets),
            local: iface::local_addresses(),
        },
        written: 0,
    };
    info!(
        output = %sink.out.target,
        "streaming flow and process records; SIGINT or SIGTERM stops"
    );

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sweep_tick = tokio::time::interval(opts.sweep_interval);
    let mut stats_tick = tokio::time::interval(opts.stats_interval);
    stats_tick.tick().await;
    let mut last_lost = 0u64;
    loop {
        tokio::select! {
            guard = flow_rb.readable_mut() => {
                let mut guard = guard.context("flow ring buffer poll failed")?;
                drain_flows(guard.get_inner_mut(), &mut sink)?;
                guard.clear_ready();
                sink.out.flush()?;
            }
            guard = proc_rb.readable_mut() => {
                let mut guard = guard.context("process ring buffer poll failed")?;
                drain_procs(guard.get_inner_mut(), &mut sink)?;
                guard.clear_ready();
                sink.out.flush()?;
            }
            _ = sweep_tick.tick() => {
                sink.attribution.refresh();
                sweep(&mut flows, &mut sink, &opts.flow, clock::monotonic_ns(), false)?;
                sink.out.flush()?;
            }
            _ = stats_tick.tick() => {
                let c = read_stats(&stats)?;
                let lost = c[stat::RINGBUF_FULL as usize] + c[stat::PROC_RINGBUF_FULL as usize];
                if lost > last_lost {
                    warn!(lost = lost - last_lost, "records lost: ring buffer full (raise --flow-ringbuf-bytes)");
                    last_lost = lost;
                }
                sink.out.write(&StatsJson::new(&c, sink.written))?;
                sink.out.flush()?;
            }
            guard = async { ebpf_log.as_mut().unwrap().readable_mut().await }, if ebpf_log.is_some() => {
                let mut guard = guard.context("eBPF log poll failed")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
        }
    }

    // Detach first so that the flush below sees a table nobody updates any more.
    for link in links.into_iter().rev() {
        let what = link.to_string();
        match ebpf::detach(&mut ebpf, link) {
            Ok(()) => info!("detached {what}"),
            Err(e) => warn!("detaching {what} failed: {e:#}"),
        }
    }
    drain_flows(flow_rb.get_mut(), &mut sink)?;
    drain_procs(proc_rb.get_mut(), &mut sink)?;
    let flushed = sweep(
        &mut flows,
        &mut sink,
        &opts.flow,
        clock::monotonic_ns(),
        true,
    )?;
    let c = read_stats(&stats)?;
    sink.out.write(&StatsJson::new(&c, sink.written))?;
    sink.out.flush()?;
    info!(
        flushed,
        packets = c[stat::PACKETS as usize],
        records = c[stat::RECORDS as usize],
        ringbuf_full = c[stat::RINGBUF_FULL as usize],
        malformed = c[stat::MALFORMED as usize],
        "stopped"
    );
    Ok(())
}

//! `detector run`: load and attach the programs, read both ring buffers, write flow and process
//! records, score every flow record and act by policy (alert, drop, shadow), adapt the model
//! from confirmed incidents, serve the control socket and metrics, expire idle flows and
//! blocklist entries, reload the configuration on SIGHUP, and detach cleanly on SIGINT/SIGTERM.

use std::{
    collections::HashMap as StdHashMap,
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use aya::{
    maps::{HashMap, IterableMap, MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use detector_common::{
    block::BlockKey,
    flow::{self, stat, FlowConfig, FlowKey, FlowRecord, FlowState, Reason},
    proc::{ProcEvent, SockKey, SockOwner},
    user::{item_in_place, read_item},
};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{
    baseline::{BaselineDone, BaselineJob},
    blocklist::{self, Block, Blocklist},
    clock::{self, TimeBase},
    config::Config,
    control::{self, Envelope, Request},
    detect::{Actions, AlertJson, DetectConfig, Detector, FamilySignature},
    dismissals::{self, Dismissal, Dismissals},
    ebpf::{self, maps, Link, Sizes, XdpAttach},
    iface,
    incidents::{self, HistoryEntry, ModelStore, Selector},
    metrics::Metrics,
    model::{Model, ScorePath},
    output::JsonLines,
    policy::Policy,
    record::{FlowJson, ProcessJson},
    sockets::Attribution,
    state, tracefs,
};

/// Everything `detector run` needs: the configuration (with command-line overrides applied)
/// and what only the command line sets.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: Config,
    /// The file the configuration came from, re-read on SIGHUP (None: defaults, no reload).
    pub config_path: Option<PathBuf>,
    /// Load this object instead of the embedded one.
    pub object: Option<PathBuf>,
    /// How often idle flows and expired blocks are looked for.
    pub sweep_interval: Duration,
    /// How often a stats line is written (also written once at exit).
    pub stats_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            config: Config::default(),
            config_path: None,
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
    /// Records the agent read (flow and process).
    pub read: u64,
    /// Flow records scored.
    pub scored: u64,
    /// Active blocklist entries.
    pub blocks: usize,
    /// Alert events held back by `policy.max_alerts_per_s` since the start.
    pub alerts_rate_limited: u64,
    /// Records that reached a threshold on too little evidence (`policy.min_evidence`).
    pub thin_evidence: u64,
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

/// The agent's output files: records and events may share one (stdout, say), written through
/// one buffer so that lines never interleave.
pub struct Outputs {
    files: Vec<JsonLines>,
    records: Option<usize>,
    events: usize,
}

impl Outputs {
    /// Opens the targets ("-" = stdout, "" = none for records).
    pub fn open(records: &str, events: &str) -> anyhow::Result<Self> {
        let open = |t: &str| JsonLines::open(Some(std::path::Path::new(t)));
        let mut files = vec![open(events)?];
        let records = match records {
            "" => None,
            r if r == events => Some(0),
            r => {
                files.push(open(r)?);
                Some(1)
            }
        };
        Ok(Self {
            files,
            records,
            events: 0,
        })
    }
    /// Writes a record line (flow, process, stats) when records are on.
    pub fn record<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        match self.records {
            Some(i) => self.files[i].write(v),
            None => Ok(()),
        }
    }
    /// Writes an event line (alert).
    pub fn event<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        self.files[self.events].write(v)
    }
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.files.iter_mut().try_for_each(|f| f.flush())
    }
}

/// Records taken from the flow ring buffer before the outputs are flushed and the other work
/// (batch deadlines, the control socket, stats) gets its turn. Without a bound, a flood that
/// keeps the ring buffer from ever running dry kept the loop inside one wakeup for the whole
/// flood, and its alerts sat in the output buffer: seconds of alert latency (BENCHMARKS.md).
const DRAIN_MAX: usize = 4096;

/// Live actions: the kernel blocklist, the events output, and process lookups for alerts.
struct LiveActions<'a> {
    blocklist: &'a mut Blocklist<blocklist::KernelStore>,
    out: &'a mut Outputs,
    attribution: &'a Attribution,
}

impl Actions for LiveActions<'_> {
    fn blocked(&self, key: &BlockKey) -> bool {
        self.blocklist.contains(key)
    }
    fn block(&mut self, b: Block) -> anyhow::Result<()> {
        let what = blocklist::describe(&b.key);
        let now_unix = TimeBase::monotonic().to_unix_ns(clock::monotonic_ns());
        match self.blocklist.block(b, now_unix, clock::monotonic_ns()) {
            Ok(()) => info!("blocked {what}"),
            // Not fatal: the kernel map may be full, or the state file unwritable. Say so and
            // keep serving; the alert still goes out.
            Err(e) => error!("blocking {what} failed: {e:#}"),
        }
        Ok(())
    }
    fn alert(&mut self, a: &AlertJson) -> anyhow::Result<()> {
        self.out.event(a)
    }
    fn process_of(&self, key: &FlowKey) -> Option<crate::record::ProcessRef> {
        self.attribution.lookup(key)
    }
}

/// Emits final records for flows idle past the timeout (or all of them, when `all`), removes
/// them from the table, and returns them.
pub fn sweep(
    flows: &mut HashMap<MapData, FlowKey, FlowState>,
    cfg: &FlowConfig,
    now_mono: u64,
    all: bool,
) -> Vec<(FlowKey, FlowState)> {
    sweep_counting(flows, cfg, now_mono, all).0
}

/// [`sweep`], also returning how many entries the table held when walked.
fn sweep_counting(
    flows: &mut HashMap<MapData, FlowKey, FlowState>,
    cfg: &FlowConfig,
    now_mono: u64,
    all: bool,
) -> (Vec<(FlowKey, FlowState)>, u64) {
    // Collect first: deleting while walking with get_next_key restarts the walk.
    let mut expired = Vec::new();
    let mut seen = 0u64;
    for entry in flows.iter() {
        seen += 1;
        match entry {
            Ok((key, state)) if all || flow::idle_expired(&state, now_mono, cfg) => {
                expired.push((key, state))
            }
            Ok(_) => {}
            Err(e) => {
                warn!("cannot read the flow table: {e}");
                break;
            }
        }
    }
    for (key, _) in &expired {
        // A packet may have refreshed the entry since we read it; it then starts a new flow
        // on its next packet. Losing that one packet's count is the price of not locking.
        let _ = flows.remove(key);
    }
    (expired, seen)
}

/// The idle-timeout sweep on a thread of its own, over a second handle to the flow table: a
/// walk of a full table is two syscalls per entry (130,000 for 65,536 flows, ~0.1 s), and on the
/// agent's loop it held up every alert behind it once a second under a flood (BENCHMARKS.md).
/// Expired flows come back through `tx`, at most [`DRAIN_MAX`] at a time; the thread ends when
/// `stop` is set or the loop is gone.
fn spawn_sweeper(
    flows: &HashMap<MapData, FlowKey, FlowState>,
    cfg: Arc<std::sync::Mutex<FlowConfig>>,
    every: Duration,
    tx: mpsc::Sender<Vec<(FlowKey, FlowState)>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    entries: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use std::os::fd::AsFd;
    let fd = flows
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate the flow table's descriptor")?;
    let data = MapData::from_fd(fd).context("cannot open the flow table a second time")?;
    let mut table: HashMap<MapData, FlowKey, FlowState> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .context("the flow table has an unexpected type")?;
    std::thread::Builder::new()
        .name("detector-sweep".into())
        .spawn(move || {
            // The lowest priority (nice 19) for this thread alone: a walk of a full table takes
            // ~0.1 s of CPU, and at equal weight it took half of the core from the agent's loop
            // for that long (alerts waited behind it under a flood). The loop leaves it the CPU
            // it does not use; the walk is not urgent.
            // SAFETY: setpriority on this thread's own id changes its nice value only.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) }
                != 0
            {
                warn!(
                    "cannot lower the sweep thread's priority: {}",
                    std::io::Error::last_os_error()
                );
            }
            let tick = Duration::from_millis(20).min(every);
            let mut next = Instant::now() + every;
            while !stop.load(Relaxed) {
                std::thread::sleep(tick);
                if Instant::now() < next {
                    continue;
                }
                next += every;
                let cfg = *cfg.lock().unwrap_or_else(|e| e.into_inner());
                let (expired, seen) =
                    sweep_counting(&mut table, &cfg, clock::monotonic_ns(), false);
                entries.store(seen.saturating_sub(expired.len() as u64), Relaxed);
                // In pieces of at most DRAIN_MAX: the loop scores one piece per turn, and the
                // ring buffer has its turns in between. Whole, a spoofed flood's sweep (tens
                // of thousands of one-packet flows a second) held every alert behind it for
                // tens of milliseconds (BENCHMARKS.md, flood).
                for piece in expired.chunks(DRAIN_MAX) {
                    if tx.blocking_send(piece.to_vec()).is_err() {
                        return;
                    }
                }
            }
        })
        .context("cannot start the sweep thread")
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

/// The base model: the configured file, or the one compiled into the binary, as the agent and
/// `replay --detect` both serve it. Novelty means "unlike this host's benign traffic": the
/// model's live-feature-set prototypes describe its training data, not this host (every foreign
/// flow is novel against the lab's), so they are removed; the agent fits the host's own once it
/// has seen enough quiet traffic. The version names the file as loaded.
pub fn base_model(cfg: &Config) -> anyhow::Result<(Model, String)> {
    let (mut m, version) = if cfg.scoring.model.is_empty() {
        let m = crate::model::default_model().context("the embedded default model is damaged")?;
        let version = format!("default-{}", &model_digest(&m)[..8]);
        (m, version)
    } else {
        let p = PathBuf::from(&cfg.scoring.model);
        let m =
            Model::load(&p).with_context(|| format!("cannot load the model {}", p.display()))?;
        let version = format!(
            "{}-{}",
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            &model_digest(&m)[..8]
        );
        (m, version)
    };
    // A model that alerts on probability or novelty serves no novelty until the host's own
    // baseline is fitted: its prototypes describe its training data, not this host. One
    // that requires both keeps them: they describe benign traffic of many networks, the
    // "unusual" of a host that has not been learnt yet.
    let requires = m
        .inputs
        .get(crate::features::LIVE_FEATURE_SET)
        .is_some_and(|l| l.rule.require_novelty);
    if !requires {
        m.prototypes.remove(crate::features::LIVE_FEATURE_SET);
    }
    Ok((m, version))
}

fn model_digest(m: &Model) -> String {
    use sha2::{Digest, Sha256};
    let bytes = m.to_bytes().unwrap_or_default();
    format!("{:x}", Sha256::digest(&bytes))
}

/// What a running adaptation sends back.
type AdaptResult = (
    anyhow::Result<crate::model::Adapted>,
    String,
    usize,
    Vec<f32>,
    oneshot::Sender<serde_json::Value>,
);

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut cfg = opts.config.clone();
    // Fail fast on what the operator can fix, before touching the kernel.
    let tracefs_path = tracefs::find()?;
    let interfaces = if cfg.agent.interfaces.is_empty() {
        vec![iface::default_route()?]
    } else {
        cfg.agent.interfaces.clone()
    };
    for name in &interfaces {
        iface::index(name)?;
    }
    let score_path: ScorePath = cfg.scoring.path.parse().map_err(|e: String| anyhow!(e))?;
    let xdp_attach: XdpAttach = cfg.agent.xdp_mode.parse().map_err(|e: String| anyhow!(e))?;
    // Without live prototypes until the host's own baseline is fitted (base_model).
    let (base, base_version) = base_model(&cfg)?;
    state::ensure_dir(&cfg.agent.state_dir)?;
    let mut store = ModelStore::open(&cfg.agent.state_dir, cfg.adaptation.keep_models)?;
    let (model, version) = match store.load_current() {
        Ok(Some((m, e))) => (m, e.version),
        Ok(None) => (base.clone(), base_version.clone()),
        Err(e) => {
            // A damaged host model must not keep the agent down: fall back, loudly.
            error!("{e:#}; using the base model {base_version}");
            (base.clone(), base_version.clone())
        }
    };
    let metrics = Arc::new(Metrics::default());
    let mut detector = Detector::new(
        Arc::new(model),
        version,
        score_path,
        Policy::new(cfg.policy.clone(), cfg.effective_allowlist()),
        DetectConfig {
            batch_size: cfg.scoring.batch_size,
            batch_deadline: cfg.scoring.batch_deadline.0,
            recent: cfg.adaptation.recent_records,
            context: cfg.context.tracker(),
            ..DetectConfig::default()
        },
        TimeBase::monotonic(),
        metrics.clone(),
    )?;
    detector.set_families(families(&store));
    let dismissed_path = dismissals::path(&cfg.agent.state_dir);
    // A damaged file is kept as it is (not overwritten by the next dismissal) and reported.
    let (mut dismissed, dismissed_broken) = match Dismissals::load(&dismissed_path) {
        Ok(d) => (d, None),
        Err(e) => {
            error!("{e:#}; no dismissals apply until the file is fixed or removed");
            (Dismissals::default(), Some(format!("{e:#}")))
        }
    };
    if !dismissed.dismissals.is_empty() {
        info!(
            dismissals = dismissed.dismissals.len(),
            "dismissed patterns restored from the state directory"
        );
    }
    detector.set_dismissed(dismissed.exemplars());
    let mut out = Outputs::open(&cfg.agent.records, &cfg.agent.events)?;
    let listener = control::bind(&cfg.agent.control_socket)?;
    let metrics_listener = match cfg.agent.metrics_listen.as_str() {
        "" => None,
        a => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen for metrics on {a}"))?,
        ),
    };

    let sizes = Sizes {
        flow_table: cfg.flows.table_size,
        flow_ringbuf: cfg.flows.ringbuf_bytes,
        proc_ringbuf: cfg.flows.proc_ringbuf_bytes,
    };
    let mut ebpf = ebpf::load(opts.object.as_deref(), &sizes)?;
    let mut flow_cfg = cfg.flow_config();
    ebpf::write_config(&mut ebpf, &flow_cfg)?;
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
    if !links.iter().any(|l| matches!(l, Link::Xdp { .. })) {
        bail!(
            "XDP could not be attached to any of {}",
            interfaces.join(", ")
        );
    }
    // The interfaces with programs on them, by index: one that is deleted (or replaced by
    // another of the same name) takes its programs with it, and is reported once.
    let mut watched: Vec<(String, u32)> = interfaces
        .iter()
        .filter(|n| links.iter().any(|l| matches!(l, Link::Xdp { iface: i, .. } | Link::TcEgress { iface: i, .. } if i == *n)))
        .filter_map(|n| iface::index(n).ok().map(|i| (n.clone(), i)))
        .collect();
    let mut removed: Vec<String> = Vec::new();
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
    let mut attribution = Attribution::new(Some(sockets));
    let mut blocks = Blocklist::new(
        blocklist::KernelStore {
            map: take(&mut ebpf, maps::BLOCKLIST)?,
            generation: take(&mut ebpf, maps::BLOCKLIST_GEN)?,
        },
        Some(blocklist::state_path(&cfg.agent.state_dir)),
    );
    let now_unix = || TimeBase::monotonic().to_unix_ns(clock::monotonic_ns());
    match blocks.restore(now_unix(), clock::monotonic_ns()) {
        Ok(n) => info!(
            restored = n,
            "blocklist entries restored from the state directory"
        ),
        Err(e) => error!("cannot restore the blocklist: {e:#}"),
    }

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Envelope>(16);
    // Requests that wait for a running baseline fit go back through this sender afterwards.
    let ctl_requeue = ctl_tx.clone();
    let mut deferred: Vec<Envelope> = Vec::new();
    tokio::spawn(control::serve(listener, ctl_tx));
    let (metrics_tx, mut metrics_rx) = mpsc::channel::<oneshot::Sender<()>>(4);
    if let Some(l) = metrics_listener {
        info!(listen = %cfg.agent.metrics_listen, "serving Prometheus metrics");
        tokio::spawn(crate::metrics::serve(l, metrics.clone(), metrics_tx));
    }
    let (adapt_tx, mut adapt_rx) = mpsc::channel::<AdaptResult>(1);
    let mut adapting = false;
    let (baseline_tx, mut baseline_rx) = mpsc::channel::<BaselineDone>(1);
    let mut fitting = false;
    let mut baseline_at: Option<Instant> = None;
    // Rows of the last baseline fit this agent made (status).
    let mut baseline_rows: Option<usize> = None;
    // The host's warm-up: learnt time over all runs, from the state directory.
    let warmup_path = crate::baseline::Warmup::path(&cfg.agent.state_dir);
    let mut warmup = crate::baseline::Warmup::load(&warmup_path).unwrap_or_else(|e| {
        error!("{e:#}; the warm-up starts over");
        crate::baseline::Warmup { learned_s: 0.0 }
    });
    let mut warm = warmup.done(cfg.adaptation.warmup.0);
    let mut learning_since = Instant::now();
    info!(
        learned_s = warmup.learned_s as u64,
        needed_s = cfg.adaptation.warmup.0.as_secs(),
        "{}",
        if warm {
            "this host has been learnt: its baseline is fitted from its next quiet records"
        } else {
            "learning this host (warm-up): alerting as out of the box until it is done"
        }
    );

    info!(
        model = %detector.model_version,
        path = %detector.path(),
        drop = ?cfg.policy.drop,
        "detecting; records to {:?}, alerts to {:?}; SIGINT or SIGTERM stops",
        cfg.agent.records,
        cfg.agent.events
    );
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut sweep_tick = tokio::time::interval(opts.sweep_interval);
    let sweep_cfg = Arc::new(std::sync::Mutex::new(flow_cfg));
    let sweep_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Flow-table occupancy as of the last sweep, for the metrics: counting it at each scrape
    // was one more full walk of the table on the agent's loop.
    let table_entries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (sweep_tx, mut sweep_rx) = mpsc::channel::<Vec<(FlowKey, FlowState)>>(4);
    let sweeper = spawn_sweeper(
        &flows,
        sweep_cfg.clone(),
        opts.sweep_interval,
        sweep_tx,
        sweep_stop.clone(),
        table_entries.clone(),
    )?;
    let mut stats_tick = tokio::time::interval(opts.stats_interval);
    stats_tick.tick().await;
    let mut last_lost = 0u64;
    let mut read = 0u64;

    let time = TimeBase::monotonic();
    // One record from the kernel (ring buffer or sweep): write it, queue it for scoring.
    // `$read_at` is when the agent's turn at the records began (one clock read per turn, not
    // per record): the scoring latency it starts is then at least the true one, never less.
    macro_rules! on_flow {
        ($key:expr, $state:expr, $reason:expr, $read_at:expr) => {{
            let (key, state, reason) = ($key, $state, $reason);
            // Up to three map lookups (syscalls) per TCP record: only when the record is
            // written; otherwise an alert looks its process up itself (`process_of`).
            let process = if out.records.is_some() {
                attribution.lookup(key)
            } else {
                None
            };
            read += 1;
            metrics.flow_records.fetch_add(1, Relaxed);
            if out.records.is_some() {
                let mut j = FlowJson::new(key, state, reason, time);
                j.process = process.clone();
                out.record(&j)?;
            }
            if detector.push(key, state, reason, process, $read_at) {
                detector.flush(&mut LiveActions {
                    blocklist: &mut blocks,
                    out: &mut out,
                    attribution: &attribution,
                })?;
            }
        }};
    }

    loop {
        let deadline = detector.deadline();
        tokio::select! {
            guard = flow_rb.readable_mut() => {
                let mut guard = guard.context("flow ring buffer poll failed")?;
                let read_at = Instant::now();
                let mut taken = 0;
                while let Some(item) = guard.get_inner_mut().next() {
                    match item_in_place::<FlowRecord>(&item).and_then(|r| Some((Reason::from_u8(r.reason)?, r))) {
                        Some((reason, rec)) => on_flow!(&rec.key, &rec.state, reason, read_at),
                        None => warn!(len = item.len(), "skipped a malformed flow record"),
                    }
                    taken += 1;
                    if taken == DRAIN_MAX {
                        break;
                    }
                }
                // Left ready when records remain: the loop comes straight back, after the
                // alerts written so far have gone out and the other branches had their turn.
                if taken < DRAIN_MAX {
                    guard.clear_ready();
                }
                out.flush()?;
            }
            guard = proc_rb.readable_mut() => {
                let mut guard = guard.context("process ring buffer poll failed")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    read += 1;
                    metrics.process_events.fetch_add(1, Relaxed);
                    match read_item::<ProcEvent>(&item) {
                        Some(ev) => {
                            if let Some(mut json) = ProcessJson::new(&ev, time) {
                                if json.ppid == 0 && json.pid != 0 {
                                    json.ppid = ppid_from_proc(json.pid);
                                }
                                out.record(&json)?;
                            }
                        }
                        None => warn!(len = item.len(), "skipped a malformed process event"),
                    }
                }
                guard.clear_ready();
                out.flush()?;
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() => {
                detector.flush(&mut LiveActions { blocklist: &mut blocks, out: &mut out, attribution: &attribution })?;
                out.flush()?;
            }
            Some(expired) = sweep_rx.recv() => {
                let read_at = Instant::now();
                for (key, state) in expired {
                    on_flow!(&key, &state, Reason::IdleTimeout, read_at);
                }
                out.flush()?;
            }
            _ = sweep_tick.tick() => {
                attribution.refresh();
                watched.retain(|(name, idx)| {
                    if iface::index(name).ok() == Some(*idx) {
                        return true;
                    }
                    warn!("interface {name} was removed: its XDP and TC programs went with it; the agent keeps running");
                    removed.push(name.clone());
                    false
                });
                warmup.learned_s += learning_since.elapsed().as_secs_f64();
                learning_since = Instant::now();
                if !warm && warmup.done(cfg.adaptation.warmup.0) {
                    warm = true;
                    info!("warm-up done: fitting this host's baseline; from then on only what is attack-like and unusual for this host alerts");
                }
                let due = warm && match baseline_at {
                    None => true,
                    Some(t) => t.elapsed() >= cfg.adaptation.baseline_refresh.0,
                };
                if due && !adapting && !fitting {
                    if let Some(job) = BaselineJob::prepare(&detector, cfg.adaptation.baseline_records, cfg.adaptation.host_novelty_quantile) {
                        fitting = true;
                        let tx = baseline_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.blocking_send(job.run());
                        });
                    }
                }
                match blocks.expire(now_unix()) {
                    Ok(gone) => for g in gone {
                        info!(hits = g.hits, "unblocked {} (expired)", blocklist::describe(&g.block.key));
                    },
                    Err(e) => error!("expiring blocklist entries failed: {e:#}"),
                }
                out.flush()?;
            }
            _ = stats_tick.tick() => {
                if let Err(e) = warmup.save(&warmup_path) {
                    warn!("cannot save the warm-up progress: {e:#}");
                }
                let c = read_stats(&stats)?;
                let lost = c[stat::RINGBUF_FULL as usize] + c[stat::PROC_RINGBUF_FULL as usize];
                if lost > last_lost {
                    warn!(lost = lost - last_lost, "records lost: ring buffer full (raise flows.ringbuf_bytes)");
                    last_lost = lost;
                }
                out.record(&stats_json(&c, read, &metrics, blocks.len(), &detector.policy))?;
                out.flush()?;
            }
            Some((req, reply)) = ctl_rx.recv() => {
                let answer = match req {
                    Request::Status {} => {
                        let c = read_stats(&stats).unwrap_or_default();
                        serde_json::json!({
                            "ok": true,
                            "uptime_s": started.elapsed().as_secs(),
                            "attached": links.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                            "xdp": links.iter().filter_map(|l| match l {
                                Link::Xdp { iface, mode, fallback, .. } => Some(serde_json::json!({"interface": iface, "mode": mode, "native_refused": fallback})),
                                _ => None,
                            }).collect::<Vec<_>>(),
                            "not_attached": tp_failures.iter().map(|(w, e)| format!("{w}: {e:#}")).collect::<Vec<_>>(),
                            "model": detector.model_version,
                            "scoring_path": detector.path(),
                            "policy": {"drop": cfg.policy.drop, "alert_threshold": detector.policy.alert_threshold(), "drop_threshold": cfg.policy.drop_threshold},
                            "records_read": read,
                            "records_per_s": read as f64 / started.elapsed().as_secs_f64().max(1e-3),
                            "scored": metrics.scored.load(Relaxed),
                            "alerts_rate_limited": detector.policy.rate_limited_alerts,
                            "thin_evidence": detector.policy.thin_evidence,
                            "blocks": blocks.blocks().map(|b| serde_json::json!({"what": blocklist::describe(&b.key), "expires_unix_ns": b.expires_unix_ns, "alert_id": b.alert_id, "family": b.family})).collect::<Vec<_>>(),
                            "kernel": stat::NAMES.iter().zip(c.iter()).map(|(n, v)| (n.to_string(), *v)).collect::<StdHashMap<_, _>>(),
                            "tracked_sources": detector.tracked().0,
                            "recent_records": detector.recent().len(),
                            "adaptations": metrics.adaptations.load(Relaxed),
                            "novelty": detector.has_baseline(),
                            "warmup": {"done": warm, "learned_s": warmup.learned_s as u64, "needed_s": cfg.adaptation.warmup.0.as_secs()},
                            "host_rule": detector.model().inputs.get(crate::features::LIVE_FEATURE_SET).is_some_and(|l| l.rule.require_novelty) && detector.has_baseline(),
                            "dismissals": dismissed.dismissals.len(),
                            "dismissed_alerts": metrics.dismissed_alerts.load(Relaxed),
                            "baseline_rows": baseline_rows,
                        })
                    }
                    Request::Dismiss { alert_ids, source, since_ns, until_ns } => {
                        let sel = match Selector::from_request(alert_ids, source.as_deref(), since_ns, until_ns) {
                            Ok(sel) => sel,
                            Err(e) => { reply.send(control::error(e)).ok(); continue; }
                        };
                        if let Some(e) = &dismissed_broken {
                            control::error(format!("dismissals are off: {e}"))
                        } else {
                            let id = format!("dismissal-{:x}", now_unix());
                            match Dismissal::select(detector.recent(), &sel, detector.policy.alert_threshold(), id.clone(), now_unix()) {
                                Err(e) => control::error(format!("{e:#}")),
                                Ok(dismissal) => {
                                    let (flows, selected) = (dismissal.flows, dismissal.selected.clone());
                                    let mut next = dismissed.clone();
                                    next.add(dismissal);
                                    match put_dismissals(next, &dismissed_path, &mut dismissed, &mut detector) {
                                        Err(e) => { error!("{e:#}"); control::error(format!("{e:#}")) }
                                        Ok(()) => {
                                            info!(%id, flows, %selected, "alerts dismissed as benign: patterns like these are no longer raised");
                                            serde_json::json!({"ok": true, "dismissal": id, "flows": flows, "dismissals": dismissed.dismissals.len()})
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Request::Dismissals {} => serde_json::json!({
                        "ok": true,
                        "dismissals": dismissed.dismissals.iter().map(|d| serde_json::json!({
                            "id": d.id, "created_unix_ns": d.created_unix_ns, "selected": d.selected,
                            "flows": d.flows, "exemplars": d.exemplars.len() / crate::features::LIVE_COUNT,
                        })).collect::<Vec<_>>(),
                    }),
                    Request::Undismiss { id } => {
                        if let Some(e) = &dismissed_broken {
                            control::error(format!("dismissals are off: {e}"))
                        } else {
                            let mut next = dismissed.clone();
                            if next.remove(&id) {
                                match put_dismissals(next, &dismissed_path, &mut dismissed, &mut detector) {
                                    Err(e) => { error!("{e:#}"); control::error(format!("{e:#}")) }
                                    Ok(()) => {
                                        info!(%id, "dismissal withdrawn: alerts like its flows are raised again");
                                        serde_json::json!({"ok": true, "withdrawn": id, "dismissals": dismissed.dismissals.len()})
                                    }
                                }
                            } else {
                                control::error(format!("no dismissal {id} (detector incident dismissals lists them)"))
                            }
                        }
                    }
                    Request::ModelHistory {} => serde_json::json!({
                        "ok": true,
                        "current": detector.model_version,
                        "base": base_version,
                        "history": store.entries(),
                    }),
                    Request::ModelRollback {} => match store.rollback() {
                        Err(e) => control::error(format!("{e:#}")),
                        Ok(prev) => {
                            let (m, v) = match &prev {
                                Some(_) => match store.load_current() {
                                    Ok(Some((m, e))) => (m, e.version),
                                    Ok(None) => (base.clone(), base_version.clone()),
                                    Err(e) => { reply.send(control::error(format!("{e:#}"))).ok(); continue; }
                                },
                                None => (base.clone(), base_version.clone()),
                            };
                            match detector.set_model(Arc::new(m), v.clone(), score_path) {
                                Ok(()) => {
                                    detector.set_families(families(&store));
                                    info!(model = %v, "rolled back");
                                    serde_json::json!({"ok": true, "model": v})
                                }
                                Err(e) => control::error(format!("{e:#}")),
                            }
                        }
                    },
                    Request::Incident { family, alert_ids, source, since_ns, until_ns } => {
                        if fitting {
                            // Held, as it came, until the fit ends (well under a second): an
                            // adaptation started from the model without the new baseline would,
                            // finishing later, replace the model that has it.
                            deferred.push((Request::Incident { family, alert_ids, source, since_ns, until_ns }, reply));
                            continue;
                        }
                        let sel = match Selector::from_request(alert_ids, source.as_deref(), since_ns, until_ns) {
                            Ok(sel) => sel,
                            Err(e) => { reply.send(control::error(e)).ok(); continue; }
                        };
                        if family == dismissals::FAMILY {
                            control::error(format!("`{family}` is reserved for dismissed alerts (detector incident dismiss)"))
                        } else if adapting {
                            control::error("an adaptation is already running; try again when it finishes")
                        } else {
                            match incidents::select(detector.recent(), &sel, detector.policy.alert_threshold(), 2000) {
                                Err(e) => control::error(format!("{e:#}")),
                                Ok(support) => {
                                    adapting = true;
                                    let model = detector.model().clone();
                                    let budget = cfg.adaptation.fpr_budget;
                                    let signature = crate::detect::exemplars(&support.positives, crate::detect::SIGNATURE_EXEMPLARS);
                                    let tx = adapt_tx.clone();
                                    info!(%family, flows = support.flows, "incident confirmed: adapting");
                                    tokio::task::spawn_blocking(move || {
                                        let r = incidents::adapt_model(&model, &support, &family, budget);
                                        let _ = tx.blocking_send((r, family, support.flows, signature, reply));
                                    });
                                    continue;
                                }
                            }
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            Some(done) = baseline_rx.recv() => {
                fitting = false;
                for (req, reply) in deferred.drain(..) {
                    if let Err(e) = ctl_requeue.try_send((req, reply)) {
                        let (_, reply) = e.into_inner();
                        let _ = reply.send(control::error("the agent is busy; try again"));
                    }
                }
                baseline_at = Some(Instant::now());
                match done.result {
                    Err(e) => warn!("cannot fit the host baseline: {e:#}"),
                    // A rollback while it ran: the fit belongs to a model no longer serving.
                    Ok(_) if done.version != detector.model_version => info!(
                        fitted_on = %done.version,
                        serving = %detector.model_version,
                        "the model changed while the host baseline was fitted: fit dropped until the next refresh"
                    ),
                    Ok(m) => match detector.set_model(Arc::new(m), done.version, score_path) {
                        Err(e) => warn!("cannot serve the host baseline: {e:#}"),
                        Ok(()) => {
                            baseline_rows = Some(done.rows);
                            info!(records = done.rows, took_ms = done.took.as_millis() as u64, "fitted this host's benign baseline: only what is attack-like and unusual for this host alerts");
                        }
                    },
                }
            }
            Some((result, family, k, signature, reply)) = adapt_rx.recv() => {
                adapting = false;
                let answer = match result {
                    Err(e) => {
                        metrics.adaptations_refused.fetch_add(1, Relaxed);
                        warn!("{e:#}");
                        control::error(format!("{e:#}"))
                    }
                    Ok(adapted) => {
                        let report = serde_json::to_value(&adapted.report).unwrap_or_default();
                        let entry = HistoryEntry {
                            version: String::new(),
                            file: String::new(),
                            parent: Some(detector.model_version.clone()),
                            created_unix_ns: now_unix(),
                            family: Some(family.clone()),
                            flows: k,
                            report: Some(report.clone()),
                            signature: signature.clone(),
                        };
                        match store.add(&adapted.model, entry) {
                            // The old model keeps serving when the new one cannot be saved.
                            Err(e) => { error!("{e:#}"); control::error(format!("{e:#}")) }
                            Ok(entry) => match detector.set_model(Arc::new(adapted.model), entry.version.clone(), score_path) {
                                Err(e) => control::error(format!("{e:#}")),
                                Ok(()) => {
                                    detector.add_family(FamilySignature { family: family.clone(), exemplars: signature });
                                    metrics.adaptations.fetch_add(1, Relaxed);
                                    info!(model = %entry.version, %family, flows = k, "adapted model serving");
                                    serde_json::json!({"ok": true, "model": entry.version, "family": family, "flows": k, "report": report})
                                }
                            },
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            Some(done) = metrics_rx.recv() => {
                let c = read_stats(&stats).unwrap_or_default();
                if let Ok(mut g) = metrics.gauges.lock() {
                    for (n, v) in stat::NAMES.iter().zip(c.iter()) {
                        g.insert(format!("detector_kernel_{n}_total"), *v as f64);
                    }
                    g.insert("detector_flow_table_entries".into(), table_entries.load(Relaxed) as f64);
                    g.insert("detector_flow_table_capacity".into(), cfg.flows.table_size as f64);
                    g.insert("detector_blocklist_entries".into(), blocks.len() as f64);
                    g.insert("detector_tracked_sources".into(), detector.tracked().0 as f64);
                    g.insert(format!("detector_model_info{{version=\"{}\"}}", detector.model_version), 1.0);
                    g.insert("detector_records_per_second".into(), read as f64 / started.elapsed().as_secs_f64().max(1e-3));
                    g.insert("detector_alerts_rate_limited_total".into(), detector.policy.rate_limited_alerts as f64);
                    g.insert("detector_thin_evidence_total".into(), detector.policy.thin_evidence as f64);
                }
                let _ = done.send(());
            }
            guard = async { ebpf_log.as_mut().unwrap().readable_mut().await }, if ebpf_log.is_some() => {
                let mut guard = guard.context("eBPF log poll failed")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sighup.recv() => {
                match &opts.config_path {
                    None => warn!("SIGHUP: no configuration file to reload (started with defaults)"),
                    Some(p) => match Config::load(Some(p)) {
                        // The old configuration stays in force.
                        Err(e) => error!("SIGHUP: configuration rejected, keeping the current one: {e:#}"),
                        Ok(new) => {
                            detector.policy.reconfigure(new.policy.clone(), new.effective_allowlist());
                            flow_cfg = new.flow_config();
                            *sweep_cfg.lock().unwrap_or_else(|e| e.into_inner()) = flow_cfg;
                            if let Err(e) = ebpf::write_config(&mut ebpf, &flow_cfg) {
                                error!("SIGHUP: cannot update the flow configuration: {e:#}");
                            }
                            let ignored = ["agent", "scoring"].iter().filter(|s| match **s {
                                "agent" => new.agent != cfg.agent,
                                _ => new.scoring != cfg.scoring,
                            }).copied().collect::<Vec<_>>();
                            if !ignored.is_empty() {
                                warn!("SIGHUP: changes to [{}] take effect at the next start", ignored.join("], ["));
                            }
                            if new.context != cfg.context {
                                detector.set_context(new.context.tracker());
                                info!("SIGHUP: [context] changed: the per-source and per-service windows start again");
                            }
                            cfg.policy = new.policy.clone();
                            cfg.flows = new.flows.clone();
                            cfg.context = new.context.clone();
                            cfg.adaptation = new.adaptation.clone();
                            info!(path = %p.display(), "SIGHUP: configuration reloaded");
                        }
                    },
                }
            }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
        }
    }

    // Detach first so that the flush below sees a table nobody updates any more.
    for link in links.into_iter().rev() {
        let what = link.to_string();
        if matches!(&link, Link::Xdp { iface: i, .. } | Link::TcEgress { iface: i, .. } if removed.contains(i))
        {
            info!("{what}: the interface was removed, nothing to detach");
            continue;
        }
        match ebpf::detach(&mut ebpf, link) {
            Ok(()) => info!("detached {what}"),
            Err(e) => warn!("detaching {what} failed: {e:#}"),
        }
    }
    while let Some(item) = flow_rb.get_mut().next() {
        if let Some((reason, rec)) =
            read_item::<FlowRecord>(&item).and_then(|r| Some((Reason::from_u8(r.reason)?, r)))
        {
            drop(item);
            on_flow!(&rec.key, &rec.state, reason, Instant::now());
        }
    }
    while let Some(item) = proc_rb.get_mut().next() {
        if let Some(json) = read_item::<ProcEvent>(&item).and_then(|ev| ProcessJson::new(&ev, time))
        {
            out.record(&json)?;
        }
    }
    sweep_stop.store(true, Relaxed);
    sweep_rx.close();
    while let Some(expired) = sweep_rx.recv().await {
        for (key, state) in expired {
            on_flow!(&key, &state, Reason::IdleTimeout, Instant::now());
        }
    }
    let _ = sweeper.join();
    let open = sweep(&mut flows, &flow_cfg, clock::monotonic_ns(), true);
    let flushed = open.len();
    for (key, state) in open {
        on_flow!(&key, &state, Reason::Flush, Instant::now());
    }
    detector.flush(&mut LiveActions {
        blocklist: &mut blocks,
        out: &mut out,
        attribution: &attribution,
    })?;
    let c = read_stats(&stats)?;
    out.record(&stats_json(
        &c,
        read,
        &metrics,
        blocks.len(),
        &detector.policy,
    ))?;
    out.flush()?;
    warmup.learned_s += learning_since.elapsed().as_secs_f64();
    if let Err(e) = warmup.save(&warmup_path) {
        error!("cannot save the warm-up progress: {e:#}");
    }
    // Blocks stay in the state file; the kernel map goes with this process.
    if let Err(e) = blocks.persist() {
        error!("{e:#}");
    }
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

/// Puts `next` in force: on disk first, then in the detector. Not in force unless saved: a
/// dismissal lost at the next restart would silently bring its alerts back (a withdrawal, its
/// silence); on error the old set stays, on disk and in force.
fn put_dismissals(
    next: Dismissals,
    path: &std::path::Path,
    dismissed: &mut Dismissals,
    detector: &mut Detector,
) -> anyhow::Result<()> {
    next.save(path)?;
    *dismissed = next;
    detector.set_dismissed(dismissed.exemplars());
    Ok(())
}

/// The confirmed families the model store holds, as the detector names alerts by them.
fn families(store: &ModelStore) -> Vec<FamilySignature> {
    store
        .signatures()
        .into_iter()
        .map(|(family, exemplars)| FamilySignature { family, exemplars })
        .collect()
}

fn stats_json(
    c: &[u64; stat::COUNT as usize],
    read: u64,
    m: &Metrics,
    blocks: usize,
    policy: &crate::policy::Policy,
) -> StatsJson {
    StatsJson {
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
        read,
        scored: m.scored.load(Relaxed),
        blocks,
        alerts_rate_limited: policy.rate_limited_alerts,
        thin_evidence: policy.thin_evidence,
    }
}

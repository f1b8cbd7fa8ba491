//! `detector run`: the agent. [`Agent`] owns the loaded programs, the detector and the stores;
//! its loop hands each event to the room that deals with it:
//! - [`attach`]: load the programs, attach them, watch their interfaces, detach;
//! - [`ingest`]: ring buffers and the sweep → detector → outputs and blocklist;
//! - [`control`]: requests in, typed answers out (status, dismissals);
//! - [`adaptation`]: confirmed incident → adapted model → guarded swap; model history;
//! - [`learning`]: the host's warm-up and its baseline fits;
//! - [`sweeper`]: idle flows, on a thread of its own;
//! - [`outputs`]: records, stats lines, metrics gauges.

mod adaptation;
mod attach;
mod control;
mod ingest;
mod learning;
mod outputs;
mod sweeper;

use std::{
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use detector_common::{
    flow::{FlowKey, FlowState, Reason},
    proc::{SockKey, SockOwner},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

pub use outputs::{read_stats, Outputs, StatsJson};
pub use sweeper::{sweep, FlowTable};

use crate::{
    blocklist::{self, Blocklist, KernelStore},
    clock::{self, TimeBase},
    config::Config,
    control::{BlockStatus, Envelope, PolicyStatus, Request, Response, Status},
    detect::{DetectConfig, Detector, Serving},
    ebpf::maps,
    features::LIVE_FEATURE_SET,
    iface,
    incidents::Selector,
    metrics::Metrics,
    model::ScorePath,
    policy::Policy,
    sockets::Attribution,
    tracefs,
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

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut agent = Agent::start(opts).await?;
    let served = agent.serve().await;
    let stopped = agent.stop().await;
    served.and(stopped)
}

/// The channels the agent's helpers answer on.
struct Inbox {
    control: mpsc::Receiver<Envelope>,
    /// Requests that waited for a baseline fit go back in through this.
    requeue: mpsc::Sender<Envelope>,
    sweep: mpsc::Receiver<Vec<(FlowKey, FlowState)>>,
    metrics: mpsc::Receiver<oneshot::Sender<()>>,
}

/// The agent.
struct Agent {
    cfg: Config,
    opts: RunOptions,
    kernel: attach::Kernel,
    rings: ingest::Rings,
    core: ingest::Core<KernelStore>,
    models: adaptation::Models,
    dismissals: control::DismissalBook,
    learning: learning::Learning,
    sweeper: Option<sweeper::Sweeper>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    stats: PerCpuArray<MapData, u64>,
    inbox: Inbox,
    started: Instant,
    last_lost: u64,
    /// The fleet publisher, when `[fleet]` is on.
    fleet: Option<crate::fleet::Fleet>,
    /// A verified fleet model waiting for enough benign rows for this host's own check.
    fleet_pending: Option<crate::fleet::follow::Offer>,
    heartbeat: tokio::time::Interval,
}

/// The maps the rooms work with, taken out of the loaded object.
struct KernelMaps {
    rings: ingest::Rings,
    flows: HashMap<MapData, FlowKey, FlowState>,
    stats: PerCpuArray<MapData, u64>,
    attribution: Attribution,
    blocks: Blocklist<KernelStore>,
}

impl KernelMaps {
    /// Takes the maps; learns the owners of the TCP sockets that already exist and restores
    /// the unexpired blocks from the state directory.
    fn take(kernel: &mut attach::Kernel, cfg: &Config) -> anyhow::Result<Self> {
        // SAFETY (both): the RingBuf owns its map fd and keeps it open for as long as the
        // AsyncFd that wraps it lives.
        let rings = ingest::Rings {
            flows: unsafe {
                AsyncFd::register(kernel.take::<RingBuf<MapData>>(maps::FLOW_EVENTS)?)
            }
            .context("cannot poll the flow ring buffer")?,
            procs: unsafe {
                AsyncFd::register(kernel.take::<RingBuf<MapData>>(maps::PROC_EVENTS)?)
            }
            .context("cannot poll the process ring buffer")?,
        };
        let mut sockets: HashMap<MapData, SockKey, SockOwner> = kernel.take(maps::SOCKETS)?;
        let seeded = crate::sockets::seed(&mut sockets);
        info!(
            seeded,
            "learned the owners of existing TCP sockets from /proc"
        );
        let mut blocks = Blocklist::new(
            KernelStore {
                map: kernel.take(maps::BLOCKLIST)?,
                generation: kernel.take(maps::BLOCKLIST_GEN)?,
            },
            Some(blocklist::state_path(&cfg.agent.state_dir)),
        );
        match blocks.restore(now_unix(), clock::monotonic_ns()) {
            Ok(n) => info!(
                restored = n,
                "blocklist entries restored from the state directory"
            ),
            Err(e) => error!("cannot restore the blocklist: {e:#}"),
        }
        Ok(KernelMaps {
            rings,
            flows: kernel.take(maps::FLOWS)?,
            stats: kernel.take(maps::STATS)?,
            attribution: Attribution::new(Some(sockets)),
            blocks,
        })
    }
}

/// The unix time now.
fn now_unix() -> u64 {
    TimeBase::monotonic().to_unix_ns(clock::monotonic_ns())
}

impl Agent {
    /// Checks what the operator can fix before touching the kernel, loads the models and the
    /// state, attaches the programs, and starts the helpers (control socket, metrics, sweep).
    async fn start(opts: RunOptions) -> anyhow::Result<Self> {
        let cfg = opts.config.clone();
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
        let (models, model, version) = adaptation::Models::open(&cfg, score_path)?;
        let metrics = Arc::new(Metrics::default());
        let mut detector = detector(&cfg, model, version, score_path, metrics.clone())?;
        detector.set_families(models.families());
        let dismissals = control::DismissalBook::open(&cfg.agent.state_dir, &mut detector);
        let out = Outputs::open(&cfg.agent.records, &cfg.agent.events)?;
        let listener = crate::control::bind(&cfg.agent.control_socket)?;
        let metrics_listener = match cfg.agent.metrics_listen.as_str() {
            "" => None,
            a => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {a}"))?,
            ),
        };

        let mut kernel =
            attach::Kernel::attach(&cfg, opts.object.as_deref(), &interfaces, &tracefs_path)?;
        let maps = KernelMaps::take(&mut kernel, &cfg)?;

        let (ctl_tx, ctl_rx) = mpsc::channel::<Envelope>(16);
        tokio::spawn(crate::control::serve(listener, ctl_tx.clone()));
        let (metrics_tx, metrics_rx) = mpsc::channel(4);
        if let Some(l) = metrics_listener {
            info!(listen = %cfg.agent.metrics_listen, "serving Prometheus metrics");
            tokio::spawn(crate::metrics::serve(l, metrics.clone(), metrics_tx));
        }
        let (sweep_tx, sweep_rx) = mpsc::channel(4);
        let sweeper = sweeper::Sweeper::spawn(
            &maps.flows,
            &maps.stats,
            cfg.flow_config(),
            opts.sweep_interval,
            sweep_tx,
        )?;
        let learning = learning::Learning::open(&cfg.agent.state_dir, &cfg.adaptation);
        let fleet = if cfg.fleet.enabled() {
            Some(crate::fleet::Fleet::start(
                &cfg.fleet,
                &cfg.agent.state_dir,
                metrics.fleet.clone(),
                None,
            )?)
        } else {
            None
        };
        let heartbeat = tokio::time::interval(cfg.fleet.heartbeat.0);
        info!(
            model = %detector.model_version,
            path = %detector.path(),
            why = %ScorePath::reason(&cfg.scoring.path),
            drop = ?cfg.policy.drop,
            "detecting; records to {:?}, alerts to {:?}; SIGINT or SIGTERM stops",
            cfg.agent.records,
            cfg.agent.events
        );
        Ok(Agent {
            core: ingest::Core {
                detector,
                out,
                blocks: maps.blocks,
                attribution: maps.attribution,
                metrics,
                read: 0,
                time: TimeBase::monotonic(),
                fleet: fleet.as_ref().map(|f| f.sender.clone()),
            },
            cfg,
            opts,
            kernel,
            rings: maps.rings,
            models,
            dismissals,
            learning,
            sweeper: Some(sweeper),
            flows: maps.flows,
            stats: maps.stats,
            inbox: Inbox {
                control: ctl_rx,
                requeue: ctl_tx,
                sweep: sweep_rx,
                metrics: metrics_rx,
            },
            started: Instant::now(),
            last_lost: 0,
            fleet,
            fleet_pending: None,
            heartbeat,
        })
    }

    /// The loop: each event to its room, until SIGINT or SIGTERM.
    async fn serve(&mut self) -> anyhow::Result<()> {
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let mut sweep_tick = tokio::time::interval(self.opts.sweep_interval);
        let mut stats_tick = tokio::time::interval(self.opts.stats_interval);
        stats_tick.tick().await;
        loop {
            let deadline = self.core.detector.deadline();
            tokio::select! {
                guard = self.rings.flows.readable_mut() => {
                    self.core.drain_flows(&mut guard.context("flow ring buffer poll failed")?)?;
                }
                guard = self.rings.procs.readable_mut() => {
                    self.core.drain_procs(&mut guard.context("process ring buffer poll failed")?)?;
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() => {
                    self.core.score()?;
                    self.core.out.flush()?;
                }
                Some(expired) = self.inbox.sweep.recv() => self.on_expired(expired)?,
                _ = sweep_tick.tick() => self.on_sweep_tick()?,
                _ = stats_tick.tick() => self.on_stats_tick()?,
                _ = self.heartbeat.tick(), if self.fleet.is_some() => {
                    self.on_heartbeat();
                    if let Some(offer) = self.fleet_pending.take() {
                        self.on_fleet_model(offer);
                    }
                }
                Some(checked) = next_offer(&mut self.fleet) => match checked {
                    Ok(offer) => self.on_fleet_model(offer),
                    Err(r) => {
                        if let Some(f) = &self.fleet {
                            crate::fleet::follow::refuse(&f.sender, &r.version, &r.why, &self.core.detector.model_version);
                        }
                    }
                },
                Some((req, reply)) = self.inbox.control.recv() => self.on_request(req, reply),
                Some(done) = self.learning.rx.recv() => {
                    let score_path = self.models.score_path;
                    for env in self.learning.done(done, &mut self.core.detector, score_path) {
                        self.requeue(env);
                    }
                }
                Some(done) = self.models.rx.recv() => {
                    self.models.finish(done, &mut self.core.detector, &self.core.metrics);
                }
                Some(scraped) = self.inbox.metrics.recv() => {
                    self.publish_gauges();
                    let _ = scraped.send(());
                }
                guard = async { self.kernel.log.as_mut().unwrap().readable_mut().await }, if self.kernel.log.is_some() => {
                    let mut guard = guard.context("eBPF log poll failed")?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = sighup.recv() => self.reload(),
                _ = stop(&mut sigint, "SIGINT") => break,
                _ = stop(&mut sigterm, "SIGTERM") => break,
            }
        }
        Ok(())
    }

    /// Flows the sweep found idle: their final records.
    fn on_expired(&mut self, expired: Vec<(FlowKey, FlowState)>) -> anyhow::Result<()> {
        let read_at = Instant::now();
        for (key, state) in expired {
            self.core
                .on_flow(&key, &state, Reason::IdleTimeout, read_at)?;
        }
        self.core.out.flush()
    }

    /// Once a sweep interval: process attribution, interfaces, the warm-up and baseline, and
    /// expired blocks.
    fn on_sweep_tick(&mut self) -> anyhow::Result<()> {
        self.core.attribution.refresh();
        self.kernel.check_interfaces();
        self.learning.tick(
            Instant::now(),
            &self.core.detector,
            &self.cfg.adaptation,
            self.models.adapting(),
        );
        match self.core.blocks.expire(now_unix()) {
            Ok(gone) => {
                for g in gone {
                    info!(
                        hits = g.hits,
                        "unblocked {} (expired)",
                        blocklist::describe(&g.block.key)
                    );
                }
            }
            Err(e) => error!("expiring blocklist entries failed: {e:#}"),
        }
        self.core.out.flush()
    }

    /// Once a stats interval: the warm-up saved, losses warned of, a stats line written.
    fn on_stats_tick(&mut self) -> anyhow::Result<()> {
        self.learning.save();
        let c = read_stats(&self.stats)?;
        let lost = outputs::lost(&c);
        if lost > self.last_lost {
            warn!(
                lost = lost - self.last_lost,
                "records lost: ring buffer full (raise flows.ringbuf_bytes)"
            );
            self.last_lost = lost;
        }
        let line = self.stats_line(&c);
        self.core.out.record(&line)?;
        self.core.out.flush()
    }

    /// The stats line of the kernel's counters `c`, with the agent's own and the table's
    /// evictions.
    fn stats_line(&self, c: &outputs::Counters) -> StatsJson {
        let core = &self.core;
        StatsJson::new(
            c,
            core.read,
            &core.metrics,
            core.blocks.len(),
            &core.detector.policy,
        )
        .with_evicted(self.evicted())
    }

    /// A control request: answered now, or later by the room that runs it.
    fn on_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let det = &mut self.core.detector;
        let answer = match req {
            Request::Status {} => Response::Status(Box::new(self.status())),
            Request::Dismiss {
                alert_ids,
                source,
                since_ns,
                until_ns,
            } => match Selector::from_request(alert_ids, source.as_deref(), since_ns, until_ns) {
                Ok(sel) => self.dismissals.dismiss(det, &sel, now_unix()),
                Err(e) => crate::control::error(e),
            },
            Request::Dismissals {} => self.dismissals.list(),
            Request::Undismiss { id } => self.dismissals.undismiss(det, &id),
            Request::ModelHistory {} => self.models.history(det),
            Request::ModelRollback {} => self.models.rollback(det),
            Request::Incident {
                family,
                alert_ids,
                source,
                since_ns,
                until_ns,
            } => {
                if self.learning.fitting() {
                    // Held, as it came, until the fit ends (well under a second).
                    let req = Request::Incident {
                        family,
                        alert_ids,
                        source,
                        since_ns,
                        until_ns,
                    };
                    self.learning.defer((req, reply));
                    return;
                }
                match Selector::from_request(alert_ids, source.as_deref(), since_ns, until_ns) {
                    Ok(sel) => {
                        let budget = self.cfg.adaptation.fpr_budget;
                        let confirmed = self.models.start(det, family, &sel, budget, reply);
                        if let Some(c) = confirmed {
                            self.publish_incident(c);
                        }
                        return;
                    }
                    Err(e) => crate::control::error(e),
                }
            }
        };
        let _ = reply.send(answer);
    }

    /// A request that waited goes back in line.
    fn requeue(&self, env: Envelope) {
        if let Err(e) = self.inbox.requeue.try_send(env) {
            let (_, reply) = e.into_inner();
            let _ = reply.send(crate::control::error("the agent is busy; try again"));
        }
    }

    /// `detector status`.
    fn status(&self) -> Status {
        let c = read_stats(&self.stats).unwrap_or_default();
        let det = &self.core.detector;
        let uptime = self.started.elapsed();
        Status {
            ok: true,
            uptime_s: uptime.as_secs(),
            attached: self.kernel.attached(),
            xdp: self.kernel.xdp(),
            not_attached: self.kernel.not_attached(),
            model: det.model_version.clone(),
            scoring_path: det.path(),
            scoring_reason: ScorePath::reason(&self.cfg.scoring.path),
            policy: PolicyStatus {
                drop: self.cfg.policy.drop,
                alert_threshold: det.policy.alert_threshold(),
                drop_threshold: self.cfg.policy.drop_threshold,
            },
            records_read: self.core.read,
            records_per_s: self.core.read as f64 / uptime.as_secs_f64().max(1e-3),
            scored: self.core.metrics.scored.get(),
            alerts_rate_limited: det.policy.rate_limited_alerts,
            thin_evidence: det.policy.thin_evidence,
            blocks: self
                .core
                .blocks
                .blocks()
                .map(|b| BlockStatus {
                    what: blocklist::describe(&b.key),
                    expires_unix_ns: b.expires_unix_ns,
                    alert_id: b.alert_id.clone(),
                    family: b.family.clone(),
                })
                .collect(),
            kernel: detector_common::flow::stat::NAMES
                .iter()
                .zip(c.iter())
                .map(|(n, v)| (n.to_string(), *v))
                .collect(),
            table_evicted: self.evicted(),
            tracked_sources: det.tracked().0,
            recent_records: det.recent().len(),
            adaptations: self.core.metrics.adaptations.get(),
            novelty: det.has_baseline(),
            warmup: self.learning.status(self.cfg.adaptation.warmup.0),
            host_rule: det.has_baseline()
                && det
                    .model()
                    .inputs
                    .get(LIVE_FEATURE_SET)
                    .is_some_and(|l| l.rule.require_novelty),
            dismissals: self.dismissals.len(),
            dismissed_alerts: self.core.metrics.dismissed_alerts.get(),
            baseline_rows: self.learning.baseline_rows,
            fleet: self.fleet.as_ref().map(|f| {
                self.core
                    .metrics
                    .fleet
                    .status(f.sender.host(), &f.cfg.servers)
            }),
        }
    }

    /// A heartbeat to the fleet.
    fn on_heartbeat(&self) {
        let Some(f) = &self.fleet else { return };
        let m = f.sender.metrics();
        f.sender.heartbeat(&crate::fleet::Heartbeat {
            kind: "heartbeat".into(),
            host: f.sender.host().to_string(),
            ts_ns: now_unix(),
            uptime_s: self.started.elapsed().as_secs(),
            model: self.core.detector.model_version.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            records_read: self.core.read,
            alerts: m.alerts.get(),
            fleet_dropped: m.dropped(),
            spool_entries: m.spool_entries.get().max(0) as u64,
        });
    }

    /// A confirmed incident to the fleet: its feature rows, family and host.
    fn publish_incident(&self, c: adaptation::Confirmed) {
        let Some(f) = &self.fleet else { return };
        let width = crate::features::LIVE_COUNT;
        f.sender.incident(&crate::fleet::IncidentEvent {
            kind: "incident".into(),
            host: f.sender.host().to_string(),
            ts_ns: now_unix(),
            family: c.family,
            flows: c.flows,
            feature_set: LIVE_FEATURE_SET.to_string(),
            rows: c.rows.chunks_exact(width).map(<[f32]>::to_vec).collect(),
            model: self.core.detector.model_version.clone(),
            benign: {
                let n = c.benign.len() / width;
                let step = n.div_ceil(FLEET_BENIGN_ROWS).max(1);
                c.benign
                    .chunks_exact(width)
                    .step_by(step)
                    .map(<[f32]>::to_vec)
                    .collect()
            },
        });
    }

    /// A verified fleet model: served if this host's own false-alert check passes on its recent
    /// benign rows (the check local adaptation runs), else refused and the refusal published;
    /// with too few benign rows yet, it waits (checked again at each heartbeat).
    fn on_fleet_model(&mut self, offer: crate::fleet::follow::Offer) {
        use crate::fleet::{follow, models::Rejected};
        let Some(f) = &self.fleet else { return };
        let det = &mut self.core.detector;
        let version = offer.pointer.version.clone();
        if version == det.model_version {
            return;
        }
        let width = crate::features::LIVE_COUNT;
        let benign = crate::incidents::benign_sample(
            det.recent(),
            det.policy.alert_threshold(),
            FLEET_CHECK_ROWS,
            |_| false,
        );
        let n = benign.len() / width;
        if n < FLEET_MIN_CHECK_ROWS {
            if self.fleet_pending.is_none() {
                info!(%version, benign_rows = n, "fleet: model waits for {FLEET_MIN_CHECK_ROWS} benign rows of this host for its false-alert check");
            }
            self.fleet_pending = Some(offer);
            return;
        }
        let names = crate::features::live_names();
        let rows = crate::model::Rows {
            feature_set: LIVE_FEATURE_SET,
            features: &names,
            values: &benign,
        };
        let budget = self.cfg.adaptation.fpr_budget;
        let serving = det.model_version.clone();
        let check = match crate::model::FalseAlerts::measure(det.model(), &offer.model, &rows) {
            Ok(c) => c,
            Err(e) => {
                let why = Rejected::Model {
                    object: offer.pointer.object.clone(),
                    error: e.to_string(),
                };
                return follow::refuse(&f.sender, &version, &why, &serving);
            }
        };
        if !check.within(budget) {
            let why = Rejected::FalseAlerts(format!(
                "on {} recent benign rows of this host {} (adaptation.fpr_budget)",
                check.rows,
                check.rise(budget)
            ));
            return follow::refuse(&f.sender, &version, &why, &serving);
        }
        match det.set_model(Serving {
            model: Arc::new(offer.model),
            version: version.clone(),
            path: self.models.score_path,
        }) {
            Ok(()) => info!(
                %version,
                was = %serving,
                benign_rows = check.rows,
                false_alerts_before = check.before,
                false_alerts_after = check.after,
                "fleet: fleet model serving"
            ),
            Err(e) => {
                let why = Rejected::Model {
                    object: offer.pointer.object.clone(),
                    error: format!("{e:#}"),
                };
                follow::refuse(&f.sender, &version, &why, &serving);
            }
        }
    }

    /// SIGHUP with a changed `[fleet]`: the publisher is replaced (the old one hands its queue
    /// to the spool first), started, or stopped.
    fn reload_fleet(&mut self, new: &crate::fleet::FleetSection) {
        let previous = self.fleet.take();
        self.core.fleet = None;
        if !new.enabled() {
            if let Some(p) = previous {
                drop(p.stop());
                info!("SIGHUP: [fleet] off: publisher stopped (the spool stays in the state directory)");
            }
            return;
        }
        match crate::fleet::Fleet::start(
            new,
            &self.cfg.agent.state_dir,
            self.core.metrics.fleet.clone(),
            previous,
        ) {
            Ok(f) => {
                self.core.fleet = Some(f.sender.clone());
                self.heartbeat = tokio::time::interval(new.heartbeat.0);
                self.fleet = Some(f);
                info!("SIGHUP: [fleet] applied");
            }
            Err(e) => error!("SIGHUP: [fleet] not applied, the fleet is off: {e:#}"),
        }
    }

    /// Flows the kernel's table evicted, as of the last sweep.
    fn evicted(&self) -> u64 {
        self.sweeper
            .as_ref()
            .map_or(0, |s| s.shared.evicted.load(Relaxed))
    }

    /// Before a metrics scrape: the gauges of this moment.
    fn publish_gauges(&self) {
        let c = read_stats(&self.stats).unwrap_or_default();
        let entries = self
            .sweeper
            .as_ref()
            .map_or(0, |s| s.shared.entries.load(Relaxed));
        outputs::Gauges {
            counters: &c,
            table_entries: entries,
            table_evicted: self.evicted(),
            table_capacity: self.cfg.flows.table_size,
            blocks: self.core.blocks.len(),
            tracked_sources: self.core.detector.tracked().0,
            model_version: &self.core.detector.model_version,
            records_per_s: self.core.read as f64 / self.started.elapsed().as_secs_f64().max(1e-3),
            policy: &self.core.detector.policy,
        }
        .publish(&self.core.metrics);
    }

    /// SIGHUP: `[policy]`, `[flows]`, `[context]`, `[adaptation]` and `[fleet]` from the file again; an
    /// invalid file is rejected and the current settings kept.
    fn reload(&mut self) {
        let Some(p) = self.opts.config_path.clone() else {
            warn!("SIGHUP: no configuration file to reload (started with defaults)");
            return;
        };
        let new = match Config::load(Some(&p)) {
            Ok(c) => c,
            Err(e) => {
                error!("SIGHUP: configuration rejected, keeping the current one: {e:#}");
                return;
            }
        };
        let det = &mut self.core.detector;
        det.policy
            .reconfigure(new.policy.clone(), new.effective_allowlist());
        let flow_cfg = new.flow_config();
        if let Some(s) = &self.sweeper {
            *s.shared.cfg.lock().unwrap_or_else(|e| e.into_inner()) = flow_cfg;
        }
        if let Err(e) = crate::ebpf::write_config(&mut self.kernel.ebpf, &flow_cfg) {
            error!("SIGHUP: cannot update the flow configuration: {e:#}");
        }
        let mut ignored = Vec::new();
        if new.agent != self.cfg.agent {
            ignored.push("agent");
        }
        if new.scoring != self.cfg.scoring {
            ignored.push("scoring");
        }
        if !ignored.is_empty() {
            warn!(
                "SIGHUP: changes to [{}] take effect at the next start",
                ignored.join("], [")
            );
        }
        if new.context != self.cfg.context {
            det.set_context(new.context.tracker());
            info!("SIGHUP: [context] changed: the per-source and per-service windows start again");
        }
        self.cfg.policy = new.policy;
        self.cfg.flows = new.flows;
        self.cfg.context = new.context;
        self.cfg.adaptation = new.adaptation;
        if new.fleet != self.cfg.fleet {
            self.reload_fleet(&new.fleet);
            self.cfg.fleet = new.fleet;
        }
        info!(path = %p.display(), "SIGHUP: configuration reloaded");
    }

    /// Detaches first, so that the flush after sees a table nobody updates any more; then
    /// reads what the ring buffers still hold, ends every open flow, writes the last stats line,
    /// and saves the blocks and the warm-up.
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.kernel.detach();
        self.core.drain_rest(&mut self.rings)?;
        if let Some(s) = self.sweeper.take() {
            s.stop();
        }
        self.inbox.sweep.close();
        while let Some(expired) = self.inbox.sweep.recv().await {
            self.on_expired(expired)?;
        }
        let flow_cfg = self.cfg.flow_config();
        let open = sweep(&mut self.flows, &flow_cfg, clock::monotonic_ns(), true);
        let flushed = open.len();
        for (key, state) in open {
            self.core
                .on_flow(&key, &state, Reason::Flush, Instant::now())?;
        }
        self.core.score()?;
        let c = read_stats(&self.stats)?;
        let line = self.stats_line(&c);
        self.core.out.record(&line)?;
        self.core.out.flush()?;
        self.learning.save();
        // Blocks stay in the state file; the kernel map goes with this process.
        if let Err(e) = self.core.blocks.persist() {
            error!("{e:#}");
        }
        self.core.fleet = None;
        if let Some(f) = self.fleet.take() {
            f.shutdown(Duration::from_secs(5)).await;
        }
        info!(
            flushed,
            packets = c[detector_common::flow::stat::PACKETS as usize],
            records = c[detector_common::flow::stat::RECORDS as usize],
            ringbuf_full = c[detector_common::flow::stat::RINGBUF_FULL as usize],
            malformed = c[detector_common::flow::stat::MALFORMED as usize],
            "stopped"
        );
        Ok(())
    }
}

/// Benign rows an incident carries to the fleet trainer.
const FLEET_BENIGN_ROWS: usize = 512;
/// Recent benign rows an agent scores to check a fleet model, at most; and at least.
const FLEET_CHECK_ROWS: usize = 2000;
const FLEET_MIN_CHECK_ROWS: usize = 20;

/// The next fleet model checked (or refused) by the follower, when the fleet follows models
/// (else never).
async fn next_offer(
    fleet: &mut Option<crate::fleet::Fleet>,
) -> Option<crate::fleet::follow::Checked> {
    match fleet.as_mut().and_then(|f| f.offers.as_mut()) {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for `sig` and says so.
async fn stop(sig: &mut Signal, name: &str) {
    sig.recv().await;
    info!("{name}: stopping");
}

/// The live detector over `model`.
fn detector(
    cfg: &Config,
    model: crate::model::Model,
    version: String,
    path: ScorePath,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Detector> {
    Detector::new(
        Serving {
            model: Arc::new(model),
            version,
            path,
        },
        Policy::new(cfg.policy.clone(), cfg.effective_allowlist()),
        DetectConfig {
            batch_size: cfg.scoring.batch_size,
            batch_deadline: cfg.scoring.batch_deadline.0,
            recent: cfg.adaptation.recent_records,
            context: cfg.context.tracker(),
            ..DetectConfig::default()
        },
        TimeBase::monotonic(),
        metrics,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::detect::CollectedAlerts;
    use detector_common::{
        flow::{
            process_packet,
            user::{MemEnv, MemTable},
            FlowConfig,
        },
        packet::{Captured, TCP_ACK, TCP_RST, TCP_SYN},
        testpkt::tcp4,
    };

    /// A fresh directory for one test.
    pub fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("detector-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A detector (the embedded model, the default policy, no kernel) that has scored a port
    /// scan from 10.0.0.66 and some quiet traffic; and the scanner's address.
    pub fn detector_with_a_scan() -> (Detector, String) {
        let cfg = Config::default();
        let (model, version) = crate::model::serving::base_model("").unwrap();
        let mut det = detector(
            &cfg,
            model,
            version,
            ScorePath::Reference,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let (atk, victim, client) = ([10, 0, 0, 66], [10, 0, 0, 1], [10, 0, 0, 7]);
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let mut alerts = CollectedAlerts::default();
        for p in 0..300u16 {
            let ts = 1_000_000_000 + p as u64 * 1_000_000;
            let frames = [
                tcp4(atk, 40000, victim, 1000 + p, TCP_SYN, 1, 0),
                tcp4(victim, 1000 + p, atk, 40000, TCP_RST | TCP_ACK, 0, 0),
                tcp4(client, 30000 + p, victim, 443, TCP_SYN, 1, 0),
                tcp4(victim, 443, client, 30000 + p, TCP_SYN | TCP_ACK, 1, 0),
            ];
            for f in &frames {
                process_packet(
                    &Captured::whole(f),
                    ts,
                    &FlowConfig::DEFAULT,
                    &mut t,
                    &mut env,
                );
            }
            for (k, s, r) in env.records.drain(..) {
                if det.push(&k, &s, r, None, Instant::now()) {
                    det.flush(&mut alerts).unwrap();
                }
            }
        }
        det.flush(&mut alerts).unwrap();
        assert!(
            alerts
                .alerts
                .iter()
                .any(|a| a.flow.src_addr.to_string() == "10.0.0.66"),
            "the scan raised no alert"
        );
        (det, "10.0.0.66".into())
    }
}

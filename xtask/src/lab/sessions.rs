//! Running the planned sessions: one thread per queue host, each running its sessions one after
//! another, every tool inside its host's namespace and stopped at the scenario's duration.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{
    inputs::{self, SessionContext, LAB_PASSWORD, LAB_USER},
    label::SessionWindow,
    link::{Conditions, LinkPlan},
    relay::RelayCounts,
    scenario::{expand, PlannedSession, Scenario},
    topology::{host_spec, log_tail, victim_spec, Proc, Topology},
};

/// Pause between two sessions of one queue host: longer than twice the labeller's slack, so
/// consecutive windows of one address never overlap.
pub const GAP: Duration = Duration::from_millis(1200);

/// What happened in one session.
#[derive(Clone, Debug, Serialize)]
pub struct SessionResult {
    #[serde(flatten)]
    pub window: SessionWindow,
    pub seed: u64,
    /// The tool's exit code (None when it was killed by a signal).
    pub exit_code: Option<i32>,
    /// The tool ran into the scenario's duration and was stopped.
    pub stopped_at_duration: bool,
    /// The command line as run.
    pub command: Vec<String>,
    /// Last lines of the tool's output.
    pub output_tail: String,
    /// The link conditions of the queue host during the session.
    pub link: Conditions,
    /// Seed of the relay's random draws (loss, jitter, reordering) in this session.
    pub link_seed: u64,
    /// What the queue host's relay did during the session, per direction (`up`: toward the
    /// victim's bridge).
    pub relay: RelayCounts,
    /// The link conditions of the session's later peers (`also`), each drawn for it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub also_links: BTreeMap<String, Conditions>,
}

/// Now as Unix ns.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Where a tool is on PATH.
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// What every session needs.
pub struct Ctx<'a> {
    pub topo: &'a Topology,
    pub scenarios: &'a [Scenario],
    pub work: &'a Path,
    pub key: &'a Path,
    /// Link conditions per session.
    pub links: &'a LinkPlan,
    /// Set by any queue that fails, and by Ctrl-C (see `super::interrupted`): every queue stops.
    pub stop: &'a AtomicBool,
}

impl Ctx<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || super::interrupted()
    }
}

/// Runs every queue in parallel; returns the sessions in start order.
pub fn run_all(
    ctx: &Ctx,
    queues: &BTreeMap<String, Vec<PlannedSession>>,
) -> anyhow::Result<Vec<SessionResult>> {
    let results: Vec<anyhow::Result<Vec<SessionResult>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .iter()
            .map(|(host, list)| {
                scope.spawn(move || {
                    let r = run_queue(ctx, list).with_context(|| format!("queue {host}"));
                    if r.is_err() {
                        ctx.stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a session thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => all.extend(v),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if super::interrupted() {
        bail!("interrupted by a signal: the lab was torn down");
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    all.sort_by_key(|r| r.window.start_ns);
    Ok(all)
}

fn run_queue(ctx: &Ctx, list: &[PlannedSession]) -> anyhow::Result<Vec<SessionResult>> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        if i > 0 {
            sleep_unless_stopping(ctx, GAP);
        }
        if ctx.stopping() {
            break;
        }
        out.push(run_one(ctx, p).with_context(|| format!("session {}", p.id))?);
    }
    Ok(out)
}

fn sleep_unless_stopping(ctx: &Ctx, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !ctx.stopping() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The arguments of a session with every placeholder replaced.
pub fn expand_args(
    ctx: &Ctx,
    s: &Scenario,
    p: &PlannedSession,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let victim = victim_spec();
    let me = host_spec(&p.host).context("unknown host")?;
    let peer = s.peer.as_deref().and_then(host_spec);
    let peers: Vec<&'static super::topology::HostSpec> =
        s.peers.iter().filter_map(|p| host_spec(p)).collect();
    let join = |f: &dyn Fn(&super::topology::HostSpec) -> String| {
        peers.iter().map(|h| f(h)).collect::<Vec<_>>().join(" ")
    };
    let sctx = SessionContext {
        dir,
        seed: p.seed,
        victim: victim.v4,
        victim6: victim.v6,
        key: ctx.key,
    };
    let dir_s = dir.display().to_string();
    let lookup = |name: &str| -> anyhow::Result<Option<String>> {
        Ok(Some(match name {
            "victim" => victim.v4.to_string(),
            "victim6" => victim.v6.to_string(),
            "peer" => peer.context("no peer")?.v4.to_string(),
            "peer6" => peer.context("no peer")?.v6.to_string(),
            "peers" => join(&|h| h.v4.to_string()),
            "peers6" => join(&|h| h.v6.to_string()),
            "self" => me.v4.to_string(),
            "seed" => p.seed.to_string(),
            "session" => p.index.to_string(),
            "work" => dir_s.clone(),
            "lab_user" => LAB_USER.to_string(),
            "lab_password" => LAB_PASSWORD.to_string(),
            _ => match inputs::file_placeholder(name, &sctx)? {
                Some(path) => path.display().to_string(),
                None => return Ok(None),
            },
        }))
    };
    s.args
        .iter()
        .enumerate()
        .map(|(i, a)| expand(a, lookup).with_context(|| format!("{}: args[{i}]", s.file.display())))
        .collect()
}

fn run_one(ctx: &Ctx, p: &PlannedSession) -> anyhow::Result<SessionResult> {
    let s = &ctx.scenarios[p.scenario];
    let host = ctx.topo.host(&p.host)?;
    let dir = ctx
        .work
        .join("sessions")
        .join(format!("{}-{}", s.name, p.index));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let args = expand_args(ctx, s, p, &dir)?;
    let log = dir.join("tool.log");
    let mut cmd = host.ns.cmd(&s.tool);
    cmd.args(&args)
        .current_dir(&dir)
        // Tools read no user config (~/.curlrc, ~/.wgetrc) and write nothing into root's home.
        .env("HOME", &dir)
        .env("LC_ALL", "C");
    // The link of the host whose flows these are (the peer, for a tool run on the victim).
    let (link, link_seed) = ctx.links.for_session(&p.queue, &p.id, p.seed);
    ctx.topo.set_link(&p.queue, &link, link_seed)?;
    // The later peers of a session that reaches several hosts: each its own draw.
    let mut also_links = BTreeMap::new();
    for h in s.peers.iter().skip(1) {
        let (c, seed) = ctx.links.for_session(h, &format!("{}@{h}", p.id), p.seed);
        ctx.topo.set_link(h, &c, seed)?;
        also_links.insert(h.clone(), c);
    }
    let relay_before = ctx.topo.relays.counts(&p.queue)?;
    let start_ns = now_ns();
    let started = Instant::now();
    let mut proc = Proc::spawn(&p.id, &mut cmd, &log)?;
    let pid = proc.pid();
    let mut stopped_at_duration = false;
    let status = loop {
        if let Some(st) = proc.try_wait()? {
            break Some(st);
        }
        if ctx.stopping() {
            proc.stop(Duration::from_secs(1));
            bail!("stopped");
        }
        if started.elapsed() >= s.duration {
            stopped_at_duration = true;
            break proc.stop(Duration::from_secs(2));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the tool left in its group (a shell's children) ends with the session.
    proc.signal(libc::SIGKILL);
    let end_ns = now_ns();
    let relay = ctx.topo.relays.counts(&p.queue)?.since(&relay_before);
    let mut command = vec![s.tool.clone()];
    command.extend(args);
    Ok(SessionResult {
        window: SessionWindow {
            id: p.id.clone(),
            scenario: s.name.clone(),
            family: s.family.clone(),
            variant: s.variant.clone(),
            label: s.label.as_str().to_string(),
            host: p.host.clone(),
            queue: p.queue.clone(),
            also: s.peers.iter().skip(1).cloned().collect(),
            start_ns,
            end_ns,
            spoofed_sources: s.spoofed_sources,
            pid,
        },
        seed: p.seed,
        exit_code: status.and_then(|s| s.code()),
        stopped_at_duration,
        command,
        output_tail: log_tail(&log),
        link,
        link_seed,
        relay,
        also_links,
    })
}

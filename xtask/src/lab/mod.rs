//! `cargo xtask lab`: real attack tools against real services in sealed network namespaces,
//! recorded by the real agent as labelled data. See docs/lab.md.
//!
//! Order of a run: check the scenario files, install what is missing, build the agent and the
//! dataset helper, build the topology (checking that it is sealed), start the services and the
//! agent, run the sessions, stop everything, then label the agent's output into the recording.
//! Teardown is by RAII guards, so an error, a panic or Ctrl-C (which only sets a flag that every
//! wait polls) all leave nothing behind; `--clean` removes what a killed lab left.

mod inputs;
mod label;
mod link;
mod record;
mod relay;
mod scenario;
mod services;
mod sessions;
pub(crate) mod topology;

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use label::{HostAddrs, Labeller};
use topology::{Topology, PREFIX};

/// Debian packages the lab runs: the topology, the services, the tools the scenarios name.
/// `cargo xtask setup --test-tools` installs them.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "procps",
    "util-linux",
    "openssl",
    "zstd",
    "tcpdump",
    "iputils-ping",
    "openssh-server",
    "openssh-client",
    "nginx",
    "vsftpd",
    "dnsmasq-base",
    "iperf3",
    "nmap",
    "hping3",
    "hydra",
    "slowhttptest",
    "curl",
    "wget",
    "bind9-dnsutils",
    "netcat-openbsd",
    "socat",
    "openssh-sftp-server",
    "rsync",
    "redis-server",
    "redis-tools",
    "chrony",
    "swaks",
    "python3",
    "samba",
    "samba-common-bin",
    "smbclient",
    "python3-impacket",
    "sqlmap",
    "wfuzz",
    "dirb",
    "gobuster",
    "masscan",
    "iodine",
];

/// Where `--record` writes.
const DEFAULT_RECORDING: &str = "lab/recordings/default";

/// Arguments of `cargo xtask lab`.
#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Regenerate the committed recording: every scenario with its own session count, the
    /// release agent, into lab/recordings/default, with STATS.txt.
    #[arg(long, conflicts_with_all = ["scenario", "sessions", "up", "clean", "list"])]
    record: bool,
    /// Run only this scenario (a file name in the scenario folder, without .toml); repeatable.
    #[arg(long, value_name = "NAME")]
    scenario: Vec<String>,
    /// Sessions per scenario, instead of each file's `sessions`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    sessions: Option<u32>,
    /// Output folder (default: target/lab/<unix time>, or lab/recordings/default with --record).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Scenario folder.
    #[arg(long, value_name = "DIR", default_value = "lab/scenarios")]
    scenarios: PathBuf,
    /// Run this agent binary instead of building one.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Build the agent in release mode (always with --record).
    #[arg(long)]
    release: bool,
    /// Do not write the dataset file.
    #[arg(long)]
    no_dataset: bool,
    /// Check the scenario files and print the plan; start nothing.
    #[arg(long)]
    list: bool,
    /// Build the topology and the services, print the topology as one JSON line, and keep it up
    /// until stdin closes or Ctrl-C; then tear it down. For tests and poking around.
    #[arg(long, conflicts_with_all = ["scenario", "sessions", "list", "clean"])]
    up: bool,
    /// Install nothing: fail, naming what is missing, unless `cargo xtask setup --test-tools`
    /// has run. The tests start the lab this way, so no test installs packages.
    #[arg(long)]
    no_setup: bool,
    /// Link conditions of the client and attacker hosts: `random` (drawn per session, the
    /// default; `none` with --up), `none`, or `key=value,...` (rtt, jitter, loss, reorder, down,
    /// up, mtu, ecn, timestamps, sack, wscale, cc, initcwnd, initrwnd), for every host or, as
    /// `HOST:SPEC`, for one. Repeatable.
    #[arg(long, value_name = "[HOST:]SPEC")]
    link: Vec<String>,
    /// Remove the namespaces, processes and work folders of labs that are no longer running.
    #[arg(long)]
    clean: bool,
    /// Rewrite STATS.txt of an existing recording folder from its flows.dds and manifest.json;
    /// start nothing else.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["record", "up", "clean", "list"])]
    stats: Option<PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C (SIGINT), SIGTERM or SIGHUP arrived: every wait in the lab polls this and
/// unwinds, so the guards tear the lab down.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    // Orphans of the lab's tools (a forking tool killed mid-run) become our children rather
    // than init's, and are reaped at the end instead of lingering as zombies.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Reaps exited children that no `Child` handle waits for (reparented orphans).
fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// The lab's work folder (configs, generated inputs, the agent's raw output), removed when
/// dropped unless DLAB_KEEP_WORK is set (for debugging a failed run).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("DLAB_KEEP_WORK").is_some() {
            eprintln!("lab: kept {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"))
}

/// `p` made absolute (commands run with other working directories).
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    fs::canonicalize(p).with_context(|| format!("{} does not exist", p.display()))
}

/// Runs the lab.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    if args.clean {
        if !is_root() {
            bail!("the lab needs root (network namespaces): run `sudo cargo xtask lab --clean`");
        }
        let removed = topology::clean_leftovers()?;
        if removed.is_empty() {
            println!("lab: nothing to clean");
        }
        for r in removed {
            println!("lab: removed {r}");
        }
        return Ok(());
    }
    if let Some(dir) = &args.stats {
        let bin = match &args.agent {
            Some(p) => absolute(p)?,
            None => {
                crate::run(crate::cargo().args(["build", "-p", "detector"]))?;
                target_dir().join("debug").join("detector")
            }
        };
        return write_stats(&bin, dir);
    }
    let root = crate::root();
    let scen_dir = root.join(&args.scenarios);
    let scenarios = if args.up {
        Vec::new()
    } else {
        scenario::select(scenario::load_dir(&scen_dir)?, &args.scenario)?
    };
    let queues = scenario::plan(&scenarios, args.sessions);
    let default_link = if args.up {
        link::Choice::Fixed(link::Conditions::none())
    } else {
        link::Choice::Random
    };
    let links = link::LinkPlan::parse(&args.link, default_link)?;
    if args.list {
        print_plan(&scenarios, &queues);
        println!("links: {}", links.describe());
        return Ok(());
    }
    if !is_root() {
        bail!("the lab needs root (network namespaces, eBPF): run `sudo cargo xtask lab ...`");
    }
    if args.no_setup {
        crate::setup::check_test_tools()?;
    } else {
        crate::setup::all(true)?;
    }
    for s in &scenarios {
        if sessions::find_in_path(&s.tool).is_none() {
            bail!(
                "{}: field `tool`: `{}` is not installed (add its Debian package to PACKAGES in xtask/src/lab/mod.rs)",
                s.file.display(),
                s.tool
            );
        }
    }
    let release = args.release || args.record;
    let agent_bin = match &args.agent {
        Some(p) => absolute(p)?,
        // `--up` runs no agent: nothing to build.
        None if args.up => PathBuf::new(),
        None => {
            let mut c = crate::cargo();
            c.args(["build", "-p", "detector"]);
            if release {
                c.arg("--release");
            }
            crate::run(&mut c)?;
            target_dir()
                .join(if release { "release" } else { "debug" })
                .join("detector")
        }
    };
    if !args.up && !agent_bin.is_file() {
        bail!("agent binary {} does not exist", agent_bin.display());
    }
    let make_dataset = !(args.no_dataset || args.up);
    let out_dir = match (&args.out, args.record) {
        (Some(o), _) => o.clone(),
        (None, true) => root.join(DEFAULT_RECORDING),
        (None, false) => root
            .join("target")
            .join("lab")
            .join(format!("{}", sessions::now_ns() / 1_000_000_000)),
    };

    install_signal_handlers();
    let work = WorkDir(std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id())));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0)?;
    use std::os::unix::fs::PermissionsExt;
    // Service users (sshd's privilege separation, the lab user) read configs below it.
    fs::set_permissions(&work.0, fs::Permissions::from_mode(0o755))?;
    // Everything is written to a staging folder first and moved into place only when the whole
    // run succeeded, so a failed re-recording never leaves a recording of two runs.
    let stage = work.0.join("out");
    fs::create_dir_all(&stage)?;
    let started = Instant::now();
    let result = lab(
        &args, &scenarios, &queues, &links, &work.0, &agent_bin, &stage,
    );
    reap_orphans();
    let summary = result?;
    if make_dataset && summary.is_some() {
        // One row per attributed flow (its final record), with the live feature set: the
        // agent's own `dataset from-flows` computes the context exactly as it does live.
        let made = crate::run(
            Command::new(&agent_bin)
                .args(["dataset", "from-flows", "--rows", "final"])
                .arg(stage.join("records.jsonl.zst"))
                .arg("--out")
                .arg(stage.join("flows.dds")),
        )
        .and_then(|()| write_stats(&agent_bin, &stage));
        if let Err(e) = made {
            // The records took the whole run to make: keep them where the work folder's
            // clean-up does not reach.
            let keep = root
                .join("target/lab")
                .join(format!("unfinished-{}", sessions::now_ns() / 1_000_000_000));
            move_files(&stage, &keep)?;
            return Err(e.context(format!(
                "the dataset could not be made; the recording is kept in {}",
                keep.display()
            )));
        }
    }
    if let Some(summary) = summary {
        move_files(&stage, &out_dir)?;
        println!(
            "lab: done in {:.0} s: {} → {}",
            started.elapsed().as_secs_f64(),
            summary,
            out_dir.display()
        );
    }
    Ok(())
}

/// Moves every file of `from` into `to` (created when missing).
fn move_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        // rename fails across file systems (/tmp to the checkout): copy then.
        if fs::rename(e.path(), &dest).is_err() {
            fs::copy(e.path(), &dest)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
    }
    Ok(())
}

/// STATS.txt of a recording folder: `detector dataset stats` on its dataset, then rows per
/// session from its manifest (the stats command has no per-session table).
fn write_stats(agent_bin: &Path, dir: &Path) -> anyhow::Result<()> {
    // A relative name, so STATS.txt does not carry this machine's paths.
    let mut text = topology::output(
        Command::new(agent_bin)
            .args(["dataset", "stats", "flows.dds"])
            .current_dir(dir),
    )?;
    let path = dir.join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let mut sessions = manifest["sessions"]
        .as_array()
        .with_context(|| format!("{}: no `sessions`", path.display()))?
        .clone();
    // By scenario, then session index as a number.
    sessions.sort_by_key(|s| {
        let id = s["id"].as_str().unwrap_or_default();
        let (name, n) = id.rsplit_once('/').unwrap_or((id, "0"));
        (name.to_string(), n.parse::<u32>().unwrap_or(0))
    });
    text.push_str(&link_stats(&sessions));
    text.push_str(&format!(
        "\n  rows per session (from manifest.json: one row per attributed flow), with the link of the session\n  \
         {:<30} {:<13} {:<28} {:<10} {:>5} {:>8} {:>6} {:>5} {:>3} {:>9}\n",
        "session", "family", "variant", "host", "rows", "rtt ms", "loss%", "mtu", "ecn", "cap Mbit"
    ));
    for s in &sessions {
        let field = |k: &str| s[k].as_str().unwrap_or("?").to_string();
        let link = &s["link"];
        let cap = link["down_kbit"]
            .as_u64()
            .map(|k| format!("{:.1}", k as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "  {:<30} {:<13} {:<28} {:<10} {:>5} {:>8.3} {:>6.2} {:>5} {:>3} {:>9}\n",
            field("id"),
            field("family"),
            field("variant"),
            field("host"),
            s["flows"].as_u64().unwrap_or(0),
            link["rtt_ms"].as_f64().unwrap_or(0.0),
            link["loss_pct"].as_f64().unwrap_or(0.0),
            link["mtu"].as_u64().unwrap_or(0),
            link["tcp"]["ecn"].as_u64().unwrap_or(0),
            cap
        ));
    }
    fs::write(dir.join("STATS.txt"), text)?;
    Ok(())
}

/// Session time per label and how the sessions' link conditions spread (from the manifest).
fn link_stats(sessions: &[serde_json::Value]) -> String {
    let secs = |s: &serde_json::Value| {
        (s["end_ns"].as_u64().unwrap_or(0)).saturating_sub(s["start_ns"].as_u64().unwrap_or(0))
            as f64
            / 1e9
    };
    let mut text = String::from("\n  session time (sessions run in parallel on different hosts)\n");
    for label in ["benign", "attack"] {
        let of: Vec<&serde_json::Value> = sessions.iter().filter(|s| s["label"] == label).collect();
        text.push_str(&format!(
            "  {label:<8} {:>4} sessions {:>8.1} h\n",
            of.len(),
            of.iter().map(|s| secs(s)).sum::<f64>() / 3600.0 + 0.0
        ));
    }
    let with_link: Vec<&serde_json::Value> =
        sessions.iter().filter(|s| s["link"].is_object()).collect();
    if with_link.is_empty() {
        return text;
    }
    let n = with_link.len() as f64;
    let share = |f: &dyn Fn(&serde_json::Value) -> bool| {
        100.0 * with_link.iter().filter(|s| f(&s["link"])).count() as f64 / n
    };
    let mut rtts: Vec<f64> = with_link
        .iter()
        .filter_map(|s| s["link"]["rtt_ms"].as_f64())
        .collect();
    rtts.sort_by(f64::total_cmp);
    let q = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    text.push_str(&format!(
        "\n  link conditions of {} sessions\n  rtt ms: min {:.3}, quartiles {:.3} {:.3} {:.3}, max {:.3}\n  \
         with jitter {:.0} %, loss {:.0} %, reordering {:.0} %, rate cap {:.0} %\n  \
         mtu 1500 {:.0} %, 9000 {:.0} %, other {:.0} %\n  \
         tcp: ecn asked {:.0} %, no timestamps {:.0} %, no sack {:.0} %, no window scaling {:.0} %, \
         bbr {:.0} %, reno {:.0} %, initcwnd other than 10 {:.0} %\n",
        with_link.len(),
        q(0.0),
        q(0.25),
        q(0.5),
        q(0.75),
        q(1.0),
        share(&|l| l["jitter_ms"].as_f64().unwrap_or(0.0) > 0.0),
        share(&|l| l["loss_pct"].as_f64().unwrap_or(0.0) > 0.0),
        share(&|l| l["reorder_pct"].as_f64().unwrap_or(0.0) > 0.0),
        share(&|l| !l["down_kbit"].is_null()),
        share(&|l| l["mtu"] == 1500),
        share(&|l| l["mtu"] == 9000),
        share(&|l| l["mtu"] != 1500 && l["mtu"] != 9000),
        share(&|l| l["tcp"]["ecn"] == 1),
        share(&|l| l["tcp"]["timestamps"] == false),
        share(&|l| l["tcp"]["sack"] == false),
        share(&|l| l["tcp"]["window_scaling"] == false),
        share(&|l| l["tcp"]["congestion"] == "bbr"),
        share(&|l| l["tcp"]["congestion"] == "reno"),
        share(&|l| l["tcp"]["initcwnd"] != 10),
    ));
    text
}

fn print_plan(
    scenarios: &[scenario::Scenario],
    queues: &BTreeMap<String, Vec<scenario::PlannedSession>>,
) {
    for s in scenarios {
        println!(
            "{:<24} {:<7} {:<13} {:<22} {} session(s) of ≤{:?} on {}{}",
            s.name,
            s.label.as_str(),
            s.family,
            s.variant,
            s.sessions,
            s.duration,
            s.hosts.join(","),
            s.peer
                .as_deref()
                .map(|p| format!(" (peer {p})"))
                .unwrap_or_default()
        );
    }
    for (q, list) in queues {
        let longest: Duration = list
            .iter()
            .map(|p| scenarios[p.scenario].duration + sessions::GAP)
            .sum();
        println!(
            "queue {q}: {} sessions, at most {:.0} s",
            list.len(),
            longest.as_secs_f64()
        );
    }
}

/// Builds the lab, runs it and writes the recording; Some(summary line) unless `--up`.
fn lab(
    args: &LabArgs,
    scenarios: &[scenario::Scenario],
    queues: &BTreeMap<String, Vec<scenario::PlannedSession>>,
    links: &link::LinkPlan,
    work: &Path,
    agent_bin: &Path,
    out_dir: &Path,
) -> anyhow::Result<Option<String>> {
    let id = format!("{PREFIX}{}", std::process::id());
    let topo = Topology::build(&id)?;
    for h in topo
        .hosts
        .iter()
        .filter(|h| h.spec.role != topology::Role::Victim)
    {
        let (c, seed) = links.initial(h.spec.name);
        topo.set_link(h.spec.name, &c, seed)?;
        if args.up {
            eprintln!("lab: {}: {}", h.spec.name, link::summary(&c));
        }
    }
    topo.check_sealed()?;
    let mut services = services::start(&topo, work)?;
    if args.up {
        return hold(&topo).map(|()| None);
    }
    let agent = record::Agent::start(agent_bin, &topo, work)?;
    let run_start = sessions::now_ns();
    // Let the agent's first stats line and any start-up noise pass before the first session.
    std::thread::sleep(Duration::from_millis(500));
    let stop = AtomicBool::new(false);
    let ctx = sessions::Ctx {
        topo: &topo,
        scenarios,
        work,
        key: &services.client_key,
        links,
        stop: &stop,
    };
    eprintln!(
        "lab: {} sessions of {} scenarios on {} queues",
        queues.values().map(Vec::len).sum::<usize>(),
        scenarios.len(),
        queues.len()
    );
    let results = sessions::run_all(&ctx, queues)?;
    // The last packets of the last sessions (FIN/ACK, late replies) reach the agent.
    std::thread::sleep(Duration::from_secs(2));
    services.check_running()?;
    let service_pids = services.pids();
    let hosts: Vec<HostAddrs> = topo
        .hosts
        .iter()
        .map(|h| HostAddrs {
            name: h.spec.name.to_string(),
            role: h.spec.role.as_str().to_string(),
            addrs: h.addrs(),
        })
        .collect();
    let topology = topo.describe();
    let agent_out = agent.out.clone();
    let agent_warnings = agent.stop()?;
    let run_end = sessions::now_ns();
    // Tear down before the (slow) labelling: the guards would do it anyway.
    drop(services);
    drop(topo);
    let windows: Vec<label::SessionWindow> = results.iter().map(|r| r.window.clone()).collect();
    let labeller = Labeller::new(hosts, &windows)?;
    let summary = record::write_recording(
        &agent_out,
        &labeller,
        &service_pids,
        &out_dir.join("records.jsonl.zst"),
        // The committed recording is worth minutes of compression; other runs are not.
        if args.record { 19 } else { 9 },
    )?;
    let ids: Vec<(String, String)> = results
        .iter()
        .map(|r| (r.window.id.clone(), r.window.variant.clone()))
        .collect();
    let spread = record::spread_per_variant(&ids, &summary.flows_per_session);
    let mut sessions_json = Vec::new();
    for r in &results {
        let mut v = serde_json::to_value(r)?;
        v["flows"] = summary
            .flows_per_session
            .get(&r.window.id)
            .copied()
            .unwrap_or(0)
            .into();
        sessions_json.push(v);
    }
    let attack = summary.flows.get("attack").copied().unwrap_or(0);
    let benign = summary.flows.get("benign").copied().unwrap_or(0);
    let manifest = serde_json::json!({
        "format": "detector-lab-recording",
        "version": 1,
        "started_ns": run_start,
        "ended_ns": run_end,
        "duration_s": (run_end.saturating_sub(run_start)) as f64 / 1e9,
        "topology": topology,
        "links": links.describe(),
        "scenarios": scenarios,
        "sessions": sessions_json,
        "summary": summary,
        "agent_warnings": agent_warnings,
        "benign_to_attack_flows": if attack > 0 { benign as f64 / attack as f64 } else { 0.0 },
        "flows_per_session_per_variant": spread,
    });
    fs::write(
        out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    let line = format!(
        "{} sessions, {} flows ({attack} attack, {benign} benign, {} unattributed), {} process records",
        results.len(),
        summary.flows.values().sum::<u64>(),
        summary.flows.get("unattributed").copied().unwrap_or(0),
        summary.process_records.values().sum::<u64>()
    );
    if summary.flows_without_final > 0 {
        eprintln!(
            "lab: warning: {} flows have no final record (the agent's flush missed them); their last record stands in",
            summary.flows_without_final
        );
    }
    if let Some(stats) = &summary.agent_stats {
        for k in ["ringbuf_full", "proc_ringbuf_full", "table_full"] {
            if stats[k].as_u64().unwrap_or(0) > 0 {
                eprintln!("lab: warning: the agent lost records: {k} = {}", stats[k]);
            }
        }
    }
    Ok(Some(line))
}

/// `--up`: prints the topology and waits for stdin to close or a signal.
fn hold(topo: &Topology) -> anyhow::Result<()> {
    println!("{}", topo.describe());
    let closed = std::sync::Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    eprintln!("lab: up; close stdin (Ctrl-D) or press Ctrl-C to tear it down");
    while !closed.load(Ordering::SeqCst) && !interrupted() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

//! `cargo xtask bench [WHAT]`: the speed measurements of BENCHMARKS.md, each against its baseline
//! in one run.
//!
//! - `xdp`: per-packet cost of `detector_xdp` vs the parse-only baseline under BPF_PROG_TEST_RUN
//!   (`cargo bench -p detector --bench xdp`).
//! - `ringbuf`: flow records through the real agent on one core. A generator thread runs the
//!   agent's own attached XDP program (found by its id on the interface, opened by id) with
//!   BPF_PROG_TEST_RUN at paced rates; every run emits one record into the agent's ring buffer
//!   (`--active-timeout 1ns` makes every packet of a flow a record). Records consumed, lost
//!   (the kernel's `ringbuf_full`), the agent's CPU time, and a perf profile of the agent.
//! - `scoring`: `cargo bench -p detector --bench scoring` (int8 vs candle f32, batch 1/64/1024).
//! - `flood`: hping3 floods (fixed and random sources) at rising rates from a namespace at the
//!   victim where the agent runs (drop off and shadow): packets/s reaching the victim, records
//!   lost, alert latency, agent CPU and peak RSS.
//! - `adapt`: wall time of `detector incident confirm` (the answer comes after the swap) for
//!   K = 1, 5, 10 attack connections.
//!
//! Every network here is sealed: namespaces joined by one veth pair, no route out, no NAT; they
//! are deleted when the measurement ends, also on failure or Ctrl-C. Every flood is bounded by
//! `timeout` and a packet count. Results are printed and written to target/bench/<what>.md.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::{
        fd::FromRawFd,
        unix::{fs::FileTypeExt, net::UnixStream, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use serde_json::Value;

use crate::{
    cargo,
    lab::topology::{output, Netns},
    root, run as run_cmd, setup,
};

/// What `cargo xtask bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Xdp,
    Ringbuf,
    Scoring,
    Flood,
    Adapt,
    Footprint,
    All,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure (default: all of it, about 8 minutes).
    #[arg(value_enum, default_value_t = What::All)]
    what: What,
    /// Seconds per rate step (ringbuf, flood).
    #[arg(long, default_value_t = 3)]
    step_secs: u64,
    /// Skip the perf profiles (xdp, ringbuf).
    #[arg(long)]
    no_perf: bool,
    /// Leave the agent at the default scheduling weight. By default it runs in its own session
    /// (its own autogroup) with autogroup nice -10 while measured, so that other sessions'
    /// work on a shared machine does not take most of its core.
    #[arg(long)]
    no_priority: bool,
}

/// Whether agents get their own autogroup at nice -10 (see `--no-priority`).
static PRIORITY: AtomicBool = AtomicBool::new(true);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: namespaces and agents torn down");
    }
    Ok(())
}

/// The CPU the agent is pinned to, and the one load generators use (2-core machine: 1 and 0).
fn cpus() -> (usize, usize) {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if n >= 2 {
        (1, 0)
    } else {
        (0, 0)
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF and create network namespaces: run `cargo xtask bench` as root");
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    PRIORITY.store(!args.no_priority, Ordering::SeqCst);
    setup::all(true)?;
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    let all = args.what == What::All;
    let needs_agent = all || matches!(args.what, What::Ringbuf | What::Flood | What::Adapt);
    if needs_agent {
        run_cmd(cargo().args(["build", "--release", "-p", "detector"]))?;
    }
    let bin = root().join("target/release/detector");
    let mut summary = String::new();
    let mut step =
        |name: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| -> anyhow::Result<()> {
            check_interrupted()?;
            eprintln!("== bench {name}");
            let md = f().with_context(|| format!("bench {name}"))?;
            let path = out.join(format!("{name}.md"));
            fs::write(&path, &md)?;
            println!("\n## {name}\n\n{md}");
            let _ = writeln!(summary, "## {name}\n\n{md}\n");
            eprintln!("== bench {name}: written to {}", path.display());
            Ok(())
        };
    if all || args.what == What::Xdp {
        step("xdp", &mut || bench_xdp(&out, args.no_perf))?;
    }
    if all || args.what == What::Ringbuf {
        step("ringbuf", &mut || {
            bench_ringbuf(&bin, args.step_secs, args.no_perf)
        })?;
    }
    if all || args.what == What::Scoring {
        step("scoring", &mut || bench_scoring(&out))?;
    }
    if all || args.what == What::Flood {
        step("flood", &mut || bench_flood(&bin, args.step_secs))?;
    }
    if all || args.what == What::Adapt {
        step("adapt", &mut || bench_adapt(&bin))?;
    }
    if all || args.what == What::Footprint {
        step("footprint", &mut bench_footprint)?;
    }
    if all {
        fs::write(out.join("results.md"), &summary)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// xdp and scoring: in-process benches of the detector crate.

fn bench_xdp(out: &Path, no_perf: bool) -> anyhow::Result<String> {
    let file = out.join("xdp.raw.md");
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "detector", "--bench", "xdp", "--"])
        .env("DETECTOR_BENCH_OUT", &file);
    if no_perf {
        cmd.arg("--no-perf");
    }
    run_cmd(&mut cmd)?;
    let md = fs::read_to_string(&file)?;
    Ok(format!(
        "Command: `cargo bench -p detector --bench xdp` (root; via `cargo xtask bench xdp`).\n\n{md}"
    ))
}

fn bench_scoring(out: &Path) -> anyhow::Result<String> {
    let (agent_cpu, _) = cpus();
    let output = Command::new("taskset")
        .args(["-c", &agent_cpu.to_string()])
        .arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "-p", "detector", "--bench", "scoring"])
        .env("RAYON_NUM_THREADS", "1")
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo bench --bench scoring")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    fs::write(out.join("scoring.raw.txt"), &text)?;
    if !output.status.success() {
        bail!("cargo bench --bench scoring failed ({})", output.status);
    }
    // criterion prints "name\n   time: [lo est hi]" (or both on one line for short names),
    // then, when an earlier run left its estimates in target/criterion, the change against it
    // on a second "time:" line of percentages: not a time, skipped.
    let mut md = format!(
        "Command: `RAYON_NUM_THREADS=1 taskset -c {agent_cpu} cargo bench -p detector --bench scoring` \
         (criterion; the full table and the int8-vs-f32 reading are in BENCHMARKS.md, section Scoring). \
         Median estimate per batch:\n\n| benchmark | time per batch |\n|---|---|\n"
    );
    let mut name = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(i) = t.find("time:") {
            let head = t[..i].trim();
            if !head.is_empty() {
                name = head.to_string();
            }
            let inner = t[i + 5..]
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let parts: Vec<&str> = inner.split_whitespace().collect();
            if parts.len() >= 4 && !inner.contains('%') {
                let _ = writeln!(md, "| {name} | {} {} |", parts[2], parts[3]);
            }
        } else if !t.is_empty() && !t.contains(':') && !t.starts_with("Benchmarking") {
            name = t.to_string();
        }
    }
    Ok(md)
}

// ---------------------------------------------------------------------------------------------
// Sealed networks, the agent as a child process, its control socket.

/// A namespace for the bench: the lab's (killed and deleted when dropped), IPv4 only, so that
/// no neighbour discovery or MLD chatter gets into the measurements.
fn bench_netns(role: &str) -> anyhow::Result<Netns> {
    let ns = Netns::create(&format!("dbench{}-{role}", std::process::id()))?;
    ns.sysctl(&[
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ])?;
    Ok(ns)
}

const VICTIM_IF: &str = "bv0";
const ATTACKER_IF: &str = "ba0";
const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);

/// The victim and an attacker namespace joined by one veth pair (10.251.0.0/24), offloads off
/// so that each packet on the wire is one packet to the programs; no other link, no route out.
struct Pair {
    victim: Netns,
    attacker: Netns,
}

impl Pair {
    fn new() -> anyhow::Result<Self> {
        let victim = bench_netns("victim")?;
        let attacker = bench_netns("attacker")?;
        sh(&[
            "ip",
            "link",
            "add",
            VICTIM_IF,
            "netns",
            &victim.name,
            "type",
            "veth",
            "peer",
            "name",
            ATTACKER_IF,
            "netns",
            &attacker.name,
        ])?;
        for (ns, ifname, ip) in [
            (&victim, VICTIM_IF, VICTIM),
            (&attacker, ATTACKER_IF, ATTACKER),
        ] {
            ns.run("ip", &["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
            ns.run(
                "ethtool",
                &["-K", ifname, "tso", "off", "gso", "off", "gro", "off"],
            )?;
            ns.run("ip", &["link", "set", ifname, "up"])?;
        }
        // Sealed: no default route in either namespace.
        for ns in [&victim, &attacker] {
            let routes = ns.run("ip", &["route", "show", "default"])?;
            if !routes.trim().is_empty() {
                bail!("namespace {} has a default route: {routes}", ns.name);
            }
        }
        Ok(Self { victim, attacker })
    }
}

fn sh(argv: &[&str]) -> anyhow::Result<String> {
    output(Command::new(argv[0]).args(&argv[1..]))
}

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now, ns (what the agent adds to kernel timestamps).
fn unix_offset_ns() -> i128 {
    let m = mono_ns() as i128;
    let r = clock_ns(libc::CLOCK_REALTIME) as i128;
    let m2 = mono_ns() as i128;
    r - (m + m2) / 2
}

/// `detector run` inside a namespace, pinned to one CPU.
struct Agent {
    child: Option<Child>,
    pid: u32,
    dir: PathBuf,
    log: PathBuf,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC measured when it started (as the agent does).
    offset_ns: i128,
}

impl Agent {
    /// Starts the agent on `iface` with a fresh private directory (empty config = defaults),
    /// records to `records` ("" = none), alerts to `events`, and waits until it detects.
    fn start(
        bin: &Path,
        ns: &Netns,
        iface: &str,
        dir: &Path,
        records: &str,
        events: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let config = dir.join("detector.toml");
        fs::write(&config, "# empty: the agent's built-in defaults\n")?;
        let log = dir.join("agent.log");
        let (cpu, _) = cpus();
        let offset_ns = unix_offset_ns();
        let mut cmd = ns.cmd("taskset");
        cmd.args(["-c", &cpu.to_string()])
            .arg(bin)
            .args(["run", "--iface", iface, "--config"])
            .arg(&config)
            .args(["--output", records, "--events"])
            .arg(events)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--control-socket")
            .arg(dir.join("control.sock"))
            .args(["--metrics-listen", ""])
            .args(extra)
            .env("DETECTOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        // Dies with us if xtask is killed hard: no agent left attached to a dead namespace.
        let own_group = PRIORITY.load(Ordering::SeqCst);
        // SAFETY: prctl and setsid in the child before exec; both async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if own_group {
                    // A session of its own is an autogroup of its own.
                    libc::setsid();
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start the agent")?;
        let pid = child.id();
        if own_group {
            // Best effort: the kernel may lack autogroups.
            let _ = fs::write(format!("/proc/{pid}/autogroup"), "-10");
        }
        let mut agent = Self {
            child: Some(child),
            pid,
            dir: dir.to_path_buf(),
            log,
            offset_ns,
        };
        let start = Instant::now();
        loop {
            let text = fs::read_to_string(&agent.log).unwrap_or_default();
            if text.contains("SIGINT or SIGTERM stops") {
                return Ok(agent);
            }
            if let Some(s) = agent.child.as_mut().unwrap().try_wait()? {
                bail!("the agent exited ({s}) before detecting:\n{}", tail(&text));
            }
            check_interrupted()?;
            if start.elapsed() > Duration::from_secs(90) {
                bail!("the agent did not start within 90 s:\n{}", tail(&text));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// One control-socket request.
    fn control(&self, req: &Value) -> anyhow::Result<Value> {
        let mut s = UnixStream::connect(self.socket())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        s.write_all(&line)?;
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer)?;
        Ok(serde_json::from_str(&answer)?)
    }

    fn status(&self) -> anyhow::Result<Value> {
        self.control(&serde_json::json!({"cmd": "status"}))
    }

    /// utime + stime of the whole process (all threads), seconds.
    fn cpu_s(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // After the comm: state is field 0, utime 11, stime 12.
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / tck
    }

    /// (on-CPU, waiting for a CPU) seconds, summed over its threads (/proc/PID/task/*/schedstat).
    fn sched_s(&self) -> (f64, f64) {
        let mut run = 0u64;
        let mut wait = 0u64;
        if let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) {
            for t in tasks.flatten() {
                let text = fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                let v: Vec<u64> = text
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                run += v.first().copied().unwrap_or(0);
                wait += v.get(1).copied().unwrap_or(0);
            }
        }
        (run as f64 / 1e9, wait as f64 / 1e9)
    }

    /// (VmHWM, VmRSS) in MiB.
    fn memory_mib(&self) -> (f64, f64) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (kb("VmHWM:"), kb("VmRSS:"))
    }

    /// Stops it with SIGINT (it flushes and detaches) and checks that it exited well.
    fn stop(mut self) -> anyhow::Result<String> {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() || log.contains("panicked") {
            bail!("the agent exited with {status}:\n{}", tail(&log));
        }
        Ok(log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn kernel(status: &Value, name: &str) -> u64 {
    status["kernel"][name].as_u64().unwrap_or(0)
}

/// Waits until the agent has scored everything the kernel emitted (`scored` stops moving for
/// 300 ms); returns the last status.
fn drained(agent: &Agent, limit: Duration) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut last = agent.status()?;
    let mut still = 0;
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let s = agent.status()?;
        if s["scored"] == last["scored"] {
            still += 1;
            if still >= 3 {
                return Ok(s);
            }
        } else {
            still = 0;
        }
        last = s;
    }
    Ok(last)
}

fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Percentile (0..=100) of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `perf record` of a running process for `secs`; the symbols at ≥ 1% of its samples (self
/// time), as (share %, symbol).
fn perf_top(pid: u32, secs: u64, file: &Path) -> anyhow::Result<Vec<(f64, String)>> {
    output(
        Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(file)
            .args(["--", "sleep", &secs.to_string()]),
    )?;
    let text = output(
        Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "sym",
                "--percent-limit",
                "1",
                "-i",
            ])
            .arg(file),
    )?;
    // Kept with the work directory (DBENCH_KEEP), for `perf report --sort srcline` of a build
    // with line tables (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only).
    if std::env::var_os("DBENCH_KEEP").is_none() {
        let _ = fs::remove_file(file);
    }
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('%'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let p = it.next()?.trim_end_matches('%').parse().ok()?;
            let _kind = it.next()?;
            let sym: String = it.collect::<Vec<_>>().join(" ");
            // Long generic Rust names: keep the readable head.
            let sym = if sym.chars().count() > 110 {
                format!("{}…", sym.chars().take(110).collect::<String>())
            } else {
                sym
            };
            Some((p, sym))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// BPF_PROG_TEST_RUN on the agent's own program (aya's TestRun on a handle to it).

/// The id of the XDP program attached to `iface` in `ns`.
fn xdp_prog_id(ns: &Netns, iface: &str) -> anyhow::Result<u32> {
    let text = ns.run("ip", &["-j", "link", "show", "dev", iface])?;
    let v: Value = serde_json::from_str(&text)?;
    fn find(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => {
                if let Some(id) = m.get("prog").and_then(|p| p["id"].as_u64()) {
                    return Some(id);
                }
                m.values().find_map(find)
            }
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    v.get(0)
        .and_then(|l| l.get("xdp"))
        .and_then(find)
        .map(|id| id as u32)
        .ok_or_else(|| anyhow!("no XDP program on {iface}: {text}"))
}

/// The loaded program `id` (the agent's XDP program) as aya's handle, to run it with
/// BPF_PROG_TEST_RUN. Dropping it closes this handle only: the agent keeps its own.
fn loaded_xdp(id: u32) -> anyhow::Result<Xdp> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| anyhow!("no loaded BPF program has id {id}"))?;
    Xdp::from_program_info(info, "detector_xdp".into(), XdpAttachType::Interface)
        .with_context(|| format!("cannot open BPF program {id}"))
}

/// BPF_PROG_TEST_RUN: runs the program `repeat` times on `frame`.
fn test_run(prog: &Xdp, frame: &[u8], out: &mut [u8], repeat: u32) -> anyhow::Result<()> {
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        repeat,
        ..TestRunOptions::default()
    })
    .context("BPF_PROG_TEST_RUN")?;
    Ok(())
}

/// An Ethernet + IPv4 + TCP (ACK, 64 bytes of payload) frame from `src:sport` to the victim.
fn tcp_frame(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let payload = 64usize;
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let tot = (20 + 20 + payload) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&VICTIM.octets());
    let mut sum = 0u32;
    for c in ip.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&1000u32.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x10, 0x72, 0x10, 0, 0, 0, 0]);
    f.resize(f.len() + payload, 0);
    f
}

// ---------------------------------------------------------------------------------------------
// Ring buffer → score.

/// Runs per BPF_PROG_TEST_RUN call: one flow per call, every run one record (`new` for the
/// flow's very first, `early` at its 8th packet, `active_timeout` otherwise).
const RUNS_PER_CALL: u32 = 32;
/// Distinct flows (and sources) the generator cycles through.
const GEN_FLOWS: u32 = 4096;

/// Drives the agent's XDP program from a thread pinned to the generator CPU: `rate` records/s
/// (None: as fast as it can) for `secs`, over [`GEN_FLOWS`] flows from `sources` addresses.
/// Returns the runs made.
fn generate(prog: &Xdp, rate: Option<f64>, secs: f64, sources: u32) -> anyhow::Result<u64> {
    let (_, gen_cpu) = cpus();
    let frames: Vec<Vec<u8>> = (0..GEN_FLOWS)
        .map(|i| {
            let s = i % sources;
            let src = Ipv4Addr::new(10, 252, (s >> 8) as u8, s as u8);
            tcp_frame(src, 10_000 + i as u16, 443)
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<u64> {
            pin_this_thread(gen_cpu);
            let mut out = vec![0u8; 512];
            let start = Instant::now();
            let mut calls = 0u64;
            let per_s = rate.map(|r| r / RUNS_PER_CALL as f64);
            loop {
                let now = start.elapsed().as_secs_f64();
                if now >= secs {
                    break;
                }
                if let Some(per_s) = per_s {
                    let due = calls as f64 / per_s;
                    if due > now {
                        let wait = due - now;
                        if wait > 200e-6 {
                            std::thread::sleep(Duration::from_secs_f64(wait - 100e-6));
                        }
                        continue;
                    }
                }
                let f = &frames[(calls % GEN_FLOWS as u64) as usize];
                test_run(prog, f, &mut out, RUNS_PER_CALL)?;
                calls += 1;
            }
            Ok(calls * RUNS_PER_CALL as u64)
        })
        .join()
        .map_err(|_| anyhow!("the generator thread panicked"))?
    })
}

struct RbStep {
    offered_rate: Option<f64>,
    runs: u64,
    packets: u64,
    records: u64,
    lost: u64,
    scored: u64,
    alerts: usize,
    gen_s: f64,
    total_s: f64,
    cpu_gen: f64,
    wait_gen: f64,
    cpu_total: f64,
}

fn lines_in(path: &Path) -> usize {
    fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn bench_ringbuf(bin: &Path, step_secs: u64, no_perf: bool) -> anyhow::Result<String> {
    let pair = Pair::new()?;
    let work = std::env::temp_dir().join(format!("dbench{}-ringbuf", std::process::id()));
    let _cleanup = RemoveDir(work.clone());
    let rates: [Option<f64>; 6] = [
        Some(100e3),
        Some(250e3),
        Some(500e3),
        Some(1e6),
        Some(2e6),
        None,
    ];
    let (agent_cpu, gen_cpu) = cpus();
    let priority = if PRIORITY.load(Ordering::SeqCst) {
        " It runs in its own autogroup at nice -10 (other sessions share this machine)."
    } else {
        ""
    };
    let mut md = format!(
        "Command: `cargo xtask bench ringbuf` (root). The real agent (`detector run`, release build, defaults: \
         4 MiB flow ring buffer, batch 256 / 5 ms, int8 scoring, drop off) attached to a veth in a sealed namespace, \
         pinned to CPU {agent_cpu} with `taskset` (all its threads).{priority} A generator thread pinned to CPU {gen_cpu} \
         runs the agent's own attached `detector_xdp` (opened by its id) through BPF_PROG_TEST_RUN, {RUNS_PER_CALL} runs \
         per call on one of {GEN_FLOWS} TCP flows to the victim's address; the agent runs with `--active-timeout 1ns` \
         so that every run emits one record into its ring buffer. Each step offers a rate for {step_secs} s, then waits \
         until the agent has scored everything. `lost` is the kernel's `ringbuf_full` counter; `exact` checks \
         packets = runs and emitted + lost = runs; `scored` is the agent's count. `on CPU` / `wait` = the agent's \
         run time and its time runnable but waiting for the CPU (schedstat) over the offered window; `rec/CPU-s` = \
         records scored per second of agent CPU time (utime+stime): the one-core capacity, independent of what else \
         runs on the machine.\n"
    );
    let configs: [(&str, &str, u32); 4] = [
        (
            "records as JSON (to /dev/null), a flow log; 64 sources",
            "/dev/null",
            64,
        ),
        (
            "records not written (`--output \"\"`, as installed); 64 sources",
            "",
            64,
        ),
        (
            "records as JSON; 4096 sources (each alerts once: a spoofed-flood pattern)",
            "/dev/null",
            4096,
        ),
        ("records not written; 4096 sources", "", 4096),
    ];
    let mut summary = Vec::new();
    for (n, (label, records, sources)) in configs.into_iter().enumerate() {
        check_interrupted()?;
        let dir = work.join(format!("c{n}"));
        let events = dir.join("alerts.jsonl");
        fs::create_dir_all(&dir)?;
        let agent = Agent::start(
            bin,
            &pair.victim,
            VICTIM_IF,
            &dir,
            records,
            &events,
            &[
                "--drop",
                "off",
                "--active-timeout",
                "1ns",
                "--idle-timeout",
                "1h",
            ],
        )?;
        let id = xdp_prog_id(&pair.victim, VICTIM_IF)?;
        let prog = loaded_xdp(id)?;
        // Warm-up: creates the flows, lets the agent fit its host baseline (novelty on).
        generate(&prog, Some(100e3), 1.0, sources)?;
        drained(&agent, Duration::from_secs(120))?;
        std::thread::sleep(Duration::from_secs(2));
        let mut steps = Vec::new();
        for rate in rates {
            check_interrupted()?;
            let s0 = drained(&agent, Duration::from_secs(120))?;
            let a0 = lines_in(&events);
            let c0 = agent.cpu_s();
            let (_, w0) = agent.sched_s();
            let t0 = Instant::now();
            let runs = generate(&prog, rate, step_secs as f64, sources)?;
            let gen_s = t0.elapsed().as_secs_f64();
            let c1 = agent.cpu_s();
            let (_, w1) = agent.sched_s();
            let s1 = drained(&agent, Duration::from_secs(120))?;
            // drained() waits 300 ms of no change: not part of the consumption time.
            let total_s = (t0.elapsed().as_secs_f64() - 0.3).max(gen_s);
            let c2 = agent.cpu_s();
            let d = |k: &str| kernel(&s1, k) - kernel(&s0, k);
            steps.push(RbStep {
                offered_rate: rate,
                runs,
                packets: d("packets"),
                records: d("records"),
                lost: d("ringbuf_full"),
                scored: s1["scored"].as_u64().unwrap_or(0) - s0["scored"].as_u64().unwrap_or(0),
                alerts: lines_in(&events) - a0,
                gen_s,
                total_s,
                cpu_gen: c1 - c0,
                wait_gen: w1 - w0,
                cpu_total: c2 - c0,
            });
        }
        let _ = writeln!(md, "\n**{label}**\n");
        md.push_str("| offered (target) | offered rec/s | runs | emitted | lost | exact | scored | alerts | consumed rec/s (until drained) | agent on CPU / wait | rec/CPU-s |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for s in &steps {
            let _ = writeln!(
                md,
                "| {} | {:.0} k | {} | {} | {} | {} | {} | {} | {:.0} k | {:.0}% / {:.0}% | {:.0} k |",
                s.offered_rate
                    .map(|r| format!("{:.0} k/s", r / 1e3))
                    .unwrap_or_else(|| "max".into()),
                s.runs as f64 / s.gen_s / 1e3,
                s.runs,
                s.records,
                s.lost,
                if s.records + s.lost == s.runs && s.packets == s.runs { "yes" } else { "NO" },
                s.scored,
                s.alerts,
                s.scored as f64 / s.total_s / 1e3,
                100.0 * s.cpu_gen / s.gen_s,
                100.0 * s.wait_gen / s.gen_s,
                s.scored as f64 / s.cpu_total.max(1e-3) / 1e3,
            );
        }
        let best = steps
            .iter()
            .filter(|s| s.lost == 0)
            .map(|s| s.runs as f64 / s.gen_s)
            .fold(0.0, f64::max);
        let first_loss = steps.iter().find(|s| s.lost > 0);
        // Capacity: records per CPU-second in the steps where the agent was saturated (losses).
        let sat: Vec<&RbStep> = steps.iter().filter(|s| s.lost > 0).collect();
        let capacity = if sat.is_empty() {
            steps
                .iter()
                .map(|s| s.scored as f64 / s.cpu_total.max(1e-3))
                .fold(0.0, f64::max)
        } else {
            sat.iter().map(|s| s.scored).sum::<u64>() as f64
                / sat.iter().map(|s| s.cpu_total).sum::<f64>().max(1e-3)
        };
        let lossless = if best > 0.0 {
            format!("{:.0} k records/s", best / 1e3)
        } else {
            "none of the steps".into()
        };
        let _ = writeln!(
            md,
            "\nZero loss up to: {lossless}; losses start at {}; saturated one-core capacity ≈ {:.0} k records per CPU-second.",
            first_loss
                .map(|s| format!(
                    "{:.0} k records/s offered ({} of {} lost)",
                    s.runs as f64 / s.gen_s / 1e3,
                    s.lost,
                    s.runs
                ))
                .unwrap_or_else(|| "no step (none lost)".into()),
            capacity / 1e3
        );
        summary.push((label, lossless, capacity));
        if !no_perf && perf_available() {
            let file = dir.join("agent.perf");
            let pid = agent.pid;
            let secs = step_secs.max(3);
            let prof = std::thread::scope(|s| {
                let h = s.spawn(|| perf_top(pid, secs, &file));
                let _ = generate(&prog, None, secs as f64 + 0.5, sources);
                h.join().map_err(|_| anyhow!("perf thread panicked"))?
            })?;
            let _ = writeln!(
                md,
                "\nProfile of the agent at the maximum rate (`perf record -e cpu-clock -p PID` for {secs} s; self time, symbols ≥ 1%):\n\n| share | symbol |\n|---|---|"
            );
            for (p, sym) in prof {
                let _ = writeln!(md, "| {p:.1}% | `{}` |", sym.replace('|', "\\|"));
            }
        }
        drained(&agent, Duration::from_secs(120))?;
        let (hwm, _) = agent.memory_mib();
        let _ = writeln!(md, "\nAgent peak RSS (VmHWM) in this run: {hwm:.0} MiB.");
        drop(prog);
        agent.stop()?;
    }
    md.push_str(
        "\n| configuration | zero loss up to | records per agent CPU-second |\n|---|---|---|\n",
    );
    for (label, lossless, cap) in summary {
        let _ = writeln!(md, "| {label} | {lossless} | {:.0} k |", cap / 1e3);
    }
    Ok(md)
}

/// Removes a directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if std::env::var_os("DBENCH_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// End to end under flood.

/// The agent's events written to a FIFO we read from, each line stamped (CLOCK_MONOTONIC) when
/// it arrives: the moment the alert is out of the agent.
struct EventPipe {
    path: PathBuf,
    writer: fs::File,
    reader: Option<std::thread::JoinHandle<Vec<(u64, String)>>>,
}

const PIPE_END: &str = "__dbench_end__";

impl EventPipe {
    fn new(path: &Path) -> anyhow::Result<Self> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C string.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            bail!(
                "mkfifo {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // Read-write: never blocks, and keeps the FIFO open between writers.
        let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
        let mut rd = file.try_clone()?;
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match rd.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let t = mono_ns();
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if line == PIPE_END {
                        return lines;
                    }
                    lines.push((t, line));
                }
            }
            lines
        });
        Ok(Self {
            path: path.to_path_buf(),
            writer: file,
            reader: Some(reader),
        })
    }

    fn finish(mut self) -> Vec<(u64, String)> {
        let _ = writeln!(self.writer, "{PIPE_END}");
        self.reader.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for EventPipe {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = writeln!(self.writer, "{PIPE_END}");
            let _ = r.join();
        }
        if fs::metadata(&self.path).is_ok_and(|m| m.file_type().is_fifo()) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn rx_packets(ns: &Netns, iface: &str) -> u64 {
    ns.run("ip", &["-s", "-j", "link", "show", "dev", iface])
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v[0]["stats64"]["rx"]["packets"].as_u64())
        .unwrap_or(0)
}

struct FloodStep {
    mode: &'static str,
    rand: bool,
    rate: &'static str,
    sent: Option<u64>,
    secs: f64,
    rx: u64,
    xdp_packets: u64,
    records: u64,
    lost: u64,
    table_full: u64,
    alerts: usize,
    /// Alerts on the records the agent flushes when it stops (flows still open then).
    flush_alerts: usize,
    lat_ms: Vec<f64>,
    first_alert_ms: Option<f64>,
    cpu_pct: f64,
    hwm_mib: f64,
    rss_mib: f64,
}

fn bench_flood(bin: &Path, step_secs: u64) -> anyhow::Result<String> {
    let pair = Pair::new()?;
    let work = std::env::temp_dir().join(format!("dbench{}-flood", std::process::id()));
    let _cleanup = RemoveDir(work.clone());
    let (agent_cpu, gen_cpu) = cpus();
    // (label, hping3 pacing, packet bound)
    let rates: [(&str, &[&str], u64); 4] = [
        ("-i u1000", &["-i", "u1000"], 2_000 * step_secs),
        ("-i u100", &["-i", "u100"], 20_000 * step_secs),
        ("-i u10", &["-i", "u10"], 200_000 * step_secs),
        ("--flood", &["--flood"], 2_000_000 * step_secs),
    ];
    let mut steps = Vec::new();
    let mut n = 0;
    for mode in ["off", "shadow"] {
        for rand in [false, true] {
            for (label, pacing, count) in rates {
                check_interrupted()?;
                n += 1;
                let dir = work.join(format!("step{n}"));
                fs::create_dir_all(&dir)?;
                let pipe = EventPipe::new(&dir.join("events.fifo"))?;
                let agent = Agent::start(
                    bin,
                    &pair.victim,
                    VICTIM_IF,
                    &dir,
                    "/dev/null",
                    &pipe.path,
                    &["--drop", mode],
                )?;
                let s0 = agent.status()?;
                let rx0 = rx_packets(&pair.victim, VICTIM_IF);
                let c0 = agent.cpu_s();
                let t0 = mono_ns();
                let mut cmd = pair.attacker.cmd("timeout");
                cmd.args(["-s", "INT", &step_secs.to_string()])
                    .args(["taskset", "-c", &gen_cpu.to_string()])
                    .args(["hping3", "-q", "-S", "-p", "80"])
                    .args(pacing)
                    .args(["-c", &count.to_string()]);
                if rand {
                    cmd.arg("--rand-source");
                }
                cmd.arg(VICTIM.to_string());
                let out = cmd.output().context("cannot run hping3")?;
                let t1 = mono_ns();
                let c1 = agent.cpu_s();
                let rx1 = rx_packets(&pair.victim, VICTIM_IF);
                let s1 = drained(&agent, Duration::from_secs(60))?;
                let (hwm_mib, rss_mib) = agent.memory_mib();
                let offset = agent.offset_ns;
                agent.stop()?;
                let lines = pipe.finish();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                // "N packets tramitted" (sic, hping3's spelling).
                let sent = text
                    .lines()
                    .find(|l| l.contains("packets tr"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|v| v.parse().ok());
                let mut lat_ms = Vec::new();
                let mut first: Option<u64> = None;
                let mut alerts = 0;
                let mut flush_alerts = 0;
                for (recv, line) in &lines {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        continue;
                    };
                    if v["type"] != "alert" {
                        continue;
                    }
                    alerts += 1;
                    // The agent's stop flushes every open flow as a record: an alert on one of
                    // those is about packets seen up to the whole step earlier, not late
                    // detection. Counted apart, kept out of the latency.
                    if v["flow"]["reason"] == "flush" {
                        flush_alerts += 1;
                        continue;
                    }
                    first = Some(first.map_or(*recv, |f: u64| f.min(*recv)));
                    if let Some(ts) = v["ts_ns"].as_u64() {
                        let pkt_mono = ts as i128 - offset;
                        lat_ms.push((*recv as i128 - pkt_mono) as f64 / 1e6);
                    }
                }
                lat_ms.sort_by(f64::total_cmp);
                let d = |k: &str| kernel(&s1, k) - kernel(&s0, k);
                let secs = (t1 - t0) as f64 / 1e9;
                steps.push(FloodStep {
                    mode,
                    rand,
                    rate: label,
                    sent,
                    secs,
                    rx: rx1 - rx0,
                    xdp_packets: d("packets"),
                    records: d("records"),
                    lost: d("ringbuf_full"),
                    table_full: d("table_full"),
                    alerts,
                    flush_alerts,
                    lat_ms,
                    first_alert_ms: first.map(|f| (f as f64 - t0 as f64) / 1e6),
                    cpu_pct: 100.0 * (c1 - c0) / secs,
                    hwm_mib,
                    rss_mib,
                });
            }
        }
    }
    let mut md = format!(
        "Command: `cargo xtask bench flood` (root). Two namespaces joined by one veth pair (sealed: no route out, \
         no NAT; offloads off). The agent (release build, defaults, records as JSON to /dev/null, alerts to a FIFO) \
         runs on the victim, pinned to CPU {agent_cpu}; a fresh agent per step. From the attacker, pinned to CPU \
         {gen_cpu}: `timeout -s INT {step_secs} hping3 -q -S -p 80 RATE -c BOUND [--rand-source] VICTIM` (port 80 \
         closed: the victim answers RST, which TC egress sees too). `sent` is hping3's own count; `rx pps` the \
         victim interface's rx_packets over the step; `XDP pkts` the agent's kernel packet counter (both directions: \
         RSTs included); `lost` = ringbuf_full; `table_full` = flows not tracked. **Alert latency** = the moment an \
         alert line can be read from the agent's events FIFO (CLOCK_MONOTONIC in the reader thread) minus the alert's \
         `ts_ns` (the XDP timestamp of the packet whose record raised it), mapped back with CLOCK_REALTIME − \
         CLOCK_MONOTONIC taken when the agent started (as the agent does). `first alert` = first alert line after \
         hping3 was started. `alerts (at stop)`: all alerts, and in brackets those raised on the records the agent \
         flushes when it is stopped after the step (flows still open then; their packets are up to a step old, so \
         they are kept out of the latency). CPU = agent utime+stime over the flood's wall time (100% = one core); \
         RSS = VmHWM / VmRSS of the agent after the step.\n\n\
         | drop | sources | rate | sent | rx pps | XDP pkts | records | lost | table_full | alerts (at stop) | latency p50 / p99 / max ms | first alert ms | agent CPU | VmHWM / VmRSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for s in &steps {
        let lat = if s.lat_ms.is_empty() {
            "—".to_string()
        } else {
            format!(
                "{:.1} / {:.1} / {:.1}",
                pct(&s.lat_ms, 50.0),
                pct(&s.lat_ms, 99.0),
                s.lat_ms.last().unwrap()
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | `{}` | {} | {:.0} | {} | {} | {} | {} | {} ({}) | {} | {} | {:.0}% | {:.0} / {:.0} |",
            s.mode,
            if s.rand { "random" } else { "one" },
            s.rate,
            s.sent.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            s.rx as f64 / s.secs,
            s.xdp_packets,
            s.records,
            s.lost,
            s.table_full,
            s.alerts,
            s.flush_alerts,
            lat,
            s.first_alert_ms.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into()),
            s.cpu_pct,
            s.hwm_mib,
            s.rss_mib
        );
    }
    let peak = steps.iter().map(|s| s.hwm_mib).fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "\nPeak RSS over all steps: {peak:.0} MiB (target < 128 MB)."
    );
    Ok(md)
}

// ---------------------------------------------------------------------------------------------
// Adaptation latency.

/// A TCP exchange from `src` (bound) to the victim's service; true when it got an answer.
fn request_from(src: Ipv4Addr, port: u16) -> bool {
    let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls with valid addresses; the fd is owned by the TcpStream after.
    let mut s = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let s = TcpStream::from_raw_fd(fd);
        let local = sa(src, 0);
        let remote = sa(VICTIM, port);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0
        {
            return false;
        }
        s
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.ends_with(b"ok")
}

fn bench_adapt(bin: &Path) -> anyhow::Result<String> {
    let pair = Pair::new()?;
    let work = std::env::temp_dir().join(format!("dbench{}-adapt", std::process::id()));
    let _cleanup = RemoveDir(work.clone());
    const PORT: u16 = 80;
    const REPS: usize = 3;
    const BENIGN: usize = 150;
    let sources: Vec<Ipv4Addr> = (0..3 * REPS as u8)
        .map(|i| Ipv4Addr::new(10, 251, 0, 10 + i))
        .collect();
    for s in &sources {
        pair.attacker.run(
            "ip",
            &["addr", "add", &format!("{s}/24"), "dev", ATTACKER_IF],
        )?;
    }
    // The victim's service: answers each connection, until `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let service = {
        let (stop, served) = (stop.clone(), served.clone());
        pair.victim.spawn(move || {
            let l = TcpListener::bind(SocketAddrV4::new(VICTIM, PORT)).expect("bind the service");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 256];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    rx.recv_timeout(Duration::from_secs(10))
        .context("the service did not start")?;
    struct Row {
        k: usize,
        flows: u64,
        cli_ms: f64,
        status_ms: f64,
        ok: bool,
        serving: bool,
        note: String,
    }
    let mut rows = Vec::new();
    let mut next_source = 0;
    let result = (|| -> anyhow::Result<()> {
        for k in [1usize, 5, 10] {
            for rep in 0..REPS {
                check_interrupted()?;
                let dir = work.join(format!("k{k}-{rep}"));
                let agent = Agent::start(
                    bin,
                    &pair.victim,
                    VICTIM_IF,
                    &dir,
                    "",
                    &dir.join("alerts.jsonl"),
                    &["--drop", "off"],
                )?;
                // Benign history from the client (.2), then K connections from a fresh source.
                let benign_ok = pair
                    .attacker
                    .spawn(move || (0..BENIGN).filter(|_| request_from(ATTACKER, PORT)).count())
                    .join()
                    .map_err(|_| anyhow!("client thread panicked"))?;
                let src = sources[next_source];
                next_source += 1;
                let attack_ok = pair
                    .attacker
                    .spawn(move || (0..k).filter(|_| request_from(src, PORT)).count())
                    .join()
                    .map_err(|_| anyhow!("attacker thread panicked"))?;
                if benign_ok < BENIGN || attack_ok < k {
                    bail!(
                        "connections failed: benign {benign_ok}/{BENIGN}, attack {attack_ok}/{k}"
                    );
                }
                // Their records (fin) are read and scored within the batch deadline.
                std::thread::sleep(Duration::from_millis(500));
                let socket = agent.socket();
                let t = Instant::now();
                let st = Command::new(bin)
                    .arg("status")
                    .arg("--socket")
                    .arg(&socket)
                    .output()?;
                let status_ms = t.elapsed().as_secs_f64() * 1e3;
                if !st.status.success() {
                    bail!(
                        "detector status failed: {}",
                        String::from_utf8_lossy(&st.stderr)
                    );
                }
                let t = Instant::now();
                let out = Command::new(bin)
                    .args([
                        "incident",
                        "confirm",
                        "--family",
                        "brute-force",
                        "--source",
                        &src.to_string(),
                        "--socket",
                    ])
                    .arg(&socket)
                    .output()?;
                let cli_ms = t.elapsed().as_secs_f64() * 1e3;
                let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                let ok = out.status.success() && answer["ok"] == true;
                let serving = ok && agent.status()?["model"] == answer["model"];
                rows.push(Row {
                    k,
                    flows: answer["flows"].as_u64().unwrap_or(0),
                    cli_ms,
                    status_ms,
                    ok,
                    serving,
                    note: if ok {
                        format!(
                            "model {}, fpr {} → {}",
                            answer["model"].as_str().unwrap_or("?"),
                            answer["report"]["fpr_before"],
                            answer["report"]["fpr_after"]
                        )
                    } else {
                        String::from_utf8_lossy(&out.stderr).trim().to_string()
                    },
                });
                agent.stop()?;
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = service.join();
    result?;
    let mut md = format!(
        "Command: `cargo xtask bench adapt` (root). Per measurement a fresh agent (defaults, `--drop off`, pinned to \
         CPU {}) on the victim of a sealed veth pair with a TCP service on port 80; {BENIGN} benign requests from \
         one client address, then K requests from a fresh attacker address; 0.5 s later \
         `detector incident confirm --family brute-force --source ADDR --socket S` is timed (wall time of the \
         whole command: process start, request, adaptation on the agent's blocking pool, the model file written, \
         the swap, the answer — the agent answers after the new model serves). `detector status` on the same socket \
         (process start + one round trip) is timed just before, for the fixed cost. `serving` = `status` reports the \
         answered model afterwards.\n\n\
         | K | flows selected | `incident confirm` ms | `status` ms | adapted | serving | answer |\n|---|---|---|---|---|---|---|\n",
        cpus().0
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} |",
            r.k,
            r.flows,
            r.cli_ms,
            r.status_ms,
            if r.ok { "yes" } else { "no" },
            if r.serving { "yes" } else { "no" },
            r.note.replace('|', "\\|")
        );
    }
    let mut by_k: HashMap<usize, Vec<f64>> = HashMap::new();
    for r in rows.iter().filter(|r| r.ok) {
        by_k.entry(r.k).or_default().push(r.cli_ms);
    }
    md.push_str("\n| K | median `incident confirm` ms |\n|---|---|\n");
    for k in [1, 5, 10] {
        if let Some(v) = by_k.get_mut(&k) {
            v.sort_by(f64::total_cmp);
            let _ = writeln!(md, "| {k} | {:.1} |", pct(v, 50.0));
        }
    }
    let _ = served.load(Ordering::Relaxed);
    Ok(md)
}

// ---------------------------------------------------------------------------------------------
// footprint: the daemon without the trainer against the developer's build.

/// Binary size and the idle agent's memory, for the developer's build (the `trainer` feature:
/// training, evaluation, dataset imports, plots) and the daemon the .deb installs (without it),
/// both release builds of this tree, each agent idle on a veth for 5 s.
fn bench_footprint() -> anyhow::Result<String> {
    let daemon_dir = root().join("target/daemon");
    run_cmd(cargo().args(["build", "--release", "-p", "detector"]))?;
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "detector",
                "--no-default-features",
            ])
            .arg("--target-dir")
            .arg(&daemon_dir),
    )?;
    let builds = [
        (
            "developer (default features)",
            root().join("target/release/detector"),
        ),
        (
            "daemon (--no-default-features, the .deb's)",
            daemon_dir.join("release/detector"),
        ),
    ];
    let mut md = String::from(
        "Command: `cargo xtask bench footprint` (root). Release builds; the agent idle on a veth \
         (no traffic) for 5 s after it starts detecting; VmRSS and VmHWM from /proc.\n\n\
         | build | binary | idle RSS | peak RSS |\n|---|---|---|---|\n",
    );
    for (name, bin) in builds {
        let size = fs::metadata(&bin)
            .with_context(|| format!("{}", bin.display()))?
            .len();
        let pair = Pair::new()?;
        let work = std::env::temp_dir().join(format!("dbench{}-footprint", std::process::id()));
        let _cleanup = RemoveDir(work.clone());
        let agent = Agent::start(
            &bin,
            &pair.victim,
            VICTIM_IF,
            &work,
            "",
            &work.join("events"),
            &[],
        )?;
        std::thread::sleep(Duration::from_secs(5));
        let status = fs::read_to_string(format!("/proc/{}/status", agent.pid))?;
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let _ = writeln!(
            md,
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            size as f64 / (1 << 20) as f64,
            kb("VmRSS:") as f64 / 1024.0,
            kb("VmHWM:") as f64 / 1024.0
        );
        drop(agent);
    }
    Ok(md)
}

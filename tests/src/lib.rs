//! Helpers for the integration tests: root checks, network namespaces that clean up after
//! themselves, the agent as a child process, and the real eBPF object under BPF_PROG_TEST_RUN.
//!
//! Every network built here is sealed: namespaces joined by veth pairs, no route out, no NAT.

use std::{
    collections::HashMap as StdHashMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod fixture;
pub mod nats;
pub mod traffic;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use detector::ebpf::{self, maps, Sizes};
use detector_common::flow::{stat, FlowConfig, FlowKey, FlowRecord, FlowState};

/// Moves the program's blocklist generation on, as the agent does after every entry it
/// inserts: tests that insert into BLOCKLIST directly call this after inserting (until then
/// the program skips lookups, or keeps the answers it cached per flow).
pub fn bump_block_generation(ebpf: &mut Ebpf) {
    let mut gen: aya::maps::Array<&mut MapData, u32> =
        aya::maps::Array::try_from(ebpf.map_mut(maps::BLOCKLIST_GEN).expect("the map"))
            .expect("an array");
    let next = detector_common::flow::user::next_block_generation(gen.get(&0, 0).expect("read"));
    gen.set(0, next, 0).expect("set BLOCKLIST_GEN");
}

/// Fails the test, saying why, unless it runs as root: these tests load eBPF and create
/// namespaces. They are `#[ignore]`d, so plain `cargo test` lists them without running them;
/// `cargo xtask test` runs them with `--include-ignored`.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (eBPF, network namespaces): run `cargo xtask test` as root"
    );
}

/// The shared corpus directory ([`detector::corpus::shared_dir`]).
pub fn shared_dir() -> PathBuf {
    detector::corpus::shared_dir()
        .expect("shared corpus not found: set DETECTOR_SHARED_DIR to the folder holding corpus/")
}

/// The files of one corpus folder (`pcap/edge`, ...), sorted.
pub fn corpus_files(sub: &str) -> Vec<PathBuf> {
    let dir = shared_dir().join("corpus").join(sub);
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "{} is empty", dir.display());
    v
}

/// The flow an alert (`detector replay --detect`'s JSON line) is about, as one string: its
/// protocol, source and destination address and port. Distinct flows, not records.
pub fn alert_flow_key(alert: &serde_json::Value) -> String {
    let f = &alert["flow"];
    format!(
        "{}|{}|{}|{}|{}",
        f["proto"], f["src_addr"], f["src_port"], f["dst_addr"], f["dst_port"]
    )
}

/// The captures of the nDPI collection (`corpus/offlab/ndpi`) in `split` with `label`, from its
/// manifest, sorted.
pub fn ndpi_files(split: &str, label: &str) -> Vec<PathBuf> {
    let dir = shared_dir().join("corpus/offlab/ndpi");
    let mut v: Vec<PathBuf> = detector::corpus::manifest(&dir.join("MANIFEST.tsv"))
        .unwrap_or_else(|e| panic!("{e:#}"))
        .into_iter()
        .filter(|r| r.split.as_deref() == Some(split) && r.label == label)
        .map(|r| dir.join(r.file))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {label} captures in the {split} split");
    v
}

/// The model trained without the beaconing family (`cargo xtask train-default
/// --holdout-family beaconing --out detector/models/test/holdout-beaconing.safetensors`): a
/// beaconing session is new to it, so confirming one makes the agent adapt.
pub fn holdout_beaconing_model() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../detector/models/test/holdout-beaconing.safetensors"
    );
    assert!(
        Path::new(p).is_file(),
        "{p} missing: run cargo xtask train-default --holdout-family beaconing --out {p}"
    );
    p.to_string()
}

/// The agent binary: $DETECTOR_BIN (`cargo xtask test` sets it), else target/debug/detector,
/// built once per test process by `cargo build -p detector` (plain `cargo test` builds only the
/// library that the tests link, not the binary).
pub fn detector_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = std::env::var_os("DETECTOR_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "DETECTOR_BIN={} does not exist", p.display());
        return p;
    }
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let out = Command::new(cargo)
                .current_dir(&root)
                .args(["build", "-q", "-p", "detector", "--bin", "detector"])
                .output()
                .expect("run cargo build -p detector");
            assert!(
                out.status.success(),
                "cargo build -p detector failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("debug/detector")
        })
        .clone()
}

/// Runs a command line (split on spaces) and returns stdout; panics with stderr on failure.
pub fn sh(line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    assert!(
        out.status.success(),
        "{line} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted (with its interfaces) when dropped, also when a test fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Self { name }
    }

    /// Runs a command line inside the namespace; panics on failure.
    pub fn sh(&self, line: &str) -> String {
        sh(&format!("ip netns exec {} {line}", self.name))
    }

    /// Path of the namespace handle, for setns/nsenter.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                let ns = fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only; the fd is valid.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
                f()
            })
            .expect("spawn thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Two namespaces joined by a veth pair with IPv4 (10.x.y.1/.2) and IPv6 (fd00::1/2)
/// addresses, offloads off so that every packet on the wire is one packet to the programs.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
    pub a_ip: [u8; 4],
    pub b_ip: [u8; 4],
    pub a_ip6: [u8; 16],
    pub b_ip6: [u8; 16],
}

impl Pair {
    pub fn new() -> Self {
        let a = Netns::new("dta");
        let b = Netns::new("dtb");
        let a_if = unique("va");
        let b_if = unique("vb");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (x, y) = (((std::process::id() % 200) + 20) as u8, (n % 250) as u8);
        let a_ip = [10, x, y, 1];
        let b_ip = [10, x, y, 2];
        let mut a_ip6 = [0u8; 16];
        a_ip6[0] = 0xfd;
        a_ip6[1] = x;
        a_ip6[2] = y;
        let mut b_ip6 = a_ip6;
        a_ip6[15] = 1;
        b_ip6[15] = 2;
        sh(&format!(
            "ip link add {a_if} netns {} type veth peer name {b_if} netns {}",
            a.name, b.name
        ));
        for (ns, ifname, ip, ip6) in [(&a, &a_if, a_ip, a_ip6), (&b, &b_if, b_ip, b_ip6)] {
            let ip = std::net::Ipv4Addr::from(ip);
            let ip6 = std::net::Ipv6Addr::from(ip6);
            sh(&format!("ip -n {} addr add {ip}/24 dev {ifname}", ns.name));
            sh(&format!(
                "ip -n {} addr add {ip6}/64 dev {ifname} nodad",
                ns.name
            ));
            ns.sh(&format!("ethtool -K {ifname} tso off gso off gro off"));
            sh(&format!("ip -n {} link set {ifname} up", ns.name));
        }
        Self {
            a,
            b,
            a_if,
            b_if,
            a_ip,
            b_ip,
            a_ip6,
            b_ip6,
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// A small sealed LAN: host namespaces joined through a bridge that lives in its own namespace.
/// Host `i` has address 10.<x>.<y>.<i+1>/24 on interface `eth<i>`-like names; no routes out.
pub struct Lan {
    pub hosts: Vec<Netns>,
    pub ifaces: Vec<String>,
    pub ips: Vec<[u8; 4]>,
    _switch: Netns,
}

impl Lan {
    pub fn new(n: usize) -> Self {
        let switch = Netns::new("dtsw");
        switch.sh("ip link add br0 type bridge");
        switch.sh("ip link set br0 up");
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let (x, y) = (((std::process::id() % 200) + 20) as u8, (k % 250) as u8);
        let mut hosts = Vec::new();
        let mut ifaces = Vec::new();
        let mut ips = Vec::new();
        for i in 0..n {
            let ns = Netns::new("dth");
            let ifname = unique("lh");
            let peer = unique("lp");
            let ip = [10, x, y, (i + 1) as u8];
            sh(&format!(
                "ip link add {ifname} netns {} type veth peer name {peer} netns {}",
                ns.name, switch.name
            ));
            switch.sh(&format!("ip link set {peer} master br0"));
            switch.sh(&format!("ip link set {peer} up"));
            ns.sh("sysctl -q -w net.ipv6.conf.all.disable_ipv6=1");
            sh(&format!(
                "ip -n {} addr add {}/24 dev {ifname}",
                ns.name,
                std::net::Ipv4Addr::from(ip)
            ));
            ns.sh(&format!("ethtool -K {ifname} tso off gso off gro off"));
            sh(&format!("ip -n {} link set {ifname} up", ns.name));
            hosts.push(ns);
            ifaces.push(ifname);
            ips.push(ip);
        }
        Self {
            hosts,
            ifaces,
            ips,
            _switch: switch,
        }
    }

    /// Dotted address of host `i`.
    pub fn ip(&self, i: usize) -> String {
        std::net::Ipv4Addr::from(self.ips[i]).to_string()
    }
}

/// The agent running in a namespace, its JSON lines going to a file.
pub struct Agent {
    child: Option<Child>,
    pub out: PathBuf,
    pub log: PathBuf,
    /// The directory [`Agent::start`] made for it, removed after the agent (fields drop after
    /// `Drop::drop` has killed the process).
    _own_dir: Option<AgentDir>,
}

impl Agent {
    /// Starts `detector run` inside `ns` (nsenter keeps the host's /sys, so tracefs stays
    /// visible) with extra arguments, and waits until it runs. Records and alerts go to one
    /// file; state, control socket and metrics are private to this agent (see [`AgentDir`]).
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        let dir = AgentDir::new();
        let mut agent = Self::start_in(ns, &dir, args);
        agent._own_dir = Some(dir);
        agent
    }

    /// Like [`Agent::start`], with a given directory (to restart an agent on its state). Records
    /// go to the same file as the alerts unless `args` has an `--output` of its own (`""`: none,
    /// as the packaged configuration has it); no metrics unless it has a `--metrics-listen`.
    pub fn start_in(ns: &Netns, dir: &AgentDir, args: &[&str]) -> Self {
        let out = dir.path.join("out.jsonl");
        let log = dir.path.join(format!("{}.log", unique("agent")));
        let records = if args.contains(&"--output") {
            vec![]
        } else {
            vec!["--output".to_string(), out.display().to_string()]
        };
        let metrics = if args.contains(&"--metrics-listen") {
            vec![]
        } else {
            vec!["--metrics-listen", ""]
        };
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(detector_bin())
            .arg("run")
            .arg("--config")
            .arg(&dir.config)
            .args(args)
            .args(&records)
            .arg("--events")
            .arg(&out)
            .arg("--state-dir")
            .arg(dir.path.join("state"))
            .arg("--control-socket")
            .arg(dir.socket())
            .args(&metrics)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the agent");
        let mut agent = Self {
            child: Some(child),
            out,
            log,
            _own_dir: None,
        };
        agent.wait_for_log("SIGINT or SIGTERM stops", Duration::from_secs(60));
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills the agent with SIGKILL (no cleanup of its own) and waits for it.
    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The JSON lines written so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        if self.out.exists() {
            read_jsonl(&self.out)
        } else {
            Vec::new()
        }
    }

    /// Waits until the agent's log contains `needle`; panics with the log on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({status}) before {needle:?}:\n{log}");
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGINT (it flushes open flows) and returns its JSON lines.
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!(
                    "agent did not stop within 20 s:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "agent exited with {status}:\n{log}");
        assert!(!log.contains("panicked"), "agent panicked:\n{log}");
        read_jsonl(&self.out)
    }
}

/// An agent's private directory: configuration file, state dir, control socket, output.
pub struct AgentDir {
    pub path: PathBuf,
    pub config: PathBuf,
}

impl AgentDir {
    /// A fresh directory with an empty configuration (all defaults).
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A fresh directory with this configuration text.
    pub fn with_config(toml: &str) -> Self {
        let path = std::env::temp_dir().join(unique("detector-agent-"));
        fs::create_dir_all(&path).unwrap();
        let config = path.join("detector.toml");
        fs::write(&config, toml).unwrap();
        Self { path, config }
    }

    /// The control socket path.
    pub fn socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    /// Runs a client subcommand (`status`, `incident confirm ...`) against this agent.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        client_at(&self.socket(), args)
    }
}

/// Runs a client subcommand against the agent listening on `socket` (from a thread that cannot
/// borrow the [`AgentDir`]).
pub fn client_at(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(detector_bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run the client")
}

impl Default for AgentDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Removed with what the agent wrote there (its records can be tens of MB), except when the
/// test failed: then it stays for a look.
impl Drop for AgentDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
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

/// Parses a JSON-lines file; panics on a line that is not JSON.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    BufReader::new(f)
        .lines()
        .map(|l| {
            let l = l.unwrap();
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))
        })
        .collect()
}

/// The last (final) record of each flow in agent output, keyed by
/// (proto, src addr, src port, dst addr, dst port) as strings.
pub fn final_flows(
    lines: &[serde_json::Value],
) -> StdHashMap<(u64, String, u64, String, u64), serde_json::Value> {
    let mut out = StdHashMap::new();
    for l in lines.iter().filter(|l| l["type"] == "flow") {
        let k = (
            l["proto"].as_u64().unwrap(),
            l["src_addr"].as_str().unwrap().to_string(),
            l["src_port"].as_u64().unwrap(),
            l["dst_addr"].as_str().unwrap().to_string(),
            l["dst_port"].as_u64().unwrap(),
        );
        out.insert(k, l.clone());
    }
    out
}

/// The state fields that do not depend on the clock or on when records were exported.
pub fn untimed(s: &FlowState) -> FlowState {
    FlowState {
        first_seen_ns: 0,
        last_seen_ns: 0,
        last_export_ns: 0,
        exported_packets: 0,
        iat_min_ns: 0,
        iat_max_ns: 0,
        iat_sumsq_us: 0,
        first_gaps_us: [0; 8],
        ..*s
    }
}

/// Writes `src` (pcap or pcapng) as a classic nanosecond pcap whose packets are padded with
/// zeros to their on-the-wire length, so that a sender puts on the wire frames as long as the
/// original ones. Returns (packets, first and last timestamp in ns).
pub fn write_padded_pcap(src: &Path, dst: &Path) -> (u64, u64, u64) {
    rewrite_pcap(src, dst, true, |ts, _| ts, |_| {})
}

/// The file header of a classic nanosecond-resolution pcap.
fn pcap_header(link_type: u32) -> Vec<u8> {
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&[0u8; 8]);
    hdr.extend_from_slice(&262_144u32.to_le_bytes());
    hdr.extend_from_slice(&link_type.to_le_bytes());
    hdr
}

/// Writes `src` (pcap or pcapng) as a classic nanosecond pcap of the same link type, each
/// packet's timestamp through `ts` (given it and the first packet's) and its bytes through
/// `edit`; with `pad`, packets are padded with zeros to their on-the-wire length. Returns
/// (packets, first and last original timestamp in ns).
pub fn rewrite_pcap(
    src: &Path,
    dst: &Path,
    pad: bool,
    ts: impl Fn(u64, u64) -> u64,
    mut edit: impl FnMut(&mut [u8]),
) -> (u64, u64, u64) {
    use std::io::Write;
    let mut r = detector::pcap::Reader::open(src).unwrap_or_else(|e| panic!("{e}"));
    let mut w = std::io::BufWriter::new(fs::File::create(dst).unwrap());
    let (mut n, mut first, mut last) = (0u64, 0u64, 0u64);
    while let Some(p) = r.next_packet().unwrap_or_else(|e| panic!("{e}")) {
        if n == 0 {
            w.write_all(&pcap_header(p.link_type)).unwrap();
            first = p.ts_ns;
        }
        let len = if pad {
            p.wire_len.max(p.data.len())
        } else {
            p.data.len()
        };
        let t = ts(p.ts_ns, first);
        let mut data = p.data.to_vec();
        data.resize(len, 0);
        edit(&mut data);
        let mut rec = Vec::with_capacity(16 + len);
        rec.extend_from_slice(&((t / 1_000_000_000) as u32).to_le_bytes());
        rec.extend_from_slice(&((t % 1_000_000_000) as u32).to_le_bytes());
        rec.extend_from_slice(&(len as u32).to_le_bytes());
        rec.extend_from_slice(&(p.wire_len.max(len) as u32).to_le_bytes());
        rec.extend_from_slice(&data);
        w.write_all(&rec).unwrap();
        last = p.ts_ns;
        n += 1;
    }
    if n == 0 {
        w.write_all(&pcap_header(1)).unwrap();
    }
    w.flush().unwrap();
    (n, first, last)
}

/// The real eBPF object, loaded for BPF_PROG_TEST_RUN (not attached anywhere).
pub struct Loaded {
    pub ebpf: Ebpf,
}

impl Loaded {
    /// Loads the embedded object with the given sizes and flow config.
    pub fn new(sizes: &Sizes, cfg: &FlowConfig) -> Self {
        require_root();
        let mut ebpf = ebpf::load(None, sizes).expect("load the eBPF object");
        ebpf::write_config(&mut ebpf, cfg).expect("write config");
        ebpf::load_flow_programs(&mut ebpf).expect("load programs");
        Self { ebpf }
    }

    /// Default sizes and config.
    pub fn default_config() -> Self {
        Self::new(&Sizes::default(), &FlowConfig::DEFAULT)
    }

    /// Runs the XDP program once on `frame`; returns the XDP action.
    pub fn run(&mut self, frame: &[u8]) -> u32 {
        self.run_program(ebpf::XDP_PROGRAM, frame)
    }

    /// Runs the loaded XDP program `name` once on `frame`; returns the XDP action.
    pub fn run_program(&mut self, name: &str, frame: &[u8]) -> u32 {
        let prog: &mut Xdp = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }

    /// Attaches the XDP program to `iface` inside `ns` (from a thread that entered it).
    pub fn attach_xdp_in(&mut self, ns: &Netns, iface: &str) {
        let path = ns.path();
        let obj = &mut self.ebpf;
        std::thread::scope(|s| {
            s.spawn(|| {
                let f = fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this scoped thread only; the fd is valid.
                let rc =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                ebpf::attach_xdp(obj, iface, ebpf::XdpAttach::Native)
                    .unwrap_or_else(|e| panic!("{e:#}"));
            })
            .join()
            .unwrap();
        });
    }

    /// Every entry of the flow table.
    pub fn flows(&self) -> StdHashMap<FlowKey, FlowState> {
        let map: HashMap<&MapData, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map(maps::FLOWS).unwrap()).unwrap();
        map.iter().map(|r| r.unwrap()).collect()
    }

    /// The per-CPU counters, summed.
    pub fn stats(&self) -> [u64; stat::COUNT as usize] {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::STATS).unwrap()).unwrap();
        let mut out = [0u64; stat::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = map.get(&(i as u32), 0).unwrap().iter().sum();
        }
        out
    }

    /// Drains the flow ring buffer.
    pub fn records(&mut self) -> Vec<FlowRecord> {
        let mut rb: RingBuf<&mut MapData> =
            RingBuf::try_from(self.ebpf.map_mut(maps::FLOW_EVENTS).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            out.push(detector_common::user::read_item::<FlowRecord>(&item).expect("record size"));
        }
        out
    }
}

//! The lab (`cargo xtask lab`, docs/lab.md) end to end: its network is sealed (nothing reaches an
//! outside address, and it is gone afterwards), the relays give each host the link conditions it
//! was given (delay, jitter, loss, rate, MTU, TCP stack, measured from inside the lab), a short
//! scan and a short benign scenario come out of the real agent labelled, with the scan's flows
//! present and the dataset written, and the committed recording varies the network.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use detector::dataset::Dataset;
use integration_tests::{detector_bin, require_root, unique};
use serde_json::Value;

/// Flows per session of one scenario may differ by this much between two runs (docs/lab.md,
/// "Determinism"): relative to their mean, or two flows, whichever is larger.
const FLOW_COUNT_TOLERANCE: f64 = 0.05;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo run -q -p xtask -- lab --no-setup <args>` in the workspace, with the agent the tests
/// use. `--no-setup`: `cargo xtask test` installed the lab's packages before any test started;
/// a test installing them would race another test doing the same.
fn lab_command(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(workspace())
        .args([
            "run",
            "-q",
            "-p",
            "xtask",
            "--",
            "lab",
            "--no-setup",
            "--agent",
        ])
        .arg(detector_bin())
        .args(args);
    c
}

fn run_ok(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// A lab held up by `lab --up`; dropping it closes stdin (the lab tears down) and, if the lab
/// does not exit, kills it.
struct HeldLab {
    child: Child,
    stdin: Option<ChildStdin>,
    topology: Value,
    stderr: PathBuf,
}

impl HeldLab {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// `lab --up` with more arguments (`--link ...`).
    fn start_with(extra: &[&str]) -> Self {
        let stderr = std::env::temp_dir().join(format!("{}.log", unique("lab-up-")));
        let mut args = vec!["--up"];
        args.extend_from_slice(extra);
        let mut child = lab_command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start cargo xtask lab --up");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Generous: the first call may build xtask and the agent.
        let line = rx
            .recv_timeout(Duration::from_secs(900))
            .unwrap_or_default();
        let mut lab = Self {
            child,
            stdin,
            topology: Value::Null,
            stderr,
        };
        lab.topology = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "lab --up printed no topology ({e}): {line:?}\n{}",
                fs::read_to_string(&lab.stderr).unwrap_or_default()
            )
        });
        lab
    }

    /// Closes stdin and waits for the lab to tear down; returns its stderr.
    fn stop(mut self) -> String {
        drop(self.stdin.take());
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = fs::read_to_string(&self.stderr).unwrap_or_default();
                assert!(status.success(), "lab --up exited with {status}:\n{log}");
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "lab --up did not tear down within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for HeldLab {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self
            .child
            .wait_timeout_or_kill(Duration::from_secs(30))
            .is_none()
        {
            let _ = self.child.wait();
        }
    }
}

trait WaitTimeout {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < d {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SIGTERM: the lab's handler tears down as on Ctrl-C.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.id() as i32, libc::SIGTERM) };
        None
    }
}

/// tcpdump on the lab's bridge; `stop` returns the packets it printed.
struct Capture {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Capture {
    fn start(bridge_ns: &str, bridge: &str) -> Self {
        Self::start_filtered(bridge_ns, bridge, "icmp or icmp6 or udp or tcp")
    }

    fn start_filtered(bridge_ns: &str, bridge: &str, filter: &str) -> Self {
        let mut child = in_ns(bridge_ns, "tcpdump")
            .args(["-n", "-l", "-i", bridge, filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut seen = String::new();
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if seen.contains("listening on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(20))
            .expect("tcpdump on the bridge did not start listening");
        Self { child, lines }
    }

    fn stop(mut self) -> Vec<String> {
        // SAFETY: signalling our own child; SIGINT makes tcpdump flush and exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        self.lines.try_iter().collect()
    }
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn lab_network_is_sealed_and_torn_down() {
    require_root();
    let lab = HeldLab::start();
    let topo = lab.topology.clone();
    let id = topo["id"].as_str().unwrap().to_string();
    let hosts = topo["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 11, "{topo}");
    let bridge_ns = topo["bridge_ns"].as_str().unwrap();
    let capture = Capture::start(bridge_ns, topo["bridge"].as_str().unwrap());
    for h in &hosts {
        let ns = h["ns"].as_str().unwrap();
        let name = h["name"].as_str().unwrap();
        for fam in ["-4", "-6"] {
            let (ok, out) = run_ok(in_ns(ns, "ip").args([fam, "route", "show", "default"]));
            assert!(
                ok && out.trim().is_empty(),
                "{name}: default route {fam}: {out}"
            );
        }
        for (dst, ping6) in [("198.51.100.1", false), ("2001:db8::1", true)] {
            let (ok, out) = run_ok(in_ns(ns, "ip").args(["route", "get", dst]));
            assert!(!ok, "{name}: a route to {dst} exists: {out}");
            assert!(out.contains("unreachable"), "{name}: {out}");
            let mut ping = in_ns(ns, "ping");
            if ping6 {
                ping.arg("-6");
            }
            let (ok, out) = run_ok(ping.args(["-c", "1", "-W", "1", dst]));
            assert!(!ok, "{name}: ping {dst} succeeded: {out}");
            assert!(
                out.contains("Network is unreachable"),
                "{name}: ping {dst}: {out}"
            );
        }
        // Also a UDP datagram, the way a tool would send one.
        let (ok, out) = run_ok(in_ns(ns, "nc").args(["-u", "-w", "1", "198.51.100.1", "53"]));
        assert!(!ok || out.contains("unreachable"), "{name}: nc: {out}");
        // Every host but the victim reaches the bridge through its relay.
        assert_eq!(
            h["relay"].is_object(),
            name != "victim",
            "{name}: relay {}",
            h["relay"]
        );
    }
    // The relay namespace, like the bridge's, has no address and no route: it only copies
    // frames between each host's two interfaces.
    let relay_ns = topo["relay_ns"].as_str().unwrap();
    for ns in [relay_ns, bridge_ns] {
        let (_, addrs) = run_ok(in_ns(ns, "ip").args(["-o", "addr", "show"]));
        let addrs: Vec<&str> = addrs.lines().filter(|l| !l.contains(" lo ")).collect();
        assert!(addrs.is_empty(), "{ns} has addresses: {addrs:?}");
        for fam in ["-4", "-6"] {
            let (_, routes) = run_ok(in_ns(ns, "ip").args([fam, "route", "show"]));
            assert!(routes.trim().is_empty(), "{ns} has routes {fam}: {routes}");
        }
    }
    // The capture works: traffic inside the lab shows up on the bridge.
    let attacker = hosts
        .iter()
        .find(|h| h["name"] == "attacker1")
        .expect("attacker1");
    let (ok, out) = run_ok(in_ns(attacker["ns"].as_str().unwrap(), "ping").args([
        "-c",
        "2",
        "-W",
        "1",
        "10.77.0.2",
    ]));
    assert!(ok, "attacker1 cannot reach the victim: {out}");
    let lines = capture.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("10.77.0.21 > 10.77.0.2: ICMP echo request")),
        "the capture on the bridge did not see the in-lab ping: {lines:?}"
    );
    let leaked: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("198.51.100.1") || l.contains("2001:db8::1"))
        .collect();
    assert!(leaked.is_empty(), "packets toward outside: {leaked:?}");

    let log = lab.stop();
    let (_, list) = run_ok(Command::new("ip").args(["netns", "list"]));
    let left: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with(&format!("{id}-")))
        .collect();
    assert!(
        left.is_empty(),
        "namespaces left after teardown: {left:?}\n{log}"
    );
}

/// Round-trip times (ms) of the replies `ping` printed, and how many of `count` came back.
fn ping_rtts(ns: &str, dst: &str, count: u32, interval: &str) -> (Vec<f64>, u32) {
    let out = in_ns(ns, "ping")
        .args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "2",
            dst,
        ])
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let n = rtts.len() as u32;
    (rtts, n)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn host_ns(topo: &Value, name: &str) -> String {
    topo["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["ns"].as_str())
        .unwrap_or_else(|| panic!("no host {name} in {topo}"))
        .to_string()
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn lab_links_apply_their_conditions() {
    require_root();
    let lab = HeldLab::start_with(&[
        "--link",
        "client1:rtt=40ms,jitter=4ms,loss=10%",
        "--link",
        "client2:down=20mbit,mtu=1280,ecn=1,timestamps=0,initcwnd=4",
    ]);
    let topo = lab.topology.clone();
    let (c1, c2, c3) = (
        host_ns(&topo, "client1"),
        host_ns(&topo, "client2"),
        host_ns(&topo, "client3"),
    );

    // Delay and jitter: each direction waits 20 ms plus 0..2 ms, so every round trip takes
    // 40 to 44 ms, plus what the machine adds.
    let sent = 1000;
    let (mut rtts, received) = ping_rtts(&c1, "10.77.0.2", sent, "0.005");
    rtts.sort_by(f64::total_cmp);
    assert!(received > 0, "client1: no ping came back");
    let (min, med, p90) = (rtts[0], percentile(&rtts, 0.5), percentile(&rtts, 0.9));
    assert!(
        min >= 40.0,
        "client1: a round trip of {min} ms, under the 40 ms delay"
    );
    assert!(
        (41.0..=45.0).contains(&med),
        "client1: median round trip {med} ms"
    );
    assert!(p90 <= 47.0, "client1: 90th percentile round trip {p90} ms");
    // Loss: 10 % each way loses 19 % of round trips; 1000 pings give a standard deviation of
    // 1.2 points, and four of them are allowed.
    let lost = 1.0 - f64::from(received) / f64::from(sent);
    eprintln!(
        "client1 (rtt 40 ms, jitter 4 ms, loss 10 %): round trip min {min:.3} median {med:.3} \
         p90 {p90:.3} max {:.3} ms, {:.1} % of {sent} pings lost",
        rtts[rtts.len() - 1],
        lost * 100.0
    );
    assert!(
        (0.14..=0.24).contains(&lost),
        "client1: {lost:.3} of pings lost, not 0.19"
    );

    // A host without conditions: the relay alone adds little.
    let (mut rtts, received) = ping_rtts(&c3, "10.77.0.2", 200, "0.005");
    rtts.sort_by(f64::total_cmp);
    assert_eq!(received, 200, "client3 lost pings without loss set");
    let med = percentile(&rtts, 0.5);
    eprintln!("client3 (no conditions): median round trip {med:.3} ms");
    assert!(
        med < 2.0,
        "client3: median round trip {med} ms without delay"
    );

    // MTU 1280: a 1300-byte ping does not leave; the SYN's MSS says 1240, it asks for ECN
    // (ECE and CWR with SYN: tcpdump's [SEW]) and carries no timestamps.
    let (_, link) = run_ok(in_ns(&c2, "ip").args(["link", "show", "eth0"]));
    assert!(link.contains("mtu 1280"), "client2: {link}");
    let (ok, out) =
        run_ok(in_ns(&c2, "ping").args(["-c", "1", "-M", "do", "-s", "1300", "10.77.0.2"]));
    assert!(
        !ok,
        "client2: a 1300-byte ping left an MTU 1280 interface: {out}"
    );
    let (_, routes) = run_ok(in_ns(&c2, "ip").args(["route", "show"]));
    assert!(routes.contains("initcwnd 4"), "client2: {routes}");
    let capture = Capture::start_filtered(
        topo["bridge_ns"].as_str().unwrap(),
        topo["bridge"].as_str().unwrap(),
        "tcp[tcpflags] & tcp-syn != 0 and src host 10.77.0.12",
    );
    // Rate cap: 20 Mbit/s toward client2; an 8 MiB download takes about 3.4 s.
    let out = in_ns(&c2, "curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{speed_download}"])
        .arg("http://10.77.0.2/files/pkg-1.deb")
        .output()
        .expect("run curl");
    let mbit = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .unwrap_or(0.0)
        * 8.0
        / 1e6;
    eprintln!("client2 (20 Mbit/s down): downloaded at {mbit:.2} Mbit/s");
    assert!(
        (16.0..=20.5).contains(&mbit),
        "client2: downloaded at {mbit:.1} Mbit/s under a 20 Mbit/s cap"
    );
    let syns = capture.stop();
    let syn = syns
        .iter()
        .find(|l| l.contains("> 10.77.0.2.80:"))
        .unwrap_or_else(|| panic!("no SYN from client2 on the bridge: {syns:?}"));
    assert!(
        syn.contains("Flags [SEW]"),
        "client2's SYN does not ask for ECN: {syn}"
    );
    assert!(syn.contains("mss 1240"), "client2's SYN: {syn}");
    assert!(
        !syn.contains("TS val"),
        "client2's SYN has timestamps: {syn}"
    );
    lab.stop();
}

/// The committed recording (lab/recordings/default) was made under varied link conditions, holds
/// every attack family and at least an hour of benign sessions.
#[test]
fn committed_recording_varies_the_network() {
    let path = workspace().join("lab/recordings/default/manifest.json");
    let manifest: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let sessions = manifest["sessions"].as_array().unwrap();
    let mut benign_s = 0.0;
    let mut families = BTreeSet::new();
    let (mut rtts, mut mtus, mut ecn, mut lossy, mut capped) =
        (Vec::new(), BTreeSet::new(), 0, 0, 0);
    for s in sessions {
        let link = &s["link"];
        assert!(link.is_object(), "{}: no link conditions", s["id"]);
        rtts.push(link["rtt_ms"].as_f64().unwrap());
        mtus.insert(link["mtu"].as_u64().unwrap());
        ecn += usize::from(link["tcp"]["ecn"] == 1);
        lossy += usize::from(link["loss_pct"].as_f64().unwrap() > 0.0);
        capped += usize::from(!link["down_kbit"].is_null());
        let secs = (s["end_ns"].as_u64().unwrap() - s["start_ns"].as_u64().unwrap()) as f64 / 1e9;
        if s["label"] == "benign" {
            benign_s += secs;
        } else {
            families.insert(s["family"].as_str().unwrap().to_string());
        }
    }
    rtts.sort_by(f64::total_cmp);
    let n = sessions.len();
    assert!(benign_s >= 3600.0, "{benign_s:.0} s of benign sessions");
    for f in ["scan", "dos", "brute-force", "exfiltration", "beaconing"] {
        assert!(families.contains(f), "no {f} session: {families:?}");
    }
    // Round trips from LAN to intercontinental, several MTUs, ECN, loss and caps all present.
    assert!(
        rtts[0] < 0.2 && rtts[n - 1] > 50.0,
        "rtt {} to {} ms",
        rtts[0],
        rtts[n - 1]
    );
    assert!(
        mtus.len() >= 5 && mtus.contains(&9000) && mtus.contains(&1500),
        "{mtus:?}"
    );
    for (what, k) in [("ECN", ecn), ("lossy", lossy), ("rate-capped", capped)] {
        assert!(k * 5 >= n, "{what}: {k} of {n} sessions");
    }
}

/// Decompresses a recording with the zstd tool (the lab installs it).
fn read_recording(path: &Path) -> Vec<Value> {
    let out = Command::new("zstd")
        .args(["-dcq"])
        .arg(path)
        .output()
        .expect("run zstd");
    assert!(out.status.success(), "zstd -d {}", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

fn within_tolerance(a: u64, b: u64) -> bool {
    let mean = (a + b) as f64 / 2.0;
    (a.abs_diff(b) as f64) <= (mean * FLOW_COUNT_TOLERANCE).max(2.0)
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn lab_records_a_scan_and_benign_browsing_labelled() {
    require_root();
    let out = std::env::temp_dir().join(unique("lab-e2e-"));
    // Fixed link conditions (the lab draws them per session otherwise), so that the two
    // sessions of a scenario meet the same network and their flow counts can be compared.
    let (ok, log) = run_ok(&mut lab_command(&[
        "--scenario",
        "scan-syn",
        "--scenario",
        "benign-web-curl",
        "--sessions",
        "2",
        "--link",
        "rtt=2ms,jitter=0.4ms,mtu=1400,ecn=1",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(ok, "the lab failed:\n{log}");
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let secs = manifest["duration_s"].as_f64().unwrap();
    assert!(secs < 60.0, "the lab run took {secs} s");
    // Each session records its link and what its relay did.
    for s in manifest["sessions"].as_array().unwrap() {
        let (link, relay) = (&s["link"], &s["relay"]);
        assert_eq!(
            (&link["rtt_ms"], &link["mtu"], &link["tcp"]["ecn"]),
            (&2.0.into(), &1400.into(), &1.into()),
            "{s}"
        );
        for dir in ["up", "down"] {
            let r = &relay[dir];
            assert!(r["frames"].as_u64().unwrap() > 0, "{dir}: {relay}");
            assert_eq!(r["lost"], 0, "{dir}: {relay}");
        }
    }

    let records = read_recording(&out.join("records.jsonl.zst"));
    let flows: Vec<&Value> = records.iter().filter(|r| r["type"] == "flow").collect();
    let procs: Vec<&Value> = records.iter().filter(|r| r["type"] == "process").collect();
    assert!(!flows.is_empty() && !procs.is_empty());
    for r in &records {
        let label = r["lab"]["label"]
            .as_str()
            .unwrap_or_else(|| panic!("unlabelled: {r}"));
        assert!(["attack", "benign", "unattributed"].contains(&label), "{r}");
    }
    // Final records, one per flow, by session.
    let mut per_session: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for f in flows.iter().filter(|f| f["final"] == true) {
        if let Some(s) = f["lab"]["session"].as_str() {
            per_session.entry(s.to_string()).or_default().push(f);
        }
        // Nothing from the scanner is ever benign, nothing from a client an attack.
        match f["src_addr"].as_str().unwrap() {
            "10.77.0.23" => assert_ne!(f["lab"]["label"], "benign", "{f}"),
            a if a.starts_with("10.77.0.1") => assert_ne!(f["lab"]["label"], "attack", "{f}"),
            _ => {}
        }
    }
    let ids: Vec<&String> = per_session.keys().collect();
    assert_eq!(
        ids,
        [
            "benign-web-curl/1",
            "benign-web-curl/2",
            "scan-syn/1",
            "scan-syn/2"
        ],
        "sessions with flows"
    );
    for s in ["scan-syn/1", "scan-syn/2"] {
        let scan = &per_session[s];
        let ports: BTreeSet<u64> = scan
            .iter()
            .filter(|f| f["src_addr"] == "10.77.0.23" && f["proto"] == 6)
            .map(|f| f["dst_port"].as_u64().unwrap())
            .collect();
        // The scenario scans ports 1-25, 80 and 443.
        assert!(
            ports.len() >= 25,
            "{s}: {} distinct ports: {ports:?}",
            ports.len()
        );
        for f in scan {
            let lab = &f["lab"];
            assert_eq!(
                (&lab["label"], &lab["family"], &lab["variant"]),
                (&"attack".into(), &"scan".into(), &"nmap-syn".into()),
                "{f}"
            );
            assert_eq!(lab["role"], "attacker", "{f}");
        }
    }
    for s in ["benign-web-curl/1", "benign-web-curl/2"] {
        let web = &per_session[s];
        let pages = web
            .iter()
            .filter(|f| f["dst_port"] == 80 && f["lab"]["role"] == "benign-client")
            .count();
        // 400 pages and the index, one connection each.
        assert!(pages >= 380, "{s}: {pages} page fetches");
        assert!(web
            .iter()
            .all(|f| f["lab"]["label"] == "benign" && f["lab"]["family"] == "benign"));
    }
    // Determinism: two sessions of one scenario have the same flow count within tolerance.
    for (a, b) in [
        ("scan-syn/1", "scan-syn/2"),
        ("benign-web-curl/1", "benign-web-curl/2"),
    ] {
        let (na, nb) = (per_session[a].len() as u64, per_session[b].len() as u64);
        assert!(within_tolerance(na, nb), "{a}: {na} flows, {b}: {nb}");
    }
    // Process records: the tools' own, labelled with their session.
    let exec_of = |comm: &str| {
        procs
            .iter()
            .find(|p| p["event"] == "exec" && p["comm"] == comm)
            .unwrap_or_else(|| panic!("no exec of {comm}"))
    };
    assert_eq!(exec_of("nmap")["lab"]["family"], "scan");
    assert_eq!(exec_of("nmap")["lab"]["role"], "attacker");
    assert_eq!(exec_of("curl")["lab"]["label"], "benign");

    // The dataset: one row per attributed flow, with the recording's sessions.
    let ds = Dataset::read(&out.join("flows.dds")).expect("read flows.dds");
    let attributed: usize = per_session.values().map(Vec::len).sum();
    assert_eq!(ds.rows(), attributed);
    let mut rows: BTreeMap<(String, String, u8), usize> = BTreeMap::new();
    for i in 0..ds.rows() {
        *rows
            .entry((
                ds.session_of(i).to_string(),
                ds.family_of(i).to_string(),
                ds.label[i],
            ))
            .or_default() += 1;
    }
    for (s, v) in &per_session {
        let fam = if s.starts_with("scan") {
            "scan"
        } else {
            "benign"
        };
        let label = u8::from(fam == "scan");
        assert_eq!(
            rows.get(&(s.clone(), fam.to_string(), label)),
            Some(&v.len()),
            "{s}: {rows:?}"
        );
    }
    let _ = fs::remove_dir_all(&out);
}

/// A session that reaches several hosts in a row (the victim's lateral movement to three file
/// servers) owns its flows with each of them, and a sweep of the subnet is labelled as the
/// scanner's session where it crosses the victim's interface.
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn lab_records_lateral_movement_and_a_subnet_sweep() {
    require_root();
    let out = std::env::temp_dir().join(unique("lab-lateral-"));
    let (ok, log) = run_ok(&mut lab_command(&[
        "--scenario",
        "lateral-smb-psexec",
        "--scenario",
        "scan-sweep-syn",
        "--sessions",
        "1",
        "--link",
        "rtt=2ms",
        "--no-dataset",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(ok, "the lab failed:\n{log}");
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for s in manifest["sessions"].as_array().unwrap() {
        assert_eq!(s["exit_code"], 0, "{s}");
    }
    let records = read_recording(&out.join("records.jsonl.zst"));
    let flows: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "flow" && r["final"] == true)
        .collect();
    // psexec and smbclient from the victim to each server's port 445, all one session's.
    let mut servers = BTreeSet::new();
    for f in flows
        .iter()
        .filter(|f| f["src_addr"] == "10.77.0.2" && f["dst_port"] == 445)
    {
        let lab = &f["lab"];
        assert_eq!(
            (&lab["session"], &lab["family"], &lab["role"]),
            (
                &"lateral-smb-psexec/1".into(),
                &"lateral-movement".into(),
                &"victim".into()
            ),
            "{f}"
        );
        servers.insert(f["dst_addr"].as_str().unwrap().to_string());
    }
    assert_eq!(
        servers,
        BTreeSet::from(["10.77.0.3".into(), "10.77.0.4".into(), "10.77.0.5".into()]),
        "servers reached"
    );
    // The sweep's SYNs to the victim: 200 ports, every flow the scan's.
    let swept: BTreeSet<u64> = flows
        .iter()
        .filter(|f| f["src_addr"] == "10.77.0.21" && f["proto"] == 6)
        .map(|f| {
            assert_eq!(f["lab"]["session"], "scan-sweep-syn/1", "{f}");
            f["dst_port"].as_u64().unwrap()
        })
        .collect();
    assert!(swept.len() >= 190, "{} ports swept", swept.len());
    let _ = fs::remove_dir_all(&out);
}

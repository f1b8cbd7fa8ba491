//! The agent under faults, live in network namespaces with the real eBPF programs: an invalid
//! configuration sent by SIGHUP is rejected (naming the file) and the old settings stay in
//! force, while a valid one is applied; an interface deleted under the agent is reported and
//! the other interface keeps producing records; a full state disk makes `incident confirm` fail
//! with a clear error while the last good model keeps serving; and an agent killed with SIGKILL
//! during an adaptation restarts on a complete, loadable model (the old one or the new one),
//! never on a partial file.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{
    client_at, holdout_beaconing_model, require_root, sh,
    traffic::{beacon, browse, sink, WebService},
    unique, Agent, AgentDir, Lan, Netns,
};
use serde_json::Value;

const VICTIM: usize = 0;
const ATTACKER: usize = 1;
const CLIENT: usize = 2;
const C2_PORT: u16 = 4444;
const BEACONS: usize = 12;

/// Runs a client subcommand that must succeed; returns its JSON answer.
fn client_ok(dir: &AgentDir, args: &[&str]) -> Value {
    let out = dir.client(args);
    assert!(
        out.status.success(),
        "detector {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: bad JSON: {e}"))
}

fn log_of(agent: &Agent) -> String {
    fs::read_to_string(&agent.log).unwrap_or_default()
}

/// Flow records from or to `addr` among the agent's output.
fn flows_with(lines: &[Value], addr: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["type"] == "flow" && (l["src_addr"] == addr || l["dst_addr"] == addr))
        .count()
}

/// Waits until the agent has written a flow record about `addr` beyond the first `skip` lines.
fn wait_for_flow(agent: &Agent, skip: usize, addr: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let lines = agent.lines();
        if flows_with(lines.get(skip..).unwrap_or_default(), addr) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The LAN of the adaptation tests with the agent on the victim, benign browsing and one
/// beaconing session already seen: ready for `incident confirm --source <attacker>`.
struct Incident {
    lan: Lan,
    _web: WebService,
    model: String,
}

impl Incident {
    fn new() -> Self {
        let lan = Lan::new(3);
        let web = WebService::start(&lan.hosts[VICTIM], web_addr(&lan));
        sink(&lan.hosts[ATTACKER], c2_addr(&lan));
        Self {
            lan,
            _web: web,
            model: holdout_beaconing_model(),
        }
    }

    fn start(&self, dir: &AgentDir) -> Agent {
        Agent::start_in(
            &self.lan.hosts[VICTIM],
            dir,
            &[
                "--iface",
                &self.lan.ifaces[VICTIM],
                "--drop",
                "off",
                "--model",
                &self.model,
            ],
        )
    }

    fn traffic(&self) {
        browse(&self.lan.hosts[CLIENT], web_addr(&self.lan), 150);
        beacon(
            &self.lan.hosts[VICTIM],
            c2_addr(&self.lan),
            BEACONS,
            Duration::from_millis(500),
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    fn confirm_args(&self) -> Vec<String> {
        [
            "incident",
            "confirm",
            "--family",
            "beaconing",
            "--source",
            &self.lan.ip(ATTACKER),
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The victim's web service.
fn web_addr(lan: &Lan) -> SocketAddr {
    SocketAddr::from((lan.ips[VICTIM], 80))
}

/// The attacker's C2 port.
fn c2_addr(lan: &Lan) -> SocketAddr {
    SocketAddr::from((lan.ips[ATTACKER], C2_PORT))
}

/// A tmpfs mounted on a directory, lazily unmounted when dropped (also when a test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> usize {
    let mut f = fs::File::create(path).unwrap();
    let chunk = [0xa5u8; 4096];
    let mut n = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "filling {}: {e}",
                    path.display()
                );
                break;
            }
        }
    }
    let _ = f.sync_all();
    n
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn an_invalid_config_on_sighup_is_rejected_and_the_old_one_kept() {
    require_root();
    let ns = Netns::new("dtf");
    let dir = AgentDir::with_config("[policy]\nalert_threshold = 0.97\n");
    let mut agent = Agent::start_in(&ns, &dir, &["--iface", "lo", "--drop", "off"]);
    let threshold = |dir: &AgentDir| {
        client_ok(dir, &["status"])["policy"]["alert_threshold"]
            .as_f64()
            .expect("status names the alert threshold")
    };
    // A status answer also means the signal handlers are in place (they precede the loop).
    assert!((threshold(&dir) - 0.97).abs() < 1e-6);
    let hup = |agent: &Agent| {
        // SAFETY: signalling our own child (nsenter execs the agent: same pid).
        let rc = unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP: {}", std::io::Error::last_os_error());
    };

    // An invalid value: rejected, naming the file and the key; the old settings stay.
    fs::write(&dir.config, "[policy]\nalert_threshold = 7.5\n").unwrap();
    hup(&agent);
    agent.wait_for_log("configuration rejected", Duration::from_secs(10));
    let log = log_of(&agent);
    let line = log
        .lines()
        .find(|l| l.contains("configuration rejected"))
        .unwrap();
    assert!(
        line.contains(&dir.config.display().to_string()) && line.contains("alert_threshold"),
        "the rejection names neither the file nor the key: {line}"
    );
    assert!((threshold(&dir) - 0.97).abs() < 1e-6, "old threshold lost");

    // Not TOML at all: rejected the same way; the agent keeps running.
    fs::write(&dir.config, "[policy\nalert_threshold = = 0.5\n").unwrap();
    hup(&agent);
    let t0 = Instant::now();
    while log_of(&agent).matches("configuration rejected").count() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "second rejection not logged:\n{}",
            log_of(&agent)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!((threshold(&dir) - 0.97).abs() < 1e-6, "old threshold lost");
    assert!(
        !log_of(&agent).contains("configuration reloaded"),
        "an invalid file was applied"
    );

    // A valid change: applied and reported.
    fs::write(&dir.config, "[policy]\nalert_threshold = 0.93\n").unwrap();
    hup(&agent);
    agent.wait_for_log("SIGHUP: configuration reloaded", Duration::from_secs(10));
    assert!(
        (threshold(&dir) - 0.93).abs() < 1e-6,
        "the new threshold is not in force"
    );
    agent.stop();
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_removed_interface_is_reported_and_the_agent_keeps_running() {
    require_root();
    // The agent's host with two links: one to `p1`, one to `p2`.
    let host = Netns::new("dtf");
    let p1 = Netns::new("dtf");
    let p2 = Netns::new("dtf");
    let (h1, h2) = (unique("fa"), unique("fb"));
    for (peer, hif, net) in [(&p1, &h1, 1), (&p2, &h2, 2)] {
        let pif = unique("fp");
        sh(&format!(
            "ip link add {hif} netns {} type veth peer name {pif} netns {}",
            host.name, peer.name
        ));
        sh(&format!(
            "ip -n {} addr add 10.251.{net}.1/24 dev {hif}",
            host.name
        ));
        sh(&format!(
            "ip -n {} addr add 10.251.{net}.2/24 dev {pif}",
            peer.name
        ));
        sh(&format!("ip -n {} link set {hif} up", host.name));
        sh(&format!("ip -n {} link set {pif} up", peer.name));
    }
    let mut agent = Agent::start(&host, &["--iface", &h1, "--iface", &h2, "--drop", "off"]);
    let ping = |ns: &Netns, to: &str| ns.sh(&format!("ping -c 3 -i 0.2 -W 2 {to}"));
    ping(&p1, "10.251.1.1");
    ping(&p2, "10.251.2.1");
    for addr in ["10.251.1.2", "10.251.2.2"] {
        assert!(
            wait_for_flow(&agent, 0, addr, Duration::from_secs(10)),
            "no flow record from {addr} before the removal"
        );
    }

    sh(&format!("ip -n {} link del {h1}", host.name));
    agent.wait_for_log(
        &format!("interface {h1} was removed"),
        Duration::from_secs(10),
    );

    // The other interface still produces records.
    let seen = agent.lines().len();
    ping(&p2, "10.251.2.1");
    assert!(
        wait_for_flow(&agent, seen, "10.251.2.2", Duration::from_secs(10)),
        "no flow record on the remaining interface after the removal:\n{}",
        log_of(&agent)
    );
    let log = log_of(&agent);
    let lines = agent.stop();
    assert!(flows_with(&lines, "10.251.2.2") > 0);
    assert!(
        !log.contains(&format!("interface {h2} was removed")),
        "the remaining interface was reported removed:\n{log}"
    );
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_full_disk_while_saving_a_model_keeps_the_last_good_state() {
    require_root();
    let inc = Incident::new();
    let dir = AgentDir::new();
    let state = dir.path.join("state");
    // Room for the history but not for a model (~100 KB), once the filler is written.
    let _tmpfs = Tmpfs::mount(&state, "256k");
    let agent = inc.start(&dir);
    let before = client_ok(&dir, &["model", "history"]);
    let old = before["current"].as_str().unwrap().to_string();
    assert_eq!(before["current"], before["base"], "{before}");

    inc.traffic();
    let filler = state.join("filler");
    assert!(fill(&filler) > 0);

    let args = inc.confirm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dir.client(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "confirm succeeded on a full disk: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("No space left on device") && stderr.contains("previous version is kept"),
        "the error does not say the model could not be written: {stderr}"
    );
    assert!(stderr.contains("host-1.safetensors"), "{stderr}");

    // The old model still serves; nothing half-written is left in the models directory.
    let after = client_ok(&dir, &["model", "history"]);
    assert_eq!(after["current"], old.as_str(), "{after}");
    assert_eq!(
        after["history"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );
    assert_eq!(client_ok(&dir, &["status"])["model"], old.as_str());
    let models: Vec<String> = fs::read_dir(state.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        models.iter().all(|f| f == "history.json"),
        "left in the models directory: {models:?}"
    );

    // The agent keeps serving: new flows are recorded.
    let seen = agent.lines().len();
    browse(&inc.lan.hosts[CLIENT], web_addr(&inc.lan), 5);
    assert!(
        wait_for_flow(&agent, seen, &inc.lan.ip(CLIENT), Duration::from_secs(10)),
        "no records after the failed save"
    );

    // Space again: the same confirmation now saves and serves host-1.
    fs::remove_file(&filler).unwrap();
    let ok = client_ok(&dir, &args);
    assert_eq!(ok["model"], "host-1", "{ok}");
    assert_eq!(client_ok(&dir, &["model", "history"])["current"], "host-1");
    let log = log_of(&agent);
    agent.stop();
    assert!(
        log.contains("No space left on device"),
        "the failed save is not logged"
    );
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn an_agent_killed_during_adaptation_restarts_on_its_last_saved_model() {
    require_root();
    let inc = Incident::new();
    let dir = AgentDir::new();
    let mut agent = inc.start(&dir);
    let base = client_ok(&dir, &["model", "history"])["base"]
        .as_str()
        .unwrap()
        .to_string();
    inc.traffic();

    // Confirm from another thread (the answer never comes) and kill as the adaptation starts.
    let socket = dir.socket();
    let args = inc.confirm_args();
    let confirm = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client_at(&socket, &args)
    });
    agent.wait_for_log("incident confirmed: adapting", Duration::from_secs(30));
    agent.kill9();
    let out = confirm.join().unwrap();
    let killed_after_save = out.status.success();

    // What is on disk is consistent: the history (if any) parses and its current model loads.
    let models = dir.path.join("state/models");
    let history = models.join("history.json");
    let current = if history.exists() {
        let h: Value = serde_json::from_slice(&fs::read(&history).unwrap())
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", history.display()));
        for e in h["entries"].as_array().unwrap() {
            let file = e["file"].as_str().unwrap();
            assert!(
                !file.starts_with('.') && !file.contains(".tmp"),
                "a temporary file is in the history: {h}"
            );
        }
        h["current"].as_str().map(|v| {
            let e = h["entries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["version"] == v)
                .unwrap_or_else(|| panic!("current {v} has no entry: {h}"));
            let file = models.join(e["file"].as_str().unwrap());
            detector::model::Model::load(&file)
                .unwrap_or_else(|e| panic!("current model {} does not load: {e}", file.display()));
            v.to_string()
        })
    } else {
        None
    };
    if killed_after_save {
        assert_eq!(current.as_deref(), Some("host-1"), "answered but not saved");
    }

    // The restarted agent serves exactly that model, without error.
    let expected = current.clone().unwrap_or_else(|| base.clone());
    let mut again = inc.start(&dir);
    again.wait_for_log(&format!("model={expected}"), Duration::from_secs(5));
    let h = client_ok(&dir, &["model", "history"]);
    assert_eq!(h["current"], expected.as_str(), "{h}");
    let log = log_of(&again);
    for bad in ["cannot load the host model", "not a model history", "ERROR"] {
        assert!(!log.contains(bad), "restart logged {bad:?}:\n{log}");
    }
    let seen = again.lines().len();
    browse(&inc.lan.hosts[CLIENT], web_addr(&inc.lan), 5);
    assert!(
        wait_for_flow(&again, seen, &inc.lan.ip(CLIENT), Duration::from_secs(10)),
        "the restarted agent records nothing"
    );
    again.stop();
    eprintln!(
        "killed {} the model was saved; restarted on {expected}",
        if current.is_some() { "after" } else { "before" }
    );
}

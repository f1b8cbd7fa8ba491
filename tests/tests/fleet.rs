//! The fleet against a real NATS JetStream server (Debian's nats-server, started by the test
//! in its own namespace of a sealed LAN): real agents in their namespaces, real scans from an
//! attacker's namespace, and the streams read back as a consumer would.
//! - alerts from two agents arrive once each, and `detector fleet status` lists both hosts;
//! - the broker stopped for 30 s while an agent alerts, then started: every alert arrives, none
//!   twice;
//! - a host's credentials cannot publish as another host (the agent says so and counts it),
//!   nor declare streams;
//! - SIGHUP turns the fleet on and off; a confirmed incident goes out as feature rows;
//! - a three-node cluster (streams with three replicas) loses nothing when the node the agent
//!   is connected to is killed while the agent alerts.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use integration_tests::{
    detector_bin, nats::NatsServer, require_root, traffic::nmap_syn_scan, Agent, AgentDir, Lan,
    Netns,
};
use serde_json::Value;

const EVENTS: &str = "DETECTOR_EVENTS";

/// `[fleet]` for host `host` of `nats` (its own NKey), with a fast heartbeat, and a 1 ms
/// alert cooldown so that a scan raises many alerts.
fn agent_config(nats: &NatsServer, host: &str, as_host: &str) -> String {
    format!(
        "[policy]\nalert_cooldown = \"1ms\"\n[fleet]\nservers = {}\nhost_id = \"{as_host}\"\nnkey_seed_file = \"{}\"\nheartbeat = \"500ms\"\nack_timeout = \"2s\"\n",
        nats.servers_toml(),
        nats.host_seed(host).display()
    )
}

fn init_streams(ns: &Netns, nats: &NatsServer) {
    nats.init_streams(ns, 1, 67_108_864);
}

/// Alert ids the agent wrote to its own events file so far (a line it is still writing is
/// skipped).
fn local_alert_ids(agent: &Agent) -> Vec<String> {
    std::fs::read_to_string(&agent.out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "alert")
        .filter_map(|l| l["id"].as_str().map(str::to_string))
        .collect()
}

/// Alert ids in the stream from `host`, with how often each is there.
fn stream_alert_ids(nats: &NatsServer, ns: &Netns, host: &str) -> BTreeMap<String, usize> {
    let subject = format!("detector.{host}.alert");
    let mut seen = BTreeMap::new();
    for (s, v) in nats.read_stream(ns, EVENTS) {
        if s == subject {
            assert_eq!(v["host"], host, "{v}");
            *seen
                .entry(v["id"].as_str().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
    }
    seen
}

/// Waits until every alert `agent` wrote is in the stream (at most `limit`); then asserts
/// that each is there exactly once and nothing else is.
fn assert_once_each(nats: &NatsServer, ns: &Netns, agent: &Agent, host: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let local = local_alert_ids(agent);
        let seen = stream_alert_ids(nats, ns, host);
        let missing: Vec<&String> = local.iter().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() {
            let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "{host}: alerts stored twice: {twice:?}");
            let extra: Vec<_> = seen.keys().filter(|id| !local.contains(id)).collect();
            assert!(
                extra.is_empty(),
                "{host}: alerts the agent never wrote: {extra:?}"
            );
            assert!(!local.is_empty(), "{host}: the scan raised no alert");
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{host}: {} of {} alerts never reached the stream (first: {})\nagent log:\n{}",
            missing.len(),
            local.len(),
            missing[0],
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(dir: &AgentDir) -> Value {
    let out = dir.client(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the agent's alert count stops moving (a scan's alerts are all written).
fn settle(agent: &Agent) {
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let n = local_alert_ids(agent).len();
        if n == last {
            return;
        }
        last = n;
    }
}

#[test]
#[ignore = "needs root (eBPF, network namespaces) and nats-server: run `cargo xtask test`"]
fn alerts_from_two_agents_arrive_once_each() {
    require_root();
    let lan = Lan::new(4);
    let (a, b, attacker, broker) = (0, 1, 2, 3);
    let nats = NatsServer::start(&lan.hosts[broker], &lan.ip(broker), &["host-a", "host-b"]);
    init_streams(&lan.hosts[broker], &nats);
    let dirs = [
        AgentDir::with_config(&agent_config(&nats, "host-a", "host-a")),
        AgentDir::with_config(&agent_config(&nats, "host-b", "host-b")),
    ];
    let agents: Vec<Agent> = [a, b]
        .iter()
        .zip(&dirs)
        .map(|(&i, dir)| {
            Agent::start_in(
                &lan.hosts[i],
                dir,
                &["--iface", &lan.ifaces[i], "--drop", "off"],
            )
        })
        .collect();
    nmap_syn_scan(&lan.hosts[attacker], &lan.ip(a));
    nmap_syn_scan(&lan.hosts[attacker], &lan.ip(b));
    for agent in &agents {
        settle(agent);
    }
    let ns = &lan.hosts[broker];
    assert_once_each(&nats, ns, &agents[0], "host-a", Duration::from_secs(30));
    assert_once_each(&nats, ns, &agents[1], "host-b", Duration::from_secs(30));

    // The agents count what they published; the fleet sees both hosts' heartbeats.
    let s = status(&dirs[0]);
    assert!(s["fleet"]["published"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["fleet"]["connected"], true, "{s}");
    assert_eq!(s["fleet"]["spool_dropped"], 0, "{s}");
    let out = nats.fleet_cli(ns, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fleet: Value = serde_json::from_slice(&out.stdout).unwrap();
    for host in ["host-a", "host-b"] {
        let h = &fleet["hosts"][host];
        assert_eq!(h["model"], s["model"], "{fleet}");
        assert!(h["age_s"].as_f64().unwrap() < 30.0, "{fleet}");
    }
    for agent in agents {
        agent.stop();
    }
}

#[test]
#[ignore = "needs root (eBPF, network namespaces) and nats-server: run `cargo xtask test`"]
fn a_broker_outage_loses_nothing_and_duplicates_nothing() {
    require_root();
    let lan = Lan::new(3);
    let (a, attacker, broker) = (0, 1, 2);
    let ns = &lan.hosts[broker];
    let mut nats = NatsServer::start(ns, &lan.ip(broker), &["host-a"]);
    init_streams(ns, &nats);
    let dir = AgentDir::with_config(&agent_config(&nats, "host-a", "host-a"));
    let agent = Agent::start_in(
        &lan.hosts[a],
        &dir,
        &["--iface", &lan.ifaces[a], "--drop", "off"],
    );
    nmap_syn_scan(&lan.hosts[attacker], &lan.ip(a));
    settle(&agent);
    assert_once_each(&nats, ns, &agent, "host-a", Duration::from_secs(30));
    let before = local_alert_ids(&agent).len();

    // The broker goes away for 30 s; the agent alerts meanwhile and spools.
    let down = Instant::now();
    nats.pause();
    nmap_syn_scan(&lan.hosts[attacker], &lan.ip(a));
    settle(&agent);
    let during = local_alert_ids(&agent).len() - before;
    assert!(during > 0, "the second scan raised no alert");
    let s = status(&dir);
    assert_eq!(s["fleet"]["connected"], false, "{s}");
    assert!(s["fleet"]["spool_entries"].as_u64().unwrap() >= 1, "{s}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    nats.resume();

    assert_once_each(&nats, ns, &agent, "host-a", Duration::from_secs(60));
    let s = status(&dir);
    eprintln!(
        "{before} alerts before the outage, {during} during it; fleet: {}",
        s["fleet"]
    );
    assert_eq!(s["fleet"]["spool_entries"], 0, "{s}");
    assert_eq!(s["fleet"]["spool_dropped"], 0, "{s}");
    assert_eq!(s["fleet"]["queue_dropped"], 0, "{s}");
    agent.stop();
}

#[test]
#[ignore = "needs root (network namespaces) and nats-server: run `cargo xtask test`"]
fn a_host_cannot_publish_as_another_host_or_declare_streams() {
    require_root();
    let lan = Lan::new(2);
    let (a, broker) = (0, 1);
    let ns = &lan.hosts[broker];
    let nats = NatsServer::start(ns, &lan.ip(broker), &["host-a", "host-b"]);
    init_streams(ns, &nats);
    // Host A's key, claiming to be host B.
    let dir = AgentDir::with_config(&agent_config(&nats, "host-a", "host-b"));
    let mut agent = Agent::start_in(
        &lan.hosts[a],
        &dir,
        &["--iface", &lan.ifaces[a], "--drop", "off"],
    );
    agent.wait_for_log("Permissions Violation", Duration::from_secs(20));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        log.contains("refused a publish") && log.contains("detector.host-b.heartbeat"),
        "{log}"
    );
    let s = status(&dir);
    assert!(
        s["fleet"]["permission_errors"].as_u64().unwrap() >= 1,
        "{s}"
    );
    let hb = nats.read_stream(ns, "DETECTOR_HEARTBEATS");
    assert!(hb.is_empty(), "a heartbeat got through: {hb:?}");
    agent.stop();

    // Nor can a host's key declare (or change) the streams.
    let cfg = nats.dir.join("host-a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[fleet]\nservers = [\"{}\"]\nnkey_seed_file = \"{}\"\n",
            nats.url,
            nats.host_seed("host-a").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(detector_bin())
        .args(["fleet", "init", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a host's key declared the streams");
}

/// Waits for the first message of `stream` on `subject`.
fn wait_for_message(nats: &NatsServer, ns: &Netns, stream: &str, subject: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some((_, v)) = nats
            .read_stream(ns, stream)
            .into_iter()
            .find(|(s, _)| s == subject)
        {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing on {subject} in {stream}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sighup(agent: &mut Agent, needle: &str) {
    // SAFETY: signalling our own child.
    let rc = unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0);
    agent.wait_for_log(needle, Duration::from_secs(10));
}

#[test]
#[ignore = "needs root (eBPF, network namespaces) and nats-server: run `cargo xtask test`"]
fn sighup_turns_the_fleet_on_and_off_and_incidents_carry_feature_rows() {
    require_root();
    let lan = Lan::new(3);
    let (a, attacker, broker) = (0, 1, 2);
    let ns = &lan.hosts[broker];
    let nats = NatsServer::start(ns, &lan.ip(broker), &["host-a"]);
    init_streams(ns, &nats);
    // Off by default: no fleet in the status.
    let dir = AgentDir::with_config("[policy]\nalert_cooldown = \"1ms\"\n");
    let mut agent = Agent::start_in(
        &lan.hosts[a],
        &dir,
        &["--iface", &lan.ifaces[a], "--drop", "off"],
    );
    assert!(status(&dir).get("fleet").is_none());

    std::fs::write(&dir.config, agent_config(&nats, "host-a", "host-a")).unwrap();
    sighup(&mut agent, "SIGHUP: [fleet] applied");
    let hb = wait_for_message(
        &nats,
        ns,
        "DETECTOR_HEARTBEATS",
        "detector.host-a.heartbeat",
    );
    assert_eq!(hb["host"], "host-a", "{hb}");

    // A confirmed incident goes out as feature rows, family and host.
    nmap_syn_scan(&lan.hosts[attacker], &lan.ip(a));
    settle(&agent);
    let out = dir.client(&[
        "incident",
        "confirm",
        "--family",
        "scan",
        "--source",
        &lan.ip(attacker),
    ]);
    // Published once the selection is accepted, whether or not this host's own adaptation
    // passes its false-alert check (here, with little benign traffic, it may be refused).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("adaptation refused"),
        "{stderr}"
    );
    let inc = wait_for_message(&nats, ns, EVENTS, "detector.host-a.incident");
    assert_eq!(
        (inc["host"].as_str(), inc["family"].as_str()),
        (Some("host-a"), Some("scan"))
    );
    let rows = inc["rows"].as_array().expect("rows");
    assert!(!rows.is_empty(), "{inc}");
    assert!(
        rows.iter()
            .all(|r| r.as_array().map(Vec::len) == Some(detector::features::LIVE_COUNT)),
        "rows are not feature rows"
    );
    let mut keys: Vec<&String> = inc.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "family",
            "feature_set",
            "flows",
            "host",
            "model",
            "rows",
            "ts_ns",
            "type"
        ],
        "an incident carries only these (no payloads)"
    );
    assert_once_each(&nats, ns, &agent, "host-a", Duration::from_secs(30));

    // And off again.
    std::fs::write(&dir.config, "[policy]\nalert_cooldown = \"1ms\"\n").unwrap();
    sighup(&mut agent, "SIGHUP: [fleet] off");
    assert!(status(&dir).get("fleet").is_none());
    agent.stop();
}

#[test]
#[ignore = "needs root (eBPF, network namespaces) and nats-server: run `cargo xtask test`"]
fn a_three_node_cluster_loses_nothing_when_a_node_is_killed_mid_stream() {
    require_root();
    let lan = Lan::new(3);
    let (a, attacker, broker) = (0, 1, 2);
    let ns = &lan.hosts[broker];
    let mut nats = NatsServer::start_cluster(ns, &lan.ip(broker), &["host-a"], 3);
    nats.init_streams(ns, 3, 67_108_864);
    let dir = AgentDir::with_config(&agent_config(&nats, "host-a", "host-a"));
    let agent = Agent::start_in(
        &lan.hosts[a],
        &dir,
        &["--iface", &lan.ifaces[a], "--drop", "off"],
    );
    wait_for_message(
        &nats,
        ns,
        "DETECTOR_HEARTBEATS",
        "detector.host-a.heartbeat",
    );
    let node = nats
        .node_of_client(ns, &lan.ip(a))
        .expect("the agent is connected to a node");

    // The node is killed as soon as the scan's first alerts are written.
    std::thread::scope(|sc| {
        let scan = sc.spawn(|| nmap_syn_scan(&lan.hosts[attacker], &lan.ip(a)));
        let start = Instant::now();
        while local_alert_ids(&agent).is_empty() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        nats.kill_node(node);
        scan.join().expect("scan");
    });
    settle(&agent);
    assert_once_each(&nats, ns, &agent, "host-a", Duration::from_secs(60));
    let s = status(&dir);
    assert_eq!(s["fleet"]["spool_dropped"], 0, "{s}");
    assert_eq!(s["fleet"]["queue_dropped"], 0, "{s}");
    assert_eq!(s["fleet"]["connected"], true, "{s}");
    eprintln!(
        "node {node} killed; {} alerts; fleet: {}",
        local_alert_ids(&agent).len(),
        s["fleet"]
    );
    agent.stop();
}

//! The agent in production, end to end in network namespaces: real scans and floods are
//! alerted and (in drop mode) dropped while a benign client keeps working; shadow mode only
//! logs; the allowlist holds under a flood; a killed agent leaves traffic flowing and its
//! restart restores its blocks; the control socket refuses non-root users.

use std::{process::Command, time::Duration};

use integration_tests::{
    require_root,
    traffic::{alerts_from, nmap_syn_scan, LanService},
    Agent, AgentDir, Lan,
};
use serde_json::Value;

const VICTIM: usize = 0;
const ATTACKER: usize = 1;
const CLIENT: usize = 2;

fn last_stats(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|l| l["type"] == "stats")
        .expect("a stats line")
}

/// A SYN flood from the attacker, bounded in time (3 s) and count.
fn hping3_flood(lan: &Lan, from: usize, port: u16) {
    let _ = Command::new("timeout")
        .args([
            "-s",
            "INT",
            "3",
            "ip",
            "netns",
            "exec",
            &lan.hosts[from].name,
        ])
        .args([
            "hping3",
            "-q",
            "-S",
            "-p",
            &port.to_string(),
            "-i",
            "u100",
            "-c",
            "30000",
            &lan.ip(VICTIM),
        ])
        .output()
        .expect("run hping3");
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn scan_and_flood_are_alerted_and_dropped_while_a_benign_client_keeps_working() {
    require_root();
    let lan = Lan::new(3);
    let svc = LanService::start(&lan, VICTIM, 8080);
    let dir = AgentDir::new();
    let agent = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &["--iface", &lan.ifaces[VICTIM], "--drop", "drop"],
    );
    assert!(svc.request(&lan, CLIENT), "benign client before the attack");
    nmap_syn_scan(&lan.hosts[ATTACKER], &lan.ip(VICTIM));
    hping3_flood(&lan, ATTACKER, svc.port);
    std::thread::sleep(Duration::from_millis(500));
    // The attacker is blocked now; the benign client still gets through.
    assert!(
        !svc.request(&lan, ATTACKER),
        "the attacker's connection should be dropped"
    );
    if !svc.request(&lan, CLIENT) {
        let lines = agent.stop();
        let client_alerts = alerts_from(&lines, &lan.ip(CLIENT));
        panic!(
            "benign client after the attack failed; its alerts: {:?}",
            client_alerts.first()
        );
    }
    let status = dir.client(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let lines = agent.stop();
    let attacker = lan.ip(ATTACKER);
    let alerts = alerts_from(&lines, &attacker);
    assert!(!alerts.is_empty(), "no alert for the attacker {attacker}");
    assert!(
        alerts
            .iter()
            .any(|a| a["action"] == "drop" && a["drop"]["outcome"] == "dropped"),
        "no drop among {} alerts: {:?}",
        alerts.len(),
        alerts.first()
    );
    assert!(alerts.iter().all(
        |a| !a["top_features"].as_array().unwrap().is_empty() && a["model_version"].is_string()
    ));
    // The client is never dropped. (It may be alerted: its flows go to the service under
    // flood, and the service's context — new flows per second, distinct sources — is the
    // flood's. README.md, Limits.)
    let client_dropped: Vec<_> = alerts_from(&lines, &lan.ip(CLIENT))
        .into_iter()
        .filter(|a| a["drop"]["outcome"] == "dropped")
        .collect();
    assert!(
        client_dropped.is_empty(),
        "the benign client was dropped: {:?}",
        client_dropped.first()
    );
    let blocked = last_stats(&lines)["blocked"].as_u64().unwrap();
    assert!(
        blocked > 0,
        "the attacker's later packets are counted as dropped"
    );
    assert!(
        status["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["what"] == format!("source {attacker}")),
        "status lists the block: {status}"
    );
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn shadow_mode_logs_would_be_drops_and_drops_nothing() {
    require_root();
    let lan = Lan::new(3);
    let svc = LanService::start(&lan, VICTIM, 8080);
    let agent = Agent::start(
        &lan.hosts[VICTIM],
        &["--iface", &lan.ifaces[VICTIM], "--drop", "shadow"],
    );
    nmap_syn_scan(&lan.hosts[ATTACKER], &lan.ip(VICTIM));
    hping3_flood(&lan, ATTACKER, svc.port);
    std::thread::sleep(Duration::from_millis(500));
    assert!(svc.request(&lan, ATTACKER), "shadow mode must not drop");
    let lines = agent.stop();
    let alerts = alerts_from(&lines, &lan.ip(ATTACKER));
    assert!(
        alerts
            .iter()
            .any(|a| a["action"] == "shadow_drop" && a["drop"]["outcome"] == "shadow"),
        "no would-be drop logged among {} alerts",
        alerts.len()
    );
    assert!(alerts.iter().all(|a| a["drop"]["outcome"] != "dropped"));
    assert_eq!(last_stats(&lines)["blocked"], 0);
    assert_eq!(last_stats(&lines)["blocks"], 0);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn the_allowlist_holds_under_a_flood() {
    require_root();
    let lan = Lan::new(3);
    let svc = LanService::start(&lan, VICTIM, 8080);
    let dir = AgentDir::with_config(&format!(
        "[policy]\nallowlist = [\"{}/32\"]\n",
        lan.ip(ATTACKER)
    ));
    let agent = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &["--iface", &lan.ifaces[VICTIM], "--drop", "drop"],
    );
    nmap_syn_scan(&lan.hosts[ATTACKER], &lan.ip(VICTIM));
    hping3_flood(&lan, ATTACKER, svc.port);
    assert!(
        svc.request(&lan, ATTACKER),
        "an allowlisted address is never dropped"
    );
    let lines = agent.stop();
    assert_eq!(last_stats(&lines)["blocked"], 0);
    let alerts = alerts_from(&lines, &lan.ip(ATTACKER));
    assert!(
        alerts.iter().any(|a| a["drop"]["outcome"] == "allowlisted"),
        "the would-be drop says allowlisted ({} alerts)",
        alerts.len()
    );
}

/// XDP programs attached to an interface, from `ip -d link`.
fn xdp_programs(lan: &Lan, host: usize) -> usize {
    let out = lan.hosts[host].sh(&format!("ip -d link show dev {}", lan.ifaces[host]));
    out.matches("prog/xdp").count()
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_killed_agent_fails_open_and_its_restart_restores_the_blocks() {
    require_root();
    let lan = Lan::new(3);
    let svc = LanService::start(&lan, VICTIM, 8080);
    let dir = AgentDir::new();
    let agent = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &["--iface", &lan.ifaces[VICTIM], "--drop", "drop"],
    );
    assert_eq!(xdp_programs(&lan, VICTIM), 1);
    nmap_syn_scan(&lan.hosts[ATTACKER], &lan.ip(VICTIM));
    hping3_flood(&lan, ATTACKER, svc.port);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!svc.request(&lan, ATTACKER), "blocked while the agent runs");
    agent.kill9();
    // Fail-open: nothing of the agent is left in the data path.
    assert_eq!(xdp_programs(&lan, VICTIM), 0, "XDP detached with the agent");
    assert!(
        svc.request(&lan, ATTACKER),
        "traffic flows while the agent is dead"
    );
    assert!(svc.request(&lan, CLIENT));
    // Restart on the same state: the unexpired block is back, one XDP program, not two.
    let again = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &["--iface", &lan.ifaces[VICTIM], "--drop", "drop"],
    );
    assert_eq!(xdp_programs(&lan, VICTIM), 1);
    assert!(
        !svc.request(&lan, ATTACKER),
        "the restored block drops again"
    );
    assert!(svc.request(&lan, CLIENT));
    let lines = again.stop();
    assert!(last_stats(&lines)["blocks"].as_u64().unwrap() >= 1);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn the_control_socket_refuses_non_root_users() {
    require_root();
    let lan = Lan::new(1);
    let dir = AgentDir::new();
    let agent = Agent::start_in(&lan.hosts[0], &dir, &["--iface", &lan.ifaces[0]]);
    let socket = dir.socket();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "root-only socket");
    let as_nobody = |sock: &std::path::Path| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(integration_tests::detector_bin())
            .args(["status", "--socket"])
            .arg(sock)
            .output()
            .unwrap()
    };
    let out = as_nobody(&socket);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with the file opened up, the agent checks the peer's uid.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let dir_mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&dir.path, dir_mode).unwrap();
    let out = as_nobody(&socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("root"),
        "{stderr}"
    );
    let ok = dir.client(&["status"]);
    assert!(
        ok.status.success(),
        "root is served: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    agent.stop();
}

/// Runs `curl` in `ns` and returns (HTTP status, body).
fn http_get(ns: &integration_tests::Netns, url: &str) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-s", "--max-time", "5"])
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_live_agents_metrics_pass_promtool_and_only_metrics_is_served() {
    require_root();
    let lan = Lan::new(2);
    let listen = format!("127.0.0.1:{}", 30000 + std::process::id() % 20000);
    let agent = Agent::start(
        &lan.hosts[VICTIM],
        &[
            "--iface",
            &lan.ifaces[VICTIM],
            "--drop",
            "drop",
            "--metrics-listen",
            &listen,
        ],
    );
    // A scan gives the labelled series (alerts and drops by family) something to show.
    nmap_syn_scan(&lan.hosts[ATTACKER], &lan.ip(VICTIM));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The file is read while the agent writes it: a partial last line is skipped.
    let alerted = || {
        std::fs::read_to_string(&agent.out)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"type\":\"alert\""))
    };
    while !alerted() {
        assert!(
            std::time::Instant::now() < deadline,
            "no alert for the scan"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let victim = &lan.hosts[VICTIM];
    let (code, text) = http_get(victim, &format!("http://{listen}/metrics"));
    assert_eq!(code, "200", "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("detector_alerts_total{family=")),
        "no alert series after the scan:\n{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (cargo xtask setup --test-tools installs Debian's prometheus)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool check metrics found problems:\n{problems}\nin:\n{text}"
    );
    for path in ["/", "/metrics/x", "/favicon.ico"] {
        let (code, _) = http_get(victim, &format!("http://{listen}{path}"));
        assert_eq!(code, "404", "GET {path}");
    }
    agent.stop();
}

//! `agent.xdp_mode`: `auto` takes native (driver) mode where the driver allows it and falls back
//! to generic (skb) mode per interface where it refuses; `native` refuses to fall back. The
//! refusal is the kernel's own: a bridge has no native XDP hook (EOPNOTSUPP, as virtio_net with
//! one queue pair answers on a cloud VM), while frames delivered to the host through it still
//! pass generic XDP on it.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use integration_tests::{detector_bin, final_flows, require_root, unique, Agent, AgentDir, Pair};
use serde_json::Value;

/// A veth pair whose b end is a port of a bridge in b's namespace, b's address on the bridge:
/// `b_if` names the bridge, which has no native XDP.
fn bridged_pair() -> Pair {
    let mut pair = Pair::new();
    let br = unique("br");
    let b = &pair.b;
    b.sh(&format!("ip link add {br} type bridge"));
    b.sh(&format!("ip addr flush dev {}", pair.b_if));
    b.sh(&format!("ip link set {} master {br}", pair.b_if));
    b.sh(&format!(
        "ip addr add {}/24 dev {br}",
        Ipv4Addr::from(pair.b_ip)
    ));
    b.sh(&format!("ip link set {br} up"));
    pair.b_if = br;
    pair
}

/// The agent's `status` answer.
fn status(dir: &AgentDir) -> Value {
    let out = dir.client(&["status"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// Pings b from a five times and checks that the agent on b counted all ten packets: the
/// program sees traffic in the mode it got.
fn ping_is_counted(pair: &Pair, agent: Agent) {
    pair.a.sh(&format!(
        "ping -c 5 -i 0.2 -s 100 {}",
        Ipv4Addr::from(pair.b_ip)
    ));
    std::thread::sleep(Duration::from_millis(200));
    let lines = agent.stop();
    let a = Ipv4Addr::from(pair.a_ip).to_string();
    let flows = final_flows(&lines);
    let f = flows
        .iter()
        .find(|(k, _)| k.0 == 1 && k.1 == a)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no ICMP flow from {a} in {} lines", lines.len()));
    assert_eq!(
        (f["packets_fwd"].as_u64(), f["packets_rev"].as_u64()),
        (Some(5), Some(5)),
        "{f}"
    );
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn auto_mode_attaches_native_on_a_veth() {
    require_root();
    let pair = Pair::new();
    let dir = AgentDir::new();
    let agent = Agent::start_in(&pair.b, &dir, &["--iface", &pair.b_if]);
    let st = status(&dir);
    assert_eq!(
        st["xdp"],
        serde_json::json!([{"interface": pair.b_if, "mode": "native", "native_refused": null}]),
        "{st}"
    );
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        log.contains(&format!(
            "attached XDP ingress on {} (native mode)",
            pair.b_if
        )),
        "{log}"
    );
    ping_is_counted(&pair, agent);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn auto_mode_falls_back_to_generic_where_native_is_refused() {
    require_root();
    let pair = bridged_pair();
    let dir = AgentDir::new();
    let agent = Agent::start_in(&pair.b, &dir, &["--iface", &pair.b_if]);
    let st = status(&dir);
    let xdp = &st["xdp"][0];
    assert_eq!(xdp["interface"], pair.b_if.as_str(), "{st}");
    assert_eq!(xdp["mode"], "skb", "{st}");
    let why = xdp["native_refused"].as_str().unwrap_or_default();
    assert!(!why.is_empty(), "no reason for the fallback: {st}");
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        log.contains(&format!(
            "attached XDP ingress on {} (skb mode; native mode was refused",
            pair.b_if
        )),
        "{log}"
    );
    ping_is_counted(&pair, agent);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn native_mode_fails_clearly_where_the_driver_refuses_it() {
    require_root();
    let pair = bridged_pair();
    let dir = AgentDir::new();
    let out = Command::new("timeout")
        .arg("60")
        .arg("nsenter")
        .arg(format!("--net={}", pair.b.path().display()))
        .arg(detector_bin())
        .args(["run", "--config"])
        .arg(&dir.config)
        .args(["--iface", &pair.b_if, "--xdp-mode", "native"])
        .args(["--metrics-listen", "", "--state-dir"])
        .arg(dir.path.join("state"))
        .arg("--control-socket")
        .arg(dir.socket())
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot attach XDP to {} in native mode",
            pair.b_if
        )) && stderr.contains("XDP could not be attached"),
        "{stderr}"
    );
}

//! The few-shot loop, live: a model that never saw beaconing (trained with that family held
//! out: `cargo xtask train-default --holdout-family beaconing --out
//! detector/models/test/holdout-beaconing.safetensors`) does not flag a first beaconing session
//! (the victim calling an attacker's port every half second); the operator confirms it as an
//! incident by the attacker's address; the agent adapts, and a later session towards another
//! attacker is flagged, while the benign client raises no alert.
//!
//! (Beaconing rather than a port scan or an upload: a model without the scan family still flags
//! nmap from what scans share with the floods it learned, and one without exfiltration still
//! flags a large upload to an odd port; beacons look like any small request, one by one.)
//!
//! The agent runs at the model's own calibrated threshold (0.51 for the committed held-out
//! model): that model scores the first session's beacons below 0.1, and after the adaptation
//! the second session's from about 0.2 to 0.76 (2026-12-06), so the loop shows as the family
//! moving from well below the threshold to partly above it.

use std::{net::SocketAddr, time::Duration};

use integration_tests::{
    holdout_beaconing_model, require_root,
    traffic::{alerts_about, beacon, browse, sink, WebService},
    Agent, AgentDir, Lan,
};
use serde_json::Value;

const VICTIM: usize = 0;
const ATTACKER: usize = 1;
const CLIENT: usize = 2;
const SECOND_ATTACKER: usize = 3;
/// The attackers' listening port (as the lab's beacon-tcp scenario), and beacons per session.
const C2_PORT: u16 = 4444;
const BEACONS: usize = 12;

/// The victim's web service.
fn web_addr(lan: &Lan) -> SocketAddr {
    SocketAddr::from((lan.ips[VICTIM], 80))
}

/// One beaconing session from the victim to `to`'s C2 port, every half second.
fn beacon_to(lan: &Lan, to: usize) {
    let addr = SocketAddr::from((lan.ips[to], C2_PORT));
    beacon(
        &lan.hosts[VICTIM],
        addr,
        BEACONS,
        Duration::from_millis(500),
    );
}

/// True when an alert's flow got its first reply 500 µs or more after its first packet.
fn slow_reply(alert: &Value) -> bool {
    alert["flow"]["first_gaps_us"][1]
        .as_u64()
        .is_some_and(|gap| gap >= 500)
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_confirmed_first_session_teaches_the_agent_the_family() {
    require_root();
    let model = holdout_beaconing_model();
    let lan = Lan::new(4);
    let _web = WebService::start(&lan.hosts[VICTIM], web_addr(&lan));
    for host in [ATTACKER, SECOND_ATTACKER] {
        sink(&lan.hosts[host], SocketAddr::from((lan.ips[host], C2_PORT)));
    }
    // A 1 ms cooldown: every flagged record alerts (beacons are 500 ms apart), so the check
    // below sees each one, not just the first of a minute.
    let dir = AgentDir::with_config("[policy]\nalert_cooldown = \"1ms\"\n");
    // Without flow records, as installed: alerts then look up their process themselves.
    let agent = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &[
            "--iface",
            &lan.ifaces[VICTIM],
            "--drop",
            "off",
            "--model",
            &model,
            "--output",
            "",
        ],
    );

    // Benign traffic, then the first beaconing session: the held-out model does not flag it.
    browse(&lan.hosts[CLIENT], web_addr(&lan), 150);
    beacon_to(&lan, ATTACKER);
    std::thread::sleep(Duration::from_millis(500));
    let before = agent.lines();
    let early = alerts_about(&before, &lan.ip(ATTACKER));
    // A reply this VM delayed by half a millisecond or more (several times this lab's usual
    // handshake) is a timing outlier that the held-out model may flag, as any anomaly model
    // would; it happened in about one full run in four. The loop is about the family's usual
    // beacons: none of those may be flagged, and outliers only a few.
    let typical: Vec<&Value> = early.iter().copied().filter(|a| !slow_reply(a)).collect();
    assert!(
        typical.is_empty() && early.len() <= BEACONS / 4,
        "the held-out model already flags the beacons: the loop would show nothing \
         ({} alerts, {} on usual beacons): {:?}",
        early.len(),
        typical.len(),
        typical.first().or(early.first())
    );

    // The operator confirms it.
    let out = dir.client(&[
        "incident",
        "confirm",
        "--family",
        "beaconing",
        "--source",
        &lan.ip(ATTACKER),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "incident confirm failed: {stderr}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["model"], "host-1", "{answer}");
    assert!(answer["flows"].as_u64().unwrap() >= 1);
    assert!(
        answer["report"]["fpr_after"].as_f64().unwrap()
            <= answer["report"]["fpr_before"].as_f64().unwrap() + 0.001,
        "{answer}"
    );

    // A later session of the same family, towards another attacker: flagged.
    beacon_to(&lan, SECOND_ATTACKER);
    browse(&lan.hosts[CLIENT], web_addr(&lan), 50);
    std::thread::sleep(Duration::from_millis(500));
    let history = dir.client(&["model", "history"]);
    assert!(history.status.success());
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history["current"], "host-1");
    let lines = agent.stop();
    let flagged = alerts_about(&lines, &lan.ip(SECOND_ATTACKER));
    assert!(
        !flagged.is_empty(),
        "the second beaconing session is not flagged after adaptation"
    );
    assert!(flagged.iter().all(|a| a["model_version"] == "host-1"));
    assert_eq!(
        flagged[0]["family"], "beaconing",
        "alerts name the confirmed family"
    );
    assert_eq!(
        flagged[0]["flow"]["process"]["comm"], "dt-beacon",
        "the alert names the process that beacons: {}",
        flagged[0]
    );
    // Benign traffic stays within the budget: the client raises no alert at all.
    let client = alerts_about(&lines, &lan.ip(CLIENT));
    assert!(
        client.is_empty(),
        "the benign client alerted: {:?}",
        client.first()
    );
    // The adapted model survives a restart.
    let mut again = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &[
            "--iface",
            &lan.ifaces[VICTIM],
            "--drop",
            "off",
            "--model",
            &model,
        ],
    );
    again.wait_for_log("model=host-1", Duration::from_secs(5));
    drop(again);
}

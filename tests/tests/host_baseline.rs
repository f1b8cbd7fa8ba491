//! The host's benign baseline, live: during the warm-up the agent alerts as out of the box;
//! once the warm-up is done and enough recent records raised no alert, it fits its novelty
//! prototypes from them (on a blocking thread, not the loop), serves the model that has them
//! with the host's rule (attack-like and unusual for this host), says so in its log and its
//! status, and keeps scoring. The warm-up's progress survives a restart.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use integration_tests::{
    require_root,
    traffic::{browse, WebService},
    Agent, AgentDir, Lan,
};
use serde_json::Value;

fn status(dir: &AgentDir) -> Value {
    let out = dir.client(&["status"]);
    assert!(out.status.success(), "status failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn the_agent_fits_its_host_baseline_from_quiet_traffic() {
    require_root();
    let lan = Lan::new(2);
    let dir = AgentDir::with_config("[adaptation]\nbaseline_records = 40\nwarmup = \"3s\"\n");
    let mut agent = Agent::start_in(&lan.hosts[0], &dir, &["--iface", &lan.ifaces[0]]);
    let before = status(&dir);
    assert_eq!(
        before["novelty"], false,
        "novelty before any traffic: {before}"
    );
    assert!(before["baseline_rows"].is_null(), "{before}");
    assert_eq!(before["warmup"]["done"], false, "{before}");
    assert_eq!(before["warmup"]["needed_s"], 3, "{before}");
    assert_eq!(before["host_rule"], false, "{before}");

    let addr = SocketAddr::from((lan.ips[0], 8080));
    let _web = WebService::start(&lan.hosts[0], addr);
    browse(&lan.hosts[1], addr, 60);
    agent.wait_for_log(
        "fitted this host's benign baseline",
        Duration::from_secs(30),
    );
    let after = status(&dir);
    assert_eq!(after["novelty"], true, "{after}");
    assert_eq!(after["warmup"]["done"], true, "{after}");
    assert_eq!(after["host_rule"], true, "{after}");
    let rows = after["baseline_rows"].as_u64().expect("rows of the fit");
    assert!(rows >= 40, "fitted on {rows} records: {after}");

    // The loop kept reading and scoring: later traffic is scored by the new model.
    let scored = after["scored"].as_u64().unwrap();
    browse(&lan.hosts[1], addr, 10);
    let start = Instant::now();
    while status(&dir)["scored"].as_u64().unwrap() <= scored {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nothing scored after the fit"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();

    // A restart on the same state: the host has been learnt, no second warm-up.
    let agent = Agent::start_in(&lan.hosts[0], &dir, &["--iface", &lan.ifaces[0]]);
    let again = status(&dir);
    assert_eq!(again["warmup"]["done"], true, "{again}");
    assert!(
        again["warmup"]["learned_s"].as_u64().unwrap() >= 3,
        "{again}"
    );
    agent.stop();
}

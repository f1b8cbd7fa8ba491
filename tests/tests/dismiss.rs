//! Dismissing false alerts, live. The agent runs with an alert threshold so low that ordinary
//! web requests alert (a stand-in for benign traffic that a model flags on some host), and a
//! one-second alert cooldown. The operator dismisses a client's alerts; the client's requests
//! go on, and are counted as dismissed instead of raised. A port scan, which looks nothing like
//! them, still alerts. The dismissal survives a restart; a damaged dismissals file is reported
//! and left alone.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use integration_tests::{
    require_root,
    traffic::{alerts_from, browse, nmap_syn_scan, WebService},
    Agent, AgentDir, Lan,
};
use serde_json::Value;

const VICTIM: usize = 0;
const FIRST_CLIENT: usize = 1;
const SCANNER: usize = 2;
/// A one-second context window: by the time the client browses again (after the cooldown), its
/// first visit has left the window, so the second visit's records carry the same context as
/// the first's. With the default 10 s, each later flow counted the earlier ones, and a reply
/// record could fall outside cosine 0.9 of every exemplar (it did, once in CI).
const CONFIG: &str = "[policy]\nalert_threshold = 0.000001\nalert_cooldown = \"1s\"\n\
                      [context]\nwindow = \"1s\"\n";

fn status(dir: &AgentDir) -> Value {
    let out = dir.client(&["status"]);
    assert!(out.status.success(), "status failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// The alert events written so far (a line still being written is skipped).
fn alerts(agent: &Agent, src: &str) -> Vec<Value> {
    std::fs::read_to_string(&agent.out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "alert" && l["flow"]["src_addr"] == src)
        .collect()
}

/// (records scored, records dismissed, records held back for thin evidence) so far.
fn counts(dir: &AgentDir) -> (u64, u64, u64) {
    let s = status(dir);
    (
        s["scored"].as_u64().unwrap(),
        s["dismissed_alerts"].as_u64().unwrap(),
        s["thin_evidence"].as_u64().unwrap(),
    )
}

/// (records scored, records dismissed) since `before`, once a visit's records have all been
/// scored (no new one for half a second).
fn visit_counts(dir: &AgentDir, before: (u64, u64, u64)) -> (u64, u64, u64) {
    let start = Instant::now();
    let mut last = counts(dir);
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: the visit's records were not scored"
        );
        std::thread::sleep(Duration::from_millis(500));
        let now = counts(dir);
        if now == last && now.0 > before.0 {
            return (now.0 - before.0, now.1 - before.1, now.2 - before.2);
        }
        last = now;
    }
}

/// Every record of a visit that the policy would act on is dismissed, but for at most one: the
/// dismissal matches records by their embedding (cosine ≥ 0.9 to an exemplar), and a record's
/// timing features vary from visit to visit in this VM. One record in a visit of ~18 fell
/// outside in about one run in ten (a handshake gap several times the usual). The one alert it
/// can raise (the cooldown holds back the rest) is what the callers allow for.
fn assert_mostly_dismissed(what: &str, (scored, dismissed, thin): (u64, u64, u64)) {
    let acted_on = scored - thin;
    assert!(acted_on >= 10, "{what}: only {acted_on} records to act on");
    assert!(
        dismissed + 1 >= acted_on,
        "{what}: {dismissed} of {acted_on} records dismissed"
    );
}

/// Polls `f` until it holds; panics with `what` after `secs`.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_dismissed_pattern_is_not_raised_again_while_a_scan_still_is() {
    require_root();
    let lan = Lan::new(3);
    let dir = AgentDir::with_config(CONFIG);
    let iface = lan.ifaces[VICTIM].clone();
    let agent = Agent::start_in(&lan.hosts[VICTIM], &dir, &["--iface", &iface]);
    let addr = SocketAddr::from((lan.ips[VICTIM], 8080));
    let _web = WebService::start(&lan.hosts[VICTIM], addr);

    // The first client's requests alert.
    browse(&lan.hosts[FIRST_CLIENT], addr, 5);
    let first = lan.ip(FIRST_CLIENT);
    let mut id = String::new();
    wait_until("an alert about the client", 20, || {
        match alerts(&agent, &first).first() {
            Some(a) => {
                id = a["id"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });

    // A family name may not take the reserved name.
    let out = dir.client(&[
        "incident",
        "confirm",
        "--family",
        "dismissed",
        "--alert",
        &id,
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reserved"),
        "{out:?}"
    );

    // A second visit once the first has left the context window, then a moment for its last
    // records to be scored: the dismissal below keeps exemplars from both, as an operator's
    // would from the alerts they saw (timings vary from visit to visit, and so do the records).
    std::thread::sleep(Duration::from_millis(1200));
    browse(&lan.hosts[FIRST_CLIENT], addr, 5);
    std::thread::sleep(Duration::from_millis(500));
    // By source: every record of the visits (each flow's new, reply, early and final records),
    // not one alert's flow. The one alert raised per visit (the cooldown holds back the rest)
    // covers one flow, and the others' records differ from it in their context.
    let out = dir.client(&["incident", "dismiss", "--source", &first]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("dismiss answers JSON");
    assert_eq!(v["ok"], true, "dismiss: {v}");
    let dismissal = v["dismissal"]
        .as_str()
        .expect("the dismissal's id")
        .to_string();
    assert!(v["flows"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(status(&dir)["dismissals"], 1);

    // Its requests go on (past the cooldown): counted as dismissed, not raised.
    std::thread::sleep(Duration::from_millis(1500));
    let raised = alerts(&agent, &first).len();
    let before = counts(&dir);
    browse(&lan.hosts[FIRST_CLIENT], addr, 5);
    assert_mostly_dismissed("the visit after the dismissal", visit_counts(&dir, before));
    // A scan alerts: it does not look like the dismissed requests.
    nmap_syn_scan(&lan.hosts[SCANNER], &lan.ip(VICTIM));
    let scanner = lan.ip(SCANNER);
    wait_until("an alert about the scanner", 20, || {
        !alerts(&agent, &scanner).is_empty()
    });
    let lines = agent.stop();
    let again = alerts_from(&lines, &first);
    assert!(
        again.len() <= raised + 1,
        "the dismissed pattern was raised again: {again:?}"
    );

    // After a restart the dismissal still holds; withdrawn, the requests alert again.
    let again = Agent::start_in(&lan.hosts[VICTIM], &dir, &["--iface", &iface]);
    assert_eq!(status(&dir)["dismissals"], 1);
    let before = alerts(&again, &first).len();
    let counted = counts(&dir);
    browse(&lan.hosts[FIRST_CLIENT], addr, 5);
    assert_mostly_dismissed("the visit after the restart", visit_counts(&dir, counted));
    let after = alerts(&again, &first);
    assert!(
        after.len() <= before + 1,
        "raised after the restart: {:?}",
        &after[before.min(after.len())..]
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = dir.client(&["incident", "dismissals"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("dismissals answer JSON");
    assert_eq!(v["dismissals"][0]["id"], dismissal.as_str(), "{v}");
    let out = dir.client(&["incident", "undismiss", "no-such-dismissal"]);
    assert!(!out.status.success(), "{out:?}");
    let out = dir.client(&["incident", "undismiss", &dismissal]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(status(&dir)["dismissals"], 0);
    // (The events file is appended to across restarts: count what is new.)
    let before = alerts(&again, &first).len();
    browse(&lan.hosts[FIRST_CLIENT], addr, 5);
    wait_until("an alert about the client once more", 20, || {
        alerts(&again, &first).len() > before
    });
    again.stop();

    // A damaged file is reported, kept, and turns dismissing off rather than overwriting it.
    let file = dir.path.join("state").join("dismissed.json");
    std::fs::write(&file, "{ not json").unwrap();
    let mut damaged = Agent::start_in(&lan.hosts[VICTIM], &dir, &["--iface", &iface]);
    damaged.wait_for_log("dismissed.json", Duration::from_secs(5));
    assert_eq!(status(&dir)["dismissals"], 0);
    let out = dir.client(&["incident", "dismiss", "--source", &first]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dismissed.json"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{ not json");
    damaged.stop();
}

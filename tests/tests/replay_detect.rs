//! Offline detection: `detector replay --detect` runs the agent's own context, scoring and
//! policy code over captures. Over the corpus's attack captures it alerts on each capture's
//! attacking address; over the benign captures its false alerts are counted and reported (in
//! target/replay-detect.json). Neither set was used to train the embedded model.
//!
//! The embedded model learned from the lab, whose round-trip times, windows and services are a
//! veth's: off the lab it flags some benign traffic (README.md, Limits). The misses are listed
//! here by name, so that a change in either direction shows: a capture that starts being
//! detected must leave the list.

use std::{collections::HashMap, process::Command};

use integration_tests::{alert_flow_key, corpus_files, detector_bin};

/// Attack captures whose attacker the embedded model does not alert on, and why.
const KNOWN_MISSES: &[(&str, &str)] = &[
    (
        "flood-dhcp--dhcp_flood.pcap",
        "every request has its own source and its own destination: no source or service window \
         holds more than one flow, so each record rests on one exchange and policy.min_evidence \
         holds it back (a lone DHCP request cannot be told from a flood's)",
    ),
    (
        "exploit-smbghost--SMBGhost.pcap",
        "one SMB connection of 9 packets: the exploit is in its payload, which no feature reads, \
         and nothing else of the source shows. The model trained on the lab alone flagged it \
         through the lab's path (a veth's handshake gaps); trained on real benign traffic too \
         (2026-12-06) it does not",
    ),
    (
        "lateral-psexec--20171220_smb_psexec_add_user.pcap",
        "SMB sessions from one host to a few others, as an administrator's tools open them: \
         the lab has no SMB and no lateral movement, and a client reaching several hosts is \
         ordinary on real networks (the nDPI benign captures the model now trains on)",
    ),
    (
        "scan-service--nmap-vsn.pcap",
        "a version scan of a few ports: 18 flows, each an ordinary TCP session with a banner. \
         Its most attack-like record (a reset answer) scores 0.74; the threshold set for at most \
         about one alerting flow per 1,000 benign ones (2026-12-06 evening) is 0.79, the one \
         set per record before it (0.62) let it alert",
    ),
    (
        "web-attack-dvwa--cooper-grill-dvwa.pcapng",
        "four HTTP connections whose attack (injection strings) is in the payload; their sizes, \
         counts and pace are an ordinary browser's. Flagged before 2026-12-06 through the lab's \
         path, as above",
    ),
];
use serde_json::Value;

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

fn run(args: &[&str], file: &std::path::Path) -> Vec<Value> {
    let out = Command::new(detector_bin())
        .arg("replay")
        .args(args)
        .arg(file)
        .output()
        .expect("run detector replay");
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out.stdout)
}

/// The attacking address of a capture: the initiator of the most flows (every attack capture
/// of the corpus has one attacker, except the spoofed flood, checked separately).
fn attacker(flows: &[Value]) -> String {
    let mut n: HashMap<String, usize> = HashMap::new();
    for f in flows.iter().filter(|f| f["final"] == true) {
        *n.entry(f["src_addr"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    n.into_iter()
        .max_by_key(|(a, c)| (*c, a.clone()))
        .unwrap()
        .0
}

#[test]
fn attack_captures_alert_on_their_attacker_and_benign_false_alerts_are_reported() {
    let mut report = serde_json::Map::new();
    for file in corpus_files("pcap/attack") {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let flows = run(&[], &file);
        let alerts = run(&["--detect"], &file);
        assert!(alerts.iter().all(|a| a["type"] == "alert"));
        assert!(
            alerts
                .iter()
                .all(|a| a["drop"].is_null() || a["drop"]["outcome"] != "dropped"),
            "{name}: offline detection never drops"
        );
        let flagged: std::collections::HashSet<&str> = alerts
            .iter()
            .map(|a| a["flow"]["src_addr"].as_str().unwrap())
            .collect();
        if name.contains("spoofed") {
            // Every packet has its own random source: the flood shows on the service.
            assert!(!alerts.is_empty(), "{name}: no alert");
        } else {
            let who = attacker(&flows);
            let known_miss = KNOWN_MISSES.iter().find(|(f, _)| *f == name);
            match known_miss {
                None => assert!(
                    flagged.contains(who.as_str()),
                    "{name}: attacker {who} not alerted (alerted: {flagged:?})"
                ),
                Some((_, why)) => assert!(
                    !flagged.contains(who.as_str()),
                    "{name} is detected now: remove it from KNOWN_MISSES (it was: {why})"
                ),
            }
        }
        report.insert(
            name,
            serde_json::json!({"alerts": alerts.len(), "alerted_sources": flagged.len()}),
        );
    }
    let (mut flows_total, mut alerted_flows) = (0usize, 0usize);
    let mut benign = serde_json::Map::new();
    for file in corpus_files("pcap/benign") {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let flows = run(&[], &file)
            .into_iter()
            .filter(|f| f["final"] == true)
            .count();
        let alerts = run(&["--detect"], &file);
        let distinct: std::collections::HashSet<String> =
            alerts.iter().map(alert_flow_key).collect();
        flows_total += flows;
        alerted_flows += distinct.len();
        benign.insert(name, serde_json::json!({"flows": flows, "alerts": alerts.len(), "alerted_flows": distinct.len()}));
    }
    let summary = serde_json::json!({
        "attack": report,
        "benign": benign,
        "benign_flows": flows_total,
        "benign_alerted_flows": alerted_flows,
        "benign_false_alert_rate": alerted_flows as f64 / flows_total as f64,
    });
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/replay-detect.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    eprintln!(
        "benign corpus: {alerted_flows} of {flows_total} flows alerted ({:.1}%), details in {}",
        100.0 * alerted_flows as f64 / flows_total as f64,
        path.display()
    );
    assert!(flows_total > 100, "the benign corpus was read");
    // A guard, not a target: 21 of 151 (13.9%) when policy.min_evidence came in, 38 before.
    assert!(
        alerted_flows * 5 <= flows_total,
        "benign false alerts rose above 20%: {alerted_flows} of {flows_total}"
    );
}

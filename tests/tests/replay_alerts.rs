//! `detector replay --detect` raises the same alerts, in the same order, for every capture of
//! the shared corpus as the committed expectation says (`tests/fixtures/replay_alerts.tsv`):
//! a change to the replayer's speed (threads, batching, output) must not change what it detects.
//!
//! Per capture, run with the embedded model and the default configuration: whether the command
//! succeeded, the alert count, the distinct alerted sources, and a digest of every alert in
//! output order (its flow's key, timestamps and reason, its family, action and suppressed
//! count). Scores are left out: they may move in the last digits when the scoring code changes.
//!
//! A model retrain, a policy or feature change, or a new corpus capture changes the fixture
//! legitimately: regenerate it with `DETECTOR_BLESS=1` (same test command) and say why in the
//! commit, after reading the diff this test printed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use integration_tests::{
    detector_bin,
    fixture::{compare_or_write, corpus_captures, Fnv, Outcome},
    shared_dir,
};
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/replay_alerts.tsv");
const HEADER: &str = "file\texit\talerts\tsources\tdigest";

/// One alert as the fixture sees it: everything but the id (it names the run), the scores and
/// the explanation (floats), and the flow record's counters (the key and times identify it).
fn alert_line(a: &Value) -> String {
    let f = &a["flow"];
    format!(
        "{} {} {}:{} > {}:{} vlan {} {}..{} {} family={} action={} suppressed={}",
        a["ts_ns"],
        f["proto"],
        f["src_addr"].as_str().unwrap_or("?"),
        f["src_port"],
        f["dst_addr"].as_str().unwrap_or("?"),
        f["dst_port"],
        f["vlan"],
        f["first_seen_ns"],
        f["last_seen_ns"],
        f["reason"].as_str().unwrap_or("?"),
        a["family"].as_str().unwrap_or("?"),
        a["action"].as_str().unwrap_or("?"),
        a["suppressed"],
    )
}

/// What `detector replay --detect` gave for one capture: its fixture line and its alerts.
fn detect(root: &Path, rel: &Path, config: &Path) -> (String, Vec<String>) {
    let out = Command::new(detector_bin())
        .args(["replay", "--detect", "--config"])
        .arg(config)
        .arg(root.join(rel))
        .env("RUST_LOG", "error")
        .output()
        .expect("run detector replay --detect");
    let alerts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad JSON {l:?}: {e}", rel.display()));
            assert_eq!(v["type"], "alert", "{}: {l}", rel.display());
            alert_line(&v)
        })
        .collect();
    let mut digest = Fnv::new();
    let mut sources = BTreeSet::new();
    for a in &alerts {
        digest.str(a);
        sources.insert(
            a.split(' ')
                .nth(2)
                .unwrap_or_default()
                .rsplit_once(':')
                .map(|s| s.0),
        );
    }
    let exit = if out.status.success() { "ok" } else { "failed" };
    let line = format!(
        "{}\t{exit}\t{}\t{}\t{:016x}",
        rel.display(),
        alerts.len(),
        sources.len(),
        digest.0
    );
    (line, alerts)
}

#[test]
fn every_corpus_capture_raises_the_alerts_the_fixture_says() {
    let root = shared_dir().join("corpus");
    let files = corpus_captures(&root);
    assert!(files.len() > 500, "only {} captures found", files.len());
    // The defaults, whatever /etc/detector/detector.toml this machine has.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/replay-alerts-empty.toml");
    std::fs::write(&config, "").unwrap();

    // One command per capture, as many at once as there are CPUs.
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let got: BTreeMap<String, (String, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(rel) = files.get(i) else { break };
                        mine.push((rel.display().to_string(), detect(&root, rel, &config)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    let lines: BTreeMap<String, String> = got
        .iter()
        .map(|(f, (l, _))| (f.clone(), l.clone()))
        .collect();
    let detail = |file: &str| {
        let alerts = &got[file].1;
        let shown = alerts.iter().take(10).map(|a| format!("      {a}"));
        let more = alerts.len().saturating_sub(10);
        format!(
            "\n    its alerts now:\n{}{}",
            shown.collect::<Vec<_>>().join("\n"),
            if more > 0 {
                format!("\n      … and {more} more")
            } else {
                String::new()
            }
        )
    };
    let Outcome::Compared { want, diffs } =
        compare_or_write(FIXTURE, HEADER, "DETECTOR_BLESS", &lines, detail)
    else {
        return;
    };
    assert!(
        diffs.is_empty(),
        "{} of {} captures alert differently from {FIXTURE} ({HEADER}); if the change is meant \
         (a retrained model, a policy change), rerun with DETECTOR_BLESS=1 and say why in the \
         commit:\n{}",
        diffs.len(),
        want,
        diffs.join("\n")
    );
}

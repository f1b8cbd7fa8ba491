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
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use integration_tests::{detector_bin, shared_dir};
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/replay_alerts.tsv");
const HEADER: &str = "file\texit\talerts\tsources\tdigest";

/// 64-bit FNV-1a: stable across toolchains (std's `DefaultHasher` is not promised to be).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn str(&mut self, s: &str) {
        for &x in s.as_bytes().iter().chain([&0xffu8]) {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Every capture under `dir`, recursively, relative to `root`.
fn captures(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            captures(root, &path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pcap" | "pcapng" | "cap")
        ) {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

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
    let mut files = Vec::new();
    captures(&root, &root, &mut files);
    files.sort();
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

    if std::env::var_os("DETECTOR_BLESS").is_some() {
        let mut text = String::from(HEADER);
        text.push('\n');
        for (l, _) in got.values() {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(FIXTURE, text).unwrap();
        return;
    }

    let fixture = std::fs::read_to_string(FIXTURE)
        .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (DETECTOR_BLESS=1 writes it)"));
    let mut lines = fixture.lines();
    assert_eq!(lines.next(), Some(HEADER), "{FIXTURE}: header");
    let want: BTreeMap<String, String> = lines
        .map(|l| {
            (
                l.split('\t').next().unwrap_or_default().to_string(),
                l.to_string(),
            )
        })
        .collect();
    let mut diffs = Vec::new();
    for (file, w) in &want {
        match got.get(file) {
            Some((g, _)) if g == w => {}
            Some((g, alerts)) => {
                let shown = alerts.iter().take(10).map(|a| format!("      {a}"));
                let more = alerts.len().saturating_sub(10);
                diffs.push(format!(
                    "  want {w}\n  got  {g}\n    its alerts now:\n{}{}",
                    shown.collect::<Vec<_>>().join("\n"),
                    if more > 0 {
                        format!("\n      … and {more} more")
                    } else {
                        String::new()
                    }
                ))
            }
            None => diffs.push(format!("  {file}: in the fixture, not in the corpus")),
        }
    }
    for file in got.keys().filter(|f| !want.contains_key(*f)) {
        diffs.push(format!("  {file}: in the corpus, not in the fixture"));
    }
    assert!(
        diffs.is_empty(),
        "{} of {} captures alert differently from {FIXTURE} ({HEADER}); if the change is meant \
         (a retrained model, a policy change), rerun with DETECTOR_BLESS=1 and say why in the \
         commit:\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

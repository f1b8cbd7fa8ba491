//! Kernel and user space compute the same flows: every benign and attack capture of the corpus
//! is sent with tcpreplay into a veth whose peer runs the real XDP program, and replayed with
//! `detector replay`'s code; the records and the final flow table must agree.
//!
//! Counters, flags, histograms, lengths, first-packet sizes and directions must be equal.
//! Time-derived values (duration, gaps) are compared after scaling by the replay speed-up, with
//! the tolerance below; they are not compared for captures that must be sped up more than
//! `MAX_TIMED_SPEEDUP` times (tcpreplay then sends as fast as it can), nor where tcpreplay
//! itself took longer than its pace allows (a busy machine delays the sender, not the kernel).

use std::{collections::HashMap, path::Path, process::Command};

use detector::{ebpf::Sizes, replay};
use detector_common::flow::{FlowConfig, FlowKey, FlowState, Reason};
use integration_tests::{
    corpus_files, require_root, unique, untimed, write_padded_pcap, Loaded, Netns,
};

/// Each capture is replayed in at most about this long (speed-up = duration / this).
const TARGET_REPLAY_S: f64 = 4.0;
/// Above this speed-up, timing is not reproducible and time-derived values are not compared.
const MAX_TIMED_SPEEDUP: f64 = 50.0;
/// Timing tolerance, in kernel (replay) time: an absolute part for scheduling jitter of the
/// sender, plus a relative part for tcpreplay's pacing error on long gaps.
const TOL_ABS_NS: f64 = 30e6;
const TOL_REL: f64 = 0.10;

/// Timeouts that never fire, so both sides end every flow only by count-based rules and the
/// final flush: the kernel's clock runs at replay speed, the replayer's at capture speed.
fn config() -> FlowConfig {
    FlowConfig {
        active_timeout_ns: u64::MAX / 4,
        idle_timeout_ns: u64::MAX / 4,
        ..FlowConfig::DEFAULT
    }
}

struct Wire {
    a: Netns,
    b: Netns,
    a_if: String,
    b_if: String,
}

/// Two namespaces and a veth pair, IPv6 off (no neighbour discovery noise), MTU large enough
/// for the corpus's biggest (TSO-captured) frames.
fn wire() -> Wire {
    let a = Netns::new("dtpa");
    let b = Netns::new("dtpb");
    let a_if = unique("pa");
    let b_if = unique("pb");
    for ns in [&a, &b] {
        ns.sh("sysctl -q -w net.ipv6.conf.all.disable_ipv6=1");
        ns.sh("sysctl -q -w net.ipv6.conf.default.disable_ipv6=1");
    }
    integration_tests::sh(&format!(
        "ip link add {a_if} netns {} mtu 65000 type veth peer name {b_if} netns {} mtu 65000",
        a.name, b.name
    ));
    a.sh(&format!("ip link set {a_if} up"));
    b.sh(&format!("ip link set {b_if} up"));
    Wire { a, b, a_if, b_if }
}

#[derive(Default)]
struct Report {
    checked: usize,
    /// Captures whose timing was compared.
    timed: usize,
    max_dev_ns: f64,
}

fn check_file(file: &Path, report: &mut Report) {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let cfg = config();

    // What user space computes from the original file.
    let mut user_records: Vec<(FlowKey, Reason, FlowState)> = Vec::new();
    let summary = replay::replay_file(file, &cfg, |k, s, r| {
        user_records.push((*k, r, *s));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(
        summary.truncated.is_none(),
        "{name}: {:?}",
        summary.truncated
    );

    // What the kernel computes from the same packets on a wire.
    let w = wire();
    // Nobody reads the ring buffer during the replay: make it hold every record of the
    // largest capture (one `new` record per flow of a 37 k-flow flood).
    let sizes = Sizes {
        flow_ringbuf: 64 << 20,
        ..Sizes::default()
    };
    let mut prog = Loaded::new(&sizes, &cfg);
    prog.attach_xdp_in(&w.b, &w.b_if);
    let padded = std::env::temp_dir().join(format!("{}.pcap", unique("dt-parity")));
    let (count, first, last) = write_padded_pcap(file, &padded);
    let duration_s = (last.saturating_sub(first)) as f64 / 1e9;
    let speedup = (duration_s / TARGET_REPLAY_S).max(1.0);
    let timed = speedup <= MAX_TIMED_SPEEDUP;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &w.a.name, "tcpreplay", "-q", "-i", &w.a_if]);
    if timed {
        cmd.arg(format!("--multiplier={speedup:.3}"));
    } else {
        cmd.arg("--topspeed");
    }
    let out = cmd.arg(&padded).output().expect("run tcpreplay");
    let _ = std::fs::remove_file(&padded);
    assert!(
        out.status.success(),
        "{name}: tcpreplay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Actual: {count} packets")),
        "{name}: tcpreplay did not send all {count} packets:\n{stdout}"
    );

    // tcpreplay's own account of how long the sending took: a sender that fell behind its pace
    // (a busy machine) shifts every gap the kernel sees, and comparing them would measure the
    // machine's load, not the kernel.
    let sent_s = stdout
        .split(" sent in ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok());
    let paced_s = duration_s / speedup;
    let sender_late = sent_s.map(|t| t - paced_s);
    let timed =
        timed && sender_late.is_some_and(|late| late * 1e9 <= TOL_ABS_NS + TOL_REL * paced_s * 1e9);

    let stats = prog.stats();
    assert_eq!(
        stats[0], summary.packets,
        "{name}: packets seen by the kernel vs the capture"
    );
    let mut kernel_records: Vec<(FlowKey, u8, FlowState)> = prog
        .records()
        .into_iter()
        .map(|r| (r.key, r.reason, untimed(&r.state)))
        .collect();
    let mut user_interim: Vec<(FlowKey, u8, FlowState)> = user_records
        .iter()
        .filter(|(_, r, _)| *r != Reason::Flush)
        .map(|(k, r, s)| (*k, *r as u8, untimed(s)))
        .collect();
    // Same multiset of records (CPUs may interleave the order of unrelated flows).
    let order = |v: &mut Vec<(FlowKey, u8, FlowState)>| {
        v.sort_by_key(|(k, r, s)| (*k, *r, s.total_packets()))
    };
    order(&mut kernel_records);
    order(&mut user_interim);
    assert_eq!(
        kernel_records.len(),
        user_interim.len(),
        "{name}: record count"
    );
    for (k, u) in kernel_records.iter().zip(&user_interim) {
        assert_eq!(k, u, "{name}: record differs");
    }

    // The final table: one entry per flow, equal to the state in the replay's last record for
    // that key (its flush record, or the last interim one when nothing happened since).
    let kernel_table = prog.flows();
    let user_final: HashMap<FlowKey, FlowState> =
        user_records.iter().map(|(k, _, s)| (*k, *s)).collect();
    assert_eq!(
        kernel_table.len(),
        user_final.len(),
        "{name}: flows in the table"
    );
    for (key, u) in &user_final {
        let k = kernel_table
            .get(key)
            .unwrap_or_else(|| panic!("{name}: flow {key:?} missing in the kernel"));
        assert_eq!(untimed(k), untimed(u), "{name}: flow {key:?}");
        if timed {
            let mut pairs = vec![(
                "duration",
                (k.last_seen_ns - k.first_seen_ns) as f64,
                (u.last_seen_ns - u.first_seen_ns) as f64 / speedup,
            )];
            let n = (u.total_packets() as usize).min(8);
            for i in 1..n {
                pairs.push((
                    "first gap",
                    k.first_gaps_us[i] as f64 * 1e3,
                    u.first_gaps_us[i] as f64 * 1e3 / speedup,
                ));
            }
            for (what, kv, uv) in pairs {
                let dev = (kv - uv).abs();
                report.max_dev_ns = report.max_dev_ns.max(dev);
                assert!(
                    dev <= TOL_ABS_NS + TOL_REL * uv,
                    "{name}: {what} {kv:.0} ns in the kernel vs {uv:.0} ns expected at {speedup:.2}× (flow {key:?})"
                );
            }
        }
    }
    report.checked += 1;
    report.timed += timed as usize;
    eprintln!(
        "{name}: {} packets, {} flows, {} interim records equal; timing {}",
        summary.packets,
        user_final.len(),
        kernel_records.len(),
        if timed {
            format!("compared at {speedup:.2}×")
        } else if speedup > MAX_TIMED_SPEEDUP {
            "not compared (too long a span)".into()
        } else {
            format!(
                "not compared (tcpreplay sent in {sent_s:?} s, paced for {paced_s:.3} s: the sender fell behind)"
            )
        }
    );
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn kernel_and_replay_agree_on_every_benign_and_attack_capture() {
    require_root();
    let mut report = Report::default();
    for file in corpus_files("pcap/benign")
        .into_iter()
        .chain(corpus_files("pcap/attack"))
    {
        check_file(&file, &mut report);
    }
    eprintln!(
        "largest timing deviation: {:.1} ms",
        report.max_dev_ns / 1e6
    );
    assert_eq!(report.checked, 23);
    // Most captures are short enough to be timed; a sender that fell behind on every one of
    // them would leave the kernel's clock untested.
    assert!(
        report.timed >= 5,
        "timing compared on only {} captures: the machine was too busy for tcpreplay to keep pace",
        report.timed
    );
}

/// When a capture brings many more flows than the table holds, both sides stay within it and
/// evict: the kernel's LRU map (a batch at a time, its own choice among the least recently
/// used) and the replayer's bounded table (the least recently seen, a batch at a time). What
/// the LRU chose may differ in detail, so this compares what must agree: every insert is either
/// in the table or evicted on each side, the evictions agree within the kernel's batching, both
/// keep the latest flows, and every flow that neither side evicted has the same records and the
/// same final state.
#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn kernel_and_replay_agree_when_the_flow_table_is_full() {
    use detector_common::flow::stat;
    use std::collections::HashSet;

    require_root();
    /// Far fewer than the capture's 37,669 flows.
    const TABLE: u32 = 2048;
    // The kernel's LRU frees up to 128 entries at once, per CPU (its local free lists).
    let slack = 128 * (std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 + 1);
    let file = corpus_files("pcap/attack")
        .into_iter()
        .find(|f| f.to_string_lossy().contains("flood-syn-spoofed"))
        .expect("the spoofed SYN flood capture");
    let cfg = config();

    let mut user_records: Vec<(FlowKey, Reason, FlowState)> = Vec::new();
    let summary = replay::replay_file_in(&file, &cfg, TABLE, |k, s, r| {
        user_records.push((*k, r, *s));
        Ok(())
    })
    .unwrap();
    let user_final: HashMap<FlowKey, FlowState> = user_records
        .iter()
        .filter(|(_, r, _)| *r == Reason::Flush)
        .map(|(k, _, s)| (*k, *s))
        .collect();

    let w = wire();
    let sizes = Sizes {
        flow_table: TABLE,
        flow_ringbuf: 64 << 20,
        ..Sizes::default()
    };
    let mut prog = Loaded::new(&sizes, &cfg);
    prog.attach_xdp_in(&w.b, &w.b_if);
    let padded = std::env::temp_dir().join(format!("{}.pcap", unique("dt-parity-full")));
    let (count, _, _) = write_padded_pcap(&file, &padded);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.a.name,
            "tcpreplay",
            "-q",
            "--topspeed",
            "-i",
            &w.a_if,
        ])
        .arg(&padded)
        .output()
        .expect("run tcpreplay");
    let _ = std::fs::remove_file(&padded);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("Actual: {count} packets")),
        "tcpreplay did not send all {count} packets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = prog.stats();
    let kernel_table = prog.flows();
    assert_eq!(stats[stat::PACKETS as usize], summary.packets);

    // Bounded on both sides, and every insert accounted for.
    let kernel_inserts = stats[stat::TABLE_INSERTS as usize];
    let kernel_evicted = kernel_inserts - kernel_table.len() as u64;
    let user_inserts = summary.table_inserts;
    assert!(kernel_table.len() <= TABLE as usize && user_final.len() <= TABLE as usize);
    assert_eq!(
        user_inserts,
        user_final.len() as u64 + summary.table_evicted,
        "replayer: inserts = flows left + evicted"
    );
    eprintln!(
        "{} packets; kernel: {kernel_inserts} inserts, {} left, {kernel_evicted} evicted; \
         replayer: {user_inserts} inserts, {} left, {} evicted",
        summary.packets,
        kernel_table.len(),
        user_final.len(),
        summary.table_evicted
    );
    assert!(
        summary.table_evicted > user_inserts / 2,
        "the replayer evicted {} of {user_inserts}",
        summary.table_evicted
    );
    assert!(
        kernel_evicted.abs_diff(summary.table_evicted) <= slack,
        "kernel evicted {kernel_evicted}, replayer {}",
        summary.table_evicted
    );

    // Both keep the latest flows: most of what is left is left on both sides.
    let kept: HashSet<FlowKey> = kernel_table
        .keys()
        .filter(|k| user_final.contains_key(k))
        .copied()
        .collect();
    assert!(
        kept.len() >= TABLE as usize / 2,
        "only {} flows left on both sides of {TABLE}",
        kept.len()
    );
    for key in &kept {
        assert_eq!(
            untimed(&kernel_table[key]),
            untimed(&user_final[key]),
            "flow {key:?}"
        );
    }

    // The records of the flows neither side evicted: the same multiset.
    let records = |v: Vec<(FlowKey, u8, FlowState)>| {
        let mut v: Vec<_> = v.into_iter().filter(|(k, _, _)| kept.contains(k)).collect();
        v.sort_by_key(|(k, r, s)| (*k, *r, s.total_packets()));
        v
    };
    let kernel_records = records(
        prog.records()
            .into_iter()
            .map(|r| (r.key, r.reason, untimed(&r.state)))
            .collect(),
    );
    let user_interim = records(
        user_records
            .iter()
            .filter(|(_, r, _)| *r != Reason::Flush)
            .map(|(k, r, s)| (*k, *r as u8, untimed(s)))
            .collect(),
    );
    assert!(!kernel_records.is_empty(), "no records of the kept flows");
    assert_eq!(kernel_records, user_interim, "records of the kept flows");
}

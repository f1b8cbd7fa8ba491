//! Resource exhaustion, end to end in sealed network namespaces: a random-source SYN flood
//! creates many times more flows than the agent's (deliberately small) kernel flow table holds.
//! The test proves that the table stays bounded (its size is the configured one and its
//! occupancy, read from the kernel map, does not exceed it), that the flows it evicts are
//! counted, that records the ring buffer had
//! no room for are counted as lost rather than vanishing, that the agent's memory stays bounded
//! (peak RSS under 128 MiB), that an nmap SYN scan run right after the flood, against a table
//! full of the flood's flows, is still alerted, and that an allowlisted client keeps getting
//! its pages during and after the flood and is never named as dropped.
//!
//! The spoofed sources get no replies: the LAN has no route out and no NAT, so the victim's
//! SYN-ACKs to them die inside its namespace.

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, MapInfo};
use detector_common::flow::{FlowKey, FlowState};
use integration_tests::{
    require_root,
    traffic::{alerts_from, nmap_syn_scan, LanService},
    Agent, AgentDir, Lan,
};
use serde_json::Value;

const VICTIM: usize = 0;
const FLOODER: usize = 1;
const SCANNER: usize = 2;
const CLIENT: usize = 3;

/// Kernel flow-table entries the agent is started with: small, so the flood overruns it.
const TABLE: u32 = 4096;
/// Packets (each a new spoofed flow) the flood sends at most.
const FLOOD_PACKETS: u32 = 100_000;
/// Peak RSS the agent may reach.
const RSS_LIMIT_KIB: u64 = 128 * 1024;

/// A random-source SYN flood to `port`, bounded in time (10 s) and in count.
fn spoofed_flood(lan: &Lan, port: u16) {
    let _ = Command::new("timeout")
        .args([
            "-s",
            "INT",
            "10",
            "ip",
            "netns",
            "exec",
            &lan.hosts[FLOODER].name,
        ])
        .args([
            "hping3",
            "-q",
            "-S",
            "--rand-source",
            "-p",
            &port.to_string(),
            "-i",
            "u10",
            "-c",
            &FLOOD_PACKETS.to_string(),
            &lan.ip(VICTIM),
        ])
        .output()
        .expect("run hping3");
}

/// A field (in kB) of /proc/<pid>/status.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent's status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The id and max_entries of the agent's kernel flow table, found among the BPF maps that
/// the agent's process holds open (its fds), so that another agent on the host cannot be
/// mistaken for it.
fn flow_map_of(pid: u32) -> (u32, u32) {
    let mut found = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("agent's fds") {
        let fd = fd.unwrap();
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(map) = MapInfo::from_id(id) else {
            continue;
        };
        if map.name_as_str() == Some("FLOWS") {
            found.push((id, map.max_entries()));
        }
    }
    found.sort();
    found.dedup();
    assert_eq!(found.len(), 1, "the agent holds one FLOWS map: {found:?}");
    found[0]
}

/// The distinct keys in the flow table now (iteration is capped: while packets churn the
/// table, the kernel may restart a walk, so a count taken under load is an estimate).
fn flow_map_entries(id: u32, max: u32) -> usize {
    let map = Map::from_map_data(MapData::from_id(id).expect("open FLOWS by id")).unwrap();
    let flows: HashMap<MapData, FlowKey, FlowState> = HashMap::try_from(map).unwrap();
    let mut seen = HashSet::new();
    for k in flows.keys().take(max as usize * 4).flatten() {
        seen.insert(k);
    }
    seen.len()
}

/// The agent's `status` answer.
fn status(dir: &AgentDir) -> Value {
    let out = dir.client(&["status"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn a_spoofed_flood_beyond_the_flow_table_stays_bounded_and_a_scan_is_still_caught() {
    require_root();
    let t0 = Instant::now();
    let lan = Lan::new(4);
    let svc = LanService::start(&lan, VICTIM, 8080);
    let client = lan.ip(CLIENT);
    let scanner = lan.ip(SCANNER);
    let dir = AgentDir::with_config(&format!("[policy]\nallowlist = [\"{client}/32\"]\n"));
    let agent = Agent::start_in(
        &lan.hosts[VICTIM],
        &dir,
        &[
            "--iface",
            &lan.ifaces[VICTIM],
            "--drop",
            "drop",
            "--flow-table-size",
            &TABLE.to_string(),
        ],
    );
    let pid = agent.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "detector", "the child is the agent itself");
    let (map_id, max_entries) = flow_map_of(pid);
    assert_eq!(
        max_entries, TABLE,
        "the kernel flow table has the configured size"
    );
    assert!(svc.request(&lan, CLIENT), "client before the flood");
    let hwm_before = proc_status_kib(pid, "VmHWM");

    // During the flood: the client keeps requesting, and the table and RSS are sampled.
    let flooding = Arc::new(AtomicBool::new(true));
    let samples = Arc::new(Mutex::new((0usize, 0u64))); // (max entries seen, max VmRSS)
    let sampler = {
        let (flooding, samples) = (flooding.clone(), samples.clone());
        std::thread::spawn(move || {
            while flooding.load(Ordering::Relaxed) {
                let n = flow_map_entries(map_id, max_entries);
                let rss = proc_status_kib(pid, "VmRSS");
                let mut s = samples.lock().unwrap();
                s.0 = s.0.max(n);
                s.1 = s.1.max(rss);
                drop(s);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let flood_start = Instant::now();
    let (during_ok, during_total) = std::thread::scope(|s| {
        let flood = s.spawn(|| spoofed_flood(&lan, svc.port));
        let requests = s.spawn(|| {
            let (mut ok, mut total) = (0, 0);
            while flooding.load(Ordering::Relaxed) {
                total += 1;
                if svc.request(&lan, CLIENT) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (ok, total)
        });
        flood.join().unwrap();
        flooding.store(false, Ordering::Relaxed);
        requests.join().unwrap()
    });
    let flood_s = flood_start.elapsed().as_secs_f64();
    sampler.join().unwrap();
    // Right after the flood, with the table full of its flows: the scan's new flows must
    // still get in (evicting the least recently used) and be scored.
    let full_at_scan = flow_map_entries(map_id, max_entries);
    nmap_syn_scan(&lan.hosts[SCANNER], &lan.ip(VICTIM));
    std::thread::sleep(Duration::from_millis(1000));

    let after_ok = (0..3).filter(|_| svc.request(&lan, CLIENT)).count();
    let occupancy = flow_map_entries(map_id, max_entries);
    let st = status(&dir);
    let hwm = proc_status_kib(pid, "VmHWM");
    let (peak_entries, peak_rss) = *samples.lock().unwrap();
    let lines = agent.stop();

    let kernel = &st["kernel"];
    let created = kernel["flows_created"].as_u64().unwrap();
    let scanner_alerts = alerts_from(&lines, &scanner);
    let client_alerts = alerts_from(&lines, &client);
    let alerts = lines.iter().filter(|l| l["type"] == "alert").count();
    eprintln!(
        "flood {flood_s:.1} s; flows created {created} vs table {TABLE}; kernel {kernel}; \
         records read {}; occupancy at scan {full_at_scan}, after {occupancy}, \
         sampled under churn {peak_entries}; \
         RSS peak sampled {peak_rss} KiB, VmHWM {hwm_before} KiB before the flood, {hwm} KiB \
         at the end; alerts {alerts}, scanner {} (actions {:?}), client {}; blocks {}; client ok during {during_ok}/{during_total}, after {after_ok}/3; \
         total {:.1} s",
        st["records_read"],
        scanner_alerts.len(),
        scanner_alerts
            .iter()
            .map(|a| a["action"].as_str().unwrap_or("?"))
            .collect::<Vec<_>>(),
        client_alerts.len(),
        st["blocks"].as_array().map_or(0, |b| b.len()),
        t0.elapsed().as_secs_f64()
    );

    assert!(
        created > 4 * u64::from(TABLE),
        "the flood created {created} flows, not well beyond the table's {TABLE}"
    );
    // The flood's flows pushed others out of the table: the agent counts those evictions
    // (inserted = in the table + swept + evicted), which the kernel does silently.
    let inserts = kernel["table_inserts"].as_u64().unwrap();
    let evicted = st["table_evicted"].as_u64().unwrap();
    assert!(
        evicted <= inserts && evicted >= inserts.saturating_sub(2 * u64::from(TABLE)) / 2,
        "{evicted} flows counted as evicted of {inserts} inserted into a table of {TABLE}"
    );
    let lost = kernel["ringbuf_full"].as_u64().unwrap();
    assert!(
        kernel["records"].as_u64().unwrap() + lost >= created,
        "every new flow's record is either emitted or counted as lost: {kernel}"
    );
    assert!(
        full_at_scan >= TABLE as usize / 2,
        "the scan should meet a table filled by the flood: {full_at_scan} of {TABLE}"
    );
    assert!(
        full_at_scan <= TABLE as usize && occupancy <= TABLE as usize,
        "flow table holds {full_at_scan} / {occupancy} entries, more than its {TABLE}"
    );
    assert!(
        hwm < RSS_LIMIT_KIB,
        "agent peak RSS {hwm} KiB, over {RSS_LIMIT_KIB} KiB"
    );
    assert!(
        !scanner_alerts.is_empty(),
        "the scan from {scanner} after the flood was not alerted ({alerts} alerts in all)"
    );
    assert!(during_total > 0, "no client request during the flood");
    assert_eq!(
        during_ok, during_total,
        "the allowlisted client failed during the flood"
    );
    assert_eq!(after_ok, 3, "the allowlisted client failed after the flood");
    assert!(
        client_alerts
            .iter()
            .all(|a| a["drop"]["outcome"] != "dropped" && a["action"] != "drop"),
        "the allowlisted client was named as dropped: {:?}",
        client_alerts.first()
    );
    assert!(
        !st["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["what"] == format!("source {client}")),
        "the allowlisted client is blocked: {}",
        st["blocks"]
    );
}

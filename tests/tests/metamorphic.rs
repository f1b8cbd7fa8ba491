//! Features describe behaviour, not the network path (issue "Off the lab"; docs/model.md,
//! "Features"): the same benign traffic over a path ten times slower or faster, or from a
//! client stack that negotiates ECN, must alert on the same flows. Each benign capture of the
//! corpus and of the nDPI dev split (none trained on) is rewritten — every timestamp's offset
//! from the first scaled by ×10 and by ×0.1; ECE and CWR set on every SYN and ECE on every
//! SYN-ACK — and `replay --detect`'s detection (the embedded model, the default policy) must
//! alert on the same flows as on the original.
//!
//! A flow's features hold no time but in round trips of its own. The time scales that are the
//! operator's settings — when a flow is reported (idle and active timeouts), the context
//! window, the alert cooldown and rate limit — are scaled with the capture: a ten times slower
//! capture against an unchanged 10 s window is another workload (ten times fewer flows per
//! window), not the same one over a slower path.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use detector::{
    config::Config,
    detect::CollectedAlerts,
    model::Model,
    replay::{detect_file, offline_detector},
};
use integration_tests::{corpus_files, ndpi_files, rewrite_pcap, unique};

/// The default configuration with every time scale multiplied by `k`.
fn scaled_config(k: f64) -> Config {
    use std::time::Duration;
    let mut cfg = Config::default();
    let scale = |d: Duration| Duration::from_secs_f64(d.as_secs_f64() * k);
    cfg.flows.idle_timeout.0 = scale(cfg.flows.idle_timeout.0);
    cfg.flows.active_timeout.0 = scale(cfg.flows.active_timeout.0);
    cfg.context.window.0 = scale(cfg.context.window.0);
    cfg.policy.alert_cooldown.0 = scale(cfg.policy.alert_cooldown.0);
    cfg.policy.max_alerts_per_s /= k;
    cfg
}

/// The alerted flows (protocol and both endpoints) of one capture, None where replay cannot
/// read it (link type).
fn alerted(file: &Path, cfg: &Config, model: &Arc<Model>) -> Option<BTreeSet<String>> {
    let mut det = offline_detector(model.clone(), "base".into(), cfg, 0).unwrap();
    let mut got = CollectedAlerts::default();
    detect_file(
        file,
        &cfg.flow_config(),
        cfg.flows.table_size,
        &mut det,
        &mut got,
    )
    .ok()?;
    Some(
        got.alerts
            .iter()
            .map(|a| {
                let f = &a.flow;
                format!(
                    "{} {}:{} -> {}:{}",
                    f.proto_name, f.src_addr, f.src_port, f.dst_addr, f.dst_port
                )
            })
            .collect(),
    )
}

/// Offset of the TCP header's flags byte in an Ethernet frame (VLAN tags, IPv4 with options,
/// IPv6 without extension headers), if the frame is TCP.
fn tcp_flags_at(f: &[u8]) -> Option<usize> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
    while matches!(ethertype, 0x8100 | 0x88a8) {
        at += 4;
        ethertype = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
    }
    let ip = at + 2;
    let tcp = match ethertype {
        0x0800 if *f.get(ip + 9)? == 6 => ip + 4 * (*f.get(ip)? & 0x0f) as usize,
        0x86dd if *f.get(ip + 6)? == 6 => ip + 40,
        _ => return None,
    };
    (tcp + 13 < f.len()).then_some(tcp + 13)
}

/// ECN negotiation: ECE + CWR on a SYN, ECE on a SYN-ACK (RFC 3168).
fn ecn_on_syns(f: &mut [u8]) {
    if let Some(i) = tcp_flags_at(f) {
        let flags = f[i];
        if flags & 0x02 != 0 {
            f[i] |= if flags & 0x10 != 0 { 0x40 } else { 0xc0 };
        }
    }
}

fn variant(
    src: &Path,
    name: &str,
    ts: impl Fn(u64, u64) -> u64,
    edit: impl FnMut(&mut [u8]),
) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("{}-{name}.pcap", unique("dt-meta")));
    rewrite_pcap(src, &dst, false, ts, edit);
    dst
}

#[test]
fn benign_captures_alert_on_the_same_flows_whatever_the_path_speed_or_ecn() {
    let cfg = Config::default();
    let (model, _) = detector::model::serving::base_model(&cfg.scoring.model).unwrap();
    let model = Arc::new(model);
    let (mut checked, mut with_alerts) = (0, 0);
    let mut changed = Vec::new();
    let files = corpus_files("pcap/benign")
        .into_iter()
        .chain(ndpi_files("dev", "benign"));
    for file in files {
        let Some(original) = alerted(&file, &cfg, &model) else {
            continue;
        };
        checked += 1;
        with_alerts += !original.is_empty() as usize;
        // Offsets from the first packet, which a capture's later packets may precede.
        let scaled = |k: f64| {
            move |t: u64, first: u64| (first as f64 + (t as f64 - first as f64) * k).max(0.0) as u64
        };
        for (what, k, path) in [
            (
                "timestamps ×10",
                10.0,
                variant(&file, "x10", scaled(10.0), |_| {}),
            ),
            (
                "timestamps ×0.1",
                0.1,
                variant(&file, "x01", scaled(0.1), |_| {}),
            ),
            (
                "ECN on SYNs",
                1.0,
                variant(&file, "ecn", |t, _| t, ecn_on_syns),
            ),
        ] {
            let got =
                alerted(&path, &scaled_config(k), &model).expect("the rewritten capture reads");
            let _ = std::fs::remove_file(&path);
            if got != original {
                changed.push(format!(
                    "{} with {what}: {:?} alerted, {:?} on the original",
                    file.display(),
                    got,
                    original
                ));
            }
        }
    }
    eprintln!("{checked} benign captures checked, {with_alerts} with alerts on the original");
    assert!(checked >= 100, "only {checked} captures could be read");
    assert!(changed.is_empty(), "{}", changed.join("\n"));
}

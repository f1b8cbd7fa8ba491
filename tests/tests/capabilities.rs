//! The systemd unit's capability set is the least that works: the agent runs with exactly the
//! unit's `CapabilityBoundingSet`, and without any one of CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN it
//! stops with one clear error (not a panic).

use std::process::Command;

use integration_tests::{detector_bin, require_root, AgentDir, Netns};

/// The capabilities the unit grants, from packaging/detector.service.
fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/detector.service"
    ))
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// Runs the agent for a few seconds with only `caps`; returns (exit code, stderr).
fn run_with(caps: &[String]) -> (Option<i32>, String) {
    let ns = Netns::new("dtcap");
    let dir = AgentDir::new();
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = Command::new("timeout")
        .args(["--preserve-status", "-s", "INT", "6", "nsenter"])
        .arg(format!("--net={}", ns.path().display()))
        .args([
            "setpriv",
            &format!("--bounding-set={bounding}"),
            "--inh-caps=-all",
        ])
        .arg(detector_bin())
        .args(["run", "--iface", "lo", "--config"])
        .arg(&dir.config)
        .arg("--state-dir")
        .arg(dir.path.join("state"))
        .arg("--control-socket")
        .arg(dir.socket())
        .args([
            "--metrics-listen",
            "",
            "--output",
            "/dev/null",
            "--events",
            "/dev/null",
        ])
        .output()
        .expect("run the agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn the_unit_capabilities_suffice_and_each_core_one_is_needed() {
    require_root();
    let caps = unit_caps();
    for c in ["bpf", "perfmon", "net_admin"] {
        assert!(
            caps.iter().any(|x| x == c),
            "the unit grants CAP_{}",
            c.to_uppercase()
        );
    }
    let (code, stderr) = run_with(&caps);
    // SIGINT from `timeout` after 6 s: a clean stop, after everything was attached.
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("attached XDP ingress on lo") && stderr.contains("SIGINT or SIGTERM stops"),
        "{stderr}"
    );
    assert!(!stderr.contains("not attached"), "{stderr}");
    for missing in ["bpf", "perfmon", "net_admin"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let (code, stderr) = run_with(&fewer);
        assert_eq!(
            code,
            Some(1),
            "without CAP_{}: {stderr}",
            missing.to_uppercase()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        // The error's first line names what is missing (a verifier log may follow it).
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default();
        assert!(
            error.contains("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"),
            "without CAP_{}: {stderr}",
            missing.to_uppercase()
        );
    }
}

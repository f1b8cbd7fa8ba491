//! What the operator gets wrong ends with one clear error line and a non-zero exit, never a
//! panic: an unknown interface, a missing tracefs, an unreadable or invalid eBPF object.

use std::process::{Command, Output};

use integration_tests::{detector_bin, require_root, unique, Netns};

/// Runs the agent in `ns` (via nsenter, which keeps the host's /sys) with `args`; `timeout`
/// turns an agent that starts instead of failing into a failed assertion, not a hung test.
fn agent_in(ns: &Netns, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["20", "nsenter"])
        .arg(format!("--net={}", ns.path().display()))
        .arg(detector_bin())
        .arg("run")
        .args(args)
        .output()
        .expect("run the agent")
}

/// Asserts a failed run whose stderr ends with one `error:` line containing every `needle`.
fn assert_clear_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status, stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: "),
        "last line is not an error line:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("error:").count(),
        1,
        "exactly one error line:\n{stderr}"
    );
    for n in needles {
        assert!(last.contains(n), "{n:?} missing from {last:?}");
    }
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn unknown_interface_is_one_clear_error() {
    require_root();
    let ns = Netns::new("dtbad");
    let out = agent_in(&ns, &["--iface", "nosuchif0"]);
    assert_clear_error(&out, &["\"nosuchif0\" does not exist", "lo"]);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn missing_tracefs_is_one_clear_error() {
    require_root();
    let ns = Netns::new("dtbad");
    // A private mount namespace where tracefs (and debugfs's copy) is unmounted: the host
    // keeps its mounts.
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         exec nsenter --net={} {} run --iface lo",
        ns.path().display(),
        detector_bin().display()
    );
    let out = Command::new("timeout")
        .args([
            "20",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .expect("run unshare");
    assert_clear_error(&out, &["tracefs is not mounted", "mount -t tracefs"]);
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn unreadable_or_invalid_ebpf_object_is_one_clear_error() {
    require_root();
    let ns = Netns::new("dtbad");
    let missing = std::env::temp_dir().join(unique("no-such-object-"));
    let out = agent_in(
        &ns,
        &["--iface", "lo", "--ebpf-object", missing.to_str().unwrap()],
    );
    assert_clear_error(
        &out,
        &["cannot read eBPF object", missing.to_str().unwrap()],
    );

    let garbage = std::env::temp_dir().join(unique("garbage-object-"));
    std::fs::write(&garbage, b"this is not an ELF file").unwrap();
    let out = agent_in(
        &ns,
        &["--iface", "lo", "--ebpf-object", garbage.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&garbage);
    assert_clear_error(
        &out,
        &["cannot load eBPF object", garbage.to_str().unwrap()],
    );
}

#[test]
fn bad_flag_values_are_rejected_before_loading_anything() {
    let out = Command::new(detector_bin())
        .args(["run", "--idle-timeout", "soon"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a duration"), "{stderr}");
    let out = Command::new(detector_bin())
        .args(["run", "--iface", "lo", "--flow-ringbuf-bytes", "1000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("power of two"), "{stderr}");
}

//! `cargo xtask dist`: a Debian package with the agent binary, its systemd unit and the
//! default configuration (a conffile: upgrades keep the operator's edits).

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context};

use crate::{cargo, root, run};

/// Builds `target/dist/detector_<version>_<arch>.deb`; with `debug`, from the debug binary
/// (fast, for tests) instead of a release build. Returns the package path.
pub fn deb(debug: bool) -> anyhow::Result<std::path::PathBuf> {
    let root = root();
    let profile = if debug { "debug" } else { "release" };
    // The daemon without the developer's tools (training, evaluation, dataset imports: the
    // `trainer` feature), in a target folder of its own so that it does not replace the
    // developer's binary.
    let target = root.join("target/daemon");
    let mut build = cargo();
    build
        .args([
            "build",
            "-p",
            "detector",
            "--no-default-features",
            "--target-dir",
        ])
        .arg(&target);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let dist = root.join("target/dist");
    let stage = dist.join(format!("detector_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clean {}", stage.display()))?;
    }
    let put = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dst = stage.join(to);
        fs::create_dir_all(dst.parent().unwrap())?;
        fs::copy(from, &dst)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dst.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(
        &target.join(profile).join("detector"),
        "usr/bin/detector",
        0o755,
    )?;
    put(
        &root.join("packaging/detector.service"),
        "lib/systemd/system/detector.service",
        0o644,
    )?;
    put(
        &root.join("packaging/detector.toml"),
        "etc/detector/detector.toml",
        0o600,
    )?;
    put(
        &root.join("README.md"),
        "usr/share/doc/detector/README.md",
        0o644,
    )?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let size_kb = dir_size(&stage)? / 1024;
    fs::write(
        debian.join("control"),
        format!(
            "Package: detector\nVersion: {version}\nArchitecture: {arch}\nMaintainer: detector developers <dev@detector.local>\n\
             Installed-Size: {size_kb}\nDepends: libc6 (>= 2.36)\nSection: net\nPriority: optional\n\
             Description: host anomaly detector with eBPF flow telemetry\n \
             An agent that extracts per-flow and per-process features with eBPF (XDP, TC,\n \
             tracepoints), scores them with a small meta-learned model, alerts and drops by\n \
             policy, and adapts to its host from incidents the operator confirms.\n"
        ),
    )?;
    fs::write(debian.join("conffiles"), "/etc/detector/detector.toml\n")?;
    let script = |name: &str, body: &str| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = debian.join(name);
        fs::write(&p, format!("#!/bin/sh\nset -e\n{body}"))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    // Not started on install: the operator reviews the configuration first.
    script(
        "postinst",
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n\
         echo 'detector installed: review /etc/detector/detector.toml, then: systemctl enable --now detector'\n",
    )?;
    script(
        "prerm",
        "if [ -d /run/systemd/system ]; then systemctl stop detector.service || true; fi\n",
    )?;
    script(
        "postrm",
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
    )?;
    let deb = dist.join(format!("detector_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("cannot run dpkg-deb (Debian package dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb failed ({status})");
    }
    eprintln!("dist: wrote {}", deb.display());
    Ok(deb)
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

//! `cargo xtask dist`: the Debian package, built by cargo-deb from `[package.metadata.deb]` in
//! detector/Cargo.toml (binary, systemd unit, default configuration as a conffile, maintainer
//! scripts from packaging/debian/), then given the md5sums that cargo-deb 3 no longer writes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

use crate::{cargo, root, run, setup};

/// Builds `target/dist/detector_<version>-<revision>_<arch>.deb` and returns its path; with
/// `debug`, from the debug build (fast, for tests: stripped, lighter compression) instead of a
/// release build.
pub fn deb(debug: bool) -> anyhow::Result<PathBuf> {
    setup::dist_tools()?;
    let root = root();
    let dist = root.join("target/dist");
    fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    let mut cmd = cargo();
    cmd.args([
        "deb",
        "-p",
        "detector",
        "--locked",
        "--strip",
        "--no-dbgsym",
    ])
    // cargo-deb warns that the dev profile is not meant for releases: it is for tests.
    .args(["--profile", if debug { "dev" } else { "release" }])
    .arg("--output")
    .arg(&dist)
    // The daemon (no trainer: `default-features = false` in the metadata) in a target
    // folder of its own, so that it does not replace the developer's binary.
    .env("CARGO_TARGET_DIR", root.join("target/daemon"))
    .current_dir(&root)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if debug {
        cmd.arg("--fast");
    }
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!("{line} failed ({})", out.status);
    }
    // cargo-deb prints the path of the package it wrote on stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(deb) = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(|l| root.join(l))
    else {
        bail!("{line} named no .deb on stdout: {stdout}");
    };
    add_md5sums(&deb, debug)?;
    eprintln!("dist: wrote {}", deb.display());
    // The path, for scripts and tests.
    println!("{}", deb.display());
    Ok(deb)
}

/// Adds DEBIAN/md5sums as dh_md5sums writes it (every regular file but the conffiles, whose
/// sums dpkg keeps itself), for `dpkg --verify` and debsums: unpacks the package and builds it
/// again with dpkg-deb, owners root and modes and times as cargo-deb set them.
fn add_md5sums(deb: &Path, fast: bool) -> anyhow::Result<()> {
    let stage = deb.with_extension("stage");
    let clean = || -> anyhow::Result<()> {
        if stage.exists() {
            fs::remove_dir_all(&stage)
                .with_context(|| format!("cannot remove {}", stage.display()))?;
        }
        Ok(())
    };
    clean()?;
    run(Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(deb)
        .arg(&stage))?;
    let control = stage.join("DEBIAN");
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    let conffiles: Vec<&str> = conffiles.lines().map(str::trim).collect();
    let mut files = Vec::new();
    regular_files(&stage, &stage, &mut files)?;
    files.retain(|f| f != "DEBIAN" && !f.starts_with("DEBIAN/"));
    files.retain(|f| !conffiles.contains(&format!("/{f}").as_str()));
    files.sort();
    let out = Command::new("md5sum")
        .arg("--")
        .args(&files)
        .current_dir(&stage)
        .output()
        .context("cannot run md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let sums = control.join("md5sums");
    fs::write(&sums, &out.stdout).with_context(|| format!("cannot write {}", sums.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&sums, fs::Permissions::from_mode(0o644))?;
    // The times cargo-deb gave the files (its build day) for the folders unpacking touched too.
    let epoch = fs::metadata(control.join("control"))?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut build = Command::new("dpkg-deb");
    build
        .args(["--root-owner-group", "-Zxz"])
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    if fast {
        build.arg("-z1");
    }
    run(build.arg("--build").arg(&stage).arg(deb))?;
    clean()
}

/// The regular files under `dir`, as paths relative to `base`.
fn regular_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            regular_files(base, &entry.path(), out)?;
        } else if kind.is_file() {
            let rel = entry.path();
            let rel = rel.strip_prefix(base).expect("under base");
            out.push(rel.to_str().context("a non-UTF-8 file name")?.to_owned());
        }
    }
    Ok(())
}

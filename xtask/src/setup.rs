//! `cargo xtask setup`: installs what is missing, idempotently, and says exactly what to run by
//! hand when it cannot (not root, not Debian, no network).

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

/// Debian packages bpf-linker is built against (../shared/TOOLCHAIN.md).
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];
/// Debian packages the integration tests drive (the lab's, `crate::lab::PACKAGES`, come too:
/// tests start the lab).
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "ethtool",
    "tcpdump",
    "tcpreplay",
    "nmap",
    "hping3",
    "util-linux",
    "systemd",
    "curl",
    "zstd",
    "openssl",
    "openssh-client",
    // promtool, to check the agent's /metrics (its server is not started: NoDaemonStart).
    "prometheus",
    // Checks the .deb (tests/tests/packaging.rs).
    "lintian",
    // The fleet's broker: tests/tests/fleet.rs starts its own servers as plain processes
    // (the package's service is not started: NoDaemonStart).
    "nats-server",
];
/// Debian packages `cargo xtask dist` needs besides cargo-deb: dpkg-shlibdeps (the package's
/// computed Depends) and strip.
const DIST_PACKAGES: &[&str] = &["dpkg-dev", "binutils"];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds the .deb (`cargo xtask dist`); 3.8.0 builds with the stable toolchain here (1.95).
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// The Python environment of the tests that read exports back with pyarrow
/// (tests/tests/dataset_export.rs, which names the same path): Debian's python3, so that
/// python3-venv is the package it needs, outside target/ so that a fresh clone reuses it.
const TEST_VENV: &str = "/opt/detector-tests/venv";
/// pyarrow from PyPI, pinned: the version the export test last passed with (2026-12-06).
const PYARROW_VERSION: &str = "26.0.1";

/// Runs every setup step. With `test_tools`, also installs every package and tool that the
/// tests and the lab use (cargo-deb and lintian for the package's test among them), here and
/// once: tests never install anything (two `apt-get` at once fail on apt's lock).
pub fn all(test_tools: bool) -> anyhow::Result<()> {
    rust_components()?;
    let packages = wanted_packages(test_tools);
    debian_packages(&packages)?;
    bpf_linker()?;
    if test_tools {
        // The packaging test builds the .deb.
        cargo_deb()?;
    }
    tracefs()?;
    if test_tools {
        // tests/tests/dataset_export.rs reads `detector dataset export`'s files with pyarrow.
        test_venv()?;
    }
    Ok(())
}

/// What `cargo xtask dist` needs: cargo-deb and the Debian tools it calls.
pub fn dist_tools() -> anyhow::Result<()> {
    debian_packages(DIST_PACKAGES)?;
    cargo_deb()
}

/// The Debian packages `all(test_tools)` installs.
fn wanted_packages(test_tools: bool) -> Vec<&'static str> {
    let mut packages: Vec<&str> = LLVM_PACKAGES.to_vec();
    if test_tools {
        packages.extend_from_slice(TEST_PACKAGES);
        packages.extend_from_slice(DIST_PACKAGES);
        packages.extend_from_slice(crate::lab::PACKAGES);
    }
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Fails, naming the command that installs them, unless every package the tests and the lab
/// use is installed. For callers that must not install anything themselves (the lab when a
/// test starts it).
pub fn check_test_tools() -> anyhow::Result<()> {
    let missing = missing_packages(&wanted_packages(true));
    if !missing.is_empty() {
        bail!(
            "missing packages {}: run `cargo xtask setup --test-tools` as root first",
            missing.join(", ")
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command with its output on our stderr (stdout too: what calls setup may print
/// something that a test or a script parses, such as `lab --up`'s topology line); Ok(false)
/// when it ran and failed.
fn try_run(cmd: &mut Command) -> anyhow::Result<bool> {
    let line = format!("{cmd:?}");
    eprintln!("setup: {line}");
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stderr")?;
    Ok(cmd
        .stdout(Stdio::from(stderr))
        .status()
        .with_context(|| format!("cannot start {line}"))?
        .success())
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The nightly rust-src component (eBPF builds use -Z build-std=core) and stable's
/// clippy/rustfmt (the lint step of `cargo xtask test`).
fn rust_components() -> anyhow::Result<()> {
    let installed = |toolchain: &str| -> String {
        Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", toolchain])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    if !quiet_ok(Command::new("rustup").arg("--version")) {
        bail!("rustup is not installed: install it from https://rustup.rs, then `rustup toolchain install nightly --component rust-src`");
    }
    if !quiet_ok(Command::new("rustc").args(["+nightly", "--version"])) {
        let hint = "rustup toolchain install nightly --profile minimal --component rust-src";
        if !try_run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))? {
            bail!("the nightly toolchain is missing and could not be installed: run `{hint}`");
        }
    }
    if !installed("nightly")
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        let hint = "rustup component add rust-src --toolchain nightly";
        if !try_run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))? {
            bail!("could not add rust-src to nightly: run `{hint}`");
        }
    }
    let stable = installed("stable");
    for c in ["clippy", "rustfmt"] {
        if !stable.lines().any(|l| l.starts_with(c))
            && !try_run(Command::new("rustup").args([
                "component",
                "add",
                c,
                "--toolchain",
                "stable",
            ]))?
        {
            bail!("could not add {c}: run `rustup component add {c} --toolchain stable`");
        }
    }
    Ok(())
}

fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn missing_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect()
}

/// Installs the missing Debian packages with apt-get. Services that come with them (nginx,
/// sshd, vsftpd) are not started: the lab starts its own inside namespaces.
pub fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let hint = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "not a Debian system: install the equivalents of {} with your package manager (Debian: `{hint}`)",
            missing.join(", ")
        );
    }
    if !is_root() {
        bail!(
            "missing packages {}: run as root `{hint}`",
            missing.join(", ")
        );
    }
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    let _no_start = NoDaemonStart::new()?;
    // A fresh machine may have no package lists yet.
    if !try_run(apt().args(["update", "-q"]))? {
        bail!("apt-get update failed (no network?): run `{hint}` once the package mirror is reachable");
    }
    if !try_run(
        apt()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )? {
        bail!("apt-get install failed: run `{hint}`");
    }
    Ok(())
}

/// bpf-linker, built against LLVM 22.
fn bpf_linker() -> anyhow::Result<()> {
    if quiet_ok(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let hint = format!(
        "PATH={LLVM_BIN}:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22"
    );
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        bail!("LLVM 22 is not installed at {LLVM_BIN}: install llvm-22-dev, then run `{hint}`");
    }
    let install = |locked: bool| -> anyhow::Result<bool> {
        let mut c = Command::new("cargo");
        c.env("PATH", &path).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
        if locked {
            c.arg("--locked");
        }
        try_run(&mut c)
    };
    // --locked reproduces the release's own lockfile; without it as a fallback.
    if !(install(true)? || install(false)?) {
        bail!("building bpf-linker failed: run `{hint}`");
    }
    if !quiet_ok(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// cargo-deb at [`CARGO_DEB_VERSION`], installed when missing or at another version.
fn cargo_deb() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if installed == format!("cargo-deb {CARGO_DEB_VERSION}") {
        return Ok(());
    }
    let hint = format!("cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}");
    if !try_run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))? {
        bail!("installing cargo-deb failed: run `{hint}`");
    }
    Ok(())
}

/// [`TEST_VENV`] with pyarrow [`PYARROW_VERSION`]: created when missing (python3-venv from
/// Debian first), pyarrow installed when missing or at another version.
fn test_venv() -> anyhow::Result<()> {
    let python = Path::new(TEST_VENV).join("bin/python3");
    let installed = Command::new(&python)
        .args(["-c", "import pyarrow; print(pyarrow.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if installed == PYARROW_VERSION {
        return Ok(());
    }
    let hint = format!(
        "apt-get install -y python3-venv && /usr/bin/python3 -m venv {TEST_VENV} && \
         {} -m pip install pyarrow=={PYARROW_VERSION}",
        python.display()
    );
    if !python.exists() {
        debian_packages(&["python3", "python3-venv"])?;
        if !try_run(Command::new("/usr/bin/python3").args(["-m", "venv", TEST_VENV]))? {
            bail!("creating the tests' Python environment failed: run `{hint}`");
        }
    }
    let pin = format!("pyarrow=={PYARROW_VERSION}");
    if !try_run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        &pin,
    ]))? {
        bail!("installing pyarrow failed (no network?): run `{hint}`");
    }
    Ok(())
}

/// Mounts tracefs where aya and the agent look for it.
fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    let hint = "mount -t tracefs nodev /sys/kernel/tracing";
    if !is_root() {
        bail!("tracefs is not mounted: run as root `{hint}`");
    }
    if !try_run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))? {
        bail!("mounting tracefs failed: run `{hint}`");
    }
    Ok(())
}

/// Stops daemons from starting when their packages are installed (nginx, sshd, vsftpd would
/// otherwise listen in the root namespace): Debian's policy-rc.d, present for the install only.
struct NoDaemonStart(Option<PathBuf>);

impl NoDaemonStart {
    fn new() -> anyhow::Result<Self> {
        let p = Path::new("/usr/sbin/policy-rc.d");
        if p.exists() {
            return Ok(Self(None));
        }
        fs::write(
            p,
            "#!/bin/sh\n# written by cargo xtask setup during apt-get install\nexit 101\n",
        )
        .with_context(|| format!("cannot write {}", p.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(p.to_path_buf())))
    }
}

impl Drop for NoDaemonStart {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

//! `cargo xtask dist` builds, with cargo-deb, a Debian package that lintian finds no error in:
//! its Depends computed by dpkg-shlibdeps, md5sums of every file but the conffile, the
//! configuration as a conffile; the binary is the daemon without the developer's trainer and
//! accepts the packaged configuration, systemd accepts the unit. Installed on this machine, the
//! unit is neither enabled nor started; removed, the binary and the unit go and the
//! configuration and the state directory stay; purged, the configuration goes too. The machine
//! is left as it was found, and an agent already running on it is not disturbed.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use integration_tests::{require_root, unique};

const BIN: &str = "/usr/bin/detector";
const UNIT: &str = "/usr/lib/systemd/system/detector.service";
const CONFIG: &str = "/etc/detector/detector.toml";
/// The agent's state (packaging/detector.service: StateDirectory=detector).
const STATE: &str = "/var/lib/detector";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
#[ignore = "needs root (dpkg -i on this machine): run `cargo xtask test`"]
fn the_deb_passes_lintian_installs_removes_and_purges() {
    require_root();
    preflight();
    let deb = build();
    lintian(&deb);
    let unpacked = std::env::temp_dir().join(unique("dt-deb"));
    run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&unpacked));
    control_fields(&deb, &unpacked);
    md5sums_and_conffiles(&unpacked);
    packaged_files(&unpacked);
    fs::remove_dir_all(&unpacked).unwrap();
    install_remove_purge(&deb);
}

/// The tools come from `cargo xtask setup --test-tools` (a test installs nothing), and nothing
/// of a detector installed by other means may be here: the package would replace it, and its
/// removal would stop or delete it. The package's scripts act on detector.service alone, so an
/// agent run otherwise (the lab's, other tests', a developer's) is not touched.
fn preflight() {
    let tool = |name: &str, cmd: &mut Command| {
        let ok = cmd.output().is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{name} is missing: run `cargo xtask setup --test-tools` as root first"
        );
    };
    tool(
        "cargo-deb",
        Command::new(env!("CARGO")).args(["deb", "--version"]),
    );
    tool("lintian", Command::new("lintian").arg("--version"));
    tool("dpkg-dev", Command::new("dpkg-shlibdeps").arg("--version"));
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "detector"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        !status.contains("installed") && !status.contains("config-files"),
        "refusing to run: a detector package is on this machine ({status}); the test would replace it"
    );
    for p in [
        BIN,
        UNIT,
        "/lib/systemd/system/detector.service",
        "/etc/systemd/system/detector.service",
        "/etc/detector",
    ] {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "refusing to run: {p} exists; installing and purging the package would replace or remove it"
        );
    }
    if Path::new("/run/systemd/system").is_dir() {
        assert_ne!(
            unit_state("is-active"),
            "active",
            "refusing to run: detector.service runs; removing the package would stop it"
        );
    }
}

/// `systemctl <query> detector.service` (is-enabled works without a running systemd too).
fn unit_state(query: &str) -> String {
    let out = Command::new("systemctl")
        .args([query, "detector.service"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether a process runs the installed binary.
fn installed_binary_runs() -> bool {
    fs::read_dir("/proc").unwrap().any(|e| {
        e.ok()
            .and_then(|e| fs::read_link(e.path().join("exe")).ok())
            .is_some_and(|exe| exe == Path::new(BIN))
    })
}

/// `cargo xtask dist --debug`; the package's path is the last line it prints.
fn build() -> PathBuf {
    let out = run(Command::new(env!("CARGO"))
        .current_dir(root_dir())
        .args(["run", "-q", "-p", "xtask", "--", "dist", "--debug"]));
    let deb = PathBuf::from(out.lines().last().expect("dist printed the package's path"));
    assert!(deb.is_file(), "{} was not written", deb.display());
    deb
}

/// No error tag; the rest is printed (the overrides in packaging/debian/lintian-overrides say
/// why they are there).
fn lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args([
            "--tag-display-limit",
            "0",
            "--display-info",
            "--show-overrides",
        ])
        .arg(deb)
        .output()
        .expect("run lintian");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian {}:\n{text}", deb.display());
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(
        out.status.success(),
        "lintian failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Version from the crate and the changelog's first entry; Depends exactly what dpkg-shlibdeps
/// computes for the packaged binary (less libgcc, which cargo-deb leaves out: always there).
fn control_fields(deb: &Path, unpacked: &Path) {
    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    assert_eq!(field("Package").trim(), "detector");
    let version = field("Version").trim().to_owned();
    assert!(
        version.starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))),
        "Version {version}: not the crate's version with a Debian revision"
    );
    let changelog = fs::read_to_string(root_dir().join("packaging/debian/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("detector ({version}) ")),
        "packaging/debian/changelog's first entry is not for {version}"
    );
    let depends: BTreeSet<String> = field("Depends")
        .split(',')
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect();
    let computed = shlibdeps(&unpacked.join("usr/bin/detector"));
    assert_eq!(
        depends, computed,
        "Depends is not what dpkg-shlibdeps computes"
    );
    assert!(
        depends.iter().any(|d| d.starts_with("libc6 (>= ")),
        "no libc6 in Depends: {depends:?}"
    );
    eprintln!("Depends: {}", field("Depends").trim());
}

fn shlibdeps(bin: &Path) -> BTreeSet<String> {
    let dir = std::env::temp_dir().join(unique("dt-shl"));
    fs::create_dir_all(dir.join("debian")).unwrap();
    fs::write(dir.join("debian/control"), "").unwrap();
    let out = run(Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(bin)
        .current_dir(&dir));
    fs::remove_dir_all(&dir).unwrap();
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .unwrap_or_else(|| panic!("dpkg-shlibdeps printed no shlibs:Depends: {out}"));
    line.split(',')
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty() && !d.starts_with("libgcc"))
        .collect()
}

/// md5sums lists every regular file but the conffile, with the right sums; conffiles lists the
/// configuration.
fn md5sums_and_conffiles(unpacked: &Path) {
    let conffiles = fs::read_to_string(unpacked.join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), CONFIG);
    let sums = fs::read_to_string(unpacked.join("DEBIAN/md5sums")).expect("DEBIAN/md5sums");
    let listed: BTreeSet<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").expect("md5sums: `<sum>  <path>`").1)
        .collect();
    let mut files = BTreeSet::new();
    regular_files(unpacked, unpacked, &mut files);
    files.retain(|f| !f.starts_with("DEBIAN/") && format!("/{f}") != CONFIG);
    assert_eq!(
        listed,
        files.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "md5sums does not list exactly the package's files but the conffile"
    );
    run(Command::new("md5sum")
        .args(["--check", "--quiet", "DEBIAN/md5sums"])
        .current_dir(unpacked));
}

fn regular_files(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            regular_files(base, &e.path(), out);
        } else if kind.is_file() {
            let rel = e.path().strip_prefix(base).unwrap().to_owned();
            out.insert(rel.to_str().unwrap().to_owned());
        }
    }
}

/// The daemon without the trainer, accepting the packaged configuration; a unit systemd accepts.
fn packaged_files(unpacked: &Path) {
    let bin = unpacked.join("usr/bin/detector");
    run(Command::new(&bin)
        .args(["config", "--check"])
        .arg(unpacked.join("etc/detector/detector.toml")));
    for cmd in ["train", "eval", "eval-offlab", "dataset", "adapt"] {
        let out = Command::new(&bin).args([cmd, "--help"]).output().unwrap();
        assert!(
            !out.status.success(),
            "the packaged binary has `{cmd}`: it was built with the trainer"
        );
    }
    run(Command::new(&bin).args(["replay", "--help"]));
    // systemd accepts the unit (pointing it at the unpacked binary).
    let unit =
        fs::read_to_string(unpacked.join("usr/lib/systemd/system/detector.service")).unwrap();
    let check = unpacked.join("check");
    fs::create_dir_all(&check).unwrap();
    fs::write(
        check.join("detector.service"),
        unit.replace(BIN, bin.to_str().unwrap()),
    )
    .unwrap();
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(check.join("detector.service")));
}

/// Purges the package when dropped (the test failed or not) and removes the state directory
/// if the test made it.
struct Installed {
    made_state: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "detector"]).output();
        if self.made_state {
            let _ = fs::remove_dir_all(STATE);
        }
    }
}

fn dpkg(args: &[&str]) -> String {
    run(Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn package_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "detector"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn install_remove_purge(deb: &Path) {
    // The agent's state, as a running agent leaves it; an existing one is only looked at.
    let made_state = !Path::new(STATE).exists();
    let guard = Installed { made_state };
    if made_state {
        fs::create_dir_all(STATE).unwrap();
        fs::write(Path::new(STATE).join("packaging-test"), "state\n").unwrap();
    }
    let state = listing(Path::new(STATE));

    let out = dpkg(&["--install", deb.to_str().unwrap()]);
    assert!(
        out.contains("systemctl enable --now detector"),
        "postinst did not tell how to start the agent:\n{out}"
    );
    installed();
    // Installed again (dpkg's upgrade path): the operator's edit of the conffile stays, and so
    // does the unit's state.
    let edited = format!(
        "{}# the operator's edit\n",
        fs::read_to_string(CONFIG).unwrap()
    );
    fs::write(CONFIG, &edited).unwrap();
    dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(CONFIG).unwrap(), edited);
    assert_eq!(unit_state("is-enabled"), "disabled");

    let out = dpkg(&["--remove", "detector"]);
    assert_eq!(package_status(), "deinstall ok config-files", "{out}");
    for p in [BIN, UNIT] {
        assert!(!Path::new(p).exists(), "{p} is still there after dpkg -r");
    }
    assert!(Path::new(CONFIG).is_file(), "dpkg -r removed {CONFIG}");
    kept(Path::new(STATE), &state, "dpkg -r");

    let out = dpkg(&["--purge", "detector"]);
    purged(&out);
    kept(Path::new(STATE), &state, "dpkg -P");
    drop(guard);
}

/// After `dpkg -P`: no trace of the package, the configuration and what deb-systemd-helper
/// kept of the unit (its mask on remove, its records) included; postrm named the agent's data
/// it leaves.
fn purged(out: &str) {
    let status = package_status();
    assert!(
        !status.contains("installed") && !status.contains("config-files"),
        "dpkg -P left the package as {status}"
    );
    assert!(
        !Path::new("/etc/detector").exists(),
        "dpkg -P left /etc/detector"
    );
    assert!(
        out.contains(&format!("kept {STATE}")),
        "postrm said nothing of {STATE}:\n{out}"
    );
    let mut left = Vec::new();
    for dir in [
        "/etc/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ] {
        named_detector(Path::new(dir), &mut left);
    }
    assert!(left.is_empty(), "dpkg -P left {left:?}");
}

/// Paths under `dir` (any kind, links included) whose name holds "detector".
fn named_detector(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().contains("detector") {
            out.push(e.path());
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            named_detector(&e.path(), out);
        }
    }
}

/// What `dpkg -i` put on the machine: the binary, the unit (disabled, inactive), the
/// configuration (root's only), all matching the package's md5sums.
fn installed() {
    let mode = |p: &str| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(BIN), 0o755);
    run(Command::new(BIN).args(["config", "--check", CONFIG]));
    assert_eq!(
        fs::read_to_string(UNIT).unwrap(),
        fs::read_to_string(root_dir().join("packaging/detector.service")).unwrap()
    );
    assert_eq!(mode(CONFIG), 0o600);
    assert_eq!(
        fs::read_to_string(CONFIG).unwrap(),
        fs::read_to_string(root_dir().join("packaging/detector.toml")).unwrap()
    );
    assert_eq!(
        unit_state("is-enabled"),
        "disabled",
        "the unit is not installed disabled"
    );
    if Path::new("/run/systemd/system").is_dir() {
        assert_eq!(unit_state("is-active"), "inactive");
    }
    assert!(!installed_binary_runs(), "{BIN} was started on install");
    // Every installed file matches the package's md5sums.
    let verify = dpkg(&["--verify", "detector"]);
    assert!(verify.trim().is_empty(), "dpkg --verify:\n{verify}");
}

/// The files under a folder (none if it does not exist).
fn listing(dir: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    if dir.is_dir() {
        regular_files(dir, dir, &mut files);
    }
    files
}

/// Fails unless every file of `before` is still in `dir` (an agent may add its own meanwhile).
fn kept(dir: &Path, before: &BTreeSet<String>, after: &str) {
    assert!(dir.is_dir(), "{after} removed {}", dir.display());
    let now = listing(dir);
    let gone: Vec<_> = before.difference(&now).collect();
    assert!(
        gone.is_empty(),
        "{after} removed {gone:?} from {}",
        dir.display()
    );
}

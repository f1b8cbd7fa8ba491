//! `cargo xtask dist` builds a Debian package that installs the binary (the daemon, without the
//! developer's trainer), the systemd unit (which systemd accepts) and the default configuration
//! (a conffile the agent accepts).

use std::{path::Path, process::Command};

use integration_tests::unique;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_installs_binary_unit_and_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    run(Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["run", "-q", "-p", "xtask", "--", "dist", "--debug"]));
    let deb = root.join(format!(
        "target/dist/detector_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    let files = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/detector",
        "./lib/systemd/system/detector.service",
        "./etc/detector/detector.toml",
    ] {
        assert!(files.contains(f), "{f} missing from the package:\n{files}");
    }
    let conffiles = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Package"));
    assert_eq!(conffiles.trim(), "detector");
    let dir = std::env::temp_dir().join(unique("dt-deb"));
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir));
    let ctl = dir.join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    assert_eq!(
        std::fs::read_to_string(ctl.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/detector/detector.toml"
    );
    // The packaged binary accepts the packaged configuration.
    let bin = dir.join("usr/bin/detector");
    run(Command::new(&bin)
        .args(["config", "--check"])
        .arg(dir.join("etc/detector/detector.toml")));
    // The daemon links no trainer: the developer's commands are not in it, replay is.
    for cmd in ["train", "eval", "eval-offlab", "dataset", "adapt"] {
        let out = Command::new(&bin).args([cmd, "--help"]).output().unwrap();
        assert!(
            !out.status.success(),
            "the packaged binary has `{cmd}`: it was built with the trainer"
        );
    }
    run(Command::new(&bin).args(["replay", "--help"]));
    // systemd accepts the unit (pointing it at the unpacked binary).
    let unit = std::fs::read_to_string(dir.join("lib/systemd/system/detector.service")).unwrap();
    let check = dir.join("check");
    std::fs::create_dir_all(&check).unwrap();
    std::fs::write(
        check.join("detector.service"),
        unit.replace("/usr/bin/detector", bin.to_str().unwrap()),
    )
    .unwrap();
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(check.join("detector.service")));
    std::fs::remove_dir_all(&dir).unwrap();
}

//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` for a bounded time each and fails,
//! naming the saved input, when one crashes (docs/fuzzing.md).
//!
//! New corpus entries go to `fuzz/runs/<target>/` (not committed); the committed seeds in
//! `fuzz/corpus/<target>/` are only read. libFuzzer writes a crashing input to
//! `fuzz/artifacts/<target>/`.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

use crate::{root, setup};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only this target (`cargo +nightly fuzz list` names them); default: every target.
    target: Option<String>,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    executions: Option<u64>,
    /// Crash, leak, timeout and out-of-memory inputs this run saved.
    crashes: Vec<PathBuf>,
    /// Non-zero exit without a saved input (a build failure, a killed fuzzer).
    failed: Option<String>,
}

fn cargo_nightly() -> Command {
    // Not $CARGO: that is the stable cargo running xtask; rustup's proxy picks the nightly.
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(root());
    c
}

/// Installs cargo-fuzz when `cargo +nightly fuzz` does not run.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let works = cargo_nightly()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    eprintln!("fuzz: cargo install cargo-fuzz --locked");
    let ok = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("cargo-fuzz is missing and could not be installed: run `cargo install cargo-fuzz --locked`");
    }
    Ok(())
}

fn targets() -> anyhow::Result<Vec<String>> {
    let out = cargo_nightly()
        .args(["fuzz", "list"])
        .output()
        .context("cannot run `cargo +nightly fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo +nightly fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Files in `dir` (none when it does not exist).
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Fuzzes one target for `seconds`, echoing libFuzzer's output.
fn fuzz_one(target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let fuzz = root().join("fuzz");
    let runs = fuzz.join("runs").join(target);
    fs::create_dir_all(&runs).with_context(|| format!("cannot create {}", runs.display()))?;
    let artifacts = fuzz.join("artifacts").join(target);
    let before = files(&artifacts);
    eprintln!("fuzz: {target} for {seconds} s");
    let mut child = cargo_nightly()
        .args(["fuzz", "run", target])
        .arg(&runs)
        .arg(fuzz.join("corpus").join(target))
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            // An input that takes this long is a hang, saved as timeout-*.
            "-timeout=10",
            "-print_final_stats=1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start `cargo +nightly fuzz run`")?;
    let mut executions = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse().ok();
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let crashes: Vec<PathBuf> = files(&artifacts)
        .difference(&before)
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !name.starts_with("slow-unit-")
        })
        .cloned()
        .collect();
    let failed = (!status.success() && crashes.is_empty()).then(|| status.to_string());
    Ok(Outcome {
        target: target.to_string(),
        executions,
        crashes,
        failed,
    })
}

/// Runs `cargo xtask fuzz`.
pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    // The targets link the agent library, whose build script needs bpf-linker.
    setup::all(false)?;
    ensure_cargo_fuzz()?;
    let all = targets()?;
    let chosen: Vec<String> = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target `{t}`; the targets are: {}", all.join(", ")),
        None => all,
    };
    let mut outcomes = Vec::new();
    for t in &chosen {
        outcomes.push(fuzz_one(t, args.seconds)?);
    }
    eprintln!("\nfuzz: {} s per target", args.seconds);
    let mut bad = 0;
    for o in &outcomes {
        let runs = o
            .executions
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        if !o.crashes.is_empty() {
            bad += 1;
            eprintln!("  {:<22} {runs:>12} executions  CRASHED", o.target);
            for c in &o.crashes {
                eprintln!(
                    "      input saved at {}\n      reproduce: cargo +nightly fuzz run {} {}\n      \
                     once fixed, keep it: copy it to fuzz/regressions/{}/",
                    c.display(),
                    o.target,
                    c.display(),
                    o.target
                );
            }
        } else if let Some(why) = &o.failed {
            bad += 1;
            eprintln!("  {:<22} {runs:>12} executions  FAILED ({why})", o.target);
        } else {
            eprintln!("  {:<22} {runs:>12} executions  ok", o.target);
        }
    }
    if bad > 0 {
        bail!(
            "{bad} of {} fuzz targets failed (see above)",
            outcomes.len()
        );
    }
    Ok(())
}

//! Developer tasks: `cargo xtask setup | run | test`.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for the detector workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running need (idempotent): nightly rust-src, LLVM 22,
    /// bpf-linker, and mount tracefs. With --test-tools, also the packages the tests use.
    Setup {
        #[arg(long)]
        test_tools: bool,
    },
    /// Set up, build the agent in release mode and run it (as root) with the embedded model and
    /// config. Arguments after `--` go to `detector run` (see `detector run --help`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up (with test tools), check formatting and lints, and run every test: unit tests and
    /// the root-only integration tests (real eBPF programs, network namespaces, real traffic).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
    },
}

/// The workspace root (the parent of xtask/).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing with the command line if it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup { test_tools } => setup::all(test_tools),
        Task::Run { args } => {
            setup::all(false)?;
            run(cargo().args(["build", "--release", "-p", "detector"]))?;
            let bin = root().join("target/release/detector");
            let mut cmd = Command::new(bin);
            cmd.arg("run").args(args);
            // Hand over the terminal: SIGINT from Ctrl-C reaches the agent directly.
            let status = cmd.status().context("cannot start the agent")?;
            if !status.success() {
                bail!("the agent exited with {status}");
            }
            Ok(())
        }
        Task::Test { filter, no_lint } => {
            setup::all(true)?;
            if !no_lint {
                run(cargo().args(["fmt", "--all", "--check"]))?;
                run(cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))?;
            }
            run(cargo().args(["build", "-p", "detector"]))?;
            let mut test = cargo();
            test.args(["test", "--workspace"])
                .env("DETECTOR_BIN", root().join("target/debug/detector"));
            if let Some(f) = filter {
                test.args(["--", &f]);
            }
            run(&mut test)
        }
    }
}

fn main() -> ExitCode {
    match task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

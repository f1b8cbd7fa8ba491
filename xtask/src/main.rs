//! Developer tasks: `cargo xtask setup | run | test | lab | train-default | eval | eval-offlab |
//! fuzz | bench | dist | check-cuda`.

mod bench;
mod cuda;
mod dist;
mod fuzz;
mod lab;
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
    /// bpf-linker, and mount tracefs. With --test-tools, also the packages and tools the tests
    /// use (cargo-deb and lintian among them).
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
    /// The lab: real attack tools against real services in sealed network namespaces, recorded
    /// by the agent as labelled data (docs/lab.md). `--record` regenerates lab/recordings/default.
    Lab {
        #[command(flatten)]
        args: lab::LabArgs,
    },
    /// Meta-train the embedded default model (detector/models/default.safetensors) from the data
    /// committed in the repo (docs/model.md), with a fixed seed.
    TrainDefault {
        /// Leave this family out (repeatable): the few-shot tests' models.
        #[arg(long = "holdout-family", value_name = "F")]
        holdout: Vec<String>,
        /// Where to write the model (default: the embedded default model's file).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Build the Debian package (binary, systemd unit, default configuration) with cargo-deb
    /// into target/dist, installing cargo-deb and dpkg-dev if missing; prints its path.
    Dist {
        /// Package the debug build (fast; for tests) instead of a release build.
        #[arg(long)]
        debug: bool,
    },
    /// Run each cargo-fuzz target in fuzz/ for a bounded time (installs cargo-fuzz if missing);
    /// fails, naming the saved input, when one crashes (docs/fuzzing.md).
    Fuzz {
        #[command(flatten)]
        args: fuzz::FuzzArgs,
    },
    /// Detection quality by the protocol of ../shared/EVALUATION.md on the committed data
    /// (NSL-KDD and the lab recording): rewrites EVALUATION.md and docs/eval/ (about 30 min on
    /// two cores). Extra arguments go to `detector eval` (e.g. `-- --draws 10` for a quick look).
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Off the lab (../shared/EVALUATION.md): the embedded model over captures of networks it
    /// never saw (the nDPI dev split, the shared corpus) and the lab recording's test split, out
    /// of the box and after a warm-up; rewrites EVALUATION.md's "Off the lab" section (about a
    /// minute). Extra arguments go to `detector eval-offlab`.
    EvalOfflab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Speed benchmarks against their baselines (root): XDP per-packet cost, ring buffer to
    /// score, scoring, end to end under flood, adaptation latency (BENCHMARKS.md).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Type-check the CUDA build (`--features cuda`) without a GPU: installs NVIDIA's CUDA 13
    /// compiler and headers from PyPI into target/cuda, then compiles candle's kernels and our
    /// code (~10 min the first time). Links and runs nothing: that needs a GPU and its driver.
    CheckCuda,
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
        Task::Lab { args } => lab::run(args),
        Task::TrainDefault { holdout, out } => train_default(&holdout, out),
        Task::Dist { debug } => dist::deb(debug).map(|_| ()),
        Task::Fuzz { args } => fuzz::run(args),
        Task::Bench { args } => bench::run(args),
        Task::CheckCuda => cuda::check(),
        Task::Eval { extra } => eval(&extra),
        Task::EvalOfflab { extra } => eval_offlab(&extra),
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
                // The daemon the .deb installs: without the trainer.
                run(cargo().args([
                    "clippy",
                    "-p",
                    "detector",
                    "--no-default-features",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))?;
            }
            run(cargo().args(["build", "-p", "detector"]))?;
            // --no-fail-fast: one failing test must not hide the results of the others.
            // --include-ignored: the root-only tests, which plain `cargo test` skips.
            let tests = |args: &[&str], extra: &[&str]| {
                let mut test = cargo();
                test.arg("test")
                    .args(args)
                    .args(["--no-fail-fast", "--", "--include-ignored"])
                    .args(extra)
                    .env("DETECTOR_BIN", root().join("target/debug/detector"));
                if let Some(f) = &filter {
                    test.arg(f);
                }
                run(&mut test)
            };
            // Unit tests, in parallel.
            let unit = tests(&["--workspace", "--exclude", "integration-tests"], &[]);
            // The integration tests (one binary), one at a time: they share the machine with
            // floods, tcpreplay at full speed and timed replays, which disturb each other.
            // bus_scale is a benchmark (1,000 simulated fleet agents, a release build to mean
            // anything): run by name, never in the suite.
            let integration = tests(
                &["-p", "integration-tests"],
                &["--test-threads=1", "--skip", "bus_scale::"],
            );
            unit.and(integration)
        }
    }
}

/// The shared folder beside the checkout (corpus, docs): $DETECTOR_SHARED_DIR or ../shared.
fn shared_dir() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("DETECTOR_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    if !p.join("corpus").is_dir() {
        bail!(
            "{} has no corpus/: set DETECTOR_SHARED_DIR to the folder that holds it",
            p.display()
        );
    }
    Ok(p)
}

/// Meta-trains the embedded default model from a fixed seed, on one thread (same machine, same
/// file), from:
/// - NSL-KDD (detector/models/data), its own feature set;
/// - the live feature set (flow features + context, every record as the agent scores it): the
///   lab recording's attacks and benign sessions, its test split left out (`--sessions train`:
///   what `detector eval-offlab` scores), and benign traffic of many real networks, the train
///   split of ../shared/corpus/offlab/ndpi (its dev split is never trained on).
fn train_default(holdout: &[String], out: Option<PathBuf>) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "-p", "detector"]))?;
    let bin = root().join("target/release/detector");
    let work = root().join("target/train-default");
    std::fs::create_dir_all(&work)?;
    let live = work.join("live.dds");
    run(Command::new(&bin)
        // Unattributed records are the lab's own housekeeping (neighbour discovery, MLD):
        // benign, and a model that never saw them flags them as new.
        .args([
            "dataset",
            "from-flows",
            "--rows",
            "all",
            "--keep-unattributed",
            "--sessions",
            "train",
        ])
        .arg(root().join("lab/recordings/default/records.jsonl.zst"))
        .arg("--out")
        .arg(&live))?;
    run(Command::new(&bin)
        .args(["dataset", "from-captures", "--label", "benign", "--append"])
        .arg("--manifest")
        .arg(shared_dir()?.join("corpus/offlab/ndpi/MANIFEST.tsv"))
        .args(["--split", "train", "--out"])
        .arg(&live))?;
    let out = out.unwrap_or_else(|| root().join("detector/models/default.safetensors"));
    let mut train = Command::new(&bin);
    train
        .args(["train", "--data"])
        .arg(root().join("detector/models/data/nsl-kdd-test.dds"))
        .arg(&live)
        // Two benign sources, many small sessions: more benign rows per episode (64 by
        // default) so that each support set holds some of both.
        .args(["--seed", "1", "--benign-shot", "128"])
        // The off-lab budget is per 1,000 benign *flows*, and the agent scores a flow about
        // 3.7 times (new, reply, early, final records: 124,324 records of 33,333 flows in the
        // lab recording), so a per-row rate of 1e-3 (the default) lets up to ~3.7 per 1,000
        // flows alert on validation; 3e-4 puts it near 1 per 1,000 flows.
        .args(["--target-fpr", "3e-4", "--out"])
        .arg(&out)
        .env("RAYON_NUM_THREADS", "1");
    for f in holdout {
        train.args(["--holdout-family", f]);
    }
    run(&mut train)
}

/// `cargo xtask eval-offlab`: `detector eval-offlab` on the nDPI dev split, the shared corpus
/// and the lab recording's test split, with the embedded model; its report replaces the "Off
/// the lab" section of EVALUATION.md (JSON in docs/eval/offlab.json). Then the few-shot runs
/// (`--few-shot 5`, at the default false-alert budget and at 0.01) replace theirs.
fn eval_offlab(extra: &[String]) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "-p", "detector"]))?;
    let shared = shared_dir()?;
    let detector = || {
        let mut c = Command::new(root().join("target/release/detector"));
        c.current_dir(root())
            .arg("eval-offlab")
            .arg("--ndpi")
            .arg(shared.join("corpus/offlab/ndpi"))
            .arg("--corpus")
            .arg(shared.join("corpus"));
        c
    };
    let md = root().join("target/offlab.md");
    run(detector()
        .arg("--lab")
        .arg("lab/recordings/default/records.jsonl.zst")
        .args(["--json", "docs/eval/offlab.json", "--markdown"])
        .arg(&md)
        .args(extra))?;
    replace_report("offlab", &std::fs::read_to_string(&md)?)?;
    // A budget ten times the default: what an operator who accepts more false alerts per
    // incident would get.
    let budget = root().join("target/offlab-budget-0.01.toml");
    std::fs::write(&budget, "[adaptation]\nfpr_budget = 0.01\n")?;
    for (name, config) in [
        ("offlab-fewshot", None),
        ("offlab-fewshot-0.01", Some(&budget)),
    ] {
        let mut c = detector();
        c.args(["--few-shot", "5", "--json"])
            .arg(format!("docs/eval/{name}.json"))
            .arg("--markdown")
            .arg(&md);
        if let Some(p) = config {
            c.arg("--config").arg(p);
        }
        run(c.args(extra))?;
        replace_report(name, &std::fs::read_to_string(&md)?)?;
    }
    Ok(())
}

/// Replaces the text between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in
/// EVALUATION.md with `report`.
fn replace_report(name: &str, report: &str) -> anyhow::Result<()> {
    let path = root().join("EVALUATION.md");
    let text = std::fs::read_to_string(&path)?;
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let (Some(a), Some(b)) = (text.find(&begin), text.find(&end)) else {
        bail!("EVALUATION.md has no {begin} … {end} markers for the report");
    };
    let updated = format!("{}{begin}\n{report}{}", &text[..a], &text[b..]);
    std::fs::write(&path, updated)?;
    eprintln!("xtask: EVALUATION.md {name} report rewritten");
    Ok(())
}

/// `cargo xtask eval`: `detector eval` over the datasets committed in the repo, one held-out
/// family per thread (results do not depend on the thread count).
fn eval(extra: &[String]) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "-p", "detector"]))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    run(Command::new(root().join("target/release/detector"))
        .current_dir(root())
        .args(["eval", "--data"])
        .arg("detector/models/data/nsl-kdd-test.dds")
        .arg("lab/recordings/default/flows.dds")
        .args(["--threads", &threads.to_string()])
        .args(extra)
        .env("RAYON_NUM_THREADS", "1"))
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

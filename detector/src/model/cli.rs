//! `detector train` and `detector adapt`: command-line wrappers over [`super::train()`] and
//! [`super::adapt()`].

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    adapt::{adapt, AdaptConfig, Trainable},
    episodes::TaskBy,
    train::{train as train_model, Algo, TrainConfig},
    Arch, Model, Rows,
};
use crate::dataset::Dataset;

/// Meta-train a flow-scoring model on labelled datasets: episodic tasks, each one attack family
/// (or type) against benign rows, support and query from different sessions.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Dataset files (from `detector dataset import`); any mix of feature sets.
    #[arg(long = "data", value_name = "FILE", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Where to write the model (safetensors).
    #[arg(short, long, value_name = "MODEL")]
    pub out: PathBuf,
    /// Meta-learning algorithm (`supervised`: no episodes, the conventional baseline).
    #[arg(long, value_enum, default_value_t = Algo::Reptile)]
    pub algo: Algo,
    /// Inner-loop SGD steps (also the model's default for adaptation).
    #[arg(long, default_value_t = 10)]
    pub inner_steps: usize,
    /// Inner-loop SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub inner_lr: f32,
    /// Outer step: Reptile's ε, annealed to 0 (default 1.0), or Adam's rate (default 0.001).
    #[arg(long)]
    pub meta_lr: Option<f32>,
    /// Tasks per outer update.
    #[arg(long, default_value_t = 4)]
    pub meta_batch: usize,
    /// Outer updates.
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Largest K: each episode has 1..=K attack rows in its support.
    #[arg(long, default_value_t = 10)]
    pub k_shot: usize,
    /// Benign rows in each support set.
    #[arg(long, default_value_t = 64)]
    pub benign_shot: usize,
    /// Attack rows and benign rows (each) in each query set.
    #[arg(long, default_value_t = 64)]
    pub query: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Leave this family out of training (repeatable).
    #[arg(long = "holdout-family", value_name = "F")]
    pub holdout_family: Vec<String>,
    /// What a task's positive class is.
    #[arg(long, value_enum, default_value_t = TaskBy::Family)]
    pub task_by: TaskBy,
    /// Fraction of each family's sessions kept for validation (calibration, threshold).
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Measure validation ROC-AUC every this many iterations.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Widths of the input layer's output and the encoder layers (multiples of 16).
    #[arg(long, value_delimiter = ',', default_value = "64,64,32")]
    pub hidden: Vec<usize>,
    /// The alert threshold keeps validation benign false alerts at or below this rate.
    #[arg(long, default_value_t = 1e-3)]
    pub target_fpr: f64,
    /// Novelty reaches the alert threshold at this quantile of the benign distances.
    #[arg(long, default_value_t = 0.999)]
    pub novelty_quantile: f32,
    /// Alert only on flows that are attack-like (probability) and unusual (novelty against
    /// the benign prototypes); without it either part alone alerts.
    #[arg(long)]
    pub require_novelty: bool,
    /// Add an untrained input layer for this feature set although no data has it
    /// (`detector-flow-v1`, `detector-flowctx-v1`), so the agent can use the model and adapt it
    /// later.
    #[arg(long = "add-feature-set", value_name = "NAME")]
    pub add_feature_set: Vec<String>,
}

impl TrainArgs {
    /// The library configuration these options describe.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            algo: self.algo,
            iterations: self.iterations,
            meta_batch: self.meta_batch,
            inner_steps: self.inner_steps,
            inner_lr: self.inner_lr,
            meta_lr: self.meta_lr,
            k_shot: self.k_shot,
            benign_shot: self.benign_shot,
            query: self.query,
            seed: self.seed,
            holdout_families: self.holdout_family.clone(),
            task_by: self.task_by,
            val_fraction: self.val_fraction,
            eval_every: self.eval_every,
            arch: Arch {
                hidden: self.hidden.clone(),
            },
            target_fpr: self.target_fpr,
            novelty_quantile: self.novelty_quantile,
            require_novelty: self.require_novelty,
            extra_feature_sets: self.add_feature_set.clone(),
        }
    }
}

/// Runs `detector train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let mut datasets = Vec::new();
    for p in &args.data {
        let ds = Dataset::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        eprintln!(
            "{}: feature set {}, {} rows",
            p.display(),
            ds.source,
            ds.rows()
        );
        datasets.push(ds);
    }
    let cfg = args.config();
    let bar = ProgressBar::new(cfg.iterations as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last_auc = None;
    let refs: Vec<&Dataset> = datasets.iter().collect();
    let (mut model, report) = train_model(&refs, &cfg, &mut |p| {
        if p.val_auc.is_some() {
            last_auc = p.val_auc;
        }
        bar.set_position(p.iteration as u64);
        bar.set_message(match last_auc {
            Some(a) => format!("loss {:.4}  val AUC {a:.4}", p.loss),
            None => format!("loss {:.4}", p.loss),
        });
    })
    .context("training failed")?;
    bar.finish();
    for (d, p) in model.info.data.iter_mut().zip(&args.data) {
        d.file = p.display().to_string();
    }
    model
        .save(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} ({:.1} s): {} tasks{}",
        args.out.display(),
        report.seconds,
        report.tasks.len(),
        if report.skipped_tasks.is_empty() {
            String::new()
        } else {
            format!(
                "; skipped (too few sessions): {}",
                report.skipped_tasks.join(", ")
            )
        }
    );
    for (name, l) in &model.inputs {
        if l.trained {
            println!(
                "{name}: calibration a = {:.4}, b = {:.4}; alert threshold {:.4}; novelty weight {:.4}",
                l.calibration.a, l.calibration.b, l.rule.alert_threshold, l.rule.novelty_weight
            );
        }
    }
    for (k, v) in &report.metrics {
        println!("  {k:<40} {v:.4}");
    }
    for (name, l) in &model.inputs {
        if !l.trained {
            println!("  input layer `{name}` has no training data: untrained until adapted");
        }
    }
    Ok(())
}

/// Adapt a model to a confirmed incident: K attack rows of one family plus benign rows of the
/// host; refused if the held-back benign false-alert rate would rise beyond the budget.
#[derive(clap::Args, Debug)]
pub struct AdaptArgs {
    /// The model to adapt (default: the embedded default model).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Dataset with the incident's attack rows (label 1), and benign rows unless --benign.
    #[arg(long, value_name = "FILE")]
    pub support: PathBuf,
    /// Where to write the adapted model.
    #[arg(short, long, value_name = "MODEL")]
    pub out: PathBuf,
    /// Use only attack rows of this family.
    #[arg(long, value_name = "F")]
    pub family: Option<String>,
    /// Use at most this many attack rows (drawn with --seed).
    #[arg(long, value_name = "K")]
    pub k: Option<usize>,
    /// Dataset of the host's benign rows (default: the support file's benign rows).
    #[arg(long, value_name = "FILE")]
    pub benign: Option<PathBuf>,
    /// Largest allowed rise of the held-back benign false-alert rate.
    #[arg(long, default_value_t = 1e-3)]
    pub fpr_budget: f64,
    /// Fraction of benign rows held back for the check.
    #[arg(long, default_value_t = 0.5)]
    pub holdout_fraction: f64,
    /// At most this many benign rows (not held back) go into the inner loop.
    #[arg(long, default_value_t = 256)]
    pub max_benign: usize,
    /// Inner-loop steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Inner-loop learning rate (default: the model's).
    #[arg(long)]
    pub lr: Option<f32>,
    /// What may change.
    #[arg(long, value_enum, default_value_t = Trainable::All)]
    pub trainable: Trainable,
    /// Seed for the benign split, the K draw and the prototypes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs `detector adapt`.
pub fn adapt_cmd(args: AdaptArgs) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(p) => Model::load(p)?,
        None => super::default_model()?,
    };
    let support = Dataset::read(&args.support)
        .with_context(|| format!("cannot read {}", args.support.display()))?;
    let benign_ds = match &args.benign {
        Some(p) => Some(Dataset::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let mut pos: Vec<usize> = (0..support.rows())
        .filter(|&i| support.label[i] == 1)
        .filter(|&i| {
            args.family
                .as_deref()
                .is_none_or(|f| support.family_of(i) == f)
        })
        .collect();
    if let Some(k) = args.k {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(args.seed);
        pos = super::episodes::sample(&mut pos, k, &mut rng);
    }
    let d = support.n_features();
    let pos_values = super::gather(&support.features, d, &pos);
    let bsrc = benign_ds.as_ref().unwrap_or(&support);
    let ben: Vec<usize> = (0..bsrc.rows()).filter(|&i| bsrc.label[i] == 0).collect();
    let ben_values = super::gather(&bsrc.features, bsrc.n_features(), &ben);
    let cfg = AdaptConfig {
        steps: args.steps,
        lr: args.lr,
        trainable: args.trainable,
        fpr_budget: args.fpr_budget,
        holdout_fraction: args.holdout_fraction,
        max_benign_train: args.max_benign,
        seed: args.seed,
        family: args.family.clone(),
        ..AdaptConfig::default()
    };
    let adapted = adapt(
        &model,
        &Rows::of(&support).with_values(&pos_values),
        &Rows::of(bsrc).with_values(&ben_values),
        &cfg,
    )?;
    adapted
        .model
        .save(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let r = &adapted.report;
    println!(
        "wrote {}: K = {}, {} benign rows trained on, {} held back; {} steps at lr {} in {:.0} ms",
        args.out.display(),
        r.k,
        r.benign_train,
        r.benign_holdout,
        r.steps,
        r.lr,
        r.seconds * 1e3
    );
    println!(
        "held-back benign false-alert rate {:.5} → {:.5} (budget +{}); support alerting {:.2} → {:.2}",
        r.fpr_before, r.fpr_after, args.fpr_budget, r.support_alert_before, r.support_alert_after
    );
    Ok(())
}

/// Evaluate the model by the protocol of EVALUATION.md: leave one family out, adapt from K
/// confirmed attack rows over many support draws (support and query from different
/// sessions), the five baselines on the same draws, int8 against f32, and the evasion check.
/// Writes a markdown summary, a JSON file with every number and SVG plots.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Dataset files (from `detector dataset import` or `dataset from-flows`); each is
    /// evaluated on its own.
    #[arg(long = "data", value_name = "FILE", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Hold out only these families (default: every attack family with two or more sessions).
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    pub families: Vec<String>,
    /// Support sizes K (0: no adaptation).
    #[arg(long = "k", value_delimiter = ',', default_value = "0,1,5,10")]
    pub k: Vec<usize>,
    /// Support draws per (family, K > 0).
    #[arg(long, default_value_t = 100)]
    pub draws: usize,
    /// Seed of every split, training run and draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the JSON files and plots go.
    #[arg(long, value_name = "DIR", default_value = "docs/eval")]
    pub out_dir: PathBuf,
    /// The markdown summary (its hand-written notes block is kept).
    #[arg(long, value_name = "FILE", default_value = "EVALUATION.md")]
    pub markdown: PathBuf,
    /// Meta-training iterations per held-out family (also the supervised baseline's steps).
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Meta-learning algorithm.
    #[arg(long, value_enum, default_value_t = Algo::Reptile)]
    pub algo: Algo,
    /// Share of benign sessions kept for the query (never trained on).
    #[arg(long, default_value_t = 0.5)]
    pub benign_query_fraction: f64,
    /// At most this many benign query rows are scored.
    #[arg(long, default_value_t = 20_000)]
    pub max_benign_query: usize,
    /// Benign rows given to each adaptation (the agent passes 2000).
    #[arg(long, default_value_t = 2000)]
    pub benign_support: usize,
    /// SGD steps of the from-scratch baseline.
    #[arg(long, default_value_t = 100)]
    pub scratch_steps: usize,
    /// SGD steps of last-layer fine-tuning.
    #[arg(long, default_value_t = 100)]
    pub head_steps: usize,
    /// Extra packets per packet when padding attack flows (evasion check).
    #[arg(long, default_value_t = 0.3)]
    pub pad_fraction: f64,
    /// Bootstrap resamples of each interval.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// Families evaluated at once (results do not depend on it).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl EvalArgs {
    /// The library configuration these options describe.
    pub fn config(&self) -> super::eval::EvalConfig {
        let d = super::eval::EvalConfig::default();
        super::eval::EvalConfig {
            families: self.families.clone(),
            ks: self.k.clone(),
            draws: self.draws,
            seed: self.seed,
            train: TrainConfig {
                algo: self.algo,
                iterations: self.iterations,
                ..d.train.clone()
            },
            benign_query_fraction: self.benign_query_fraction,
            max_benign_query: self.max_benign_query,
            benign_support: self.benign_support,
            scratch_steps: self.scratch_steps,
            head_steps: self.head_steps,
            pad_fraction: self.pad_fraction,
            bootstrap: self.bootstrap,
            threads: self.threads,
            ..d
        }
    }
}

/// "YYYY-MM-DD HH:MM UTC" of a time.
fn utc(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// CPU model, cores and kernel of this machine.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let simd = super::int8::SimdLevel::detect().name();
    format!(
        "{cpu}, {cores} cores available, int8 path {simd}, {} {kernel}",
        std::env::consts::OS
    )
}

/// `path` as seen from the directory of `from` (for links in the markdown file).
fn relative_to(path: &std::path::Path, from: &std::path::Path) -> String {
    let base = from.parent().unwrap_or(std::path::Path::new(""));
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Runs `detector eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use super::eval::{self as ev, report};
    let start = std::time::Instant::now();
    let date = utc(std::time::SystemTime::now());
    let mut datasets = Vec::new();
    for p in &args.data {
        let ds = Dataset::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        ev::check_dataset(&p.display().to_string(), &ds)?;
        datasets.push((p.display().to_string(), ds));
    }
    let inputs: Vec<ev::Input> = datasets
        .iter()
        .map(|(f, ds)| ev::Input {
            file: f.clone(),
            data: ds,
        })
        .collect();
    ev::check_families(&inputs, &args.families)?;
    let cfg = args.config();
    let progress = |s: &str| eprintln!("[{:>6.0} s] {s}", start.elapsed().as_secs_f64());
    let mut results = Vec::new();
    for input in &inputs {
        let r = ev::evaluate_dataset(input, &cfg, &progress)
            .with_context(|| format!("evaluation of {} failed", input.file))?;
        results.push(r);
    }
    let run = report::RunInfo {
        command: format!(
            "detector {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
        machine: machine(),
        date,
        seconds: start.elapsed().as_secs_f64(),
        version: format!("detector {}", env!("CARGO_PKG_VERSION")),
    };
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let json = args.out_dir.join("eval.json");
    let draws = args.out_dir.join("draws.json");
    report::write_json(
        &json,
        &report::Report {
            format: "detector-eval",
            version: 1,
            run: &run,
            config: &cfg,
            roc_grid: ev::stats::roc_grid(),
            datasets: &results,
        },
    )?;
    report::write_draws(&draws, &results)?;
    let plots = report::write_plots(&args.out_dir, &results, &cfg.ks)?;
    let rel = |p: &std::path::Path| relative_to(p, &args.markdown);
    let notes = report::existing_notes(&args.markdown);
    let plots: Vec<String> = plots.iter().map(|p| rel(p)).collect();
    let md = report::markdown(
        &run,
        &cfg,
        &results,
        &report::Companions {
            json: &rel(&json),
            draws: &rel(&draws),
            plots: &plots,
            notes: notes.as_deref(),
        },
    );
    std::fs::write(&args.markdown, md)
        .with_context(|| format!("cannot write {}", args.markdown.display()))?;
    for r in &results {
        println!("{} ({:.1} min):", r.file, r.seconds / 60.0);
        for (k, per) in &r.macro_summary {
            for m in [
                ev::META,
                ev::ZERO,
                ev::SCRATCH,
                ev::HEAD,
                ev::FEATURE,
                ev::IFOREST,
            ] {
                if let Some(s) = per.get(m) {
                    println!(
                        "  K={k:<2} {m:<16} ROC-AUC {:.4} [{:.4}, {:.4}]  TPR@1e-3 {:.4} [{:.4}, {:.4}]",
                        s["roc_auc"].mean,
                        s["roc_auc"].lo,
                        s["roc_auc"].hi,
                        s["tpr_1e3"].mean,
                        s["tpr_1e3"].lo,
                        s["tpr_1e3"].hi
                    );
                }
            }
        }
    }
    println!(
        "wrote {}, {}, {}, {} plots in {:.1} min",
        args.markdown.display(),
        json.display(),
        draws.display(),
        plots.len(),
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: C,
    }
    #[derive(clap::Subcommand)]
    enum C {
        Train(TrainArgs),
        Adapt(AdaptArgs),
        Eval(EvalArgs),
    }

    #[test]
    fn train_defaults_match_the_library_defaults() {
        let T { c: C::Train(a) } = T::parse_from(["t", "train", "--data", "x.dds", "-o", "m"])
        else {
            panic!()
        };
        assert_eq!(a.config(), TrainConfig::default());
        let T { c: C::Adapt(a) } = T::parse_from(["t", "adapt", "--support", "s.dds", "-o", "m2"])
        else {
            panic!()
        };
        let d = AdaptConfig::default();
        assert_eq!(
            (a.fpr_budget, a.holdout_fraction, a.trainable, a.max_benign),
            (
                d.fpr_budget,
                d.holdout_fraction,
                d.trainable,
                d.max_benign_train
            )
        );
    }

    #[test]
    fn train_and_adapt_commands_round_trip_files() {
        let dir = std::env::temp_dir().join(format!("detector-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ds = super::super::train::tests::synthetic(&["a", "b", "c"], 4, 10, 5);
        let data = dir.join("s.dds");
        ds.write(&data).unwrap();
        let m = dir.join("m.safetensors");
        let T { c: C::Train(a) } = T::parse_from([
            "t",
            "train",
            "--data",
            data.to_str().unwrap(),
            "-o",
            m.to_str().unwrap(),
            "--iterations",
            "3",
            "--hidden",
            "16,16",
            "--holdout-family",
            "c",
            "--benign-shot",
            "8",
            "--query",
            "8",
        ]) else {
            panic!()
        };
        train(a).unwrap();
        let model = Model::load(&m).unwrap();
        assert_eq!(model.info.data[0].file, data.display().to_string());
        let m2 = dir.join("m2.safetensors");
        let T { c: C::Adapt(a) } = T::parse_from([
            "t",
            "adapt",
            "--model",
            m.to_str().unwrap(),
            "--support",
            data.to_str().unwrap(),
            "--family",
            "c",
            "--k",
            "5",
            "-o",
            m2.to_str().unwrap(),
            "--fpr-budget",
            "1",
        ]) else {
            panic!()
        };
        adapt_cmd(a).unwrap();
        assert_eq!(Model::load(&m2).unwrap().info.adaptations.len(), 1);
        // A family with no rows: empty support, a clear error.
        let T { c: C::Adapt(a) } = T::parse_from([
            "t",
            "adapt",
            "--model",
            m.to_str().unwrap(),
            "--support",
            data.to_str().unwrap(),
            "--family",
            "zzz",
            "-o",
            m2.to_str().unwrap(),
        ]) else {
            panic!()
        };
        let e = adapt_cmd(a).unwrap_err();
        assert!(format!("{e:#}").contains("empty"), "{e:#}");
        // Truncated model file.
        let bytes = std::fs::read(&m).unwrap();
        std::fs::write(&m2, &bytes[..bytes.len() / 3]).unwrap();
        let T { c: C::Adapt(a) } = T::parse_from([
            "t",
            "adapt",
            "--model",
            m2.to_str().unwrap(),
            "--support",
            data.to_str().unwrap(),
            "-o",
            dir.join("m3").to_str().unwrap(),
        ]) else {
            panic!()
        };
        let e = adapt_cmd(a).unwrap_err();
        assert!(format!("{e:#}").contains("not a valid model file"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn eval_defaults_match_the_library_defaults() {
        let T { c: C::Eval(a) } = T::parse_from(["t", "eval", "--data", "x.dds"]) else {
            panic!()
        };
        let c = a.config();
        let d = super::super::eval::EvalConfig::default();
        assert_eq!(
            (c.ks, c.draws, c.seed, c.benign_support, c.pad_fraction),
            (d.ks, d.draws, d.seed, d.benign_support, d.pad_fraction)
        );
        assert_eq!(c.train, d.train);
        assert_eq!(utc(std::time::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        assert_eq!(
            utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096)),
            "2024-02-29 12:34 UTC"
        );
    }

    #[test]
    fn eval_command_writes_the_report_and_rejects_bad_input() {
        let dir = std::env::temp_dir().join(format!("detector-eval-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ds = super::super::train::tests::synthetic(&["a", "b"], 4, 10, 6);
        let data = dir.join("s.dds");
        ds.write(&data).unwrap();
        let md = dir.join("EVAL.md");
        let out = dir.join("out");
        let args = |extra: &[&str]| {
            let mut v = vec![
                "t",
                "eval",
                "--data",
                data.to_str().unwrap(),
                "--out-dir",
                out.to_str().unwrap(),
                "--markdown",
                md.to_str().unwrap(),
                "--k",
                "0,2",
                "--draws",
                "3",
                "--iterations",
                "5",
                "--bootstrap",
                "20",
                "--benign-support",
                "40",
                "--scratch-steps",
                "3",
                "--head-steps",
                "3",
            ];
            v.extend_from_slice(extra);
            let T { c: C::Eval(a) } = T::parse_from(v) else {
                panic!()
            };
            a
        };
        eval(args(&[])).unwrap();
        let text = std::fs::read_to_string(&md).unwrap();
        assert!(
            text.contains("## s (") && text.contains("| 2 | meta |"),
            "{text}"
        );
        assert!(out.join("eval.json").exists() && out.join("draws.json").exists());
        assert!(out.join("s-roc-a.svg").exists() && out.join("s-tpr-vs-k.svg").exists());
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
        assert_eq!(json["datasets"][0]["families"].as_array().unwrap().len(), 2);
        // Unknown family, empty dataset, single class: clear errors.
        let e = eval(args(&["--families", "zzz"])).unwrap_err();
        assert!(format!("{e:#}").contains("unknown family `zzz`"), "{e:#}");
        let empty = dir.join("empty.dds");
        Dataset::new("synth", ds.feature_names.clone())
            .write(&empty)
            .unwrap();
        let T { c: C::Eval(a) } = T::parse_from(["t", "eval", "--data", empty.to_str().unwrap()])
        else {
            panic!()
        };
        let e = eval(a).unwrap_err();
        assert!(format!("{e:#}").contains("no rows"), "{e:#}");
        let mut benign = Dataset::new("synth", ds.feature_names.clone());
        benign.push(&[0.0; 8], 0, "benign", "normal", "b", None);
        let one = dir.join("one.dds");
        benign.write(&one).unwrap();
        let T { c: C::Eval(a) } = T::parse_from(["t", "eval", "--data", one.to_str().unwrap()])
        else {
            panic!()
        };
        let e = eval(a).unwrap_err();
        assert!(format!("{e:#}").contains("single class"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

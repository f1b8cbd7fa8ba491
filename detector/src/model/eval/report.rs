//! The evaluation report: a markdown summary (EVALUATION.md), a JSON file with every summary
//! number, a JSON file with every draw's numbers, and SVG plots (ROC curves per family,
//! TPR at FPR 10⁻³ and ROC-AUC against K for every method).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use plotters::style::RGBColor;

use super::plot::{self, Axis, Panel, Series, PALETTE};
use super::stats::{self, Interval, Point, METRICS};
use super::{
    DatasetResult, EvalConfig, BASELINES, FEATURE, FEATURE_SUPPORT, HEAD, IFOREST, K0_METHODS,
    META, META_INT8, META_PROB, META_SERVED, METHODS, SCRATCH, ZERO, ZERO_PROB,
};

/// Where and how the run happened.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// The command line.
    pub command: String,
    /// CPU, cores, OS.
    pub machine: String,
    /// UTC date and time of the start.
    pub date: String,
    /// Wall time, s.
    pub seconds: f64,
    /// The build ("detector 0.1.0").
    pub version: String,
}

/// The JSON report.
#[derive(Serialize)]
pub struct Report<'a> {
    /// "detector-eval".
    pub format: &'static str,
    /// Report version.
    pub version: u32,
    /// Run.
    pub run: &'a RunInfo,
    /// Options.
    pub config: &'a EvalConfig,
    /// False-positive rates of the `roc` curves.
    pub roc_grid: Vec<f64>,
    /// Results.
    pub datasets: &'a [DatasetResult],
}

/// The short name of a dataset file (its stem).
pub fn stem(file: &str) -> String {
    let name = Path::new(file)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(file);
    name.split('.').next().unwrap_or(name).to_string()
}

/// Writes the summary JSON.
pub fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    crate::state::write_atomic(path, text.as_bytes())
}

/// Writes every draw's numbers: dataset → family → K → method → metric → one value per draw.
pub fn write_draws(path: &Path, datasets: &[DatasetResult]) -> anyhow::Result<()> {
    type Cols = BTreeMap<String, Vec<f64>>;
    type ByK = BTreeMap<usize, BTreeMap<String, Cols>>;
    let mut out: BTreeMap<String, BTreeMap<String, ByK>> = BTreeMap::new();
    let round = |v: f64| {
        if v.is_finite() {
            (v * 1e6).round() / 1e6
        } else {
            f64::NAN
        }
    };
    for d in datasets {
        let ds = out.entry(stem(&d.file)).or_default();
        for f in &d.families {
            let fam = ds.entry(f.family.clone()).or_default();
            for k in &f.by_k {
                let per_k = fam.entry(k.k).or_default();
                for (m, pts) in &k.per_draw {
                    let cols: Cols = METRICS
                        .iter()
                        .map(|&name| {
                            (
                                name.to_string(),
                                pts.iter().map(|p: &Point| round(p.get(name))).collect(),
                            )
                        })
                        .collect();
                    per_k.insert(m.clone(), cols);
                }
            }
        }
    }
    crate::state::write_atomic(path, serde_json::to_string(&out)?.as_bytes())
}

fn color(method: &str) -> (RGBColor, bool) {
    match method {
        META => (PALETTE[1], false),
        META_PROB => (PALETTE[3], true),
        META_SERVED => (PALETTE[8], true),
        META_INT8 => (PALETTE[9], true),
        ZERO => (PALETTE[0], false),
        ZERO_PROB => (PALETTE[0], true),
        SCRATCH => (PALETTE[2], false),
        HEAD => (PALETTE[4], false),
        FEATURE => (PALETTE[5], false),
        FEATURE_SUPPORT => (PALETTE[6], false),
        _ => (PALETTE[7], false),
    }
}

/// Methods drawn in the plots (the others are in the tables and JSON).
const PLOTTED: [&str; 7] = [META, ZERO, SCRATCH, HEAD, FEATURE, FEATURE_SUPPORT, IFOREST];

fn label(method: &str) -> String {
    match method {
        META => "meta-learned (K=0: as trained)".into(),
        META_PROB => "meta-learned, probability only".into(),
        ZERO => "(a) meta-learned, no adaptation".into(),
        SCRATCH => "(b) from scratch".into(),
        HEAD => "(c) supervised, last layer tuned".into(),
        FEATURE => "(d) best training feature".into(),
        FEATURE_SUPPORT => "(d') best support feature".into(),
        IFOREST => "(e) isolation forest".into(),
        m => m.into(),
    }
}

fn roc_panel(title: &str, curves: &BTreeMap<String, Vec<f64>>, methods: &[&str]) -> Panel {
    let grid = stats::roc_grid();
    let series = methods
        .iter()
        .filter_map(|&m| {
            let c = curves.get(m)?;
            let (color, dashed) = color(m);
            Some(Series {
                label: label(m),
                color,
                dashed,
                points: grid.iter().copied().zip(c.iter().copied()).collect(),
                errors: None,
            })
        })
        .collect();
    Panel {
        title: title.into(),
        x: Axis {
            min: 1e-4,
            max: 1.0,
            log: true,
            ticks: plot::log_ticks(-4, 0),
            label: "false-positive rate (benign query)".into(),
        },
        y: Axis {
            min: 0.0,
            max: 1.0,
            log: false,
            ticks: plot::unit_ticks(),
            label: "true-positive rate".into(),
        },
        series,
    }
}

/// One metric against K for every plotted method, with intervals.
fn k_panel(
    title: &str,
    d: &DatasetResult,
    family: Option<&str>,
    metric: &str,
    ks: &[usize],
) -> Panel {
    let value = |k: usize, m: &str| -> Option<Interval> {
        match family {
            None => d.macro_summary.get(&k)?.get(m)?.get(metric).copied(),
            Some(f) => {
                let fr = d.families.iter().find(|x| x.family == f)?;
                if k == 0 {
                    let v = super::metric_of(fr.k0.get(m)?, metric);
                    Some(Interval {
                        mean: v,
                        lo: v,
                        hi: v,
                        n: 1,
                    })
                } else {
                    fr.by_k
                        .iter()
                        .find(|r| r.k == k)?
                        .summary
                        .get(m)?
                        .get(metric)
                        .copied()
                }
            }
        }
    };
    let mut series = Vec::new();
    for &m in &PLOTTED {
        let mut points = Vec::new();
        let mut errors = Vec::new();
        for (x, &k) in ks.iter().enumerate() {
            // At K = 0, (a) is the meta-learned model itself.
            let src = if k == 0 && m == ZERO { META } else { m };
            let iv = if k == 0 && !K0_METHODS.contains(&src) {
                None
            } else {
                value(k, src)
            };
            let iv = iv.unwrap_or(Interval::NONE);
            points.push((x as f64, iv.mean));
            errors.push((iv.lo, iv.hi));
        }
        let (color, dashed) = color(m);
        series.push(Series {
            label: label(m),
            color,
            dashed,
            points,
            errors: Some(errors),
        });
    }
    let (lo, hi) = if metric == "roc_auc" {
        (0.5, 1.0)
    } else {
        (0.0, 1.0)
    };
    let ticks = if metric == "roc_auc" {
        (0..=5)
            .map(|i| (0.5 + i as f64 * 0.1, format!("{:.1}", 0.5 + i as f64 * 0.1)))
            .collect()
    } else {
        plot::unit_ticks()
    };
    Panel {
        title: title.into(),
        x: Axis {
            min: -0.3,
            max: ks.len() as f64 - 0.7,
            log: false,
            ticks: ks
                .iter()
                .enumerate()
                .map(|(i, k)| (i as f64, format!("{k}")))
                .collect(),
            label: "K (confirmed attack rows in the support)".into(),
        },
        y: Axis {
            min: lo,
            max: hi,
            log: false,
            ticks,
            label: match metric {
                "roc_auc" => "ROC-AUC".into(),
                _ => "TPR at FPR 1e-3".into(),
            },
        },
        series,
    }
}

/// Writes the SVG plots of every dataset into `dir`; returns their paths.
pub fn write_plots(
    dir: &Path,
    datasets: &[DatasetResult],
    ks: &[usize],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    let mut ks: Vec<usize> = ks.to_vec();
    ks.sort_unstable();
    ks.dedup();
    for d in datasets {
        let s = stem(&d.file);
        for f in &d.families {
            let mut panels = Vec::new();
            if ks.contains(&0) {
                panels.push(roc_panel(
                    "K = 0 (no adaptation)",
                    &f.roc_k0,
                    &[META, META_PROB, HEAD, FEATURE, IFOREST],
                ));
            }
            for r in &f.by_k {
                panels.push(roc_panel(
                    &format!("K = {} (mean of {} draws)", r.k, r.draws),
                    &r.roc,
                    &PLOTTED,
                ));
            }
            let title = format!(
                "{s}: held-out family {} - ROC (benign query sessions)",
                f.family
            );
            let path = dir.join(format!("{s}-roc-{}.svg", f.family));
            plot::save_figure(&path, &title, &panels, 2)?;
            out.push(path);
        }
        for (metric, name) in [("tpr_1e3", "tpr-vs-k"), ("roc_auc", "auc-vs-k")] {
            let mut panels: Vec<Panel> = d
                .families
                .iter()
                .map(|f| k_panel(&f.family, d, Some(&f.family), metric, &ks))
                .collect();
            panels.push(k_panel("macro average", d, None, metric, &ks));
            let what = if metric == "roc_auc" {
                "ROC-AUC"
            } else {
                "TPR at FPR 1e-3"
            };
            let title = format!("{s}: {what} against K (mean, 95% bootstrap interval)");
            let path = dir.join(format!("{s}-{name}.svg"));
            plot::save_figure(&path, &title, &panels, 3)?;
            out.push(path);
        }
    }
    Ok(out)
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn iv(i: &Interval) -> String {
    if i.n == 0 || !i.mean.is_finite() {
        "n/a".into()
    } else if i.lo == i.hi {
        num(i.mean)
    } else {
        format!("{} [{}, {}]", num(i.mean), num(i.lo), num(i.hi))
    }
}

fn pt(p: &Point, metric: &str) -> String {
    num(super::metric_of(p, metric))
}

const TABLE_METRICS: [(&str, &str); 6] = [
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC"),
    ("tpr_1e3", "TPR@FPR 1e-3"),
    ("tpr_1e4", "TPR@FPR 1e-4"),
    ("precision", "precision @ 1:10^4"),
    ("false_alerts_per_hour", "false alerts / benign h"),
];

/// Markers around the hand-written part of EVALUATION.md, kept when the file is rewritten.
pub const NOTES_BEGIN: &str = "<!-- notes: kept when `detector eval` rewrites this file -->";
/// End marker.
pub const NOTES_END: &str = "<!-- /notes -->";

/// The hand-written notes of an existing report, if any.
pub fn existing_notes(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let a = text.find(NOTES_BEGIN)? + NOTES_BEGIN.len();
    let b = text[a..].find(NOTES_END)? + a;
    Some(text[a..b].trim().to_string())
}

/// Where the report's companions are, relative to it, and the notes it keeps.
pub struct Companions<'a> {
    /// The JSON summary.
    pub json: &'a str,
    /// Every draw.
    pub draws: &'a str,
    pub plots: &'a [String],
    /// The hand-written notes of the file being rewritten.
    pub notes: Option<&'a str>,
}

/// The markdown report.
pub fn markdown(
    run: &RunInfo,
    cfg: &EvalConfig,
    datasets: &[DatasetResult],
    with: &Companions<'_>,
) -> String {
    let Companions {
        json,
        draws,
        plots,
        notes,
    } = *with;
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Detection quality\n");
    let _ = writeln!(
        w,
        "The protocol of `../shared/EVALUATION.md` (leave one family out, few-shot adaptation from \
         K confirmed attack rows, baselines in the same run), as implemented by `detector eval` \
         (`detector/src/model/eval/`). Everything below the notes is generated by the command \
         and is rewritten when it runs again.\n"
    );
    let _ = writeln!(w, "{NOTES_BEGIN}");
    let _ = writeln!(w, "{}", notes.unwrap_or("(no notes yet)"));
    let _ = writeln!(w, "{NOTES_END}\n");
    let _ = writeln!(w, "## Run\n");
    let _ = writeln!(w, "```\n{}\n```\n", run.command);
    let _ = writeln!(
        w,
        "- {}; {}; machine: {}; wall time {:.1} min.",
        run.version,
        run.date,
        run.machine,
        run.seconds / 60.0
    );
    let _ = writeln!(
        w,
        "- Every summary number: [`{json}`]({json}); every draw's numbers: [`{draws}`]({draws})."
    );
    let _ = writeln!(
        w,
        "- Plots: {}.\n",
        plots
            .iter()
            .map(|p| format!("[`{p}`]({p})"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let _ = writeln!(w, "## Protocol as run\n");
    let t = &cfg.train;
    let _ = writeln!(
        w,
        "- **Splits.** Per dataset the benign sessions are split once (seeded): {:.0}% of them \
         are *query* sessions, never trained on (at most {} of their rows are scored); the \
         others are *training* sessions. For each held-out family F, the meta-learned model \
         (Reptile, {} iterations, meta-batch {}, inner loop {} SGD steps at {}, K per episode \
         1..={}) and the conventional network (`--algo supervised`, the same iterations) are \
         trained on the training benign sessions plus every attack row of the other families; \
         F is in neither. Normalisers are fitted there (training rows only) and stay fixed when \
         adapting.",
        cfg.benign_query_fraction * 100.0,
        cfg.max_benign_query,
        t.iterations,
        t.meta_batch,
        t.inner_steps,
        t.inner_lr,
        t.k_shot
    );
    let _ = writeln!(
        w,
        "- **Support and query.** A draw deals F's sessions in random order to the support until \
         they hold K rows (one session whenever the first dealt holds K; the number of sessions \
         used is reported), draws K rows from them, and puts every row of F's other sessions in \
         the query. The benign side of the support is {} rows drawn from the training sessions \
         (what the agent passes to an adaptation); the benign query rows come from the query \
         sessions, so support and query never share a session. K counts rows: for the lab \
         recording a row is one flow record (a flow has several), for NSL-KDD one connection.",
        cfg.benign_support
    );
    let _ = writeln!(
        w,
        "- **Draws.** {} per (family, K > 0), seeded; mean and 95% percentile bootstrap interval \
         ({} resamples) over the draws. Macro average: the mean of the family means, its \
         interval from resampling each family's draws. K = 0 needs no draw: one evaluation on \
         every row of F (the macro K = 0 row is a plain mean over families).",
        cfg.draws, cfg.bootstrap
    );
    let _ = writeln!(
        w,
        "- **Metrics.** ROC-AUC; PR-AUC (average precision at the query's own class ratio); TPR \
         at FPR 10⁻³ and 10⁻⁴ with the threshold taken from the benign query scores (with fewer \
         than 10⁴ benign query rows, TPR@10⁻⁴ is the TPR at zero false positives); at the \
         operating threshold: TPR, FPR, precision at a base rate of {} (`TPR·π / (TPR·π + \
         FPR·(1−π))`, 0 when nothing alerts) and false alerts per benign hour (FPR × the \
         dataset's benign rows per hour of recording; n/a without timestamps).",
        cfg.base_rate
    );
    let _ = writeln!(
        w,
        "- **Operating thresholds.** The meta-learned model (adapted or not) alerts at its own \
         alert threshold (set in training on validation sessions at FPR {}), on the combined \
         score `max(p, w·novelty)` as the agent does (`meta-prob`: the probability alone at the \
         same threshold). Methods without a rule alert above the score that {} of {} benign rows \
         of the training sessions exceed.",
        t.target_fpr, cfg.target_fpr, cfg.threshold_rows
    );
    let _ = writeln!(
        w,
        "- **Methods.** `meta`: the meta-learned model adapted by `model::adapt` exactly as the \
         agent adapts (its inner loop, benign rows held back, prototypes refitted), f32; \
         `meta-int8`: the same on the int8 path; `meta-served`: what the agent would serve — the \
         adapted model, or the unadapted one when its false-alert check (budget {}) refuses. \
         Baselines: (a) `zero-shot`/`zero-shot-prob`: the meta-learned model without \
         adaptation; (b) `scratch`: the same architecture from random weights, {} SGD steps at \
         {} on the K rows and 256 benign support rows (class-balanced loss, as the inner loop); \
         (c) `head-ft`: the supervised network with only its last layer trained ({} steps at \
         {}, `Trainable::Head`; at K = 0 the supervised network as is); (d) `feature`: the one \
         feature with the best ROC-AUC on the training data, thresholded; (d') \
         `feature-support`: the feature that best separates the support (K rows against the \
         benign support; ties to the largest standardised gap); (e) `iforest`: an isolation \
         forest (100 trees of 256 rows) on the normalised benign training rows.",
        cfg.fpr_budget, cfg.scratch_steps, cfg.scratch_lr, cfg.head_steps, cfg.head_lr
    );
    let _ = writeln!(
        w,
        "- **Verdict.** \"beats\": meta's 95% interval lies entirely above the baseline's; \
         \"worse\": entirely below; \"overlap\": neither (then the paired interval of meta − \
         baseline over the same draws decides \"paired +\" when it lies above 0).\n"
    );
    let _ = writeln!(
        w,
        "- **Evasion.** Attack rows padded with {:.0}% extra packets from the attacker, sizes and \
         gaps drawn from benign flows of the same service (protocol and port class) of the \
         training sessions, done on the flow state and the features recomputed \
         (`eval/padding.rs`); reported as TPR@FPR 10⁻³ before and after (benign rows unchanged).\n",
        cfg.pad_fraction * 100.0
    );

    for d in datasets {
        dataset_md(w, d, cfg);
    }
    md
}

fn dataset_md(w: &mut String, d: &DatasetResult, cfg: &EvalConfig) {
    let s = stem(&d.file);
    let _ = writeln!(w, "## {s} (`{}`)\n", d.file);
    let _ = writeln!(
        w,
        "- Feature set `{}`, {} rows, sha256 `{}`.",
        d.feature_set, d.rows, d.sha256
    );
    let _ = writeln!(
        w,
        "- Benign sessions: {} training ({} rows), {} query ({} rows scored). Benign rows per \
         hour of recording: {}.",
        d.benign_sessions[0],
        d.benign_rows[0],
        d.benign_sessions[1],
        d.benign_rows[1],
        d.benign_per_hour
            .map_or("n/a (no timestamps)".into(), |v| format!("{v:.0}"))
    );
    if !d.skipped.is_empty() {
        let _ = writeln!(
            w,
            "- Not evaluated: {}.",
            d.skipped
                .iter()
                .map(|(f, why)| format!("`{f}` ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if let Some(note) = &d.sessions_note {
        let _ = writeln!(w, "- **Sessions:** {note}.");
    }
    if let Some(na) = &d.padding_na {
        let _ = writeln!(w, "- Evasion: n/a — {na}.");
    }
    let _ = writeln!(w, "- Wall time {:.1} min.\n", d.seconds / 60.0);

    // Macro table.
    let _ = writeln!(
        w,
        "### Macro average over the {} families\n",
        d.families.len()
    );
    let header: Vec<&str> = TABLE_METRICS.iter().map(|m| m.1).collect();
    let _ = writeln!(w, "| K | method | {} |", header.join(" | "));
    let _ = writeln!(w, "|---|---|{}", "---|".repeat(header.len()));
    for (k, per) in &d.macro_summary {
        let methods: Vec<&str> = if *k == 0 {
            K0_METHODS.to_vec()
        } else {
            METHODS.to_vec()
        };
        for m in methods {
            let Some(sm) = per.get(m) else { continue };
            let cells: Vec<String> = TABLE_METRICS.iter().map(|(mt, _)| iv(&sm[*mt])).collect();
            let name = if *k == 0 && m == HEAD {
                "head-ft (supervised, as is)"
            } else {
                m
            };
            let _ = writeln!(w, "| {k} | {name} | {} |", cells.join(" | "));
        }
    }
    let _ = writeln!(w);

    // Verdicts (macro).
    let _ = writeln!(
        w,
        "### Meta-learned (adapted) against each baseline, macro\n"
    );
    let _ = writeln!(
        w,
        "Cell: outcome, meta − baseline paired difference [95% interval].\n"
    );
    let _ = writeln!(w, "| K | baseline | ROC-AUC | PR-AUC | TPR@FPR 1e-3 |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    for v in d
        .verdicts
        .iter()
        .filter(|v| v.family == "macro" && v.metric == "roc_auc")
    {
        let cell = |metric: &str| {
            d.verdicts
                .iter()
                .find(|x| {
                    x.family == "macro"
                        && x.k == v.k
                        && x.baseline == v.baseline
                        && x.metric == metric
                })
                .map(|x| {
                    format!(
                        "{}{}, {}",
                        x.outcome,
                        if x.outcome == "overlap" && x.paired_beats {
                            " (paired +)"
                        } else {
                            ""
                        },
                        iv(&x.diff)
                    )
                })
                .unwrap_or_default()
        };
        let letter = BASELINES
            .iter()
            .find(|b| b.0 == v.baseline)
            .map_or("", |b| b.1);
        let _ = writeln!(
            w,
            "| {} | ({letter}) {} | {} | {} | {} |",
            v.k,
            v.baseline,
            cell("roc_auc"),
            cell("pr_auc"),
            cell("tpr_1e3")
        );
    }
    let _ = writeln!(w);
    let not_beaten: Vec<&super::Verdict> =
        d.verdicts.iter().filter(|v| v.outcome != "beats").collect();
    let total = d.verdicts.len();
    let _ = writeln!(
        w,
        "Meta's interval lies above the baseline's in {} of {} comparisons (per family and \
         macro, K > 0, ROC-AUC, PR-AUC, TPR@1e-3). Where it does not:\n",
        total - not_beaten.len(),
        total
    );
    let mut grouped: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for v in &not_beaten {
        grouped
            .entry((v.baseline.clone(), v.metric.clone()))
            .or_default()
            .push(format!(
                "{} K={}: {}{} ({} vs {})",
                v.family,
                v.k,
                v.outcome,
                if v.paired_beats { ", paired +" } else { "" },
                num(v.meta.mean),
                num(v.other.mean)
            ));
    }
    for ((b, m), list) in &grouped {
        let _ = writeln!(w, "- vs `{b}`, {m}: {}.", list.join("; "));
    }
    let _ = writeln!(w);

    // Per family.
    let _ = writeln!(w, "### Per family\n");
    for f in &d.families {
        let _ = writeln!(
            w,
            "#### {} ({} sessions, {} rows)\n",
            f.family, f.sessions, f.rows
        );
        let _ = writeln!(
            w,
            "- Trained on {} rows in {:.1} s (meta) + {:.1} s (supervised); meta tasks: {}{}.",
            f.train_rows,
            f.train_seconds[0],
            f.train_seconds[1],
            f.tasks.join(", "),
            if f.skipped_tasks.is_empty() {
                String::new()
            } else {
                format!("; skipped: {}", f.skipped_tasks.join(", "))
            }
        );
        let _ = writeln!(
            w,
            "- Alert threshold {:.4}, novelty weight {:.4}. (d) feature: `{}` ({}, training \
             ROC-AUC {:.3}). (d') most picked: {}.",
            f.alert_threshold,
            f.novelty_weight,
            f.feature.name,
            if f.feature.sign > 0.0 {
                "high = attack"
            } else {
                "low = attack"
            },
            f.feature.auc,
            {
                let mut v: Vec<(&String, &usize)> = f.support_features.iter().collect();
                v.sort_by(|a, b| b.1.cmp(a.1));
                v.iter()
                    .take(3)
                    .map(|(n, c)| format!("`{n}` ×{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        for r in &f.by_k {
            let _ = writeln!(
                w,
                "- K = {}: supports from {:.2} sessions on average (max {}), {:.0} attack query \
                 rows; adaptations refused by the agent's check: {}/{}{}.",
                r.k,
                r.support_sessions_mean,
                r.support_sessions_max,
                r.query_attack_rows_mean,
                r.refused,
                r.draws,
                if r.failed > 0 {
                    format!(
                        "; failed: {} ({})",
                        r.failed,
                        r.first_failure.clone().unwrap_or_default()
                    )
                } else {
                    String::new()
                }
            );
        }
        if let Some(p) = &f.padding {
            let _ = writeln!(
                w,
                "- Padding: {} of {} attack rows changed, {:.1}% extra packets overall; pools: \
                 {} by service, {} by protocol, {} any.",
                p.changed,
                p.rows,
                p.extra_packet_ratio * 100.0,
                p.pools.service,
                p.pools.protocol,
                p.pools.any
            );
        }
        let _ = writeln!(w);
        for (metric, title) in [("roc_auc", "ROC-AUC"), ("tpr_1e3", "TPR@FPR 1e-3")] {
            let ks: Vec<usize> = f.by_k.iter().map(|r| r.k).collect();
            let _ = writeln!(
                w,
                "| {title} | K=0 | {} |",
                ks.iter()
                    .map(|k| format!("K={k}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(w, "|---|---|{}", "---|".repeat(ks.len()));
            for m in METHODS {
                let k0 = f.k0.get(if m == ZERO {
                    META
                } else if m == ZERO_PROB {
                    META_PROB
                } else {
                    m
                });
                let c0 = k0.map_or("—".into(), |p| pt(p, metric));
                let rest: Vec<String> = f
                    .by_k
                    .iter()
                    .map(|r| r.summary.get(m).map_or("—".into(), |s| iv(&s[metric])))
                    .collect();
                let _ = writeln!(w, "| {m} | {c0} | {} |", rest.join(" | "));
            }
            let _ = writeln!(w);
        }
    }

    // int8.
    let _ = writeln!(
        w,
        "### int8 against f32 (|ΔROC-AUC| of the combined score)\n"
    );
    let ks: Vec<usize> = d
        .families
        .first()
        .map(|f| f.by_k.iter().map(|r| r.k).collect())
        .unwrap_or_default();
    let _ = writeln!(
        w,
        "| family | K=0 (score) | K=0 (logit) | {} | all ≤ 0.005 |",
        ks.iter()
            .map(|k| format!("K={k} mean / max"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(w, "|---|---|---|{}---|", "---|".repeat(ks.len()));
    for f in &d.families {
        let worst = f
            .by_k
            .iter()
            .map(|r| r.int8_gap_max)
            .chain(f.int8_gap_k0)
            .fold(0.0, f64::max);
        let _ = writeln!(
            w,
            "| {} | {:.5} | {:.5} | {} | {} |",
            f.family,
            f.int8_gap_k0[0],
            f.int8_gap_k0[1],
            f.by_k
                .iter()
                .map(|r| format!("{:.5} / {:.5}", r.int8_gap_mean, r.int8_gap_max))
                .collect::<Vec<_>>()
                .join(" | "),
            if worst <= 0.005 { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(w);

    // Evasion.
    if d.padding_na.is_none() {
        let kmax = ks.iter().copied().max().unwrap_or(0);
        let _ = writeln!(
            w,
            "### Evasion: TPR@FPR 1e-3 before → after padding (drop [95% interval])\n"
        );
        let _ = writeln!(w, "| family | meta K=0 | meta K={kmax} | (a) zero-shot | (b) scratch | (c) head-ft | (d) feature | (d') feature-support | (e) iforest |");
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
        let cell_k = |s: &super::Summary| {
            format!(
                "{} → {} ({})",
                num(s["tpr_1e3"].mean),
                num(s["evasion_tpr_1e3"].mean),
                iv(&s["evasion_drop"])
            )
        };
        for f in &d.families {
            let k0 = f.k0.get(META).map_or("—".into(), |p| {
                format!(
                    "{} → {} ({})",
                    num(p.tpr_1e3),
                    num(p.evasion_tpr_1e3),
                    num(p.evasion_drop())
                )
            });
            let r = f.by_k.iter().find(|r| r.k == kmax);
            let c = |m: &str| r.and_then(|r| r.summary.get(m)).map_or("—".into(), cell_k);
            let _ = writeln!(
                w,
                "| {} | {k0} | {} | {} | {} | {} | {} | {} | {} |",
                f.family,
                c(META),
                c(ZERO),
                c(SCRATCH),
                c(HEAD),
                c(FEATURE),
                c(FEATURE_SUPPORT),
                c(IFOREST)
            );
        }
        if let Some(per) = d.macro_summary.get(&kmax) {
            let c = |m: &str| per.get(m).map_or("—".into(), cell_k);
            let k0 = d
                .macro_summary
                .get(&0)
                .and_then(|p| p.get(META))
                .map_or("—".into(), cell_k);
            let _ = writeln!(
                w,
                "| macro | {k0} | {} | {} | {} | {} | {} | {} | {} |",
                c(META),
                c(ZERO),
                c(SCRATCH),
                c(HEAD),
                c(FEATURE),
                c(FEATURE_SUPPORT),
                c(IFOREST)
            );
        }
        let _ = writeln!(w);
    }
    let _ = cfg;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_survive_a_rewrite_and_stems_are_short() {
        let dir = std::env::temp_dir().join(format!("detector-eval-notes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("EVALUATION.md");
        std::fs::write(
            &p,
            format!("# x\n{NOTES_BEGIN}\nwhy it lost\n{NOTES_END}\nold"),
        )
        .unwrap();
        assert_eq!(existing_notes(&p).as_deref(), Some("why it lost"));
        assert_eq!(existing_notes(&dir.join("none.md")), None);
        assert_eq!(stem("target/eval/lab-live.dds"), "lab-live");
        assert_eq!(stem("nsl-kdd-test.dds"), "nsl-kdd-test");
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! Off the lab: does detection hold on networks the model never saw? `detector eval-offlab`
//! (`cargo xtask eval-offlab` writes its report into EVALUATION.md, "Off the lab"; protocol in
//! ../shared/EVALUATION.md). Captures from other networks, and the lab recording's held-out
//! sessions, go through the agent's own context, scoring and policy code (as `replay --detect`),
//! out of the box and after a warm-up on the first half of each unit. Counted: alert events per
//! 1,000 benign flows, benign units with any alert, attack units alerted and whether the
//! attacker's address is one alerted.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context};
use detector_common::flow::{FlowConfig, FlowKey, FlowState, Reason};
use serde::Serialize;

use crate::{
    config::Config,
    detect::{AlertJson, CollectedAlerts, Detector},
    model::Model,
    record::FlowJson,
};

pub mod fewshot;

/// One flow record, as replay or a recording gives it.
#[derive(Clone, Copy)]
pub struct Rec {
    pub key: FlowKey,
    pub state: FlowState,
    pub reason: Reason,
}

/// A unit of evaluation: a capture, or the lab recording's held-out sessions together.
pub struct Unit {
    /// The collection: `ndpi-dev`, `corpus`, `lab-holdout`.
    pub set: String,
    pub name: String,
    /// None for units that mix benign and attack sessions (the lab): each record's own label
    /// decides (`labels`).
    pub attack: Option<bool>,
    pub family: String,
    pub records: Vec<Rec>,
    /// Per record: (session, attack), for mixed units; records of sessions outside the
    /// evaluation (the lab's training sessions) have `None` and only feed the context.
    pub labels: Vec<Option<(String, bool)>>,
    /// The family of each session of a mixed unit.
    pub session_families: HashMap<String, String>,
}

/// How a unit is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// `replay --detect` with no options.
    OutOfTheBox,
    /// The first half of the unit's records is the host's warm-up; the second half is counted.
    Warmup,
}

/// What one session (a capture, or one lab session) gave in one mode.
#[derive(Clone, Debug, Serialize)]
pub struct SessionResult {
    pub set: String,
    pub unit: String,
    pub session: String,
    pub attack: bool,
    pub family: String,
    /// Flows whose final record was counted.
    pub flows: u64,
    /// Alert events on the counted records.
    pub alerts: u64,
    /// Distinct flows alerted.
    pub alerted_flows: u64,
    /// The initiator of most flows (attack sessions).
    pub attacker: Option<String>,
    pub attacker_alerted: bool,
}

/// The flow key of an alert's flow, to tell its flow apart.
fn alert_flow(a: &AlertJson) -> String {
    let f = &a.flow;
    format!(
        "{}|{}|{}|{}|{}|{}",
        f.proto, f.src_addr, f.src_port, f.dst_addr, f.dst_port, f.vlan
    )
}

/// Runs one unit in one mode; one result per session of it.
pub fn run_unit(
    unit: &Unit,
    model: &Arc<Model>,
    version: &str,
    cfg: &Config,
    mode: Mode,
) -> anyhow::Result<Vec<SessionResult>> {
    let n = unit.records.len();
    // Recent records are what a warm-up fits the host's baseline on.
    let recent = if mode == Mode::Warmup { n / 2 } else { 0 };
    let det = crate::replay::offline_detector(model.clone(), version.to_string(), cfg, recent)?;
    match mode {
        Mode::OutOfTheBox => count_from(unit, det, 0, |_| Ok(())),
        Mode::Warmup => count_from(unit, det, n / 2, |det| warm_up(det, cfg)),
    }
}

/// Runs a unit's records through `det`; `at` is called once every record before
/// `counted_from` has been scored (a warm-up's end, an incident confirmed), and the records
/// from there on are counted: one result per session.
pub fn count_from(
    unit: &Unit,
    mut det: Detector,
    counted_from: usize,
    at: impl FnOnce(&mut Detector) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<SessionResult>> {
    let n = unit.records.len();
    let mut at = Some(at);
    let mut col = CollectedAlerts::default();
    // Which records each alert came from: alerts are written in record order per flush, so
    // the flush boundaries map them back.
    let mut alert_rec: Vec<usize> = Vec::new();
    let mut batch_start = 0;
    let mut flush =
        |det: &mut Detector, col: &mut CollectedAlerts, upto: usize| -> anyhow::Result<()> {
            let before = col.alerts.len();
            det.flush(col)?;
            for a in &col.alerts[before..] {
                alert_rec.push(record_of(&unit.records[batch_start..upto], a) + batch_start);
            }
            batch_start = upto;
            Ok(())
        };
    for (i, r) in unit.records.iter().enumerate() {
        if i == counted_from {
            flush(&mut det, &mut col, i)?;
            if let Some(at) = at.take() {
                at(&mut det)?;
            }
        }
        if det.push(&r.key, &r.state, r.reason, None, Instant::now()) {
            flush(&mut det, &mut col, i + 1)?;
        }
    }
    flush(&mut det, &mut col, n)?;

    let label_of = |i: usize| -> Option<(String, bool)> {
        match unit.attack {
            Some(attack) => Some((unit.name.clone(), attack)),
            None => unit.labels[i].clone(),
        }
    };
    let mut by_session: HashMap<String, SessionResult> = HashMap::new();
    let mut initiators: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut alerted: HashMap<String, HashSet<String>> = HashMap::new();
    let mut alerted_src: HashMap<String, HashSet<String>> = HashMap::new();
    for (i, r) in unit.records.iter().enumerate().skip(counted_from) {
        let Some((session, attack)) = label_of(i) else {
            continue;
        };
        let s = by_session
            .entry(session.clone())
            .or_insert_with(|| SessionResult {
                set: unit.set.clone(),
                unit: unit.name.clone(),
                session: session.clone(),
                attack,
                family: family_of(unit, &session),
                flows: 0,
                alerts: 0,
                alerted_flows: 0,
                attacker: None,
                attacker_alerted: false,
            });
        if r.reason.is_final() {
            s.flows += 1;
            let j = FlowJson::new(&r.key, &r.state, r.reason, crate::clock::TimeBase::Unix);
            *initiators
                .entry(session)
                .or_default()
                .entry(j.src_addr.to_string())
                .or_default() += 1;
        }
    }
    for (a, &i) in col.alerts.iter().zip(&alert_rec) {
        if i < counted_from {
            continue;
        }
        let Some((session, _)) = label_of(i) else {
            continue;
        };
        if let Some(s) = by_session.get_mut(&session) {
            s.alerts += 1;
            alerted
                .entry(session.clone())
                .or_default()
                .insert(alert_flow(a));
            alerted_src
                .entry(session)
                .or_default()
                .insert(a.flow.src_addr.to_string());
        }
    }
    let mut out: Vec<SessionResult> = by_session.into_values().collect();
    for s in &mut out {
        s.alerted_flows = alerted.get(&s.session).map_or(0, |f| f.len() as u64);
        if s.attack {
            s.attacker = initiators.get(&s.session).and_then(|m| {
                m.iter()
                    .max_by_key(|(a, c)| (**c, (*a).clone()))
                    .map(|(a, _)| a.clone())
            });
            s.attacker_alerted = match (&s.attacker, alerted_src.get(&s.session)) {
                (Some(a), Some(srcs)) => srcs.contains(a),
                _ => false,
            };
        }
    }
    out.sort_by(|a, b| a.session.cmp(&b.session));
    Ok(out)
}

/// A session's family: the unit's, or for the lab the one its records named.
fn family_of(unit: &Unit, session: &str) -> String {
    match unit.session_families.get(session) {
        Some(f) => f.clone(),
        None => unit.family.clone(),
    }
}

/// Index (within `recs`) of the record an alert was raised on: the last record of its flow
/// with its timestamp (a flow's records within one batch differ in counters and time).
fn record_of(recs: &[Rec], a: &AlertJson) -> usize {
    let want = (a.flow.first_seen_ns, a.flow.last_seen_ns);
    recs.iter()
        .rposition(|r| {
            let j = FlowJson::new(&r.key, &r.state, r.reason, crate::clock::TimeBase::Unix);
            (j.first_seen_ns, j.last_seen_ns) == want
                && j.src_addr == a.flow.src_addr
                && j.src_port == a.flow.src_port
                && j.dst_port == a.flow.dst_port
        })
        .unwrap_or(0)
}

/// The host's warm-up, offline: the baseline fitted on the quiet records seen so far, as the
/// agent does at the end of its warm-up; too few of them (a short capture) leave the model as
/// it was, as on a host still learning.
fn warm_up(det: &mut Detector, cfg: &Config) -> anyhow::Result<()> {
    crate::baseline::fit_now(
        det,
        crate::model::novelty::MIN_ROWS,
        cfg.adaptation.host_novelty_quantile,
    )?;
    Ok(())
}

/// The records of one capture, replayed through the kernel's flow logic.
pub fn capture_records(path: &Path, flow: &FlowConfig) -> anyhow::Result<Vec<Rec>> {
    let mut recs = Vec::new();
    crate::replay::replay_file(path, flow, |k, s, r| {
        recs.push(Rec {
            key: *k,
            state: *s,
            reason: r,
        });
        Ok(())
    })?;
    Ok(recs)
}

/// The captures of `MANIFEST.tsv` in `dir` that pass `keep`, as units of `set`.
pub fn manifest_units(
    dir: &Path,
    set: &str,
    flow: &FlowConfig,
    keep: impl Fn(&str, &str, Option<&str>) -> bool,
) -> anyhow::Result<Vec<Unit>> {
    let mut units = Vec::new();
    for row in crate::corpus::manifest(&dir.join("MANIFEST.tsv"))? {
        if !keep(&row.file, &row.label, row.split.as_deref()) {
            continue;
        }
        let path = dir.join(&row.file);
        let records = match capture_records(&path, flow) {
            Ok(r) => r,
            // A capture replay cannot read (a link type it does not take) is reported, not
            // counted: it says nothing about detection.
            Err(e) => {
                tracing::warn!("skipped {}: {e:#}", path.display());
                continue;
            }
        };
        units.push(Unit {
            set: set.to_string(),
            name: row.file.clone(),
            attack: Some(row.label == "attack"),
            family: row.family,
            records,
            labels: Vec::new(),
            session_families: HashMap::new(),
        });
    }
    Ok(units)
}

/// Totals over sessions.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub benign_sessions: u64,
    pub benign_sessions_alerting: u64,
    pub benign_flows: u64,
    pub benign_alerts: u64,
    pub attack_sessions: u64,
    pub attack_sessions_alerted: u64,
    pub attacker_alerted: u64,
}

impl Totals {
    pub fn of<'a>(results: impl IntoIterator<Item = &'a SessionResult>) -> Self {
        let mut t = Totals::default();
        for r in results {
            if r.attack {
                t.attack_sessions += 1;
                t.attack_sessions_alerted += (r.alerts > 0) as u64;
                t.attacker_alerted += r.attacker_alerted as u64;
            } else {
                t.benign_sessions += 1;
                t.benign_sessions_alerting += (r.alerts > 0) as u64;
                t.benign_flows += r.flows;
                t.benign_alerts += r.alerts;
            }
        }
        t
    }

    /// Alert events per 1,000 benign flows.
    pub fn per_1000(&self) -> f64 {
        if self.benign_flows == 0 {
            0.0
        } else {
            1000.0 * self.benign_alerts as f64 / self.benign_flows as f64
        }
    }
}

/// Where the collections are.
#[derive(Clone, Debug)]
pub struct Sources {
    /// `corpus/offlab/ndpi` (its dev split is used).
    pub ndpi: Option<PathBuf>,
    /// `corpus` (every pcap of its manifest).
    pub corpus: Option<PathBuf>,
    /// A lab recording's `records.jsonl.zst`: its test-split sessions are scored.
    pub lab: Option<PathBuf>,
}

/// The lab recording as one unit: every record feeds the context (sessions ran side by side),
/// the records of test-split sessions ([`crate::dataset::flows::is_test_session`]) are counted.
pub fn lab_unit(records: &Path) -> anyhow::Result<Unit> {
    use crate::dataset::flows::{for_each_record, is_test_session};
    let mut unit = Unit {
        set: "lab-holdout".into(),
        name: records.display().to_string(),
        attack: None,
        family: "benign".into(),
        records: Vec::new(),
        labels: Vec::new(),
        session_families: HashMap::new(),
    };
    let mut other = 0;
    for_each_record(records, &mut other, |_, r| {
        let label = match &r.lab {
            Some(lab) => match (&lab.session, lab.label.as_str()) {
                (Some(session), l @ ("attack" | "benign")) if is_test_session(session) => {
                    if let Some(f) = &lab.family {
                        unit.session_families.insert(session.clone(), f.clone());
                    }
                    Some((session.clone(), l == "attack"))
                }
                _ => None,
            },
            None => None,
        };
        unit.records.push(Rec {
            key: r.key,
            state: r.state,
            reason: r.reason,
        });
        unit.labels.push(label);
        Ok(())
    })?;
    if unit.labels.iter().all(Option::is_none) {
        bail!(
            "{}: no records of test-split sessions (scenario/N with N ≡ 3 mod 5)",
            records.display()
        );
    }
    Ok(unit)
}

/// Every unit of the sources.
pub fn units(src: &Sources, flow: &FlowConfig) -> anyhow::Result<Vec<Unit>> {
    let mut units = Vec::new();
    if let Some(d) = &src.ndpi {
        units.extend(manifest_units(d, "ndpi-dev", flow, |_, _, split| {
            split == Some("dev")
        })?);
    }
    if let Some(d) = &src.corpus {
        units.extend(manifest_units(d, "corpus", flow, |file, _, _| {
            file.starts_with("pcap/benign/") || file.starts_with("pcap/attack/")
        })?);
        // Parser edge cases (tunnels, odd encapsulations): no attack among them, counted as
        // benign apart from the rest.
        units.extend(manifest_units(d, "corpus-edge", flow, |file, _, _| {
            file.starts_with("pcap/edge/")
        })?);
    }
    if let Some(r) = &src.lab {
        units.push(lab_unit(r)?);
    }
    Ok(units)
}

/// The results of every unit in both modes.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub results: Vec<(Mode, SessionResult)>,
}

/// `cfg` without alert cooldown and rate limits: whether an attack was caught is judged on
/// every record it had, not on the alerts a cooldown let out.
fn uncapped(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.policy.alert_cooldown = crate::config::Dur(std::time::Duration::from_nanos(1));
    c.policy.max_alerts_per_s = 1e12;
    c.policy.alert_burst = u32::MAX;
    c
}

/// Runs every unit in both modes.
pub fn evaluate(
    units: &[Unit],
    model: Arc<Model>,
    version: &str,
    cfg: &Config,
) -> anyhow::Result<Report> {
    // The lab's attack sessions ran side by side from three attacker addresses: one alert
    // per source per cooldown would hide every later session of the same address. Whether a
    // session was caught is therefore judged without cooldown or rate limits; benign alert
    // events are counted with the configuration as it is.
    let uncapped = uncapped(cfg);
    let mut results = Vec::new();
    for mode in [Mode::OutOfTheBox, Mode::Warmup] {
        for u in units {
            let mut rs = run_unit(u, &model, version, cfg, mode)?;
            if u.attack.is_none() {
                rs.retain(|r| !r.attack);
                rs.extend(
                    run_unit(u, &model, version, &uncapped, mode)?
                        .into_iter()
                        .filter(|r| r.attack),
                );
            }
            results.extend(rs.into_iter().map(|r| (mode, r)));
        }
    }
    Ok(Report {
        model: version.to_string(),
        results,
    })
}

/// The report as Markdown: totals per collection and mode, then every capture.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let sets: Vec<String> = {
        let mut v: Vec<String> = report.results.iter().map(|(_, r)| r.set.clone()).collect();
        v.dedup();
        let mut seen = HashSet::new();
        v.retain(|x| seen.insert(x.clone()));
        v
    };
    let _ = writeln!(
        s,
        "| collection | mode | benign flows | alert events per 1,000 benign flows | benign units with any alert | attack units alerted | attacker alerted |\n|---|---|---|---|---|---|---|"
    );
    for set in &sets {
        for mode in [Mode::OutOfTheBox, Mode::Warmup] {
            let t = Totals::of(
                report
                    .results
                    .iter()
                    .filter(|(m, r)| *m == mode && &r.set == set)
                    .map(|(_, r)| r),
            );
            let _ = writeln!(
                s,
                "| {set} | {} | {} | {:.1} ({} events) | {} of {} | {} of {} | {} of {} |",
                mode_name(mode),
                t.benign_flows,
                t.per_1000(),
                t.benign_alerts,
                t.benign_sessions_alerting,
                t.benign_sessions,
                t.attack_sessions_alerted,
                t.attack_sessions,
                t.attacker_alerted,
                t.attack_sessions,
            );
        }
    }
    per_session(report, &mut s);
    s
}

/// Per session: every attack session, and the benign ones that alerted in either mode.
fn per_session(report: &Report, s: &mut String) {
    let key = |r: &SessionResult| (r.set.clone(), r.session.clone());
    let mut rows: Vec<(String, String)> = Vec::new();
    for (_, r) in &report.results {
        if (r.attack || r.alerts > 0) && !rows.contains(&key(r)) {
            rows.push(key(r));
        }
    }
    rows.sort();
    let find = |mode: Mode, k: &(String, String)| {
        report
            .results
            .iter()
            .find(|(m, r)| *m == mode && key(r) == *k)
            .map(|(_, r)| r)
    };
    let cell = |r: Option<&SessionResult>| match r {
        None => "—".to_string(),
        Some(r) if r.attack => format!(
            "{} alerts{}",
            r.alerts,
            if r.attacker_alerted {
                ", attacker alerted"
            } else {
                ""
            }
        ),
        Some(r) => format!("{} alerts / {} flows", r.alerts, r.flows),
    };
    let _ = writeln!(
        s,
        "\n| collection | capture or session | label (family) | out of the box | after warm-up |\n|---|---|---|---|---|"
    );
    for k in &rows {
        let (o, w) = (find(Mode::OutOfTheBox, k), find(Mode::Warmup, k));
        let Some(any) = o.or(w) else { continue };
        let label = if any.attack { "attack" } else { "benign" };
        let _ = writeln!(
            s,
            "| {} | {} | {label} ({}) | {} | {} |",
            k.0,
            k.1,
            any.family,
            cell(o),
            cell(w)
        );
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::OutOfTheBox => "out of the box",
        Mode::Warmup => "after warm-up",
    }
}

/// Arguments of `detector eval-offlab`.
#[derive(clap::Args, Debug)]
pub struct OfflabArgs {
    /// `corpus/offlab/ndpi` (MANIFEST.tsv with a `split` column): its dev split is evaluated.
    #[arg(long, value_name = "DIR")]
    pub ndpi: Option<PathBuf>,
    /// `corpus` (MANIFEST.tsv): every pcap under pcap/.
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<PathBuf>,
    /// A lab recording's records (`lab/recordings/default/records.jsonl.zst`): its test-split
    /// sessions, which `cargo xtask train-default` leaves out of training.
    #[arg(long, value_name = "FILE")]
    pub lab: Option<PathBuf>,
    /// A model file (default: the embedded model).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Configuration whose [policy], [context] and [flows] apply (default: the defaults).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Write every session's result here (JSON).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the Markdown report here (default: stdout).
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// Instead: confirm the first K flows of each attack capture as an incident, as an operator
    /// would, adapt with the agent's code and check, and count the rest of the capture; then the
    /// adapted model on the nDPI dev split's benign captures. Needs --ndpi (its train split's
    /// benign captures are the host's recent traffic the adaptation draws benign rows from).
    #[arg(long, value_name = "K")]
    pub few_shot: Option<usize>,
}

/// `detector eval-offlab`.
pub fn cli(a: OfflabArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(m) = &a.model {
        cfg.scoring.model = m.display().to_string();
    }
    if a.ndpi.is_none() && a.corpus.is_none() && a.lab.is_none() {
        bail!("nothing to evaluate: give --ndpi DIR, --corpus DIR and/or --lab FILE");
    }
    let start = Instant::now();
    let src = Sources {
        ndpi: a.ndpi,
        corpus: a.corpus,
        lab: a.lab,
    };
    let units = units(&src, &cfg.flow_config())?;
    let (model, version) = crate::model::serving::base_model(&cfg.scoring.model)?;
    let model = Arc::new(model);
    let n_units = units.len();
    let (md, json) = match a.few_shot {
        None => {
            let report = evaluate(&units, model, &version, &cfg)?;
            (markdown(&report), serde_json::to_vec_pretty(&report)?)
        }
        Some(0) => bail!("--few-shot: K must be at least 1 flow"),
        Some(k) => {
            let Some(ndpi) = &src.ndpi else {
                bail!("--few-shot needs --ndpi DIR: its train split is the host's benign traffic and its dev split the check");
            };
            let background = fewshot::background(ndpi, &model, &version, &cfg)?;
            let (attacks, dev): (Vec<Unit>, Vec<Unit>) = units
                .into_iter()
                .filter(|u| u.attack.is_some())
                .partition(|u| u.attack == Some(true));
            let dev: Vec<Unit> = dev.into_iter().filter(|u| u.set == "ndpi-dev").collect();
            let report = fewshot::evaluate(&attacks, &dev, &background, model, &version, &cfg, k)?;
            (
                fewshot::markdown(&report),
                serde_json::to_vec_pretty(&report)?,
            )
        }
    };
    if let Some(p) = &a.json {
        std::fs::write(p, json).with_context(|| format!("cannot write {}", p.display()))?;
    }
    match &a.markdown {
        Some(p) => {
            std::fs::write(p, &md).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{md}"),
    }
    tracing::info!(
        units = n_units,
        took_s = start.elapsed().as_secs_f64(),
        "off-lab evaluation done"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(attack: bool, flows: u64, alerts: u64, attacker_alerted: bool) -> SessionResult {
        SessionResult {
            set: "s".into(),
            unit: "u".into(),
            session: "x".into(),
            attack,
            family: "f".into(),
            flows,
            alerts,
            alerted_flows: alerts,
            attacker: None,
            attacker_alerted,
        }
    }

    #[test]
    fn totals_count_benign_events_per_flow_and_attacks_caught() {
        let t = Totals::of(&[
            result(false, 400, 0, false),
            result(false, 600, 3, false),
            result(true, 10, 2, true),
            result(true, 10, 0, false),
        ]);
        assert_eq!((t.benign_sessions, t.benign_sessions_alerting), (2, 1));
        assert_eq!(t.per_1000(), 3.0);
        assert_eq!(
            (
                t.attack_sessions,
                t.attack_sessions_alerted,
                t.attacker_alerted
            ),
            (2, 1, 1)
        );
    }
}

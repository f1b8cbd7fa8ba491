//! Off the lab, few-shot: an operator confirms the first K flows of an attack the model did
//! not know; does the adapted model catch the rest of that capture, and what does it cost on
//! real benign traffic? `detector eval-offlab --few-shot K`.
//!
//! Per attack capture, the agent's own steps: its records are scored with the base model
//! (policy as configured, no cooldown or rate limit, as the lab's attack sessions are judged)
//! until the (K+1)-th flow begins; the incident is "every record since the attack began"
//! (`incident confirm --since`, [`incidents::select`]), its benign sample the host's recent
//! quiet records — here the nDPI *train* split's benign captures, scored by the base model, and
//! the capture's own other sources — and [`incidents::adapt_model`] adapts with the agent's
//! false-alert check. The rest of the capture is then counted with the adapted model (or the
//! base one, when the check refused it), beside the base model on the same records. The
//! adapted model then replays every benign capture of the nDPI dev split, out of the box.

use std::{
    collections::{HashSet, VecDeque},
    fmt::Write as _,
    sync::Arc,
};

use serde::Serialize;

use super::{count_from, manifest_units, run_unit, Mode, Totals, Unit};
use crate::{
    config::Config,
    detect::{Detector, Serving},
    incidents::{self, Selector},
    model::Model,
    recent::Recent,
    replay::offline_detector,
};

/// What confirming the first flows of one attack capture gave.
#[derive(Clone, Debug, Serialize)]
pub struct FewShotResult {
    pub set: String,
    pub unit: String,
    pub family: String,
    /// Distinct flows in the capture.
    pub flows: usize,
    /// Flows begun before the confirmation, and the incident's records.
    pub confirmed_flows: usize,
    pub confirmed_records: usize,
    /// "adapted", or why there was no adapted model.
    pub adaptation: String,
    /// Counted after the confirmation: flows with a final record there, then alert events and
    /// distinct flows alerted with the base model and with the model served after it.
    pub later_flows: u64,
    pub base_alerts: u64,
    pub base_alerted_flows: u64,
    pub adapted_alerts: u64,
    pub adapted_alerted_flows: u64,
    /// The nDPI dev split's benign captures with the model served after the confirmation.
    pub dev_benign_flows: u64,
    pub dev_benign_alerts: u64,
    pub dev_benign_units_alerting: u64,
}

/// The few-shot report.
#[derive(Clone, Debug, Serialize)]
pub struct FewShotReport {
    pub model: String,
    pub k: usize,
    /// The adaptation's false-alert budget (`adaptation.fpr_budget`).
    pub fpr_budget: f64,
    /// Benign rows the incidents could draw on (the nDPI train split, scored).
    pub background_records: usize,
    /// The nDPI dev benign captures with the base model, for comparison.
    pub base_dev: Totals,
    pub results: Vec<FewShotResult>,
}

/// The host's recent records before the attack: every benign capture of the nDPI train split
/// scored by `model`, each with fresh context (as `replay --detect` does per file). Their
/// times are set to 0: only the "since the attack began" window of an incident reads them,
/// and the captures' own clocks are years apart from the attacks'.
pub fn background(
    ndpi: &std::path::Path,
    model: &Arc<Model>,
    version: &str,
    cfg: &Config,
) -> anyhow::Result<VecDeque<Recent>> {
    let units = manifest_units(ndpi, "ndpi-train", &cfg.flow_config(), |_, label, split| {
        split == Some("train") && label == "benign"
    })?;
    let mut out = VecDeque::new();
    for u in &units {
        let mut det = offline_detector(model.clone(), version.into(), cfg, u.records.len())?;
        let mut sink = crate::detect::CollectedAlerts::default();
        for r in &u.records {
            if det.push(&r.key, &r.state, r.reason, None, std::time::Instant::now()) {
                det.flush(&mut sink)?;
            }
        }
        det.flush(&mut sink)?;
        out.extend(det.recent().iter().cloned().map(|mut r| {
            r.ts_unix_ns = 0;
            r
        }));
    }
    Ok(out)
}

/// Index of the first record of the capture's `(k+1)`-th flow, and the flows before it;
/// `k` is lowered to leave at least one flow after the confirmation.
fn confirmation_point(unit: &Unit, k: usize) -> (usize, usize, usize) {
    let mut seen = HashSet::new();
    let mut starts = Vec::new();
    for (i, r) in unit.records.iter().enumerate() {
        if seen.insert(r.key) {
            starts.push(i);
        }
    }
    let flows = starts.len();
    let k = k.min(flows.saturating_sub(1));
    let at = starts.get(k).copied().unwrap_or(unit.records.len());
    (at, k, flows)
}

/// Confirms the first `k` flows of each attack unit and counts the rest; then the adapted
/// model on `dev_benign`.
pub fn evaluate(
    attacks: &[Unit],
    dev_benign: &[Unit],
    background: &VecDeque<Recent>,
    model: Arc<Model>,
    version: &str,
    cfg: &Config,
    k: usize,
) -> anyhow::Result<FewShotReport> {
    let uncapped = super::uncapped(cfg);
    let path = cfg
        .scoring
        .path
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let dev = |m: &Arc<Model>, v: &str| -> anyhow::Result<Totals> {
        let mut rs = Vec::new();
        for u in dev_benign {
            rs.extend(run_unit(u, m, v, cfg, Mode::OutOfTheBox)?);
        }
        Ok(Totals::of(&rs))
    };
    let base_dev = dev(&model, version)?;
    let mut results = Vec::new();
    for unit in attacks {
        let (at, confirmed_flows, flows) = confirmation_point(unit, k);
        let base = count_from(
            unit,
            offline_detector(model.clone(), version.into(), &uncapped, 0)?,
            at,
            |_| Ok(()),
        )?;
        let mut adaptation = String::from("no flow left after the first: nothing to learn from");
        let mut confirmed_records = 0;
        let mut adapted: Option<Arc<Model>> = None;
        let det = offline_detector(model.clone(), version.into(), &uncapped, at)?;
        let later = if confirmed_flows == 0 {
            base.clone()
        } else {
            count_from(unit, det, at, |det: &mut Detector| {
                confirmed_records = det.recent().len();
                match confirm(det, background, &unit.family, cfg) {
                    Ok(m) => {
                        let m = Arc::new(m);
                        det.set_model(Serving {
                            model: m.clone(),
                            version: format!("{version}+{}", unit.family),
                            path,
                        })?;
                        adapted = Some(m);
                        adaptation = "adapted".into();
                    }
                    Err(e) => adaptation = format!("{e:#}"),
                }
                Ok(())
            })?
        };
        let sum = |rs: &[super::SessionResult], f: fn(&super::SessionResult) -> u64| {
            rs.iter().map(f).sum::<u64>()
        };
        let after_dev = match &adapted {
            Some(m) => dev(m, &format!("{version}+{}", unit.family))?,
            None => base_dev.clone(),
        };
        results.push(FewShotResult {
            set: unit.set.clone(),
            unit: unit.name.clone(),
            family: unit.family.clone(),
            flows,
            confirmed_flows,
            confirmed_records,
            adaptation,
            later_flows: sum(&later, |r| r.flows),
            base_alerts: sum(&base, |r| r.alerts),
            base_alerted_flows: sum(&base, |r| r.alerted_flows),
            adapted_alerts: sum(&later, |r| r.alerts),
            adapted_alerted_flows: sum(&later, |r| r.alerted_flows),
            dev_benign_flows: after_dev.benign_flows,
            dev_benign_alerts: after_dev.benign_alerts,
            dev_benign_units_alerting: after_dev.benign_sessions_alerting,
        });
    }
    Ok(FewShotReport {
        model: version.to_string(),
        k,
        fpr_budget: cfg.adaptation.fpr_budget,
        background_records: background.len(),
        base_dev,
        results,
    })
}

/// The incident, as `detector incident confirm --since <the attack's first record>` selects
/// it on a host whose recent records are `background` then the capture's so far, and the
/// agent's adaptation of the serving model to it.
fn confirm(
    det: &Detector,
    background: &VecDeque<Recent>,
    family: &str,
    cfg: &Config,
) -> anyhow::Result<Model> {
    let since = det
        .recent()
        .iter()
        .map(|r| r.ts_unix_ns)
        .min()
        .unwrap_or(0)
        .max(1);
    let mut recent = background.clone();
    recent.extend(det.recent().iter().cloned());
    let sel = Selector {
        since_ns: Some(since),
        ..Selector::default()
    };
    let support = incidents::select(
        &recent,
        &sel,
        det.policy.alert_threshold(),
        incidents::MAX_BENIGN,
    )?;
    let adapted = incidents::adapt_model(det.model(), &support, family, cfg.adaptation.fpr_budget)?;
    Ok(adapted.model)
}

/// The report as Markdown.
pub fn markdown(r: &FewShotReport) -> String {
    let mut s = String::new();
    let per_1000 = |alerts: u64, flows: u64| {
        if flows == 0 {
            0.0
        } else {
            1000.0 * alerts as f64 / flows as f64
        }
    };
    let adapted = r
        .results
        .iter()
        .filter(|x| x.adaptation == "adapted")
        .count();
    let mut sets: Vec<&str> = r.results.iter().map(|x| x.set.as_str()).collect();
    sets.dedup();
    let caught: Vec<String> = sets
        .iter()
        .map(|set| {
            let xs: Vec<&FewShotResult> = r.results.iter().filter(|x| x.set == *set).collect();
            let n = |f: fn(&FewShotResult) -> u64| xs.iter().filter(|x| f(x) > 0).count();
            format!(
                "{set} {} of {} with the base model, {} of {} with the model served after it",
                n(|x| x.base_alerts),
                xs.len(),
                n(|x| x.adapted_alerts),
                xs.len()
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "K = {} flows confirmed per attack capture, false-alert budget {}; {} benign records of the nDPI train split as the host's recent traffic; {} of {} adaptations accepted. Attack captures with any alert after the confirmation: **{}**. nDPI dev benign with the base model: {:.1} alert events per 1,000 flows ({} of {} captures alerting).\n",
        r.k,
        r.fpr_budget,
        r.background_records,
        adapted,
        r.results.len(),
        caught.join("; "),
        r.base_dev.per_1000(),
        r.base_dev.benign_sessions_alerting,
        r.base_dev.benign_sessions,
    );
    let _ = writeln!(
        s,
        "| collection | attack capture (family) | flow keys | confirmed: flows / records | adaptation | later flows | alerts after: base → served | flows alerted after: base → served | nDPI dev benign with the served model: per 1,000 flows (captures alerting) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for x in &r.results {
        // A refusal's reason is long (the JSON keeps it): which check refused, and its numbers.
        let adaptation = match x.adaptation.find("would rise from ") {
            Some(i) => format!(
                "refused by the false-alert check: {}",
                x.adaptation[i + "would rise ".len()..]
                    .split(", more than")
                    .next()
                    .unwrap_or_default()
            ),
            None => x.adaptation.clone(),
        };
        let _ = writeln!(
            s,
            "| {} | {} ({}) | {} | {} / {} | {} | {} | {} → {} | {} → {} | {:.1} ({}) |",
            x.set,
            x.unit,
            x.family,
            x.flows,
            x.confirmed_flows,
            x.confirmed_records,
            adaptation.replace('|', "/"),
            x.later_flows,
            x.base_alerts,
            x.adapted_alerts,
            x.base_alerted_flows,
            x.adapted_alerted_flows,
            per_1000(x.dev_benign_alerts, x.dev_benign_flows),
            x.dev_benign_units_alerting,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use detector_common::flow::{FlowKey, FlowState, Reason};

    fn unit(keys: &[u16]) -> Unit {
        Unit {
            set: "s".into(),
            name: "u".into(),
            attack: Some(true),
            family: "f".into(),
            records: keys
                .iter()
                .map(|&p| super::super::Rec {
                    key: FlowKey {
                        port_lo: p,
                        ..FlowKey::default()
                    },
                    state: FlowState::default(),
                    reason: Reason::New,
                })
                .collect(),
            labels: Vec::new(),
            session_families: Default::default(),
        }
    }

    /// The corpus's nmap version scan, which the embedded model misses, with the nDPI train
    /// split as the host's benign traffic and no dev captures (only the attack is counted).
    fn version_scan(budget: f64) -> FewShotResult {
        let shared = crate::dataset::test_util::shared_dir().join("corpus");
        let mut cfg = Config::default();
        cfg.adaptation.fpr_budget = budget;
        let (model, version) = crate::model::serving::base_model("").unwrap();
        let model = Arc::new(model);
        let bg = background(&shared.join("offlab/ndpi"), &model, &version, &cfg).unwrap();
        let attacks = manifest_units(&shared, "corpus", &cfg.flow_config(), |f, _, _| {
            f.ends_with("nmap-vsn.pcap")
        })
        .unwrap();
        assert_eq!(attacks.len(), 1);
        let r = evaluate(&attacks, &[], &bg, model, &version, &cfg, 5).unwrap();
        r.results.into_iter().next().unwrap()
    }

    #[test]
    fn a_refused_adaptation_leaves_the_base_model_serving_and_an_accepted_one_catches_the_rest() {
        let strict = version_scan(0.001);
        assert!(
            strict.adaptation.contains("more than the budget"),
            "{strict:?}"
        );
        assert_eq!(strict.base_alerts, 0, "the model misses it out of the box");
        assert_eq!(
            (strict.adapted_alerts, strict.adapted_alerted_flows),
            (strict.base_alerts, strict.base_alerted_flows),
            "refused: the base model keeps serving"
        );
        let loose = version_scan(0.01);
        assert_eq!(loose.adaptation, "adapted", "{loose:?}");
        assert_eq!(loose.confirmed_flows, 5);
        assert!(loose.adapted_alerted_flows > 0, "{loose:?}");
    }

    #[test]
    fn the_confirmation_comes_when_the_next_flow_begins_and_leaves_one_flow() {
        // Flows 1, 2, 1, 3, 2, 4: the third flow begins at record 3.
        let u = unit(&[1, 2, 1, 3, 2, 4]);
        assert_eq!(confirmation_point(&u, 2), (3, 2, 4));
        // Asking for more flows than the capture has keeps the last one for counting.
        assert_eq!(confirmation_point(&u, 10), (5, 3, 4));
        // One flow: nothing before it.
        assert_eq!(confirmation_point(&unit(&[7, 7, 7]), 5), (0, 0, 1));
    }
}

//! Confirmed incidents and the host's models: selecting an incident's flows among the recent
//! records, adapting the model from them (with the false-alert check), and keeping every model
//! version in the state directory so that a restart resumes the newest and a rollback returns
//! to the previous one.

use std::{
    collections::{HashSet, VecDeque},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{
    features::{live_names, LIVE_FEATURE_SET},
    model::{adapt, AdaptConfig, Adapted, Model, Rows},
    recent::Recent,
    state::write_atomic,
};

/// Which recent flows an incident is about. At least one selector must be given; given
/// selectors must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub alert_ids: Vec<String>,
    pub source: Option<IpAddr>,
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

/// The selection in words (alert ids, source, window), for logs and records.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.alert_ids.is_empty() {
            parts.push(format!("alerts {}", self.alert_ids.join(", ")));
        }
        if let Some(s) = self.source {
            parts.push(format!("source {s}"));
        }
        if let Some(t) = self.since_ns {
            parts.push(format!("since {t}"));
        }
        if let Some(t) = self.until_ns {
            parts.push(format!("until {t}"));
        }
        f.write_str(&parts.join("; "))
    }
}

impl Selector {
    /// A selector from a control request's fields; `source` must be an IP address.
    pub fn from_request(
        alert_ids: Vec<String>,
        source: Option<&str>,
        since_ns: Option<u64>,
        until_ns: Option<u64>,
    ) -> Result<Self, String> {
        let source = match source.map(str::parse) {
            None => None,
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return Err("source is not an IP address".into()),
        };
        Ok(Selector {
            alert_ids,
            source,
            since_ns,
            until_ns,
        })
    }

    fn is_empty(&self) -> bool {
        self.alert_ids.is_empty()
            && self.source.is_none()
            && self.since_ns.is_none()
            && self.until_ns.is_none()
    }
}

/// The rows an adaptation learns from.
#[derive(Clone, Debug, Default)]
pub struct Support {
    /// Attack rows (every record of the selected flows).
    pub positives: Vec<f32>,
    /// Distinct flows among them (K).
    pub flows: usize,
    /// Benign rows: recent records of other sources (and, selected by source, not to it either)
    /// that did not alert.
    pub benign: Vec<f32>,
}

/// Benign rows an incident's adaptation draws from the recent records at most.
pub const MAX_BENIGN: usize = 2000;

/// Picks the incident's records and a benign sample from the recent records.
pub fn select(
    recent: &VecDeque<Recent>,
    sel: &Selector,
    alert_threshold: f32,
    max_benign: usize,
) -> anyhow::Result<Support> {
    if sel.is_empty() {
        bail!("an incident needs flows: give alert ids, a source, or a time window");
    }
    // Alert ids select their flows' sources: the incident is what that source did.
    let mut sources: HashSet<IpAddr> = recent
        .iter()
        .filter(|r| {
            r.alert_id
                .as_ref()
                .is_some_and(|id| sel.alert_ids.contains(id))
        })
        .map(|r| r.src)
        .collect();
    if !sel.alert_ids.is_empty() && sources.is_empty() {
        bail!(
            "none of the alert ids {} is among the {} recent records (too old, or not an alert)",
            sel.alert_ids.join(", "),
            recent.len()
        );
    }
    if let Some(s) = sel.source {
        if !sel.alert_ids.is_empty() && !sources.contains(&s) {
            bail!("the alerts given are not from source {s}");
        }
        sources = [s].into();
    }
    let in_window = |r: &Recent| {
        sel.since_ns.is_none_or(|t| r.ts_unix_ns >= t)
            && sel.until_ns.is_none_or(|t| r.ts_unix_ns <= t)
    };
    // A source address selects the flows it initiated and the flows it answered: a scanner's
    // probes, and also an exfiltration's upload or a beacon, which the host itself opens
    // towards the attacker's address.
    let by_source = sel.source.is_some();
    let involves = |r: &Recent, a: &HashSet<IpAddr>| a.contains(&r.src) || a.contains(&r.dst);
    let chosen = |r: &Recent| {
        let who = if sources.is_empty() {
            true
        } else if by_source {
            involves(r, &sources)
        } else {
            sources.contains(&r.src)
        };
        who && in_window(r)
    };
    let mut support = Support::default();
    let mut flows = HashSet::new();
    let mut incident_sources = HashSet::new();
    for r in recent.iter().filter(|r| chosen(r)) {
        support.positives.extend_from_slice(&r.row);
        flows.insert(r.key);
        incident_sources.insert(r.src);
    }
    if by_source {
        incident_sources.extend(sources.iter().copied());
    }
    support.flows = flows.len();
    if support.flows == 0 {
        bail!(
            "no recent flow matches the incident's selectors ({} recent records)",
            recent.len()
        );
    }
    support.benign = benign_sample(recent, alert_threshold, max_benign, |r| {
        incident_sources.contains(&r.src) || by_source && involves(r, &sources)
    });
    Ok(support)
}

/// The host's benign sample: recent records that raised no alert and scored below
/// `alert_threshold`, but not those `exclude` names; at most `max` rows, spread evenly over the
/// recent past rather than only the latest burst. Local adaptation holds part of it back for
/// its false-alert check; a fleet model is checked on it whole.
pub fn benign_sample(
    recent: &VecDeque<Recent>,
    alert_threshold: f32,
    max: usize,
    exclude: impl Fn(&Recent) -> bool,
) -> Vec<f32> {
    let benign: Vec<&Recent> = recent
        .iter()
        .filter(|r| !exclude(r) && r.alert_id.is_none() && r.score < alert_threshold)
        .collect();
    let step = (benign.len() / max.max(1)).max(1);
    let mut out = Vec::new();
    for r in benign.iter().step_by(step).take(max) {
        out.extend_from_slice(&r.row);
    }
    out
}

/// Adapts `model` to an incident's support.
pub fn adapt_model(
    model: &Model,
    support: &Support,
    family: &str,
    fpr_budget: f64,
) -> anyhow::Result<Adapted> {
    let names = live_names();
    let pos = Rows {
        feature_set: LIVE_FEATURE_SET,
        features: &names,
        values: &support.positives,
    };
    let benign = Rows {
        feature_set: LIVE_FEATURE_SET,
        features: &names,
        values: &support.benign,
    };
    let cfg = AdaptConfig {
        fpr_budget,
        family: Some(family.to_string()),
        ..AdaptConfig::default()
    };
    adapt(model, &pos, &benign, &cfg).map_err(|e| anyhow::anyhow!("adaptation refused: {e}"))
}

/// One model in a host's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: String,
    /// File in the models directory ("" for the embedded default).
    pub file: String,
    pub parent: Option<String>,
    pub created_unix_ns: u64,
    /// The incident family it was adapted for.
    pub family: Option<String>,
    /// Attack flows it was adapted from.
    pub flows: usize,
    /// The adaptation's report (false-alert check etc.).
    pub report: Option<serde_json::Value>,
    /// Exemplar rows of the incident (raw, concatenated), to name future alerts.
    #[serde(default)]
    pub signature: Vec<f32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HistoryFile {
    current: Option<String>,
    entries: Vec<HistoryEntry>,
}

/// The host's models under `<state_dir>/models/`.
pub struct ModelStore {
    dir: PathBuf,
    file: HistoryFile,
    keep: usize,
}

impl ModelStore {
    /// Opens (creating) the store; a damaged history is an error that names the file.
    pub fn open(state_dir: &Path, keep: usize) -> anyhow::Result<Self> {
        let dir = state_dir.join("models");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("history.json");
        let file = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a model history", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HistoryFile::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { dir, file, keep })
    }

    /// Entries, oldest first.
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.file.entries
    }

    /// The version in use, if the host has adapted models.
    pub fn current(&self) -> Option<&HistoryEntry> {
        let v = self.file.current.as_ref()?;
        self.file.entries.iter().find(|e| &e.version == v)
    }

    /// Loads the current model; None when the host uses the base model.
    pub fn load_current(&self) -> anyhow::Result<Option<(Model, HistoryEntry)>> {
        let Some(e) = self.current().cloned() else {
            return Ok(None);
        };
        let path = self.dir.join(&e.file);
        let m = Model::load(&path)
            .with_context(|| format!("cannot load the host model {}", path.display()))?;
        Ok(Some((m, e)))
    }

    /// The signatures of every family the current model line was adapted for.
    pub fn signatures(&self) -> Vec<(String, Vec<f32>)> {
        let mut out = Vec::new();
        let mut cur = self.current();
        while let Some(e) = cur {
            if let Some(f) = &e.family {
                if !e.signature.is_empty() && !out.iter().any(|(g, _): &(String, Vec<f32>)| g == f)
                {
                    out.push((f.clone(), e.signature.clone()));
                }
            }
            cur = e
                .parent
                .as_ref()
                .and_then(|p| self.file.entries.iter().find(|x| &x.version == p));
        }
        out
    }

    /// Saves an adapted model as the new current version (model file first, then the history:
    /// a crash in between leaves the previous version current).
    pub fn add(&mut self, model: &Model, mut entry: HistoryEntry) -> anyhow::Result<HistoryEntry> {
        let n = self
            .file
            .entries
            .iter()
            .filter_map(|e| {
                e.version
                    .strip_prefix("host-")
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0)
            + 1;
        entry.version = format!("host-{n}");
        entry.file = format!("{}.safetensors", entry.version);
        let bytes = model
            .to_bytes()
            .context("cannot serialise the adapted model")?;
        write_atomic(&self.dir.join(&entry.file), &bytes)?;
        let mut next = self.file.clone();
        next.entries.push(entry.clone());
        next.current = Some(entry.version.clone());
        self.write(&next)?;
        self.file = next;
        self.prune();
        Ok(entry)
    }

    /// Makes the current version's parent current again; returns it (None = the base model).
    pub fn rollback(&mut self) -> anyhow::Result<Option<HistoryEntry>> {
        let Some(cur) = self.current().cloned() else {
            bail!("nothing to roll back: the host uses its base model");
        };
        let mut next = self.file.clone();
        next.current = cur.parent.clone().filter(|p| p.starts_with("host-"));
        self.write(&next)?;
        self.file = next;
        Ok(self.current().cloned())
    }

    fn write(&self, file: &HistoryFile) -> anyhow::Result<()> {
        write_atomic(
            &self.dir.join("history.json"),
            &serde_json::to_vec_pretty(file)?,
        )
    }

    /// Deletes model files beyond the newest `keep` (never the current one or its parent).
    fn prune(&mut self) {
        let protected: HashSet<String> = self
            .current()
            .map(|c| {
                [Some(c.version.clone()), c.parent.clone()]
                    .into_iter()
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        let excess = self.file.entries.len().saturating_sub(self.keep);
        let doomed: Vec<HistoryEntry> = self
            .file
            .entries
            .iter()
            .take(excess)
            .filter(|e| !protected.contains(&e.version))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return;
        }
        let mut next = self.file.clone();
        next.entries.retain(|e| !doomed.contains(e));
        if self.write(&next).is_ok() {
            for e in &doomed {
                let _ = std::fs::remove_file(self.dir.join(&e.file));
            }
            self.file = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::LIVE_COUNT;
    use detector_common::flow::FlowKey;

    fn rec(src: &str, t: u64, alert: Option<&str>, score: f32, v: f32) -> Recent {
        let key = FlowKey {
            port_lo: t as u16,
            ..FlowKey::default()
        };
        Recent {
            ts_unix_ns: t,
            src: src.parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            key,
            alert_id: alert.map(str::to_string),
            score,
            row: vec![v; LIVE_COUNT].into(),
        }
    }

    #[test]
    fn a_source_selects_the_flows_the_host_opened_towards_it() {
        // The host (10.0.0.1) uploads to the attacker: the attacker is the responder.
        let mut upload = rec("10.0.0.1", 1, None, 0.2, 1.0);
        upload.dst = "198.51.100.7".parse().unwrap();
        let recent: VecDeque<Recent> = vec![
            upload,
            rec("10.0.0.9", 2, None, 0.1, 2.0),
            rec("198.51.100.7", 3, None, 0.3, 3.0),
        ]
        .into();
        let s = select(
            &recent,
            &Selector {
                source: Some("198.51.100.7".parse().unwrap()),
                ..Default::default()
            },
            0.5,
            100,
        )
        .unwrap();
        assert_eq!(s.flows, 2, "the upload and the attacker's own flow");
        assert_eq!(s.positives[0], 1.0);
        assert_eq!(
            s.benign,
            vec![2.0; LIVE_COUNT],
            "only the flow not involving it"
        );
    }

    #[test]
    fn selection_by_alert_source_and_window() {
        let recent: VecDeque<Recent> = vec![
            rec("10.0.0.9", 1, None, 0.1, 1.0),
            rec("10.0.0.66", 2, Some("a-1"), 0.9, 2.0),
            rec("10.0.0.66", 3, None, 0.3, 3.0),
            rec("10.0.0.7", 4, None, 0.2, 4.0),
            rec("10.0.0.8", 5, Some("a-2"), 0.95, 5.0),
        ]
        .into();
        let s = select(
            &recent,
            &Selector {
                alert_ids: vec!["a-1".into()],
                ..Default::default()
            },
            0.5,
            100,
        )
        .unwrap();
        assert_eq!(s.flows, 2, "every recent flow of the alert's source");
        assert_eq!(
            s.benign.len() / LIVE_COUNT,
            2,
            "other sources, not alerting"
        );
        let s = select(
            &recent,
            &Selector {
                source: Some("10.0.0.66".parse().unwrap()),
                since_ns: Some(3),
                ..Default::default()
            },
            0.5,
            100,
        )
        .unwrap();
        assert_eq!(s.flows, 1);
        assert_eq!(s.positives[0], 3.0);
        assert!(select(&recent, &Selector::default(), 0.5, 10)
            .unwrap_err()
            .to_string()
            .contains("needs flows"));
        let err = select(
            &recent,
            &Selector {
                alert_ids: vec!["nope".into()],
                ..Default::default()
            },
            0.5,
            10,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = select(
            &recent,
            &Selector {
                source: Some("192.0.2.1".parse().unwrap()),
                ..Default::default()
            },
            0.5,
            10,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no recent flow"), "{err}");
    }
}

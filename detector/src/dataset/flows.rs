//! Datasets from the project's own flow records (agent output, lab recordings, `detector
//! replay`): every record becomes a row of the live feature set, its context computed by the
//! same [`Featurizer`](crate::features::Featurizer) the agent scores with, in record order.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use detector_common::flow::Reason;
use serde::Deserialize;

use super::Dataset;
use crate::{
    features::{self, Featurizer, LIVE_COUNT},
    record::FlowJson,
};

/// Which records become rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rows {
    /// Every record (new, early, fin, rst, active, final): what the agent scores live.
    All,
    /// Only each flow's final record.
    Final,
}

/// Label for records that carry no `"lab"` object.
#[derive(Clone, Debug)]
pub struct DefaultLabel {
    pub attack: bool,
    pub family: String,
    pub session: String,
}

/// Options of [`from_files`].
#[derive(Clone, Debug)]
pub struct FlowsOptions {
    pub rows: Rows,
    /// Used for records without a `"lab"` object; None makes such records an error.
    pub default_label: Option<DefaultLabel>,
    /// Keep lab records labelled "unattributed" (as benign); else they are skipped.
    pub keep_unattributed: bool,
    /// Which sessions become rows (the others still feed the context windows).
    pub sessions: Sessions,
}

/// The `"lab"` object of a lab recording's record (see docs/lab.md).
#[derive(Clone, Debug, Deserialize)]
pub struct LabLabel {
    /// "attack", "benign" or "unattributed".
    pub label: String,
    pub family: Option<String>,
    pub variant: Option<String>,
    pub session: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
}

/// What [`from_files`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowsSummary {
    pub records: u64,
    pub rows: u64,
    pub skipped_unattributed: u64,
    /// Records of sessions outside `FlowsOptions::sessions`.
    pub skipped_test_split: u64,
    /// Captures that could not be read ([`from_captures`]).
    pub skipped_captures: u64,
    pub other_lines: u64,
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(zstd::Decoder::new(f).with_context(|| format!("{}: not zstd", path.display()))?)
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, r)))
}

/// One flow record of a recording, with its lab label if it has one.
pub struct LabeledRecord {
    pub key: detector_common::flow::FlowKey,
    pub state: detector_common::flow::FlowState,
    pub reason: Reason,
    pub is_final: bool,
    /// The lab's label of a lab recording's record.
    pub lab: Option<LabLabel>,
}

/// Calls `f` with every flow record of a JSON-lines file (optionally `.zst`), in order, and
/// the place (`file:line`) it came from; other lines are counted in `other_lines`.
pub fn for_each_record(
    path: &Path,
    other_lines: &mut u64,
    mut f: impl FnMut(&str, LabeledRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let reader = open(path)?;
    for (n, line) in reader.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let head: Line =
            serde_json::from_str(&line).with_context(|| format!("{}: not a JSON record", at()))?;
        if head.kind != "flow" {
            *other_lines += 1;
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line).with_context(at)?;
        let json: FlowJson = serde_json::from_value(value.clone())
            .with_context(|| format!("{}: not a flow record", at()))?;
        let reason = reason_of(&json.reason)
            .with_context(|| format!("{}: unknown reason {:?}", at(), json.reason))?;
        let lab = match value.get("lab") {
            Some(lab) => {
                let lab: LabLabel = serde_json::from_value(lab.clone())
                    .with_context(|| format!("{}: bad \"lab\" object", at()))?;
                Some(lab)
            }
            None => None,
        };
        let (key, state) = json.to_state();
        f(
            &at(),
            LabeledRecord {
                key,
                state,
                reason,
                is_final: json.is_final,
                lab,
            },
        )?;
    }
    Ok(())
}

/// Whether a lab session (`scenario/N`) belongs to the recording's test split: the sessions
/// N ≡ 3 (mod 5) — the third of each scenario, then every fifth — are never trained on
/// (`cargo xtask train-default`) and are what `detector eval-offlab` scores of the lab.
pub fn is_test_session(session: &str) -> bool {
    session
        .rsplit_once('/')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .is_some_and(|n| n % 5 == 3)
}

/// Which lab sessions become rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sessions {
    All,
    /// All but the test split ([`is_test_session`]).
    Train,
    /// Only the test split.
    Test,
}

/// Builds one dataset of the live feature set from JSON-lines files (optionally `.zst`), read
/// in the order given; each file's records in their order.
pub fn from_files(
    paths: &[PathBuf],
    opts: &FlowsOptions,
) -> anyhow::Result<(Dataset, FlowsSummary)> {
    let mut ds = Dataset::new(features::LIVE_FEATURE_SET, features::live_names());
    let mut sum = FlowsSummary::default();
    let mut v = vec![0f32; LIVE_COUNT];
    for path in paths {
        // Context windows do not carry over between recordings.
        let mut fz = Featurizer::default();
        let mut other = 0;
        for_each_record(path, &mut other, |at, r| {
            sum.records += 1;
            // Every record feeds the context, whether or not it becomes a row.
            fz.features(&r.key, &r.state, r.reason, &mut v);
            if opts.rows == Rows::Final && !r.is_final {
                return Ok(());
            }
            let (label, family, attack, session) = match r.lab {
                Some(LabLabel {
                    label,
                    family,
                    variant,
                    session,
                }) => match label.as_str() {
                    "attack" | "benign" => {
                        let attack = label == "attack";
                        let family = family.unwrap_or_else(|| {
                            if attack { "other-attack" } else { "benign" }.into()
                        });
                        (
                            attack as u8,
                            if attack {
                                family.clone()
                            } else {
                                "benign".to_string()
                            },
                            variant.unwrap_or(family),
                            session.unwrap_or_else(|| "none".into()),
                        )
                    }
                    "unattributed" if opts.keep_unattributed => (
                        0,
                        "benign".into(),
                        "unattributed".into(),
                        "unattributed".into(),
                    ),
                    "unattributed" => {
                        sum.skipped_unattributed += 1;
                        return Ok(());
                    }
                    other => bail!("{at}: unknown lab label {other:?}"),
                },
                None => match &opts.default_label {
                    Some(d) => (
                        d.attack as u8,
                        d.family.clone(),
                        d.family.clone(),
                        d.session.clone(),
                    ),
                    None => bail!("{at}: record has no \"lab\" label; give --label and --family"),
                },
            };
            let wanted = match opts.sessions {
                Sessions::All => true,
                Sessions::Train => !is_test_session(&session),
                Sessions::Test => is_test_session(&session),
            };
            if !wanted {
                sum.skipped_test_split += 1;
                return Ok(());
            }
            ds.try_push(
                &v,
                label,
                &family,
                &attack,
                &session,
                Some(r.state.first_seen_ns),
            )
            .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            sum.rows += 1;
            Ok(())
        })?;
        sum.other_lines += other;
    }
    Ok((ds, sum))
}

/// Builds one dataset of the live feature set from captures: each replayed through the
/// kernel's flow logic (`replay`), its records featurised with fresh context windows, every
/// record (or each flow's final one) a row labelled `label`, the capture's file name its
/// session.
pub fn from_captures(
    paths: &[PathBuf],
    rows: Rows,
    attack: bool,
    family: &str,
    flow: &detector_common::flow::FlowConfig,
) -> anyhow::Result<(Dataset, FlowsSummary)> {
    let mut ds = Dataset::new(features::LIVE_FEATURE_SET, features::live_names());
    let mut sum = FlowsSummary::default();
    let mut v = vec![0f32; LIVE_COUNT];
    for path in paths {
        let session = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut fz = Featurizer::default();
        let mut one = Dataset::new(features::LIVE_FEATURE_SET, features::live_names());
        let (mut records, mut n) = (0, 0);
        let replayed = crate::replay::replay_file(path, flow, |k, s, r| {
            records += 1;
            fz.features(k, s, r, &mut v);
            if rows == Rows::Final && !r.is_final() {
                return Ok(());
            }
            one.try_push(
                &v,
                attack as u8,
                family,
                family,
                &session,
                Some(s.first_seen_ns),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            n += 1;
            Ok(())
        });
        // A capture replay cannot read (a link type it does not take) is named and left
        // out, whole: the others still make the dataset.
        if let Err(e) = replayed {
            eprintln!("skipped {}: {e:#}", path.display());
            sum.skipped_captures += 1;
            continue;
        }
        ds.append(&one)?;
        sum.records += records;
        sum.rows += n;
    }
    if ds.rows() == 0 && sum.skipped_captures > 0 {
        bail!("none of the {} captures could be read", paths.len());
    }
    Ok((ds, sum))
}

/// The reason code of a record's `reason` field.
pub fn reason_of(name: &str) -> Option<Reason> {
    (1..=u8::MAX)
        .filter_map(Reason::from_u8)
        .find(|r| r.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn flow_line(
        reason: &str,
        is_final: bool,
        src: &str,
        sport: u16,
        dport: u16,
        lab: &str,
    ) -> String {
        format!(
            r#"{{"type":"flow","reason":"{reason}","final":{is_final},"first_seen_ns":1000,"last_seen_ns":2000,"duration_ns":1000,"family":4,"proto":6,"proto_name":"tcp","vlan":0,"src_addr":"{src}","src_port":{sport},"dst_addr":"10.0.0.1","dst_port":{dport},"packets_fwd":1,"packets_rev":0,"bytes_fwd":60,"bytes_rev":0,"payload_bytes_fwd":0,"payload_bytes_rev":0,"tcp_flags_fwd":2,"tcp_flags_rev":0,"min_len":60,"max_len":60,"len_hist":[1,0,0,0,0],"max_window_fwd":1000,"max_window_rev":0,"retransmits_fwd":0,"retransmits_rev":0,"icmp_type":0,"icmp_code":0,"iat_min_ns":0,"iat_max_ns":0,"iat_sumsq_us":0,"first_sizes":[60],"first_dirs":[0],"first_gaps_us":[0],"process":null{lab}}}"#
        )
    }

    #[test]
    fn lab_records_become_labelled_rows_with_context() {
        let dir = std::env::temp_dir().join(format!("detector-flows-{}", std::process::id()));
        let atk = r#","lab":{"label":"attack","family":"scan","variant":"scan-syn","session":"s1","role":"attacker"}"#;
        let un = r#","lab":{"label":"unattributed","role":"unknown"}"#;
        let mut text = String::new();
        for p in 0..5 {
            text += &flow_line("new", false, "10.0.0.66", 40000, 100 + p, atk);
            text.push('\n');
        }
        text += &flow_line("idle_timeout", true, "10.0.0.66", 40000, 100, atk);
        text += "\n{\"type\":\"process\",\"event\":\"exec\"}\n";
        text += &flow_line("new", false, "10.0.0.7", 5353, 53, un);
        text.push('\n');
        let p = write(&dir, "rec.jsonl", &text);
        let opts = FlowsOptions {
            rows: Rows::All,
            default_label: None,
            keep_unattributed: false,
            sessions: Sessions::All,
        };
        let (ds, sum) = from_files(std::slice::from_ref(&p), &opts).unwrap();
        assert_eq!(
            (
                sum.records,
                sum.rows,
                sum.skipped_unattributed,
                sum.other_lines
            ),
            (7, 6, 1, 1)
        );
        assert_eq!(ds.source, features::LIVE_FEATURE_SET);
        assert_eq!(ds.family_of(0), "scan");
        assert_eq!(ds.attack_of(0), "scan-syn");
        let ports = features::live_names()
            .iter()
            .position(|n| n == "src_distinct_dst_ports")
            .unwrap();
        assert_eq!(
            ds.row(4)[ports],
            5.0,
            "context: five ports by the fifth record"
        );
        let (fin, _) = from_files(
            &[p],
            &FlowsOptions {
                rows: Rows::Final,
                ..opts
            },
        )
        .unwrap();
        assert_eq!(fin.rows(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unlabelled_records_need_a_default_label() {
        let dir = std::env::temp_dir().join(format!("detector-flows-nolab-{}", std::process::id()));
        let p = write(
            &dir,
            "host.jsonl",
            &(flow_line("new", false, "10.0.0.9", 1, 2, "") + "\n"),
        );
        let opts = FlowsOptions {
            rows: Rows::All,
            default_label: None,
            keep_unattributed: false,
            sessions: Sessions::All,
        };
        let err = from_files(std::slice::from_ref(&p), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host.jsonl:1") && err.contains("--label"),
            "{err}"
        );
        let opts = FlowsOptions {
            default_label: Some(DefaultLabel {
                attack: false,
                family: "benign".into(),
                session: "host".into(),
            }),
            ..opts
        };
        assert_eq!(from_files(&[p], &opts).unwrap().0.rows(), 1);
        let bad = write(
            &dir,
            "bad.jsonl",
            "{\"type\":\"flow\",\"reason\":\"early\"}\n",
        );
        let err = format!("{:#}", from_files(&[bad], &opts).unwrap_err());
        assert!(
            err.contains("bad.jsonl:1") && err.contains("not a flow record"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_test_split_is_every_session_three_mod_five() {
        let test: Vec<&str> = [
            "scan-syn/1",
            "scan-syn/3",
            "scan-syn/8",
            "benign-dns/13",
            "x/5",
            "none",
            "a/b",
        ]
        .into_iter()
        .filter(|s| is_test_session(s))
        .collect();
        assert_eq!(test, ["scan-syn/3", "scan-syn/8", "benign-dns/13"]);
    }
}

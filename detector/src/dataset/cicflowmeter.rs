//! CICFlowMeter CSVs in the CICIDS2017 layout: the raw "TrafficLabelling" files (85 columns,
//! with Flow ID, addresses, ports, protocol and timestamp), the "MachineLearningCVE" files (78
//! features and Label) and cleaned variants such as the corpus sample (78 features, `Attack
//! Type`, and a 0/1 `Label`).
//!
//! Header names are trimmed (the raw files pad them with spaces) and a repeated name gets a
//! `.1` suffix (`Fwd Header Length` appears twice), as pandas does. Every layout yields the
//! same 78 features, so files of different layouts can be appended to one dataset.

use std::collections::HashMap;

use csv::ByteRecord;

use super::{
    families::LabelTable,
    rows::{header_names, require_columns, text, CellError, RowBuf, RowParser},
};

/// Feature-set name.
pub const SOURCE: &str = "cicflowmeter";

/// The feature columns, in the order of the MachineLearningCVE files. `Destination Port` is
/// kept, as in the literature: it names the service, not a host (but see
/// docs/dataset-format.md on shortcuts).
pub const FEATURES: [&str; 78] = [
    "Destination Port",
    "Flow Duration",
    "Total Fwd Packets",
    "Total Backward Packets",
    "Total Length of Fwd Packets",
    "Total Length of Bwd Packets",
    "Fwd Packet Length Max",
    "Fwd Packet Length Min",
    "Fwd Packet Length Mean",
    "Fwd Packet Length Std",
    "Bwd Packet Length Max",
    "Bwd Packet Length Min",
    "Bwd Packet Length Mean",
    "Bwd Packet Length Std",
    "Flow Bytes/s",
    "Flow Packets/s",
    "Flow IAT Mean",
    "Flow IAT Std",
    "Flow IAT Max",
    "Flow IAT Min",
    "Fwd IAT Total",
    "Fwd IAT Mean",
    "Fwd IAT Std",
    "Fwd IAT Max",
    "Fwd IAT Min",
    "Bwd IAT Total",
    "Bwd IAT Mean",
    "Bwd IAT Std",
    "Bwd IAT Max",
    "Bwd IAT Min",
    "Fwd PSH Flags",
    "Bwd PSH Flags",
    "Fwd URG Flags",
    "Bwd URG Flags",
    "Fwd Header Length",
    "Bwd Header Length",
    "Fwd Packets/s",
    "Bwd Packets/s",
    "Min Packet Length",
    "Max Packet Length",
    "Packet Length Mean",
    "Packet Length Std",
    "Packet Length Variance",
    "FIN Flag Count",
    "SYN Flag Count",
    "RST Flag Count",
    "PSH Flag Count",
    "ACK Flag Count",
    "URG Flag Count",
    "CWE Flag Count",
    "ECE Flag Count",
    "Down/Up Ratio",
    "Average Packet Size",
    "Avg Fwd Segment Size",
    "Avg Bwd Segment Size",
    "Fwd Header Length.1",
    "Fwd Avg Bytes/Bulk",
    "Fwd Avg Packets/Bulk",
    "Fwd Avg Bulk Rate",
    "Bwd Avg Bytes/Bulk",
    "Bwd Avg Packets/Bulk",
    "Bwd Avg Bulk Rate",
    "Subflow Fwd Packets",
    "Subflow Fwd Bytes",
    "Subflow Bwd Packets",
    "Subflow Bwd Bytes",
    "Init_Win_bytes_forward",
    "Init_Win_bytes_backward",
    "act_data_pkt_fwd",
    "min_seg_size_forward",
    "Active Mean",
    "Active Std",
    "Active Max",
    "Active Min",
    "Idle Mean",
    "Idle Std",
    "Idle Max",
    "Idle Min",
];

/// Identifiers and columns of the raw layout outside the common feature set: never features.
/// `Protocol` is left out because the MachineLearningCVE files lack it.
pub const NOT_FEATURES: [&str; 6] = [
    "Flow ID",
    "Source IP",
    "Source Port",
    "Destination IP",
    "Timestamp",
    "Protocol",
];

/// Column with the label string, or 0/1 when `Attack Type` holds the string.
pub const LABEL: &str = "Label";
/// Column of cleaned variants holding the label string.
pub const ATTACK_TYPE: &str = "Attack Type";

struct CicParser {
    columns: Vec<String>,
    feature_cols: Vec<usize>,
    label: Option<usize>,
    attack_type: Option<usize>,
    src_ip: Option<usize>,
    dst_ip: Option<usize>,
    timestamp: Option<usize>,
    ignored: Vec<String>,
}

/// Whether a first line looks like a CICFlowMeter header.
pub(crate) fn sniff(fields: &[String]) -> bool {
    let has = |name: &str| fields.iter().any(|f| f == name);
    has("flow duration") || has("fwd header length") || has("flow id")
}

/// Builds the parser from the header row (this layout always has one).
pub(crate) fn parser(first: &ByteRecord, file: &str) -> anyhow::Result<(Box<dyn RowParser>, bool)> {
    let columns = header_names(first);
    let mut required: Vec<&str> = FEATURES.to_vec();
    if !columns.iter().any(|c| c == ATTACK_TYPE) {
        required.push(LABEL);
    }
    require_columns(file, "CICFlowMeter (CICIDS2017)", &columns, &required)?;
    let index: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let feature_cols = FEATURES.iter().map(|f| index[f]).collect();
    let find = |name: &str| index.get(name).copied();
    let ignored = columns
        .iter()
        .filter(|c| {
            !FEATURES.contains(&c.as_str())
                && !NOT_FEATURES.contains(&c.as_str())
                && *c != LABEL
                && *c != ATTACK_TYPE
        })
        .cloned()
        .collect();
    let (src_ip, dst_ip) = match (find("Source IP"), find("Destination IP")) {
        (Some(s), Some(d)) => (Some(s), Some(d)),
        _ => (None, None),
    };
    Ok((
        Box::new(CicParser {
            feature_cols,
            label: find(LABEL),
            attack_type: find(ATTACK_TYPE),
            src_ip,
            dst_ip,
            timestamp: find("Timestamp"),
            ignored,
            columns,
        }),
        true,
    ))
}

impl RowParser for CicParser {
    fn source(&self) -> &str {
        SOURCE
    }

    fn feature_names(&self) -> Vec<String> {
        FEATURES.iter().map(|f| f.to_string()).collect()
    }

    fn column_names(&self) -> &[String] {
        &self.columns
    }

    fn expected_len(&self) -> usize {
        self.columns.len()
    }

    fn label_table(&self) -> LabelTable {
        LabelTable::CicFlowMeter
    }

    fn has_timestamps(&self) -> bool {
        self.timestamp.is_some()
    }

    fn ignored_columns(&self) -> Vec<String> {
        self.ignored.clone()
    }

    fn session_rule(&self) -> String {
        if self.src_ip.is_some() {
            "(Source IP, Destination IP, label)".into()
        } else {
            String::new()
        }
    }

    fn parse(&mut self, rec: &ByteRecord, row: &mut RowBuf) -> Result<(), CellError> {
        for &col in &self.feature_cols {
            row.number(rec, col)?;
        }
        let label_cell = self.label.map(|c| (c, text(rec, c)));
        let binary = label_cell.as_ref().and_then(|(_, t)| match t.as_ref() {
            "0" => Some(0u8),
            "1" => Some(1u8),
            _ => None,
        });
        match (self.attack_type, &label_cell, binary) {
            // Cleaned layout: the string in Attack Type, 0/1 in Label.
            (Some(a), _, Some(b)) => {
                row.label = Some(b);
                row.attack.push_str(&text(rec, a));
            }
            // The string in Label (raw layouts, or cleaned ones with a grouped Attack Type).
            (_, Some((_, t)), None) => row.attack.push_str(t),
            (Some(a), None, None) => row.attack.push_str(&text(rec, a)),
            // Only a 0/1 Label: the attack is not named.
            (None, Some(_), Some(b)) => {
                row.label = Some(b);
                row.attack
                    .push_str(if b == 0 { "benign" } else { "attack" });
            }
            (None, None, _) => return Err(CellError::row("no label column")),
        }
        if let (Some(s), Some(d)) = (self.src_ip, self.dst_ip) {
            let (src, dst) = (text(rec, s), text(rec, d));
            if src.is_empty() || dst.is_empty() {
                return Err(CellError::at(
                    if src.is_empty() { s } else { d },
                    "empty address",
                ));
            }
            let attack = super::families::normalise_label(&row.attack);
            row.session = Some(format!("{src}>{dst}/{attack}"));
        }
        if let Some(t) = self.timestamp {
            let cell = text(rec, t);
            row.ts_ns = Some(parse_timestamp(&cell).ok_or_else(|| {
                CellError::at(
                    t,
                    format!("`{cell}` is not a d/m/yyyy H:MM[:SS] [AM|PM] timestamp"),
                )
            })?);
        }
        Ok(())
    }
}

/// Parses CICFlowMeter timestamps: `d/m/yyyy H:MM[:SS[.frac]] [AM|PM]` (CICIDS2017 and
/// CSE-CIC-IDS2018) or `yyyy-mm-dd HH:MM:SS[.frac]`, as UTC: the files carry local time without
/// a zone, and some CICIDS2017 files use a 12-hour clock without AM/PM, so times are only good
/// for ordering within a file and for gaps.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let date = parts.next()?;
    let time = parts.next().unwrap_or("0:00");
    let ampm = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let (y, m, d) = if date.contains('/') {
        let mut it = date.split('/');
        let d: u32 = it.next()?.parse().ok()?;
        let m: u32 = it.next()?.parse().ok()?;
        let y: i64 = it.next()?.parse().ok()?;
        (it.next().is_none()).then_some((y, m, d))?
    } else {
        let mut it = date.split('-');
        let y: i64 = it.next()?.parse().ok()?;
        let m: u32 = it.next()?.parse().ok()?;
        let d: u32 = it.next()?.parse().ok()?;
        (it.next().is_none()).then_some((y, m, d))?
    };
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut it = time.split(':');
    let mut h: u64 = it.next()?.parse().ok()?;
    let min: u64 = it.next()?.parse().ok()?;
    let sec: f64 = match it.next() {
        Some(s) => s.parse().ok()?,
        None => 0.0,
    };
    if it.next().is_some() || !(0.0..61.0).contains(&sec) || min > 59 {
        return None;
    }
    match ampm.map(|a| a.to_ascii_uppercase()) {
        None => {}
        Some(a) if a == "AM" && (1..=12).contains(&h) => h %= 12,
        Some(a) if a == "PM" && (1..=12).contains(&h) => h = h % 12 + 12,
        Some(_) => return None,
    }
    if h > 23 {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    let days = u64::try_from((date - time::OffsetDateTime::UNIX_EPOCH.date()).whole_days()).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60;
    Some(secs * 1_000_000_000 + (sec * 1e9).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{
        import::{import_file, Format, ImportOptions, OnError, INF_SENTINEL},
        test_util::{corpus, temp_dir},
    };

    #[test]
    fn cicids2017_sample_imports_all_rows() {
        let path = corpus("cicids2017-subset--cleaned_dataset.csv");
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(summary.format, Format::CicFlowMeter);
        // The sample has 276 rows, one of them (a benign flow) with a damaged cell: `67lo` for
        // Bwd Packet Length Min on line 66. It is reported and skipped, not guessed.
        assert_eq!(summary.rows_read, 276, "{summary}");
        assert_eq!(ds.rows(), 275, "{summary}");
        assert_eq!(summary.rows_skipped, 1, "{summary}");
        assert!(
            summary.errors[0].to_string().ends_with(
                "cicids2017-subset--cleaned_dataset.csv:66: column 12 `Bwd Packet Length Min`: \
                 `67lo` is not a number"
            ),
            "{summary}"
        );
        let fail = ImportOptions {
            on_error: OnError::Fail,
            ..Default::default()
        };
        let err = import_file(&path, &fail).unwrap_err();
        assert_eq!(
            err.downcast_ref::<crate::dataset::RowError>().unwrap().line,
            66
        );
        assert!(summary.unknown_attacks.is_empty(), "{summary}");
        assert!(summary.ignored_columns.is_empty(), "{summary}");
        assert_eq!(ds.n_features(), 78);
        assert!(ds.feature_names.iter().any(|n| n == "Fwd Header Length.1"));
        let fam = &summary.rows_per_family;
        let expected = [
            ("benign", 135),
            ("dos", 40),
            ("ddos", 10),
            ("scan", 10),
            ("brute-force", 20),
            ("web-attack", 30),
            ("botnet", 10),
            ("infiltration", 10),
            ("heartbleed", 10),
        ];
        for (f, n) in expected {
            assert_eq!(fam.get(f), Some(&n), "{f}: {summary}");
        }
        assert_eq!(fam.len(), expected.len());
        assert!(ds
            .attack_names
            .iter()
            .any(|a| a == "web attack - sql injection"));
        assert!(ds.attack_names.iter().any(|a| a == "dos slowloris"));
        assert_eq!(ds.label.iter().filter(|&&l| l == 1).count(), 140);
        assert_eq!(ds.attack_of(0), "heartbleed");
        assert_eq!(ds.row(0)[0], 444.0);
        assert_eq!(ds.row(0)[1], 119_302_728.0);
        assert!(ds.features.iter().all(|v| v.is_finite()));
        assert!(ds.timestamp_ns.is_none());
        // Pseudo-sessions: no addresses in this layout.
        assert!(
            ds.session_of(0).ends_with("/heartbleed/0"),
            "{}",
            ds.session_of(0)
        );
    }

    /// The raw TrafficLabelling header: identifiers first, names padded with spaces, `Fwd
    /// Header Length` twice.
    fn raw_header() -> Vec<String> {
        let mut h: Vec<String> = [
            "Flow ID",
            " Source IP",
            " Source Port",
            " Destination IP",
            " Destination Port",
            " Protocol",
            " Timestamp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        h.extend(FEATURES[1..].iter().map(|f| {
            if *f == "Fwd Header Length.1" {
                " Fwd Header Length".to_string()
            } else {
                format!(" {f}")
            }
        }));
        h.push(" Label".into());
        h
    }

    fn raw_row(
        src: &str,
        ts: &str,
        label: &[u8],
        tweak: impl Fn(&str, String) -> String,
    ) -> Vec<u8> {
        let mut cells: Vec<String> = vec![
            format!("{src}-192.168.10.50-1234-80-6"),
            src.into(),
            "1234".into(),
            "192.168.10.50".into(),
            "80".into(),
            "6".into(),
            ts.into(),
        ];
        for (i, f) in FEATURES[1..].iter().enumerate() {
            cells.push(tweak(f, format!("{}", i + 1)));
        }
        let mut line = cells.join(",").into_bytes();
        line.push(b',');
        line.extend_from_slice(label);
        line.push(b'\n');
        line
    }

    #[test]
    fn raw_layout_with_identifiers_infinity_and_mojibake() {
        let dir = temp_dir("cic-raw");
        let mut text = raw_header().join(",").into_bytes();
        text.push(b'\n');
        text.extend(raw_row("172.16.0.1", "5/7/2017 9:00", b"BENIGN", |_, v| v));
        text.extend(raw_row(
            "172.16.0.1",
            "6/7/2017 9:20:30",
            b"Web Attack \x96 Brute Force",
            |f, v| match f {
                "Flow Bytes/s" => "Infinity".into(),
                "Flow Packets/s" => "NaN".into(),
                "Bwd IAT Min" => "".into(),
                _ => v,
            },
        ));
        text.extend(raw_row(
            "172.16.0.1",
            "6/7/2017 9:20:31",
            b"Web Attack \x96 Brute Force",
            |_, v| v,
        ));
        text.extend(raw_row(
            "10.0.0.9",
            "7/7/2017 3:30:01 PM",
            b"Brand New Attack",
            |_, v| v,
        ));
        text.extend(b"1,2,3\n");
        text.extend(raw_row("10.0.0.9", "not a time", b"BENIGN", |_, v| v));
        let path = dir.join("Thursday-WorkingHours.pcap_ISCX.csv");
        std::fs::write(&path, &text).unwrap();

        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(ds.rows(), 4, "{summary}");
        assert_eq!(summary.rows_read, 6);
        assert_eq!(summary.rows_skipped, 2);
        assert!(
            summary.errors[0]
                .to_string()
                .ends_with(":6: 3 fields, expected 85"),
            "{summary}"
        );
        assert!(
            summary.errors[1]
                .to_string()
                .contains(":7: column 7 `Timestamp`"),
            "{summary}"
        );
        assert_eq!(ds.feature_names, FEATURES.map(String::from).to_vec());
        for id in NOT_FEATURES {
            assert!(
                !ds.feature_names.iter().any(|n| n == id),
                "{id} is a feature"
            );
        }
        assert_eq!(
            ds.attack_names,
            vec!["benign", "web attack - brute force", "brand new attack"]
        );
        assert_eq!(ds.family_of(1), "web-attack");
        assert_eq!(ds.family_of(3), "other-attack");
        assert_eq!(summary.unknown_attacks["brand new attack"], 1);
        assert!(summary.ignored_columns.is_empty(), "{summary}");
        // Destination Port is the first feature; the duplicated column keeps its value.
        assert_eq!(ds.row(0)[0], 80.0);
        let col = |n: &str| FEATURES.iter().position(|f| *f == n).unwrap();
        assert_eq!(
            ds.row(0)[col("Fwd Header Length.1")],
            col("Fwd Header Length.1") as f32
        );
        assert_eq!(ds.row(1)[col("Flow Bytes/s")], INF_SENTINEL);
        assert_eq!(ds.row(1)[col("Flow Packets/s")], 0.0);
        assert_eq!(ds.row(1)[col("Bwd IAT Min")], 0.0);
        assert_eq!(summary.sanitised.infinite, 1);
        assert_eq!(summary.sanitised.nan, 1);
        assert_eq!(summary.sanitised.empty, 1);
        assert_eq!(summary.sanitised_by_column["Flow Bytes/s"].infinite, 1);
        // Sessions by (source, destination, label).
        assert_eq!(ds.session[1], ds.session[2]);
        assert_ne!(ds.session[0], ds.session[1]);
        assert_eq!(ds.session_of(0), "172.16.0.1>192.168.10.50/benign");
        let ts = ds.timestamp_ns.as_ref().unwrap();
        assert_eq!(ts[0], (17_352 * 86_400 + 9 * 3600) * 1_000_000_000);
        assert_eq!(ts[2] - ts[1], 1_000_000_000);
        assert_eq!(
            ts[3],
            (17_354 * 86_400 + 15 * 3600 + 30 * 60 + 1) * 1_000_000_000
        );

        let fail = ImportOptions {
            on_error: OnError::Fail,
            ..Default::default()
        };
        let err = format!("{:#}", import_file(&path, &fail).unwrap_err());
        assert!(
            err.contains("Thursday-WorkingHours.pcap_ISCX.csv:6: 3 fields"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn header_missing_columns_is_a_clear_error() {
        let dir = temp_dir("cic-missing");
        let path = dir.join("x.csv");
        std::fs::write(
            &path,
            " Destination Port, Flow Duration, Label\n80,1,BENIGN\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            import_file(&path, &ImportOptions::default()).unwrap_err()
        );
        assert!(err.contains("x.csv:1: not a CICFlowMeter (CICIDS2017) header: missing columns `Total Fwd Packets`"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1/1/1970 0:00"), Some(0));
        assert_eq!(
            parse_timestamp("01/01/1970 12:00:01 AM"),
            Some(1_000_000_000)
        );
        assert_eq!(
            parse_timestamp("1970-01-02 00:00:00.5"),
            Some(86_400_500_000_000)
        );
        assert_eq!(
            parse_timestamp("2017-07-03 00:00:00"),
            Some(17_350 * 86_400 * 1_000_000_000)
        );
        assert_eq!(parse_timestamp("1/13/2017 8:00"), None);
        // A day the month does not have.
        assert_eq!(parse_timestamp("30/2/2017 8:00"), None);
        assert_eq!(parse_timestamp("1/1/2017 25:00"), None);
        assert_eq!(parse_timestamp("garbage"), None);
        assert_eq!(parse_timestamp(""), None);
    }
}

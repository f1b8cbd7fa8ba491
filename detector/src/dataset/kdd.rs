//! NSL-KDD and KDD Cup 99 text files: 41 features, the label (KDD Cup 99 ends it with '.'),
//! and in NSL-KDD a difficulty level; with or without a header row.
//!
//! The three categorical fields are one-hot encoded against the full NSL-KDD vocabularies
//! embedded here, with one `<other>` column per field, so every file yields the same feature
//! set `nsl-kdd`. The difficulty level is derived from how many classifiers got the row right:
//! a function of the label, so never a feature.

use csv::ByteRecord;

use super::{
    families::LabelTable,
    rows::{one_hot, one_hot_names, text, CellError, RowBuf, RowParser},
};

/// Feature-set name of every KDD file.
pub const SOURCE: &str = "nsl-kdd";

/// The 41 feature columns in file order (the names of the KDD Cup 99 task description; the
/// header row of some NSL-KDD copies spells a few differently, e.g. `src_byts`).
pub const COLUMNS: [&str; 41] = [
    "duration",
    "protocol_type",
    "service",
    "flag",
    "src_bytes",
    "dst_bytes",
    "land",
    "wrong_fragment",
    "urgent",
    "hot",
    "num_failed_logins",
    "logged_in",
    "num_compromised",
    "root_shell",
    "su_attempted",
    "num_root",
    "num_file_creations",
    "num_shells",
    "num_access_files",
    "num_outbound_cmds",
    "is_host_login",
    "is_guest_login",
    "count",
    "srv_count",
    "serror_rate",
    "srv_serror_rate",
    "rerror_rate",
    "srv_rerror_rate",
    "same_srv_rate",
    "diff_srv_rate",
    "srv_diff_host_rate",
    "dst_host_count",
    "dst_host_srv_count",
    "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate",
    "dst_host_srv_diff_host_rate",
    "dst_host_serror_rate",
    "dst_host_srv_serror_rate",
    "dst_host_rerror_rate",
    "dst_host_srv_rerror_rate",
];

const PROTOCOL: usize = 1;
const SERVICE: usize = 2;
const FLAG: usize = 3;

/// `protocol_type` values.
pub const PROTOCOLS: [&str; 3] = ["tcp", "udp", "icmp"];

/// `service` values of KDD Cup 99 and NSL-KDD (train and test).
pub const SERVICES: [&str; 71] = [
    "aol",
    "auth",
    "bgp",
    "courier",
    "csnet_ns",
    "ctf",
    "daytime",
    "discard",
    "domain",
    "domain_u",
    "echo",
    "eco_i",
    "ecr_i",
    "efs",
    "exec",
    "finger",
    "ftp",
    "ftp_data",
    "gopher",
    "harvest",
    "hostnames",
    "http",
    "http_2784",
    "http_443",
    "http_8001",
    "imap4",
    "IRC",
    "iso_tsap",
    "klogin",
    "kshell",
    "ldap",
    "link",
    "login",
    "mtp",
    "name",
    "netbios_dgm",
    "netbios_ns",
    "netbios_ssn",
    "netstat",
    "nnsp",
    "nntp",
    "ntp_u",
    "other",
    "pm_dump",
    "pop_2",
    "pop_3",
    "printer",
    "private",
    "red_i",
    "remote_job",
    "rje",
    "shell",
    "smtp",
    "sql_net",
    "ssh",
    "stats",
    "sunrpc",
    "supdup",
    "systat",
    "telnet",
    "tftp_u",
    "tim_i",
    "time",
    "urh_i",
    "urp_i",
    "uucp",
    "uucp_path",
    "vmnet",
    "whois",
    "X11",
    "Z39_50",
];

/// `flag` (connection status) values.
pub const FLAGS: [&str; 11] = [
    "OTH", "REJ", "RSTO", "RSTOS0", "RSTR", "S0", "S1", "S2", "S3", "SF", "SH",
];

/// The feature columns: the 38 numeric ones in file order, then the one-hot blocks of
/// `protocol_type`, `service` and `flag`.
pub fn feature_names() -> Vec<String> {
    let mut names: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .filter(|(i, _)| ![PROTOCOL, SERVICE, FLAG].contains(i))
        .map(|(_, n)| n.to_string())
        .collect();
    names.extend(one_hot_names("protocol_type", &PROTOCOLS));
    names.extend(one_hot_names("service", &SERVICES));
    names.extend(one_hot_names("flag", &FLAGS));
    names
}

struct KddParser {
    columns: Vec<String>,
    features: Vec<String>,
}

/// Whether a first line looks like NSL-KDD / KDD Cup 99: its header, or a headerless row (41
/// features, a label, maybe a difficulty: a protocol name in field 2).
pub(crate) fn sniff(fields: &[String]) -> bool {
    let has = |name: &str| fields.iter().any(|f| f == name);
    fields.first().is_some_and(|f| f == "duration") && has("protocol_type")
        || (42..=43).contains(&fields.len()) && matches!(fields[1].as_str(), "tcp" | "udp" | "icmp")
}

/// Builds the parser from the first record; the bool says whether it was a header row.
pub(crate) fn parser(first: &ByteRecord, file: &str) -> anyhow::Result<(Box<dyn RowParser>, bool)> {
    let n = first.len();
    if !(42..=43).contains(&n) {
        anyhow::bail!(
            "{file}:1: {n} fields; NSL-KDD / KDD Cup 99 rows have 42 (41 features and a label) \
             or 43 (and a difficulty level)"
        );
    }
    let first_cell = String::from_utf8_lossy(first.get(0).unwrap_or_default());
    let header = first_cell.trim().parse::<f64>().is_err();
    if header && !first_cell.trim().eq_ignore_ascii_case("duration") {
        anyhow::bail!(
            "{file}:1: header starts with `{}`, expected `duration`",
            first_cell.trim()
        );
    }
    let mut columns: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    columns.push("label".into());
    if n == 43 {
        columns.push("difficulty".into());
    }
    Ok((
        Box::new(KddParser {
            columns,
            features: feature_names(),
        }),
        header,
    ))
}

impl RowParser for KddParser {
    fn source(&self) -> &str {
        SOURCE
    }

    fn feature_names(&self) -> Vec<String> {
        self.features.clone()
    }

    fn column_names(&self) -> &[String] {
        &self.columns
    }

    fn expected_len(&self) -> usize {
        self.columns.len()
    }

    fn label_table(&self) -> LabelTable {
        LabelTable::Kdd
    }

    fn has_timestamps(&self) -> bool {
        false
    }

    fn session_rule(&self) -> String {
        String::new()
    }

    fn parse(&mut self, rec: &ByteRecord, row: &mut RowBuf) -> Result<(), CellError> {
        for col in 0..COLUMNS.len() {
            if ![PROTOCOL, SERVICE, FLAG].contains(&col) {
                row.number(rec, col)?;
            }
        }
        for (col, field, vocab) in [
            (PROTOCOL, "protocol_type", &PROTOCOLS[..]),
            (SERVICE, "service", &SERVICES[..]),
            (FLAG, "flag", &FLAGS[..]),
        ] {
            let value = text(rec, col);
            if value.is_empty() {
                return Err(CellError::at(col, "empty category"));
            }
            one_hot(row, field, vocab, &value);
        }
        row.attack.push_str(&text(rec, COLUMNS.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{
        import::{import_file, Format, ImportOptions, OnError},
        test_util::{corpus, fixture, temp_dir},
        Dataset,
    };

    #[test]
    fn vocabularies() {
        assert_eq!(feature_names().len(), 38 + 4 + 72 + 12);
        let mut s = SERVICES.to_vec();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), SERVICES.len());
    }

    #[test]
    fn kdd_test_plus_imports_all_rows_with_families() {
        let (ds, summary) =
            import_file(&corpus("nsl-kdd--KDDTest+.txt"), &ImportOptions::default()).unwrap();
        assert_eq!(summary.format, Format::NslKdd);
        assert_eq!(ds.rows(), 22_544);
        assert_eq!(summary.rows_read, 22_544);
        assert_eq!(summary.rows_skipped, 0, "{summary}");
        assert_eq!(ds.source, SOURCE);
        assert_eq!(ds.n_features(), feature_names().len());
        assert!(summary.unknown_attacks.is_empty(), "{summary}");
        assert!(summary.unknown_categories.is_empty(), "{summary}");
        assert_eq!(summary.sanitised.total(), 0);
        let fam = |attack: &str| {
            let a = ds.attack_names.iter().position(|n| n == attack).unwrap();
            let i = ds.attack.iter().position(|&x| x as usize == a).unwrap();
            (ds.family_of(i).to_string(), ds.label[i])
        };
        assert_eq!(fam("neptune"), ("dos".into(), 1));
        assert_eq!(fam("portsweep"), ("scan".into(), 1));
        assert_eq!(fam("guess_passwd"), ("brute-force".into(), 1));
        assert_eq!(fam("buffer_overflow"), ("u2r".into(), 1));
        assert_eq!(fam("warezmaster"), ("r2l".into(), 1));
        assert_eq!(fam("normal"), ("benign".into(), 0));
        assert_eq!(summary.rows_per_family["benign"], 9_711);
        assert_eq!(ds.label.iter().filter(|&&l| l == 0).count(), 9_711);
        // 37 attack types occur in KDDTest+, plus "normal".
        assert_eq!(ds.attack_names.len(), 38);

        // Row 1: 0,tcp,private,REJ,0,... → protocol tcp and flag REJ one-hot, count 229.
        let names = &ds.feature_names;
        let col = |n: &str| names.iter().position(|x| x == n).unwrap();
        let r = ds.row(0);
        assert_eq!(r[col("protocol_type=tcp")], 1.0);
        assert_eq!(r[col("protocol_type=udp")], 0.0);
        assert_eq!(r[col("service=private")], 1.0);
        assert_eq!(r[col("flag=REJ")], 1.0);
        assert_eq!(r[col("count")], 229.0);
        assert_eq!(r[col("dst_host_srv_rerror_rate")], 1.0);
        assert_eq!(ds.attack_of(0), "neptune");
        // No identifiers or label-derived columns.
        assert!(!names
            .iter()
            .any(|n| n.contains("difficulty") || n == "label"));
        // Pseudo-sessions: blocks of at most 100 rows of one attack.
        let mut per_session = vec![0usize; ds.session_names.len()];
        for &s in &ds.session {
            per_session[s as usize] += 1;
        }
        assert!(per_session.iter().all(|&n| (1..=100).contains(&n)));
        assert!(ds.timestamp_ns.is_none());
    }

    #[test]
    fn kdd_test_21_imports_all_rows() {
        let (ds, summary) = import_file(
            &corpus("nsl-kdd--KDDTest-21.txt"),
            &ImportOptions::default(),
        )
        .unwrap();
        assert_eq!(ds.rows(), 11_850);
        assert_eq!(summary.rows_skipped, 0);
        assert_eq!(summary.rows_per_family["benign"], 2_152);
        assert_eq!(
            summary.rows_per_family["dos"],
            1579 + 737 + 685 + 627 + 359 + 293 + 41 + 12 + 7 + 2
        );
    }

    const ROW_OK: &str = "0,tcp,http,SF,181,5450,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,8,8,0.00,0.00,0.00,0.00,1.00,0.00,0.00,9,9,1.00,0.00,0.11,0.00,0.00,0.00,0.00,0.00";

    #[test]
    fn kdd_cup_99_headerless_with_dots_and_unknowns() {
        let dir = temp_dir("kdd99");
        let text = format!(
            "{ROW_OK},normal.\r\n{ROW_OK},smurf.\r\n\r\n{},teardrop.\r\n{ROW_OK},weird_new_attack.",
            ROW_OK.replace(",http,", ",gopher2,")
        );
        let path = fixture(&dir, "kddcup.data", &text);
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(ds.rows(), 4);
        assert_eq!(
            ds.attack_names,
            vec!["normal", "smurf", "teardrop", "weird_new_attack"]
        );
        assert_eq!(ds.family_of(1), "dos");
        assert_eq!(ds.family_of(3), "other-attack");
        assert_eq!(ds.label, vec![0, 1, 1, 1]);
        assert_eq!(summary.unknown_attacks["weird_new_attack"], 1);
        assert_eq!(summary.unknown_categories["service=gopher2"], 1);
        let other = ds
            .feature_names
            .iter()
            .position(|n| n == "service=<other>")
            .unwrap();
        assert_eq!(ds.row(2)[other], 1.0);
        assert_eq!(ds.row(0)[other], 0.0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_rows_skip_or_fail() {
        let dir = temp_dir("kdd-bad");
        let text = format!(
            "{ROW_OK},normal,21\n{},normal,21\n{ROW_OK},neptune\n{ROW_OK},,3\n{ROW_OK},back,10\n",
            ROW_OK.replace("5450", "54x0"),
        );
        let path = fixture(&dir, "bad.txt", &text);
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(ds.rows(), 2);
        assert_eq!(summary.rows_read, 5);
        assert_eq!(summary.rows_skipped, 3);
        let msgs: Vec<String> = summary.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs[0].ends_with("bad.txt:2: column 6 `dst_bytes`: `54x0` is not a number"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].ends_with("bad.txt:3: 42 fields, expected 43"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].ends_with("bad.txt:4: empty attack label"),
            "{msgs:?}"
        );

        let opts = ImportOptions {
            on_error: OnError::Fail,
            ..Default::default()
        };
        let err = import_file(&path, &opts).unwrap_err();
        let row = err.downcast_ref::<crate::dataset::RowError>().unwrap();
        assert_eq!((row.line, row.column), (2, Some(5)));
        assert_eq!(row.column_name.as_deref(), Some("dst_bytes"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn imported_file_round_trips() {
        let (ds, _) = import_file(
            &corpus("nsl-kdd--KDDTest-21.txt"),
            &ImportOptions::default(),
        )
        .unwrap();
        let dir = temp_dir("kdd-rt");
        let path = dir.join("kdd.dds");
        ds.write(&path).unwrap();
        let back = Dataset::read(&path).unwrap();
        assert_eq!(back, ds);
        let _ = std::fs::remove_dir_all(dir);
    }
}

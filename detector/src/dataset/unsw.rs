//! UNSW-NB15 CSVs: the four official 49-column files (headerless; column list from
//! `NUSW-NB15_features.csv`, embedded here) and the later 45-column "training/testing set"
//! files, which have a header, no addresses or times, and partly different columns.
//!
//! Not features: addresses, ports of the source, start/end times, TTLs and `ct_state_ttl`
//! (derived from the TTLs, the best-known shortcut of this dataset), and the random TCP base
//! sequence numbers `stcpb`/`dtcpb`. `proto`, `state` and `service` are one-hot encoded with an
//! `<other>` column each.

use std::collections::HashMap;

use csv::ByteRecord;

use super::{
    families::{normalise_label, LabelTable},
    rows::{
        header_names, one_hot, one_hot_names, parse_binary_label, text, CellError, RowBuf,
        RowParser, SanitisedKind,
    },
};

/// Feature-set name of the 49-column files.
pub const SOURCE: &str = "unsw-nb15";
/// Feature-set name of the training/testing-set files (different columns).
pub const SOURCE_SETS: &str = "unsw-nb15-sets";

/// Columns of the official 49-column files (`NUSW-NB15_features.csv`, lowercased, with the
/// stray space of `ct_src_ ltm` removed).
pub const FULL_COLUMNS: [&str; 49] = [
    "srcip",
    "sport",
    "dstip",
    "dsport",
    "proto",
    "state",
    "dur",
    "sbytes",
    "dbytes",
    "sttl",
    "dttl",
    "sloss",
    "dloss",
    "service",
    "sload",
    "dload",
    "spkts",
    "dpkts",
    "swin",
    "dwin",
    "stcpb",
    "dtcpb",
    "smeansz",
    "dmeansz",
    "trans_depth",
    "res_bdy_len",
    "sjit",
    "djit",
    "stime",
    "ltime",
    "sintpkt",
    "dintpkt",
    "tcprtt",
    "synack",
    "ackdat",
    "is_sm_ips_ports",
    "ct_state_ttl",
    "ct_flw_http_mthd",
    "is_ftp_login",
    "ct_ftp_cmd",
    "ct_srv_src",
    "ct_srv_dst",
    "ct_dst_ltm",
    "ct_src_ltm",
    "ct_src_dport_ltm",
    "ct_dst_sport_ltm",
    "ct_dst_src_ltm",
    "attack_cat",
    "label",
];

/// Columns of `UNSW_NB15_training-set.csv` / `UNSW_NB15_testing-set.csv`.
pub const SETS_COLUMNS: [&str; 45] = [
    "id",
    "dur",
    "proto",
    "service",
    "state",
    "spkts",
    "dpkts",
    "sbytes",
    "dbytes",
    "rate",
    "sttl",
    "dttl",
    "sload",
    "dload",
    "sloss",
    "dloss",
    "sinpkt",
    "dinpkt",
    "sjit",
    "djit",
    "swin",
    "stcpb",
    "dtcpb",
    "dwin",
    "tcprtt",
    "synack",
    "ackdat",
    "smean",
    "dmean",
    "trans_depth",
    "response_body_len",
    "ct_srv_src",
    "ct_state_ttl",
    "ct_dst_ltm",
    "ct_src_dport_ltm",
    "ct_dst_sport_ltm",
    "ct_dst_src_ltm",
    "is_ftp_login",
    "ct_ftp_cmd",
    "ct_flw_http_mthd",
    "ct_src_ltm",
    "ct_srv_dst",
    "is_sm_ips_ports",
    "attack_cat",
    "label",
];

/// Columns that are never features.
pub const NOT_FEATURES: [&str; 11] = [
    "id",
    "srcip",
    "sport",
    "dstip",
    "stime",
    "ltime",
    "sttl",
    "dttl",
    "ct_state_ttl",
    "stcpb",
    "dtcpb",
];

/// `proto` values given their own column (the dataset has ~130; the rest go to `<other>`).
pub const PROTOS: [&str; 17] = [
    "tcp", "udp", "unas", "arp", "ospf", "sctp", "icmp", "any", "gre", "ipv6", "pim", "rtp",
    "igmp", "sep", "swipe", "sun-nd", "mobile",
];
/// `state` values.
pub const STATES: [&str; 17] = [
    "FIN", "INT", "CON", "REQ", "RST", "ACC", "CLO", "ECO", "ECR", "MAS", "PAR", "TST", "TXD",
    "URH", "URN", "no", "-",
];
/// `service` values.
pub const SERVICES: [&str; 13] = [
    "-", "dns", "http", "ftp", "ftp-data", "smtp", "ssh", "irc", "pop3", "dhcp", "snmp", "ssl",
    "radius",
];

const CATEGORICAL: [(&str, &[&str]); 3] = [
    ("proto", &PROTOS),
    ("state", &STATES),
    ("service", &SERVICES),
];

/// Feature columns of a layout: its numeric columns in order, then the one-hot blocks.
pub fn feature_names(layout: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = layout
        .iter()
        .filter(|c| is_numeric_feature(c))
        .map(|c| c.to_string())
        .collect();
    for (field, vocab) in CATEGORICAL {
        names.extend(one_hot_names(field, vocab));
    }
    names
}

fn is_numeric_feature(c: &str) -> bool {
    !NOT_FEATURES.contains(&c)
        && !CATEGORICAL.iter().any(|(f, _)| *f == c)
        && c != "attack_cat"
        && c != "label"
}

struct UnswParser {
    source: &'static str,
    columns: Vec<String>,
    numeric: Vec<usize>,
    categorical: Vec<(&'static str, &'static [&'static str], usize)>,
    attack_cat: usize,
    label: usize,
    addresses: Option<(usize, usize)>,
    stime: Option<usize>,
    features: Vec<String>,
}

/// Whether a first line looks like UNSW-NB15: a header of its columns, or a headerless row of
/// the 49-column files (they start with an address).
pub(crate) fn sniff(fields: &[String]) -> bool {
    let has = |name: &str| fields.iter().any(|f| f == name);
    has("attack_cat")
        || has("dsport")
        || has("sbytes")
        || fields.len() == FULL_COLUMNS.len() && fields[0].parse::<std::net::IpAddr>().is_ok()
}

/// Builds the parser from the first record (a header row, or a data row of a headerless
/// 49-column file); the bool says whether it was a header.
pub(crate) fn parser(first: &ByteRecord, file: &str) -> anyhow::Result<(Box<dyn RowParser>, bool)> {
    let raw = header_names(first);
    let names: Vec<String> = raw
        .iter()
        .map(|n| n.to_ascii_lowercase().replace(' ', ""))
        .collect();
    let header = names.iter().any(|n| n == "attack_cat" || n == "label");
    let (source, layout): (&'static str, &[&str]) = if !header {
        if first.len() != FULL_COLUMNS.len() {
            anyhow::bail!(
                "{file}:1: {} fields and no header; UNSW-NB15's headerless files have {}",
                first.len(),
                FULL_COLUMNS.len()
            );
        }
        (SOURCE, &FULL_COLUMNS)
    } else if names.iter().any(|n| n == "srcip") {
        (SOURCE, &FULL_COLUMNS)
    } else {
        (SOURCE_SETS, &SETS_COLUMNS)
    };
    let columns: Vec<String> = if header {
        names
    } else {
        FULL_COLUMNS.iter().map(|c| c.to_string()).collect()
    };
    let index: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let missing: Vec<&str> = layout
        .iter()
        .copied()
        .filter(|c| !index.contains_key(c))
        .collect();
    let extra: Vec<&str> = columns
        .iter()
        .map(String::as_str)
        .filter(|c| !layout.contains(c))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        anyhow::bail!(
            "{file}:1: not a UNSW-NB15 {} header: missing [{}], unexpected [{}]",
            if source == SOURCE {
                "49-column"
            } else {
                "training/testing-set"
            },
            missing.join(", "),
            extra.join(", ")
        );
    }
    let numeric = layout
        .iter()
        .filter(|c| is_numeric_feature(c))
        .map(|c| index[c])
        .collect();
    let categorical = CATEGORICAL.iter().map(|&(f, v)| (f, v, index[f])).collect();
    let addresses = match (index.get("srcip"), index.get("dstip")) {
        (Some(&s), Some(&d)) => Some((s, d)),
        _ => None,
    };
    Ok((
        Box::new(UnswParser {
            source,
            numeric,
            categorical,
            attack_cat: index["attack_cat"],
            label: index["label"],
            addresses,
            stime: index.get("stime").copied(),
            features: feature_names(layout),
            columns,
        }),
        header,
    ))
}

impl RowParser for UnswParser {
    fn source(&self) -> &str {
        self.source
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
        LabelTable::UnswNb15
    }

    fn has_timestamps(&self) -> bool {
        self.stime.is_some()
    }

    fn session_rule(&self) -> String {
        if self.addresses.is_some() {
            "(srcip, dstip, attack_cat)".into()
        } else {
            String::new()
        }
    }

    fn parse(&mut self, rec: &ByteRecord, row: &mut RowBuf) -> Result<(), CellError> {
        for &col in &self.numeric {
            // UNSW-NB15 writes "-" for an absent value (dsport of non-port protocols).
            if text(rec, col) == "-" {
                row.features.push(0.0);
                row.sanitised.push((col, SanitisedKind::Empty));
            } else {
                row.number(rec, col)?;
            }
        }
        for &(field, vocab, col) in &self.categorical {
            let value = text(rec, col);
            if value.is_empty() {
                return Err(CellError::at(col, "empty category"));
            }
            one_hot(row, field, vocab, &value);
        }
        let label = parse_binary_label(rec, self.label)?;
        row.label = Some(label);
        let cat = text(rec, self.attack_cat);
        match (cat.is_empty(), label) {
            (true, 0) => row.attack.push_str("normal"),
            (true, _) => {
                return Err(CellError::at(
                    self.attack_cat,
                    "attack row without attack_cat",
                ))
            }
            (false, _) => row.attack.push_str(&cat),
        }
        if let Some((s, d)) = self.addresses {
            let (src, dst) = (text(rec, s), text(rec, d));
            if src.is_empty() || dst.is_empty() {
                return Err(CellError::at(
                    if src.is_empty() { s } else { d },
                    "empty address",
                ));
            }
            row.session = Some(format!("{src}>{dst}/{}", normalise_label(&row.attack)));
        }
        if let Some(c) = self.stime {
            let cell = text(rec, c);
            let secs: u64 = cell
                .parse()
                .map_err(|_| CellError::at(c, format!("`{cell}` is not a Unix time in s")))?;
            row.ts_ns = Some(
                secs.checked_mul(1_000_000_000)
                    .ok_or_else(|| CellError::at(c, format!("`{cell}` s is out of range")))?,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{
        import::{import_file, Format, ImportOptions},
        test_util::{fixture, shared_dir, temp_dir},
    };

    /// The embedded column list is the one of the dataset's own feature file.
    #[test]
    fn columns_match_the_feature_list() {
        let path = shared_dir().join("corpus/tabular/unsw-nb15--features.csv");
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(&path)
            .unwrap();
        let names: Vec<String> = rdr
            .byte_records()
            .map(|r| {
                let r = r.unwrap();
                String::from_utf8_lossy(&r[1])
                    .to_ascii_lowercase()
                    .replace(' ', "")
            })
            .collect();
        assert_eq!(names, FULL_COLUMNS.to_vec());
        assert_eq!(feature_names(&FULL_COLUMNS).len(), 34 + 18 + 18 + 14);
        assert_eq!(feature_names(&SETS_COLUMNS).len(), 34 + 18 + 18 + 14);
    }

    const A: &str = "59.166.0.0,1390,149.171.126.6,53,udp,CON,0.001055,132,164,31,29,0,0,dns,500473.9375,621800.9375,2,2,0,0,0,0,66,82,0,0,0,0,1421927414,1421927414,0.017,0.013,0,0,0,0,0,0,0,0,3,7,1,3,1,1,1,,0";
    const B: &str = "175.45.176.3,21223,149.171.126.18,0x000b,tcp,FIN,0.5,1000,200,254,252,1,0,-,1000.5,200.5,10,8,255,255,1234567,7654321,100,25,0,0,1.5,2.5,1421927415,1421927416,3.5,4.5,0.1,0.05,0.05,0,1,0,0, ,5,5,2,2,1,1,2, Exploits ,1";

    #[test]
    fn official_headerless_file() {
        let dir = temp_dir("unsw-full");
        let text = [
            A,
            B,
            &B.replace(",tcp,", ",zzz,")
                .replace(" Exploits ", "Backdoors"),
            &A.replace(",0.001055,", ",x,"),
            &A.replace(",,0", ",,1"),
        ]
        .join("\n");
        let path = fixture(&dir, "UNSW-NB15_1.csv", &text);
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(summary.format, Format::UnswNb15);
        assert_eq!(ds.source, SOURCE);
        assert_eq!(ds.rows(), 3, "{summary}");
        assert_eq!(summary.rows_skipped, 2);
        assert!(
            summary.errors[0]
                .to_string()
                .contains(":4: column 7 `dur`: `x` is not a number"),
            "{summary}"
        );
        assert!(
            summary.errors[1]
                .to_string()
                .contains(":5: column 48 `attack_cat`: attack row without attack_cat"),
            "{summary}"
        );
        for id in NOT_FEATURES {
            assert!(
                !ds.feature_names.iter().any(|n| n == id),
                "{id} is a feature"
            );
        }
        let col = |n: &str| ds.feature_names.iter().position(|x| x == n).unwrap();
        assert_eq!(ds.row(0)[col("dsport")], 53.0);
        assert_eq!(ds.row(1)[col("dsport")], 11.0);
        assert_eq!(ds.row(0)[col("proto=udp")], 1.0);
        assert_eq!(ds.row(1)[col("service=-")], 1.0);
        assert_eq!(ds.row(1)[col("state=FIN")], 1.0);
        assert_eq!(ds.row(2)[col("proto=<other>")], 1.0);
        assert_eq!(ds.row(1)[col("sintpkt")], 3.5);
        assert_eq!(summary.unknown_categories["proto=zzz"], 1);
        // Empty ct_ftp_cmd (" ") is sanitised to 0.
        assert_eq!(summary.sanitised_by_column["ct_ftp_cmd"].empty, 2);
        assert_eq!(ds.attack_names, vec!["normal", "exploits", "backdoors"]);
        let fams: Vec<&str> = (0..3).map(|i| ds.family_of(i)).collect();
        assert_eq!(fams, ["benign", "exploit", "backdoor"]);
        assert_eq!(ds.label, vec![0, 1, 1]);
        assert_eq!(ds.session_of(1), "175.45.176.3>149.171.126.18/exploits");
        assert_ne!(ds.session[1], ds.session[2]);
        let ts = ds.timestamp_ns.as_ref().unwrap();
        assert_eq!(ts[0], 1_421_927_414_000_000_000);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn training_set_layout() {
        let dir = temp_dir("unsw-sets");
        let header = SETS_COLUMNS.join(",");
        let row = |id: u32, cat: &str, label: u8| {
            SETS_COLUMNS
                .iter()
                .map(|c| match *c {
                    "id" => id.to_string(),
                    "proto" => "tcp".into(),
                    "service" => "http".into(),
                    "state" => "FIN".into(),
                    "attack_cat" => cat.into(),
                    "label" => label.to_string(),
                    _ => "1.5".into(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let text = format!(
            "{header}\n{}\n{}\n{}\n",
            row(1, "Normal", 0),
            row(2, "Reconnaissance", 1),
            row(3, "Fuzzers", 1)
        );
        let path = fixture(&dir, "UNSW_NB15_training-set.csv", &text);
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(ds.source, SOURCE_SETS);
        assert_eq!(ds.rows(), 3, "{summary}");
        assert_eq!(ds.n_features(), feature_names(&SETS_COLUMNS).len());
        assert!(ds.feature_names.iter().any(|n| n == "rate"));
        assert!(!ds.feature_names.iter().any(|n| n == "id"));
        let fams: Vec<&str> = (0..3).map(|i| ds.family_of(i)).collect();
        assert_eq!(fams, ["benign", "scan", "fuzzers"]);
        assert!(ds.timestamp_ns.is_none());
        assert!(ds
            .session_of(1)
            .starts_with("UNSW_NB15_training-set.csv/reconnaissance/"));
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! NF-v2 NetFlow CSVs (NF-UNSW-NB15-v2, NF-CSE-CIC-IDS2018-v2, NF-ToN-IoT-v2, NF-BoT-IoT-v2):
//! the 43 nProbe columns, `Label` (0/1) and `Attack`.
//!
//! Addresses, the source port and the TTLs are identifiers or shortcuts, and the DNS query id is
//! a random transaction number: none is a feature. Columns added by later versions (NF-v3) are
//! ignored, except `FLOW_START_MILLISECONDS`, which becomes the timestamp.

use std::collections::HashMap;

use csv::ByteRecord;

use super::{
    families::{normalise_label, LabelTable},
    rows::{header_names, parse_binary_label, require_columns, text, CellError, RowBuf, RowParser},
};

/// Feature-set name.
pub const SOURCE: &str = "nf-v2";

/// The 43 nProbe columns of NF-v2, in file order.
pub const COLUMNS: [&str; 43] = [
    "IPV4_SRC_ADDR",
    "L4_SRC_PORT",
    "IPV4_DST_ADDR",
    "L4_DST_PORT",
    "PROTOCOL",
    "L7_PROTO",
    "IN_BYTES",
    "IN_PKTS",
    "OUT_BYTES",
    "OUT_PKTS",
    "TCP_FLAGS",
    "CLIENT_TCP_FLAGS",
    "SERVER_TCP_FLAGS",
    "FLOW_DURATION_MILLISECONDS",
    "DURATION_IN",
    "DURATION_OUT",
    "MIN_TTL",
    "MAX_TTL",
    "LONGEST_FLOW_PKT",
    "SHORTEST_FLOW_PKT",
    "MIN_IP_PKT_LEN",
    "MAX_IP_PKT_LEN",
    "SRC_TO_DST_SECOND_BYTES",
    "DST_TO_SRC_SECOND_BYTES",
    "RETRANSMITTED_IN_BYTES",
    "RETRANSMITTED_IN_PKTS",
    "RETRANSMITTED_OUT_BYTES",
    "RETRANSMITTED_OUT_PKTS",
    "SRC_TO_DST_AVG_THROUGHPUT",
    "DST_TO_SRC_AVG_THROUGHPUT",
    "NUM_PKTS_UP_TO_128_BYTES",
    "NUM_PKTS_128_TO_256_BYTES",
    "NUM_PKTS_256_TO_512_BYTES",
    "NUM_PKTS_512_TO_1024_BYTES",
    "NUM_PKTS_1024_TO_1514_BYTES",
    "TCP_WIN_MAX_IN",
    "TCP_WIN_MAX_OUT",
    "ICMP_TYPE",
    "ICMP_IPV4_TYPE",
    "DNS_QUERY_ID",
    "DNS_QUERY_TYPE",
    "DNS_TTL_ANSWER",
    "FTP_COMMAND_RET_CODE",
];

/// Columns of [`COLUMNS`] that are not features: addresses, the (ephemeral) source port, IP
/// TTLs and the random DNS transaction id.
pub const NOT_FEATURES: [&str; 6] = [
    "IPV4_SRC_ADDR",
    "L4_SRC_PORT",
    "IPV4_DST_ADDR",
    "MIN_TTL",
    "MAX_TTL",
    "DNS_QUERY_ID",
];

/// NF-v3 start time, used as the timestamp when present.
const FLOW_START: &str = "FLOW_START_MILLISECONDS";

/// The 37 feature columns, in file order.
pub fn feature_names() -> Vec<String> {
    COLUMNS
        .iter()
        .filter(|c| !NOT_FEATURES.contains(c))
        .map(|c| c.to_string())
        .collect()
}

struct NfParser {
    columns: Vec<String>,
    feature_cols: Vec<usize>,
    src: usize,
    dst: usize,
    label: usize,
    attack: usize,
    start: Option<usize>,
    ignored: Vec<String>,
}

/// Whether a first line looks like NF-v2 NetFlow (its nProbe columns).
pub(crate) fn sniff(fields: &[String]) -> bool {
    let has = |name: &str| fields.iter().any(|f| f == name);
    has("ipv4_src_addr") || has("in_bytes") && has("l7_proto")
}

/// Builds the parser from the header row (NF-v2 files always have one).
pub(crate) fn parser(first: &ByteRecord, file: &str) -> anyhow::Result<(Box<dyn RowParser>, bool)> {
    let columns = header_names(first);
    let mut required = COLUMNS.to_vec();
    required.extend(["Label", "Attack"]);
    require_columns(file, "NF-v2 NetFlow", &columns, &required)?;
    let index: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let feature_cols = feature_names().iter().map(|f| index[f.as_str()]).collect();
    let ignored = columns
        .iter()
        .filter(|c| !required.contains(&c.as_str()) && *c != FLOW_START)
        .cloned()
        .collect();
    Ok((
        Box::new(NfParser {
            feature_cols,
            src: index["IPV4_SRC_ADDR"],
            dst: index["IPV4_DST_ADDR"],
            label: index["Label"],
            attack: index["Attack"],
            start: index.get(FLOW_START).copied(),
            ignored,
            columns,
        }),
        true,
    ))
}

impl RowParser for NfParser {
    fn source(&self) -> &str {
        SOURCE
    }

    fn feature_names(&self) -> Vec<String> {
        feature_names()
    }

    fn column_names(&self) -> &[String] {
        &self.columns
    }

    fn expected_len(&self) -> usize {
        self.columns.len()
    }

    fn label_table(&self) -> LabelTable {
        LabelTable::NfV2
    }

    fn has_timestamps(&self) -> bool {
        self.start.is_some()
    }

    fn ignored_columns(&self) -> Vec<String> {
        self.ignored.clone()
    }

    fn session_rule(&self) -> String {
        "(IPV4_SRC_ADDR, IPV4_DST_ADDR, Attack)".into()
    }

    fn parse(&mut self, rec: &ByteRecord, row: &mut RowBuf) -> Result<(), CellError> {
        for &col in &self.feature_cols {
            row.number(rec, col)?;
        }
        row.label = Some(parse_binary_label(rec, self.label)?);
        row.attack.push_str(&text(rec, self.attack));
        let (src, dst) = (text(rec, self.src), text(rec, self.dst));
        if src.is_empty() || dst.is_empty() {
            let col = if src.is_empty() { self.src } else { self.dst };
            return Err(CellError::at(col, "empty address"));
        }
        row.session = Some(format!("{src}>{dst}/{}", normalise_label(&row.attack)));
        if let Some(c) = self.start {
            let cell = text(rec, c);
            let ms: u64 = cell
                .parse()
                .map_err(|_| CellError::at(c, format!("`{cell}` is not a time in ms")))?;
            row.ts_ns = Some(
                ms.checked_mul(1_000_000)
                    .ok_or_else(|| CellError::at(c, format!("`{cell}` ms is out of range")))?,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{
        import::{import_file, Format, ImportOptions, OnError},
        test_util::{fixture, temp_dir},
    };

    fn header() -> String {
        let mut h = COLUMNS.join(",");
        h.push_str(",Label,Attack");
        h
    }

    /// A row with every numeric column `v`, the given addresses, label and attack.
    fn row(src: &str, dst: &str, v: u32, label: &str, attack: &str) -> String {
        let cells: Vec<String> = COLUMNS
            .iter()
            .map(|c| match *c {
                "IPV4_SRC_ADDR" => src.into(),
                "IPV4_DST_ADDR" => dst.into(),
                "MIN_TTL" | "MAX_TTL" => "64".into(),
                _ => v.to_string(),
            })
            .collect();
        format!("{},{label},{attack}", cells.join(","))
    }

    #[test]
    fn nf_v2_fixture() {
        let dir = temp_dir("nfv2");
        let text = [
            header(),
            row("59.166.0.2", "149.171.126.4", 1, "0", "Benign"),
            row("175.45.176.1", "149.171.126.16", 2, "1", "Exploits"),
            row("175.45.176.1", "149.171.126.16", 3, "1", "Exploits"),
            row("172.31.69.25", "18.219.211.138", 4, "1", "DDOS attack-HOIC"),
            row("192.168.1.3", "192.168.1.1", 5, "1", "scanning"),
            row("192.168.1.3", "192.168.1.1", 6, "1", "Theft"),
            row("192.168.1.3", "192.168.1.1", 7, "0", "DoS"),
            row("192.168.1.3", "192.168.1.1", 8, "2", "DoS"),
            row("192.168.1.3", "192.168.1.1", 9, "1", "Zero Day"),
        ]
        .join("\n");
        let path = fixture(&dir, "NF-mixed-v2.csv", &text);
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(summary.format, Format::NfV2);
        assert_eq!(ds.source, SOURCE);
        assert_eq!(ds.rows(), 7, "{summary}");
        assert_eq!(summary.rows_skipped, 2);
        assert!(
            summary.errors[0]
                .to_string()
                .contains(":8: label 0 contradicts attack label `dos`"),
            "{summary}"
        );
        assert!(
            summary.errors[1]
                .to_string()
                .contains(":9: column 44 `Label`: label `2` is not 0 or 1"),
            "{summary}"
        );
        assert_eq!(ds.n_features(), 37);
        for id in NOT_FEATURES {
            assert!(
                !ds.feature_names.iter().any(|n| n == id),
                "{id} is a feature"
            );
        }
        assert_eq!(ds.feature_names[0], "L4_DST_PORT");
        assert_eq!(ds.row(1), &[2.0; 37][..]);
        let families: Vec<&str> = (0..ds.rows()).map(|i| ds.family_of(i)).collect();
        assert_eq!(
            families,
            [
                "benign",
                "exploit",
                "exploit",
                "ddos",
                "scan",
                "exfiltration",
                "other-attack"
            ]
        );
        assert_eq!(ds.label, vec![0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(summary.unknown_attacks["zero day"], 1);
        assert_eq!(ds.session[1], ds.session[2]);
        assert_eq!(ds.session_of(1), "175.45.176.1>149.171.126.16/exploits");
        assert!(ds.timestamp_ns.is_none());

        let fail = ImportOptions {
            on_error: OnError::Fail,
            ..Default::default()
        };
        let err = import_file(&path, &fail).unwrap_err().to_string();
        assert!(
            err.ends_with("NF-mixed-v2.csv:8: label 0 contradicts attack label `dos` (family dos)"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn nf_v3_start_time_becomes_the_timestamp() {
        let dir = temp_dir("nfv3");
        let text = format!(
            "{FLOW_START},{},SRC_TO_DST_IAT_MIN\n1700000000123,{},5\n",
            header(),
            row("1.1.1.1", "2.2.2.2", 1, "0", "Benign")
        );
        let path = fixture(&dir, "NF-v3.csv", &text);
        let (ds, summary) = import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(ds.rows(), 1, "{summary}");
        assert_eq!(ds.n_features(), 37);
        assert_eq!(ds.timestamp_ns, Some(vec![1_700_000_000_123_000_000]));
        assert_eq!(summary.ignored_columns, vec!["SRC_TO_DST_IAT_MIN"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}

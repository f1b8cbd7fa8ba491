//! The coarse attack-family vocabulary shared by every dataset, and per-source tables that map a
//! source's own (normalised) label to a family.
//!
//! Families are what "leave one family out" rotates over, so they group attacks by behaviour,
//! not by tool: `dos hulk` and `neptune` are both `dos`. The source's own label stays in the
//! dataset's `attack` column.

/// Family of benign rows.
pub const BENIGN: &str = "benign";
/// Family of attack rows whose label no table knows (counted as a warning by importers).
pub const OTHER_ATTACK: &str = "other-attack";

/// Every family name with a one-line meaning, in a stable order.
pub const FAMILIES: &[(&str, &str)] = &[
    (BENIGN, "normal traffic"),
    ("scan", "host and port scans, reconnaissance, probes"),
    ("dos", "denial of service from one or few sources"),
    ("ddos", "distributed denial of service"),
    (
        "brute-force",
        "password guessing against a login service (ssh, ftp, telnet, snmp)",
    ),
    (
        "web-attack",
        "attacks on web applications: sql injection, xss, web login brute force",
    ),
    ("botnet", "bot command-and-control traffic"),
    (
        "infiltration",
        "a compromised inside host attacking the network",
    ),
    (
        "exploit",
        "exploitation of a known vulnerability (UNSW-NB15 `exploits`)",
    ),
    ("backdoor", "access through a backdoor"),
    (
        "r2l",
        "remote to local: unauthorised access from a remote machine (KDD)",
    ),
    ("u2r", "user to root: privilege escalation (KDD)"),
    ("worm", "self-propagating code"),
    ("shellcode", "shellcode delivery (UNSW-NB15)"),
    ("fuzzers", "fuzzing of services (UNSW-NB15)"),
    (
        "generic",
        "attacks against block ciphers (UNSW-NB15 `generic`)",
    ),
    (
        "analysis",
        "port scans, spam and html file penetration (UNSW-NB15 `analysis`)",
    ),
    ("heartbleed", "the OpenSSL heartbleed exploit"),
    ("mitm", "man in the middle (ToN-IoT)"),
    ("ransomware", "ransomware (ToN-IoT)"),
    (
        "exfiltration",
        "data theft and exfiltration (BoT-IoT `theft`; the project's lab)",
    ),
    (
        "beaconing",
        "periodic command-and-control callbacks (the project's lab)",
    ),
    (
        "lateral-movement",
        "a compromised host reaching its neighbours' admin shares and services (the project's lab)",
    ),
    (OTHER_ATTACK, "an attack whose label is in no mapping table"),
];

/// Whether `name` is in the family vocabulary.
pub fn is_family(name: &str) -> bool {
    FAMILIES.iter().any(|(f, _)| *f == name)
}

/// Which mapping table a source's labels are looked up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelTable {
    /// NSL-KDD and KDD Cup 99 attack names.
    Kdd,
    /// CICIDS2017 (and CSE-CIC-IDS2018) labels of CICFlowMeter CSVs.
    CicFlowMeter,
    /// The `Attack` column of the four NF-v2 NetFlow datasets.
    NfV2,
    /// UNSW-NB15 `attack_cat`.
    UnswNb15,
}

impl LabelTable {
    /// The table's rows: normalised source label → family.
    pub fn entries(self) -> Vec<(&'static str, &'static str)> {
        match self {
            LabelTable::Kdd => KDD.to_vec(),
            LabelTable::CicFlowMeter => [CICIDS2017, CSE_CIC_IDS2018].concat(),
            LabelTable::NfV2 => [UNSW_NB15, CSE_CIC_IDS2018, TON_IOT, BOT_IOT].concat(),
            LabelTable::UnswNb15 => UNSW_NB15.to_vec(),
        }
    }

    /// The family of a normalised label (see [`normalise_label`]), or `None` when unknown.
    pub fn family(self, label: &str) -> Option<&'static str> {
        let lookup = |t: &[(&'static str, &'static str)]| {
            t.iter().find(|(l, _)| *l == label).map(|(_, f)| *f)
        };
        match self {
            LabelTable::Kdd => lookup(KDD),
            LabelTable::CicFlowMeter => lookup(CICIDS2017).or_else(|| lookup(CSE_CIC_IDS2018)),
            LabelTable::NfV2 => lookup(UNSW_NB15)
                .or_else(|| lookup(CSE_CIC_IDS2018))
                .or_else(|| lookup(TON_IOT))
                .or_else(|| lookup(BOT_IOT)),
            LabelTable::UnswNb15 => lookup(UNSW_NB15),
        }
    }
}

/// Normalises a source label: lowercase, trimmed, KDD Cup 99's trailing '.' removed, every run
/// of non-ASCII characters (the mojibake of CICIDS2017's en dash: `\x96`, `�`, `ï¿½`) turned
/// into '-', and runs of whitespace collapsed to one space.
pub fn normalise_label(raw: &str) -> String {
    let raw = raw.trim();
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    let mut out = String::with_capacity(raw.len());
    let mut in_non_ascii = false;
    let mut pending_space = false;
    for c in raw.chars() {
        if !c.is_ascii() {
            if !in_non_ascii {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push('-');
            }
            in_non_ascii = true;
            continue;
        }
        in_non_ascii = false;
        if c.is_ascii_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// NSL-KDD / KDD Cup 99: the classic DoS / probe / R2L / U2R grouping (probe → `scan`), except
/// that the two password-guessing attacks are `brute-force` (they are what CICIDS2017's
/// FTP-/SSH-Patator are) and `worm` is `worm`.
pub const KDD: &[(&str, &str)] = &[
    ("normal", BENIGN),
    // DoS
    ("back", "dos"),
    ("land", "dos"),
    ("neptune", "dos"),
    ("pod", "dos"),
    ("smurf", "dos"),
    ("teardrop", "dos"),
    ("apache2", "dos"),
    ("udpstorm", "dos"),
    ("processtable", "dos"),
    ("mailbomb", "dos"),
    // Probe
    ("satan", "scan"),
    ("ipsweep", "scan"),
    ("nmap", "scan"),
    ("portsweep", "scan"),
    ("mscan", "scan"),
    ("saint", "scan"),
    // R2L
    ("guess_passwd", "brute-force"),
    ("snmpguess", "brute-force"),
    ("ftp_write", "r2l"),
    ("imap", "r2l"),
    ("phf", "r2l"),
    ("multihop", "r2l"),
    ("warezmaster", "r2l"),
    ("warezclient", "r2l"),
    ("spy", "r2l"),
    ("xlock", "r2l"),
    ("xsnoop", "r2l"),
    ("snmpgetattack", "r2l"),
    ("httptunnel", "r2l"),
    ("sendmail", "r2l"),
    ("named", "r2l"),
    ("worm", "worm"),
    // U2R
    ("buffer_overflow", "u2r"),
    ("loadmodule", "u2r"),
    ("rootkit", "u2r"),
    ("perl", "u2r"),
    ("sqlattack", "u2r"),
    ("xterm", "u2r"),
    ("ps", "u2r"),
];

/// CICIDS2017 labels (MachineLearningCVE / TrafficLabelling CSVs), plus the grouped "Attack
/// Type" values of common cleaned variants.
pub const CICIDS2017: &[(&str, &str)] = &[
    ("benign", BENIGN),
    ("dos hulk", "dos"),
    ("dos goldeneye", "dos"),
    ("dos slowloris", "dos"),
    ("dos slowhttptest", "dos"),
    ("ddos", "ddos"),
    ("portscan", "scan"),
    ("ftp-patator", "brute-force"),
    ("ssh-patator", "brute-force"),
    ("web attack - brute force", "web-attack"),
    ("web attack - xss", "web-attack"),
    ("web attack - sql injection", "web-attack"),
    ("bot", "botnet"),
    ("infiltration", "infiltration"),
    ("heartbleed", "heartbleed"),
    // Grouped labels of cleaned variants.
    ("normal traffic", BENIGN),
    ("dos", "dos"),
    ("port scanning", "scan"),
    ("brute force", "brute-force"),
    ("web attack", "web-attack"),
    ("web attacks", "web-attack"),
    ("bots", "botnet"),
];

/// CSE-CIC-IDS2018 labels (also NF-CSE-CIC-IDS2018-v2's `Attack`).
pub const CSE_CIC_IDS2018: &[(&str, &str)] = &[
    ("benign", BENIGN),
    ("ddos attack-hoic", "ddos"),
    ("ddos attacks-loic-http", "ddos"),
    ("ddos attack-loic-udp", "ddos"),
    ("dos attacks-hulk", "dos"),
    ("dos attacks-slowhttptest", "dos"),
    ("dos attacks-goldeneye", "dos"),
    ("dos attacks-slowloris", "dos"),
    ("bot", "botnet"),
    ("ftp-bruteforce", "brute-force"),
    ("ssh-bruteforce", "brute-force"),
    ("brute force -web", "web-attack"),
    ("brute force -xss", "web-attack"),
    ("sql injection", "web-attack"),
    ("infilteration", "infiltration"),
    ("infiltration", "infiltration"),
];

/// UNSW-NB15 `attack_cat` (also NF-UNSW-NB15-v2's `Attack`). Reconnaissance is `scan`.
pub const UNSW_NB15: &[(&str, &str)] = &[
    ("normal", BENIGN),
    ("benign", BENIGN),
    ("fuzzers", "fuzzers"),
    ("analysis", "analysis"),
    ("backdoor", "backdoor"),
    ("backdoors", "backdoor"),
    ("dos", "dos"),
    ("exploits", "exploit"),
    ("generic", "generic"),
    ("reconnaissance", "scan"),
    ("shellcode", "shellcode"),
    ("worms", "worm"),
];

/// NF-ToN-IoT-v2 `Attack`.
pub const TON_IOT: &[(&str, &str)] = &[
    ("benign", BENIGN),
    ("scanning", "scan"),
    ("xss", "web-attack"),
    ("injection", "web-attack"),
    ("ddos", "ddos"),
    ("dos", "dos"),
    ("password", "brute-force"),
    ("backdoor", "backdoor"),
    ("mitm", "mitm"),
    ("ransomware", "ransomware"),
];

/// NF-BoT-IoT-v2 `Attack`. `theft` (keylogging and data theft) is `exfiltration`.
pub const BOT_IOT: &[(&str, &str)] = &[
    ("benign", BENIGN),
    ("reconnaissance", "scan"),
    ("ddos", "ddos"),
    ("dos", "dos"),
    ("theft", "exfiltration"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_maps_into_the_vocabulary() {
        for table in [
            LabelTable::Kdd,
            LabelTable::CicFlowMeter,
            LabelTable::NfV2,
            LabelTable::UnswNb15,
        ] {
            for (label, family) in table.entries() {
                assert!(is_family(family), "{table:?}: {label} → {family}");
                assert_eq!(normalise_label(label), label, "{table:?}: not normalised");
                assert_eq!(table.family(label), Some(family), "{table:?}: {label}");
            }
        }
    }

    #[test]
    fn kdd_has_all_39_attack_types() {
        assert_eq!(KDD.len(), 40);
        assert_eq!(LabelTable::Kdd.family("neptune"), Some("dos"));
        assert_eq!(LabelTable::Kdd.family("portsweep"), Some("scan"));
        assert_eq!(LabelTable::Kdd.family("guess_passwd"), Some("brute-force"));
        assert_eq!(LabelTable::Kdd.family("buffer_overflow"), Some("u2r"));
        assert_eq!(LabelTable::Kdd.family("warezmaster"), Some("r2l"));
    }

    #[test]
    fn normalisation_handles_mojibake_and_kdd_dots() {
        for raw in [
            "Web Attack \u{FFFD} Brute Force",
            "Web Attack ï¿½ Brute Force",
            "Web Attack – Brute Force",
            " web attack  -  brute force ",
        ] {
            assert_eq!(normalise_label(raw), "web attack - brute force", "{raw:?}");
        }
        assert_eq!(normalise_label("smurf."), "smurf");
        assert_eq!(normalise_label("BENIGN"), "benign");
        assert_eq!(normalise_label(" Reconnaissance "), "reconnaissance");
        assert_eq!(normalise_label("DoS slowloris"), "dos slowloris");
    }
}

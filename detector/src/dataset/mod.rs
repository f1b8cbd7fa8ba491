//! Labelled flow datasets: the in-memory table training and evaluation work on, its file format
//! (one file, zstd-compressed columns behind a JSON header; see `docs/dataset-format.md`),
//! importers for public flow datasets and summary statistics.

// The importers and dataset commands are the developer's (`detector dataset`), not the
// daemon's: built with the `trainer` feature only.
#[cfg(feature = "trainer")]
pub mod cicflowmeter;
#[cfg(feature = "trainer")]
pub mod cli;
#[cfg(feature = "trainer")]
pub mod export;
pub mod families;
#[cfg(feature = "trainer")]
pub mod flows;
#[cfg(feature = "trainer")]
pub mod import;
#[cfg(feature = "trainer")]
pub mod kdd;
#[cfg(feature = "trainer")]
pub mod nfv2;
#[cfg(feature = "trainer")]
pub mod rows;
#[cfg(feature = "trainer")]
pub mod stats;
#[cfg(feature = "trainer")]
pub mod unsw;

use std::{collections::HashMap, fmt, fs, io::Read, path::Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[cfg(feature = "trainer")]
pub use import::{
    detect_format, import_file, Format, ImportOptions, ImportSummary, OnError, RowError,
};

/// First eight bytes of every dataset file.
pub const MAGIC: [u8; 8] = *b"DETECTDS";
/// The file-format version this build writes and reads.
pub const VERSION: u32 = 1;
/// zstd level for the columns: fast, and within a few percent of the best ratio on flow tables.
const ZSTD_LEVEL: i32 = 3;
/// Bytes before the JSON header: magic, version (u32 LE), header length (u32 LE).
const PREAMBLE: usize = 16;

/// A labelled table of flows from one feature set.
#[derive(Clone, Default)]
pub struct Dataset {
    /// Feature-set name ("nsl-kdd", "cicflowmeter", "nf-v2", "unsw-nb15", "detector-flow-v1", …);
    /// one feature set per file.
    pub source: String,
    /// Column names of `features`.
    pub feature_names: Vec<String>,
    /// Row-major, `rows() * feature_names.len()` values.
    pub features: Vec<f32>,
    /// 0 benign, 1 attack.
    pub label: Vec<u8>,
    /// Index into `family_names`: the coarse cross-dataset family (see [`families`]).
    pub family: Vec<u16>,
    /// Family dictionary.
    pub family_names: Vec<String>,
    /// Index into `attack_names`: the source's own label, normalised lowercase.
    pub attack: Vec<u16>,
    /// Attack dictionary.
    pub attack_names: Vec<String>,
    /// Index into `session_names`: rows of one session never go to both support and query.
    pub session: Vec<u32>,
    /// Session dictionary.
    pub session_names: Vec<String>,
    /// Flow start times (ns since the Unix epoch) when the source has them.
    pub timestamp_ns: Option<Vec<u64>>,
    /// Name → index lookups for `push`; rebuilt when a name vector's length changes under it.
    index: NameIndex,
}

#[derive(Clone, Default)]
struct NameIndex {
    family: Interner,
    attack: Interner,
    session: Interner,
}

#[derive(Clone, Default)]
struct Interner {
    map: HashMap<String, u32>,
    indexed: usize,
}

impl Interner {
    fn intern(&mut self, names: &mut Vec<String>, name: &str, max: usize) -> Option<u32> {
        if self.indexed != names.len() {
            self.map.clear();
            for (i, n) in names.iter().enumerate() {
                self.map.entry(n.clone()).or_insert(i as u32);
            }
            self.indexed = names.len();
        }
        if let Some(&i) = self.map.get(name) {
            if names.get(i as usize).map(String::as_str) == Some(name) {
                return Some(i);
            }
        }
        if names.len() >= max {
            return None;
        }
        let i = names.len() as u32;
        names.push(name.to_string());
        self.map.insert(name.to_string(), i);
        self.indexed = names.len();
        Some(i)
    }
}

/// What can go wrong reading, writing or combining datasets.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file does not start with [`MAGIC`].
    #[error("{file}: not a detector dataset file (bad magic bytes)")]
    BadMagic { file: String },
    /// The file has a format version this build does not read.
    #[error("{file}: dataset format version {found} is not supported (this build reads version {VERSION})")]
    Version { file: String, found: u32 },
    /// The file ends before the data the header promises.
    #[error("{file}: truncated: {what} needs bytes {start}..{end}, the file has {len}")]
    Truncated {
        file: String,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    /// The JSON header is malformed or contradicts itself.
    #[error("{file}: bad header: {reason}")]
    Header { file: String, reason: String },
    /// A column block does not decompress to the size the header gives.
    #[error("{file}: column `{column}` is corrupt: {reason}")]
    Column {
        file: String,
        column: String,
        reason: String,
    },
    /// The stored column blocks do not hash to the digest in the header.
    #[error("{file}: column data digest mismatch (header {expected}, data {actual}): the file is corrupt")]
    BlocksDigest {
        file: String,
        expected: String,
        actual: String,
    },
    /// The content does not hash to the digest in the header.
    #[error("{file}: content digest mismatch (header {expected}, content {actual}): the file is corrupt")]
    Digest {
        file: String,
        expected: String,
        actual: String,
    },
    /// Bytes follow the last column.
    #[error("{file}: {count} unexpected bytes after the last column")]
    Trailing { file: String, count: u64 },
    /// The decoded columns do not form a valid dataset (lengths, dictionary indices, labels).
    #[error("{file}: inconsistent dataset: {reason}")]
    Inconsistent { file: String, reason: String },
    /// Reading or writing the file failed.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A row or dataset does not fit this one (feature count, source, timestamps, dictionaries).
    #[error("{0}")]
    Mismatch(String),
}

/// JSON header of a dataset file; see docs/dataset-format.md.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    source: String,
    rows: u64,
    feature_names: Vec<String>,
    family_names: Vec<String>,
    attack_names: Vec<String>,
    session_names: Vec<String>,
    has_timestamps: bool,
    compression: String,
    columns: Vec<ColumnEntry>,
    /// sha256 of the decoded content ([`Dataset::digest`]).
    sha256: String,
    /// sha256 of the compressed column blocks as stored: catches any damaged byte, even one
    /// that happens to decode to the same content.
    blocks_sha256: String,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct ColumnEntry {
    role: String,
    name: String,
    dtype: String,
    compressed_bytes: u64,
}

const FORMAT_NAME: &str = "detector-dataset";

impl Dataset {
    /// An empty dataset of feature set `source` with these feature columns.
    pub fn new(source: &str, feature_names: Vec<String>) -> Self {
        Dataset {
            source: source.to_string(),
            feature_names,
            ..Default::default()
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.label.len()
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Features of row `i`. Panics when `i >= rows()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        let n = self.n_features();
        &self.features[i * n..(i + 1) * n]
    }

    /// Family name of row `i`.
    pub fn family_of(&self, i: usize) -> &str {
        &self.family_names[self.family[i] as usize]
    }

    /// Attack name of row `i`.
    pub fn attack_of(&self, i: usize) -> &str {
        &self.attack_names[self.attack[i] as usize]
    }

    /// Session name of row `i`.
    pub fn session_of(&self, i: usize) -> &str {
        &self.session_names[self.session[i] as usize]
    }

    /// Appends a row, interning the names. Panics where [`Dataset::try_push`] fails (wrong
    /// feature count, label not 0/1, timestamp given for some rows only, full dictionary);
    /// code handling outside input calls `try_push`.
    pub fn push(
        &mut self,
        features: &[f32],
        label: u8,
        family: &str,
        attack: &str,
        session: &str,
        ts_ns: Option<u64>,
    ) {
        if let Err(e) = self.try_push(features, label, family, attack, session, ts_ns) {
            panic!("Dataset::push: {e}");
        }
    }

    /// Appends a row, interning the names; on error nothing is appended.
    pub fn try_push(
        &mut self,
        features: &[f32],
        label: u8,
        family: &str,
        attack: &str,
        session: &str,
        ts_ns: Option<u64>,
    ) -> Result<(), DatasetError> {
        if features.len() != self.n_features() {
            return Err(DatasetError::Mismatch(format!(
                "row has {} features, dataset `{}` has {}",
                features.len(),
                self.source,
                self.n_features()
            )));
        }
        if label > 1 {
            return Err(DatasetError::Mismatch(format!(
                "label {label} is not 0 (benign) or 1 (attack)"
            )));
        }
        match (&self.timestamp_ns, ts_ns) {
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(_)) if self.rows() == 0 => {}
            _ => {
                return Err(DatasetError::Mismatch(
                    "a timestamp must be given for every row or for none".into(),
                ))
            }
        }
        let full = |what: &str| DatasetError::Mismatch(format!("{what} dictionary is full"));
        let fam = self
            .index
            .family
            .intern(&mut self.family_names, family, u16::MAX as usize + 1)
            .ok_or_else(|| full("family"))?;
        let att = self
            .index
            .attack
            .intern(&mut self.attack_names, attack, u16::MAX as usize + 1)
            .ok_or_else(|| full("attack"))?;
        let ses = self
            .index
            .session
            .intern(&mut self.session_names, session, u32::MAX as usize)
            .ok_or_else(|| full("session"))?;
        self.features.extend_from_slice(features);
        self.label.push(label);
        self.family.push(fam as u16);
        self.attack.push(att as u16);
        self.session.push(ses);
        if let Some(ts) = ts_ns {
            self.timestamp_ns.get_or_insert_with(Vec::new).push(ts);
        }
        Ok(())
    }

    /// Appends all rows of `other`, which must have the same source and feature names; names
    /// are re-interned, so the dictionaries of the two may differ.
    pub fn append(&mut self, other: &Dataset) -> anyhow::Result<()> {
        if other.source != self.source {
            anyhow::bail!(
                "cannot append a `{}` dataset to a `{}` dataset: one feature set per file",
                other.source,
                self.source
            );
        }
        if other.feature_names != self.feature_names {
            let diff = self
                .feature_names
                .iter()
                .zip(&other.feature_names)
                .position(|(a, b)| a != b)
                .map(|i| {
                    format!(
                        "column {i} is `{}` here, `{}` there",
                        self.feature_names[i], other.feature_names[i]
                    )
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} features here, {} there",
                        self.n_features(),
                        other.n_features()
                    )
                });
            anyhow::bail!(
                "cannot append: the `{}` datasets have different feature columns ({diff})",
                self.source
            );
        }
        other
            .validate()
            .map_err(|reason| anyhow::anyhow!("cannot append: the other dataset is {reason}"))?;
        if other.rows() == 0 {
            return Ok(());
        }
        match (&self.timestamp_ns, &other.timestamp_ns) {
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(_)) if self.rows() == 0 => {}
            (mine, _) => anyhow::bail!(
                "cannot append: {} has timestamps and {} has not",
                if mine.is_some() {
                    "this dataset"
                } else {
                    "the other dataset"
                },
                if mine.is_some() {
                    "the other"
                } else {
                    "this one"
                },
            ),
        }
        let remap = |index: &mut Interner,
                     names: &mut Vec<String>,
                     theirs: &[String],
                     max: usize,
                     what: &str|
         -> anyhow::Result<Vec<u32>> {
            theirs
                .iter()
                .map(|n| {
                    index.intern(names, n, max).ok_or_else(|| {
                        anyhow::anyhow!("cannot append: the {what} dictionary is full")
                    })
                })
                .collect()
        };
        let fam = remap(
            &mut self.index.family,
            &mut self.family_names,
            &other.family_names,
            u16::MAX as usize + 1,
            "family",
        )?;
        let att = remap(
            &mut self.index.attack,
            &mut self.attack_names,
            &other.attack_names,
            u16::MAX as usize + 1,
            "attack",
        )?;
        let ses = remap(
            &mut self.index.session,
            &mut self.session_names,
            &other.session_names,
            u32::MAX as usize,
            "session",
        )?;
        self.features.extend_from_slice(&other.features);
        self.label.extend_from_slice(&other.label);
        self.family
            .extend(other.family.iter().map(|&f| fam[f as usize] as u16));
        self.attack
            .extend(other.attack.iter().map(|&a| att[a as usize] as u16));
        self.session
            .extend(other.session.iter().map(|&s| ses[s as usize]));
        if let Some(ts) = &other.timestamp_ns {
            self.timestamp_ns
                .get_or_insert_with(Vec::new)
                .extend_from_slice(ts);
        }
        Ok(())
    }

    /// Checks lengths, labels and dictionary indices; the reason names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let rows = self.rows();
        let expected = rows.checked_mul(self.n_features());
        if expected != Some(self.features.len()) {
            return Err(format!(
                "{} feature values for {rows} rows of {} features",
                self.features.len(),
                self.n_features()
            ));
        }
        for (what, len) in [
            ("family", self.family.len()),
            ("attack", self.attack.len()),
            ("session", self.session.len()),
        ] {
            if len != rows {
                return Err(format!("{len} {what} values for {rows} rows"));
            }
        }
        if let Some(ts) = &self.timestamp_ns {
            if ts.len() != rows {
                return Err(format!("{} timestamps for {rows} rows", ts.len()));
            }
        }
        if let Some(i) = self.label.iter().position(|&l| l > 1) {
            return Err(format!("row {i} has label {} (not 0 or 1)", self.label[i]));
        }
        let check = |what: &str, idx: &mut dyn Iterator<Item = usize>, n: usize| match idx
            .enumerate()
            .find(|&(_, v)| v >= n)
        {
            Some((i, v)) => Err(format!(
                "row {i} has {what} index {v}, the {what} dictionary has {n} names"
            )),
            None => Ok(()),
        };
        check(
            "family",
            &mut self.family.iter().map(|&v| v as usize),
            self.family_names.len(),
        )?;
        check(
            "attack",
            &mut self.attack.iter().map(|&v| v as usize),
            self.attack_names.len(),
        )?;
        check(
            "session",
            &mut self.session.iter().map(|&v| v as usize),
            self.session_names.len(),
        )?;
        Ok(())
    }

    /// Lowercase hex sha256 of the content (see docs/dataset-format.md for the exact bytes):
    /// independent of compression, so equal datasets have equal digests.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT_NAME.as_bytes());
        h.update([0u8]);
        let put_str = |h: &mut Sha256, s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        let put_strs = |h: &mut Sha256, v: &[String]| {
            h.update((v.len() as u64).to_le_bytes());
            for s in v {
                put_str(h, s);
            }
        };
        put_str(&mut h, &self.source);
        put_strs(&mut h, &self.feature_names);
        put_strs(&mut h, &self.family_names);
        put_strs(&mut h, &self.attack_names);
        put_strs(&mut h, &self.session_names);
        h.update((self.rows() as u64).to_le_bytes());
        hash_le(&mut h, &self.features, |v| v.to_le_bytes());
        h.update(&self.label);
        hash_le(&mut h, &self.family, |v| v.to_le_bytes());
        hash_le(&mut h, &self.attack, |v| v.to_le_bytes());
        hash_le(&mut h, &self.session, |v| v.to_le_bytes());
        match &self.timestamp_ns {
            Some(ts) => {
                h.update([1u8]);
                hash_le(&mut h, ts, |v| v.to_le_bytes());
            }
            None => h.update([0u8]),
        }
        hex::encode(h.finalize())
    }

    /// Writes the dataset to `path` atomically (a temporary file in the same folder, then a
    /// rename), so a reader never sees a half-written file.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = self
            .encode()
            .map_err(|e| anyhow::anyhow!("cannot write dataset {}: {e}", path.display()))?;
        crate::state::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Reads a dataset file, checking its magic, version, lengths and content digest.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = path.display().to_string();
        let bytes = fs::read(path).map_err(|source| DatasetError::Io {
            file: file.clone(),
            source,
        })?;
        Ok(Self::decode(&bytes, &file)?)
    }

    /// The file image of this dataset.
    pub fn encode(&self) -> Result<Vec<u8>, DatasetError> {
        self.validate().map_err(DatasetError::Mismatch)?;
        let rows = self.rows();
        let n = self.n_features();
        let mut blocks: Vec<(ColumnEntry, Vec<u8>)> = Vec::with_capacity(n + 5);
        let compress = |raw: &[u8]| {
            zstd::bulk::compress(raw, ZSTD_LEVEL)
                .map_err(|e| DatasetError::Mismatch(format!("zstd compression failed: {e}")))
        };
        let mut raw = Vec::with_capacity(rows * 8);
        for (j, name) in self.feature_names.iter().enumerate() {
            raw.clear();
            for i in 0..rows {
                raw.extend_from_slice(&self.features[i * n + j].to_le_bytes());
            }
            blocks.push((entry("feature", name, "f32"), compress(&raw)?));
        }
        blocks.push((entry("label", "label", "u8"), compress(&self.label)?));
        for (role, values) in [("family", &self.family), ("attack", &self.attack)] {
            raw.clear();
            values
                .iter()
                .for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
            blocks.push((entry(role, role, "u16"), compress(&raw)?));
        }
        raw.clear();
        self.session
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
        blocks.push((entry("session", "session", "u32"), compress(&raw)?));
        if let Some(ts) = &self.timestamp_ns {
            raw.clear();
            ts.iter()
                .for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
            blocks.push((
                entry("timestamp_ns", "timestamp_ns", "u64"),
                compress(&raw)?,
            ));
        }
        for (e, b) in &mut blocks {
            e.compressed_bytes = b.len() as u64;
        }
        let mut header = Header {
            format: FORMAT_NAME.into(),
            version: VERSION,
            source: self.source.clone(),
            rows: rows as u64,
            feature_names: self.feature_names.clone(),
            family_names: self.family_names.clone(),
            attack_names: self.attack_names.clone(),
            session_names: self.session_names.clone(),
            has_timestamps: self.timestamp_ns.is_some(),
            compression: "zstd".into(),
            columns: blocks.iter().map(|(e, _)| e.clone()).collect(),
            sha256: self.digest(),
            blocks_sha256: String::new(),
        };
        let mut blocks_hash = Sha256::new();
        for (_, b) in &blocks {
            blocks_hash.update(b);
        }
        header.blocks_sha256 = hex::encode(blocks_hash.finalize());
        let json = serde_json::to_vec(&header)
            .map_err(|e| DatasetError::Mismatch(format!("header serialisation failed: {e}")))?;
        let header_len = u32::try_from(json.len()).map_err(|_| {
            DatasetError::Mismatch(format!(
                "header is {} bytes, more than the format's 4 GiB",
                json.len()
            ))
        })?;
        let body: usize = blocks.iter().map(|(_, b)| b.len()).sum();
        let mut out = Vec::with_capacity(PREAMBLE + json.len() + body);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(&json);
        for (_, b) in &blocks {
            out.extend_from_slice(b);
        }
        Ok(out)
    }

    /// Parses a file image; `file` names it in errors. Never panics on corrupt input.
    pub fn decode(bytes: &[u8], file: &str) -> Result<Self, DatasetError> {
        let f = || file.to_string();
        let len = bytes.len() as u64;
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(DatasetError::BadMagic { file: f() });
        }
        if bytes.len() < PREAMBLE {
            return Err(DatasetError::Truncated {
                file: f(),
                what: "the preamble".into(),
                start: 0,
                end: PREAMBLE as u64,
                len,
            });
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != VERSION {
            return Err(DatasetError::Version {
                file: f(),
                found: version,
            });
        }
        let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as u64;
        let header_end = PREAMBLE as u64 + header_len;
        if header_end > len {
            return Err(DatasetError::Truncated {
                file: f(),
                what: "the JSON header".into(),
                start: PREAMBLE as u64,
                end: header_end,
                len,
            });
        }
        let header: Header = serde_json::from_slice(&bytes[PREAMBLE..header_end as usize])
            .map_err(|e| DatasetError::Header {
                file: f(),
                reason: format!("not valid JSON: {e}"),
            })?;
        let bad_header = |reason: String| DatasetError::Header { file: f(), reason };
        if header.format != FORMAT_NAME {
            return Err(bad_header(format!(
                "format is `{}`, expected `{FORMAT_NAME}`",
                header.format
            )));
        }
        if header.version != VERSION {
            return Err(bad_header(format!(
                "header version {} differs from the file's version {VERSION}",
                header.version
            )));
        }
        if header.compression != "zstd" {
            return Err(bad_header(format!(
                "compression `{}` is not supported (only zstd)",
                header.compression
            )));
        }
        let mut expected: Vec<ColumnEntry> = header
            .feature_names
            .iter()
            .map(|n| entry("feature", n, "f32"))
            .collect();
        expected.push(entry("label", "label", "u8"));
        expected.push(entry("family", "family", "u16"));
        expected.push(entry("attack", "attack", "u16"));
        expected.push(entry("session", "session", "u32"));
        if header.has_timestamps {
            expected.push(entry("timestamp_ns", "timestamp_ns", "u64"));
        }
        if header.columns.len() != expected.len() {
            return Err(bad_header(format!(
                "{} columns listed, {} expected for {} features{}",
                header.columns.len(),
                expected.len(),
                header.feature_names.len(),
                if header.has_timestamps {
                    " and timestamps"
                } else {
                    ""
                }
            )));
        }
        for (got, want) in header.columns.iter().zip(&expected) {
            if (&got.role, &got.name, &got.dtype) != (&want.role, &want.name, &want.dtype) {
                return Err(bad_header(format!(
                    "column `{}` ({} {}) where `{}` ({} {}) was expected",
                    got.name, got.role, got.dtype, want.name, want.role, want.dtype
                )));
            }
        }
        let rows = usize::try_from(header.rows)
            .map_err(|_| bad_header(format!("{} rows do not fit in memory", header.rows)))?;
        let n = header.feature_names.len();
        let too_big = || bad_header(format!("{} rows of {n} features overflow", header.rows));
        rows.checked_mul(n)
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(too_big)?;
        rows.checked_mul(8).ok_or_else(too_big)?;

        // Check the blocks' extent and digest before decompressing anything.
        let mut end = header_end;
        for col in &header.columns {
            let col_end = end.saturating_add(col.compressed_bytes);
            if col_end > len {
                return Err(DatasetError::Truncated {
                    file: f(),
                    what: format!("column `{}`", col.name),
                    start: end,
                    end: col_end,
                    len,
                });
            }
            end = col_end;
        }
        if end != len {
            return Err(DatasetError::Trailing {
                file: f(),
                count: len - end,
            });
        }
        let actual = hex::encode(Sha256::digest(&bytes[header_end as usize..]));
        if actual != header.blocks_sha256 {
            return Err(DatasetError::BlocksDigest {
                file: f(),
                expected: header.blocks_sha256,
                actual,
            });
        }

        let mut offset = header_end;
        let mut ds = Dataset::new(&header.source, header.feature_names.clone());
        // Columns are decoded before the row-major table is allocated, so a header claiming
        // more rows than the file holds fails on the data instead of on a huge allocation.
        let mut feature_columns: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut timestamps = None;
        for col in &header.columns {
            let end = offset + col.compressed_bytes;
            let width = dtype_width(&col.dtype);
            let raw = decompress_exact(&bytes[offset as usize..end as usize], rows * width)
                .map_err(|reason| DatasetError::Column {
                    file: f(),
                    column: col.name.clone(),
                    reason,
                })?;
            offset = end;
            match col.role.as_str() {
                "feature" => feature_columns.push(raw),
                "label" => ds.label = raw,
                "family" => ds.family = le_u16(&raw),
                "attack" => ds.attack = le_u16(&raw),
                "session" => {
                    ds.session = raw
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                _ => {
                    timestamps = Some(
                        raw.chunks_exact(8)
                            .map(|c| {
                                u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                            })
                            .collect(),
                    )
                }
            }
        }
        ds.features = vec![0.0; rows * n];
        for (j, raw) in feature_columns.into_iter().enumerate() {
            for (i, c) in raw.chunks_exact(4).enumerate() {
                ds.features[i * n + j] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        ds.family_names = header.family_names;
        ds.attack_names = header.attack_names;
        ds.session_names = header.session_names;
        ds.timestamp_ns = timestamps;
        let actual = ds.digest();
        if actual != header.sha256 {
            return Err(DatasetError::Digest {
                file: f(),
                expected: header.sha256,
                actual,
            });
        }
        ds.validate()
            .map_err(|reason| DatasetError::Inconsistent { file: f(), reason })?;
        Ok(ds)
    }
}

impl PartialEq for Dataset {
    fn eq(&self, o: &Self) -> bool {
        self.source == o.source
            && self.feature_names == o.feature_names
            && self.features == o.features
            && self.label == o.label
            && self.family == o.family
            && self.family_names == o.family_names
            && self.attack == o.attack
            && self.attack_names == o.attack_names
            && self.session == o.session
            && self.session_names == o.session_names
            && self.timestamp_ns == o.timestamp_ns
    }
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("source", &self.source)
            .field("rows", &self.rows())
            .field("features", &self.n_features())
            .field("families", &self.family_names)
            .field("attacks", &self.attack_names.len())
            .field("sessions", &self.session_names.len())
            .field("timestamps", &self.timestamp_ns.is_some())
            .finish()
    }
}

fn entry(role: &str, name: &str, dtype: &str) -> ColumnEntry {
    ColumnEntry {
        role: role.into(),
        name: name.into(),
        dtype: dtype.into(),
        compressed_bytes: 0,
    }
}

fn dtype_width(dtype: &str) -> usize {
    match dtype {
        "u8" => 1,
        "u16" => 2,
        "f32" | "u32" => 4,
        _ => 8,
    }
}

fn le_u16(raw: &[u8]) -> Vec<u16> {
    raw.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Decompresses one zstd block that must hold exactly `expected` bytes. Memory grows with the
/// data actually decoded, so a header claiming huge sizes cannot make it allocate them.
fn decompress_exact(block: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(expected.min(64 << 20));
    let decoder =
        zstd::stream::read::Decoder::with_buffer(block).map_err(|e| format!("zstd: {e}"))?;
    decoder
        .take(expected as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() != expected {
        return Err(format!(
            "decompresses to {}{} bytes, {expected} expected",
            out.len(),
            if out.len() > expected { "+" } else { "" }
        ));
    }
    Ok(out)
}

fn hash_le<T: Copy, const N: usize>(h: &mut Sha256, values: &[T], to: impl Fn(T) -> [u8; N]) {
    let mut buf = Vec::with_capacity(N * 8192);
    for chunk in values.chunks(8192) {
        buf.clear();
        for &v in chunk {
            buf.extend_from_slice(&to(v));
        }
        h.update(&buf);
    }
}

/// Helpers shared by the dataset tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// The shared folder (panics, saying where it looked, when there is none).
    pub fn shared_dir() -> PathBuf {
        crate::corpus::shared_dir().expect(
            "shared corpus not found: set DETECTOR_SHARED_DIR to the folder holding corpus/ \
             (tried $DETECTOR_SHARED_DIR, <CARGO_MANIFEST_DIR>/../../shared, /work/shared)",
        )
    }

    /// A file of the tabular corpus.
    #[cfg(feature = "trainer")]
    pub fn corpus(name: &str) -> PathBuf {
        shared_dir().join("corpus/tabular").join(name)
    }

    /// A fresh, empty temporary folder for one test.
    pub fn temp_dir(test: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("detector-dataset-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        d
    }

    /// Writes `text` to `dir/name` and returns the path.
    #[cfg(feature = "trainer")]
    pub fn fixture(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write fixture");
        p
    }
}

#[cfg(test)]
mod tests {
    use super::{test_util::temp_dir, *};

    fn sample() -> Dataset {
        let mut ds = Dataset::new("test", vec!["a".into(), "b".into()]);
        ds.push(&[1.0, 2.0], 0, "benign", "benign", "s1", Some(10));
        ds.push(&[3.5, -4.0], 1, "dos", "neptune", "s2", Some(20));
        ds.push(&[f32::MAX, 0.0], 1, "dos", "smurf", "s2", Some(30));
        ds
    }

    #[test]
    fn push_interns_names() {
        let ds = sample();
        assert_eq!(ds.rows(), 3);
        assert_eq!(ds.n_features(), 2);
        assert_eq!(ds.row(1), &[3.5, -4.0]);
        assert_eq!(ds.family_names, vec!["benign", "dos"]);
        assert_eq!(ds.family, vec![0, 1, 1]);
        assert_eq!(ds.session, vec![0, 1, 1]);
        assert_eq!(ds.attack_of(2), "smurf");
        assert_eq!(ds.timestamp_ns, Some(vec![10, 20, 30]));
    }

    #[test]
    fn try_push_rejects_bad_rows_without_appending() {
        let mut ds = sample();
        assert!(ds
            .try_push(&[1.0], 0, "benign", "benign", "s", Some(1))
            .is_err());
        assert!(ds
            .try_push(&[1.0, 1.0], 2, "benign", "benign", "s", Some(1))
            .is_err());
        assert!(ds
            .try_push(&[1.0, 1.0], 0, "benign", "benign", "s", None)
            .is_err());
        assert_eq!(ds.rows(), 3);
        assert!(ds.validate().is_ok());
    }

    #[test]
    fn write_read_round_trip() {
        let dir = temp_dir("round-trip");
        let path = dir.join("a.dds");
        let ds = sample();
        ds.write(&path).unwrap();
        let back = Dataset::read(&path).unwrap();
        assert_eq!(back, ds);
        assert_eq!(back.digest(), ds.digest());
        // Still usable for pushing after a read.
        let mut back = back;
        back.push(&[0.0, 0.0], 1, "dos", "neptune", "s3", Some(40));
        assert_eq!(back.attack[3], back.attack[1]);

        let mut no_ts = Dataset::new("x", vec![]);
        no_ts.push(&[], 0, "benign", "normal", "s", None);
        no_ts.write(&path).unwrap();
        assert_eq!(Dataset::read(&path).unwrap(), no_ts);
        let empty = Dataset::new("x", vec!["a".into()]);
        empty.write(&path).unwrap();
        assert_eq!(Dataset::read(&path).unwrap(), empty);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn digest_depends_on_content_only() {
        let a = sample();
        let mut b = sample();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        b.features[0] = 1.5;
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn append_remaps_dictionaries() {
        let mut a = sample();
        let mut b = Dataset::new("test", vec!["a".into(), "b".into()]);
        b.push(&[9.0, 9.0], 1, "scan", "portsweep", "t1", Some(50));
        b.push(&[8.0, 8.0], 1, "dos", "smurf", "s2", Some(60));
        a.append(&b).unwrap();
        assert_eq!(a.rows(), 5);
        assert_eq!(a.family_of(3), "scan");
        assert_eq!(a.attack_of(4), "smurf");
        assert_eq!(a.session[4], a.session[1]);
        assert_eq!(a.row(4), &[8.0, 8.0]);
        assert!(a.validate().is_ok());

        let other_source = Dataset::new("other", vec!["a".into(), "b".into()]);
        let err = a.append(&other_source).unwrap_err().to_string();
        assert!(err.contains("`other`") && err.contains("`test`"), "{err}");
        let other_cols = Dataset::new("test", vec!["a".into(), "c".into()]);
        let err = a.append(&other_cols).unwrap_err().to_string();
        assert!(err.contains("different feature columns"), "{err}");
        let mut no_ts = Dataset::new("test", vec!["a".into(), "b".into()]);
        no_ts.push(&[0.0, 0.0], 0, "benign", "benign", "x", None);
        let err = a.append(&no_ts).unwrap_err().to_string();
        assert!(err.contains("timestamps"), "{err}");
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let dir = temp_dir("corrupt");
        let path = dir.join("c.dds");
        let mut ds = sample();
        for i in 0..200 {
            ds.push(&[i as f32, 1.0], 1, "dos", "neptune", "s9", Some(i));
        }
        ds.write(&path).unwrap();
        let good = fs::read(&path).unwrap();
        let name = path.display().to_string();
        let err_of = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let e = Dataset::read(&path).expect_err("corrupt file was accepted");
            let msg = format!("{e:#}");
            assert!(msg.contains(&name), "error does not name the file: {msg}");
            msg
        };

        // Truncated anywhere: in the preamble, the header and the columns.
        for cut in (0..good.len()).step_by(3) {
            let msg = err_of(&good[..cut]);
            assert!(
                msg.contains("truncated")
                    || msg.contains("magic")
                    || msg.contains("header")
                    || msg.contains("corrupt"),
                "cut at {cut}: {msg}"
            );
        }
        assert!(err_of(&good[..good.len() - 1]).contains("truncated"));

        let mut bad = good.clone();
        bad[0] ^= 0xff;
        assert!(err_of(&bad).contains("bad magic"));

        let mut bad = good.clone();
        bad[8] = 9;
        assert!(err_of(&bad).contains("version 9 is not supported"));

        // Every single flipped byte after the preamble is caught.
        let mut seen = 0;
        for pos in (PREAMBLE..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[pos] ^= 0x20;
            let msg = err_of(&bad);
            assert!(!msg.is_empty());
            seen += 1;
        }
        assert!(seen > 10);

        // A flip inside the last column's data surfaces as corruption or a digest mismatch.
        let mut bad = good.clone();
        let pos = good.len() - 5;
        bad[pos] ^= 0x01;
        let msg = err_of(&bad);
        assert!(msg.contains("column data digest mismatch"), "{msg}");

        let mut bad = good.clone();
        bad.extend_from_slice(b"junk");
        assert!(err_of(&bad).contains("unexpected bytes"));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn digest_mismatch_is_reported() {
        // Re-encode with a tampered header digest to isolate the digest check.
        let ds = sample();
        let bytes = ds.encode().unwrap();
        let digest = ds.digest();
        let text = bytes.clone();
        let pos = text
            .windows(digest.len())
            .position(|w| w == digest.as_bytes())
            .unwrap();
        let mut bad = bytes;
        bad[pos] = if bad[pos] == b'0' { b'1' } else { b'0' };
        let err = Dataset::decode(&bad, "mem").unwrap_err();
        assert!(matches!(err, DatasetError::Digest { .. }), "{err}");
        assert!(err.to_string().starts_with("mem: content digest mismatch"));
    }

    #[test]
    fn inconsistent_header_is_reported() {
        let ds = sample();
        let mut h: serde_json::Value = {
            let b = ds.encode().unwrap();
            let len = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
            serde_json::from_slice(&b[PREAMBLE..PREAMBLE + len]).unwrap()
        };
        h["rows"] = serde_json::json!(u64::MAX);
        let json = serde_json::to_vec(&h).unwrap();
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&VERSION.to_le_bytes());
        bad.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bad.extend_from_slice(&json);
        let err = Dataset::decode(&bad, "mem").unwrap_err().to_string();
        assert!(
            err.contains("bad header") || err.contains("truncated"),
            "{err}"
        );
    }
}

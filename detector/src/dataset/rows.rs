//! What every importer shares: the streaming row loop, the numeric-cell policy, label → family
//! checks, pseudo-sessions, bad-row handling and the import summary. It knows no format: each
//! format's module brings its [`RowParser`], and `import.rs` picks one.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::File,
    io::Read,
    path::Path,
};

use anyhow::Context;
use csv::ByteRecord;
use serde::Serialize;

use super::{
    families::{self, LabelTable},
    Dataset,
};

/// Value written for +Infinity cells (and finite values beyond f32's range); the negative for
/// -Infinity. Larger than any finite rate in CICIDS2017 (Flow Bytes/s peaks near 2.1e9), so
/// order is kept, and finite in f32.
pub const INF_SENTINEL: f32 = 1e12;

/// Rows per pseudo-session when a source has no addresses to group by.
pub const DEFAULT_SESSION_ROWS: usize = 100;

/// How many skipped-row errors a summary keeps verbatim.
const KEPT_ERRORS: usize = 20;

/// The public flow-dataset layouts the importers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
pub enum Format {
    /// NSL-KDD or KDD Cup 99 text files (41 features, label, optional difficulty).
    #[value(name = "nsl-kdd", alias = "kdd")]
    #[serde(rename = "nsl-kdd")]
    NslKdd,
    /// CICFlowMeter CSVs in the CICIDS2017 layout (raw or cleaned).
    #[value(name = "cicflowmeter", alias = "cic")]
    #[serde(rename = "cicflowmeter")]
    CicFlowMeter,
    /// NF-v2 NetFlow CSVs (the 43 nProbe columns, Label, Attack).
    #[value(name = "nf-v2", alias = "netflow")]
    #[serde(rename = "nf-v2")]
    NfV2,
    /// UNSW-NB15 CSVs: the 49-column headerless files or the training/testing sets.
    #[value(name = "unsw-nb15", alias = "unsw")]
    #[serde(rename = "unsw-nb15")]
    UnswNb15,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::NslKdd => "nsl-kdd",
            Format::CicFlowMeter => "cicflowmeter",
            Format::NfV2 => "nf-v2",
            Format::UnswNb15 => "unsw-nb15",
        })
    }
}

/// What to do with a row that cannot be imported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Skip bad rows and count them; the summary keeps the first 20 errors.
    #[default]
    Skip,
    /// Stop the import at the first bad row, with its error.
    Fail,
}

/// Settings of one import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Layout of the input; detected from the first line when `None`.
    pub format: Option<Format>,
    /// What to do with bad rows.
    pub on_error: OnError,
    /// Rows per pseudo-session for sources without addresses (at least 1).
    pub session_rows: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            format: None,
            on_error: OnError::Skip,
            session_rows: DEFAULT_SESSION_ROWS,
        }
    }
}

/// A row that could not be imported: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}:{line}: {}{message}", column_prefix(.column, .column_name))]
pub struct RowError {
    /// Input file.
    pub file: String,
    /// 1-based line of the row in the file.
    pub line: u64,
    /// 0-based column index, when one column is at fault.
    pub column: Option<usize>,
    /// That column's name.
    pub column_name: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn column_prefix(column: &Option<usize>, name: &Option<String>) -> String {
    match (column, name) {
        (Some(i), Some(n)) => format!("column {} `{n}`: ", i + 1),
        (Some(i), None) => format!("column {}: ", i + 1),
        _ => String::new(),
    }
}

/// Counts of cells the numeric policy replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sanitised {
    /// `Infinity`, `inf` and finite values beyond f32 → ±[`INF_SENTINEL`].
    pub infinite: u64,
    /// `NaN` → 0.
    pub nan: u64,
    /// Empty (or `-` in UNSW-NB15) → 0.
    pub empty: u64,
}

impl Sanitised {
    /// All replaced cells.
    pub fn total(&self) -> u64 {
        self.infinite + self.nan + self.empty
    }
}

/// What an import did.
#[derive(Clone, Debug, Serialize)]
pub struct ImportSummary {
    /// Input file.
    pub file: String,
    /// Layout it was read as.
    pub format: Format,
    /// Feature-set name of the rows.
    pub source: String,
    /// Data rows read (header excluded).
    pub rows_read: u64,
    /// Rows imported.
    pub rows_kept: u64,
    /// Bad rows skipped.
    pub rows_skipped: u64,
    /// Cells replaced by the numeric policy, over kept rows.
    pub sanitised: Sanitised,
    /// The same per input column.
    pub sanitised_by_column: BTreeMap<String, Sanitised>,
    /// Attack labels no table knows: imported with family `other-attack`.
    pub unknown_attacks: BTreeMap<String, u64>,
    /// Categorical values outside the embedded vocabulary (`field=value`), one-hot to `<other>`.
    pub unknown_categories: BTreeMap<String, u64>,
    /// Input columns that are neither features, labels nor known identifiers.
    pub ignored_columns: Vec<String>,
    /// Kept rows per family.
    pub rows_per_family: BTreeMap<String, u64>,
    /// How sessions were formed.
    pub sessions: String,
    /// The first skipped rows' errors.
    pub errors: Vec<RowError>,
}

impl ImportSummary {
    fn new(file: &str, format: Format, source: &str) -> Self {
        ImportSummary {
            file: file.into(),
            format,
            source: source.into(),
            rows_read: 0,
            rows_kept: 0,
            rows_skipped: 0,
            sanitised: Sanitised::default(),
            sanitised_by_column: BTreeMap::new(),
            unknown_attacks: BTreeMap::new(),
            unknown_categories: BTreeMap::new(),
            ignored_columns: Vec::new(),
            rows_per_family: BTreeMap::new(),
            sessions: String::new(),
            errors: Vec::new(),
        }
    }

    /// Warnings worth a look: unknown labels and categories, ignored columns.
    pub fn warnings(&self) -> u64 {
        self.unknown_attacks.values().sum::<u64>()
            + self.unknown_categories.values().sum::<u64>()
            + self.ignored_columns.len() as u64
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}, feature set `{}`)",
            self.file, self.format, self.source
        )?;
        writeln!(
            f,
            "  rows: {} read, {} kept, {} skipped",
            self.rows_read, self.rows_kept, self.rows_skipped
        )?;
        let s = &self.sanitised;
        writeln!(
            f,
            "  cells sanitised: {} (infinite → ±{INF_SENTINEL:e}: {}, NaN → 0: {}, empty → 0: {})",
            s.total(),
            s.infinite,
            s.nan,
            s.empty
        )?;
        for (col, c) in &self.sanitised_by_column {
            writeln!(
                f,
                "    {col}: {} infinite, {} NaN, {} empty",
                c.infinite, c.nan, c.empty
            )?;
        }
        writeln!(f, "  sessions: {}", self.sessions)?;
        writeln!(f, "  rows per family:")?;
        for (fam, n) in &self.rows_per_family {
            writeln!(f, "    {fam:<14} {n:>10}")?;
        }
        for (label, n) in &self.unknown_attacks {
            writeln!(
                f,
                "  warning: unknown attack label `{label}` ({n} rows) → {}",
                families::OTHER_ATTACK
            )?;
        }
        // UNSW-NB15 alone has ~110 protocols outside the vocabulary: show the most frequent.
        let mut cats: Vec<(&String, &u64)> = self.unknown_categories.iter().collect();
        cats.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (cat, n) in cats.iter().take(KEPT_ERRORS) {
            writeln!(
                f,
                "  warning: category `{cat}` not in the vocabulary ({n} rows) → <other>"
            )?;
        }
        if cats.len() > KEPT_ERRORS {
            writeln!(
                f,
                "  … and {} more categories outside the vocabulary",
                cats.len() - KEPT_ERRORS
            )?;
        }
        for col in &self.ignored_columns {
            writeln!(f, "  warning: column `{col}` ignored")?;
        }
        for e in &self.errors {
            writeln!(f, "  skipped: {e}")?;
        }
        if self.rows_skipped > self.errors.len() as u64 {
            writeln!(
                f,
                "  … and {} more skipped rows",
                self.rows_skipped - self.errors.len() as u64
            )?;
        }
        Ok(())
    }
}

/// A problem with one cell or row, before the driver adds file and line.
#[derive(Debug)]
pub(crate) struct CellError {
    pub column: Option<usize>,
    pub message: String,
}

impl CellError {
    pub fn at(column: usize, message: impl Into<String>) -> Self {
        CellError {
            column: Some(column),
            message: message.into(),
        }
    }

    pub fn row(message: impl Into<String>) -> Self {
        CellError {
            column: None,
            message: message.into(),
        }
    }
}

/// One parsed row, reused across rows to avoid allocations.
#[derive(Default)]
pub(crate) struct RowBuf {
    pub features: Vec<f32>,
    /// The source's own label, raw (the driver normalises it).
    pub attack: String,
    /// The 0/1 label when the source has a column for it.
    pub label: Option<u8>,
    /// Explicit session key; `None` asks the driver for a pseudo-session.
    pub session: Option<String>,
    pub ts_ns: Option<u64>,
    /// (column, kind) of cells the policy replaced in this row.
    pub sanitised: Vec<(usize, SanitisedKind)>,
    /// `field=value` of categories outside the vocabulary in this row.
    pub unknown_categories: Vec<String>,
}

impl RowBuf {
    fn clear(&mut self) {
        self.features.clear();
        self.attack.clear();
        self.label = None;
        self.session = None;
        self.ts_ns = None;
        self.sanitised.clear();
        self.unknown_categories.clear();
    }

    /// Parses numeric cell `col` of `rec` with the numeric policy and appends it to the features.
    pub fn number(&mut self, rec: &ByteRecord, col: usize) -> Result<(), CellError> {
        let v = self.value(rec, col)?;
        self.features.push(v);
        Ok(())
    }

    /// Parses numeric cell `col` of `rec` with the numeric policy.
    pub fn value(&mut self, rec: &ByteRecord, col: usize) -> Result<f32, CellError> {
        let cell = rec.get(col).ok_or_else(|| CellError::at(col, "missing"))?;
        let (v, kind) = parse_number(cell).map_err(|m| CellError::at(col, m))?;
        if let Some(kind) = kind {
            self.sanitised.push((col, kind));
        }
        Ok(v)
    }
}

/// Which rule replaced a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SanitisedKind {
    Infinite,
    Nan,
    Empty,
}

/// The numeric-cell policy: trimmed; decimal or `0x` hex; `Infinity`/`inf` (any case, signed)
/// and finite values beyond f32 → ±[`INF_SENTINEL`]; `NaN` → 0; empty → 0.
pub(crate) fn parse_number(cell: &[u8]) -> Result<(f32, Option<SanitisedKind>), String> {
    let text = std::str::from_utf8(cell)
        .map_err(|_| format!("`{}` is not a number", String::from_utf8_lossy(cell)))?
        .trim();
    if text.is_empty() {
        return Ok((0.0, Some(SanitisedKind::Empty)));
    }
    let v: f64 = match text.parse::<f64>() {
        Ok(v) => v,
        Err(_) => {
            let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
            match hex.and_then(|h| u64::from_str_radix(h, 16).ok()) {
                Some(v) => v as f64,
                None => return Err(format!("`{text}` is not a number")),
            }
        }
    };
    if v.is_nan() {
        return Ok((0.0, Some(SanitisedKind::Nan)));
    }
    let f = v as f32;
    if f.is_infinite() {
        return Ok((INF_SENTINEL.copysign(f), Some(SanitisedKind::Infinite)));
    }
    Ok((f, None))
}

/// Parses a 0/1 label cell.
pub(crate) fn parse_binary_label(rec: &ByteRecord, col: usize) -> Result<u8, CellError> {
    let cell = rec.get(col).unwrap_or_default();
    match std::str::from_utf8(cell).map(str::trim) {
        Ok("0") | Ok("0.0") => Ok(0),
        Ok("1") | Ok("1.0") => Ok(1),
        _ => Err(CellError::at(
            col,
            format!(
                "label `{}` is not 0 or 1",
                String::from_utf8_lossy(cell).trim()
            ),
        )),
    }
}

/// A cell as text (lossy for invalid UTF-8, which CICIDS2017's labels contain), trimmed.
pub(crate) fn text(rec: &ByteRecord, col: usize) -> std::borrow::Cow<'_, str> {
    match String::from_utf8_lossy(rec.get(col).unwrap_or_default()) {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.trim()),
        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.trim().to_string()),
    }
}

/// One input layout: knows its columns and turns data rows into [`RowBuf`]s.
pub(crate) trait RowParser {
    /// Feature-set name of the rows.
    fn source(&self) -> &str;
    /// Names of the feature columns produced.
    fn feature_names(&self) -> Vec<String>;
    /// Names of the input columns, for error messages.
    fn column_names(&self) -> &[String];
    /// Fields a data row must have.
    fn expected_len(&self) -> usize;
    /// Where the labels are looked up.
    fn label_table(&self) -> LabelTable;
    /// Whether the layout has timestamps (then every row must give one).
    fn has_timestamps(&self) -> bool;
    /// Input columns that are neither used nor known identifiers.
    fn ignored_columns(&self) -> Vec<String> {
        Vec::new()
    }
    /// How sessions are formed, for the summary.
    fn session_rule(&self) -> String;
    /// Parses one data row (already checked to have `expected_len` fields).
    fn parse(&mut self, rec: &ByteRecord, row: &mut RowBuf) -> Result<(), CellError>;
}

/// Reads a file as bytes, decompressing `.zst` files on the fly.
pub(crate) fn open_input(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "zst") {
        let d = zstd::stream::read::Decoder::new(f)
            .with_context(|| format!("{}: not a zstd file", path.display()))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(f))
    }
}

/// Assigns pseudo-sessions: rows of one attack label, in file order, in blocks of `rows`.
pub(crate) struct PseudoSessions {
    prefix: String,
    rows: usize,
    seen: HashMap<String, u64>,
}

impl PseudoSessions {
    pub fn new(path: &Path, rows: usize) -> Self {
        let stem = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        PseudoSessions {
            prefix: stem,
            rows: rows.max(1),
            seen: HashMap::new(),
        }
    }

    pub fn next(&mut self, attack: &str) -> String {
        let n = self.seen.entry(attack.to_string()).or_insert(0);
        let block = *n / self.rows as u64;
        *n += 1;
        format!("{}/{attack}/{block}", self.prefix)
    }

    pub fn describe(rows: usize) -> String {
        format!(
            "pseudo-sessions: per file and attack label, consecutive blocks of {} rows in file order",
            rows.max(1)
        )
    }
}

/// Reads every data row of an input through `parser` into a new dataset: `first` is the
/// file's first record (a header when `header`, else the first data row), `reader` the rest.
pub(crate) fn read_rows(
    path: &Path,
    format: Format,
    mut parser: Box<dyn RowParser>,
    header: bool,
    mut first: ByteRecord,
    mut reader: csv::Reader<Box<dyn Read>>,
    opts: &ImportOptions,
) -> anyhow::Result<(Dataset, ImportSummary)> {
    let file = path.display().to_string();
    let mut ds = Dataset::new(parser.source(), parser.feature_names());
    let mut summary = ImportSummary::new(&file, format, parser.source());
    summary.ignored_columns = parser.ignored_columns();
    summary.sessions = parser.session_rule();
    if summary.sessions.is_empty() {
        summary.sessions = PseudoSessions::describe(opts.session_rows);
    }
    let mut pseudo = PseudoSessions::new(path, opts.session_rows);
    let table = parser.label_table();
    let mut row = RowBuf::default();
    let mut pending = !header;
    let rec = &mut first;
    loop {
        if !pending && !read_record(&mut reader, rec, &file)? {
            break;
        }
        pending = false;
        summary.rows_read += 1;
        let line = rec.position().map_or(0, |p| p.line());
        let target = RowTarget {
            table,
            pseudo: &mut pseudo,
            ds: &mut ds,
            summary: &mut summary,
        };
        if let Err(e) = import_row(&mut *parser, rec, &mut row, target) {
            let name = e.column.and_then(|c| parser.column_names().get(c).cloned());
            let err = RowError {
                file: file.clone(),
                line,
                column: e.column,
                column_name: name,
                message: e.message,
            };
            match opts.on_error {
                OnError::Fail => return Err(err.into()),
                OnError::Skip => {
                    summary.rows_skipped += 1;
                    if summary.errors.len() < KEPT_ERRORS {
                        summary.errors.push(err);
                    }
                }
            }
        }
    }
    Ok((ds, summary))
}

/// The next CSV record into `rec`; false at the end of the input.
pub(crate) fn read_record(
    reader: &mut csv::Reader<Box<dyn Read>>,
    rec: &mut ByteRecord,
    file: &str,
) -> anyhow::Result<bool> {
    reader
        .read_byte_record(rec)
        .with_context(|| format!("{file}: cannot read CSV"))
}

pub(crate) fn strip_bom(rec: &mut ByteRecord) {
    if rec.get(0).is_some_and(|f| f.starts_with(b"\xef\xbb\xbf")) {
        let fields: Vec<Vec<u8>> = rec
            .iter()
            .enumerate()
            .map(|(i, f)| if i == 0 { f[3..].to_vec() } else { f.to_vec() })
            .collect();
        let pos = rec.position().cloned();
        *rec = ByteRecord::from(fields);
        rec.set_position(pos);
    }
}

/// Where a parsed row goes: the label table that names its family, the pseudo-sessions, the
/// dataset and the summary that counts it.
struct RowTarget<'a> {
    table: LabelTable,
    pseudo: &'a mut PseudoSessions,
    ds: &'a mut Dataset,
    summary: &'a mut ImportSummary,
}

/// Parses, labels and appends one data row; nothing is appended or counted on error.
fn import_row(
    parser: &mut dyn RowParser,
    rec: &ByteRecord,
    row: &mut RowBuf,
    target: RowTarget<'_>,
) -> Result<(), CellError> {
    let RowTarget {
        table,
        pseudo,
        ds,
        summary,
    } = target;
    if rec.len() != parser.expected_len() {
        return Err(CellError::row(format!(
            "{} fields, expected {}",
            rec.len(),
            parser.expected_len()
        )));
    }
    row.clear();
    parser.parse(rec, row)?;
    let attack = families::normalise_label(&row.attack);
    if attack.is_empty() {
        return Err(CellError::row("empty attack label"));
    }
    let (family, known) = match table.family(&attack) {
        Some(f) => (f, true),
        None => (families::OTHER_ATTACK, false),
    };
    let benign = family == families::BENIGN;
    if let Some(label) = row.label {
        if (label == 0) != benign {
            return Err(CellError::row(format!(
                "label {label} contradicts attack label `{attack}` ({})",
                if known {
                    format!("family {family}")
                } else {
                    "unknown, so not benign".into()
                }
            )));
        }
    }
    if parser.has_timestamps() && row.ts_ns.is_none() {
        return Err(CellError::row("no timestamp"));
    }
    let session = match row.session.take() {
        Some(s) => s,
        None => pseudo.next(&attack),
    };
    ds.try_push(
        &row.features,
        u8::from(!benign),
        family,
        &attack,
        &session,
        row.ts_ns,
    )
    .map_err(|e| CellError::row(e.to_string()))?;
    summary.rows_kept += 1;
    *summary
        .rows_per_family
        .entry(family.to_string())
        .or_insert(0) += 1;
    if !known {
        *summary.unknown_attacks.entry(attack).or_insert(0) += 1;
    }
    for c in row.unknown_categories.drain(..) {
        *summary.unknown_categories.entry(c).or_insert(0) += 1;
    }
    for &(col, kind) in &row.sanitised {
        let name = parser
            .column_names()
            .get(col)
            .cloned()
            .unwrap_or_else(|| format!("column {}", col + 1));
        let per = summary.sanitised_by_column.entry(name).or_default();
        for s in [&mut summary.sanitised, per] {
            match kind {
                SanitisedKind::Infinite => s.infinite += 1,
                SanitisedKind::Nan => s.nan += 1,
                SanitisedKind::Empty => s.empty += 1,
            }
        }
    }
    Ok(())
}

/// One-hot encodes `value` of a categorical field against `vocab` (plus a trailing `<other>`
/// column); unknown values are recorded in `row`.
pub(crate) fn one_hot(row: &mut RowBuf, field: &str, vocab: &[&str], value: &str) {
    let hit = vocab
        .iter()
        .position(|v| *v == value)
        .or_else(|| vocab.iter().position(|v| v.eq_ignore_ascii_case(value)));
    let start = row.features.len();
    row.features.resize(start + vocab.len() + 1, 0.0);
    match hit {
        Some(i) => row.features[start + i] = 1.0,
        None => {
            row.features[start + vocab.len()] = 1.0;
            row.unknown_categories.push(format!("{field}={value}"));
        }
    }
}

/// Feature names of a one-hot field: `field=value` per vocabulary entry, then `field=<other>`.
pub(crate) fn one_hot_names(field: &str, vocab: &[&str]) -> Vec<String> {
    vocab
        .iter()
        .map(|v| format!("{field}={v}"))
        .chain([format!("{field}=<other>")])
        .collect()
}

/// Checks header names against required ones; the error lists what is missing.
pub(crate) fn require_columns(
    file: &str,
    layout: &str,
    names: &[String],
    required: &[&str],
) -> anyhow::Result<()> {
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|r| !names.iter().any(|n| n == r))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{file}:1: not a {layout} header: missing column{} {}",
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Header names trimmed, with repeats renamed `name.1`, `name.2` (as pandas does).
pub(crate) fn header_names(rec: &ByteRecord) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    rec.iter()
        .map(|f| {
            let name = String::from_utf8_lossy(f).trim().to_string();
            let n = seen.entry(name.clone()).or_insert(0);
            let out = if *n == 0 {
                name.clone()
            } else {
                format!("{name}.{n}")
            };
            *n += 1;
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_policy() {
        let p = |s: &str| parse_number(s.as_bytes());
        assert_eq!(p(" 1.5 ").unwrap(), (1.5, None));
        assert_eq!(p("-3").unwrap(), (-3.0, None));
        assert_eq!(p("0x000b").unwrap(), (11.0, None));
        assert_eq!(
            p("Infinity").unwrap(),
            (INF_SENTINEL, Some(SanitisedKind::Infinite))
        );
        assert_eq!(
            p("inf").unwrap(),
            (INF_SENTINEL, Some(SanitisedKind::Infinite))
        );
        assert_eq!(
            p("-Infinity").unwrap(),
            (-INF_SENTINEL, Some(SanitisedKind::Infinite))
        );
        assert_eq!(
            p("1e300").unwrap(),
            (INF_SENTINEL, Some(SanitisedKind::Infinite))
        );
        assert_eq!(p("NaN").unwrap(), (0.0, Some(SanitisedKind::Nan)));
        assert_eq!(p("").unwrap(), (0.0, Some(SanitisedKind::Empty)));
        assert_eq!(p("  ").unwrap(), (0.0, Some(SanitisedKind::Empty)));
        assert!(p("abc").unwrap_err().contains("`abc` is not a number"));
        assert!(parse_number(b"\xff").is_err());
    }

    #[test]
    fn header_names_disambiguate_repeats() {
        let rec = ByteRecord::from(vec![" Fwd Header Length", "x", "Fwd Header Length ", " x"]);
        assert_eq!(
            header_names(&rec),
            vec!["Fwd Header Length", "x", "Fwd Header Length.1", "x.1"]
        );
    }

    #[test]
    fn row_error_names_file_line_and_column() {
        let e = RowError {
            file: "a.csv".into(),
            line: 7,
            column: Some(2),
            column_name: Some("service".into()),
            message: "`x` is not a number".into(),
        };
        assert_eq!(
            e.to_string(),
            "a.csv:7: column 3 `service`: `x` is not a number"
        );
    }
}

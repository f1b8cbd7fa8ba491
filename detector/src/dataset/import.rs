//! Which importer reads a file: one table of the formats, each with the sniffing of its own
//! module (does a first line look like it?) and the parser it reads rows with. The row loop they
//! share is in `rows.rs`.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
};

use anyhow::Context;
use csv::ByteRecord;

pub use super::rows::{
    Format, ImportOptions, ImportSummary, OnError, RowError, DEFAULT_SESSION_ROWS, INF_SENTINEL,
};
use super::{
    cicflowmeter, kdd, nfv2,
    rows::{self, RowParser},
    unsw, Dataset,
};

/// Builds a format's row parser from a file's first record; true when that record is a header.
type Parser = fn(&ByteRecord, &str) -> anyhow::Result<(Box<dyn RowParser>, bool)>;

/// Whether a first line's fields (trimmed of a BOM, spaces and quotes, lowercased) look like a
/// format.
type Sniff = fn(&[String]) -> bool;

/// Every format, in the order they are tried: its sniffing and its parser.
const FORMATS: &[(Format, Sniff, Parser)] = &[
    (Format::NfV2, nfv2::sniff, nfv2::parser),
    (
        Format::CicFlowMeter,
        cicflowmeter::sniff,
        cicflowmeter::parser,
    ),
    (Format::UnswNb15, unsw::sniff, unsw::parser),
    (Format::NslKdd, kdd::sniff, kdd::parser),
];

/// Detects the layout of `path` from its first line.
pub fn detect_format(path: &Path) -> anyhow::Result<Format> {
    let mut line = Vec::new();
    BufReader::new(rows::open_input(path)?.take(1 << 20))
        .read_until(b'\n', &mut line)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let line = String::from_utf8_lossy(&line);
    detect_from_first_line(&line).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: cannot tell the format from the first line (`{}`); pass --format",
            path.display(),
            line.trim().chars().take(120).collect::<String>()
        )
    })
}

/// Detects the layout from a file's first line (header or first record).
pub fn detect_from_first_line(line: &str) -> Option<Format> {
    let line = line.trim_start_matches('\u{feff}').trim();
    let fields: Vec<String> = line
        .split(',')
        .map(|f| f.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    FORMATS
        .iter()
        .find(|(_, sniff, _)| sniff(&fields))
        .map(|(f, _, _)| *f)
}

/// Imports one file into a new dataset.
pub fn import_file(path: &Path, opts: &ImportOptions) -> anyhow::Result<(Dataset, ImportSummary)> {
    let file = path.display().to_string();
    let format = match opts.format {
        Some(f) => f,
        None => detect_format(path)?,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(rows::open_input(path)?);
    let mut first = ByteRecord::new();
    if !rows::read_record(&mut reader, &mut first, &file)? {
        anyhow::bail!("{file}: empty file");
    }
    rows::strip_bom(&mut first);
    let Some((_, _, make)) = FORMATS.iter().find(|(f, _, _)| *f == format) else {
        anyhow::bail!("{file}: no importer for {format}");
    };
    let (parser, header) = make(&first, &file)?;
    rows::read_rows(path, format, parser, header, first, reader, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_from_first_lines() {
        assert_eq!(
            detect_from_first_line("duration,protocol_type,service,flag,src_byts"),
            Some(Format::NslKdd)
        );
        assert_eq!(
            detect_from_first_line("0,tcp,private,REJ,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,229,10,0.0,0.0,1.0,1.0,0.04,0.06,0.0,255,10,0.04,0.06,0.0,0.0,0.0,0.0,1.0,1.0,neptune,21"),
            Some(Format::NslKdd)
        );
        assert_eq!(
            detect_from_first_line("\u{feff}Flow ID, Source IP, Source Port"),
            Some(Format::CicFlowMeter)
        );
        assert_eq!(
            detect_from_first_line("IPV4_SRC_ADDR,L4_SRC_PORT,IPV4_DST_ADDR"),
            Some(Format::NfV2)
        );
        assert_eq!(
            detect_from_first_line("id,dur,proto,service,state,spkts"),
            None
        );
        assert_eq!(
            detect_from_first_line("id,dur,proto,service,state,spkts,sbytes,attack_cat,label"),
            Some(Format::UnswNb15)
        );
        assert_eq!(detect_from_first_line("hello,world"), None);
    }
}

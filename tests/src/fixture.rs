//! Per-capture fixtures (`tests/fixtures/*.tsv`): one line per corpus capture, written from the
//! current behaviour when an environment variable asks for it, compared line by line otherwise.
//! `capture_digest` (what the reader reads) and `replay_alerts` (what detection raises) share
//! the walk, the digest and the comparison.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// 64-bit FNV-1a: stable across toolchains (std's `DefaultHasher` is not promised to be).
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// A string and a terminator (0xff, never in UTF-8), so "ab","c" and "a","bc" differ.
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
        self.bytes(&[0xff]);
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Every capture (pcap, pcapng, cap) under `root`, recursively, relative to it, sorted.
pub fn corpus_captures(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("pcap" | "pcapng" | "cap")
            ) {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    files
}

/// What [`compare_or_write`] did.
pub enum Outcome {
    /// `$bless` was set: the fixture was rewritten from `got`.
    Written,
    /// The fixture's line count (header aside) and one entry per capture that differs.
    Compared { want: usize, diffs: Vec<String> },
}

/// With `$bless` set, writes `header` and `got`'s lines (file → line, the line starting with
/// the file) to `fixture`. Otherwise reads it and lists each capture whose line differs (with
/// `detail(file)` after its want/got pair), is missing from the corpus or from the fixture.
pub fn compare_or_write(
    fixture: &str,
    header: &str,
    bless: &str,
    got: &BTreeMap<String, String>,
    detail: impl Fn(&str) -> String,
) -> Outcome {
    if std::env::var_os(bless).is_some() {
        let mut text = String::from(header);
        text.push('\n');
        for l in got.values() {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(fixture, text).unwrap();
        return Outcome::Written;
    }
    let text = std::fs::read_to_string(fixture)
        .unwrap_or_else(|e| panic!("{fixture}: {e} ({bless}=1 writes it)"));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header), "{fixture}: header");
    let want: BTreeMap<String, String> = lines
        .map(|l| {
            (
                l.split('\t').next().unwrap_or_default().to_string(),
                l.to_string(),
            )
        })
        .collect();
    let mut diffs = Vec::new();
    for (file, w) in &want {
        match got.get(file) {
            Some(g) if g == w => {}
            Some(g) => diffs.push(format!("  want {w}\n  got  {g}{}", detail(file))),
            None => diffs.push(format!("  {file}: in the fixture, not in the corpus")),
        }
    }
    for file in got.keys().filter(|f| !want.contains_key(*f)) {
        diffs.push(format!("  {file}: in the corpus, not in the fixture"));
    }
    Outcome::Compared {
        want: want.len(),
        diffs,
    }
}

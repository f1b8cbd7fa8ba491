//! The capture reader gives the same packets for every capture of the shared corpus as the
//! committed digest says (`tests/fixtures/capture_digests.tsv`, written by the reader the
//! project had before it read captures through pcap-parser).
//!
//! Per capture, read whole through `Reader::open`: the packet count, a digest of the
//! timestamps, a digest of each packet's link type, lengths and bytes and of the Ethernet frame
//! the flow logic is handed (`linktype::as_ethernet`), and how the file ended. Then the same
//! file cut at two thirds of its bytes, read from memory: what it kept and the truncation error
//! (offset and count) that ended it.
//!
//! A new corpus capture fails the test until the fixture lists it: rerun with
//! `DETECTOR_WRITE_DIGESTS=1` and commit the fixture, after checking the new lines.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

use detector::{
    linktype,
    pcap::{PcapError, Reader},
};
use integration_tests::shared_dir;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/capture_digests.tsv");
const HEADER: &str = "file\tpackets\tts_fnv\tbytes_fnv\tend\tcut_at\tcut_packets\tcut_fnv\tcut_end";

/// 64-bit FNV-1a: stable across toolchains (std's `DefaultHasher` is not promised to be).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// What one read of a capture gave.
struct Digest {
    packets: u64,
    ts: Fnv,
    bytes: Fnv,
    end: String,
}

/// How a read ended: `ok`, or the error's kind and the byte offset it names.
fn end_of(e: &PcapError) -> String {
    match e {
        PcapError::Truncated {
            offset,
            packets_read,
            ..
        } => format!("truncated@{offset}/{packets_read}"),
        PcapError::Open { .. } => "open".into(),
        PcapError::Io { offset, .. } => format!("io@{offset}"),
        PcapError::BadMagic { magic, .. } => format!("bad-magic:{magic:#010x}"),
        PcapError::UnsupportedVersion { offset, .. } => format!("version@{offset}"),
        PcapError::BadBlockLength { offset, .. } => format!("block-length@{offset}"),
        PcapError::BadCaptureLength { offset, .. } => format!("capture-length@{offset}"),
        PcapError::UnknownInterface { offset, .. } => format!("interface@{offset}"),
        PcapError::Malformed { offset, .. } => format!("malformed@{offset}"),
    }
}

/// Reads every packet, digesting them as the flow logic would see them.
fn read_digest<R: Read>(reader: Result<Reader<R>, PcapError>) -> Digest {
    let mut d = Digest {
        packets: 0,
        ts: Fnv::new(),
        bytes: Fnv::new(),
        end: "ok".into(),
    };
    let mut r = match reader {
        Ok(r) => r,
        Err(e) => {
            d.end = end_of(&e);
            return d;
        }
    };
    let mut frame = Vec::new();
    loop {
        match r.next_packet() {
            Ok(Some(p)) => {
                d.packets += 1;
                d.ts.u64(p.ts_ns);
                d.bytes.u64(u64::from(p.link_type));
                d.bytes.u64(p.wire_len as u64);
                d.bytes.u64(p.data.len() as u64);
                d.bytes.bytes(p.data);
                let (eth, wire) =
                    linktype::as_ethernet(p.link_type, p.data, p.wire_len, &mut frame);
                d.bytes.u64(wire as u64);
                d.bytes.u64(eth.len() as u64);
                d.bytes.bytes(eth);
            }
            Ok(None) => break,
            Err(e) => {
                d.end = end_of(&e);
                break;
            }
        }
    }
    assert_eq!(r.packets_read(), d.packets, "packets_read");
    d
}

/// Every capture under `dir`, recursively, relative to `root`.
fn captures(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            captures(root, &path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pcap" | "pcapng" | "cap")
        ) {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

/// The fixture line for one capture.
fn line(root: &Path, rel: &Path) -> String {
    let path = root.join(rel);
    let whole = read_digest(Reader::open(&path));
    let bytes = std::fs::read(&path).unwrap();
    let cut_at = bytes.len() * 2 / 3;
    let cut = read_digest(Reader::new(&bytes[..cut_at], "cut"));
    // The cut file's timestamps and bytes in one digest: they are a prefix of the whole file's.
    let mut cut_fnv = cut.ts;
    cut_fnv.u64(cut.bytes.0);
    format!(
        "{}\t{}\t{:016x}\t{:016x}\t{}\t{}\t{}\t{:016x}\t{}",
        rel.display(),
        whole.packets,
        whole.ts.0,
        whole.bytes.0,
        whole.end,
        cut_at,
        cut.packets,
        cut_fnv.0,
        cut.end
    )
}

#[test]
fn every_corpus_capture_reads_as_the_fixture_says() {
    let root = shared_dir().join("corpus");
    let mut files = Vec::new();
    captures(&root, &root, &mut files);
    files.sort();
    assert!(files.len() > 500, "only {} captures found", files.len());
    let got: BTreeMap<String, String> = files
        .iter()
        .map(|rel| (rel.display().to_string(), line(&root, rel)))
        .collect();

    if std::env::var_os("DETECTOR_WRITE_DIGESTS").is_some() {
        let mut text = String::from(HEADER);
        text.push('\n');
        for l in got.values() {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(FIXTURE, text).unwrap();
        return;
    }

    let fixture = std::fs::read_to_string(FIXTURE)
        .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (DETECTOR_WRITE_DIGESTS=1 writes it)"));
    let mut lines = fixture.lines();
    assert_eq!(lines.next(), Some(HEADER), "{FIXTURE}: header");
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
            Some(g) => diffs.push(format!("  want {w}\n  got  {g}")),
            None => diffs.push(format!("  {file}: in the fixture, not in the corpus")),
        }
    }
    for file in got.keys().filter(|f| !want.contains_key(*f)) {
        diffs.push(format!("  {file}: in the corpus, not in the fixture"));
    }
    assert!(
        diffs.is_empty(),
        "{} of {} captures differ from {FIXTURE} ({HEADER}):\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

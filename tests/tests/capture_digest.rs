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

use std::{collections::BTreeMap, io::Read, path::Path};

use detector::{
    linktype,
    pcap::{PcapError, Reader},
};
use integration_tests::{
    fixture::{compare_or_write, corpus_captures, Fnv, Outcome},
    shared_dir,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/capture_digests.tsv");
const HEADER: &str = "file\tpackets\tts_fnv\tbytes_fnv\tend\tcut_at\tcut_packets\tcut_fnv\tcut_end";

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
    let files = corpus_captures(&root);
    assert!(files.len() > 500, "only {} captures found", files.len());
    let got: BTreeMap<String, String> = files
        .iter()
        .map(|rel| (rel.display().to_string(), line(&root, rel)))
        .collect();

    let Outcome::Compared { want, diffs } =
        compare_or_write(FIXTURE, HEADER, "DETECTOR_WRITE_DIGESTS", &got, |_| {
            String::new()
        })
    else {
        return;
    };
    assert!(
        diffs.is_empty(),
        "{} of {want} captures differ from {FIXTURE} ({HEADER}):\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

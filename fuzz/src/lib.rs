//! What each fuzz target does with its input, and what must hold afterwards.
//!
//! Every function takes arbitrary bytes, runs one parser of outside input over them, and
//! panics only when that parser panics or breaks a promise it documents (a dataset that does
//! not validate, a flow counter that does not add up). The fuzz targets in `fuzz_targets/` are
//! one line each around these; `tests/tests/fuzz_regressions.rs` includes this file and replays
//! the saved crash inputs and seed corpora through the same functions, so a fixed crash stays
//! fixed under plain `cargo test`.

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use detector::{
    config::Config,
    control::{parse_request, Request},
    dataset::{import_file, Dataset, DatasetError, Format, ImportOptions, OnError},
    model::{Model, ModelError, Rows, ScorePath},
    pcap::Reader,
};
use detector_common::{
    block::{BlockEntry, BlockKey},
    flow::{
        process_packet, stat,
        user::{MemEnv, MemTable},
        FlowConfig, FlowKey, FlowState, Reason, Verdict, FIRST_PACKETS,
    },
    packet::{parse, Captured, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP},
};

/// A target's name (the folder of its corpus and regressions) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("pcap_reader", pcap_reader),
    ("dataset_decode", dataset_decode),
    ("import_nsl_kdd", import_nsl_kdd),
    ("import_cicflowmeter", import_cicflowmeter),
    ("import_nf_v2", import_nf_v2),
    ("import_unsw_nb15", import_unsw_nb15),
    ("packet_flow", packet_flow),
    ("config_parse", config_parse),
    ("model_load", model_load),
    ("control_request", control_request),
];

/// Packets read from one input at most: a capture of empty records is otherwise slow to drain.
const MAX_PACKETS: u64 = 100_000;

/// `detector::pcap::Reader` over the bytes, packet by packet until the end or an error.
pub fn pcap_reader(data: &[u8]) {
    let mut reader = match Reader::new(data, "fuzz") {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut n = 0u64;
    loop {
        match reader.next_packet() {
            Ok(Some(p)) => {
                assert!(
                    p.data.len() <= p.wire_len,
                    "captured {} bytes of a {}-byte packet",
                    p.data.len(),
                    p.wire_len
                );
                assert!(p.data.len() <= data.len(), "more packet than input");
                n += 1;
                assert_eq!(reader.packets_read(), n);
                if n == MAX_PACKETS {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    }
}

/// `Dataset::decode` on the bytes. The digests in the header stop almost every mutation, so
/// when decoding fails only on a digest the header is given the digest the data has and the
/// file is decoded again: the column decoding and the validation behind the digests get
/// fuzzed too, as a forger who computes digests would reach them.
pub fn dataset_decode(data: &[u8]) {
    let mut bytes = data.to_vec();
    // At most two fix-ups: the blocks digest, then the content digest.
    for _ in 0..3 {
        match Dataset::decode(&bytes, "fuzz") {
            Ok(ds) => {
                check_dataset(&ds);
                return;
            }
            Err(DatasetError::BlocksDigest { actual, .. }) => {
                match with_header_field(&bytes, "blocks_sha256", &actual) {
                    Some(b) => bytes = b,
                    None => return,
                }
            }
            Err(DatasetError::Digest { actual, .. }) => {
                match with_header_field(&bytes, "sha256", &actual) {
                    Some(b) => bytes = b,
                    None => return,
                }
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    }
}

/// The file image with one string field of its JSON header replaced, or None when the
/// header is not a JSON object.
fn with_header_field(bytes: &[u8], field: &str, value: &str) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    let header = bytes.get(16..16usize.checked_add(len)?)?;
    let mut json: serde_json::Value = serde_json::from_slice(header).ok()?;
    *json.as_object_mut()?.get_mut(field)? = value.into();
    let new = serde_json::to_vec(&json).ok()?;
    let mut out = bytes[..12].to_vec();
    out.extend_from_slice(&u32::try_from(new.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&new);
    out.extend_from_slice(&bytes[16 + len..]);
    Some(out)
}

/// What any dataset the code accepted must satisfy: it validates and survives a write and
/// read unchanged. (Dataset files may hold NaN and infinities: `dataset stats` counts them.)
fn check_dataset(ds: &Dataset) {
    if let Err(e) = ds.validate() {
        panic!("an accepted dataset does not validate: {e}");
    }
    let bytes = ds
        .encode()
        .unwrap_or_else(|e| panic!("an accepted dataset does not encode: {e}"));
    let back = Dataset::decode(&bytes, "round trip")
        .unwrap_or_else(|e| panic!("an encoded dataset does not decode: {e}"));
    assert_eq!(back.digest(), ds.digest(), "round trip changed the dataset");
    assert_eq!(back.rows(), ds.rows());
}

static TEMP: AtomicU64 = AtomicU64::new(0);

/// The importers read files: the bytes go to a temporary file (in /dev/shm when there is one).
fn temp_csv() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let dir = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "detector-fuzz-{}-{}.csv",
        std::process::id(),
        TEMP.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `detector::dataset::import_file` on the bytes as a CSV of `format`. Inputs of odd length
/// stop at the first bad row, the others skip bad rows.
pub fn dataset_import(format: Format, data: &[u8]) {
    let path = temp_csv();
    fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = ImportOptions {
        format: Some(format),
        on_error: if data.len() % 2 == 1 {
            OnError::Fail
        } else {
            OnError::Skip
        },
        ..ImportOptions::default()
    };
    let result = import_file(&path, &opts);
    let _ = fs::remove_file(&path);
    match result {
        Ok((ds, summary)) => {
            assert_eq!(summary.rows_kept, ds.rows() as u64, "rows kept");
            assert_eq!(
                summary.rows_read,
                summary.rows_kept + summary.rows_skipped,
                "rows read = kept + skipped"
            );
            assert!(summary.errors.len() as u64 <= summary.rows_skipped);
            let _ = summary.to_string();
            serde_json::to_string(&summary).expect("the summary serialises");
            // The numeric policy (docs/dataset-format.md): no NaN or infinity after an import.
            if let Some(i) = ds.features.iter().position(|v| !v.is_finite()) {
                panic!("imported feature value {i} is {}", ds.features[i]);
            }
            check_dataset(&ds);
        }
        Err(e) => {
            let _ = format!("{e:#}");
        }
    }
}

/// NSL-KDD / KDD Cup 99 text.
pub fn import_nsl_kdd(data: &[u8]) {
    dataset_import(Format::NslKdd, data)
}

/// CICFlowMeter CSV.
pub fn import_cicflowmeter(data: &[u8]) {
    dataset_import(Format::CicFlowMeter, data)
}

/// NF-v2 NetFlow CSV.
pub fn import_nf_v2(data: &[u8]) {
    dataset_import(Format::NfV2, data)
}

/// UNSW-NB15 CSV (either layout).
pub fn import_unsw_nb15(data: &[u8]) {
    dataset_import(Format::UnswNb15, data)
}

/// The largest IP length a header can declare: IPv6's 40-byte header plus a 65535 payload.
const MAX_L3: u64 = 40 + 65_535;

/// The shared packet parser and flow update (`process_packet`, the XDP program's whole
/// per-packet path) on a sequence of packets, then the final flush.
///
/// Input: one settings byte, then records of `len` (u16 LE), extra wire length beyond the
/// captured bytes (u16 LE), time step (u8, ms; 255 steps back 10 ms) and `len` packet bytes.
/// Settings: bit 0 a 5 ms active timeout, bit 1 a 3 ms idle timeout, bit 2 `new` records, bit
/// 3 blocklist the first packet's source, bits 4-7 the early-record packet count.
pub fn packet_flow(data: &[u8]) {
    let Some((&settings, mut rest)) = data.split_first() else {
        return;
    };
    let d = FlowConfig::DEFAULT;
    let cfg = FlowConfig {
        active_timeout_ns: if settings & 1 != 0 {
            5_000_000
        } else {
            d.active_timeout_ns
        },
        idle_timeout_ns: if settings & 2 != 0 {
            3_000_000
        } else {
            d.idle_timeout_ns
        },
        new_records: u32::from(settings & 4 != 0),
        early_packets: u32::from(settings >> 4),
    };
    let mut block = settings & 8 != 0;
    let mut table = MemTable::default();
    let mut env = MemEnv::default();
    let mut now: u64 = 1_000_000_000;
    let mut sent = 0u64;
    let mut dropped = 0u64;
    while let [l0, l1, e0, e1, dt, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        now = if *dt == 255 {
            now.saturating_sub(10_000_000)
        } else {
            now + u64::from(*dt) * 1_000_000
        };
        let pkt = Captured {
            data: frame,
            wire_len: frame.len() + usize::from(u16::from_le_bytes([*e0, *e1])),
        };
        let parsed = parse(&pkt);
        if let Ok(p) = &parsed {
            assert!(matches!(p.key.family, 4 | 6), "family {}", p.key.family);
            assert!(p.l3_len >= 20 && u64::from(p.l3_len) <= MAX_L3, "{p:?}");
            assert!(p.payload_len <= p.l3_len, "{p:?}");
            assert!(p.l3_len as usize <= pkt.wire_len, "{p:?}");
            if block {
                let key = BlockKey::source(p.key.family, p.src_addr());
                let entry = BlockEntry {
                    expires_ns: 0,
                    hits: 0,
                };
                env.block(key, entry);
                block = false;
            }
        }
        let listed = parsed.is_ok_and(|p| {
            env.blocklist()
                .contains_key(&BlockKey::source(p.key.family, p.src_addr()))
        });
        let verdict = process_packet(&pkt, now, &cfg, &mut table, &mut env);
        assert_eq!(
            verdict == Verdict::Drop,
            listed,
            "verdict {verdict:?} for a packet {}blocklisted",
            if listed { "" } else { "not " }
        );
        sent += 1;
        dropped += u64::from(listed);
    }

    let st = env.stats;
    assert_eq!(st[stat::PACKETS as usize], sent);
    assert_eq!(st[stat::BLOCKED as usize], dropped);
    assert_eq!(st[stat::TABLE_FULL as usize], 0);
    for (k, s) in table.iter() {
        check_flow(k, s);
    }
    for (k, s, r) in &env.records {
        check_flow(k, s);
        if *r == Reason::New {
            assert_eq!(
                s.total_packets(),
                1,
                "a `new` record after the first packet"
            );
        }
    }
    // Every packet is malformed, not IP, blocked, or in a flow (still open or ended).
    let in_flows: u64 = table.iter().map(|(_, s)| s.total_packets()).sum::<u64>()
        + env
            .records
            .iter()
            .filter(|(_, _, r)| r.is_final())
            .map(|(_, s, _)| s.total_packets())
            .sum::<u64>();
    assert_eq!(
        st[stat::MALFORMED as usize] + st[stat::NOT_IP as usize] + dropped + in_flows,
        sent,
        "packets unaccounted for: {st:?}"
    );
    let open = table.len();
    let before = env.records.len();
    assert_eq!(table.expire(now, &cfg, true, &mut env), open);
    assert!(table.is_empty());
    assert_eq!(env.records.len(), before + open);
}

/// What must hold of any flow entry or record, whatever packets made it.
fn check_flow(k: &FlowKey, s: &FlowState) {
    let total = s.total_packets();
    let ok = total > 0
        && matches!(k.family, 4 | 6)
        && (k.family == 6 || (k.addr_lo[4..] == [0; 12] && k.addr_hi[4..] == [0; 12]))
        && s.len_hist.iter().map(|&h| u64::from(h)).sum::<u64>() == total
        && s.min_len <= s.max_len
        && s.min_len >= 20
        && s.first_seen_ns <= s.last_seen_ns
        && (total < 2 || s.iat_min_ns <= s.iat_max_ns)
        && (0..2).all(|d| {
            s.bytes[d] >= 20 * s.packets[d]
                && s.bytes[d] <= MAX_L3 * s.packets[d]
                && s.payload_bytes[d] <= s.bytes[d]
                && u64::from(s.retransmits[d]) <= s.packets[d]
        })
        && (k.proto == IPPROTO_TCP
            || (s.tcp_flags == [0, 0] && s.max_window == [0, 0] && s.retransmits == [0, 0]))
        && (matches!(k.proto, IPPROTO_ICMP | IPPROTO_ICMPV6)
            || (s.icmp_type, s.icmp_code) == (0, 0));
    let kept = (total as usize).min(FIRST_PACKETS);
    let first_ok = s.first_sizes[..kept].iter().all(|&l| l >= 20)
        && s.first_sizes[kept..].iter().all(|&l| l == 0)
        && (kept == FIRST_PACKETS || s.first_dirs >> kept == 0);
    assert!(ok && first_ok, "inconsistent flow entry {k:?}: {s:?}");
}

/// `detector::config::Config::parse(text, "fuzz")` on the bytes as UTF-8 (other bytes are
/// skipped: the agent reads its configuration with `read_to_string`). On `Ok`: the config
/// validates again, `flow_config()` has non-zero timeouts, `effective_allowlist()` keeps every
/// configured block, and the config survives serialising and deserialising unchanged (what
/// `detector config --check` prints is what was loaded). The round trip goes through
/// `serde_json::Value`, which holds numbers as binary floats, so it checks the config's own
/// `Serialize`/`Deserialize` (durations, address blocks) and not a float printer.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match Config::parse(text, "fuzz") {
        Ok(c) => c,
        Err(e) => {
            let _ = format!("{e:#}");
            return;
        }
    };
    if let Err(e) = cfg.validate() {
        panic!("a parsed config does not validate: {e:#}");
    }
    let flows = cfg.flow_config();
    assert!(
        flows.active_timeout_ns >= 1 && flows.idle_timeout_ns >= 1,
        "zero timeout in {flows:?}"
    );
    assert_eq!(flows.early_packets, cfg.flows.early_packets);
    let allow = cfg.effective_allowlist();
    assert!(
        allow.starts_with(&cfg.policy.allowlist),
        "effective allowlist {allow:?} lost configured blocks"
    );
    let value = serde_json::to_value(&cfg)
        .unwrap_or_else(|e| panic!("a parsed config does not serialise: {e}"));
    let back: Config = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("a serialised config does not deserialise: {e}\n{value}"));
    assert_eq!(back, cfg, "round trip changed the config:\n{value}");
}

/// `Model::from_bytes(bytes, "fuzz")` (`detector::model::file`). The tensor digest in the
/// header stops almost every mutation of the tensors, so when loading fails only on the digest,
/// the header gets the digest the data has and the file is loaded again: the shape checks and
/// the validation behind the digest get fuzzed too, as a forger who computes digests would
/// reach them. On `Ok`: the model validates (prototypes included), one all-zero row of each
/// feature set scores on the reference and int8 paths to one score whose parts are in [0, 1]
/// (or NaN: huge finite weights may overflow; that is not checked here), and the model
/// writes and reads back to the same file image.
pub fn model_load(data: &[u8]) {
    let mut bytes = data.to_vec();
    for _ in 0..2 {
        match Model::from_bytes(&bytes, "fuzz") {
            Ok(m) => {
                check_model(&m);
                return;
            }
            Err(ModelError::Format { reason, .. }) if reason.starts_with("tensor digest") => {
                let Some(actual) = reason.split_once(", data ").and_then(|(_, r)| r.get(..64))
                else {
                    return;
                };
                match with_model_digest(&bytes, actual) {
                    Some(b) => bytes = b,
                    None => return,
                }
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    }
}

/// The file image with the `tensors_sha256` of the model header (JSON in the safetensors
/// metadata, itself JSON after an 8-byte length) replaced; None when the headers do not parse.
fn with_model_digest(bytes: &[u8], digest: &str) -> Option<Vec<u8>> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let mut st: serde_json::Value = serde_json::from_slice(header).ok()?;
    let meta = st
        .get_mut("__metadata__")?
        .get_mut(detector::model::file::METADATA_KEY)?;
    let mut model: serde_json::Value = serde_json::from_str(meta.as_str()?).ok()?;
    *model.get_mut("tensors_sha256")? = digest.into();
    *meta = serde_json::to_string(&model).ok()?.into();
    let new = serde_json::to_vec(&st).ok()?;
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&new);
    out.extend_from_slice(&bytes[8 + len..]);
    Some(out)
}

/// What any model the loader accepted must satisfy.
fn check_model(m: &Model) {
    if let Err(e) = m.validate() {
        panic!("an accepted model does not validate: {e}");
    }
    for (name, p) in &m.prototypes {
        if let Err(e) = p.validate(m.embed_dim()) {
            panic!("an accepted model has invalid prototypes for `{name}`: {e}");
        }
    }
    for (name, layer) in &m.inputs {
        let features = &layer.normaliser.features;
        let zeros = vec![0f32; features.len()];
        let rows = Rows {
            feature_set: name,
            features,
            values: &zeros,
        };
        let scores = m
            .score(&rows)
            .unwrap_or_else(|e| panic!("`{name}`: a zero row of the model's width: {e}"));
        assert_eq!(
            scores.len(),
            1,
            "`{name}`: one row, {} scores",
            scores.len()
        );
        check_score(name, &scores[0]);
        // The int8 path quantises the weights: a path of its own through the model's values.
        match m.pipeline(name, ScorePath::Int8(None)) {
            Ok(p) => match p.score(&zeros, 1) {
                Ok(s) => {
                    assert_eq!(s.len(), 1, "`{name}`: int8 gave {} scores", s.len());
                    check_score(name, &s[0]);
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            },
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let bytes = m
        .to_bytes()
        .unwrap_or_else(|e| panic!("an accepted model does not write: {e}"));
    let back = Model::from_bytes(&bytes, "round trip")
        .unwrap_or_else(|e| panic!("a written model does not load: {e}"));
    let again = back
        .to_bytes()
        .unwrap_or_else(|e| panic!("a reloaded model does not write: {e}"));
    assert!(
        bytes == again,
        "write, load and write changed the file image"
    );
}

/// Probability and novelty in [0, 1] when present (NaN let through, see `model_load`).
fn check_score(name: &str, s: &detector::model::Score) {
    let unit = |v: Option<f32>| v.is_none_or(|v| (0.0..=1.0).contains(&v));
    assert!(
        unit(s.probability) && unit(s.novelty),
        "`{name}`: score parts out of [0, 1]: {s:?}"
    );
}

/// `detector::control::parse_request` on the bytes as UTF-8 (the agent reads the line into a
/// `String`, so other bytes never reach it). An error must make the error answer; a request
/// must serialise (as the clients send it) and parse back to the same request.
pub fn control_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(req) => {
            let text = serde_json::to_string(&req)
                .unwrap_or_else(|e| panic!("a parsed request does not serialise: {e}"));
            assert!(
                !text.contains('\n'),
                "a request serialises to several lines"
            );
            let back: Request = parse_request(&text)
                .unwrap_or_else(|e| panic!("{text}: a serialised request does not parse: {e}"));
            assert_eq!(back, req, "round trip changed the request: {text}");
        }
        Err(e) => {
            let answer = detector::control::error(&e);
            let text = serde_json::to_string(&answer).expect("the error answer serialises");
            let v: serde_json::Value = serde_json::from_str(&text).expect("it is JSON");
            assert_eq!(v["ok"], false, "{text}");
        }
    }
}

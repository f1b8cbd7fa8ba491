//! Packet fuzzing through the real XDP program under BPF_PROG_TEST_RUN: well over 100,000
//! packets mutated from the corpus captures and from crafted frames (bit flips, byte overwrites,
//! truncations, bogus IPv4/IPv6/TCP/UDP length fields, long and bogus IPv6 extension-header
//! chains, stacked VLAN tags, odd ethertypes). The program must never abort, never drop what is
//! not blocklisted, count every packet, keep every flow entry consistent, and agree with the
//! user-space `process_packet` on every verdict, record and flow entry.
//!
//! The mutations come from a seeded PRNG: a failure prints the seed and the packet in hex, and
//! `DETECTOR_FUZZ_SEED=<seed>` replays the same run.

use std::{cell::Cell, collections::HashMap as StdHashMap, time::Instant};

use aya::maps::{HashMap, MapData};
use detector::ebpf::{maps, Sizes};
use detector_common::{
    block::{BlockEntry, BlockKey},
    flow::{
        process_packet, stat,
        user::{MemEnv, MemTable},
        FlowConfig, FlowKey, FlowState, Reason, Verdict, FIRST_PACKETS,
    },
    packet::{
        parse, Captured, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_AH,
        IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
    testpkt::*,
};
use integration_tests::{corpus_files, untimed, Loaded};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The default seed; `DETECTOR_FUZZ_SEED` overrides it (decimal or 0x-hex).
const DEFAULT_SEED: u64 = 0xdec7_0f22_5eed_0001;
/// Mutated packets in the phase without a blocklist, and in the phase with one.
const PACKETS_OPEN: usize = 200_000;
const PACKETS_BLOCKED: usize = 40_000;
/// Packets between comparisons of the kernel and user-space tables (which are then cleared, so
/// the LRU map never comes near its size and never evicts).
const CHUNK: usize = 4096;
/// Ring-buffer records are drained this often, so none is ever lost to a full buffer.
const DRAIN_EVERY: usize = 256;
/// Frames are cut to this length: more than a page, so some take the multi-buffer path.
const MAX_FRAME: usize = 9000;
/// At most this many packets of each capture serve as bases.
const PER_CAPTURE: usize = 200;
/// The largest IP length a header can declare: IPv6's 40-byte header plus a 65535 payload.
const MAX_L3: u64 = 40 + 65_535;

const A: [u8; 4] = [192, 168, 7, 1];
const B: [u8; 4] = [192, 168, 7, 2];
const C: [u8; 4] = [192, 168, 7, 3];
const S6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const D6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// splitmix64: small, fast, and the same sequence everywhere for a seed. A `Cell`, so that a
/// random value can be drawn inside the argument list of another draw.
struct Rng(Cell<u64>);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(Cell::new(seed))
    }
    fn next(&self) -> u64 {
        let mut z = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    fn below(&self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&self, p: usize) -> bool {
        self.below(100) < p
    }
    fn byte(&self) -> u8 {
        self.next() as u8
    }
    fn pick<T: Copy>(&self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

fn seed() -> u64 {
    match std::env::var("DETECTOR_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("DETECTOR_FUZZ_SEED={s:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the headers of a frame are, as far as they can be found; used to aim mutations.
struct Layout {
    /// Offset of the last ethertype field.
    ethertype_at: usize,
    l3: usize,
    ethertype: u16,
    /// Transport header offset and protocol, when the IP header leads to one.
    l4: Option<(usize, u8)>,
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn layout(f: &[u8]) -> Option<Layout> {
    let mut at = 12;
    let mut ethertype = be16(f, at)?;
    // More tags than the parser skips: mutations still find the IP header behind them.
    for _ in 0..6 {
        if !matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | 0x9100) {
            break;
        }
        at += 4;
        ethertype = be16(f, at)?;
    }
    let l3 = at + 2;
    let l4 = match ethertype {
        ETH_P_IPV4 => {
            let ihl = (*f.get(l3)? as usize & 0x0f) * 4;
            Some((l3 + ihl.max(20), *f.get(l3 + 9)?))
        }
        ETH_P_IPV6 => {
            let mut proto = *f.get(l3 + 6)?;
            let mut off = l3 + 40;
            for _ in 0..8 {
                let len = match proto {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        (*f.get(off + 1)? as usize + 1) * 8
                    }
                    IPPROTO_AH => (*f.get(off + 1)? as usize + 2) * 4,
                    IPPROTO_FRAGMENT => 8,
                    _ => break,
                };
                proto = *f.get(off)?;
                off += len;
            }
            Some((off, proto))
        }
        _ => None,
    };
    Some(Layout {
        ethertype_at: at,
        l3,
        ethertype,
        l4,
    })
}

/// A length-field value near `actual` or at an edge.
fn bogus_len(rng: &Rng, actual: usize) -> u16 {
    let a = actual as u16;
    rng.pick(&[
        0,
        1,
        7,
        8,
        19,
        20,
        39,
        40,
        a.wrapping_sub(1),
        a,
        a.wrapping_add(1),
        a.wrapping_add(8),
        a / 2,
        0x7fff,
        0xfff8,
        0xffff,
        rng.next() as u16,
    ])
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Where bit flips and overwrites land: mostly in the first 96 bytes, where the headers are.
fn header_biased_pos(rng: &Rng, len: usize) -> usize {
    if rng.percent(80) {
        rng.below(len.min(96))
    } else {
        rng.below(len)
    }
}

/// A chain of extension headers, mostly well formed, sometimes with a bogus length; the last
/// names `last` as the next header.
fn ext_chain(rng: &Rng, n: usize, last: u8) -> (u8, Vec<u8>) {
    let types: Vec<u8> = (0..n)
        .map(|_| {
            rng.pick(&[
                IPPROTO_HOPOPTS,
                IPPROTO_ROUTING,
                IPPROTO_DSTOPTS,
                IPPROTO_FRAGMENT,
                IPPROTO_AH,
            ])
        })
        .collect();
    let mut chain = Vec::new();
    for (i, &t) in types.iter().enumerate() {
        let next = types.get(i + 1).copied().unwrap_or(last);
        let start = chain.len();
        match t {
            IPPROTO_FRAGMENT => {
                chain.extend_from_slice(&[next, 0]);
                // Offset and M flag: first, middle or last fragment.
                let off_m: u16 = rng.pick(&[0, 1, 8, 9, 0xfff8, rng.next() as u16]);
                chain.extend_from_slice(&off_m.to_be_bytes());
                chain.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            IPPROTO_AH => {
                let words = rng.below(4) as u8 + 1; // (len + 2) * 4 bytes in all
                chain.extend_from_slice(&[next, words]);
                chain.resize(start + (words as usize + 2) * 4, 0);
            }
            _ => {
                let units = rng.below(3) as u8; // (len + 1) * 8 bytes in all
                chain.extend_from_slice(&[next, units]);
                chain.resize(start + (units as usize + 1) * 8, 1);
            }
        }
        if rng.percent(5) {
            // A length that runs past the chain, or the packet.
            chain[start + 1] = rng.pick(&[0xff, 0x80, rng.byte()]);
        }
    }
    (types.first().copied().unwrap_or(last), chain)
}

/// Applies one to three mutations to `base`; the result is 14..=MAX_FRAME bytes long.
fn mutate(rng: &Rng, base: &[u8]) -> Vec<u8> {
    let mut f = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        if f.len() < 14 {
            break;
        }
        let lay = layout(&f);
        match rng.below(13) {
            // Bit flip.
            0 | 1 => {
                let at = header_biased_pos(rng, f.len());
                f[at] ^= 1 << rng.below(8);
            }
            // Byte overwrite.
            2 => {
                let at = header_biased_pos(rng, f.len());
                f[at] = rng.pick(&[0, 0xff, 0x7f, 0x80, 1, rng.byte()]);
            }
            // Truncation, often inside the headers.
            3 => {
                let to = if rng.percent(70) {
                    14 + rng.below(f.len().min(100).saturating_sub(14).max(1))
                } else {
                    14 + rng.below(f.len().saturating_sub(14).max(1))
                };
                f.truncate(to);
            }
            // Extra bytes after the packet (Ethernet padding, trailers).
            4 => {
                let n = rng.pick(&[1, 4, 18, 60, 1500, 5000]);
                let fill = rng.byte();
                f.resize(f.len() + n, fill);
            }
            // IPv4 total length or IHL.
            5 => {
                if let Some(l) = lay.filter(|l| l.ethertype == ETH_P_IPV4 && f.len() > l.l3) {
                    if rng.percent(50) {
                        let v = bogus_len(rng, f.len() - l.l3);
                        put16(&mut f, l.l3 + 2, v);
                    } else {
                        f[l.l3] = (f[l.l3] & 0xf0) | rng.below(16) as u8;
                    }
                }
            }
            // IPv6 payload length.
            6 => {
                if let Some(l) = lay.filter(|l| l.ethertype == ETH_P_IPV6) {
                    let actual = f.len().saturating_sub(l.l3 + 40);
                    put16(&mut f, l.l3 + 4, bogus_len(rng, actual));
                }
            }
            // TCP data offset, UDP length.
            7 => {
                if let Some((l4, proto)) = lay.and_then(|l| l.l4) {
                    if proto == IPPROTO_TCP && l4 + 12 < f.len() {
                        f[l4 + 12] = (rng.below(16) as u8) << 4 | (f[l4 + 12] & 0x0f);
                    } else if proto == IPPROTO_UDP {
                        let actual = f.len().saturating_sub(l4);
                        put16(&mut f, l4 + 4, bogus_len(rng, actual));
                    } else if l4 < f.len() {
                        f[l4] = rng.byte();
                    }
                }
            }
            // An IPv6 extension-header chain, up to well past the parser's limit.
            8 => {
                if let Some(l) = lay.filter(|l| l.ethertype == ETH_P_IPV6 && f.len() >= l.l3 + 40) {
                    let n = rng.pick(&[1, 2, 5, 6, 7, 10, 16]);
                    let last = if rng.percent(80) {
                        f[l.l3 + 6]
                    } else {
                        rng.byte()
                    };
                    let (first, chain) = ext_chain(rng, n, last);
                    f[l.l3 + 6] = first;
                    f.splice(l.l3 + 40..l.l3 + 40, chain);
                    if rng.percent(80) {
                        let plen = (f.len() - l.l3 - 40).min(0xffff) as u16;
                        put16(&mut f, l.l3 + 4, plen);
                    }
                }
            }
            // Stacked VLAN tags.
            9 => {
                for _ in 0..rng.pick(&[1, 1, 1, 2, 3, 4]) {
                    let tpid: u16 = rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, 0x9100]);
                    let tci = rng.next() as u16;
                    let mut tag = tpid.to_be_bytes().to_vec();
                    tag.extend_from_slice(&tci.to_be_bytes());
                    f.splice(12..12, tag);
                }
            }
            // Odd ethertypes.
            10 => {
                let at = lay.map_or(12, |l| l.ethertype_at);
                let t: u16 = rng.pick(&[
                    0x0806,
                    ETH_P_IPV4,
                    ETH_P_IPV6,
                    0x8847,
                    0x88cc,
                    0x0000,
                    0xffff,
                    0x05dc,
                    ETH_P_8021Q,
                    ETH_P_8021AD,
                    0x9100,
                    rng.next() as u16,
                ]);
                put16(&mut f, at, t);
            }
            // IP version nibble or protocol / next header.
            11 => {
                if let Some(l) = lay.filter(|l| f.len() > l.l3 + 9) {
                    if rng.percent(40) {
                        f[l.l3] = (rng.below(16) as u8) << 4 | (f[l.l3] & 0x0f);
                    } else {
                        let at = if l.ethertype == ETH_P_IPV6 {
                            l.l3 + 6
                        } else {
                            l.l3 + 9
                        };
                        f[at] = rng.pick(&[
                            IPPROTO_TCP,
                            IPPROTO_UDP,
                            IPPROTO_ICMP,
                            IPPROTO_ICMPV6,
                            132,
                            IPPROTO_HOPOPTS,
                            IPPROTO_FRAGMENT,
                            IPPROTO_AH,
                            47,
                            59,
                            rng.byte(),
                        ]);
                    }
                }
            }
            // IPv4 fragment offset / flags.
            _ => {
                if let Some(l) = lay.filter(|l| l.ethertype == ETH_P_IPV4) {
                    put16(&mut f, l.l3 + 6, rng.pick(&[0, 1, 0x2000, 0x4000, 0x1fff]));
                }
            }
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f.truncate(MAX_FRAME);
    f
}

/// Hand-made bases: every protocol and header shape the parser knows, from A, B and C.
fn crafted() -> Vec<Vec<u8>> {
    let hop_dst = [
        (IPPROTO_HOPOPTS, vec![1, 4, 0, 0, 0, 0]),
        (IPPROTO_DSTOPTS, vec![1, 4, 0, 0, 0, 0]),
    ];
    let routing = [(IPPROTO_ROUTING, vec![0, 0, 0, 0, 0, 0])];
    let mut v = vec![
        tcp4(A, 40000, B, 80, TCP_SYN, 100, 0),
        tcp4(B, 80, A, 40000, TCP_SYN | TCP_ACK, 900, 0),
        tcp4(A, 40000, B, 80, TCP_ACK, 101, 0),
        tcp4(A, 40000, B, 80, TCP_ACK | TCP_PSH, 101, 500),
        tcp4(B, 80, A, 40000, TCP_ACK | TCP_PSH, 901, 1400),
        tcp4(A, 40000, B, 80, TCP_FIN | TCP_ACK, 601, 0),
        tcp4(C, 1234, B, 22, TCP_RST, 5, 0),
        udp4(A, 5353, B, 53, 33),
        udp4(B, 53, A, 5353, 120),
        udp4(C, 9, A, 9, 0),
        icmp4(A, B, 8, 4242, 1, 56),
        icmp4(B, A, 0, 4242, 1, 56),
        icmp4(C, A, 3, 0, 0, 28),
        udp6(S6, 1000, D6, 2000, &hop_dst, 10),
        udp6(D6, 2000, S6, 1000, &[], 20),
        udp6(S6, 1, D6, 2, &routing, 0),
        icmp6(S6, D6, 128, 9, 1, 32),
        icmp6(D6, S6, 129, 9, 1, 32),
        tcp4_vlan(42, A, 1111, C, 22, TCP_SYN),
        eth(
            ETH_P_IPV4,
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)],
            &ipv4(A, C, IPPROTO_UDP, &[1, 1, 1, 0], &udp(9, 10, &[0; 5])),
        ),
        eth(
            ETH_P_IPV6,
            &[],
            &ipv6(
                S6,
                D6,
                IPPROTO_TCP,
                &[],
                &tcp(443, 50000, 7, TCP_ACK, 500, &[0; 40]),
            ),
        ),
        // SCTP: the ports lead a 12-byte common header.
        eth(
            ETH_P_IPV4,
            &[],
            &ipv4(
                A,
                B,
                132,
                &[],
                &[0x0b, 0x59, 0x0b, 0x59, 0, 0, 0, 1, 0, 0, 0, 0],
            ),
        ),
        // GRE, no ports.
        eth(ETH_P_IPV4, &[], &ipv4(A, B, 47, &[], &[0; 24])),
        // ARP: not IP.
        eth(0x0806, &[], &[0u8; 28]),
        // A jumbo frame: its tail lies in a second buffer.
        udp4(A, 7000, B, 7001, 8000),
        eth(
            ETH_P_IPV6,
            &[],
            &ipv6(S6, D6, IPPROTO_UDP, &[], &udp(7, 8, &[0; 6000])),
        ),
    ];
    // IPv4 later fragment (offset 185 × 8), IPv6 fragment header (offset 8, M=0).
    let mut frag4 = udp4(A, 1, B, 2, 100);
    frag4[14 + 6..14 + 8].copy_from_slice(&185u16.to_be_bytes());
    v.push(frag4);
    let mut l3 = ipv6(S6, D6, IPPROTO_UDP, &[], &[0u8; 16]);
    l3[6] = IPPROTO_FRAGMENT;
    l3.splice(40..40, [IPPROTO_UDP, 0, 0x00, 0x40, 0, 0, 0, 1]);
    let plen = (l3.len() - 40) as u16;
    l3[4..6].copy_from_slice(&plen.to_be_bytes());
    v.push(eth(ETH_P_IPV6, &[], &l3));
    v
}

/// Ethernet packets of every corpus capture, at most `PER_CAPTURE` of each, evenly spread.
fn corpus_bases() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["pcap/benign", "pcap/attack", "pcap/edge"] {
        for file in corpus_files(sub) {
            let mut frames = Vec::new();
            let mut reader = match detector::pcap::Reader::open(&file) {
                Ok(r) => r,
                Err(e) => panic!("{}: {e}", file.display()),
            };
            // A truncated capture ends early; what came before still serves.
            while let Ok(Some(p)) = reader.next_packet() {
                if p.link_type == detector::pcap::LINKTYPE_ETHERNET && p.data.len() >= 14 {
                    frames.push(p.data[..p.data.len().min(MAX_FRAME)].to_vec());
                }
            }
            let step = frames.len().div_ceil(PER_CAPTURE).max(1);
            out.extend(frames.into_iter().step_by(step));
        }
    }
    assert!(out.len() > 1000, "only {} corpus packets", out.len());
    out
}

/// Settings under which the kernel and user space must agree exactly: no time-based rule fires.
fn config() -> FlowConfig {
    FlowConfig {
        active_timeout_ns: u64::MAX / 4,
        idle_timeout_ns: u64::MAX / 4,
        ..FlowConfig::DEFAULT
    }
}

/// Checks what must hold of any flow entry, whatever packets made it.
fn check_entry(k: &FlowKey, s: &FlowState) -> Result<(), String> {
    let total = s.total_packets();
    let err = |what: &str| Err(format!("{what}: {k:?} {s:?}"));
    if total == 0 {
        return err("an entry without packets");
    }
    if !matches!(k.family, 4 | 6) {
        return err("family is neither 4 nor 6");
    }
    if k.family == 4 && (k.addr_lo[4..] != [0; 12] || k.addr_hi[4..] != [0; 12]) {
        return err("IPv4 key with bytes beyond the address");
    }
    if s.len_hist.iter().map(|&h| h as u64).sum::<u64>() != total {
        return err("len_hist does not sum to the packets");
    }
    if s.min_len > s.max_len || (s.max_len as usize) > MAX_FRAME {
        return err("min_len/max_len out of order or beyond any frame");
    }
    if u64::from(s.min_len) < 20 {
        return err("min_len below an IP header");
    }
    let kept = (total as usize).min(FIRST_PACKETS);
    if s.first_sizes[..kept].iter().any(|&l| l < 20)
        || s.first_sizes[kept..].iter().any(|&l| l != 0)
        || (kept < 8 && s.first_dirs >> kept != 0)
    {
        return err("first_sizes/first_dirs beyond the first min(total, 8) packets");
    }
    for d in 0..2 {
        let (p, b) = (s.packets[d], s.bytes[d]);
        if b < 20 * p || b > MAX_L3 * p {
            return err("bytes outside 20..=65575 per packet");
        }
        if s.payload_bytes[d] > b {
            return err("more payload than bytes");
        }
        if u64::from(s.retransmits[d]) > p {
            return err("more retransmits than packets");
        }
    }
    if k.proto != IPPROTO_TCP
        && (s.tcp_flags != [0, 0] || s.max_window != [0, 0] || s.retransmits != [0, 0])
    {
        return err("TCP fields on a non-TCP flow");
    }
    if !matches!(k.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) && (s.icmp_type, s.icmp_code) != (0, 0) {
        return err("ICMP fields on a non-ICMP flow");
    }
    Ok(())
}

/// One fuzzing phase: its program, its user-space twin and the running totals.
struct Phase {
    prog: Loaded,
    table: MemTable,
    env: MemEnv,
    cfg: FlowConfig,
    seed: u64,
    /// Blocklisted source, if any.
    blocked: Option<[u8; 4]>,
    sent: u64,
    drops: u64,
    /// Packets counted into flows that have since been cleared or ended.
    counted_in_flows: u64,
    kernel_records: Vec<(FlowKey, Reason, FlowState)>,
    /// The frames of the current chunk, to name the packets behind a table mismatch.
    chunk: Vec<Vec<u8>>,
}

impl Phase {
    fn new(seed: u64, blocked: Option<[u8; 4]>) -> Self {
        let cfg = config();
        let mut prog = Loaded::new(&Sizes::default(), &cfg);
        let mut env = MemEnv::default();
        if let Some(src) = blocked {
            let key = BlockKey::source(4, &v4key(src));
            let entry = BlockEntry {
                expires_ns: 0,
                hits: 0,
            };
            let mut bl: HashMap<&mut MapData, BlockKey, BlockEntry> =
                HashMap::try_from(prog.ebpf.map_mut(maps::BLOCKLIST).unwrap()).unwrap();
            bl.insert(key, entry, 0).unwrap();
            integration_tests::bump_block_generation(&mut prog.ebpf);
            env.block(key, entry);
        }
        Self {
            prog,
            table: MemTable::default(),
            env,
            cfg,
            seed,
            blocked,
            sent: 0,
            drops: 0,
            counted_in_flows: 0,
            kernel_records: Vec::new(),
            chunk: Vec::new(),
        }
    }

    fn fail(&self, index: u64, frame: &[u8], what: &str) -> ! {
        panic!(
            "seed {:#x} (DETECTOR_FUZZ_SEED), packet {index}: {what}\nframe ({} bytes): {}",
            self.seed,
            frame.len(),
            hex(frame)
        );
    }

    /// Sends one frame to the kernel and to user space and checks the verdicts.
    fn send(&mut self, frame: &[u8]) {
        let index = self.sent;
        let verdict = self.prog.run(frame);
        self.sent += 1;
        let user = process_packet(
            &Captured::whole(frame),
            self.sent * 1000,
            &self.cfg,
            &mut self.table,
            &mut self.env,
        );
        let parsed = parse(&Captured::whole(frame));
        let listed = match (self.blocked, parsed) {
            (Some(src), Ok(p)) => p.key.family == 4 && *p.src_addr() == v4key(src),
            _ => false,
        };
        match verdict {
            XDP_ABORTED => self.fail(index, frame, "XDP_ABORTED"),
            XDP_DROP if !listed => self.fail(index, frame, "XDP_DROP of a packet not blocklisted"),
            XDP_PASS if listed => self.fail(index, frame, "XDP_PASS of a blocklisted packet"),
            XDP_DROP | XDP_PASS => {}
            other => self.fail(index, frame, &format!("XDP action {other}")),
        }
        let expected = if listed { Verdict::Drop } else { Verdict::Pass };
        if user != expected {
            self.fail(index, frame, &format!("user space says {user:?}"));
        }
        if listed {
            self.drops += 1;
        }
        self.chunk.push(frame.to_vec());
        if self.sent.is_multiple_of(DRAIN_EVERY as u64) {
            self.drain();
        }
        if self.sent.is_multiple_of(CHUNK as u64) {
            self.compare_and_clear();
        }
    }

    fn drain(&mut self) {
        for r in self.prog.records() {
            self.kernel_records
                .push((r.key, Reason::from_u8(r.reason).unwrap(), r.state));
        }
    }

    /// Compares the kernel's table and records with user space's, checks every entry, and
    /// empties both tables.
    fn compare_and_clear(&mut self) {
        self.drain();
        let flows = self.prog.flows();
        let first = self.sent - self.chunk.len() as u64;
        // The frames of this chunk that parse to `key`: the only ones that touched its flow.
        let frames_of = |key: &FlowKey| {
            self.chunk
                .iter()
                .enumerate()
                .filter(|(_, f)| parse(&Captured::whole(f)).is_ok_and(|p| p.key == *key))
                .map(|(i, f)| format!("  packet {}: {}", first + i as u64, hex(f)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let ctx = |what: String, key: &FlowKey| -> ! {
            panic!(
                "seed {:#x} (DETECTOR_FUZZ_SEED), packets {first}..{}: {what}\nframes of that \
                 flow:\n{}",
                self.seed,
                self.sent,
                frames_of(key)
            )
        };
        for (k, s) in &flows {
            if let Err(e) = check_entry(k, s) {
                ctx(format!("inconsistent kernel entry: {e}"), k);
            }
            match self.table.flow(k) {
                Some(u) if untimed(u) == untimed(s) => {}
                Some(u) => ctx(
                    format!("kernel and user space differ on {k:?}:\nkernel {s:?}\nuser   {u:?}"),
                    k,
                ),
                None => ctx(format!("kernel flow {k:?} missing in user space"), k),
            }
        }
        if let Some(k) = self
            .table
            .iter()
            .map(|(k, _)| k)
            .find(|k| !flows.contains_key(k))
        {
            ctx(format!("user-space flow {k:?} missing in the kernel"), k);
        }
        let user: Vec<(FlowKey, Reason, FlowState)> = self
            .env
            .records
            .drain(..)
            .map(|(k, s, r)| (k, r, untimed(&s)))
            .collect();
        let kernel: Vec<(FlowKey, Reason, FlowState)> = self
            .kernel_records
            .drain(..)
            .map(|(k, r, s)| (k, r, untimed(&s)))
            .collect();
        if let Some(i) = (0..user.len().max(kernel.len())).find(|&i| user.get(i) != kernel.get(i)) {
            let key = kernel
                .get(i)
                .or(user.get(i))
                .map(|r| r.0)
                .unwrap_or_default();
            ctx(
                format!(
                    "record {i} differs:\nkernel {:?}\nuser   {:?}",
                    kernel.get(i),
                    user.get(i)
                ),
                &key,
            );
        }
        // A flow that ended (a reused TCP key) counted its packets into its final record.
        self.counted_in_flows += flows.values().map(FlowState::total_packets).sum::<u64>()
            + kernel
                .iter()
                .filter(|(_, r, _)| r.is_final())
                .map(|(_, _, s)| s.total_packets())
                .sum::<u64>();
        let mut map: HashMap<&mut MapData, FlowKey, FlowState> =
            HashMap::try_from(self.prog.ebpf.map_mut(maps::FLOWS).unwrap()).unwrap();
        for k in flows.keys() {
            map.remove(k).unwrap();
        }
        self.table.clear();
        self.chunk.clear();
    }

    /// Final checks on the counters of a finished phase; returns the kernel's counters.
    fn finish(&mut self) -> [u64; stat::COUNT as usize] {
        self.compare_and_clear();
        let st = self.prog.stats();
        let at = |s: u32| st[s as usize];
        let seed = self.seed;
        assert_eq!(at(stat::PACKETS), self.sent, "seed {seed:#x}: packets stat");
        assert_eq!(
            at(stat::BLOCKED),
            self.drops,
            "seed {seed:#x}: blocked stat"
        );
        assert_eq!(at(stat::TABLE_FULL), 0, "seed {seed:#x}: table_full");
        assert_eq!(at(stat::RINGBUF_FULL), 0, "seed {seed:#x}: ringbuf_full");
        assert_eq!(
            at(stat::MALFORMED) + at(stat::NOT_IP) + at(stat::BLOCKED) + self.counted_in_flows,
            self.sent,
            "seed {seed:#x}: malformed + not_ip + blocked + packets in flows = packets sent"
        );
        for s in [
            stat::PACKETS,
            stat::MALFORMED,
            stat::NOT_IP,
            stat::BLOCKED,
            stat::FLOWS_CREATED,
            stat::RECORDS,
        ] {
            assert_eq!(
                at(s),
                self.env.stats[s as usize],
                "seed {seed:#x}: kernel and user space differ on `{}`",
                stat::NAMES[s as usize]
            );
        }
        st
    }
}

/// Mutated packets from a mix of corpus and crafted bases.
fn fuzz(phase: &mut Phase, rng: &Rng, bases: &[Vec<u8>], crafted: &[Vec<u8>], n: usize) {
    for _ in 0..n {
        let base = if rng.percent(60) {
            &bases[rng.below(bases.len())]
        } else {
            &crafted[rng.below(crafted.len())]
        };
        // Some unmutated packets too: they build flows for the mutated ones to land on.
        let frame = if rng.percent(10) {
            base.clone()
        } else {
            mutate(rng, base)
        };
        phase.send(&frame);
    }
}

#[test]
#[ignore = "needs root (eBPF, network namespaces): run `cargo xtask test`"]
fn mutated_packets_never_abort_wrongly_drop_or_corrupt_flows() {
    let seed = seed();
    eprintln!("fuzz_xdp: seed {seed:#x} (set DETECTOR_FUZZ_SEED to reproduce another run)");
    let start = Instant::now();
    let bases = corpus_bases();
    let crafted = crafted();
    let rng = Rng::new(seed);

    let mut open = Phase::new(seed, None);
    fuzz(&mut open, &rng, &bases, &crafted, PACKETS_OPEN);
    let st = open.finish();
    assert_eq!(open.drops, 0);
    // The mix reaches every outcome in quantity, not just the malformed-packet exit.
    for s in [
        stat::MALFORMED,
        stat::NOT_IP,
        stat::FLOWS_CREATED,
        stat::RECORDS,
    ] {
        assert!(
            st[s as usize] > PACKETS_OPEN as u64 / 50,
            "seed {seed:#x}: only {} `{}`",
            st[s as usize],
            stat::NAMES[s as usize]
        );
    }

    // Only packets that parse to the listed source are dropped; crafted bases come from it
    // often enough that many are.
    let mut blocked = Phase::new(seed, Some(A));
    fuzz(&mut blocked, &rng, &bases, &crafted, PACKETS_BLOCKED);
    blocked.finish();
    assert!(
        blocked.drops > PACKETS_BLOCKED as u64 / 20,
        "seed {seed:#x}: only {} of {PACKETS_BLOCKED} packets came from the blocked source",
        blocked.drops
    );

    let sent = open.sent + blocked.sent;
    let elapsed = start.elapsed();
    eprintln!(
        "fuzz_xdp: {sent} packets ({} bases from the corpus, {} crafted) in {:.1} s; without a \
         blocklist: {} malformed, {} not IP, {} flows created, {} records; {} dropped as \
         blocklisted",
        bases.len(),
        crafted.len(),
        elapsed.as_secs_f64(),
        st[stat::MALFORMED as usize],
        st[stat::NOT_IP as usize],
        st[stat::FLOWS_CREATED as usize],
        st[stat::RECORDS as usize],
        blocked.drops
    );
    assert!(sent >= 100_000);
}

/// The mutator itself produces what the fuzz test claims: every kind of damage, every frame
/// sendable.
#[test]
fn mutations_cover_the_named_shapes() {
    let rng = Rng::new(DEFAULT_SEED);
    let crafted = crafted();
    let (mut vlan3, mut long_chain, mut bad_v4_len, mut short, mut not_ip) = (0, 0, 0, 0, 0);
    let mut count: StdHashMap<&str, usize> = StdHashMap::new();
    for _ in 0..20_000 {
        let base = &crafted[rng.below(crafted.len())];
        let f = mutate(&rng, base);
        assert!((14..=MAX_FRAME).contains(&f.len()));
        if f.len() < base.len() {
            short += 1;
        }
        if let Some(l) = layout(&f) {
            if l.ethertype_at >= 12 + 3 * 4 {
                vlan3 += 1;
            }
            if l.ethertype == ETH_P_IPV4 && f.len() >= l.l3 + 4 {
                let tot = u16::from_be_bytes([f[l.l3 + 2], f[l.l3 + 3]]) as usize;
                if tot != f.len() - l.l3 {
                    bad_v4_len += 1;
                }
            }
            if l.ethertype == ETH_P_IPV6 && f.len() > l.l3 + 40 + 7 * 8 {
                long_chain += usize::from(matches!(
                    f[l.l3 + 6],
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH
                ));
            }
        }
        match parse(&Captured::whole(&f)) {
            Ok(_) => *count.entry("ok").or_default() += 1,
            Err(e) => {
                if e == detector_common::packet::Skip::NotIp {
                    not_ip += 1;
                }
                *count.entry("skipped").or_default() += 1
            }
        }
    }
    for (what, n) in [
        ("truncated", short),
        ("stacked VLAN tags", vlan3),
        ("IPv6 extension headers", long_chain),
        ("bogus IPv4 lengths", bad_v4_len),
        ("not IP", not_ip),
        ("parsed", count["ok"]),
        ("malformed or not IP", count["skipped"]),
    ] {
        assert!(n > 200, "only {n} mutated frames with {what}");
    }
}

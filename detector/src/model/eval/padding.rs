//! The evasion check: attack flows padded with benign-looking packets (EVALUATION.md: 30% extra
//! packets, sizes and gaps drawn from benign flows of the same service).
//!
//! For the project's own feature sets (`detector-flow-v1`, and `detector-flowctx-v1`, which
//! appends context) padding is done on the flow state, not on the feature vector: the row's
//! [`FlowState`] is rebuilt from its features (they are a near-complete summary of it), the
//! extra packets are counted into that state the way the flow logic counts a packet, and the
//! features are computed again by [`features::flow_features`], so every derived feature
//! (mean length, histogram shares, gap statistics, the first packets) stays consistent.
//!
//! The padding model: the attacker sends `m` extra packets in its own direction, each with its
//! own gap before it (the original packets keep theirs, so the flow gets longer), at random
//! positions after the flow's first packet. TCP padding carries ACK (and PSH with payload),
//! advances the sequence (no retransmission) and keeps the window. A record taken at a flow's
//! first packet (`new` records) cannot change: its one packet is the attacker's original.
//! Context features (flows per source and service in a window) do not change: padding adds
//! packets, not flows.

use std::collections::HashMap;

use detector_common::{
    flow::{FlowKey, FlowState, FIRST_PACKETS, FWD, HIST_BOUNDS, HIST_BUCKETS, REV},
    packet::{TCP_ACK, TCP_PSH},
};
use rand::Rng;

use crate::features;

/// Column positions of the flow features in a row of a feature set that starts with them.
#[derive(Clone, Debug)]
pub struct Columns {
    idx: HashMap<String, usize>,
}

impl Columns {
    /// `Some` when `feature_names` begins with this build's flow features
    /// ([`features::names`]): padding is defined for such rows only.
    pub fn of(feature_names: &[String]) -> Option<Self> {
        let flow = features::names();
        if feature_names.len() < flow.len() || feature_names[..flow.len()] != flow[..] {
            return None;
        }
        Some(Columns {
            idx: flow.into_iter().enumerate().map(|(i, n)| (n, i)).collect(),
        })
    }

    fn get(&self, v: &[f32], name: &str) -> f64 {
        self.idx.get(name).map_or(0.0, |&i| v[i] as f64)
    }

    /// Number of flow features at the start of a row.
    pub fn count(&self) -> usize {
        features::COUNT
    }
}

fn clamp_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn clamp_u32(x: f64) -> u32 {
    clamp_u64(x).min(u32::MAX as u64) as u32
}

fn clamp_u16(x: f64) -> u16 {
    clamp_u64(x).min(u16::MAX as u64) as u16
}

/// An arbitrary start time for rebuilt states (features hold durations, not times).
const T0: u64 = 1_000_000_000_000;
/// The round trip of rebuilt states, µs: features hold times in round trips. Rebuilt gaps are
/// whole µs, so a rebuilt ratio is within about 2e-3 of the row's; the longest gaps seen in
/// round trips of a veth (10⁶) still fit the state's counters.
const UNIT_US: f64 = 1000.0;

/// Rebuilds a flow key and state that give back the row's flow features (up to f32 rounding):
/// addresses and ports are synthetic (only the protocol, the address family and the port's
/// class are features), the gap sum of squares comes from the gap mean and deviation.
pub fn state_from_features(cols: &Columns, v: &[f32]) -> (FlowKey, FlowState) {
    let g = |n: &str| cols.get(v, n);
    let ipv6 = g("ipv6") > 0.5;
    let proto = if g("proto_tcp") > 0.5 {
        6
    } else if g("proto_udp") > 0.5 {
        17
    } else if g("proto_icmp") > 0.5 {
        if ipv6 {
            58
        } else {
            1
        }
    } else {
        47
    };
    let port = if g("dst_port_wellknown") > 0.5 {
        80
    } else if g("dst_port_ephemeral") > 0.5 {
        50_000
    } else if matches!(proto, 6 | 17) {
        8080
    } else {
        0
    };
    // The initiator is `lo` (status bit clear), so the responder's port is `port_hi`.
    let key = FlowKey {
        addr_lo: [0; 16],
        addr_hi: [1; 16],
        port_lo: 40_000,
        port_hi: port,
        proto,
        family: if ipv6 { 6 } else { 4 },
        vlan: 0,
    };
    let mut s = FlowState {
        first_seen_ns: T0,
        ..Default::default()
    };
    s.packets = [clamp_u64(g("packets_fwd")), clamp_u64(g("packets_rev"))];
    s.bytes = [clamp_u64(g("bytes_fwd")), clamp_u64(g("bytes_rev"))];
    s.payload_bytes = [
        clamp_u64(g("payload_bytes_fwd")),
        clamp_u64(g("payload_bytes_rev")),
    ];
    let n = s.total_packets();
    s.min_len = clamp_u16(g("min_len"));
    s.max_len = clamp_u16(g("max_len"));
    s.retransmits = [
        clamp_u32(g("retransmit_share_fwd") * s.packets[FWD] as f64),
        clamp_u32(g("retransmit_share_rev") * s.packets[REV] as f64),
    ];
    // Times are in round trips: the rebuilt flow gets a round trip of `UNIT_US`. A flow
    // without one keeps only the shape of its gaps, rebuilt around a mean gap of `UNIT_US`.
    let rtt_known = g("rtt_known") > 0.5;
    if n > 1 {
        let gaps = (n - 1) as f64;
        let (mean_us, std_us, max_us, min_us, duration_us) = if rtt_known {
            (
                g("iat_mean_rtts") * UNIT_US,
                g("iat_std_rtts") * UNIT_US,
                g("iat_max_rtts") * UNIT_US,
                g("iat_min_rtts") * UNIT_US,
                g("duration_rtts") * UNIT_US,
            )
        } else {
            (
                UNIT_US,
                g("iat_cv") * UNIT_US,
                g("iat_max_over_mean") * UNIT_US,
                0.0,
                UNIT_US * gaps,
            )
        };
        s.last_seen_ns = T0 + clamp_u64(duration_us * 1e3);
        s.iat_min_ns = clamp_u64(min_us * 1e3);
        s.iat_max_ns = clamp_u64(max_us * 1e3);
        // flow_features: var_us = sumsq / gaps − mean_us², std = √var.
        s.iat_sumsq_us = clamp_u64((std_us * std_us + mean_us * mean_us) * gaps);
    } else {
        s.last_seen_ns = T0;
    }
    s.icmp_type = clamp_u64(g("icmp_type")).min(255) as u8;
    s.icmp_code = clamp_u64(g("icmp_code")).min(255) as u8;
    // Histogram shares back to counts that sum to n.
    let names = ["le128", "le256", "le512", "le1024", "gt1024"];
    let mut total = 0u64;
    for (b, name) in names.iter().enumerate().take(HIST_BUCKETS) {
        let c = clamp_u64(g(&format!("len_hist_{name}")) * n as f64);
        s.len_hist[b] = c.min(u32::MAX as u64) as u32;
        total += c;
    }
    if n > 0 && total != n {
        let top = (0..HIST_BUCKETS)
            .max_by_key(|&b| s.len_hist[b])
            .unwrap_or(0);
        let fixed = s.len_hist[top] as i64 + n as i64 - total as i64;
        s.len_hist[top] = fixed.clamp(0, u32::MAX as i64) as u32;
    }
    const FLAGS: [&str; 6] = ["fin", "syn", "rst", "psh", "ack", "urg"];
    for (d, dir) in [(FWD, "fwd"), (REV, "rev")] {
        for (bit, f) in FLAGS.iter().enumerate() {
            if g(&format!("tcp_{f}_{dir}")) > 0.5 {
                s.tcp_flags[d] |= 1 << bit;
            }
        }
    }
    for k in 0..FIRST_PACKETS.min(n as usize) {
        let size = g(&format!("first_size_{k}"));
        s.first_sizes[k] = clamp_u16(size.abs());
        if size < 0.0 {
            s.first_dirs |= 1 << k;
        }
        s.first_gaps_us[k] = clamp_u32(g(&format!("first_gap_rtts_{k}")) * UNIT_US);
    }
    (key, s)
}

/// One extra packet: its IP length and the gap before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extra {
    /// IP length (raised to the protocol's header length if smaller).
    pub size: u16,
    /// Gap before it, µs.
    pub gap_us: u32,
}

/// Where the extra packets go: `first[j]` is true when packet `j` of the padded flow (among
/// its first [`FIRST_PACKETS`]) is an extra one; extras fill those places in order, the rest
/// come later (where only their counts and gaps show).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The extra packets, in the order they are sent.
    pub extras: Vec<Extra>,
    /// Which of the padded flow's first packets are extras.
    pub first: [bool; FIRST_PACKETS],
}

impl Plan {
    /// `m` = ⌊fraction · n + u⌋ (u uniform: on average `fraction` · n extras, whole packets)
    /// extras for a flow of `n` packets, placed uniformly among the places after the first
    /// packet; sizes and gaps from `draw`. Flows of one packet get none (see the module doc).
    pub fn random(
        n: u64,
        fraction: f64,
        mut draw: impl FnMut(&mut dyn rand::RngCore) -> Extra,
        rng: &mut impl Rng,
    ) -> Plan {
        let mut first = [false; FIRST_PACKETS];
        if n <= 1 {
            return Plan {
                extras: vec![],
                first,
            };
        }
        let m = (fraction * n as f64 + rng.random_range(0.0..1.0)).floor() as u64;
        let extras: Vec<Extra> = (0..m)
            .map(|_| draw(&mut *rng as &mut dyn rand::RngCore))
            .collect();
        // Places 1.. of the padded flow hold n − 1 originals and m extras in random order;
        // only the first few places matter.
        let (mut orig, mut extra) = (n - 1, m);
        for slot in first.iter_mut().skip(1) {
            if orig + extra == 0 {
                break;
            }
            if rng.random_range(0..orig + extra) < extra {
                *slot = true;
                extra -= 1;
            } else {
                orig -= 1;
            }
        }
        Plan { extras, first }
    }
}

/// IP + transport header length of a packet of this flow (what a packet of no payload is).
pub fn header_len(key: &FlowKey) -> u16 {
    let ip = if key.family == 6 { 40 } else { 20 };
    ip + match key.proto {
        6 => 20,
        17 | 1 | 58 => 8,
        _ => 0,
    }
}

fn bucket(len: u32) -> usize {
    HIST_BOUNDS
        .iter()
        .position(|&b| len <= b)
        .unwrap_or(HIST_BUCKETS - 1)
        .min(HIST_BUCKETS - 1)
}

/// The state of the flow with the plan's extra packets counted in (from the initiator).
pub fn pad_state(key: &FlowKey, s: &FlowState, plan: &Plan) -> FlowState {
    let mut t = *s;
    let hdr = header_len(key);
    for (seen, e) in (s.total_packets()..).zip(&plan.extras) {
        let len = e.size.max(hdr);
        let gap_ns = e.gap_us as u64 * 1000;
        if seen >= 1 {
            if seen == 1 || gap_ns < t.iat_min_ns {
                t.iat_min_ns = gap_ns;
            }
            t.iat_max_ns = t.iat_max_ns.max(gap_ns);
            let us = e.gap_us as u64;
            t.iat_sumsq_us = t.iat_sumsq_us.saturating_add(us * us);
        }
        t.last_seen_ns = t.last_seen_ns.saturating_add(gap_ns);
        t.packets[FWD] += 1;
        t.bytes[FWD] += len as u64;
        t.payload_bytes[FWD] += (len - hdr) as u64;
        t.min_len = if seen == 0 { len } else { t.min_len.min(len) };
        t.max_len = t.max_len.max(len);
        t.len_hist[bucket(len as u32)] += 1;
        if key.proto == 6 {
            t.tcp_flags[FWD] |= TCP_ACK | if len > hdr { TCP_PSH } else { 0 };
        }
    }
    // The first packets of the padded flow: originals and extras as the plan interleaves them.
    let total = (s.total_packets() + plan.extras.len() as u64).min(FIRST_PACKETS as u64) as usize;
    let (mut o, mut x) = (0usize, 0usize);
    t.first_sizes = [0; FIRST_PACKETS];
    t.first_gaps_us = [0; FIRST_PACKETS];
    t.first_dirs = 0;
    for j in 0..total {
        let originals_left = (o as u64) < s.total_packets() && o < FIRST_PACKETS;
        let take_extra = (plan.first[j] || !originals_left) && x < plan.extras.len();
        if take_extra {
            let e = plan.extras[x];
            t.first_sizes[j] = e.size.max(hdr);
            t.first_gaps_us[j] = e.gap_us;
            x += 1;
        } else {
            t.first_sizes[j] = s.first_sizes[o];
            t.first_gaps_us[j] = s.first_gaps_us[o];
            if (s.first_dirs >> o) & 1 == 1 {
                t.first_dirs |= 1 << j;
            }
            o += 1;
        }
    }
    t
}

/// Benign packet sizes (initiator direction) and gaps per service, from benign rows' first
/// packets. A service is the protocol with the port class (well-known, ephemeral, other): the
/// features keep no port number.
#[derive(Clone, Debug, Default)]
pub struct BenignPackets {
    by_service: HashMap<(u8, u8), (Vec<u16>, Vec<u32>)>,
    by_proto: HashMap<u8, (Vec<u16>, Vec<u32>)>,
    all: (Vec<u16>, Vec<u32>),
}

/// Where a draw's sizes and gaps came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolUse {
    /// Rows padded from benign packets of their own service.
    pub service: usize,
    /// From the same protocol (the service had no benign packets).
    pub protocol: usize,
    /// From all benign packets.
    pub any: usize,
}

fn service_of(key: &FlowKey) -> (u8, u8) {
    let class = match key.port_hi {
        0 => 0,
        p if p < 1024 => 1,
        p if p >= 49152 => 2,
        _ => 3,
    };
    (key.proto, class)
}

impl BenignPackets {
    /// Collects from benign rows (row-major, width `d`, flow features first).
    pub fn collect(cols: &Columns, rows: &[f32], d: usize) -> Self {
        let mut bp = BenignPackets::default();
        for v in rows.chunks_exact(d) {
            let (key, s) = state_from_features(cols, v);
            let n = (s.total_packets() as usize).min(FIRST_PACKETS);
            let mut sizes = Vec::new();
            let mut gaps = Vec::new();
            for k in 0..n {
                if (s.first_dirs >> k) & 1 == 0 {
                    sizes.push(s.first_sizes[k]);
                }
                if k > 0 {
                    gaps.push(s.first_gaps_us[k]);
                }
            }
            for pool in [
                bp.by_service.entry(service_of(&key)).or_default(),
                bp.by_proto.entry(key.proto).or_default(),
                &mut bp.all,
            ] {
                pool.0.extend_from_slice(&sizes);
                pool.1.extend_from_slice(&gaps);
            }
        }
        bp
    }

    /// The pool for a flow: its service's if it has sizes and gaps, else its protocol's,
    /// else all.
    fn pool(&self, key: &FlowKey, used: &mut PoolUse) -> Option<&(Vec<u16>, Vec<u32>)> {
        let ok = |p: &&(Vec<u16>, Vec<u32>)| !p.0.is_empty() && !p.1.is_empty();
        if let Some(p) = self.by_service.get(&service_of(key)).filter(ok) {
            used.service += 1;
            return Some(p);
        }
        if let Some(p) = self.by_proto.get(&key.proto).filter(ok) {
            used.protocol += 1;
            return Some(p);
        }
        let p = Some(&self.all).filter(ok)?;
        used.any += 1;
        Some(p)
    }

    /// The padded row of `v` (flow features recomputed, other columns copied), or `None` when
    /// no benign packets exist to pad with.
    pub fn pad_row(
        &self,
        cols: &Columns,
        v: &[f32],
        fraction: f64,
        used: &mut PoolUse,
        rng: &mut impl Rng,
    ) -> Option<(Vec<f32>, u64)> {
        let (key, s) = state_from_features(cols, v);
        let pool = self.pool(&key, used)?;
        let plan = Plan::random(
            s.total_packets(),
            fraction,
            |r| Extra {
                size: pool.0[r.next_u64() as usize % pool.0.len()],
                gap_us: pool.1[r.next_u64() as usize % pool.1.len()],
            },
            rng,
        );
        let t = pad_state(&key, &s, &plan);
        let mut out = v.to_vec();
        features::flow_features(&key, &t, &mut out[..cols.count()]);
        Some((out, plan.extras.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detector_common::{
        flow::{
            process_packet,
            user::{MemEnv, MemTable},
            FlowConfig,
        },
        packet::{Captured, TCP_SYN},
        testpkt::tcp4,
    };
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const A: [u8; 4] = [10, 0, 0, 9];
    const B: [u8; 4] = [10, 0, 0, 1];

    /// One packet of a test flow: direction (true = initiator→responder), payload, gap (µs).
    type Pkt = (bool, usize, u64);

    /// Runs packets through the shared flow logic; TCP sequence numbers advance per direction.
    fn flow(pkts: &[Pkt]) -> (FlowKey, FlowState) {
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let (mut now, mut seq) = (T0, [1000u32, 5000u32]);
        for (k, &(fwd, payload, gap_us)) in pkts.iter().enumerate() {
            now += gap_us * 1000;
            let d = if fwd { 0 } else { 1 };
            let flags = match (k, payload) {
                (0, _) => TCP_SYN,
                (_, 0) => TCP_ACK,
                _ => TCP_ACK | TCP_PSH,
            };
            let f = if fwd {
                tcp4(A, 50_000, B, 443, flags, seq[d], payload)
            } else {
                tcp4(B, 443, A, 50_000, flags, seq[d], payload)
            };
            seq[d] = seq[d].wrapping_add(payload as u32 + (k == 0) as u32);
            process_packet(
                &Captured::whole(&f),
                now,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
        }
        let (k, s) = t.iter().next().unwrap();
        (*k, *s)
    }

    fn feats(k: &FlowKey, s: &FlowState) -> Vec<f32> {
        let mut v = vec![0f32; features::COUNT];
        features::flow_features(k, s, &mut v);
        v
    }

    fn close(a: &[f32], b: &[f32]) {
        let names = features::names();
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-3 * x.abs().max(1.0),
                "{}: {x} vs {y}",
                names[i]
            );
        }
    }

    /// A flow whose handshake takes one round trip of `UNIT_US` (800 + 200 µs), so that the
    /// rebuilt state's times are the original's, in µs.
    fn original() -> Vec<Pkt> {
        vec![
            (true, 0, 0),
            (false, 0, 800),
            (true, 0, 200),
            (true, 300, 90),
            (false, 1200, 2500),
            (false, 1200, 40),
            (true, 0, 300),
            (false, 700, 20_000),
            (true, 0, 35),
            (true, 60, 7000),
        ]
    }

    #[test]
    fn features_give_back_the_state_they_came_from() {
        let cols = Columns::of(&features::names()).unwrap();
        let (k, s) = flow(&original());
        let v = feats(&k, &s);
        let (k2, s2) = state_from_features(&cols, &v);
        close(&v, &feats(&k2, &s2));
        assert!(Columns::of(&["x".to_string()]).is_none());
    }

    #[test]
    fn every_row_of_the_lab_recording_gives_its_state_back() {
        // The committed lab recording (live feature set), when the checkout has it and its
        // columns are this build's: rebuilding each row's state reproduces its flow features.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lab/recordings/default/flows.dds");
        let Ok(ds) = crate::dataset::Dataset::read(&path) else {
            eprintln!("{}: absent, skipped", path.display());
            return;
        };
        let Some(cols) = Columns::of(&ds.feature_names) else {
            eprintln!(
                "{}: other columns than this build's, skipped",
                path.display()
            );
            return;
        };
        let names = features::names();
        let std_col = names.iter().position(|n| n == "iat_std_rtts").unwrap();
        let mean_col = names.iter().position(|n| n == "iat_mean_rtts").unwrap();
        let cv_col = names.iter().position(|n| n == "iat_cv").unwrap();
        let hist: Vec<usize> = (0..names.len())
            .filter(|&j| names[j].starts_with("len_hist_"))
            .collect();
        let mut uneven = 0;
        for i in 0..ds.rows() {
            let v = &ds.row(i)[..features::COUNT];
            let (k, s) = state_from_features(&cols, v);
            let back = feats(&k, &s);
            // A few records count a packet outside the histogram (its shares sum below 1);
            // the rebuilt state's histogram holds every packet, so those shares differ.
            let shares: f32 = hist.iter().map(|&j| v[j]).sum();
            let even = (shares - 1.0).abs() < 1e-3;
            uneven += !even as usize;
            for (j, (x, y)) in v.iter().zip(&back).enumerate() {
                if !even && hist.contains(&j) {
                    continue;
                }
                // The gap deviation comes back through a sum of squares (of the f32 mean and
                // deviation, in a rebuilt round trip of UNIT_US): within 0.1% of the mean gap
                // and of itself, or 1 µs; the same for the deviation's share of the mean.
                let tol = if j == std_col {
                    1e-3 * (v[mean_col].abs() + x.abs()) + 1.0 / UNIT_US as f32
                } else if j == cv_col {
                    2e-3 + 1e-3 * x.abs()
                } else if names[j].contains("rtts") {
                    // Gaps and the round trip rebuilt in whole µs.
                    3e-3 * x.abs().max(1.0)
                } else {
                    1e-3 * x.abs().max(1.0)
                };
                assert!(
                    (x - y).abs() <= tol,
                    "row {i} {}: {x} vs {y}; {:?}",
                    names[j],
                    &v[..40]
                );
            }
        }
        eprintln!(
            "{uneven} of {} rows with histogram shares not summing to 1",
            ds.rows()
        );
        assert!(uneven * 100 < ds.rows(), "{uneven} rows");
    }

    #[test]
    fn padding_keeps_the_state_consistent_with_real_packets() {
        // The padded flow computed from the features equals the flow of the real padded
        // packet sequence: three extras at places 2, 5 (among the first packets) and later.
        let cols = Columns::of(&features::names()).unwrap();
        let orig = original();
        let extras = [
            Extra {
                size: 40 + 100,
                gap_us: 70,
            },
            Extra {
                size: 40,
                gap_us: 1300,
            },
            Extra {
                size: 40 + 900,
                gap_us: 55,
            },
        ];
        let mut first = [false; FIRST_PACKETS];
        first[2] = true;
        first[5] = true;
        let plan = Plan {
            extras: extras.to_vec(),
            first,
        };
        // The real padded sequence: originals 0, 1, extra, 2, 3, extra, 4, ..., then the
        // third extra after the last original.
        let ex = |e: Extra| (true, e.size as usize - 40, e.gap_us as u64);
        let mut padded = vec![orig[0], orig[1], ex(extras[0]), orig[2], orig[3]];
        padded.push(ex(extras[1]));
        padded.extend_from_slice(&orig[4..]);
        padded.push(ex(extras[2]));
        let (kp, sp) = flow(&padded);

        let (k, s) = flow(&orig);
        let (k2, s2) = state_from_features(&cols, &feats(&k, &s));
        let t = pad_state(&k2, &s2, &plan);
        close(&feats(&kp, &sp), &feats(&k2, &t));
        // And the invariants: packets, bytes and the histogram add up.
        assert_eq!(t.packets[FWD], s.packets[FWD] + 3);
        assert_eq!(
            t.len_hist.iter().map(|&c| c as u64).sum::<u64>(),
            t.total_packets()
        );
        assert_eq!(t.bytes[FWD], s.bytes[FWD] + 140 + 40 + 940);
        assert_eq!(
            t.last_seen_ns - t.first_seen_ns,
            s2.last_seen_ns - s2.first_seen_ns + (70 + 1300 + 55) * 1000
        );
    }

    #[test]
    fn random_plans_add_thirty_percent_and_spare_one_packet_flows() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let e = |_: &mut dyn rand::RngCore| Extra {
            size: 60,
            gap_us: 10,
        };
        let mut total = 0;
        for _ in 0..2000 {
            let p = Plan::random(10, 0.3, e, &mut rng);
            assert!(!p.first[0], "the first packet is the attacker's own");
            assert!(p.first.iter().filter(|&&b| b).count() <= p.extras.len());
            total += p.extras.len();
        }
        let mean = total as f64 / 2000.0;
        assert!((mean - 3.0).abs() < 0.1, "{mean}");
        assert!(Plan::random(1, 0.3, e, &mut rng).extras.is_empty());
        // Padding from benign rows of the same service: the padded row stays a valid row.
        let cols = Columns::of(&features::names()).unwrap();
        let (k, s) = flow(&original());
        let benign = feats(&k, &s);
        let pool = BenignPackets::collect(&cols, &benign, features::COUNT);
        let mut used = PoolUse::default();
        let (row, m) = pool
            .pad_row(&cols, &benign, 0.3, &mut used, &mut rng)
            .unwrap();
        assert!(row.iter().all(|x| x.is_finite()));
        let (_, t) = state_from_features(&cols, &row);
        assert_eq!(t.total_packets(), s.total_packets() + m);
        assert_eq!(used.service, 1);
    }
}

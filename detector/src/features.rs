//! The model's view of a flow: the `detector-flow-v2` feature vector, computed from the flow
//! state that the kernel and the replayer share. Identifiers (addresses, absolute times, TTL,
//! the initiator's ephemeral port) are not features: they are shortcuts that do not generalise.
//!
//! Nor is what the network path or the operating system chose rather than the endpoints' behaviour
//! (docs/model.md, "Features"): times are in units of the flow's own round-trip time (a veth
//! answers in tens of µs, a real network in milliseconds), packet lengths are capped at an
//! Ethernet MTU (jumbo frames and segmentation offload), retransmissions are shares of the
//! packets, and the TCP window and the ECN flags (ECE, CWR) are left out.
//!
//! Values are raw (counts, bytes, ratios); the model's normaliser log-scales and standardises
//! them.

use detector_common::flow::{FlowKey, FlowState, FIRST_PACKETS, FWD, HIST_BUCKETS, REV};

/// Name of this feature set in datasets and model files.
pub const FEATURE_SET: &str = "detector-flow-v2";

/// TCP flags that are features: FIN, SYN, RST, PSH, ACK, URG (bits 0-5). ECE and CWR are the
/// stack's ECN negotiation, not behaviour: a client that enables ECN is no attacker.
const FLAG_NAMES: [&str; 6] = ["fin", "syn", "rst", "psh", "ack", "urg"];

/// Packet lengths above this (jumbo frames, the host's own sends before segmentation offload
/// cuts them) count as full Ethernet frames.
pub const MAX_LEN: u16 = 1500;

/// Feature names, in vector order.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = [
        "duration_rtts",
        "packets_fwd",
        "packets_rev",
        "bytes_fwd",
        "bytes_rev",
        "payload_bytes_fwd",
        "payload_bytes_rev",
        "mean_len",
        "min_len",
        "max_len",
        "retransmit_share_fwd",
        "retransmit_share_rev",
        "rtt_known",
        "iat_min_rtts",
        "iat_max_rtts",
        "iat_mean_rtts",
        "iat_std_rtts",
        "iat_cv",
        "iat_max_over_mean",
        "proto_tcp",
        "proto_udp",
        "proto_icmp",
        "proto_other",
        "ipv6",
        "dst_port_wellknown",
        "dst_port_ephemeral",
        "icmp_type",
        "icmp_code",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for b in ["le128", "le256", "le512", "le1024", "gt1024"] {
        v.push(format!("len_hist_{b}"));
    }
    for dir in ["fwd", "rev"] {
        for f in FLAG_NAMES {
            v.push(format!("tcp_{f}_{dir}"));
        }
    }
    for i in 0..FIRST_PACKETS {
        v.push(format!("first_size_{i}"));
    }
    for i in 0..FIRST_PACKETS {
        v.push(format!("first_gap_rtts_{i}"));
    }
    v
}

/// Number of features.
pub const COUNT: usize = 28 + HIST_BUCKETS + 2 * FLAG_NAMES.len() + 2 * FIRST_PACKETS;

/// The responder's port: the service the initiator reached.
pub fn responder_port(key: &FlowKey, s: &FlowState) -> u16 {
    if s.initiator_is_hi() {
        key.port_lo
    } else {
        key.port_hi
    }
}

/// The flow's round-trip time as its first packets show it, in µs: from the first answer's
/// gap to the initiator's next packet after it. For a TCP handshake that is SYN → SYN-ACK →
/// ACK, one round trip wherever the observer sits (at the server the first gap is its own
/// turnaround and the second the round trip; at the client the reverse). An answer with
/// nothing after it gives its own gap: a round trip seen from the initiator, the responder's
/// turnaround seen from the responder. None before any answer. At least 1 µs (the gaps'
/// resolution), so that a ratio never divides by zero.
pub fn rtt_us(s: &FlowState) -> Option<f64> {
    let seen = (s.total_packets() as usize).min(FIRST_PACKETS);
    let rev = |k: usize| (s.first_dirs >> k) & 1 == 1;
    let answer = (1..seen).find(|&k| rev(k))?;
    let next = (answer + 1..seen).find(|&k| !rev(k)).unwrap_or(answer);
    let rtt: u64 = (answer..=next).map(|k| s.first_gaps_us[k] as u64).sum();
    Some((rtt as f64).max(1.0))
}

/// Computes the feature vector of a flow into `out` (length [`COUNT`]).
pub fn flow_features(key: &FlowKey, s: &FlowState, out: &mut [f32]) {
    // As an array, every index below is a constant the compiler checks once, here: on the
    // slice, each write carried its own bounds check and panic call.
    let out: &mut [f32; COUNT] = out
        .first_chunk_mut()
        .expect("flow_features writes COUNT values");
    let n = s.total_packets();
    let duration_us = s.last_seen_ns.saturating_sub(s.first_seen_ns) as f64 / 1e3;
    let (iat_mean_us, iat_std_us) = if n > 1 {
        let gaps = (n - 1) as f64;
        let mean_us = duration_us / gaps;
        let var_us = (s.iat_sumsq_us as f64 / gaps - mean_us * mean_us).max(0.0);
        (mean_us, var_us.sqrt())
    } else {
        (0.0, 0.0)
    };
    let rtt = rtt_us(s);
    // Times in round trips; 0 where the flow has no answer to measure one by.
    let rtts = |us: f64| rtt.map_or(0.0, |r| us / r);
    let share = |part: u64, of: u64| if of > 0 { part as f64 / of as f64 } else { 0.0 };
    let len = |l: f64| l.min(MAX_LEN as f64);
    let port = responder_port(key, s);
    let proto = key.proto;
    let mut i = 0;
    let mut put = |v: f64| {
        out[i] = v as f32;
        i += 1;
    };
    put(rtts(duration_us));
    put(s.packets[FWD] as f64);
    put(s.packets[REV] as f64);
    put(s.bytes[FWD] as f64);
    put(s.bytes[REV] as f64);
    put(s.payload_bytes[FWD] as f64);
    put(s.payload_bytes[REV] as f64);
    put(if n > 0 {
        len((s.bytes[FWD] + s.bytes[REV]) as f64 / n as f64)
    } else {
        0.0
    });
    put(if n > 0 { len(s.min_len as f64) } else { 0.0 });
    put(len(s.max_len as f64));
    put(share(s.retransmits[FWD] as u64, s.packets[FWD]));
    put(share(s.retransmits[REV] as u64, s.packets[REV]));
    put(rtt.is_some() as u8 as f64);
    put(rtts(s.iat_min_ns as f64 / 1e3));
    put(rtts(s.iat_max_ns as f64 / 1e3));
    put(rtts(iat_mean_us));
    put(rtts(iat_std_us));
    // The shape of the gaps, whatever their scale.
    put(if iat_mean_us > 0.0 {
        iat_std_us / iat_mean_us
    } else {
        0.0
    });
    put(if iat_mean_us > 0.0 {
        s.iat_max_ns as f64 / 1e3 / iat_mean_us
    } else {
        0.0
    });
    put((proto == 6) as u8 as f64);
    put((proto == 17) as u8 as f64);
    put((proto == 1 || proto == 58) as u8 as f64);
    put(!matches!(proto, 1 | 6 | 17 | 58) as u8 as f64);
    put((key.family == 6) as u8 as f64);
    // The service's port only as a class: the raw number is a shortcut (a lab that ran one
    // attack on 8080 teaches "8080 is an attack").
    put((port != 0 && port < 1024) as u8 as f64);
    put((port >= 49152) as u8 as f64);
    put(s.icmp_type as f64);
    put(s.icmp_code as f64);
    for &h in &s.len_hist {
        put(share(h as u64, n));
    }
    for dir in [FWD, REV] {
        for bit in 0..FLAG_NAMES.len() {
            put(((s.tcp_flags[dir] >> bit) & 1) as f64);
        }
    }
    let seen = (n as usize).min(FIRST_PACKETS);
    // Sizes carry their direction in the sign: +initiator→responder, -responder→initiator.
    for k in 0..FIRST_PACKETS {
        let v = if k < seen {
            let size = len(s.first_sizes[k] as f64);
            if (s.first_dirs >> k) & 1 == 1 {
                -size
            } else {
                size
            }
        } else {
            0.0
        };
        put(v);
    }
    for k in 0..FIRST_PACKETS {
        put(if k < seen {
            rtts(s.first_gaps_us[k] as f64)
        } else {
            0.0
        });
    }
}

/// Name of the live feature set: the flow's features followed by its context
/// ([`crate::context::NAMES`]). This is what the agent scores.
pub const LIVE_FEATURE_SET: &str = "detector-flowctx-v2";
/// Number of live features.
pub const LIVE_COUNT: usize = COUNT + crate::context::COUNT;

/// Live feature names, in vector order.
pub fn live_names() -> Vec<String> {
    let mut v = names();
    v.extend(crate::context::NAMES.iter().map(|s| s.to_string()));
    v
}

/// Turns a stream of flow records (in arrival order) into live feature vectors: one code path
/// for the agent, `replay --detect` and datasets built from recordings.
#[derive(Default)]
pub struct Featurizer {
    ctx: crate::context::ContextTracker,
}

impl Featurizer {
    pub fn new(cfg: crate::context::ContextConfig) -> Self {
        Self {
            ctx: crate::context::ContextTracker::new(cfg),
        }
    }

    /// Features of one record ([`LIVE_COUNT`] values); updates the context windows. Returns
    /// the record's evidence: its flow's packets (both directions) plus the other flows of its
    /// source and its service in the context window.
    pub fn features(
        &mut self,
        key: &FlowKey,
        state: &FlowState,
        reason: detector_common::flow::Reason,
        out: &mut [f32],
    ) -> u64 {
        let (flow, ctx) = out.split_at_mut(COUNT);
        flow_features(key, state, flow);
        let others = self.ctx.observe(key, state, reason, ctx);
        state.packets[0]
            .saturating_add(state.packets[1])
            .saturating_add(u64::from(others))
    }

    /// Sources and services the context tracks now.
    pub fn tracked(&self) -> (usize, usize) {
        self.ctx.tracked()
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
        packet::{Captured, TCP_ACK, TCP_SYN},
        testpkt::tcp4,
    };

    #[test]
    fn names_match_the_vector_length() {
        assert_eq!(names().len(), COUNT);
        let mut sorted = names();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), COUNT, "names are unique");
    }

    #[test]
    fn features_of_a_small_tcp_flow() {
        let a = [10, 0, 0, 9];
        let b = [10, 0, 0, 1];
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let frames = [
            (0u64, tcp4(a, 50000, b, 22, TCP_SYN, 1, 0)),
            (1_000_000, tcp4(b, 22, a, 50000, TCP_SYN | TCP_ACK, 1, 0)),
            (3_000_000, tcp4(a, 50000, b, 22, TCP_ACK, 2, 100)),
        ];
        for (ts, f) in &frames {
            process_packet(
                &Captured::whole(f),
                *ts,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
        }
        let (k, s) = t.iter().next().unwrap();
        let mut v = vec![0f32; COUNT];
        flow_features(k, s, &mut v);
        let names = names();
        let get = |n: &str| v[names.iter().position(|x| x == n).unwrap()];
        // SYN → SYN-ACK 1 ms → ACK 2 ms: a round trip of 3 ms, the unit of every time.
        assert_eq!(rtt_us(s), Some(3000.0));
        assert_eq!(get("rtt_known"), 1.0);
        assert_eq!(get("duration_rtts"), 1.0);
        assert_eq!(get("packets_fwd"), 2.0);
        assert_eq!(get("packets_rev"), 1.0);
        assert_eq!(
            get("dst_port_wellknown"),
            1.0,
            "the responder's port, not the initiator's"
        );
        assert_eq!(get("dst_port_ephemeral"), 0.0);
        assert_eq!(get("proto_tcp"), 1.0);
        assert_eq!(get("iat_mean_rtts"), 0.5);
        assert_eq!(get("iat_std_rtts"), 500.0 / 3000.0);
        assert_eq!(get("iat_cv"), 500.0 / 1500.0);
        assert_eq!(get("tcp_syn_fwd"), 1.0);
        assert_eq!(get("tcp_syn_rev"), 1.0);
        assert_eq!(get("first_size_1"), -40.0);
        assert_eq!(get("first_size_2"), 140.0);
        assert_eq!(get("first_size_3"), 0.0);
        assert_eq!(get("first_gap_rtts_2"), 2000.0 / 3000.0);
        assert!(v.iter().all(|x| x.is_finite()));

        // A recorded JSON line gives the same features back.
        let json = crate::record::FlowJson::new(
            k,
            s,
            detector_common::flow::Reason::Flush,
            crate::clock::TimeBase::Unix,
        );
        let line = serde_json::to_string(&json).unwrap();
        let back: crate::record::FlowJson = serde_json::from_str(&line).unwrap();
        let (k2, s2) = back.to_state();
        assert_eq!(&k2, k);
        let mut v2 = vec![0f32; COUNT];
        flow_features(&k2, &s2, &mut v2);
        assert_eq!(v, v2);
    }

    /// A TCP exchange through the shared flow logic: handshake, `data` request/response pairs,
    /// every gap `unit_ns` times its factor; `syn_flags` extra flags on the client's SYN.
    fn exchange(unit_ns: u64, syn_extra: u8, data: u16) -> Vec<f32> {
        let a = [10, 0, 0, 9];
        let b = [10, 0, 0, 1];
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let mut frames = vec![
            (0u64, tcp4(a, 50000, b, 443, TCP_SYN | syn_extra, 1, 0)),
            (3, tcp4(b, 443, a, 50000, TCP_SYN | TCP_ACK, 1, 0)),
            (4, tcp4(a, 50000, b, 443, TCP_ACK, 2, 0)),
        ];
        let mut at = 4;
        for k in 0..6u32 {
            at += 1 + k as u64;
            frames.push((at, tcp4(a, 50000, b, 443, TCP_ACK, 2 + k * 300, 300)));
            at += 2;
            frames.push((
                at,
                tcp4(
                    b,
                    443,
                    a,
                    50000,
                    TCP_ACK,
                    2 + k * data as u32,
                    data as usize,
                ),
            ));
        }
        for (ts, f) in &frames {
            process_packet(
                &Captured::whole(f),
                ts * unit_ns,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
        }
        let (k, s) = t.iter().next().unwrap();
        let mut v = vec![0f32; COUNT];
        flow_features(k, s, &mut v);
        v
    }

    #[test]
    fn features_do_not_change_with_the_paths_time_scale() {
        // The same exchange over a 30 µs veth, a 1 ms LAN and a 100 ms WAN.
        let lan = exchange(1_000_000, 0, 1000);
        for unit in [10_000, 100_000_000] {
            let other = exchange(unit, 0, 1000);
            for ((n, a), b) in names().iter().zip(&lan).zip(&other) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{n}: {a} at 1 ms units, {b} at {unit} ns units"
                );
            }
        }
    }

    #[test]
    fn ecn_negotiation_and_jumbo_frames_are_not_features() {
        use detector_common::packet::{TCP_CWR, TCP_ECE};
        let plain = exchange(1_000_000, 0, 1000);
        assert_eq!(plain, exchange(1_000_000, TCP_ECE | TCP_CWR, 1000));
        // 8960-byte answers on a 9000-byte MTU look like full Ethernet frames.
        let full = exchange(1_000_000, 0, 1460);
        let jumbo = exchange(1_000_000, 0, 8960);
        let names = names();
        for n in ["max_len", "first_size_4", "len_hist_gt1024"] {
            let i = names.iter().position(|x| x == n).unwrap();
            assert_eq!(full[i], jumbo[i], "{n}");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("ece") || n.contains("cwr") || n.contains("window")));
    }
}

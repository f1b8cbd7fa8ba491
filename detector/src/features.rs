//! The model's view of a flow: the `detector-flow-v1` feature vector, computed from the flow
//! state that the kernel and the replayer share. Identifiers (addresses, absolute times, TTL,
//! the initiator's ephemeral port) are not features: they are shortcuts that do not generalise.
//!
//! Values are raw (counts, bytes, ns); the model's normaliser log-scales and standardises them.

use detector_common::flow::{FlowKey, FlowState, FIRST_PACKETS, FWD, HIST_BUCKETS, REV};

/// Name of this feature set in datasets and model files.
pub const FEATURE_SET: &str = "detector-flow-v1";

const FLAG_NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];

/// Feature names, in vector order.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = [
        "duration_ns",
        "packets_fwd",
        "packets_rev",
        "bytes_fwd",
        "bytes_rev",
        "payload_bytes_fwd",
        "payload_bytes_rev",
        "mean_len",
        "min_len",
        "max_len",
        "max_window_fwd",
        "max_window_rev",
        "retransmits_fwd",
        "retransmits_rev",
        "iat_min_ns",
        "iat_max_ns",
        "iat_mean_ns",
        "iat_std_ns",
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
        v.push(format!("first_gap_us_{i}"));
    }
    v
}

/// Number of features.
pub const COUNT: usize = 27 + HIST_BUCKETS + 16 + 2 * FIRST_PACKETS;

/// The responder's port: the service the initiator reached.
pub fn responder_port(key: &FlowKey, s: &FlowState) -> u16 {
    if s.initiator_is_hi() {
        key.port_lo
    } else {
        key.port_hi
    }
}

/// Computes the feature vector of a flow into `out` (length [`COUNT`]).
pub fn flow_features(key: &FlowKey, s: &FlowState, out: &mut [f32]) {
    // As an array, every index below is a constant the compiler checks once, here: on the
    // slice, each of the 78 writes carried its own bounds check and panic call.
    let out: &mut [f32; COUNT] = out
        .first_chunk_mut()
        .expect("flow_features writes COUNT values");
    let n = s.total_packets();
    let duration = s.last_seen_ns.saturating_sub(s.first_seen_ns);
    let (iat_mean, iat_std) = if n > 1 {
        let gaps = (n - 1) as f64;
        let mean_ns = duration as f64 / gaps;
        let mean_us = mean_ns / 1e3;
        let var_us = (s.iat_sumsq_us as f64 / gaps - mean_us * mean_us).max(0.0);
        (mean_ns, var_us.sqrt() * 1e3)
    } else {
        (0.0, 0.0)
    };
    let port = responder_port(key, s);
    let proto = key.proto;
    let mut i = 0;
    let mut put = |v: f64| {
        out[i] = v as f32;
        i += 1;
    };
    put(duration as f64);
    put(s.packets[FWD] as f64);
    put(s.packets[REV] as f64);
    put(s.bytes[FWD] as f64);
    put(s.bytes[REV] as f64);
    put(s.payload_bytes[FWD] as f64);
    put(s.payload_bytes[REV] as f64);
    put(if n > 0 {
        (s.bytes[FWD] + s.bytes[REV]) as f64 / n as f64
    } else {
        0.0
    });
    put(if n > 0 { s.min_len as f64 } else { 0.0 });
    put(s.max_len as f64);
    put(s.max_window[FWD] as f64);
    put(s.max_window[REV] as f64);
    put(s.retransmits[FWD] as f64);
    put(s.retransmits[REV] as f64);
    put(s.iat_min_ns as f64);
    put(s.iat_max_ns as f64);
    put(iat_mean);
    put(iat_std);
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
        put(if n > 0 { h as f64 / n as f64 } else { 0.0 });
    }
    for dir in [FWD, REV] {
        for bit in 0..8 {
            put(((s.tcp_flags[dir] >> bit) & 1) as f64);
        }
    }
    let seen = (n as usize).min(FIRST_PACKETS);
    // Sizes carry their direction in the sign: +initiator→responder, -responder→initiator.
    for k in 0..FIRST_PACKETS {
        let v = if k < seen {
            let size = s.first_sizes[k] as f64;
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
            s.first_gaps_us[k] as f64
        } else {
            0.0
        });
    }
}

/// Name of the live feature set: the flow's features followed by its context
/// ([`crate::context::NAMES`]). This is what the agent scores.
pub const LIVE_FEATURE_SET: &str = "detector-flowctx-v1";
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
        let (k, s) = t.flows.iter().next().unwrap();
        let mut v = vec![0f32; COUNT];
        flow_features(k, s, &mut v);
        let names = names();
        let get = |n: &str| v[names.iter().position(|x| x == n).unwrap()];
        assert_eq!(get("duration_ns"), 3_000_000.0);
        assert_eq!(get("packets_fwd"), 2.0);
        assert_eq!(get("packets_rev"), 1.0);
        assert_eq!(
            get("dst_port_wellknown"),
            1.0,
            "the responder's port, not the initiator's"
        );
        assert_eq!(get("dst_port_ephemeral"), 0.0);
        assert_eq!(get("proto_tcp"), 1.0);
        assert_eq!(get("iat_mean_ns"), 1_500_000.0);
        assert_eq!(get("iat_std_ns"), 500_000.0);
        assert_eq!(get("tcp_syn_fwd"), 1.0);
        assert_eq!(get("tcp_syn_rev"), 1.0);
        assert_eq!(get("first_size_1"), -40.0);
        assert_eq!(get("first_size_2"), 140.0);
        assert_eq!(get("first_size_3"), 0.0);
        assert_eq!(get("first_gap_us_2"), 2000.0);
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
}

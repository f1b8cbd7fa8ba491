//! JSON lines written by the agent and the replayer. Field names are stable: README.md
//! documents them, and consumers (the model, operators' pipelines) depend on them.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use detector_common::{
    flow::{status, FlowKey, FlowRecord, FlowState, Reason, FIRST_PACKETS, FWD, REV},
    proc::{kind, ProcEvent},
};
use serde::{Deserialize, Serialize};

use crate::clock::TimeBase;

/// Formats a 16-byte key address of the given family.
pub fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// The flow's initiator and responder (address, port): the record's `src` and `dst`.
pub fn endpoints(key: &FlowKey, s: &FlowState) -> ((IpAddr, u16), (IpAddr, u16)) {
    let (src, sport, dst, dport) = if s.initiator_is_hi() {
        (&key.addr_hi, key.port_hi, &key.addr_lo, key.port_lo)
    } else {
        (&key.addr_lo, key.port_lo, &key.addr_hi, key.port_hi)
    };
    (
        (addr(key.family, src), sport),
        (addr(key.family, dst), dport),
    )
}

/// Name of an IP protocol number for output.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        47 => "gre",
        50 => "esp",
        _ => "other",
    }
}

/// The process that owns one end of a flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
}

/// One flow record. `src` is the initiator, `dst` the responder; `_fwd` counters are
/// initiator→responder, `_rev` the other way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowJson {
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub reason: Cow<'static, str>,
    /// True when this is the flow's last record.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub duration_ns: u64,
    pub family: u8,
    pub proto: u8,
    pub proto_name: Cow<'static, str>,
    pub vlan: u16,
    pub src_addr: IpAddr,
    pub src_port: u16,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
    pub packets_fwd: u64,
    pub packets_rev: u64,
    pub bytes_fwd: u64,
    pub bytes_rev: u64,
    pub payload_bytes_fwd: u64,
    pub payload_bytes_rev: u64,
    pub tcp_flags_fwd: u8,
    pub tcp_flags_rev: u8,
    pub min_len: u16,
    pub max_len: u16,
    pub len_hist: [u32; 5],
    pub max_window_fwd: u16,
    pub max_window_rev: u16,
    pub retransmits_fwd: u32,
    pub retransmits_rev: u32,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub iat_min_ns: u64,
    pub iat_max_ns: u64,
    pub iat_sumsq_us: u64,
    pub first_sizes: Vec<u16>,
    /// 0 = initiator→responder, 1 = responder→initiator.
    pub first_dirs: Vec<u8>,
    pub first_gaps_us: Vec<u32>,
    pub process: Option<ProcessRef>,
}

fn key_addr(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&v4.octets());
            k
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl FlowJson {
    /// Builds the output form of a record; `time` converts its timestamps to Unix time.
    pub fn new(key: &FlowKey, s: &FlowState, reason: Reason, time: TimeBase) -> Self {
        let ((src, sport), (dst, dport)) = endpoints(key, s);
        let n = (s.total_packets() as usize).min(FIRST_PACKETS);
        Self {
            kind: Cow::Borrowed("flow"),
            reason: Cow::Borrowed(reason.as_str()),
            is_final: reason.is_final(),
            first_seen_ns: time.to_unix_ns(s.first_seen_ns),
            last_seen_ns: time.to_unix_ns(s.last_seen_ns),
            duration_ns: s.last_seen_ns.saturating_sub(s.first_seen_ns),
            family: key.family,
            proto: key.proto,
            proto_name: Cow::Borrowed(proto_name(key.proto)),
            vlan: key.vlan,
            src_addr: src,
            src_port: sport,
            dst_addr: dst,
            dst_port: dport,
            packets_fwd: s.packets[FWD],
            packets_rev: s.packets[REV],
            bytes_fwd: s.bytes[FWD],
            bytes_rev: s.bytes[REV],
            payload_bytes_fwd: s.payload_bytes[FWD],
            payload_bytes_rev: s.payload_bytes[REV],
            tcp_flags_fwd: s.tcp_flags[FWD],
            tcp_flags_rev: s.tcp_flags[REV],
            min_len: if s.total_packets() == 0 { 0 } else { s.min_len },
            max_len: s.max_len,
            len_hist: s.len_hist,
            max_window_fwd: s.max_window[FWD],
            max_window_rev: s.max_window[REV],
            retransmits_fwd: s.retransmits[FWD],
            retransmits_rev: s.retransmits[REV],
            icmp_type: s.icmp_type,
            icmp_code: s.icmp_code,
            iat_min_ns: s.iat_min_ns,
            iat_max_ns: s.iat_max_ns,
            iat_sumsq_us: s.iat_sumsq_us,
            first_sizes: s.first_sizes[..n].to_vec(),
            first_dirs: (0..n).map(|i| (s.first_dirs >> i) & 1).collect(),
            first_gaps_us: s.first_gaps_us[..n].to_vec(),
            process: None,
        }
    }

    /// The kernel form back from a JSON record (recordings → datasets), timestamps in Unix
    /// time. Everything the features use survives the round trip; the TCP sequence tracking
    /// and export bookkeeping do not.
    pub fn to_state(&self) -> (FlowKey, FlowState) {
        let src = (key_addr(&self.src_addr), self.src_port);
        let dst = (key_addr(&self.dst_addr), self.dst_port);
        let initiator_lo = src <= dst;
        let (lo, hi) = if initiator_lo { (src, dst) } else { (dst, src) };
        let key = FlowKey {
            addr_lo: lo.0,
            addr_hi: hi.0,
            port_lo: lo.1,
            port_hi: hi.1,
            proto: self.proto,
            family: self.family,
            vlan: self.vlan,
        };
        let n = self.first_sizes.len().min(FIRST_PACKETS);
        let mut s = FlowState {
            first_seen_ns: self.first_seen_ns,
            last_seen_ns: self.first_seen_ns.saturating_add(self.duration_ns),
            packets: [self.packets_fwd, self.packets_rev],
            bytes: [self.bytes_fwd, self.bytes_rev],
            payload_bytes: [self.payload_bytes_fwd, self.payload_bytes_rev],
            iat_min_ns: self.iat_min_ns,
            iat_max_ns: self.iat_max_ns,
            iat_sumsq_us: self.iat_sumsq_us,
            retransmits: [self.retransmits_fwd, self.retransmits_rev],
            len_hist: self.len_hist,
            min_len: if self.packets_fwd + self.packets_rev == 0 {
                u16::MAX
            } else {
                self.min_len
            },
            max_len: self.max_len,
            max_window: [self.max_window_fwd, self.max_window_rev],
            tcp_flags: [self.tcp_flags_fwd, self.tcp_flags_rev],
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            status: if initiator_lo {
                0
            } else {
                status::INITIATOR_HI
            },
            ..FlowState::default()
        };
        s.exported_packets = s.total_packets();
        for i in 0..n {
            s.first_sizes[i] = self.first_sizes[i];
            s.first_gaps_us[i] = self.first_gaps_us.get(i).copied().unwrap_or(0);
            if self.first_dirs.get(i).copied().unwrap_or(0) == 1 {
                s.first_dirs |= 1 << i;
            }
        }
        (key, s)
    }

    /// Builds the output form of a ring-buffer record; None for an unknown reason code.
    pub fn from_record(rec: &FlowRecord, time: TimeBase) -> Option<Self> {
        Some(Self::new(
            &rec.key,
            &rec.state,
            Reason::from_u8(rec.reason)?,
            time,
        ))
    }
}

/// Name of a kernel TCP state (include/net/tcp_states.h).
pub fn tcp_state_name(state: i32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Text of a NUL-terminated byte field.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One process event.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// exec, exit, connect, accept, tcp_state.
    pub event: &'static str,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// connect/accept: the syscall's return value (fd or -errno).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
}

impl ProcessJson {
    /// Output form of a process event; None for an unknown kind.
    pub fn new(ev: &ProcEvent, time: TimeBase) -> Option<Self> {
        let event = match ev.kind {
            kind::EXEC => "exec",
            kind::EXIT => "exit",
            kind::CONNECT => "connect",
            kind::ACCEPT => "accept",
            kind::TCP_STATE => "tcp_state",
            _ => return None,
        };
        let has_addr = ev.family == 4 || ev.family == 6;
        let is_state = ev.kind == kind::TCP_STATE;
        let is_call = ev.kind == kind::CONNECT || ev.kind == kind::ACCEPT;
        Some(Self {
            kind: "process",
            event,
            ts_ns: time.to_unix_ns(ev.ts_ns),
            pid: ev.pid,
            tid: ev.tid,
            ppid: ev.ppid,
            uid: ev.uid,
            comm: cstr(&ev.comm),
            cgroup_id: ev.cgroup_id,
            path: (ev.kind == kind::EXEC).then(|| cstr(&ev.path)),
            result: is_call.then_some(ev.result),
            tcp_state: is_state.then(|| tcp_state_name(ev.result)),
            tcp_old_state: is_state.then(|| tcp_state_name(ev.old_state)),
            peer_addr: has_addr.then(|| addr(ev.family, &ev.peer_addr)),
            peer_port: has_addr.then_some(ev.peer_port),
            local_addr: (has_addr && is_state).then(|| addr(ev.family, &ev.local_addr)),
            local_port: (has_addr && is_state).then_some(ev.local_port),
        })
    }
}

//! Per-flow state and the per-packet update, shared by the kernel programs and the replayer.
//!
//! [`process_packet`] is the one definition of "what a packet does to the flow table": the XDP
//! and TC programs call it with map-backed tables and `bpf_ktime_get_ns`, the replayer with a
//! `HashMap` and capture timestamps. All updates are counters, minima/maxima and sums, so the
//! kernel never divides at packet time; ratios and means are derived in user space.

#[cfg(any(test, feature = "user"))]
pub mod user;

pub use crate::key::FlowKey;
use crate::packet::{
    self, PacketBytes, Parsed, Skip, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, TCP_ACK, TCP_FIN,
    TCP_RST, TCP_SYN,
};

/// Number of leading packets whose size, direction and gap are kept.
pub const FIRST_PACKETS: usize = 8;
/// Upper bounds of the packet-length histogram buckets (IP length); the last bucket also takes
/// anything longer than 1024 (jumbo frames, GRO aggregates).
pub const HIST_BOUNDS: [u32; 5] = [128, 256, 512, 1024, 1514];
pub const HIST_BUCKETS: usize = HIST_BOUNDS.len();

/// Index of the initiator→responder direction in per-direction arrays.
pub const FWD: usize = 0;
/// Index of the responder→initiator direction.
pub const REV: usize = 1;

/// Bits of [`FlowState::status`].
pub mod status {
    /// The initiator is the key's `hi` endpoint (else `lo`).
    pub const INITIATOR_HI: u8 = 0x01;
    pub const FIN_FWD: u8 = 0x02;
    pub const FIN_REV: u8 = 0x04;
    pub const RST: u8 = 0x08;
    /// `tcp_seq_next[FWD]` holds a value.
    pub const SEQ_FWD: u8 = 0x10;
    /// `tcp_seq_next[REV]` holds a value.
    pub const SEQ_REV: u8 = 0x20;
}

/// Everything kept per flow. Per-direction arrays are indexed by [`FWD`] and [`REV`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowState {
    /// Clock of the side that observed it: CLOCK_MONOTONIC in the kernel, capture time (Unix
    /// epoch) in the replayer. The agent converts to wall-clock time on output.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// When the last record for this flow was emitted (0 = never).
    pub last_export_ns: u64,
    pub packets: [u64; 2],
    /// IP bytes (header + payload) per direction.
    pub bytes: [u64; 2],
    /// Transport payload bytes per direction.
    pub payload_bytes: [u64; 2],
    /// Packet count at the last emitted record: a flow with more is "dirty".
    pub exported_packets: u64,
    /// Smallest and largest gap between consecutive packets (either direction), ns.
    pub iat_min_ns: u64,
    pub iat_max_ns: u64,
    /// Sum of squared gaps in µs², saturating: with the duration gives the gap variance.
    pub iat_sumsq_us: u64,
    /// TCP retransmissions per direction (a segment that does not advance the sequence).
    pub retransmits: [u32; 2],
    /// Next expected TCP sequence number per direction (highest seq + len seen).
    pub tcp_seq_next: [u32; 2],
    /// Packet-length histogram, buckets bounded by [`HIST_BOUNDS`].
    pub len_hist: [u32; HIST_BUCKETS],
    /// Gaps before each of the first packets, µs (the first is 0), saturating.
    pub first_gaps_us: [u32; FIRST_PACKETS],
    /// Per sending endpoint (0: `hi`, 1: `lo`; a source entry drops one side only), the
    /// blocklist generation its packets were last looked up in and found clear (ingress; 0 =
    /// not yet): see [`process_packet_at`].
    pub blocklist_gen: [u32; 2],
    /// IP lengths of the first packets.
    pub first_sizes: [u16; FIRST_PACKETS],
    pub min_len: u16,
    pub max_len: u16,
    /// Largest TCP window field per direction (unscaled).
    pub max_window: [u16; 2],
    /// OR of TCP flags per direction.
    pub tcp_flags: [u8; 2],
    /// Bit i set: packet i of the first packets went responder→initiator.
    pub first_dirs: u8,
    /// [`status`] bits.
    pub status: u8,
    /// ICMP/ICMPv6 type and code of the first packet.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: [u8; 6],
}

impl FlowState {
    /// Packets in both directions.
    #[inline(always)]
    pub fn total_packets(&self) -> u64 {
        self.packets[FWD] + self.packets[REV]
    }
    /// True when the initiator is the key's `hi` endpoint.
    #[inline(always)]
    pub fn initiator_is_hi(&self) -> bool {
        self.status & status::INITIATOR_HI != 0
    }
}

/// Why a flow record was emitted.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The flow reached [`FlowConfig::early_packets`] packets: lets the agent act mid-flow.
    Early = 1,
    /// Both sides sent FIN.
    Fin = 2,
    /// A RST was seen.
    Rst = 3,
    /// The flow has run for another active timeout since its last record.
    ActiveTimeout = 4,
    /// No packet for the idle timeout: the flow is over (final record).
    IdleTimeout = 5,
    /// Emitted because the table was flushed (agent stop, end of capture): final record.
    Flush = 6,
    /// A new TCP connection reused the key of a closed one: final record of the old one.
    Reused = 7,
    /// The flow's first packet (when [`FlowConfig::new_records`] is on): lets the agent see
    /// scans and spoofed floods, whose flows never grow, without waiting for their timeout.
    New = 8,
    /// The responder's first packet (when [`FlowConfig::new_records`] is on): tells the agent
    /// promptly that an attempt was answered, which it otherwise learns only at the flow's
    /// next record (8 packets, FIN, or a timeout).
    Reply = 9,
}

impl Reason {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Early,
            2 => Self::Fin,
            3 => Self::Rst,
            4 => Self::ActiveTimeout,
            5 => Self::IdleTimeout,
            6 => Self::Flush,
            7 => Self::Reused,
            8 => Self::New,
            9 => Self::Reply,
            _ => return None,
        })
    }
    /// Stable name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::ActiveTimeout => "active_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Flush => "flush",
            Self::Reused => "reused",
            Self::New => "new",
            Self::Reply => "reply",
        }
    }
    /// A final record is the last one for this flow: its entry is gone or replaced.
    pub fn is_final(self) -> bool {
        matches!(self, Self::IdleTimeout | Self::Flush | Self::Reused)
    }
}

/// Flow-table settings, written by user space into the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowConfig {
    /// A record is emitted again after the flow has been active this long since the last one.
    pub active_timeout_ns: u64,
    /// A flow without packets for this long is over.
    pub idle_timeout_ns: u64,
    /// Emit an early record when the flow reaches this many packets (0 = never).
    pub early_packets: u32,
    /// Non-zero: emit a `new` record on each flow's first packet and a `reply` record on the
    /// responder's first packet.
    pub new_records: u32,
}

impl FlowConfig {
    pub const DEFAULT: Self = Self {
        active_timeout_ns: 60_000_000_000,
        idle_timeout_ns: 30_000_000_000,
        early_packets: FIRST_PACKETS as u32,
        new_records: 1,
    };
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A flow record as it crosses the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowRecord {
    pub key: FlowKey,
    /// [`Reason`] as u8.
    pub reason: u8,
    pub _pad: [u8; 7],
    pub state: FlowState,
}

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Packets seen by the programs (all, before any decision).
    pub const PACKETS: u32 = 0;
    /// Malformed or truncated packets (passed, no flow update).
    pub const MALFORMED: u32 = 1;
    /// Non-IP packets (passed, no flow update).
    pub const NOT_IP: u32 = 2;
    /// Packets dropped by the blocklist.
    pub const BLOCKED: u32 = 3;
    /// Flow records lost because the ring buffer had no room.
    pub const RINGBUF_FULL: u32 = 4;
    /// Flows created.
    pub const FLOWS_CREATED: u32 = 5;
    /// Flow records emitted.
    pub const RECORDS: u32 = 6;
    /// Flow-table inserts that failed.
    pub const TABLE_FULL: u32 = 7;
    /// Process events lost because their ring buffer had no room.
    pub const PROC_RINGBUF_FULL: u32 = 8;
    /// Entries put into the flow table (a closed flow's entry reused by its key's next SYN is
    /// not one). User space derives the LRU's silent evictions from it: every entry inserted is
    /// still in the table, removed by the sweep, or evicted. (Two CPUs that create the same
    /// flow at the same instant both count it; one insert wins.)
    pub const TABLE_INSERTS: u32 = 9;
    pub const COUNT: u32 = 10;
    /// Names in index order, as they appear in logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "malformed",
        "not_ip",
        "blocked",
        "ringbuf_full",
        "flows_created",
        "records",
        "table_full",
        "proc_ringbuf_full",
        "table_inserts",
    ];
}

/// Flows the kernel's table holds unless configured otherwise (`flows.table_size`), and the
/// replayer's by default: the same bound on both sides.
pub const DEFAULT_TABLE_SIZE: u32 = 65536;

/// The flow table: an LRU hash map in the kernel, a `HashMap` in the replayer.
pub trait FlowTable {
    /// The state for `key`, if present.
    fn get(&mut self, key: &FlowKey) -> Option<&mut FlowState>;
    /// Inserts a zeroed state for `key` and returns it; None when the table refused.
    fn insert_zeroed(&mut self, key: &FlowKey) -> Option<&mut FlowState>;
}

/// Where records, counters and blocklist answers go.
pub trait FlowEnv {
    /// Emits a record; returns false if it was lost (ring buffer full).
    fn emit(&mut self, key: &FlowKey, state: &FlowState, reason: Reason) -> bool;
    /// Adds one to a [`stat`] counter.
    fn count(&mut self, stat: u32);
    /// The blocklist's generation where this side enforces it: None where it does not
    /// (egress), Some(0) while nothing was ever blocked, otherwise a number that user space
    /// moves on with every entry it inserts.
    fn block_generation(&mut self) -> Option<u32>;
    /// True when the blocklist drops this packet.
    fn blocked(&mut self, parsed: &Parsed, now_ns: u64) -> bool;
}

/// What to do with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// Parses one packet, applies the blocklist, and updates the flow table: the whole per-packet
/// path of the replayer, at the packet's capture time `now_ns`.
#[inline(always)]
pub fn process_packet<P: PacketBytes, T: FlowTable, E: FlowEnv>(
    pkt: &P,
    now_ns: u64,
    cfg: &FlowConfig,
    table: &mut T,
    env: &mut E,
) -> Verdict {
    process_packet_at(pkt, || now_ns, cfg, table, env)
}

/// [`process_packet`] with the time read by `clock` once the packet has parsed: the XDP and TC
/// programs read the kernel clock there, which a packet that is not IP, or is malformed, then
/// never pays for (in the VM we measure on, the clock read costs as much as the rest of
/// rejecting a malformed packet; BENCHMARKS.md).
#[inline(always)]
pub fn process_packet_at<P: PacketBytes, T: FlowTable, E: FlowEnv>(
    pkt: &P,
    clock: impl FnOnce() -> u64,
    cfg: &FlowConfig,
    table: &mut T,
    env: &mut E,
) -> Verdict {
    env.count(stat::PACKETS);
    let p = match packet::parse(pkt) {
        Ok(p) => p,
        Err(Skip::NotIp) => {
            env.count(stat::NOT_IP);
            return Verdict::Pass;
        }
        Err(Skip::Malformed) => {
            env.count(stat::MALFORMED);
            return Verdict::Pass;
        }
    };
    let now_ns = clock();
    // Each side of a flow is looked up in the blocklist once per generation of it, not per
    // packet: the lookups hash two 48-byte keys, a third of an established flow's cost on a
    // host that had blocked anything (BENCHMARKS.md). Sound because the answer depends only on
    // the flow and the sender, only an insert can make an entry drop (and moves the generation
    // on), and entries stop dropping by themselves, on expiry.
    let generation = match env.block_generation() {
        Some(g) if g != 0 => Some(g),
        _ => None,
    };
    let existing = table.get(&p.key);
    if let Some(g) = generation {
        let checked = existing
            .as_ref()
            .is_some_and(|s| s.blocklist_gen[p.from_lo as usize] == g);
        if !checked && env.blocked(&p, now_ns) {
            env.count(stat::BLOCKED);
            return Verdict::Drop;
        }
    }
    let state = match existing {
        Some(state) => {
            if ends_before(state, &p, now_ns, cfg) {
                // The old flow is over: its final record goes out, then the slot starts afresh.
                let reason = if is_new_connection(state, &p) {
                    Reason::Reused
                } else {
                    Reason::IdleTimeout
                };
                emit(env, &p.key, state, reason, now_ns);
                // In place: a struct assignment could stage a zeroed copy on the BPF stack.
                // SAFETY: `state` is a valid, exclusive reference to plain data.
                unsafe { core::ptr::write_bytes(state as *mut FlowState, 0, 1) };
                start(state, &p, now_ns);
                env.count(stat::FLOWS_CREATED);
            }
            state
        }
        None => match table.insert_zeroed(&p.key) {
            Some(state) => {
                start(state, &p, now_ns);
                env.count(stat::FLOWS_CREATED);
                env.count(stat::TABLE_INSERTS);
                state
            }
            None => {
                env.count(stat::TABLE_FULL);
                return Verdict::Pass;
            }
        },
    };
    if let Some(g) = generation {
        state.blocklist_gen[p.from_lo as usize] = g;
    }
    if let Some(reason) = update(state, &p, now_ns, cfg) {
        emit(env, &p.key, state, reason, now_ns);
    }
    Verdict::Pass
}

#[inline(always)]
fn emit<E: FlowEnv>(env: &mut E, key: &FlowKey, state: &mut FlowState, reason: Reason, now: u64) {
    state.last_export_ns = now;
    state.exported_packets = state.total_packets();
    if env.emit(key, state, reason) {
        env.count(stat::RECORDS);
    } else {
        env.count(stat::RINGBUF_FULL);
    }
}

/// A new TCP connection (SYN without ACK) on the key of one that already closed.
#[inline(always)]
fn is_new_connection(state: &FlowState, p: &Parsed) -> bool {
    p.key.proto == IPPROTO_TCP
        && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && state.status & (status::RST | status::FIN_FWD | status::FIN_REV) != 0
}

/// True when the existing flow must end before this packet is counted.
#[inline(always)]
fn ends_before(state: &FlowState, p: &Parsed, now: u64, cfg: &FlowConfig) -> bool {
    now.saturating_sub(state.last_seen_ns) > cfg.idle_timeout_ns || is_new_connection(state, p)
}

/// Initialises a zeroed state for the flow's first packet.
#[inline(always)]
fn start(state: &mut FlowState, p: &Parsed, now: u64) {
    state.first_seen_ns = now;
    state.last_seen_ns = now;
    state.min_len = u16::MAX;
    // The sender of the first packet initiated the flow, unless that packet is a SYN-ACK: then
    // the capture or the program started mid-handshake and the receiver initiated.
    let syn_ack =
        p.key.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    let initiator_lo = p.from_lo != syn_ack;
    if !initiator_lo {
        state.status |= status::INITIATOR_HI;
    }
    if p.key.proto == IPPROTO_ICMP || p.key.proto == IPPROTO_ICMPV6 {
        state.icmp_type = p.icmp_type;
        state.icmp_code = p.icmp_code;
    }
}

/// Direction of this packet within the flow.
#[inline(always)]
pub fn direction(state: &FlowState, p: &Parsed) -> usize {
    if p.from_lo != state.initiator_is_hi() {
        FWD
    } else {
        REV
    }
}

/// Counts one packet into the flow and says whether a record is due.
#[inline(always)]
pub fn update(state: &mut FlowState, p: &Parsed, now: u64, cfg: &FlowConfig) -> Option<Reason> {
    let dir = direction(state, p);
    let seen = state.total_packets();
    // Capture timestamps can go backwards; gaps never do.
    let gap_ns = if seen == 0 {
        0
    } else {
        now.saturating_sub(state.last_seen_ns)
    };
    let gap_us = gap_ns / 1000;
    if seen > 0 {
        if seen == 1 || gap_ns < state.iat_min_ns {
            state.iat_min_ns = gap_ns;
        }
        if gap_ns > state.iat_max_ns {
            state.iat_max_ns = gap_ns;
        }
        let sq = if gap_us > u32::MAX as u64 {
            u64::MAX
        } else {
            gap_us * gap_us
        };
        state.iat_sumsq_us = state.iat_sumsq_us.saturating_add(sq);
    }
    let len = p.l3_len;
    let len16 = if len > u16::MAX as u32 {
        u16::MAX
    } else {
        len as u16
    };
    if seen < FIRST_PACKETS as u64 {
        let i = seen as usize;
        if i < FIRST_PACKETS {
            state.first_sizes[i] = len16;
            state.first_gaps_us[i] = if gap_us > u32::MAX as u64 {
                u32::MAX
            } else {
                gap_us as u32
            };
            if dir == REV {
                state.first_dirs |= 1 << i;
            }
        }
    }
    state.packets[dir] += 1;
    state.bytes[dir] += len as u64;
    state.payload_bytes[dir] += p.payload_len as u64;
    if len16 < state.min_len {
        state.min_len = len16;
    }
    if len16 > state.max_len {
        state.max_len = len16;
    }
    let bucket = if len <= HIST_BOUNDS[0] {
        0
    } else if len <= HIST_BOUNDS[1] {
        1
    } else if len <= HIST_BOUNDS[2] {
        2
    } else if len <= HIST_BOUNDS[3] {
        3
    } else {
        4
    };
    state.len_hist[bucket] += 1;
    if now > state.last_seen_ns {
        state.last_seen_ns = now;
    }

    let mut reason = None;
    if p.key.proto == IPPROTO_TCP && !p.later_fragment {
        let flags = p.tcp_flags;
        state.tcp_flags[dir] |= flags;
        if p.tcp_window > state.max_window[dir] {
            state.max_window[dir] = p.tcp_window;
        }
        // A segment occupies its payload plus one sequence number for SYN and for FIN.
        let occupied =
            p.payload_len + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        if occupied > 0 {
            let end = p.tcp_seq.wrapping_add(occupied);
            let have = if dir == FWD {
                status::SEQ_FWD
            } else {
                status::SEQ_REV
            };
            if state.status & have != 0 && (end.wrapping_sub(state.tcp_seq_next[dir]) as i32) <= 0 {
                state.retransmits[dir] += 1;
            } else {
                state.tcp_seq_next[dir] = end;
                state.status |= have;
            }
        }
        // Records go out when the connection closes, once: a retransmitted FIN or a RST
        // flood on one key must not flood the ring buffer.
        let before = state.status;
        if flags & TCP_FIN != 0 {
            state.status |= if dir == FWD {
                status::FIN_FWD
            } else {
                status::FIN_REV
            };
        }
        if flags & TCP_RST != 0 {
            state.status |= status::RST;
        }
        let both_fin = status::FIN_FWD | status::FIN_REV;
        if state.status & status::RST != 0 && before & status::RST == 0 {
            reason = Some(Reason::Rst);
        } else if state.status & both_fin == both_fin && before & both_fin != both_fin {
            reason = Some(Reason::Fin);
        }
    }
    if reason.is_none() {
        let total = seen + 1;
        if seen == 0 && cfg.new_records != 0 {
            reason = Some(Reason::New);
        } else if dir == REV && state.packets[REV] == 1 && cfg.new_records != 0 {
            reason = Some(Reason::Reply);
        } else if cfg.early_packets != 0 && total == cfg.early_packets as u64 {
            reason = Some(Reason::Early);
        } else if now.saturating_sub(if state.last_export_ns == 0 {
            state.first_seen_ns
        } else {
            state.last_export_ns
        }) >= cfg.active_timeout_ns
        {
            reason = Some(Reason::ActiveTimeout);
        }
    }
    reason
}

/// True when a flow last updated at `state.last_seen_ns` is over at `now` and should get its
/// final record (used by the agent's sweeper and the replayer, which see time pass without
/// packets).
#[inline(always)]
pub fn idle_expired(state: &FlowState, now: u64, cfg: &FlowConfig) -> bool {
    now.saturating_sub(state.last_seen_ns) > cfg.idle_timeout_ns
}

#[cfg(test)]
mod tests {
    use super::{user::*, *};
    use crate::{
        block::{BlockEntry, BlockKey},
        packet::{
            parse, Captured, Skip, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP,
            TCP_PSH,
        },
        testpkt::*,
    };

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const C: [u8; 4] = [10, 0, 0, 3];
    const MS: u64 = 1_000_000;

    /// The default configuration without `new` records, which most tests are not about.
    const QUIET: FlowConfig = FlowConfig {
        new_records: 0,
        ..FlowConfig::DEFAULT
    };

    fn run_with(cfg: &FlowConfig, frames: &[(u64, Vec<u8>)]) -> (MemTable, MemEnv) {
        let mut table = MemTable::default();
        let mut env = MemEnv::default();
        for (t, f) in frames {
            process_packet(&Captured::whole(f), *t, cfg, &mut table, &mut env);
        }
        (table, env)
    }

    fn run(frames: &[(u64, Vec<u8>)]) -> (MemTable, MemEnv) {
        run_with(&QUIET, frames)
    }

    fn only_flow(t: &MemTable) -> (FlowKey, FlowState) {
        assert_eq!(
            t.len(),
            1,
            "{:?}",
            t.iter().map(|(k, _)| k).collect::<std::vec::Vec<_>>()
        );
        let (k, s) = t.iter().next().unwrap();
        (*k, *s)
    }

    #[test]
    fn a_bounded_table_evicts_the_least_recently_seen_and_counts_them() {
        let mut table = MemTable::bounded(16);
        let mut env = MemEnv::default();
        // Flow 0 is refreshed after the others start: the oldest by last packet are 1 and 2.
        for i in 0..16u16 {
            let f = tcp4(A, 1000 + i, B, 80, TCP_SYN, 1, 0);
            process_packet(
                &Captured::whole(&f),
                u64::from(i) * MS,
                &QUIET,
                &mut table,
                &mut env,
            );
        }
        let again = tcp4(A, 1000, B, 80, TCP_ACK, 2, 0);
        process_packet(
            &Captured::whole(&again),
            20 * MS,
            &QUIET,
            &mut table,
            &mut env,
        );
        assert_eq!((table.len(), table.evicted), (16, 0));
        // One more flow: a batch of 16 / 8 = 2 goes, the least recently seen.
        let f = tcp4(C, 2000, B, 80, TCP_SYN, 1, 0);
        process_packet(&Captured::whole(&f), 30 * MS, &QUIET, &mut table, &mut env);
        assert_eq!((table.len(), table.evicted), (15, 2));
        let ports: std::collections::BTreeSet<u16> = table.iter().map(|(k, _)| k.port_lo).collect();
        assert!(ports.contains(&1000) && !ports.contains(&1001) && !ports.contains(&1002));
        // Every insert is counted: still there, or evicted.
        let inserts = env.stats[stat::TABLE_INSERTS as usize];
        assert_eq!(inserts, 17);
        assert_eq!(inserts, table.len() as u64 + table.evicted);
        // A packet of a flow still in the table evicts nothing.
        process_packet(
            &Captured::whole(&again),
            40 * MS,
            &QUIET,
            &mut table,
            &mut env,
        );
        assert_eq!(table.evicted, 2);
    }

    #[test]
    fn tcp_handshake_and_data_form_one_bidirectional_flow() {
        let frames = [
            (1000 * MS, tcp4(A, 40000, B, 80, TCP_SYN, 100, 0)),
            (1001 * MS, tcp4(B, 80, A, 40000, TCP_SYN | TCP_ACK, 500, 0)),
            (1002 * MS, tcp4(A, 40000, B, 80, TCP_ACK, 101, 0)),
            (
                1003 * MS,
                tcp4(A, 40000, B, 80, TCP_ACK | TCP_PSH, 101, 300),
            ),
            (
                1005 * MS,
                tcp4(B, 80, A, 40000, TCP_ACK | TCP_PSH, 501, 1000),
            ),
        ];
        let (t, env) = run(&frames);
        let (k, s) = only_flow(&t);
        assert_eq!(k.addr_lo, v4key(A));
        assert_eq!((k.port_lo, k.port_hi, k.proto, k.family), (40000, 80, 6, 4));
        assert!(!s.initiator_is_hi());
        assert_eq!(s.packets, [3, 2]);
        assert_eq!(s.bytes, [40 + 40 + 340, 40 + 1040]);
        assert_eq!(s.payload_bytes, [300, 1000]);
        assert_eq!(
            s.tcp_flags,
            [TCP_SYN | TCP_ACK | TCP_PSH, TCP_SYN | TCP_ACK | TCP_PSH]
        );
        assert_eq!((s.min_len, s.max_len), (40, 1040));
        assert_eq!(s.len_hist, [3, 0, 1, 0, 1]);
        assert_eq!(s.first_sizes[..5], [40, 40, 40, 340, 1040]);
        assert_eq!(s.first_dirs, 0b10010);
        assert_eq!(s.first_gaps_us[..5], [0, 1000, 1000, 1000, 2000]);
        assert_eq!((s.iat_min_ns, s.iat_max_ns), (MS, 2 * MS));
        assert_eq!(s.iat_sumsq_us, 3 * 1000 * 1000 + 2000 * 2000);
        assert_eq!(s.max_window, [29200, 29200]);
        assert_eq!(s.retransmits, [0, 0]);
        assert_eq!((s.first_seen_ns, s.last_seen_ns), (1000 * MS, 1005 * MS));
        assert!(env.records.is_empty(), "no record before 8 packets");
        assert_eq!(env.stats[stat::FLOWS_CREATED as usize], 1);
    }

    #[test]
    fn syn_ack_first_makes_the_receiver_the_initiator() {
        let (t, _) = run(&[(MS, tcp4(B, 80, A, 40000, TCP_SYN | TCP_ACK, 500, 0))]);
        let (_, s) = only_flow(&t);
        // B (hi) sent it, so A (lo) initiated; the packet counts as responder→initiator.
        assert!(!s.initiator_is_hi());
        assert_eq!(s.packets, [0, 1]);
    }

    #[test]
    fn early_record_after_eight_packets_and_fin_record_once() {
        let mut frames = std::vec::Vec::new();
        for i in 0..8u64 {
            frames.push((i * MS, tcp4(A, 1, B, 2, TCP_ACK, 1 + i as u32 * 10, 10)));
        }
        frames.push((9 * MS, tcp4(A, 1, B, 2, TCP_FIN | TCP_ACK, 81, 0)));
        frames.push((10 * MS, tcp4(B, 2, A, 1, TCP_FIN | TCP_ACK, 5, 0)));
        frames.push((11 * MS, tcp4(B, 2, A, 1, TCP_FIN | TCP_ACK, 5, 0)));
        let (_, env) = run(&frames);
        let reasons: std::vec::Vec<Reason> = env.records.iter().map(|r| r.2).collect();
        assert_eq!(reasons, [Reason::Early, Reason::Fin]);
        assert_eq!(env.records[0].1.total_packets(), 8);
        assert_eq!(env.records[1].1.total_packets(), 10);
    }

    #[test]
    fn new_records_mark_each_flows_first_packet() {
        let frames = [
            (MS, udp4(A, 5, B, 53, 20)),
            (2 * MS, udp4(B, 53, A, 5, 20)),
            (3 * MS, tcp4(A, 1, B, 2, TCP_SYN, 1, 0)),
            (4 * MS, tcp4(C, 1, B, 2, TCP_RST, 1, 0)),
        ];
        let (_, env) = run_with(&FlowConfig::DEFAULT, &frames);
        let reasons: std::vec::Vec<(Reason, u64)> = env
            .records
            .iter()
            .map(|r| (r.2, r.1.total_packets()))
            .collect();
        // The UDP answer is a `reply`; a first packet that is also a RST says so (the RST
        // record tells of the new flow too).
        assert_eq!(
            reasons,
            [
                (Reason::New, 1),
                (Reason::Reply, 2),
                (Reason::New, 1),
                (Reason::Rst, 1)
            ]
        );
    }

    #[test]
    fn retransmitted_segment_is_counted() {
        let frames = [
            (MS, tcp4(A, 1, B, 2, TCP_ACK, 1000, 100)),
            (2 * MS, tcp4(A, 1, B, 2, TCP_ACK, 1100, 100)),
            (3 * MS, tcp4(A, 1, B, 2, TCP_ACK, 1000, 100)),
            (4 * MS, tcp4(A, 1, B, 2, TCP_ACK, 1200, 0)),
        ];
        let (t, _) = run(&frames);
        assert_eq!(only_flow(&t).1.retransmits, [1, 0]);
    }

    #[test]
    fn rst_emits_and_a_new_syn_on_a_closed_key_starts_a_new_flow() {
        let frames = [
            (MS, tcp4(A, 1, B, 2, TCP_SYN, 1, 0)),
            (2 * MS, tcp4(B, 2, A, 1, TCP_RST | TCP_ACK, 0, 0)),
            (3 * MS, tcp4(A, 1, B, 2, TCP_SYN, 7, 0)),
        ];
        let (t, env) = run(&frames);
        let reasons: std::vec::Vec<Reason> = env.records.iter().map(|r| r.2).collect();
        assert_eq!(reasons, [Reason::Rst, Reason::Reused]);
        let (_, s) = only_flow(&t);
        assert_eq!(s.packets, [1, 0]);
        assert_eq!(s.first_seen_ns, 3 * MS);
    }

    #[test]
    fn idle_gap_ends_the_flow_and_expire_flushes() {
        let cfg = QUIET;
        let frames = [
            (MS, udp4(A, 5, B, 53, 20)),
            (MS + cfg.idle_timeout_ns + 1, udp4(A, 5, B, 53, 20)),
        ];
        let (mut t, mut env) = run(&frames);
        assert_eq!(env.records.len(), 1);
        assert_eq!(env.records[0].2, Reason::IdleTimeout);
        assert_eq!(
            t.expire(MS + cfg.idle_timeout_ns + 2, &cfg, false, &mut env),
            0
        );
        assert_eq!(t.expire(0, &cfg, true, &mut env), 1);
        assert_eq!(env.records.last().unwrap().2, Reason::Flush);
        assert!(t.is_empty());
    }

    #[test]
    fn active_timeout_re_emits_a_long_flow() {
        let cfg = FlowConfig {
            active_timeout_ns: 10 * MS,
            ..QUIET
        };
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        for i in 0..5u64 {
            let f = udp4(A, 5, B, 53, 20);
            process_packet(&Captured::whole(&f), i * 6 * MS, &cfg, &mut t, &mut env);
        }
        let reasons: std::vec::Vec<Reason> = env.records.iter().map(|r| r.2).collect();
        assert_eq!(reasons, [Reason::ActiveTimeout, Reason::ActiveTimeout]);
    }

    #[test]
    fn icmp_echo_request_and_reply_share_a_flow() {
        let (t, _) = run(&[
            (MS, icmp4(A, B, 8, 77, 1, 56)),
            (2 * MS, icmp4(B, A, 0, 77, 1, 56)),
        ]);
        let (k, s) = only_flow(&t);
        assert_eq!((k.port_lo, k.port_hi, k.proto), (77, 77, 1));
        assert_eq!(s.packets, [1, 1]);
        assert_eq!((s.icmp_type, s.icmp_code), (8, 0));
        assert_eq!(s.bytes, [84, 84]);
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let s6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let d6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let ext = [
            (0u8, vec![1, 4, 0, 0, 0, 0]),
            (60u8, vec![1, 4, 0, 0, 0, 0]),
            (43u8, vec![0, 0, 0, 0, 0, 0]),
        ];
        let f = udp6(s6, 1234, d6, 53, &ext, 10);
        let p = parse(&Captured::whole(&f)).unwrap();
        assert_eq!(p.key.proto, IPPROTO_UDP);
        assert_eq!((p.key.port_lo, p.key.port_hi), (1234, 53));
        assert_eq!(p.l3_len, 40 + 24 + 18);
        assert_eq!(p.payload_len, 10);
        assert_eq!(p.key.family, 6);
    }

    #[test]
    fn ipv6_fragment_header_later_fragment_has_no_ports() {
        let s6 = [0xfd; 16];
        let d6 = [0xfe; 16];
        // Fragment header: next=UDP, reserved, offset 8 (in 8-byte units, so 0x0040), id.
        let mut l3 = ipv6(s6, d6, IPPROTO_UDP, &[], &[0u8; 16]);
        l3[6] = 44;
        let frag = [IPPROTO_UDP, 0, 0x00, 0x40, 0, 0, 0, 1];
        l3.splice(40..40, frag);
        let plen = (l3.len() - 40) as u16;
        l3[4..6].copy_from_slice(&plen.to_be_bytes());
        let f = eth(ETH_P_IPV6, &[], &l3);
        let p = parse(&Captured::whole(&f)).unwrap();
        assert!(p.later_fragment);
        assert_eq!((p.key.port_lo, p.key.port_hi), (0, 0));
    }

    #[test]
    fn vlan_tags_are_skipped_and_the_outer_id_kept() {
        let p = parse(&Captured::whole(&tcp4_vlan(42, A, 1, B, 2, TCP_SYN))).unwrap();
        assert_eq!(p.key.vlan, 42);
        let qinq = eth(
            ETH_P_IPV4,
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 7)],
            &ipv4(A, B, 17, &[], &udp(1, 2, &[0; 4])),
        );
        let p = parse(&Captured::whole(&qinq)).unwrap();
        assert_eq!((p.key.vlan, p.key.proto), (100, 17));
        let three = eth(
            ETH_P_IPV4,
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
            &ipv4(A, B, 17, &[], &udp(1, 2, &[])),
        );
        assert_eq!(parse(&Captured::whole(&three)), Err(Skip::NotIp));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let opts = [1, 1, 1, 0]; // NOP NOP NOP EOL
        let f = eth(ETH_P_IPV4, &[], &ipv4(A, B, 17, &opts, &udp(7, 9, &[0; 3])));
        let p = parse(&Captured::whole(&f)).unwrap();
        assert_eq!(
            (p.key.port_lo, p.key.port_hi, p.l3_len, p.payload_len),
            (7, 9, 35, 3)
        );
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let good = udp4(A, 1, B, 2, 10);
        let whole = |f: &[u8]| parse(&Captured::whole(f));
        // Truncated IPv4 header.
        assert_eq!(whole(&good[..20]), Err(Skip::Malformed));
        // IHL below 5.
        let mut bad = good.clone();
        bad[14] = 0x44;
        assert_eq!(whole(&bad), Err(Skip::Malformed));
        // Total length beyond the frame.
        let mut bad = good.clone();
        bad[16..18].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(whole(&bad), Err(Skip::Malformed));
        // TCP data offset below 5.
        let mut bad = tcp4(A, 1, B, 2, TCP_SYN, 0, 0);
        bad[14 + 20 + 12] = 0x40;
        assert_eq!(whole(&bad), Err(Skip::Malformed));
        // Wrong IP version.
        let mut bad = good.clone();
        bad[14] = 0x65;
        assert_eq!(whole(&bad), Err(Skip::Malformed));
        // Shorter than an Ethernet header.
        assert_eq!(whole(&good[..10]), Err(Skip::Malformed));
        // ARP is not IP.
        assert_eq!(whole(&eth(0x0806, &[], &[0u8; 28])), Err(Skip::NotIp));
    }

    #[test]
    fn snap_cut_capture_counts_the_wire_length() {
        let f = udp4(A, 1, B, 2, 1000);
        let p = parse(&Captured {
            data: &f[..64],
            wire_len: f.len(),
        })
        .unwrap();
        assert_eq!(p.l3_len, 1028);
        assert_eq!(p.payload_len, 1000);
    }

    #[test]
    fn blocklist_drops_source_and_flow_and_respects_expiry() {
        let mut table = MemTable::default();
        let mut env = MemEnv::default();
        let cfg = FlowConfig::DEFAULT;
        env.block(
            BlockKey::source(4, &v4key(A)),
            BlockEntry {
                expires_ns: 100,
                hits: 0,
            },
        );
        let from_a = udp4(A, 1, B, 2, 0);
        let from_b = udp4(B, 2, A, 1, 0);
        assert_eq!(
            process_packet(&Captured::whole(&from_a), 50, &cfg, &mut table, &mut env),
            Verdict::Drop
        );
        assert_eq!(
            process_packet(&Captured::whole(&from_b), 50, &cfg, &mut table, &mut env),
            Verdict::Pass
        );
        assert_eq!(
            process_packet(&Captured::whole(&from_a), 150, &cfg, &mut table, &mut env),
            Verdict::Pass
        );
        let key = parse(&Captured::whole(&from_a)).unwrap().key;
        env.block(
            BlockKey::flow(&key),
            BlockEntry {
                expires_ns: 0,
                hits: 0,
            },
        );
        assert_eq!(
            process_packet(&Captured::whole(&from_b), 200, &cfg, &mut table, &mut env),
            Verdict::Drop
        );
        assert_eq!(env.stats[stat::BLOCKED as usize], 2);
    }
}

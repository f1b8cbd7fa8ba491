//! Per-source and per-service context over sliding windows: what a single flow cannot show.
//! Scans, floods and brute force are many small flows; each flow record is joined with what its
//! initiator (and the service it reached) did in the last `window`.
//!
//! The tracker is fed every flow record in arrival order — live from the ring buffer, offline
//! from a replay or a recording — so both compute the same context. Memory is bounded: at most
//! `max_sources` sources and services are tracked (the least recently seen are forgotten) and
//! each window keeps at most `max_events` flows.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

/// The hasher of every table keyed by what a packet's sender chose (addresses, ports, flow
/// keys): keyed with per-process random state, so that a spoofed flood cannot aim keys at one
/// bucket. aHash, not the standard SipHash: several lookups per record, and SipHash was ~5-10%
/// of the agent's time at saturation in `cargo xtask bench ringbuf` (BENCHMARKS.md).
pub type Keyed = ahash::RandomState;

use detector_common::{
    flow::{FlowKey, FlowState, Reason, FWD, REV},
    packet::{TCP_ACK, TCP_RST, TCP_SYN},
};

/// Context feature names, in vector order.
pub const NAMES: [&str; 8] = [
    "src_flows_in_window",
    "src_distinct_dst_ports",
    "src_distinct_dst_hosts",
    "src_syn_no_reply_ratio",
    "src_failed_conns",
    "svc_flows_in_window",
    "svc_distinct_sources",
    "src_same_svc_flows",
];
/// Number of context features.
pub const COUNT: usize = NAMES.len();

/// Window and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextConfig {
    pub window_ns: u64,
    pub max_sources: usize,
    pub max_events: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            window_ns: 10_000_000_000,
            max_sources: 65_536,
            max_events: 4096,
        }
    }
}

/// One flow as a window sees it.
#[derive(Clone, Copy, Debug)]
struct Event {
    ts: u64,
    /// The flow's digest ([`ContextTracker::observe`]).
    flow: u64,
    /// The other party: destination host in a source window, source host in a service window.
    peer: u64,
    port: u16,
    /// A TCP connection attempt (the initiator sent SYN).
    syn: bool,
    /// The responder answered (for TCP: with an ACK).
    answered: bool,
}

/// A sliding window of flows with incremental distinct counts.
#[derive(Default)]
struct Window {
    events: VecDeque<Event>,
    front_seq: u64,
    /// The flow index and distinct counts, kept once the window has held more than
    /// [`SMALL_WINDOW`] events; until then they are found by scanning `events`.
    maps: Option<Box<Maps>>,
    /// Counts ports and (peer, port) pairs: a source window's features read them, a service
    /// window's do not.
    per_port: bool,
    syn: u32,
    unanswered: u32,
    /// Times of refused connections (the responder's RST) in the window.
    failed: VecDeque<u64>,
}

/// A large window's index and distinct counts, kept as its events come and go.
#[derive(Default)]
struct Maps {
    /// Flow digest → sequence number of its event (position = seq - `front_seq`).
    index: HashMap<u64, u64, BuildHasherDefault<Digest>>,
    peers: HashMap<u64, u32, Keyed>,
    ports: HashMap<u16, u32, Keyed>,
    /// Flows per (peer, port): a source's repeated connections to one service (brute force,
    /// beaconing).
    pairs: HashMap<(u64, u16), u32, Keyed>,
}

/// Events a window holds before it keeps maps ([`Maps`]): most sources open a flow or two per
/// window (a spoofed flood one per source), and scanning a few events costs less than
/// building and emptying four hash maps per source.
const SMALL_WINDOW: usize = 8;

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32, Keyed>, k: &K) {
    if let Some(c) = m.get_mut(k) {
        *c -= 1;
        if *c == 0 {
            m.remove(k);
        }
    }
}

/// Forgotten windows kept for new sources and services, and the most events such a window
/// may have held: a flood of spoofed sources makes a window per packet and forgets it a window
/// later, and reusing them saves their allocations and frees each time. Only small windows
/// are kept, so that the spares hold little memory.
const SPARE_WINDOWS: usize = 4096;
const SPARE_MAX_EVENTS: usize = 16;

impl Maps {
    fn add(&mut self, e: &Event, seq: u64, per_port: bool) {
        self.index.insert(e.flow, seq);
        *self.peers.entry(e.peer).or_default() += 1;
        if per_port {
            *self.ports.entry(e.port).or_default() += 1;
            *self.pairs.entry((e.peer, e.port)).or_default() += 1;
        }
    }

    fn remove(&mut self, e: &Event, per_port: bool) {
        self.index.remove(&e.flow);
        dec(&mut self.peers, &e.peer);
        if per_port {
            dec(&mut self.ports, &e.port);
            dec(&mut self.pairs, &(e.peer, e.port));
        }
    }

    fn clear(&mut self) {
        self.index.clear();
        self.peers.clear();
        self.ports.clear();
        self.pairs.clear();
    }
}

/// Distinct values among a few events.
fn distinct<T: PartialEq>(events: &VecDeque<Event>, f: impl Fn(&Event) -> T) -> usize {
    (0..events.len())
        .filter(|&i| {
            let v = f(&events[i]);
            !events.range(..i).any(|e| f(e) == v)
        })
        .count()
}

impl Window {
    /// An empty window, source (`per_port`) or service.
    #[expect(
        clippy::vec_box,
        reason = "the spares keep the maps' boxes (ContextTracker::spare)"
    )]
    fn take(spare: &mut Vec<Box<Window>>, per_port: bool) -> Box<Window> {
        let mut w = spare.pop().unwrap_or_default();
        w.per_port = per_port;
        w
    }

    /// Empties the window for another source or service, keeping its allocations: the same as
    /// a new window.
    fn reset(&mut self) {
        self.events.clear();
        self.front_seq = 0;
        if let Some(m) = &mut self.maps {
            m.clear();
        }
        self.syn = 0;
        self.unanswered = 0;
        self.failed.clear();
    }

    /// Forgets the flows and refusals older than `horizon` (now − window).
    fn expire(&mut self, horizon: u64) {
        while self.events.front().is_some_and(|e| e.ts < horizon) {
            self.pop_front();
        }
        while self.failed.front().is_some_and(|&t| t < horizon) {
            self.failed.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.events.pop_front() {
            self.front_seq += 1;
            if let Some(m) = &mut self.maps {
                m.remove(&e, self.per_port);
            }
            if e.syn {
                self.syn -= 1;
                if !e.answered {
                    self.unanswered -= 1;
                }
            }
        }
    }

    /// Where the flow's event is in `events`.
    fn position(&self, flow: u64) -> Option<usize> {
        match &self.maps {
            Some(m) => m
                .index
                .get(&flow)
                .map(|&seq| (seq - self.front_seq) as usize),
            None => self.events.iter().position(|e| e.flow == flow),
        }
    }

    /// Distinct peers among the events.
    fn peers(&self) -> usize {
        match &self.maps {
            Some(m) => m.peers.len(),
            None => distinct(&self.events, |e| e.peer),
        }
    }

    /// Distinct ports among the events (source windows).
    fn ports(&self) -> usize {
        match &self.maps {
            Some(m) => m.ports.len(),
            None => distinct(&self.events, |e| e.port),
        }
    }

    /// Events to this (peer, port) (source windows).
    fn pair(&self, peer: u64, port: u16) -> u32 {
        match &self.maps {
            Some(m) => m.pairs.get(&(peer, port)).copied().unwrap_or(0),
            None => self
                .events
                .iter()
                .filter(|e| e.peer == peer && e.port == port)
                .count() as u32,
        }
    }

    /// Records the flow (first time) or its answer (later); returns the flow's event as the
    /// window now holds it, or `None` for a flow that began before the window (`horizon`): a
    /// long-lived connection's later records are not new flows, and inserting their old start
    /// time behind newer events would break the oldest-first order that `expire` relies on.
    fn note(&mut self, e: Event, max_events: usize, horizon: u64) -> Option<Event> {
        if let Some(i) = self.position(e.flow) {
            let old = self.events.get_mut(i)?;
            if e.answered && !old.answered {
                old.answered = true;
                if old.syn {
                    self.unanswered -= 1;
                }
            }
            return Some(*old);
        }
        if e.ts < horizon {
            return None;
        }
        if self.events.len() >= max_events {
            self.pop_front();
        }
        if e.syn {
            self.syn += 1;
            if !e.answered {
                self.unanswered += 1;
            }
        }
        let seq = self.front_seq + self.events.len() as u64;
        self.events.push_back(e);
        match &mut self.maps {
            Some(m) => m.add(&e, seq, self.per_port),
            None if self.events.len() > SMALL_WINDOW => {
                let mut m = Box::<Maps>::default();
                for (i, e) in self.events.iter().enumerate() {
                    m.add(e, self.front_seq + i as u64, self.per_port);
                }
                self.maps = Some(m);
            }
            None => {}
        }
        Some(e)
    }
}

/// The hasher of maps keyed by a flow digest: the digest is already a keyed hash ([`Keyed`]) of
/// the flow key, with this process's random key, so it is used as its own hash. A flood cannot aim
/// its flows at one bucket without knowing the key; and one hash per record, of an 8-byte key,
/// is what makes the windows' index small and quick (BENCHMARKS.md).
#[derive(Default)]
struct Digest(u64);

impl Hasher for Digest {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map key hashed with one `write` of its bytes (a `[u8; N]` or a tuple would make several,
/// and the hasher pays per call).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Bytes<const N: usize>([u8; N]);

impl<const N: usize> std::hash::Hash for Bytes<N> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write(&self.0);
    }
}

/// A service: responder address, port and protocol.
fn service_key(addr: &[u8; 16], port: u16, proto: u8) -> Bytes<19> {
    let mut b = [0u8; 19];
    b[..16].copy_from_slice(addr);
    b[16..18].copy_from_slice(&port.to_ne_bytes());
    b[18] = proto;
    Bytes(b)
}

/// A 64-bit digest of a 16-byte address, for compact distinct counting.
fn addr_id(a: &[u8; 16]) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_le_bytes(hi) ^ u64::from_le_bytes(lo).rotate_left(29))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A source's or service's window, and when it was last seen: beside the window, so that
/// pruning reads it without following the pointer to every window.
struct Tracked {
    last_seen: u64,
    /// A source that opened one flow in the window (each source of a spoofed flood) keeps that
    /// flow's event here, without a window: its context is known without one ([`lone`]).
    lone: Option<Event>,
    /// Boxed: a flood grows and prunes these maps by the thousand, and moving a pointer is
    /// cheaper than moving a window.
    window: Option<Box<Window>>,
}

impl Tracked {
    fn new() -> Self {
        Self {
            last_seen: 0,
            lone: None,
            window: None,
        }
    }

    /// The window, made where there is none: empty, or holding the lone flow's event as if
    /// it had been noted in a window of its own.
    #[expect(
        clippy::vec_box,
        reason = "the spares keep the maps' boxes (ContextTracker::spare)"
    )]
    fn window(
        &mut self,
        spare: &mut Vec<Box<Window>>,
        per_port: bool,
        max_events: usize,
    ) -> &mut Window {
        let lone = self.lone.take();
        self.window.get_or_insert_with(|| {
            let mut w = Window::take(spare, per_port);
            if let Some(e) = lone {
                w.note(e, max_events, 0);
            }
            w
        })
    }
}

/// The source context of a source whose window holds one flow, the record's own, and no
/// refusal: one flow, port and host, none of them another.
fn lone(out: &mut [f32]) {
    out[0] = 1.0;
    out[1] = 1.0;
    out[2] = 1.0;
    out[3] = 0.0;
    out[4] = 0.0;
    out[7] = 0.0;
}

/// Source and service windows for every recent initiator and service.
pub struct ContextTracker {
    cfg: ContextConfig,
    sources: HashMap<Bytes<16>, Tracked, Keyed>,
    services: HashMap<Bytes<19>, Tracked, Keyed>,
    /// Keyed (random per process) hash of flow keys into the windows' flow digests.
    digest: Keyed,
    last_prune: u64,
    /// Forgotten windows, emptied, for the next new source or service ([`SPARE_WINDOWS`]).
    #[expect(
        clippy::vec_box,
        reason = "the boxes move between the maps and the spares without being reallocated"
    )]
    spare: Vec<Box<Window>>,
}

impl Default for ContextTracker {
    fn default() -> Self {
        Self::new(ContextConfig::default())
    }
}

impl ContextTracker {
    pub fn new(cfg: ContextConfig) -> Self {
        Self {
            cfg,
            sources: HashMap::default(),
            services: HashMap::default(),
            digest: Keyed::new(),
            last_prune: 0,
            spare: Vec::new(),
        }
    }

    /// Sources and services tracked now (for metrics and bounds checks).
    pub fn tracked(&self) -> (usize, usize) {
        (self.sources.len(), self.services.len())
    }

    /// Feeds one record and writes its flow's context into `out` ([`COUNT`] values). The
    /// record's last packet is the clock. Returns how many *other* flows the source's and the
    /// service's windows hold: what the context values rest on (0 for a lone flow).
    pub fn observe(
        &mut self,
        key: &FlowKey,
        s: &FlowState,
        reason: Reason,
        out: &mut [f32],
    ) -> u32 {
        let now = s.last_seen_ns;
        let (src, dst, dport) = if s.initiator_is_hi() {
            (key.addr_hi, key.addr_lo, key.port_lo)
        } else {
            (key.addr_lo, key.addr_hi, key.port_hi)
        };
        let window = self.cfg.window_ns;
        let max_events = self.cfg.max_events;
        let is_tcp = key.proto == 6;
        let answered = s.packets[REV] > 0 && (!is_tcp || s.tcp_flags[REV] & TCP_ACK != 0);
        let event = Event {
            ts: s.first_seen_ns,
            flow: self.digest.hash_one(key),
            peer: addr_id(&dst),
            port: dport,
            syn: is_tcp && s.tcp_flags[FWD] & TCP_SYN != 0,
            answered,
        };

        let horizon = now.saturating_sub(window);
        // The kernel emits `rst` once per flow, when the RST first appears.
        let refused = reason == Reason::Rst && is_tcp && s.tcp_flags[REV] & TCP_RST != 0;
        let src_others = self.observe_source(src, event, horizon, now, refused, out);

        let spare = &mut self.spare;
        let t = self
            .services
            .entry(service_key(&dst, dport, key.proto))
            .or_insert_with(Tracked::new);
        t.last_seen = now;
        let svc = t.window(spare, false, max_events);
        svc.expire(horizon);
        let svc_held = svc.note(
            Event {
                peer: addr_id(&src),
                port: 0,
                ..event
            },
            max_events,
            horizon,
        );
        out[5] = svc.events.len() as f32;
        out[6] = svc.peers() as f32;
        let others = (svc.events.len() - svc_held.is_some() as usize + src_others) as u32;
        self.prune(now);
        others
    }

    /// The source's part of [`ContextTracker::observe`]: notes `event` in the source's window
    /// and writes its context; returns how many other flows the window holds.
    fn observe_source(
        &mut self,
        src: [u8; 16],
        event: Event,
        horizon: u64,
        now: u64,
        refused: bool,
        out: &mut [f32],
    ) -> usize {
        use std::collections::hash_map::Entry;
        let max_events = self.cfg.max_events;
        // A flow in the window, without a refusal, is all a new source's window would hold.
        let alone = !refused && event.ts >= horizon;
        let t = match self.sources.entry(Bytes(src)) {
            Entry::Vacant(v) if alone => {
                v.insert(Tracked {
                    last_seen: now,
                    lone: Some(event),
                    window: None,
                });
                lone(out);
                return 0;
            }
            entry => entry.or_insert_with(Tracked::new),
        };
        t.last_seen = now;
        if let Some(e) = &mut t.lone {
            // The same flow again, still in the window: what `Window::note` would do.
            if alone && e.flow == event.flow && e.ts >= horizon {
                e.answered |= event.answered;
                lone(out);
                return 0;
            }
        }
        let w = t.window(&mut self.spare, true, max_events);
        w.expire(horizon);
        let held = w.note(event, max_events, horizon);
        if refused {
            if w.failed.len() >= max_events {
                w.failed.pop_front();
            }
            w.failed.push_back(now);
        }
        // Counts in the window, not per second: every time scale of the context is the
        // window's, one setting (a capture replayed ten times slower with a ten times longer
        // window gives the same values).
        out[0] = w.events.len() as f32;
        out[1] = w.ports() as f32;
        out[2] = w.peers() as f32;
        // Over the source's *other* attempts: at its `new` record every flow is still
        // unanswered, and counting it would make any client's first connection look like a
        // scan's. `note` returned this flow's event as the window holds it.
        let (syn, unanswered) = match held {
            Some(h) if h.syn => (
                w.syn.saturating_sub(1),
                w.unanswered.saturating_sub(!h.answered as u32),
            ),
            _ => (w.syn, w.unanswered),
        };
        out[3] = if syn > 0 {
            unanswered as f32 / syn as f32
        } else {
            0.0
        };
        out[4] = w.failed.len() as f32;
        // The source's other flows to this flow's service.
        let same = w.pair(event.peer, event.port);
        out[7] = same.saturating_sub(held.is_some() as u32) as f32;
        w.events.len() - held.is_some() as usize
    }

    /// Forgets windows idle for longer than the window, at most once per second of record
    /// time; beyond `max_sources`, forgets the least recently seen at once.
    fn prune(&mut self, now: u64) {
        let max = self.cfg.max_sources;
        let over = self.sources.len() > max || self.services.len() > max;
        if !over && now < self.last_prune.saturating_add(1_000_000_000) {
            return;
        }
        self.last_prune = now;
        let horizon = now.saturating_sub(self.cfg.window_ns);
        forget(&mut self.sources, horizon, &mut self.spare);
        forget(&mut self.services, horizon, &mut self.spare);
        if let Some(t) = newest_cut(&self.sources, max) {
            forget(&mut self.sources, t, &mut self.spare);
        }
        if let Some(t) = newest_cut(&self.services, max) {
            forget(&mut self.services, t, &mut self.spare);
        }
    }
}

/// Forgets the windows last seen before `before`, keeping the small ones as spares.
#[expect(
    clippy::vec_box,
    reason = "the spares keep the maps' boxes (ContextTracker::spare)"
)]
fn forget<K>(m: &mut HashMap<K, Tracked, Keyed>, before: u64, spare: &mut Vec<Box<Window>>) {
    for (_, t) in m.extract_if(|_, t| t.last_seen < before) {
        if let Some(mut w) = t.window {
            if spare.len() < SPARE_WINDOWS && w.events.capacity() <= SPARE_MAX_EVENTS {
                w.reset();
                spare.push(w);
            }
        }
    }
}

/// Beyond `max` windows, the time before which windows are forgotten so that only about the
/// most recently seen `max` are kept (ties at the cut are kept).
fn newest_cut<K>(m: &HashMap<K, Tracked, Keyed>, max: usize) -> Option<u64> {
    if m.len() <= max {
        return None;
    }
    // Cut to 3/4 of the bound so that a flood does not pay this on every record.
    let keep = max - max / 4;
    let mut times: Vec<u64> = m.values().map(|t| t.last_seen).collect();
    let cut = times.len() - keep;
    let (_, t, _) = times.select_nth_unstable(cut);
    Some(*t)
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
        packet::Captured,
        testpkt::{tcp4, udp4},
    };

    const SEC: u64 = 1_000_000_000;

    /// Runs frames through the shared flow logic and the tracker; returns the context of
    /// every record.
    fn contexts(frames: &[(u64, Vec<u8>)], cfg: ContextConfig) -> Vec<(Reason, [f32; COUNT])> {
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let mut ctx = ContextTracker::new(cfg);
        let mut out = Vec::new();
        for (ts, f) in frames {
            process_packet(
                &Captured::whole(f),
                *ts,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
            for (k, s, r) in env.records.drain(..) {
                let mut v = [0f32; COUNT];
                ctx.observe(&k, &s, r, &mut v);
                out.push((r, v));
            }
        }
        out
    }

    #[test]
    fn a_port_scan_shows_many_ports_refused_and_unanswered() {
        let atk = [10, 0, 0, 66];
        let victim = [10, 0, 0, 1];
        let mut frames = Vec::new();
        for p in 0..100u16 {
            let t = SEC + p as u64 * 1_000_000;
            frames.push((t, tcp4(atk, 40000, victim, 1000 + p, TCP_SYN, 1, 0)));
            if p % 2 == 0 {
                // Closed port: the victim refuses.
                frames.push((
                    t + 1000,
                    tcp4(victim, 1000 + p, atk, 40000, TCP_RST | TCP_ACK, 0, 0),
                ));
            }
        }
        let c = contexts(&frames, ContextConfig::default());
        let last = c.last().unwrap().1;
        assert_eq!(last[1], 100.0, "distinct destination ports");
        assert_eq!(last[2], 1.0, "one destination host");
        assert_eq!(last[4], 50.0, "refused connections");
        // A RST|ACK answers (it carries an ACK); the odd ports never got a reply. The last
        // record (odd port 99) is itself an unanswered attempt and does not count: 49 of the
        // other 99.
        assert!(
            (last[3] - 49.0 / 99.0).abs() < 1e-6,
            "half never answered: {}",
            last[3]
        );
        assert!(
            (last[0] - 100.0).abs() < 1e-3,
            "100 flows in a 10 s window: {}",
            last[0]
        );
    }

    #[test]
    fn a_first_connection_is_not_an_unanswered_one() {
        let c = contexts(
            &[(
                SEC,
                tcp4([10, 0, 0, 9], 40000, [10, 0, 0, 1], 80, TCP_SYN, 1, 0),
            )],
            ContextConfig::default(),
        );
        assert_eq!(c[0].0, Reason::New);
        assert_eq!(c[0].1[3], 0.0);
    }

    #[test]
    fn a_spoofed_flood_shows_on_the_service() {
        let victim = [10, 0, 0, 1];
        let frames: Vec<(u64, Vec<u8>)> = (0..500u32)
            .map(|i| {
                let src = [172, 16, (i >> 8) as u8, i as u8];
                (
                    SEC + i as u64 * 100_000,
                    tcp4(src, 1234, victim, 80, TCP_SYN, i, 0),
                )
            })
            .collect();
        let c = contexts(&frames, ContextConfig::default());
        let last = c.last().unwrap().1;
        assert_eq!(last[6], 500.0, "distinct sources to the service");
        assert_eq!(last[1], 1.0, "each source alone looks harmless");
    }

    #[test]
    fn the_window_slides_and_memory_stays_bounded() {
        let cfg = ContextConfig {
            window_ns: 2 * SEC,
            max_sources: 100,
            max_events: 16,
        };
        let dst = [10, 0, 0, 1];
        let mut frames = Vec::new();
        for i in 0..2000u32 {
            let src = [192, 168, (i >> 8) as u8, i as u8];
            frames.push((i as u64 * 1_000_000, udp4(src, 5000, dst, 53, 10)));
        }
        // One source sends 40 flows: its window holds at most 16.
        for p in 0..40u16 {
            frames.push((
                3 * SEC + p as u64,
                udp4([10, 9, 9, 9], 6000 + p, dst, 53, 10),
            ));
        }
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let mut ctx = ContextTracker::new(cfg);
        let mut v = [0f32; COUNT];
        for (ts, f) in &frames {
            process_packet(
                &Captured::whole(f),
                *ts,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
            for (k, s, r) in env.records.drain(..) {
                ctx.observe(&k, &s, r, &mut v);
                let (src, svc) = ctx.tracked();
                assert!(
                    src <= 100 && svc <= 100,
                    "{src} sources, {svc} services tracked"
                );
            }
        }
        assert_eq!(v[0], 16.0, "16 events in a 2 s window");
        // Later, the old sources have left the window.
        let late = udp4([10, 1, 1, 1], 7000, dst, 53, 10);
        process_packet(
            &Captured::whole(&late),
            60 * SEC,
            &FlowConfig::DEFAULT,
            &mut t,
            &mut env,
        );
        for (k, s, r) in env.records.drain(..) {
            ctx.observe(&k, &s, r, &mut v);
        }
        assert_eq!(ctx.tracked(), (1, 1));
        assert_eq!(v[6], 1.0);
    }

    #[test]
    fn observe_counts_the_other_flows_of_source_and_service() {
        let (a, b, v) = ([10, 0, 0, 7], [10, 0, 0, 8], [10, 0, 0, 1]);
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let mut ctx = ContextTracker::default();
        let mut others = Vec::new();
        // a's first flow is alone; a's second has a's first (source and service); b's first
        // flow to the same service has a's two.
        for (i, (src, sport)) in [(a, 40000), (a, 40001), (b, 40000)].into_iter().enumerate() {
            let f = tcp4(src, sport, v, 53, TCP_SYN, 1, 0);
            process_packet(
                &Captured::whole(&f),
                SEC + i as u64,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
            for (k, s, r) in env.records.drain(..) {
                others.push(ctx.observe(&k, &s, r, &mut [0f32; COUNT]));
            }
        }
        assert_eq!(others, [0, 2, 2]);
    }

    #[test]
    fn a_long_lived_flows_later_record_is_not_a_new_flow() {
        let (a, v) = ([10, 0, 0, 7], [10, 0, 0, 1]);
        let mut t = MemTable::default();
        let mut env = MemEnv::default();
        let mut ctx = ContextTracker::default();
        let mut first = |ts: u64, sport: u16, env: &mut MemEnv| {
            let f = tcp4(a, sport, v, 22, TCP_SYN, 1, 0);
            process_packet(&Captured::whole(&f), ts, &FlowConfig::DEFAULT, &mut t, env);
            env.records.drain(..).next().expect("a new flow's record")
        };
        let mut out = [0f32; COUNT];
        // A connection opened at 1 s, a second one at 30 s (the first has left the window).
        let (k_old, mut s_old, r) = first(SEC, 40000, &mut env);
        ctx.observe(&k_old, &s_old, r, &mut out);
        let (k, s, r) = first(30 * SEC, 40001, &mut env);
        ctx.observe(&k, &s, r, &mut out);
        assert_eq!(out[0], 1.0, "one flow in the 10 s window");
        // The first connection reports again at 31 s: it began before the window, so the
        // window does not take it back in.
        s_old.last_seen_ns = 31 * SEC;
        ctx.observe(&k_old, &s_old, Reason::ActiveTimeout, &mut out);
        assert_eq!(out[0], 1.0, "source window");
        assert_eq!(out[5], 1.0, "service window");
        let (k, s, r) = first(32 * SEC, 40002, &mut env);
        ctx.observe(&k, &s, r, &mut out);
        assert_eq!(out[0], 2.0, "two flows in the window");
    }

    #[test]
    fn repeated_connections_to_one_service_are_counted_per_source() {
        // Ten logins a second apart from one source to port 21, then one to port 22: the
        // tenth counts nine before it; the other service none.
        let atk = [10, 0, 0, 66];
        let victim = [10, 0, 0, 1];
        let mut frames = Vec::new();
        for i in 0..10u16 {
            frames.push((
                SEC * (1 + i as u64),
                tcp4(atk, 40000 + i, victim, 21, TCP_SYN, 1, 0),
            ));
        }
        frames.push((SEC * 12, tcp4(atk, 41000, victim, 22, TCP_SYN, 1, 0)));
        let ctx = contexts(&frames, ContextConfig::default());
        let same = NAMES
            .iter()
            .position(|n| *n == "src_same_svc_flows")
            .unwrap();
        assert_eq!(ctx[9].1[same], 9.0);
        assert_eq!(ctx[10].1[same], 0.0);
        assert_eq!(
            ctx[10].1[0], 10.0,
            "the flows of 2..=10 s and 12 s in the 10 s window"
        );
    }
}

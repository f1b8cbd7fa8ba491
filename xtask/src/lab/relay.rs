//! The link between a client or attacker host and its bridge port, emulated in user space: this
//! kernel has no netem qdisc, so a relay thread per host reads every frame from one side with an
//! AF_PACKET socket and writes it to the other after the session's delay and jitter, dropping
//! it with the session's loss probability and letting some frames overtake the queue
//! (reordering), in both directions. Rate caps are TBF qdiscs on the relay's interfaces (see
//! `link.rs`), so they act after the delay.
//!
//! The relay namespace has no addresses and no routes; a relay copies frames only between the two
//! interfaces of its own host, so the lab stays sealed.

use std::{
    collections::VecDeque,
    ffi::CString,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{inputs::Rng, topology::Netns};

// linux/if_packet.h and asm-generic/socket.h; not every libc release exports them for gnu.
const PACKET_OUTGOING: u8 = 4;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;
/// Socket buffers: a burst (a flood, a window of jumbo frames) waits here rather than being
/// dropped before the relay reads it.
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// A lane holds at most this many frames or bytes (200 ms of a fast stream); more is tail-dropped,
/// as a router's full buffer would.
const LANE_MAX_FRAMES: usize = 50_000;
const LANE_MAX_BYTES: usize = 64 << 20;
/// Frames read from one socket per wake-up, so the other direction and due frames are not starved.
const READ_BATCH: usize = 128;
/// Nice value of the relay threads.
const RELAY_NICE: libc::c_int = -10;
/// Longest sleep while idle: how fast a relay notices a stop request.
const IDLE_WAIT_NS: u64 = 10_000_000;

/// What a relay does to the frames of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Impairment {
    /// Every frame waits at least this long (ns).
    pub delay_ns: u64,
    /// Plus a uniform extra wait in 0..jitter (ns); frames still leave in order (a link queue),
    /// except reordered ones.
    pub jitter_ns: u64,
    /// Probability that a frame is dropped.
    pub loss: f64,
    /// Probability that a frame skips the queue and leaves at once, overtaking those waiting
    /// (netem's `reorder`).
    pub reorder: f64,
}

/// Both directions of one host's link, and the seed of the relay's random draws.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkParams {
    /// Host to bridge.
    pub up: Impairment,
    /// Bridge to host.
    pub down: Impairment,
    pub seed: u64,
}

/// Frame counts of one direction. A frame is either lost, dropped on overflow or sent; `sent`
/// frames may still fail at the qdisc (`qdisc_drops`, a full TBF) or be too big for the
/// interface (`too_big`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LaneCounts {
    pub frames: u64,
    pub bytes: u64,
    pub lost: u64,
    pub overflow: u64,
    pub reordered: u64,
    pub sent: u64,
    pub qdisc_drops: u64,
    pub too_big: u64,
    pub send_errors: u64,
}

impl LaneCounts {
    /// The counts between two snapshots.
    pub fn since(&self, before: &LaneCounts) -> LaneCounts {
        LaneCounts {
            frames: self.frames - before.frames,
            bytes: self.bytes - before.bytes,
            lost: self.lost - before.lost,
            overflow: self.overflow - before.overflow,
            reordered: self.reordered - before.reordered,
            sent: self.sent - before.sent,
            qdisc_drops: self.qdisc_drops - before.qdisc_drops,
            too_big: self.too_big - before.too_big,
            send_errors: self.send_errors - before.send_errors,
        }
    }
}

/// Counts of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RelayCounts {
    pub up: LaneCounts,
    pub down: LaneCounts,
}

impl RelayCounts {
    /// The counts between two snapshots.
    pub fn since(&self, before: &RelayCounts) -> RelayCounts {
        RelayCounts {
            up: self.up.since(&before.up),
            down: self.down.since(&before.down),
        }
    }
}

/// One direction's queue and the decisions on each frame: the relay's logic, apart from the
/// sockets, so that tests can drive it with their own clock.
pub struct Lane {
    queue: VecDeque<(u64, Vec<u8>)>,
    queued_bytes: usize,
    /// Release time of the last queued frame: no frame leaves before it (FIFO).
    last_release: u64,
    pub counts: LaneCounts,
}

/// What happens to an offered frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Now,
    /// It waits in the queue.
    Queued,
    /// Lost or dropped on overflow.
    Dropped,
}

impl Default for Lane {
    fn default() -> Self {
        Self::new()
    }
}

impl Lane {
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            queued_bytes: 0,
            last_release: 0,
            counts: LaneCounts::default(),
        }
    }

    /// Decides the fate of a frame that arrived at `now` (ns). On `Queued` the lane keeps a copy.
    pub fn offer(&mut self, frame: &[u8], now: u64, imp: &Impairment, rng: &mut Rng) -> Verdict {
        self.counts.frames += 1;
        self.counts.bytes += frame.len() as u64;
        if imp.loss > 0.0 && rng.unit() < imp.loss {
            self.counts.lost += 1;
            return Verdict::Dropped;
        }
        if imp.reorder > 0.0 && rng.unit() < imp.reorder {
            if !self.queue.is_empty() {
                self.counts.reordered += 1;
            }
            return Verdict::Now;
        }
        let jitter = if imp.jitter_ns > 0 {
            rng.below(imp.jitter_ns)
        } else {
            0
        };
        let release = (now + imp.delay_ns + jitter).max(self.last_release);
        if release <= now && self.queue.is_empty() {
            return Verdict::Now;
        }
        if self.queue.len() >= LANE_MAX_FRAMES || self.queued_bytes + frame.len() > LANE_MAX_BYTES {
            self.counts.overflow += 1;
            return Verdict::Dropped;
        }
        self.last_release = release;
        self.queued_bytes += frame.len();
        self.queue.push_back((release, frame.to_vec()));
        Verdict::Queued
    }

    /// The next queued frame whose time has come.
    pub fn pop_due(&mut self, now: u64) -> Option<Vec<u8>> {
        if self.queue.front()?.0 > now {
            return None;
        }
        let (_, f) = self.queue.pop_front()?;
        self.queued_bytes -= f.len();
        Some(f)
    }

    /// When the next queued frame is due.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.front().map(|(t, _)| *t)
    }
}

/// What the orchestrator and one relay thread share.
struct Shared {
    stop: AtomicBool,
    params: Mutex<LinkParams>,
    /// Bumped on every change of `params`, so the thread reloads them without locking per frame.
    generation: AtomicU64,
    counts: Mutex<RelayCounts>,
}

/// One host's relay thread.
struct RelayLink {
    host: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The relays of every relayed host, running until dropped.
#[derive(Default)]
pub struct Relays {
    links: Vec<RelayLink>,
}

impl Relays {
    /// Starts a relay for `host` between the interfaces `host_side` and `bridge_side` of the
    /// relay namespace, passing every frame unchanged until `set` says otherwise.
    pub fn add(
        &mut self,
        ns: &Netns,
        host: &str,
        host_side: &str,
        bridge_side: &str,
    ) -> anyhow::Result<()> {
        let handle = fs::File::open(ns.path())
            .with_context(|| format!("cannot open {}", ns.path().display()))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            params: Mutex::new(LinkParams::default()),
            generation: AtomicU64::new(0),
            counts: Mutex::new(RelayCounts::default()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let (hs, bs) = (host_side.to_string(), bridge_side.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("relay-{host}"))
            .spawn(move || {
                let opened = enter(&handle).and_then(|()| Ok((open(&hs)?, open(&bs)?)));
                match opened {
                    Ok((h, b)) => {
                        let _ = tx.send(Ok(()));
                        run(&sh, &h, &b);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                    }
                }
            })?;
        let link = RelayLink {
            host: host.to_string(),
            shared,
            thread: Some(thread),
        };
        match rx.recv() {
            Ok(Ok(())) => {
                self.links.push(link);
                Ok(())
            }
            Ok(Err(e)) => bail!("relay for {host}: {e}"),
            Err(_) => bail!("relay thread for {host} died"),
        }
    }

    fn link(&self, host: &str) -> anyhow::Result<&RelayLink> {
        self.links
            .iter()
            .find(|l| l.host == host)
            .with_context(|| format!("no relay for host `{host}`"))
    }

    /// Changes what the relay of `host` does from now on (frames already queued keep their time).
    pub fn set(&self, host: &str, params: LinkParams) -> anyhow::Result<()> {
        let l = self.link(host)?;
        *l.shared.params.lock().unwrap_or_else(|e| e.into_inner()) = params;
        l.shared.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The relay's counts since it started.
    pub fn counts(&self, host: &str) -> anyhow::Result<RelayCounts> {
        let l = self.link(host)?;
        Ok(*l.shared.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for l in &self.links {
            l.shared.stop.store(true, Ordering::SeqCst);
        }
        for l in &mut self.links {
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn last_os_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// Moves the calling thread into the relay namespace.
fn enter(ns: &fs::File) -> anyhow::Result<()> {
    // SAFETY: setns on this thread only, with a valid namespace fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(last_os_error("setns into the relay namespace"));
    }
    // Wake-ups as asked: the default 50 µs slack would be as long as the smallest delay drawn.
    // SAFETY: prctl with integer arguments, on this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    // A relay is the lab's wire: on a busy machine (two cores, a bulk transfer elsewhere) it
    // must not wait its turn behind the tools, or its frames leave late and in bursts. A higher
    // weight, not a real-time class, so that a flood through it cannot starve the agent.
    // SAFETY: gettid has no arguments; setpriority on this thread's id only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, RELAY_NICE);
    }
    Ok(())
}

fn setsockopt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: a valid fd and a pointer to an int of the given size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// A non-blocking AF_PACKET socket that receives every frame arriving on `ifname` (not those
/// sent from it) and sends frames out of it.
fn open(ifname: &str) -> anyhow::Result<OwnedFd> {
    let name = CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(last_os_error(&format!("no interface {ifname}")));
    }
    // Protocol 0 until bound: a socket created for ETH_P_ALL would see every interface's frames
    // until bind narrows it to one.
    // SAFETY: plain socket call.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(last_os_error("AF_PACKET socket"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if !setsockopt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1) {
        return Err(last_os_error("PACKET_IGNORE_OUTGOING"));
    }
    for opt in [SO_RCVBUFFORCE, SO_SNDBUFFORCE] {
        if !setsockopt(&fd, libc::SOL_SOCKET, opt, SOCKET_BUFFER) {
            return Err(last_os_error("socket buffer size"));
        }
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: a valid fd and address of the stated size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_os_error(&format!("bind to {ifname}")));
    }
    Ok(fd)
}

/// CLOCK_MONOTONIC in ns.
fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sends one frame; a full qdisc or socket buffer drops it (counted), as a full link would.
fn send(fd: &OwnedFd, frame: &[u8], c: &mut LaneCounts) {
    // SAFETY: a valid fd and buffer.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        c.sent += 1;
        return;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOBUFS) | Some(libc::EAGAIN) => c.qdisc_drops += 1,
        Some(libc::EMSGSIZE) => c.too_big += 1,
        _ => c.send_errors += 1,
    }
}

/// Reads up to READ_BATCH frames from `from` into `lane`, sending at once those that need no
/// wait.
fn read_into(
    from: &OwnedFd,
    to: &OwnedFd,
    lane: &mut Lane,
    imp: &Impairment,
    rng: &mut Rng,
    buf: &mut [u8],
) {
    for _ in 0..READ_BATCH {
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid buffer and address pointers with their sizes.
        let n = unsafe {
            libc::recvfrom(
                from.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n <= 0 {
            return;
        }
        if addr.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        let frame = &buf[..n as usize];
        if lane.offer(frame, now_ns(), imp, rng) == Verdict::Now {
            send(to, frame, &mut lane.counts);
        }
    }
}

/// The relay loop of one host: `h` faces the host, `b` the bridge.
fn run(shared: &Shared, h: &OwnedFd, b: &OwnedFd) {
    let mut up = Lane::new();
    let mut down = Lane::new();
    let mut generation = u64::MAX;
    let mut params = LinkParams::default();
    let mut rng = Rng::new(0);
    // Jumbo frames (9000 MTU) and more.
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::Relaxed) {
        let g = shared.generation.load(Ordering::SeqCst);
        if g != generation {
            generation = g;
            params = *shared.params.lock().unwrap_or_else(|e| e.into_inner());
            rng = Rng::new(params.seed);
        }
        let now = now_ns();
        while let Some(f) = up.pop_due(now) {
            send(b, &f, &mut up.counts);
        }
        while let Some(f) = down.pop_due(now) {
            send(h, &f, &mut down.counts);
        }
        let wake = [up.next_due(), down.next_due()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX);
        let wait = wake.saturating_sub(now_ns()).min(IDLE_WAIT_NS);
        let mut fds = [
            libc::pollfd {
                fd: h.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: (wait / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: two valid pollfds, a valid timeout, no signal mask change.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            read_into(h, b, &mut up, &params.up, &mut rng, &mut buf);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            read_into(b, h, &mut down, &params.down, &mut rng, &mut buf);
        }
        if let Ok(mut c) = shared.counts.try_lock() {
            *c = RelayCounts {
                up: up.counts,
                down: down.counts,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn imp(delay_ms: u64, jitter_ms: u64, loss: f64, reorder: f64) -> Impairment {
        Impairment {
            delay_ns: delay_ms * MS,
            jitter_ns: jitter_ms * MS,
            loss,
            reorder,
        }
    }

    /// Offers `n` frames 100 µs apart and drains the lane; returns (sequence, delay) of what
    /// left, in leaving order.
    fn drive(n: u32, imp: &Impairment, seed: u64) -> (Vec<(u32, u64)>, LaneCounts) {
        drive_every(n, 100_000, imp, seed)
    }

    /// The same with frames `gap` ns apart (delays measured to the 100 µs tick).
    fn drive_every(n: u32, gap: u64, imp: &Impairment, seed: u64) -> (Vec<(u32, u64)>, LaneCounts) {
        let mut lane = Lane::new();
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        let mut sent_at = Vec::new();
        let mut now = 1_000 * MS;
        for i in 0..n {
            let frame = i.to_be_bytes();
            sent_at.push(now);
            if lane.offer(&frame, now, imp, &mut rng) == Verdict::Now {
                out.push((i, 0));
            }
            for _ in 0..gap / 100_000 {
                now += 100_000;
                while let Some(f) = lane.pop_due(now) {
                    let seq = u32::from_be_bytes(f[..4].try_into().unwrap());
                    out.push((seq, now - sent_at[seq as usize]));
                }
            }
        }
        while let Some(t) = lane.next_due() {
            now = now.max(t);
            while let Some(f) = lane.pop_due(now) {
                let seq = u32::from_be_bytes(f[..4].try_into().unwrap());
                out.push((seq, now - sent_at[seq as usize]));
            }
        }
        (out, lane.counts)
    }

    #[test]
    fn delay_and_jitter_stay_within_bounds_and_keep_order() {
        // Dense (100 µs apart) and sparse (10 ms apart, more than the jitter) frames.
        for (gap, mean_range) in [(100_000, 22.0..24.2), (10 * MS, 21.8..22.2)] {
            let (out, counts) = drive_every(5_000, gap, &imp(20, 4, 0.0, 0.0), 1);
            assert_eq!(out.len(), 5_000);
            assert_eq!(counts.lost + counts.overflow, 0);
            // Leaving no earlier than delay, no later than delay + jitter plus one 100 µs tick.
            for &(seq, d) in &out {
                assert!((20 * MS..=24 * MS + 100_000).contains(&d), "{seq}: {d}");
            }
            assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "order kept");
            // Sparse frames spread evenly over the jitter; dense ones queue behind the
            // slowest before them (one link queue), so their delays lean to the top.
            let mean = out.iter().map(|x| x.1).sum::<u64>() as f64 / out.len() as f64 / MS as f64;
            assert!(
                mean_range.contains(&mean),
                "gap {gap}: mean delay {mean} ms"
            );
        }
    }

    #[test]
    fn loss_rate_matches_the_probability() {
        for (p, seed) in [(0.03, 2), (0.2, 3)] {
            let n = 100_000;
            let (out, counts) = drive(n, &imp(1, 0, p, 0.0), seed);
            let measured = counts.lost as f64 / n as f64;
            // Four standard deviations of a binomial count.
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (measured - p).abs() < 4.0 * sd,
                "p {p}: measured {measured}"
            );
            assert_eq!(out.len() as u64 + counts.lost, n as u64);
        }
        let (_, none) = drive(10_000, &imp(1, 0, 0.0, 0.0), 4);
        assert_eq!(none.lost, 0);
    }

    #[test]
    fn reordered_frames_overtake_the_queue() {
        let (out, counts) = drive(10_000, &imp(5, 0, 0.0, 0.02), 5);
        assert_eq!(out.len(), 10_000);
        let overtaking = out.windows(2).filter(|w| w[0].0 > w[1].0).count();
        assert!(counts.reordered > 100, "{counts:?}");
        assert!(overtaking > 100, "{overtaking}");
        // Without reordering nothing overtakes.
        let (out, counts) = drive(10_000, &imp(5, 3, 0.0, 0.0), 6);
        assert_eq!(counts.reordered, 0);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn no_delay_passes_frames_at_once_and_a_full_lane_drops() {
        let (out, _) = drive(100, &Impairment::default(), 7);
        assert!(out.iter().all(|&(_, d)| d == 0));
        let mut lane = Lane::new();
        let mut rng = Rng::new(8);
        let long = imp(1000, 0, 0.0, 0.0);
        for _ in 0..LANE_MAX_FRAMES {
            assert_eq!(lane.offer(&[0; 60], 0, &long, &mut rng), Verdict::Queued);
        }
        assert_eq!(lane.offer(&[0; 60], 0, &long, &mut rng), Verdict::Dropped);
        assert_eq!(lane.counts.overflow, 1);
    }

    #[test]
    fn counts_subtract() {
        let a = RelayCounts {
            up: LaneCounts {
                frames: 10,
                sent: 9,
                lost: 1,
                ..Default::default()
            },
            down: LaneCounts::default(),
        };
        let mut b = a;
        b.up.frames = 15;
        b.up.sent = 13;
        b.up.lost = 2;
        let d = b.since(&a);
        assert_eq!((d.up.frames, d.up.sent, d.up.lost), (5, 4, 1));
    }
}

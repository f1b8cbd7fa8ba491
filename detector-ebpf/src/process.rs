//! Process events from tracepoints: exec, exit, connect/accept (with their result) and TCP
//! state changes, plus the socket-owner map that lets the agent attribute flows to processes.
//!
//! Tracepoint field offsets below are those of the kernel's `format` files; the agent checks
//! them against `/sys/kernel/tracing/events/*/format` before attaching and skips (and reports)
//! any tracepoint whose layout differs.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::warn;
use detector_common::{
    flow::stat,
    proc::{kind, ProcEvent, SockKey, SockOwner},
};

use crate::stats::count;

/// Process events for the agent.
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// TCP socket endpoints → the process that opened them (connect, listen, accepted).
#[map]
static SOCKETS: LruHashMap<SockKey, SockOwner> = LruHashMap::with_max_entries(16384, 0);
/// Socket (kernel address) → the process that called connect() or listen() on it. The
/// 4-tuple is not known yet at SYN_SENT (the source port is picked after the state change).
#[map]
static SK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(16384, 0);
/// pid → parent pid, learned from fork events.
#[map]
static PARENTS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);
/// Thread id → user sockaddr pointer of a connect/accept in progress. LRU: an entry is removed
/// at the syscall's exit, and one whose exit never came (a thread killed mid-syscall, an exit
/// tracepoint not attached) would otherwise stay for good; the oldest makes room.
#[map]
static PENDING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EAGAIN: i64 = 11;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;

/// Reserves an event, fills the fields every event has, lets `fill` add the rest, submits.
#[inline(always)]
fn send(kind: u8, fill: impl FnOnce(&mut ProcEvent)) {
    let Some(mut entry) = PROC_EVENTS.reserve::<ProcEvent>(0) else {
        count(stat::PROC_RINGBUF_FULL);
        return;
    };
    // SAFETY: the reserved slot is ProcEvent-sized and writable; it is fully initialised
    // (ZERO) before a reference to it is made.
    let ev = unsafe {
        let p = entry.as_mut_ptr();
        p.write(ProcEvent::ZERO);
        &mut *p
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or_default();
    ev.kind = kind;
    fill(ev);
    entry.submit(0);
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    // parent_pid at 12, child_pid at 20.
    if let (Ok(parent), Ok(child)) = unsafe { (ctx.read_at::<i32>(12), ctx.read_at::<i32>(20)) } {
        let _ = PARENTS.insert(&(child as u32), &(parent as u32), 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // __data_loc filename at 8 (offset in the low 16 bits), pid at 12.
    let loc = unsafe { ctx.read_at::<u32>(8) }.unwrap_or(0);
    send(kind::EXEC, |ev| {
        ev.ppid = unsafe { PARENTS.get(&ev.pid) }.copied().unwrap_or(0);
        if loc != 0 {
            let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.path) };
        }
    });
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // group_dead at 32: only the last thread's exit ends the process.
    if unsafe { ctx.read_at::<u8>(32) }.unwrap_or(0) == 0 {
        return 0;
    }
    send(kind::EXIT, |ev| {
        ev.ppid = unsafe { PARENTS.get(&ev.pid) }.copied().unwrap_or(0);
        let _ = PARENTS.remove(&ev.pid);
    });
    0
}

/// Remembers the sockaddr pointer of a connect/accept for the matching exit.
#[inline(always)]
fn remember(ctx: &TracePointContext) -> u32 {
    // uservaddr / upeer_sockaddr at 24.
    if let Ok(addr) = unsafe { ctx.read_at::<u64>(24) } {
        let tid = bpf_get_current_pid_tgid() as u32;
        if PENDING.insert(&tid, &addr, 0).is_err() {
            // The kernel could not make room (memory pressure): this call's event is lost.
            // Rare enough to log (through aya-log, to the agent's log).
            warn!(
                ctx,
                "connect/accept tracking: an event of tid {} is lost", tid
            );
        }
    }
    0
}

/// Emits a connect/accept event with the syscall result and the peer from the saved sockaddr.
#[inline(always)]
fn finish(ctx: &TracePointContext, kind: u8) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(addr) = (unsafe { PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(&tid);
    // ret at 16.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0);
    let mut sa = [0u8; 28];
    let have_addr =
        addr != 0 && unsafe { bpf_probe_read_user_buf(addr as *const u8, &mut sa) }.is_ok();
    let family = u16::from_ne_bytes([sa[0], sa[1]]);
    if kind == kind::CONNECT && !(have_addr && (family == AF_INET || family == AF_INET6)) {
        // connect() on unix and netlink sockets is not network activity.
        return 0;
    }
    if kind == kind::ACCEPT && ret == -EAGAIN {
        // Non-blocking servers poll accept(); an empty queue is not an event.
        return 0;
    }
    send(kind, |ev| {
        ev.result = ret as i32;
        ev.protocol = IPPROTO_TCP as u8;
        if have_addr && family == AF_INET {
            ev.family = 4;
            ev.peer_port = u16::from_be_bytes([sa[2], sa[3]]);
            ev.peer_addr[..4].copy_from_slice(&sa[4..8]);
        } else if have_addr && family == AF_INET6 {
            ev.family = 6;
            ev.peer_port = u16::from_be_bytes([sa[2], sa[3]]);
            ev.peer_addr.copy_from_slice(&sa[8..24]);
        }
    });
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    remember(&ctx)
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::CONNECT)
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    remember(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::ACCEPT)
}

/// Owner of a socket: the exact 4-tuple, else the listener on the local address, else the
/// listener on the wildcard address.
#[inline(always)]
fn owner(key: &SockKey) -> Option<SockOwner> {
    if let Some(o) = unsafe { SOCKETS.get(key) } {
        return Some(*o);
    }
    let mut l = listener(key);
    if let Some(o) = unsafe { SOCKETS.get(&l) } {
        return Some(*o);
    }
    l.local_addr = [0; 16];
    unsafe { SOCKETS.get(&l) }.copied()
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // skaddr 8, oldstate 16, newstate 20, sport 24, dport 26, family 28, protocol 30,
    // saddr 32, daddr 36, saddr_v6 40, daddr_v6 56.
    let read = || -> Result<(u64, i32, i32, SockKey), i32> {
        let sk: u64 = unsafe { ctx.read_at(8)? };
        let old: i32 = unsafe { ctx.read_at(16)? };
        let new: i32 = unsafe { ctx.read_at(20)? };
        let protocol: u16 = unsafe { ctx.read_at(30)? };
        let family: u16 = unsafe { ctx.read_at(28)? };
        let mut key = SockKey {
            local_port: unsafe { ctx.read_at(24)? },
            remote_port: unsafe { ctx.read_at(26)? },
            protocol: protocol as u8,
            ..SockKey::default()
        };
        if family == AF_INET {
            key.family = 4;
            let s: [u8; 4] = unsafe { ctx.read_at(32)? };
            let d: [u8; 4] = unsafe { ctx.read_at(36)? };
            key.local_addr[..4].copy_from_slice(&s);
            key.remote_addr[..4].copy_from_slice(&d);
        } else {
            key.family = 6;
            key.local_addr = unsafe { ctx.read_at(40)? };
            key.remote_addr = unsafe { ctx.read_at(56)? };
        }
        Ok((sk, old, new, key))
    };
    let Ok((sk, old, new, key)) = read() else {
        return 0;
    };
    if key.protocol as u16 != IPPROTO_TCP {
        return 0;
    }
    // SYN_SENT (connect) and LISTEN (listen) run in the owning process's context.
    if new == TCP_SYN_SENT || new == TCP_LISTEN {
        let o = SockOwner {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            uid: bpf_get_current_uid_gid() as u32,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        let _ = SK_OWNERS.insert(&sk, &o, 0);
        if new == TCP_LISTEN {
            let _ = SOCKETS.insert(&listener(&key), &o, 0);
        }
    }
    if new != TCP_ESTABLISHED && new != TCP_CLOSE && new != TCP_LISTEN {
        return 0;
    }
    // Later transitions often run in softirq, where the current task is unrelated: the owner
    // comes from the socket (client side) or from the listener (accepted side).
    let owner = match unsafe { SK_OWNERS.get(&sk) } {
        Some(o) => Some(*o),
        None => owner(&key),
    };
    if new == TCP_ESTABLISHED {
        if let Some(o) = &owner {
            // Kept after the close, so that the flow's last records can still be attributed;
            // the LRU bounds the map and a new connection on the same tuple overwrites it.
            let _ = SOCKETS.insert(&key, o, 0);
        }
    }
    send(kind::TCP_STATE, |ev| {
        ev.result = new;
        ev.old_state = old;
        ev.family = key.family;
        ev.protocol = key.protocol;
        ev.local_addr = key.local_addr;
        ev.local_port = key.local_port;
        ev.peer_addr = key.remote_addr;
        ev.peer_port = key.remote_port;
        ev.tid = 0;
        match &owner {
            Some(o) => {
                ev.pid = o.pid;
                ev.uid = o.uid;
                ev.comm = o.comm;
            }
            None => {
                ev.pid = 0;
                ev.uid = 0;
                ev.comm = [0; 16];
            }
        }
    });
    if new == TCP_CLOSE {
        let _ = SK_OWNERS.remove(&sk);
        if old == TCP_LISTEN {
            let _ = SOCKETS.remove(&listener(&key));
        }
    }
    0
}

/// The SOCKETS key of the listening socket on `key`'s local address and port.
#[inline(always)]
fn listener(key: &SockKey) -> SockKey {
    let mut l = *key;
    l.remote_addr = [0; 16];
    l.remote_port = 0;
    l
}

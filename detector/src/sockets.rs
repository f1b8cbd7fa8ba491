//! Seeds the kernel's socket-owner map with the TCP sockets that existed before the agent
//! started (the tracepoints only see sockets change state after they are attached), from
//! /proc/net/tcp{,6} and /proc/<pid>/fd, as `ss -p` does.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    net::IpAddr,
};

use aya::maps::{HashMap, MapData};
use detector_common::{
    flow::FlowKey,
    proc::{SockKey, SockOwner, COMM_LEN},
};

use crate::{
    iface,
    record::{addr, cstr, ProcessRef},
};

/// A socket line of /proc/net/tcp{,6}: its key (listeners have a zero remote side), uid, inode.
#[derive(Debug, PartialEq, Eq)]
pub struct ProcSocket {
    pub key: SockKey,
    pub uid: u32,
    pub inode: u64,
}

/// Parses "0100007F:1F90" (IPv4) or the 32-hex-digit IPv6 form into a 16-byte address + port.
fn parse_endpoint(s: &str, family: u8) -> Option<([u8; 16], u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let mut addr = [0u8; 16];
    let words = if family == 4 { 1 } else { 4 };
    if a.len() != words * 8 {
        return None;
    }
    // Each 32-bit word is printed in host (little-endian) order.
    for w in 0..words {
        let v = u32::from_str_radix(&a[w * 8..w * 8 + 8], 16).ok()?;
        addr[w * 4..w * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    Some((addr, port))
}

/// Parses /proc/net/tcp or tcp6 text, keeping LISTEN and ESTABLISHED sockets.
pub fn parse_proc_net_tcp(text: &str, family: u8) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let state = u8::from_str_radix(f[3], 16).ok()?;
            let (local_addr, local_port) = parse_endpoint(f[1], family)?;
            let (mut remote_addr, mut remote_port) = parse_endpoint(f[2], family)?;
            match state {
                0x01 => {}
                0x0A => {
                    remote_addr = [0; 16];
                    remote_port = 0;
                }
                _ => return None,
            }
            Some(ProcSocket {
                key: SockKey {
                    local_addr,
                    remote_addr,
                    local_port,
                    remote_port,
                    family,
                    protocol: 6,
                    _pad: [0; 2],
                },
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// Socket inode → (pid, comm) for every process we can see.
fn inode_owners() -> StdHashMap<u64, (u32, [u8; COMM_LEN])> {
    let mut out = StdHashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let mut comm = [0u8; COMM_LEN];
        if let Ok(c) = fs::read_to_string(p.path().join("comm")) {
            let c = c.trim_end().as_bytes();
            let n = c.len().min(COMM_LEN - 1);
            comm[..n].copy_from_slice(&c[..n]);
        }
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse().ok())
                {
                    out.entry(inode).or_insert((pid, comm));
                }
            }
        }
    }
    out
}

/// Inserts the owners of existing TCP sockets into SOCKETS; returns how many were added.
pub fn seed(sockets: &mut HashMap<MapData, SockKey, SockOwner>) -> usize {
    let owners = inode_owners();
    let mut n = 0;
    for (path, family) in [("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)] {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        for s in parse_proc_net_tcp(&text, family) {
            if let Some(&(pid, comm)) = owners.get(&s.inode) {
                let owner = SockOwner {
                    pid,
                    uid: s.uid,
                    comm,
                };
                // BPF_NOEXIST: what the tracepoints recorded meanwhile is fresher.
                if sockets.insert(s.key, owner, 1).is_ok() {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Finds the process that owns a flow's local end, through the kernel's SOCKETS map.
pub struct Attribution {
    sockets: Option<HashMap<MapData, SockKey, SockOwner>>,
    local: HashSet<IpAddr>,
}

impl Attribution {
    /// Attribution through `sockets` (None: never attributes), for this namespace's addresses.
    pub fn new(sockets: Option<HashMap<MapData, SockKey, SockOwner>>) -> Self {
        Self {
            sockets,
            local: iface::local_addresses(),
        }
    }

    /// Refreshes the set of local addresses (they change as interfaces come and go).
    pub fn refresh(&mut self) {
        self.local = iface::local_addresses();
    }

    /// The owner of the flow's local TCP socket, if the map knows it.
    pub fn lookup(&self, key: &FlowKey) -> Option<ProcessRef> {
        let sockets = self.sockets.as_ref()?;
        if key.proto != 6 {
            return None;
        }
        let ends = [
            (&key.addr_lo, key.port_lo, &key.addr_hi, key.port_hi),
            (&key.addr_hi, key.port_hi, &key.addr_lo, key.port_lo),
        ];
        for (local, lport, remote, rport) in ends {
            if !self.local.contains(&addr(key.family, local)) {
                continue;
            }
            let exact = SockKey {
                local_addr: *local,
                remote_addr: *remote,
                local_port: lport,
                remote_port: rport,
                family: key.family,
                protocol: key.proto,
                _pad: [0; 2],
            };
            let listener = SockKey {
                remote_addr: [0; 16],
                remote_port: 0,
                ..exact
            };
            let any = SockKey {
                local_addr: [0; 16],
                ..listener
            };
            for k in [exact, listener, any] {
                if let Ok(o) = sockets.get(&k, 0) {
                    return Some(ProcessRef {
                        pid: o.pid,
                        uid: o.uid,
                        comm: cstr(&o.comm),
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_and_established_ipv4() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0200090A:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0200090A:1388 0100090A:8F38 01 00000000:00000000 00:00000000 00000000  1000        0 12346 1 0000000000000000 20 4 30 10 -1\n\
   2: 0200090A:1389 0100090A:8F39 06 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1\n";
        let v = parse_proc_net_tcp(text, 4);
        assert_eq!(v.len(), 2, "TIME_WAIT is skipped");
        assert_eq!(&v[0].key.local_addr[..4], &[10, 9, 0, 2]);
        assert_eq!(v[0].key.local_port, 5000);
        assert_eq!(v[0].key.remote_port, 0);
        assert_eq!(v[0].inode, 12345);
        assert_eq!(&v[1].key.remote_addr[..4], &[10, 9, 0, 1]);
        assert_eq!(v[1].key.remote_port, 0x8F38);
        assert_eq!(v[1].uid, 1000);
    }

    #[test]
    fn parses_ipv6_words_in_host_order() {
        // ::1 as /proc prints it on little-endian hosts.
        let (a, p) = parse_endpoint("00000000000000000000000001000000:0016", 6).unwrap();
        assert_eq!(p, 22);
        let mut want = [0u8; 16];
        want[15] = 1;
        assert_eq!(a, want);
        assert!(parse_endpoint("0100007F", 4).is_none());
        assert!(parse_endpoint("zz00007F:0016", 4).is_none());
    }
}

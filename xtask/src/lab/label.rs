//! Labels from addresses and time windows: which session (scenario, family, variant, label) a
//! flow or process record belongs to, and the role of the host it came from.
//!
//! A flow seen on the victim has the victim at one end; the other end's address names a lab
//! host, and that host's session running at the flow's first packet is the flow's session (each
//! host runs one session at a time, see `scenario::plan`). A flow from an address of no lab host
//! belongs to the spoofing session running then, if any. Process records belong to a session
//! when their process descends from the session's tool, or by their peer address like flows.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// How far outside a session's window a flow may start and still belong to it: covers the
/// agent's boot-to-Unix clock conversion and process start-up. Sessions of one host are
/// separated by `sessions::GAP`, which is larger.
pub const SLACK_NS: u64 = 400_000_000;

/// One session as the labeller needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionWindow {
    pub id: String,
    pub scenario: String,
    pub family: String,
    pub variant: String,
    /// "attack" or "benign".
    pub label: String,
    /// Host that ran the tool.
    pub host: String,
    /// Host whose addresses identify the session's flows.
    pub queue: String,
    /// More hosts whose flows with the victim are this session's (the later `peers` of a
    /// scenario that reaches several hosts in a row); none run a session of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub spoofed_sources: bool,
    /// Pid of the tool (the root of its process tree).
    pub pid: u32,
}

/// A lab host as the labeller needs it.
#[derive(Clone, Debug)]
pub struct HostAddrs {
    pub name: String,
    /// "victim", "benign-client", "attacker" or "server".
    pub role: String,
    pub addrs: Vec<IpAddr>,
}

/// The `"lab"` object added to each record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabLabel {
    pub session: Option<String>,
    pub scenario: Option<String>,
    pub family: Option<String>,
    pub variant: Option<String>,
    /// "attack", "benign", or "unattributed" (no session: neighbour discovery, multicast, a
    /// service's own housekeeping).
    pub label: String,
    /// Role of the host the record comes from: for flows the initiator's host ("victim" for
    /// flows the victim starts, "attacker" for spoofed sources), for processes the host they
    /// run on; "unknown" when no lab host has the address.
    pub role: String,
    /// That host's name, when known.
    pub host: Option<String>,
    /// The initiator's address is spoofed (no lab host has it).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub spoofed: bool,
}

impl LabLabel {
    fn unattributed(role: &str, host: Option<&str>) -> Self {
        Self {
            session: None,
            scenario: None,
            family: None,
            variant: None,
            label: "unattributed".into(),
            role: role.into(),
            host: host.map(str::to_string),
            spoofed: false,
        }
    }

    fn of(s: &SessionWindow, role: &str, host: Option<&str>, spoofed: bool) -> Self {
        Self {
            session: Some(s.id.clone()),
            scenario: Some(s.scenario.clone()),
            family: Some(s.family.clone()),
            variant: Some(s.variant.clone()),
            label: s.label.clone(),
            role: role.into(),
            host: host.map(str::to_string),
            spoofed,
        }
    }
}

/// Address of a flow or process record that cannot have come from a lab host's tool on its own:
/// multicast, unspecified, loopback.
fn is_infrastructure(a: &IpAddr) -> bool {
    a.is_multicast() || a.is_unspecified() || a.is_loopback() || {
        matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
    }
}

/// ICMPv6 neighbour discovery and multicast listener messages: the kernel's, not a tool's.
fn is_nd(proto: u8, icmp_type: u8) -> bool {
    proto == 58 && ((130..=137).contains(&icmp_type) || icmp_type == 143)
}

/// Attributes records to sessions.
pub struct Labeller {
    hosts: Vec<HostAddrs>,
    by_addr: HashMap<IpAddr, usize>,
    victim: usize,
    /// Sessions per queue host, by start time.
    by_queue: HashMap<String, Vec<SessionWindow>>,
    spoofing: Vec<SessionWindow>,
    sessions: Vec<SessionWindow>,
}

impl Labeller {
    /// `hosts` must contain the victim (role "victim").
    pub fn new(hosts: Vec<HostAddrs>, sessions: &[SessionWindow]) -> anyhow::Result<Self> {
        let victim = hosts
            .iter()
            .position(|h| h.role == "victim")
            .ok_or_else(|| anyhow::anyhow!("no victim among the lab hosts"))?;
        let mut by_addr = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            for a in &h.addrs {
                by_addr.insert(*a, i);
            }
        }
        let mut by_queue: HashMap<String, Vec<SessionWindow>> = HashMap::new();
        for s in sessions {
            for h in std::iter::once(&s.queue).chain(&s.also) {
                by_queue.entry(h.clone()).or_default().push(s.clone());
            }
        }
        for v in by_queue.values_mut() {
            v.sort_by_key(|s| s.start_ns);
        }
        let mut spoofing: Vec<SessionWindow> = sessions
            .iter()
            .filter(|s| s.spoofed_sources)
            .cloned()
            .collect();
        spoofing.sort_by_key(|s| s.start_ns);
        Ok(Self {
            hosts,
            by_addr,
            victim,
            by_queue,
            spoofing,
            sessions: sessions.to_vec(),
        })
    }

    fn host_of(&self, a: &IpAddr) -> Option<&HostAddrs> {
        self.by_addr.get(a).map(|&i| &self.hosts[i])
    }

    fn is_victim(&self, a: &IpAddr) -> bool {
        self.by_addr.get(a) == Some(&self.victim)
    }

    /// The limited broadcast or the lab subnet's (/24, the victim's) broadcast address.
    fn is_broadcast(&self, a: &IpAddr) -> bool {
        let IpAddr::V4(a) = a else { return false };
        a.is_broadcast()
            || self.hosts[self.victim].addrs.iter().any(|v| {
                matches!(v, IpAddr::V4(v) if v.octets()[..3] == a.octets()[..3] && a.octets()[3] == 255)
            })
    }

    /// The session of `list` whose window, widened by [`SLACK_NS`], holds `t`; the nearest one
    /// when windows overlap.
    fn window(list: &[SessionWindow], t: u64) -> Option<&SessionWindow> {
        list.iter()
            .filter(|s| {
                t.saturating_add(SLACK_NS) >= s.start_ns && t <= s.end_ns.saturating_add(SLACK_NS)
            })
            .min_by_key(|s| {
                if t < s.start_ns {
                    s.start_ns - t
                } else {
                    t.saturating_sub(s.end_ns)
                }
            })
    }

    /// The label of a flow: initiator `src`, responder `dst`, first packet at `t` (Unix ns).
    pub fn flow(&self, src: IpAddr, dst: IpAddr, proto: u8, icmp_type: u8, t: u64) -> LabLabel {
        let src_host = self.host_of(&src);
        let (role, host) = match src_host {
            Some(h) => (h.role.as_str(), Some(h.name.as_str())),
            None => ("unknown", None),
        };
        // Only flows with the victim at one end come from sessions, and broadcasts a lab host's
        // tool sends (a sweep of the subnet reaches its broadcast address, which every host
        // receives); the bridge also floods other hosts' multicast to the victim.
        let other = if self.is_victim(&src) {
            dst
        } else if self.is_victim(&dst) || (src_host.is_some() && self.is_broadcast(&dst)) {
            src
        } else {
            return LabLabel::unattributed(role, host);
        };
        // The victim's own multicast (MLD, ND) and neighbour discovery are the kernel's. A
        // multicast *source* is different: only a spoofing tool sends from one.
        if is_nd(proto, icmp_type)
            || (other == dst && (is_infrastructure(&dst) || self.is_broadcast(&dst)))
        {
            return LabLabel::unattributed(role, host);
        }
        if let Some(h) = self.host_of(&other) {
            return match self.by_queue.get(&h.name).and_then(|l| Self::window(l, t)) {
                Some(s) => LabLabel::of(s, role, host, false),
                None => LabLabel::unattributed(role, host),
            };
        }
        // No lab host has this address: a spoofed source, if a spoofing session ran then.
        match Self::window(&self.spoofing, t) {
            Some(s) if !self.is_victim(&src) => LabLabel::of(s, "attacker", None, true),
            Some(s) => LabLabel::of(s, role, host, true),
            None => LabLabel::unattributed(role, host),
        }
    }

    /// Labels process records. Each record is (ts_ns, pid, ppid, local address, peer address);
    /// returns one label per record, None for records that have nothing to do with the lab
    /// (the host's other processes: tracepoints see the whole machine).
    ///
    /// `services` are (host, pid) of the lab's services, whose descendants carry that host's
    /// role. Records are processed in time order so that a child joins its parent's tree.
    pub fn processes(
        &self,
        records: &[ProcRecord],
        services: &[(String, u32)],
    ) -> Vec<Option<LabLabel>> {
        // pid → (host, session index or None for services)
        let mut owner: HashMap<u32, (String, Option<usize>)> = HashMap::new();
        for (i, s) in self.sessions.iter().enumerate() {
            owner.insert(s.pid, (s.host.clone(), Some(i)));
        }
        for (h, pid) in services {
            owner.insert(*pid, (h.clone(), None));
        }
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by_key(|&i| records[i].ts_ns);
        let mut out = vec![None; records.len()];
        for i in order {
            let r = &records[i];
            if !owner.contains_key(&r.pid) && r.pid != 0 {
                if let Some(parent) = owner.get(&r.ppid).cloned() {
                    owner.insert(r.pid, parent);
                }
            }
            let known = owner.get(&r.pid).cloned();
            let by_addr = r.peer.map(|peer| match r.local {
                // The owning process is at `local`: label it like a flow it would start.
                Some(local) => self.flow(local, peer, 6, 0, r.ts_ns),
                // connect/accept carry only the peer: the session of the lab host there.
                None => self.by_peer(peer, r.ts_ns),
            });
            out[i] = match (known, by_addr) {
                (Some((host, Some(si))), _) => {
                    let s = &self.sessions[si];
                    let role = self.role_of(&host);
                    Some(LabLabel::of(s, role, Some(&host), false))
                }
                (Some((host, None)), Some(l)) if l.session.is_some() => Some(LabLabel {
                    role: self.role_of(&host).into(),
                    host: Some(host),
                    ..l
                }),
                (Some((host, None)), _) => Some(LabLabel::unattributed(
                    self.role_of(&host),
                    Some(host.as_str()),
                )),
                (None, Some(l)) if l.session.is_some() || l.host.is_some() => Some(l),
                _ => None,
            };
        }
        // A pid reused by an unrelated process after a lab process exited would inherit its
        // label; pids cycle through 4 million, so within one lab run that does not happen.
        out
    }

    /// The label of a process talking to `peer` at `t`, its own address unknown.
    fn by_peer(&self, peer: IpAddr, t: u64) -> LabLabel {
        let session = self
            .host_of(&peer)
            .filter(|h| h.role != "victim")
            .and_then(|h| self.by_queue.get(&h.name))
            .and_then(|l| Self::window(l, t));
        match session {
            Some(s) => LabLabel::of(s, "unknown", None, false),
            None => LabLabel::unattributed("unknown", None),
        }
    }

    fn role_of(&self, host: &str) -> &str {
        self.hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| h.role.as_str())
            .unwrap_or("unknown")
    }
}

/// The fields of a process record the labeller reads.
#[derive(Clone, Debug, Default)]
pub struct ProcRecord {
    pub ts_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub local: Option<IpAddr>,
    pub peer: Option<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<HostAddrs> {
        let h = |name: &str, role: &str, a: &str| HostAddrs {
            name: name.into(),
            role: role.into(),
            addrs: vec![a.parse().unwrap()],
        };
        vec![
            h("victim", "victim", "10.77.0.2"),
            h("client1", "benign-client", "10.77.0.11"),
            h("attacker1", "attacker", "10.77.0.21"),
            h("attacker2", "attacker", "10.77.0.22"),
            h("server1", "server", "10.77.0.3"),
            h("server2", "server", "10.77.0.4"),
        ]
    }

    fn session(
        id: &str,
        label: &str,
        host: &str,
        queue: &str,
        start: u64,
        end: u64,
    ) -> SessionWindow {
        SessionWindow {
            id: id.into(),
            scenario: id.split('/').next().unwrap().into(),
            family: if label == "benign" { "benign" } else { "scan" }.into(),
            variant: format!("v-{id}"),
            label: label.into(),
            host: host.into(),
            queue: queue.into(),
            start_ns: start,
            end_ns: end,
            spoofed_sources: false,
            pid: 0,
            also: Vec::new(),
        }
    }

    const S: u64 = 1_000_000_000;

    fn labeller() -> Labeller {
        let mut flood = session(
            "flood/1",
            "attack",
            "attacker1",
            "attacker1",
            30 * S,
            40 * S,
        );
        flood.spoofed_sources = true;
        flood.pid = 500;
        let mut scan = session("scan/1", "attack", "attacker1", "attacker1", 10 * S, 20 * S);
        scan.pid = 400;
        let web = session("web/1", "benign", "client1", "client1", 10 * S, 50 * S);
        let beacon = session("beacon/1", "attack", "victim", "attacker2", 10 * S, 20 * S);
        let mut lateral = session("lateral/1", "attack", "victim", "server1", 30 * S, 40 * S);
        lateral.also = vec!["server2".into()];
        Labeller::new(hosts(), &[scan, flood, web, beacon, lateral]).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn flows_go_to_the_session_of_their_host_and_time() {
        let l = labeller();
        let f = l.flow(ip("10.77.0.21"), ip("10.77.0.2"), 6, 0, 15 * S);
        assert_eq!(f.session.as_deref(), Some("scan/1"));
        assert_eq!((f.label.as_str(), f.role.as_str()), ("attack", "attacker"));
        // The victim's ICMP error back to the scanner: same session, initiated by the victim.
        let f = l.flow(ip("10.77.0.2"), ip("10.77.0.21"), 1, 3, 19 * S);
        assert_eq!(f.session.as_deref(), Some("scan/1"));
        assert_eq!(f.role, "victim");
        // Just after the window (within the slack) still counts; well after does not.
        let f = l.flow(
            ip("10.77.0.21"),
            ip("10.77.0.2"),
            6,
            0,
            20 * S + SLACK_NS / 2,
        );
        assert_eq!(f.session.as_deref(), Some("scan/1"));
        let f = l.flow(ip("10.77.0.21"), ip("10.77.0.2"), 6, 0, 25 * S);
        assert_eq!(f.label, "unattributed");
        let f = l.flow(ip("10.77.0.11"), ip("10.77.0.2"), 17, 0, 25 * S);
        assert_eq!(
            (f.session.as_deref(), f.label.as_str(), f.role.as_str()),
            (Some("web/1"), "benign", "benign-client")
        );
    }

    #[test]
    fn victim_run_sessions_are_found_through_their_peer() {
        let l = labeller();
        let f = l.flow(ip("10.77.0.2"), ip("10.77.0.22"), 6, 0, 12 * S);
        assert_eq!(f.session.as_deref(), Some("beacon/1"));
        assert_eq!(f.role, "victim");
    }

    #[test]
    fn a_session_with_several_peers_owns_the_flows_with_each() {
        let l = labeller();
        for (peer, t) in [("10.77.0.3", 31), ("10.77.0.4", 35)] {
            let f = l.flow(ip("10.77.0.2"), ip(peer), 6, 0, t * S);
            assert_eq!(f.session.as_deref(), Some("lateral/1"), "{peer}");
            assert_eq!(f.role, "victim");
        }
        // A server answering outside the session's window is no one's.
        let f = l.flow(ip("10.77.0.4"), ip("10.77.0.2"), 6, 0, 45 * S);
        assert_eq!(
            (f.label.as_str(), f.role.as_str()),
            ("unattributed", "server")
        );
    }

    #[test]
    fn spoofed_sources_go_to_the_spoofing_session() {
        let l = labeller();
        let f = l.flow(ip("203.0.113.9"), ip("10.77.0.2"), 6, 0, 35 * S);
        assert_eq!(f.session.as_deref(), Some("flood/1"));
        assert!(f.spoofed);
        assert_eq!(f.role, "attacker");
        let f = l.flow(ip("239.1.2.3"), ip("10.77.0.2"), 6, 0, 35 * S);
        assert_eq!(
            f.session.as_deref(),
            Some("flood/1"),
            "a random source may be multicast"
        );
        let f = l.flow(ip("203.0.113.9"), ip("10.77.0.2"), 6, 0, 5 * S);
        assert_eq!(f.label, "unattributed");
    }

    #[test]
    fn infrastructure_is_unattributed() {
        let l = labeller();
        let f = l.flow(ip("10.77.0.2"), ip("ff02::16"), 58, 143, 15 * S);
        assert_eq!(f.label, "unattributed");
        let f = l.flow(ip("10.77.0.21"), ip("10.77.0.2"), 58, 135, 15 * S);
        assert_eq!(f.label, "unattributed");
        // Not to or from the victim (flooded multicast between other hosts).
        let f = l.flow(ip("10.77.0.11"), ip("10.77.0.21"), 6, 0, 15 * S);
        assert_eq!(f.label, "unattributed");
        // The victim's own broadcast is the kernel's too, even while a spoofing session runs.
        let f = l.flow(ip("10.77.0.2"), ip("10.77.0.255"), 17, 0, 35 * S);
        assert_eq!(f.label, "unattributed");
    }

    #[test]
    fn a_tool_broadcast_belongs_to_its_session() {
        let l = labeller();
        // A sweep of 10.77.0.0/24 probes its broadcast address, which reaches every host.
        for dst in ["10.77.0.255", "255.255.255.255"] {
            let f = l.flow(ip("10.77.0.21"), ip(dst), 6, 0, 15 * S);
            assert_eq!(f.session.as_deref(), Some("scan/1"), "{dst}");
            assert_eq!(f.role, "attacker");
        }
        // Another subnet's broadcast is not the lab's.
        let f = l.flow(ip("10.77.0.21"), ip("10.78.0.255"), 6, 0, 15 * S);
        assert_eq!(f.label, "unattributed");
    }

    #[test]
    fn processes_follow_the_tool_tree_and_drop_foreign_records() {
        let l = labeller();
        let recs = vec![
            ProcRecord {
                ts_ns: 11 * S,
                pid: 401,
                ppid: 400,
                ..Default::default()
            },
            ProcRecord {
                ts_ns: 12 * S,
                pid: 402,
                ppid: 401,
                ..Default::default()
            },
            ProcRecord {
                ts_ns: 12 * S,
                pid: 9999,
                ppid: 1,
                ..Default::default()
            },
            // A service (pid 300 on the victim) accepting the scanner.
            ProcRecord {
                ts_ns: 13 * S,
                pid: 300,
                ppid: 1,
                local: Some(ip("10.77.0.2")),
                peer: Some(ip("10.77.0.21")),
            },
            // Its accept event: only the peer is known.
            ProcRecord {
                ts_ns: 14 * S,
                pid: 300,
                ppid: 1,
                local: None,
                peer: Some(ip("10.77.0.11")),
            },
            ProcRecord {
                ts_ns: 45 * S,
                pid: 300,
                ppid: 1,
                ..Default::default()
            },
        ];
        let out = l.processes(&recs, &[("victim".into(), 300)]);
        assert_eq!(out[0].as_ref().unwrap().session.as_deref(), Some("scan/1"));
        assert_eq!(out[1].as_ref().unwrap().session.as_deref(), Some("scan/1"));
        assert_eq!(out[1].as_ref().unwrap().role, "attacker");
        assert!(out[2].is_none(), "not a lab process");
        let svc = out[3].as_ref().unwrap();
        assert_eq!(
            (svc.session.as_deref(), svc.role.as_str()),
            (Some("scan/1"), "victim")
        );
        let accept = out[4].as_ref().unwrap();
        assert_eq!(
            (accept.session.as_deref(), accept.role.as_str()),
            (Some("web/1"), "victim")
        );
        assert_eq!(out[5].as_ref().unwrap().label, "unattributed");
    }
}

//! The lab's network: one network namespace per host, joined to a bridge that lives in a namespace
//! of its own. The victim's veth is a bridge port; every other host's veth ends in the relay
//! namespace, whose relay (`relay.rs`) passes its frames, delayed, lost or reordered as the
//! session's link conditions say, to a second veth pair whose other end is the host's bridge port.
//! Nothing touches the root namespace: both ends of every veth are created directly inside lab
//! namespaces, no namespace has a default route, there is no NAT, the bridge and relay namespaces
//! have no addresses, so replies to spoofed or random addresses die inside the lab.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{
    link::{self, Conditions, PATH_MTU},
    relay::Relays,
};

/// Every lab namespace is named `dlab<pid>-<host>`; `--clean` removes leftovers by this prefix.
pub const PREFIX: &str = "dlab";
/// Interface of each host inside its namespace (the agent attaches to the victim's).
pub const HOST_IF: &str = "eth0";
/// The bridge inside the bridge namespace.
pub const BRIDGE: &str = "br0";
/// Outside addresses the sealing check tries to reach (documentation ranges, RFC 5737/3849).
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// What a host is in the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Victim,
    BenignClient,
    Attacker,
    /// Another host of the victim's network (a file server): the target of the victim's own
    /// sessions (lateral movement, backups, metrics). It runs no tools of its own.
    Server,
}

impl Role {
    /// The name used in labels and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Victim => "victim",
            Role::BenignClient => "benign-client",
            Role::Attacker => "attacker",
            Role::Server => "server",
        }
    }
}

/// A host of the fixed lab topology.
#[derive(Debug)]
pub struct HostSpec {
    pub name: &'static str,
    pub role: Role,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

const fn host(name: &'static str, role: Role, last: u8) -> HostSpec {
    HostSpec {
        name,
        role,
        v4: Ipv4Addr::new(10, 77, 0, last),
        // fd77::<last> written in decimal digits, so 10.77.0.21 is fd77::21.
        v6: Ipv6Addr::new(
            0xfd77,
            0,
            0,
            0,
            0,
            0,
            0,
            ((last / 10) as u16) << 4 | (last % 10) as u16,
        ),
    }
}

/// The hosts, victim first. Addresses are private (10.77.0.0/24, fd77::/64).
pub const HOSTS: &[HostSpec] = &[
    host("victim", Role::Victim, 2),
    host("server1", Role::Server, 3),
    host("server2", Role::Server, 4),
    host("server3", Role::Server, 5),
    host("client1", Role::BenignClient, 11),
    host("client2", Role::BenignClient, 12),
    host("client3", Role::BenignClient, 13),
    host("client4", Role::BenignClient, 14),
    host("attacker1", Role::Attacker, 21),
    host("attacker2", Role::Attacker, 22),
    host("attacker3", Role::Attacker, 23),
];

/// The host spec of that name.
pub fn host_spec(name: &str) -> Option<&'static HostSpec> {
    HOSTS.iter().find(|h| h.name == name)
}

/// The victim's spec.
pub fn victim_spec() -> &'static HostSpec {
    &HOSTS[0]
}

/// Runs a command and returns its stdout; the error has the command line and its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with arguments.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    output(Command::new("ip").args(args))
}

/// A network namespace, deleted (with every process still inside it) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace with loopback up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace handle, for nsenter and setns.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// A command that runs `program` inside this namespace. nsenter (not `ip netns exec`): it
    /// does not remount /sys, so tracefs stays visible to the agent, and it execs in place, so
    /// the child's pid is the program's.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a program inside the namespace and returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        output(self.cmd(program).args(args))
    }

    /// Runs `f` on a thread that entered this namespace (its sockets are the namespace's).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::os::fd::AsRawFd;
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns on this thread only; the fd is valid.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Sets sysctls inside the namespace (net.* keys are per namespace).
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["-q", "-w"];
        args.extend_from_slice(settings);
        self.run("sysctl", &args).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_namespace_processes(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills every process whose network namespace is `name` (all of them were started by the lab:
/// nothing else enters its namespaces). A namespace with processes inside outlives `ip netns
/// del`, so this comes first.
fn kill_namespace_processes(name: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 1 && p != me)
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A host's namespace and addresses.
pub struct LabHost {
    pub spec: &'static HostSpec,
    pub ns: Netns,
    /// The interface's fe80:: address (neighbour discovery uses it).
    pub link_local: Option<Ipv6Addr>,
}

impl LabHost {
    /// Every address this host sends from.
    pub fn addrs(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.spec.v4), IpAddr::V6(self.spec.v6)];
        v.extend(self.link_local.map(IpAddr::V6));
        v
    }
}

/// The whole lab network. Dropping it kills everything inside and deletes the namespaces.
pub struct Topology {
    /// `dlab<pid>`: the prefix of this lab's namespace names.
    pub id: String,
    // Fields drop in declaration order: the relay threads stop first, then the hosts go, then
    // the namespaces in between.
    /// One relay per host other than the victim.
    pub relays: Relays,
    pub hosts: Vec<LabHost>,
    /// The relays' namespace: for each relayed host `h-<host>` (the host's veth peer) and
    /// `b-<host>` (the peer of its bridge port); no addresses, IPv6 off.
    pub relay: Netns,
    pub bridge: Netns,
    /// The conditions last set on each relayed host.
    links: std::sync::Mutex<std::collections::BTreeMap<String, Conditions>>,
}

impl Topology {
    /// Builds the namespaces, the bridge and the veth pairs. On error, what was built so far is
    /// torn down by the guards' Drop.
    pub fn build(id: &str) -> anyhow::Result<Self> {
        let bridge = Netns::create(&format!("{id}-br"))?;
        // The bridge namespace has no addresses at all, and no IPv6 to send ND/MLD from.
        bridge.sysctl(&[
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        ip(&[
            "-n",
            &bridge.name,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &bridge.name, "link", "set", BRIDGE, "up"])?;
        let relay = Netns::create(&format!("{id}-relay"))?;
        relay.sysctl(&[
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.ip_forward=0",
        ])?;
        let mut relays = Relays::default();
        let mut hosts: Vec<LabHost> = Vec::new();
        for spec in HOSTS {
            let ns = Netns::create(&format!("{id}-{}", spec.name))?;
            // Quiet IPv6: no DAD delay, no router solicitations, no autoconfiguration.
            ns.sysctl(&[
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.default.dad_transmits=0",
                "net.ipv6.conf.default.router_solicitations=0",
                "net.ipv6.conf.default.accept_ra=0",
                "net.ipv6.conf.all.forwarding=0",
                "net.ipv4.ip_forward=0",
            ])?;
            if spec.role == Role::Victim {
                // Spoofed SYNs reach TCP (strict reverse-path filtering would drop them, there
                // being no route back), and every closed UDP port answers at once, so a UDP
                // scan takes seconds rather than minutes of rate-limited ICMP.
                ns.sysctl(&[
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.icmp_ratelimit=0",
                    "net.ipv6.icmp.ratelimit=0",
                ])?;
            }
            let port = format!("p-{}", spec.name);
            let relayed = spec.role != Role::Victim;
            let (to_host, to_bridge) = link::topology_relay_ifs(spec.name);
            // The victim's veth is its bridge port's peer; another host's veth ends in the relay
            // namespace, and a second pair joins the relay to the bridge port.
            let (host_peer, host_peer_ns) = if relayed {
                (to_host.as_str(), &relay)
            } else {
                (port.as_str(), &bridge)
            };
            veth(HOST_IF, &ns, host_peer, host_peer_ns)?;
            let mut ends = vec![(&ns, HOST_IF), (&bridge, port.as_str())];
            if relayed {
                veth(&to_bridge, &relay, &port, &bridge)?;
                ends.extend([(&relay, to_host.as_str()), (&relay, to_bridge.as_str())]);
            }
            ip(&["-n", &bridge.name, "link", "set", &port, "master", BRIDGE])?;
            let v4 = format!("{}/24", spec.v4);
            let v6 = format!("{}/64", spec.v6);
            ip(&["-n", &ns.name, "addr", "add", &v4, "dev", HOST_IF])?;
            ip(&["-n", &ns.name, "addr", "add", &v6, "dev", HOST_IF, "nodad"])?;
            for (n, dev) in ends {
                // One packet on the wire is one packet to the programs (see the README's
                // limits), and a relay reads whole frames.
                n.run(
                    "ethtool",
                    &["-K", dev, "tso", "off", "gso", "off", "gro", "off"],
                )?;
                // Everything but a client's interface carries any MTU a session may draw; a
                // client's is set per session (1500 until then).
                let mtu = if relayed && dev == HOST_IF {
                    1500
                } else {
                    PATH_MTU
                };
                ip(&["-n", &n.name, "link", "set", dev, "mtu", &mtu.to_string()])?;
                if dev != HOST_IF {
                    ip(&["-n", &n.name, "link", "set", dev, "up"])?;
                }
            }
            // Checksums are computed when a packet is made, not left to a (virtual) device: a
            // relay copies frames as they are, and a copied frame's checksum would otherwise
            // stay unfinished.
            ns.run("ethtool", &["-K", HOST_IF, "tx", "off"])?;
            ip(&["-n", &ns.name, "link", "set", HOST_IF, "up"])?;
            if relayed {
                relays.add(&relay, spec.name, &to_host, &to_bridge)?;
            }
            hosts.push(LabHost {
                spec,
                ns,
                link_local: None,
            });
        }
        ip(&[
            "-n",
            &bridge.name,
            "link",
            "set",
            BRIDGE,
            "mtu",
            &PATH_MTU.to_string(),
        ])?;
        for h in &mut hosts {
            h.link_local = link_local(&h.ns)?;
        }
        Ok(Self {
            id: id.to_string(),
            relays,
            hosts,
            relay,
            bridge,
            links: Default::default(),
        })
    }

    /// Sets a relayed host's link conditions (see `link::apply`) and remembers them.
    pub fn set_link(&self, host: &str, c: &Conditions, seed: u64) -> anyhow::Result<()> {
        link::apply(self, host, c, seed).with_context(|| format!("link conditions of {host}"))?;
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), c.clone());
        Ok(())
    }

    /// The host of that name.
    pub fn host(&self, name: &str) -> anyhow::Result<&LabHost> {
        self.hosts
            .iter()
            .find(|h| h.spec.name == name)
            .with_context(|| format!("no lab host `{name}`"))
    }

    /// The victim host.
    pub fn victim(&self) -> &LabHost {
        &self.hosts[0]
    }

    /// Checks that no host can send to an outside address: no default route (IPv4 or IPv6), a
    /// route lookup toward an outside address fails, and the bridge namespace has no address.
    /// The error lists every leak found.
    pub fn check_sealed(&self) -> anyhow::Result<()> {
        let mut leaks = Vec::new();
        for h in &self.hosts {
            for fam in ["-4", "-6"] {
                match h.ns.run("ip", &[fam, "route", "show", "default"]) {
                    Ok(out) if out.trim().is_empty() => {}
                    Ok(out) => leaks.push(format!(
                        "{}: default route {fam}: {}",
                        h.spec.name,
                        out.trim()
                    )),
                    Err(e) => leaks.push(format!("{}: {e:#}", h.spec.name)),
                }
            }
            for dst in [IpAddr::V4(OUTSIDE_V4), IpAddr::V6(OUTSIDE_V6)] {
                let out =
                    h.ns.cmd("ip")
                        .args(["route", "get", &dst.to_string()])
                        .stdin(Stdio::null())
                        .output();
                match out {
                    Ok(o) if !o.status.success() => {}
                    Ok(o) => leaks.push(format!(
                        "{}: a route to {dst} exists: {}",
                        h.spec.name,
                        String::from_utf8_lossy(&o.stdout).trim()
                    )),
                    Err(e) => leaks.push(format!("{}: cannot run ip: {e}", h.spec.name)),
                }
            }
        }
        for (what, ns) in [("bridge", &self.bridge), ("relay", &self.relay)] {
            let addrs = ip(&["-n", &ns.name, "-o", "addr", "show"])?;
            for l in addrs.lines().filter(|l| !l.contains(" lo ")) {
                leaks.push(format!("{what} namespace has an address: {l}"));
            }
            for fam in ["-4", "-6"] {
                // Only loopback's own routes (local table) may exist; the main table is empty.
                let routes = ip(&["-n", &ns.name, fam, "route", "show"]).unwrap_or_default();
                for l in routes.lines().filter(|l| !l.trim().is_empty()) {
                    leaks.push(format!("{what} namespace has a route {fam}: {l}"));
                }
            }
        }
        if !leaks.is_empty() {
            bail!("the lab is not sealed:\n  {}", leaks.join("\n  "));
        }
        Ok(())
    }

    /// The topology as JSON (for `--up` and the manifest).
    pub fn describe(&self) -> serde_json::Value {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::json!({
            "id": self.id,
            "bridge_ns": self.bridge.name,
            "bridge": BRIDGE,
            "relay_ns": self.relay.name,
            "interface": HOST_IF,
            "path_mtu": PATH_MTU,
            "hosts": self.hosts.iter().map(|h| {
                let relayed = h.spec.role != Role::Victim;
                let (to_host, to_bridge) = link::topology_relay_ifs(h.spec.name);
                serde_json::json!({
                    "name": h.spec.name,
                    "role": h.spec.role,
                    "ns": h.ns.name,
                    "v4": h.spec.v4,
                    "v6": h.spec.v6,
                    "link_local": h.link_local,
                    "relay": relayed.then(|| serde_json::json!({
                        "to_host": to_host, "to_bridge": to_bridge,
                    })),
                    "link": links.get(h.spec.name),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

/// A veth pair created directly in two lab namespaces.
fn veth(name: &str, ns: &Netns, peer: &str, peer_ns: &Netns) -> anyhow::Result<()> {
    ip(&[
        "link",
        "add",
        name,
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        &peer_ns.name,
    ])
    .map(drop)
}

/// The fe80:: address of a host's interface, if it has one yet.
fn link_local(ns: &Netns) -> anyhow::Result<Option<Ipv6Addr>> {
    let out = ns.run(
        "ip",
        &["-6", "-o", "addr", "show", "dev", HOST_IF, "scope", "link"],
    )?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok()))
}

/// A child process in its own process group (so a terminal's Ctrl-C reaches only xtask, which
/// then stops it in order). Dropping it stops the whole group.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let line = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("{name}: cannot start {line}"))?;
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            status: None,
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Sends a signal to the process group.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; -pgid names our own group.
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; returns the leader's exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        // The group may outlive its leader (a shell's children): signal it either way.
        self.signal(libc::SIGTERM);
        if let Ok(Some(s)) = self.wait_timeout(grace) {
            self.signal(libc::SIGKILL);
            return Some(s);
        }
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(5)).ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.stop(Duration::from_millis(500));
        } else {
            self.signal(libc::SIGKILL);
        }
    }
}

/// The last 20 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Removes what earlier labs left behind: namespaces named `dlab<pid>-*` whose lab process is
/// gone (with the processes inside them), and their work folders. Returns what it removed.
pub fn clean_leftovers() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let list = ip(&["netns", "list"])?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(owner) = lab_owner(name) else {
            continue;
        };
        if owner_alive(owner) {
            continue;
        }
        drop(Netns {
            name: name.to_string(),
        });
        removed.push(format!("namespace {name}"));
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix(&format!("{PREFIX}-"))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(owner) = owner {
                if !owner_alive(owner) && fs::remove_dir_all(e.path()).is_ok() {
                    removed.push(format!("folder {}", e.path().display()));
                }
            }
        }
    }
    Ok(removed)
}

/// The pid in a lab namespace name `dlab<pid>-<host>`.
pub fn lab_owner(ns_name: &str) -> Option<u32> {
    let rest = ns_name.strip_prefix(PREFIX)?;
    let (pid, host) = rest.split_once('-')?;
    if host.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a lab owned by `pid` is still running: an xtask process of that pid that is not a
/// zombie (a killed lab whose parent does not reap it stays one).
fn owner_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may contain spaces and parentheses, so split at the last ')'.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
    let state = rest.split_whitespace().next().unwrap_or("Z");
    comm == "xtask" && !matches!(state, "Z" | "X" | "x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_private_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for h in HOSTS {
            assert!(h.v4.is_private(), "{}", h.v4);
            assert_eq!(h.v6.segments()[0], 0xfd77, "{}", h.v6);
            assert!(seen.insert(h.v4) && seen.len() <= HOSTS.len());
        }
        assert_eq!(host_spec("attacker1").unwrap().v6.to_string(), "fd77::21");
        assert_eq!(victim_spec().role, Role::Victim);
    }

    #[test]
    fn owner_is_parsed_only_from_lab_names() {
        assert_eq!(lab_owner("dlab123-victim"), Some(123));
        assert_eq!(lab_owner("dlab123-"), None);
        assert_eq!(lab_owner("dlabx-victim"), None);
        assert_eq!(lab_owner("dta1x2"), None);
        assert_eq!(lab_owner("ta"), None);
    }
}

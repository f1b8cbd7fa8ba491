//! Link conditions of a client or attacker host, set before each of its sessions: the delay,
//! jitter, loss and reordering its relay applies (`relay.rs`), rate caps (TBF qdiscs on the
//! relay's interfaces), the host's MTU and its TCP stack (per-namespace sysctls, initial windows on
//! its routes). Drawn per session from a seed (the default), or fixed with `--link`.
//!
//! Without this every lab flow crossed a veth with no delay, one MTU and one TCP configuration,
//! and a model trained on it learned that network instead of the attacks.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{bail, Context};
use serde::Serialize;

use super::{
    inputs::Rng,
    relay::{Impairment, LinkParams},
    topology::{host_spec, output, Role, Topology, HOST_IF},
};

/// Conditions of one host's link for one session (what the manifest records per session).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conditions {
    /// Round trip the relay adds (ms); each direction waits half of it.
    pub rtt_ms: f64,
    /// Each direction adds a uniform 0..jitter/2 on top, so a ping's round trip lies in
    /// rtt..rtt + jitter (plus the machine's own latency).
    pub jitter_ms: f64,
    /// Probability that the relay drops a frame, per direction (%).
    pub loss_pct: f64,
    /// Probability that a frame overtakes the frames queued before it, per direction (%).
    pub reorder_pct: f64,
    /// Rate cap from the bridge to the host (kbit/s); none when absent.
    pub down_kbit: Option<u64>,
    /// Rate cap from the host to the bridge (kbit/s).
    pub up_kbit: Option<u64>,
    /// The host's interface MTU (the victim and the bridge are at 9000, so the path carries it).
    pub mtu: u32,
    pub tcp: TcpStack,
}

/// The host's TCP configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpStack {
    /// net.ipv4.tcp_ecn: 1 asks for ECN on outgoing connections, 2 (Linux's default) only
    /// accepts it.
    pub ecn: u8,
    pub timestamps: bool,
    pub sack: bool,
    pub window_scaling: bool,
    /// Congestion control (`congctl` on the host's lab routes).
    pub congestion: String,
    /// Initial congestion window (segments) on the host's lab routes; Linux's default is 10.
    pub initcwnd: u32,
    /// Initial receive window (segments) on those routes; absent: the kernel's default.
    pub initrwnd: Option<u32>,
}

/// MTU of the victim, the bridge and the relay's interfaces: the largest a host may draw.
pub const PATH_MTU: u32 = 9000;
const MIN_MTU: u32 = 1280;
const MAX_RTT_MS: f64 = 200.0;
const MIN_RTT_MS: f64 = 0.05;
const MAX_LOSS_PCT: f64 = 3.0;
/// Congestion controls this kernel has (tcp_available_congestion_control).
const CONGESTION: &[&str] = &["cubic", "bbr", "reno"];

impl Conditions {
    /// The lab without conditions: no delay, no loss, no cap, MTU 1500, Linux's TCP defaults.
    pub fn none() -> Self {
        Self {
            rtt_ms: 0.0,
            jitter_ms: 0.0,
            loss_pct: 0.0,
            reorder_pct: 0.0,
            down_kbit: None,
            up_kbit: None,
            mtu: 1500,
            tcp: TcpStack {
                ecn: 2,
                timestamps: true,
                sack: true,
                window_scaling: true,
                congestion: "cubic".into(),
                initcwnd: 10,
                initrwnd: None,
            },
        }
    }

    /// Draws a session's conditions (docs/lab.md, "Link conditions").
    pub fn draw(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let chance = |p: f64, r: &mut Rng| r.unit() < p;
        let log_uniform =
            |lo: f64, hi: f64, r: &mut Rng| (lo.ln() + r.unit() * (hi / lo).ln()).exp();
        let rtt_ms = round3(log_uniform(MIN_RTT_MS, MAX_RTT_MS, &mut r));
        let jitter_ms = if chance(0.3, &mut r) {
            0.0
        } else {
            round3(rtt_ms * (0.05 + 0.45 * r.unit()))
        };
        let loss_pct = if chance(0.35, &mut r) {
            0.0
        } else {
            round3(MAX_LOSS_PCT * r.unit())
        };
        let reorder_pct = if chance(0.7, &mut r) {
            0.0
        } else {
            round3(r.unit())
        };
        let (down_kbit, up_kbit) = if chance(0.45, &mut r) {
            (None, None)
        } else {
            // 1 Mbit/s to 1 Gbit/s down; up the same or an asymmetric fraction (DSL, cable).
            let down = log_uniform(1_000.0, 1_000_000.0, &mut r) as u64;
            let ratio = [1, 1, 2, 4, 10][r.below(5) as usize];
            (Some(down), Some((down / ratio).max(256)))
        };
        let mtu = match r.below(100) {
            0..=44 => 1500,
            45..=52 => 1492, // PPPoE
            53..=57 => 1460,
            58..=67 => 1420, // WireGuard
            68..=74 => MIN_MTU,
            75..=84 => PATH_MTU,
            _ => MIN_MTU + r.below(u64::from(PATH_MTU - MIN_MTU) + 1) as u32,
        };
        let congestion = match r.below(10) {
            0..=6 => "cubic",
            7..=8 => "bbr",
            _ => "reno",
        };
        let initcwnd = [10, 10, 10, 10, 10, 10, 4, 16, 32, 2][r.below(10) as usize];
        let initrwnd = [
            None,
            None,
            None,
            None,
            None,
            None,
            Some(10),
            Some(20),
            Some(64),
            Some(4),
        ][r.below(10) as usize];
        let tcp = TcpStack {
            ecn: if chance(0.35, &mut r) { 1 } else { 2 },
            timestamps: chance(0.85, &mut r),
            sack: chance(0.95, &mut r),
            window_scaling: chance(0.95, &mut r),
            congestion: congestion.into(),
            initcwnd,
            initrwnd,
        };
        Self {
            rtt_ms,
            jitter_ms,
            loss_pct,
            reorder_pct,
            down_kbit,
            up_kbit,
            mtu,
            tcp,
        }
    }

    /// What the relay does in each direction.
    pub fn relay_params(&self, seed: u64) -> LinkParams {
        let one_way = Impairment {
            delay_ns: (self.rtt_ms * 1e6 / 2.0) as u64,
            jitter_ns: (self.jitter_ms * 1e6 / 2.0) as u64,
            loss: self.loss_pct / 100.0,
            reorder: self.reorder_pct / 100.0,
        };
        LinkParams {
            up: one_way,
            down: one_way,
            seed,
        }
    }

    /// Overrides fields from `key=value,...` (see `SPEC_KEYS`).
    fn set_from(&mut self, spec: &str) -> anyhow::Result<()> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .with_context(|| format!("`{item}`: expected key=value"))?;
            let bad = || format!("`{item}`: bad value");
            let flag = || match v {
                "1" | "on" | "yes" | "true" => Ok(true),
                "0" | "off" | "no" | "false" => Ok(false),
                _ => Err(anyhow::anyhow!("`{item}`: expected 0 or 1")),
            };
            match k {
                "rtt" => self.rtt_ms = parse_ms(v).with_context(bad)?,
                "jitter" => self.jitter_ms = parse_ms(v).with_context(bad)?,
                "loss" => self.loss_pct = parse_pct(v).with_context(bad)?,
                "reorder" => self.reorder_pct = parse_pct(v).with_context(bad)?,
                "down" => self.down_kbit = parse_rate(v).with_context(bad)?,
                "up" => self.up_kbit = parse_rate(v).with_context(bad)?,
                "mtu" => self.mtu = v.parse().ok().with_context(bad)?,
                "ecn" => self.tcp.ecn = v.parse().ok().filter(|e| *e <= 2).with_context(bad)?,
                "timestamps" => self.tcp.timestamps = flag()?,
                "sack" => self.tcp.sack = flag()?,
                "wscale" => self.tcp.window_scaling = flag()?,
                "cc" if CONGESTION.contains(&v) => self.tcp.congestion = v.into(),
                "cc" => bail!("`{item}`: one of {}", CONGESTION.join(", ")),
                "initcwnd" => {
                    self.tcp.initcwnd = v.parse().ok().filter(|n| *n > 0).with_context(bad)?
                }
                "initrwnd" => {
                    self.tcp.initrwnd = Some(v.parse().ok().filter(|n| *n > 0).with_context(bad)?)
                }
                _ => bail!("unknown key `{k}` (keys: {})", SPEC_KEYS),
            }
        }
        if !(MIN_MTU..=PATH_MTU).contains(&self.mtu) {
            bail!("mtu {}: must be {MIN_MTU} to {PATH_MTU}", self.mtu);
        }
        if self.rtt_ms > 10_000.0 || self.jitter_ms > 10_000.0 {
            bail!("rtt and jitter are at most 10 s");
        }
        if self.loss_pct > 100.0 || self.reorder_pct > 100.0 {
            bail!("loss and reorder are percentages");
        }
        Ok(())
    }
}

/// The keys a `--link` spec may set.
pub const SPEC_KEYS: &str = "rtt, jitter (ms: 40ms, 0.5ms, 1s), loss, reorder (%), down, up \
                             (kbit, mbit, gbit, or none), mtu, ecn (0-2), timestamps, sack, wscale \
                             (0/1), cc, initcwnd, initrwnd";

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn parse_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| x * scale)
}

fn parse_pct(v: &str) -> Option<f64> {
    v.strip_suffix('%')
        .unwrap_or(v)
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && (0.0..=100.0).contains(x))
}

fn parse_rate(v: &str) -> Option<Option<u64>> {
    if v == "none" {
        return Some(None);
    }
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let kbit = n * match unit {
        "kbit" => 1.0,
        "mbit" => 1e3,
        "gbit" => 1e6,
        _ => return None,
    };
    (kbit >= 8.0 && kbit.is_finite()).then_some(Some(kbit as u64))
}

/// Conditions for one host: drawn per session, or fixed.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    Random,
    Fixed(Conditions),
}

impl Choice {
    /// `random`, `none`, or `key=value,...` over the lab without conditions.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        match spec.trim() {
            "random" => Ok(Choice::Random),
            "none" => Ok(Choice::Fixed(Conditions::none())),
            s => {
                let mut c = Conditions::none();
                c.set_from(s)?;
                Ok(Choice::Fixed(c))
            }
        }
    }
}

/// Which conditions each host gets: `--link [HOST:]SPEC`, repeatable; the last spec without a
/// host is the default for every host not named.
#[derive(Clone, Debug)]
pub struct LinkPlan {
    pub default: Choice,
    pub hosts: BTreeMap<String, Choice>,
}

impl LinkPlan {
    /// Reads the `--link` values; `default` applies when none names every host.
    pub fn parse(specs: &[String], default: Choice) -> anyhow::Result<Self> {
        let mut plan = Self {
            default,
            hosts: BTreeMap::new(),
        };
        for s in specs {
            let (host, spec) = match s.split_once(':') {
                Some((h, rest)) if !h.contains('=') => (Some(h), rest),
                _ => (None, s.as_str()),
            };
            let choice = Choice::parse(spec).with_context(|| format!("--link `{s}`"))?;
            match host {
                None => plan.default = choice,
                Some(h) => {
                    match host_spec(h) {
                        Some(spec) if spec.role != Role::Victim => {}
                        Some(_) => bail!(
                            "--link `{s}`: the victim's link is fixed (MTU {PATH_MTU}, no relay)"
                        ),
                        None => bail!("--link `{s}`: no host `{h}`"),
                    }
                    plan.hosts.insert(h.to_string(), choice);
                }
            }
        }
        Ok(plan)
    }

    /// The conditions of a session on `host` and the seed of the relay's draws: drawn from the
    /// session's id and seed (so a re-recording draws the same), or the fixed ones.
    pub fn for_session(&self, host: &str, session_id: &str, seed: u64) -> (Conditions, u64) {
        let link_seed = mix(seed, session_id);
        let choice = self.hosts.get(host).unwrap_or(&self.default);
        match choice {
            Choice::Random => (Conditions::draw(link_seed), link_seed),
            Choice::Fixed(c) => (c.clone(), link_seed),
        }
    }

    /// The conditions a relayed host starts with, before its first session (what `--up` keeps).
    pub fn initial(&self, host: &str) -> (Conditions, u64) {
        self.for_session(host, host, 0)
    }

    /// For the manifest and `--list`.
    pub fn describe(&self) -> serde_json::Value {
        let one = |c: &Choice| match c {
            Choice::Random => serde_json::json!("random per session"),
            Choice::Fixed(c) => serde_json::to_value(c).unwrap_or_default(),
        };
        serde_json::json!({
            "default": one(&self.default),
            "hosts": self.hosts.iter().map(|(h, c)| (h.clone(), one(c))).collect::<BTreeMap<_, _>>(),
        })
    }
}

/// A seed for the link of one session, apart from the seed its tool's inputs use.
fn mix(seed: u64, id: &str) -> u64 {
    // FNV-1a over the id, then the session seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(seed.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ 0x114b_5eed
}

/// Sets `host`'s link to `c`: the relay's impairments (with `seed` for its draws), rate caps,
/// the MTU, the TCP sysctls and the routes' initial windows.
pub fn apply(topo: &Topology, host: &str, c: &Conditions, seed: u64) -> anyhow::Result<()> {
    let h = topo.host(host)?;
    let relay_ns = &topo.relay;
    topo.relays.set(host, c.relay_params(seed))?;
    let (to_host, to_bridge) = topology_relay_ifs(host);
    for (dev, rate) in [(&to_host, c.down_kbit), (&to_bridge, c.up_kbit)] {
        set_rate(&relay_ns.name, dev, rate)?;
    }
    let mtu = c.mtu.to_string();
    h.ns.run("ip", &["link", "set", HOST_IF, "mtu", &mtu])?;
    let t = &c.tcp;
    let on = |b: bool| if b { "1" } else { "0" };
    h.ns.sysctl(&[
        &format!("net.ipv4.tcp_ecn={}", t.ecn),
        &format!("net.ipv4.tcp_timestamps={}", on(t.timestamps)),
        &format!("net.ipv4.tcp_sack={}", on(t.sack)),
        &format!("net.ipv4.tcp_window_scaling={}", on(t.window_scaling)),
    ])?;
    // Congestion control per route: a namespace may only make an algorithm its default when the
    // host allows it (tcp_allowed_congestion_control), a route may name any available one.
    let mut windows = vec!["congctl".to_string(), t.congestion.clone()];
    windows.extend(["initcwnd".to_string(), t.initcwnd.to_string()]);
    if let Some(w) = t.initrwnd {
        windows.extend(["initrwnd".to_string(), w.to_string()]);
    }
    // The connected routes of the lab's prefixes, as the kernel made them, plus the windows.
    let v4_src = h.spec.v4.to_string();
    let mut v4 = vec!["-4", "route", "replace", "10.77.0.0/24", "dev", HOST_IF];
    v4.extend(["proto", "kernel", "scope", "link", "src", &v4_src]);
    let mut v6 = vec!["-6", "route", "replace", "fd77::/64", "dev", HOST_IF];
    v6.extend(["proto", "kernel", "metric", "256", "pref", "medium"]);
    for mut args in [v4, v6] {
        args.extend(windows.iter().map(String::as_str));
        h.ns.run("ip", &args)?;
    }
    Ok(())
}

/// The relay's interfaces of a host: toward the host, toward the bridge.
pub fn topology_relay_ifs(host: &str) -> (String, String) {
    (format!("h-{host}"), format!("b-{host}"))
}

/// A TBF rate cap on `dev`'s egress, or none.
fn set_rate(ns: &str, dev: &str, kbit: Option<u64>) -> anyhow::Result<()> {
    let shown =
        output(std::process::Command::new("tc").args(["-n", ns, "qdisc", "show", "dev", dev]))?;
    let has_tbf = shown.contains("tbf");
    match kbit {
        None if has_tbf => {
            output(
                std::process::Command::new("tc")
                    .args(["-n", ns, "qdisc", "del", "dev", dev, "root"]),
            )?;
        }
        None => {}
        Some(k) => {
            // The bucket holds at least two jumbo frames, or 10 ms at the rate; up to 100 ms of
            // frames wait in its queue (a modest router buffer), more are dropped.
            let burst = (k * 1000 / 8 / 100).max(2 * u64::from(PATH_MTU + 14));
            let mut cmd = std::process::Command::new("tc");
            cmd.args(["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf"])
                .args(["rate", &format!("{k}kbit"), "burst", &burst.to_string()])
                .args(["latency", "100ms"]);
            output(&mut cmd)?;
        }
    }
    Ok(())
}

/// One line per condition, for logs.
pub fn summary(c: &Conditions) -> String {
    let mut s = format!(
        "rtt {} ms ± {} ms, loss {} %, reorder {} %, mtu {}",
        c.rtt_ms, c.jitter_ms, c.loss_pct, c.reorder_pct, c.mtu
    );
    if let (Some(d), Some(u)) = (c.down_kbit, c.up_kbit) {
        let _ = write!(s, ", cap {d}/{u} kbit");
    }
    let t = &c.tcp;
    let _ = write!(
        s,
        ", tcp ecn={} ts={} sack={} ws={} {} initcwnd {}",
        t.ecn,
        u8::from(t.timestamps),
        u8::from(t.sack),
        u8::from(t.window_scaling),
        t.congestion,
        t.initcwnd
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_range_reproducible_and_varied() {
        let draws: Vec<Conditions> = (0..2000).map(|i| Conditions::draw(mix(i, "x/1"))).collect();
        assert_eq!(Conditions::draw(42), Conditions::draw(42));
        for c in &draws {
            assert!((MIN_RTT_MS..=MAX_RTT_MS).contains(&c.rtt_ms), "{c:?}");
            assert!(c.jitter_ms <= c.rtt_ms * 0.5 + 0.001, "{c:?}");
            assert!((0.0..=MAX_LOSS_PCT).contains(&c.loss_pct), "{c:?}");
            assert!((MIN_MTU..=PATH_MTU).contains(&c.mtu), "{c:?}");
            assert!(CONGESTION.contains(&c.tcp.congestion.as_str()));
            assert_eq!(c.down_kbit.is_some(), c.up_kbit.is_some());
        }
        let share = |f: &dyn Fn(&Conditions) -> bool| {
            draws.iter().filter(|c| f(c)).count() as f64 / draws.len() as f64
        };
        // Log-uniform: each decade of 0.05-200 ms holds about a quarter of the draws.
        let decade = share(&|c| (0.5..5.0).contains(&c.rtt_ms));
        assert!((0.23..0.33).contains(&decade), "{decade}");
        assert!((0.3..0.4).contains(&share(&|c| c.tcp.ecn == 1)));
        assert!((0.3..0.4).contains(&share(&|c| c.loss_pct == 0.0)));
        assert!(share(&|c| c.mtu == 9000) > 0.08 && share(&|c| c.mtu == 1500) > 0.4);
        assert!(share(&|c| !c.tcp.timestamps) > 0.1);
    }

    #[test]
    fn relay_params_split_the_round_trip() {
        let mut c = Conditions::none();
        c.set_from("rtt=40ms,jitter=4ms,loss=10%,reorder=1")
            .unwrap();
        let p = c.relay_params(9);
        assert_eq!(p.up, p.down);
        assert_eq!(p.up.delay_ns, 20_000_000);
        assert_eq!(p.up.jitter_ns, 2_000_000);
        assert!((p.up.loss - 0.1).abs() < 1e-12 && (p.up.reorder - 0.01).abs() < 1e-12);
    }

    #[test]
    fn specs_parse_and_bad_ones_are_named() {
        let plan = LinkPlan::parse(
            &[
                "rtt=2ms".into(),
                "client1:rtt=40ms,loss=5%,down=20mbit,up=512kbit,mtu=1280,ecn=1,cc=bbr,timestamps=0"
                    .into(),
                "attacker2:random".into(),
            ],
            Choice::Random,
        )
        .unwrap();
        let (c1, _) = plan.for_session("client1", "a/1", 1);
        assert_eq!((c1.rtt_ms, c1.loss_pct, c1.mtu), (40.0, 5.0, 1280));
        assert_eq!((c1.down_kbit, c1.up_kbit), (Some(20_000), Some(512)));
        assert_eq!((c1.tcp.ecn, c1.tcp.timestamps), (1, false));
        assert_eq!(c1.tcp.congestion, "bbr");
        assert_eq!(plan.for_session("client2", "a/1", 1).0.rtt_ms, 2.0);
        let (r1, s1) = plan.for_session("attacker2", "a/1", 1);
        assert_eq!(plan.for_session("attacker2", "a/1", 1), (r1.clone(), s1));
        assert_ne!(plan.for_session("attacker2", "a/2", 2).1, s1);
        for (bad, says) in [
            ("mtu=1000", "mtu"),
            ("rtt=40", "rtt=40"),
            ("colour=red", "colour"),
            ("victim:rtt=1ms", "victim"),
            ("client9:rtt=1ms", "client9"),
            ("cc=vegas", "cc"),
            ("down=fast", "down"),
        ] {
            let e = format!(
                "{:#}",
                LinkPlan::parse(&[bad.into()], Choice::Random).unwrap_err()
            );
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

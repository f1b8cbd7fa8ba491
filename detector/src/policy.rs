//! What a score leads to: an alert (with a per-source cooldown and a global rate limit), and a
//! drop decision that respects the allowlist, the drop mode (off / shadow / drop) and a rate
//! limit on new drops.
//! Pure logic over a clock passed in: the same code decides live and in `replay --detect`.

use std::{collections::HashMap, net::IpAddr};

use detector_common::block::BlockKey;
use serde::Serialize;

use crate::{
    config::{Cidr, DropMode, DropTarget, PolicySection},
    context::Keyed,
};

/// Why a drop did or did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropOutcome {
    /// A blocklist entry was (or will be) inserted.
    Dropped,
    /// Shadow mode: logged, not inserted.
    Shadow,
    /// The address is on the allowlist.
    Allowlisted,
    /// Too many new drops lately.
    RateLimited,
    /// An entry for it is already active.
    AlreadyBlocked,
}

/// The drop part of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DropDecision {
    pub target: DropTarget,
    pub outcome: DropOutcome,
    pub ttl_s: u64,
}

/// What to do with one scored record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Write an alert event now.
    pub alert: bool,
    /// Alerts for this source not written since the last one (cooldown).
    pub suppressed: u64,
    /// Set when the score reached the drop threshold (and drops are not off).
    pub drop: Option<DropDecision>,
}

/// Addresses no drop may ever target.
pub fn infrastructure(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_loopback()
                || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_loopback()
                // fe80::/10
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ns: u64,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last_ns: 0,
        }
    }
    fn take(&mut self, now_ns: u64) -> bool {
        let dt = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Alert cooldown state of one source.
#[derive(Clone, Copy, Debug)]
struct Cooldown {
    until_ns: u64,
    suppressed: u64,
}

/// The policy engine.
pub struct Policy {
    cfg: PolicySection,
    /// The model's calibrated threshold, used when the configuration sets none.
    model_threshold: f32,
    allowlist: Vec<Cidr>,
    bucket: Bucket,
    /// Alert events over all sources.
    alert_bucket: Bucket,
    /// Alerts held back by `alert_bucket` since the agent started.
    pub rate_limited_alerts: u64,
    /// Records that reached a threshold but rested on less than `min_evidence` (not alerted,
    /// not dropped) since the agent started.
    pub thin_evidence: u64,
    cooldowns: HashMap<IpAddr, Cooldown, Keyed>,
    /// Shadow drops still "in force": a shadow drop is reported once per TTL, as a real one
    /// would be (the blocked source would not be seen again).
    shadow: HashMap<BlockKey, u64, Keyed>,
    last_prune_ns: u64,
    /// Drops become shadow drops whatever `drop` says (offline detection never touches a
    /// kernel).
    forced_shadow: bool,
}

/// One scored record, as the policy judges it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The flow's initiator.
    pub src: IpAddr,
    /// What a drop would block.
    pub target: &'a BlockKey,
    pub score: f32,
    /// What the score rests on: the flow's packets and the other flows of its source and
    /// service.
    pub evidence: u64,
    /// The record's time (the flow's last packet).
    pub now_ns: u64,
    /// A kernel entry for `target` is already active.
    pub blocked: bool,
}

impl Policy {
    /// A policy from its config section and the effective allowlist.
    pub fn new(cfg: PolicySection, allowlist: Vec<Cidr>) -> Self {
        let bucket = Bucket::new(cfg.max_drops_per_s, cfg.drop_burst);
        let alert_bucket = Bucket::new(cfg.max_alerts_per_s, cfg.alert_burst);
        Self {
            cfg,
            model_threshold: 0.5,
            allowlist,
            bucket,
            alert_bucket,
            rate_limited_alerts: 0,
            thin_evidence: 0,
            cooldowns: HashMap::default(),
            shadow: HashMap::default(),
            last_prune_ns: 0,
            forced_shadow: false,
        }
    }

    /// From now on every drop is a shadow drop (offline detection).
    pub fn force_shadow(&mut self) {
        self.forced_shadow = true;
    }

    /// The configuration in force.
    pub fn config(&self) -> &PolicySection {
        &self.cfg
    }

    /// Sets the model's own alert threshold (used unless the configuration sets one).
    pub fn set_model_threshold(&mut self, t: f32) {
        self.model_threshold = t;
    }

    /// The alert threshold in force.
    pub fn alert_threshold(&self) -> f32 {
        self.cfg.alert_threshold.unwrap_or(self.model_threshold)
    }

    /// Replaces the configuration (SIGHUP), keeping cooldowns.
    pub fn reconfigure(&mut self, cfg: PolicySection, allowlist: Vec<Cidr>) {
        self.bucket = Bucket::new(cfg.max_drops_per_s, cfg.drop_burst);
        self.alert_bucket = Bucket::new(cfg.max_alerts_per_s, cfg.alert_burst);
        self.cfg = cfg;
        self.allowlist = allowlist;
    }

    /// True when `ip` must never be dropped: the allowlist, and addresses that are not one
    /// host's (unspecified, multicast, broadcast, loopback, link-local: blocking those breaks
    /// neighbour discovery, DHCP and the like for everyone on the link).
    pub fn allowlisted(&self, ip: &IpAddr) -> bool {
        infrastructure(ip) || self.allowlist.iter().any(|c| c.contains(ip))
    }

    /// True when a record of this score and evidence would be alerted on or dropped, cooldowns
    /// and rate limits aside.
    pub fn acts_on(&self, score: f32, evidence: u64) -> bool {
        (score >= self.alert_threshold() || self.may_drop(score))
            && evidence >= u64::from(self.cfg.min_evidence)
    }

    /// True when a record of this score could be dropped (drops on, score at the threshold).
    pub fn may_drop(&self, score: f32) -> bool {
        self.cfg.drop != DropMode::Off && score >= self.cfg.drop_threshold
    }

    /// Decides for one record.
    pub fn decide(&mut self, c: &Candidate<'_>) -> Decision {
        let Candidate {
            src,
            target,
            score,
            evidence,
            now_ns,
            blocked,
        } = *c;
        let mut d = Decision::default();
        if score >= self.alert_threshold().min(self.cfg.drop_threshold)
            && evidence < u64::from(self.cfg.min_evidence)
        {
            self.thin_evidence += 1;
            return d;
        }
        if score >= self.alert_threshold() {
            let cd = self.cooldowns.entry(src).or_insert(Cooldown {
                until_ns: 0,
                suppressed: 0,
            });
            if now_ns < cd.until_ns {
                cd.suppressed += 1;
            } else if !self.alert_bucket.take(now_ns) {
                // Over the global rate: counted for this source's next alert.
                cd.suppressed += 1;
                self.rate_limited_alerts += 1;
            } else {
                d.alert = true;
                d.suppressed = cd.suppressed;
                cd.suppressed = 0;
                cd.until_ns = now_ns.saturating_add(self.cfg.alert_cooldown.0.as_nanos() as u64);
            }
        }
        if self.may_drop(score) {
            // Looked up only where a drop could follow: the 48-byte key is hashed for those
            // records, not for every record.
            let blocked = blocked || self.shadow.get(target).is_some_and(|&until| now_ns < until);
            let outcome = if self.allowlisted(&src) {
                DropOutcome::Allowlisted
            } else if blocked {
                DropOutcome::AlreadyBlocked
            } else if !self.bucket.take(now_ns) {
                DropOutcome::RateLimited
            } else if self.cfg.drop == DropMode::Shadow || self.forced_shadow {
                let ttl = self.cfg.drop_ttl.0.as_nanos() as u64;
                self.shadow.insert(*target, now_ns.saturating_add(ttl));
                DropOutcome::Shadow
            } else {
                DropOutcome::Dropped
            };
            d.drop = Some(DropDecision {
                target: self.cfg.drop_target,
                outcome,
                ttl_s: self.cfg.drop_ttl.0.as_secs(),
            });
            // A drop is news even inside the alert cooldown.
            if matches!(outcome, DropOutcome::Dropped | DropOutcome::Shadow) && !d.alert {
                d.alert = true;
                if let Some(cd) = self.cooldowns.get_mut(&src) {
                    d.suppressed = cd.suppressed;
                    cd.suppressed = 0;
                }
            }
        }
        self.prune(now_ns);
        d
    }

    /// Forgets cooldowns that ended (bounded memory under spoofed floods): every 10 s, every
    /// second once there are many. Not on every record: a scan of 65,536 entries per record is
    /// what made the agent fall seconds behind under a spoofed flood.
    fn prune(&mut self, now_ns: u64) {
        let every_ns = if self.cooldowns.len() < 4096 {
            10_000_000_000
        } else {
            1_000_000_000
        };
        if now_ns < self.last_prune_ns.saturating_add(every_ns) && self.cooldowns.len() <= 65_536 {
            return;
        }
        self.last_prune_ns = now_ns;
        self.cooldowns
            .retain(|_, c| c.until_ns > now_ns || c.suppressed > 0);
        // Expired shadow drops go too: kept, they grew by up to `max_drops_per_s` entries a
        // second for as long as the agent ran (shadow is the default mode).
        self.shadow.retain(|_, &mut until| until > now_ns);
        if self.cooldowns.len() > 65_536 {
            self.cooldowns.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn t(ip: &str) -> BlockKey {
        crate::blocklist::key_for(
            crate::config::DropTarget::Source,
            ip.parse().unwrap(),
            &Default::default(),
        )
    }

    /// A record of `src` (not already blocked) for `decide`.
    fn cand(
        src: IpAddr,
        target: &BlockKey,
        score: f32,
        evidence: u64,
        now_ns: u64,
    ) -> Candidate<'_> {
        Candidate {
            src,
            target,
            score,
            evidence,
            now_ns,
            blocked: false,
        }
    }

    fn policy(mode: DropMode) -> Policy {
        let cfg = PolicySection {
            alert_threshold: Some(0.5),
            drop_threshold: 0.9,
            drop: mode,
            max_drops_per_s: 1.0,
            drop_burst: 2,
            alert_cooldown: Dur(Duration::from_secs(10)),
            ..PolicySection::default()
        };
        Policy::new(cfg, vec!["10.0.0.0/8".parse().unwrap()])
    }

    #[test]
    fn alerts_have_a_per_source_cooldown_that_counts_suppressed_alerts() {
        let mut p = policy(DropMode::Off);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!p.decide(&cand(a, &t(&a.to_string()), 0.4, 10, S)).alert);
        assert!(p.decide(&cand(a, &t(&a.to_string()), 0.6, 10, S)).alert);
        assert!(!p.decide(&cand(a, &t(&a.to_string()), 0.7, 10, 2 * S)).alert);
        assert!(!p.decide(&cand(a, &t(&a.to_string()), 0.7, 10, 3 * S)).alert);
        assert!(
            p.decide(&cand(b, &t(&b.to_string()), 0.7, 10, 3 * S)).alert,
            "other sources are not held back"
        );
        let d = p.decide(&cand(a, &t(&a.to_string()), 0.7, 10, 12 * S));
        assert!(d.alert);
        assert_eq!(d.suppressed, 2);
        assert_eq!(d.drop, None, "drops are off");
    }

    #[test]
    fn alerts_over_all_sources_are_rate_limited_and_counted() {
        let mut p = policy(DropMode::Off);
        p.reconfigure(
            PolicySection {
                max_alerts_per_s: 2.0,
                alert_burst: 3,
                ..p.config().clone()
            },
            vec![],
        );
        // A spoofed flood: a new source per record, all within one second.
        let written = (0..50u8)
            .filter(|i| {
                let src: IpAddr = format!("198.51.100.{i}").parse().unwrap();
                p.decide(&cand(src, &t(&src.to_string()), 0.9, 10, S)).alert
            })
            .count();
        assert_eq!(written, 3, "the burst, then nothing");
        assert_eq!(p.rate_limited_alerts, 47);
        // Two seconds later the bucket has refilled by four, capped at the burst; a held-back
        // source reports what it missed.
        let src: IpAddr = "198.51.100.10".parse().unwrap();
        let d = p.decide(&cand(src, &t(&src.to_string()), 0.9, 10, 3 * S));
        assert!(d.alert);
        assert_eq!(d.suppressed, 1);
    }

    #[test]
    fn drops_respect_allowlist_rate_limit_existing_blocks_and_shadow_mode() {
        let mut p = policy(DropMode::Drop);
        let out = |d: Decision| d.drop.map(|x| x.outcome);
        assert_eq!(
            out(p.decide(&cand(
                "10.1.2.3".parse().unwrap(),
                &t("10.1.2.3"),
                0.99,
                10,
                S
            ))),
            Some(DropOutcome::Allowlisted)
        );
        for infra in [
            "::",
            "fe80::1",
            "ff02::16",
            "0.0.0.0",
            "255.255.255.255",
            "169.254.1.1",
            "224.0.0.251",
        ] {
            assert_eq!(
                out(p.decide(&cand(infra.parse().unwrap(), &t(infra), 0.99, 10, S))),
                Some(DropOutcome::Allowlisted),
                "{infra} is never dropped"
            );
        }
        assert_eq!(
            out(p.decide(&cand(
                "192.0.2.9".parse().unwrap(),
                &t("192.0.2.9"),
                0.8,
                10,
                S
            ))),
            None,
            "below the drop threshold"
        );
        assert_eq!(
            out(p.decide(&cand(
                "192.0.2.1".parse().unwrap(),
                &t("192.0.2.1"),
                0.99,
                10,
                S
            ))),
            Some(DropOutcome::Dropped)
        );
        assert_eq!(
            out(p.decide(&cand(
                "192.0.2.2".parse().unwrap(),
                &t("192.0.2.2"),
                0.99,
                10,
                S
            ))),
            Some(DropOutcome::Dropped)
        );
        assert_eq!(
            out(p.decide(&cand(
                "192.0.2.3".parse().unwrap(),
                &t("192.0.2.3"),
                0.99,
                10,
                S
            ))),
            Some(DropOutcome::RateLimited),
            "burst of 2"
        );
        assert_eq!(
            out(p.decide(&cand(
                "192.0.2.3".parse().unwrap(),
                &t("192.0.2.3"),
                0.99,
                10,
                2 * S
            ))),
            Some(DropOutcome::Dropped),
            "1/s refills"
        );
        assert_eq!(
            out(p.decide(&Candidate {
                blocked: true,
                ..cand(
                    "192.0.2.1".parse().unwrap(),
                    &t("192.0.2.1"),
                    0.99,
                    10,
                    9 * S
                )
            })),
            Some(DropOutcome::AlreadyBlocked)
        );
        p.force_shadow();
        assert_eq!(
            out(p.decide(&cand(
                "192.0.2.4".parse().unwrap(),
                &t("192.0.2.4"),
                0.99,
                10,
                20 * S
            ))),
            Some(DropOutcome::Shadow),
            "forced shadow"
        );
        let mut shadow = policy(DropMode::Shadow);
        let d = shadow.decide(&cand(
            "192.0.2.5".parse().unwrap(),
            &t("192.0.2.5"),
            0.95,
            10,
            S,
        ));
        assert_eq!(d.drop.unwrap().outcome, DropOutcome::Shadow);
        assert!(d.alert);
        // Reported once per TTL, like a real block.
        let again = shadow.decide(&cand(
            "192.0.2.5".parse().unwrap(),
            &t("192.0.2.5"),
            0.95,
            10,
            2 * S,
        ));
        assert_eq!(again.drop.unwrap().outcome, DropOutcome::AlreadyBlocked);
        assert!(!again.alert, "inside the cooldown, nothing new to say");
        // Once its TTL is over, the shadow drop leaves the table (at the next prune).
        let ttl = PolicySection::default().drop_ttl.0.as_nanos() as u64;
        shadow.decide(&cand(
            "192.0.2.6".parse().unwrap(),
            &t("192.0.2.6"),
            0.1,
            10,
            S + ttl + 11 * S,
        ));
        assert!(
            shadow.shadow.is_empty(),
            "expired shadow drops are forgotten"
        );
    }

    #[test]
    fn thin_evidence_is_counted_not_alerted_or_dropped() {
        let mut p = policy(DropMode::Drop);
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        // A lone first packet (evidence 1) and a lone handshake (2), however high the score.
        for evidence in [1, 2] {
            let d = p.decide(&cand(src, &t("192.0.2.7"), 0.99, evidence, S));
            assert!(!d.alert && d.drop.is_none(), "evidence {evidence}");
        }
        assert_eq!(p.thin_evidence, 2);
        // Below both thresholds there is nothing to hold back.
        p.decide(&cand(src, &t("192.0.2.7"), 0.1, 1, S));
        assert_eq!(p.thin_evidence, 2);
        let d = p.decide(&cand(src, &t("192.0.2.7"), 0.99, 3, S));
        assert!(d.alert);
        assert_eq!(d.drop.unwrap().outcome, DropOutcome::Dropped);
        // The gate can be switched off.
        p.reconfigure(
            PolicySection {
                min_evidence: 0,
                ..p.config().clone()
            },
            vec![],
        );
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(p.decide(&cand(other, &t("192.0.2.8"), 0.99, 1, S)).alert);
    }
}

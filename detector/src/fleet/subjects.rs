//! Subjects and streams of the fleet. Every subject a host writes starts with
//! `detector.<host>.`, so one permission (`detector.<host>.>`) confines a host to its own.

/// The stream of alerts, confirmed incidents and model refusals (`detector.*.alert`,
/// `detector.*.incident`, `detector.*.refusal`).
pub const EVENTS_STREAM: &str = "DETECTOR_EVENTS";
/// The stream of heartbeats: the last one per host is kept (`detector.*.heartbeat`).
pub const HEARTBEATS_STREAM: &str = "DETECTOR_HEARTBEATS";

/// What a host publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Alert,
    Incident,
    Heartbeat,
    /// A fleet model this host refused.
    Refusal,
}

impl Kind {
    /// The last subject token.
    pub fn token(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Incident => "incident",
            Kind::Heartbeat => "heartbeat",
            Kind::Refusal => "refusal",
        }
    }
}

/// `detector.<host>.<kind>`.
pub fn subject(host: &str, kind: Kind) -> String {
    format!("detector.{host}.{}", kind.token())
}

/// Every host's subjects of one kind (`detector.*.<kind>`).
pub fn all(kind: Kind) -> String {
    format!("detector.*.{}", kind.token())
}

/// The host a subject belongs to, if it is one of the fleet's.
pub fn host_of(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("detector"), Some(host), Some(_), None) => Some(host),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_per_host() {
        assert_eq!(subject("web-1", Kind::Alert), "detector.web-1.alert");
        assert_eq!(all(Kind::Heartbeat), "detector.*.heartbeat");
        assert_eq!(host_of("detector.web-1.heartbeat"), Some("web-1"));
        assert_eq!(host_of("detector.web-1"), None);
        assert_eq!(host_of("other.web-1.alert"), None);
    }
}

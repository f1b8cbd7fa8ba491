//! What goes on the bus: each event is one JSON object with the host that sent it. Incidents
//! carry feature rows, never packet payloads (the agent never has any).

use serde::{Deserialize, Serialize};

use super::subjects::Kind;

/// One message for the publisher: its subject, its de-duplication id (`Nats-Msg-Id`) and its
/// JSON payload. Also one line of the spool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub kind: Kind,
    pub subject: String,
    pub msg_id: String,
    pub payload: String,
}

/// A confirmed incident as the fleet sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub ts_ns: u64,
    pub family: String,
    /// Distinct flows the operator selected.
    pub flows: usize,
    /// The feature set of `rows` (the live one's name).
    pub feature_set: String,
    /// One feature row per record of the selected flows.
    pub rows: Vec<Vec<f32>>,
    /// The model serving when it was confirmed.
    pub model: String,
    /// A sample of the host's benign rows at the time (recent records of other sources that
    /// raised no alert), for the fleet trainer's adaptation and false-alert check.
    #[serde(default)]
    pub benign: Vec<Vec<f32>>,
}

/// A fleet model the agent would not serve, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub ts_ns: u64,
    /// The fleet version refused.
    pub version: String,
    /// `signature`, `sha256`, `false_alerts`, `model`, `size`, `fetch`, `pointer`.
    pub reason_kind: String,
    pub reason: String,
    /// The model that keeps serving.
    pub serving: String,
}

/// The agent's heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub ts_ns: u64,
    pub uptime_s: u64,
    /// The model serving.
    pub model: String,
    /// The agent's release.
    pub agent_version: String,
    pub records_read: u64,
    pub alerts: u64,
    /// Events the fleet publisher dropped so far (queue full or spool full).
    pub fleet_dropped: u64,
    /// Events waiting in the spool.
    pub spool_entries: u64,
}

/// `value` (a JSON object) with `"host"` set.
pub fn with_host<T: Serialize>(value: &T, host: &str) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(value)?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("host".into(), serde_json::Value::String(host.into()));
    }
    serde_json::to_string(&v)
}

//! The operator's side: `detector fleet init` declares the streams (hosts' credentials may
//! only publish, so they cannot create them), and `detector fleet status` reads the last
//! heartbeat of every host.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, StorageType},
};
use futures_util::TryStreamExt;
use serde::Serialize;

use super::{
    config::FleetSection,
    events::{Heartbeat, Refusal},
    models::{self, Pointer},
    subjects,
};

/// How `fleet init` sizes the streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Copies of each stream (1, or 3 on a three-node cluster).
    pub replicas: usize,
    /// The events stream's size; the oldest go first.
    pub events_bytes: i64,
    /// The events stream's age limit.
    pub events_age: Duration,
    /// A repeated `Nats-Msg-Id` within this window is stored once.
    pub duplicate_window: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_bytes: 1 << 30,
            events_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(600),
        }
    }
}

/// The two streams' configurations.
pub fn stream_configs(l: &StreamLimits) -> [Config; 2] {
    [
        Config {
            name: subjects::EVENTS_STREAM.into(),
            description: Some(
                "detector alerts, confirmed incidents and model refusals, all hosts".into(),
            ),
            subjects: vec![
                subjects::all(subjects::Kind::Alert),
                subjects::all(subjects::Kind::Incident),
                subjects::all(subjects::Kind::Refusal),
            ],
            storage: StorageType::File,
            num_replicas: l.replicas,
            max_bytes: l.events_bytes,
            max_age: l.events_age,
            discard: DiscardPolicy::Old,
            duplicate_window: l.duplicate_window,
            ..Default::default()
        },
        Config {
            name: subjects::HEARTBEATS_STREAM.into(),
            description: Some("detector heartbeats: the last one of each host".into()),
            subjects: vec![subjects::all(subjects::Kind::Heartbeat)],
            storage: StorageType::File,
            num_replicas: l.replicas,
            max_messages_per_subject: 1,
            // A heartbeat is about 300 bytes: room for 10^5 hosts.
            max_bytes: 64 << 20,
            discard: DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        },
    ]
}

/// `detector fleet init`: creates the streams, or updates them to `limits`.
pub async fn init(cfg: &FleetSection, limits: &StreamLimits) -> anyhow::Result<Vec<String>> {
    let js = jetstream::new(connect_now(cfg).await?);
    let mut done = Vec::new();
    for c in stream_configs(limits) {
        let name = c.name.clone();
        js.create_or_update_stream(c)
            .await
            .with_context(|| format!("cannot create or update stream {name}"))?;
        done.push(name);
    }
    done.extend(super::models::init_buckets(&js, limits.replicas).await?);
    Ok(done)
}

/// One host in `detector fleet status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub last_heartbeat_unix_ns: u64,
    pub age_s: f64,
    pub model: String,
    pub agent_version: String,
    pub uptime_s: u64,
    pub alerts: u64,
    pub fleet_dropped: u64,
    pub spool_entries: u64,
    /// Fleet models this host refused (refusals in the events stream).
    pub refusals: u64,
    /// The last of them.
    pub last_refusal: Option<Refusal>,
}

/// `detector fleet status`: the hosts seen (last heartbeat, refusals), by host id; and the
/// current fleet model, if one was published.
pub async fn status(
    cfg: &FleetSection,
) -> anyhow::Result<(BTreeMap<String, HostStatus>, Option<Pointer>)> {
    let js = jetstream::new(connect_now(cfg).await?);
    let beats = stream(&js, subjects::HEARTBEATS_STREAM).await?;
    let heartbeats = last_per_subject::<Heartbeat>(&beats, subjects::Kind::Heartbeat).await?;
    let events = stream(&js, subjects::EVENTS_STREAM).await?;
    let refusals = last_per_subject::<Refusal>(&events, subjects::Kind::Refusal).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut out = BTreeMap::new();
    for (host, (_, hb)) in heartbeats {
        out.insert(
            host.clone(),
            HostStatus {
                host,
                last_heartbeat_unix_ns: hb.ts_ns,
                age_s: now.saturating_sub(hb.ts_ns) as f64 / 1e9,
                model: hb.model,
                agent_version: hb.agent_version,
                uptime_s: hb.uptime_s,
                alerts: hb.alerts,
                fleet_dropped: hb.fleet_dropped,
                spool_entries: hb.spool_entries,
                refusals: 0,
                last_refusal: None,
            },
        );
    }
    // A host that refused models but has no heartbeat (yet, or any more) is listed too, with
    // no heartbeat fields.
    for (host, (n, r)) in refusals {
        let h = out.entry(host.clone()).or_insert_with(|| HostStatus {
            host,
            ..Default::default()
        });
        h.refusals = n;
        h.last_refusal = Some(r);
    }
    Ok((out, models::current(&js).await))
}

/// One of the fleet's streams; missing, an error that says to run `fleet init`.
pub async fn stream(
    js: &jetstream::Context,
    name: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(name)
        .await
        .with_context(|| format!("no stream {name} (run `detector fleet init`)"))
}

/// Per host: how many messages of `kind` the stream holds, and the last one.
async fn last_per_subject<T: serde::de::DeserializeOwned>(
    stream: &jetstream::stream::Stream,
    kind: subjects::Kind,
) -> anyhow::Result<BTreeMap<String, (u64, T)>> {
    let mut seen = Vec::new();
    let mut list = stream
        .info_with_subjects(subjects::all(kind))
        .await
        .with_context(|| format!("cannot list the {} subjects", kind.token()))?;
    while let Some((subject, n)) = list.try_next().await.context("subjects")? {
        seen.push((subject, n as u64));
    }
    let mut out = BTreeMap::new();
    for (subject, n) in seen {
        let Some(host) = subjects::host_of(&subject).map(str::to_string) else {
            continue;
        };
        let msg = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("{subject}: {e}");
                continue;
            }
        };
        let Ok(v) = serde_json::from_slice::<T>(&msg.payload) else {
            tracing::warn!("{subject}: not a {}; skipped", kind.token());
            continue;
        };
        out.insert(host, (n, v));
    }
    Ok(out)
}

/// A connection for a command: fails (naming the servers) when none answers within 10 s.
pub async fn connect_now(cfg: &FleetSection) -> anyhow::Result<async_nats::Client> {
    anyhow::ensure!(
        cfg.enabled(),
        "fleet.servers is empty: name the NATS servers in [fleet]"
    );
    let client = super::connect::connect(cfg, "detector-fleet-cli", None).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no NATS server answered within 10 s: {:?}",
            cfg.servers
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

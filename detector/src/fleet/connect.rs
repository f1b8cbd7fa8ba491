//! A NATS connection from `[fleet]`: servers, credentials or NKey, CA; it keeps retrying in
//! the background (also when the servers are down at start) and reports what the servers say.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::{ConnectOptions, Event, ServerAddr};
use tracing::{error, info, warn};

use super::{config::FleetSection, FleetMetrics};

/// Connects (or starts connecting) as `name`. Errors are about local files (credentials, seed,
/// CA); an unreachable server is not an error here.
pub async fn connect(
    cfg: &FleetSection,
    name: &str,
    metrics: Option<Arc<FleetMetrics>>,
) -> anyhow::Result<async_nats::Client> {
    let mut opts = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5));
    if !cfg.credentials.as_os_str().is_empty() {
        opts = opts
            .credentials_file(&cfg.credentials)
            .await
            .with_context(|| {
                format!(
                    "fleet.credentials: cannot read {}",
                    cfg.credentials.display()
                )
            })?;
    }
    if !cfg.nkey_seed_file.as_os_str().is_empty() {
        let seed = std::fs::read_to_string(&cfg.nkey_seed_file).with_context(|| {
            format!(
                "fleet.nkey_seed_file: cannot read {}",
                cfg.nkey_seed_file.display()
            )
        })?;
        opts = opts.nkey(seed.trim().to_string());
    }
    if !cfg.tls_ca.as_os_str().is_empty() {
        opts = opts
            .add_root_certificates(cfg.tls_ca.clone())
            .require_tls(true);
    }
    opts = opts.event_callback(move |ev| {
        let metrics = metrics.clone();
        async move { on_event(ev, metrics.as_deref()) }
    });
    let addrs = cfg
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .context("fleet.servers")?;
    opts.connect(addrs)
        .await
        .context("cannot start the NATS connection")
}

/// What the connection says, logged and counted.
fn on_event(ev: Event, metrics: Option<&FleetMetrics>) {
    match ev {
        Event::Connected => {
            info!("fleet: connected to NATS");
            if let Some(m) = metrics {
                m.connected.set(1);
            }
        }
        Event::Disconnected => {
            warn!("fleet: disconnected from NATS; events are spooled until it is back");
            if let Some(m) = metrics {
                m.connected.set(0);
            }
        }
        Event::ServerError(e) => {
            let text = e.to_string();
            if text.to_lowercase().contains("permissions violation") {
                error!("fleet: the NATS server refused a publish: {text} (fleet.credentials allow only this host's subjects)");
                if let Some(m) = metrics {
                    m.permission_errors.inc();
                }
            } else {
                error!("fleet: NATS server error: {text}");
            }
            if let Some(m) = metrics {
                m.set_last_error(text);
            }
        }
        Event::ClientError(e) => {
            warn!("fleet: NATS client error: {e}");
            if let Some(m) = metrics {
                m.set_last_error(e.to_string());
            }
        }
        other => info!("fleet: NATS {other}"),
    }
}

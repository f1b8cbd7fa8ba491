//! The agent follows the fleet model: it watches the pointer (`DETECTOR_MODEL/current`),
//! fetches each new version's object, checks its size, sha256 and signature and that it loads,
//! and hands the result to the agent's loop: a verified model, which the loop checks against
//! this host's own benign rows before it swaps, or why it was refused, which the loop logs and
//! publishes to `detector.<host>.refusal` (with the model that keeps serving).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{
    config::FleetSection,
    models::{self, Pointer, Rejected},
    Sender,
};
use crate::model::Model;

/// A verified fleet model, for the agent's own check.
pub struct Offer {
    pub pointer: Pointer,
    pub model: Model,
}

/// A fleet model version refused before the agent's own check.
pub struct Refused {
    pub version: String,
    pub why: Rejected,
}

/// What the follower hands to the agent's loop.
pub type Checked = Result<Offer, Refused>;

/// Starts following; offers go to `tx`. Ends when `tx` is closed (or aborted).
pub fn spawn(
    cfg: &FleetSection,
    host: &str,
    public_key: Vec<u8>,
    tx: mpsc::Sender<Checked>,
) -> JoinHandle<()> {
    let cfg = cfg.clone();
    let name = format!("detector-{host}-models");
    tokio::spawn(async move {
        let client = match super::connect::connect(&cfg, &name, None).await {
            Ok(c) => c,
            Err(e) => {
                warn!("fleet: not following fleet models: {e:#}");
                return;
            }
        };
        let js = async_nats::jetstream::new(client);
        let mut last: Option<(String, String)> = None;
        let mut said = false;
        while !tx.is_closed() {
            if let Err(e) = watch(&js, &public_key, &tx, &mut last).await {
                if !said {
                    info!("fleet: waiting for the fleet model pointer: {e:#}");
                    said = true;
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

/// Watches the pointer until the watch ends; each new version is checked and offered, or
/// refused.
async fn watch(
    js: &async_nats::jetstream::Context,
    public_key: &[u8],
    tx: &mpsc::Sender<Checked>,
    last: &mut Option<(String, String)>,
) -> anyhow::Result<()> {
    let kvs = js.get_key_value(models::POINTER_BUCKET).await?;
    let objects = js.get_object_store(models::MODELS_BUCKET).await?;
    let mut w = kvs.watch(models::CURRENT_KEY).await?;
    info!(
        "fleet: following the fleet model ({}/{})",
        models::POINTER_BUCKET,
        models::CURRENT_KEY
    );
    while let Some(entry) = w.next().await {
        let entry = entry?;
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            continue;
        }
        let pointer = match models::parse_pointer(&entry.value) {
            Ok(p) => p,
            Err(why) => {
                let version = format!("revision {}", entry.revision);
                if tx.send(Err(Refused { version, why })).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let id = (pointer.version.clone(), pointer.sha256.clone());
        if last.as_ref() == Some(&id) {
            continue;
        }
        *last = Some(id);
        info!(version = %pointer.version, "fleet: a new fleet model; checking it");
        let checked = match models::fetch(&objects, &pointer.object).await {
            Ok(bytes) => {
                let p = pointer.clone();
                let key = public_key.to_vec();
                tokio::task::spawn_blocking(move || models::verify(&p, &bytes, &key))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Rejected::Model {
                            object: pointer.object.clone(),
                            error: e.to_string(),
                        })
                    })
            }
            Err(e) => Err(e),
        };
        let checked = match checked {
            Ok(model) => Ok(Offer { pointer, model }),
            Err(why) => Err(Refused {
                version: pointer.version,
                why,
            }),
        };
        if tx.send(checked).await.is_err() {
            return Ok(());
        }
    }
    anyhow::bail!("the pointer watch ended")
}

/// Logs a refusal and publishes it to `detector.<host>.refusal`; `serving` keeps serving.
pub fn refuse(sender: &Sender, version: &str, why: &Rejected, serving: &str) {
    warn!(%version, kind = why.kind(), "fleet: model refused, the model in force keeps serving: {why}");
    sender.refusal(&super::events::Refusal {
        kind: "refusal".into(),
        host: sender.host().to_string(),
        ts_ns: crate::clock::TimeBase::monotonic().to_unix_ns(crate::clock::monotonic_ns()),
        version: version.to_string(),
        reason_kind: why.kind().to_string(),
        reason: why.to_string(),
        serving: serving.to_string(),
    });
}

//! Fleet models: `detector fleet keygen` (the Ed25519 signing key), `detector fleet train` (the
//! confirmed incidents of all hosts adapt the fleet model with the agent's own adaptation code;
//! the model is signed, put in a JetStream object store, and a key-value pointer moved to it),
//! `detector fleet rollback` (the pointer moved back), and what an agent checks before it serves
//! a fleet model (size, sha256, signature, a model file that loads). See docs/fleet.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    kv, object_store,
    stream::{self, DiscardPolicy, StorageType},
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use futures_util::StreamExt;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{events::IncidentEvent, subjects};
use crate::{
    features::{LIVE_COUNT, LIVE_FEATURE_SET},
    incidents::{adapt_model, Support},
    model::Model,
};

/// The key-value bucket of the pointer (stream `KV_DETECTOR_MODEL`).
pub const POINTER_BUCKET: &str = "DETECTOR_MODEL";
/// The object store of the model files (stream `OBJ_DETECTOR_MODELS`).
pub const MODELS_BUCKET: &str = "DETECTOR_MODELS";
/// The key agents watch: the model every host should serve.
pub const CURRENT_KEY: &str = "current";
/// The trainer's own state (next version number, incidents already considered).
pub const TRAINER_KEY: &str = "trainer";
/// Each published version's pointer is also kept under `version.<version>` (rollback).
pub const VERSION_PREFIX: &str = "version.";
/// A model object larger than this is refused before it is read.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;
/// Attack rows of one family that go into one adaptation (an even spread of them).
const MAX_POSITIVES: usize = 4096;
/// Benign rows (pooled from the incidents' hosts) for the adaptation and its check.
const MAX_BENIGN: usize = 4000;

/// The pointer: which model every host should serve, and how to check it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    /// `fleet-<n>`.
    pub version: String,
    /// The object's name in `DETECTOR_MODELS`.
    pub object: String,
    /// sha256 of the model file (hex).
    pub sha256: String,
    /// Ed25519 signature (base64) of [`signed_message`]`(version, sha256)`.
    pub signature: String,
    /// The version it was adapted from (None: the base model).
    pub parent: Option<String>,
    /// The incidents it learned from (`<host>@<stream sequence>`), this version's only.
    pub incidents: Vec<String>,
    /// The families those incidents were confirmed as.
    pub families: Vec<String>,
    pub bytes: u64,
    pub created_unix_ns: u64,
}

impl Pointer {
    /// The pointer to `bytes` as version `version` (object `<version>.safetensors`), signed
    /// with `key`; no parent, incidents or families yet.
    pub fn signed(key: &SigningKey, version: &str, bytes: &[u8]) -> Self {
        let sha256 = sha256_hex(bytes);
        Pointer {
            version: version.into(),
            object: format!("{version}.safetensors"),
            signature: key.sign(version, &sha256),
            sha256,
            parent: None,
            incidents: vec![],
            families: vec![],
            bytes: bytes.len() as u64,
            created_unix_ns: crate::clock::TimeBase::monotonic()
                .to_unix_ns(crate::clock::monotonic_ns()),
        }
    }
}

/// What the trainer remembers between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The number of the next version.
    pub next_version: u64,
    /// Incidents up to this stream sequence were considered (learned, or refused by the
    /// trainer's false-alert check); a rollback does not make them new again.
    pub considered_through: u64,
}

/// What a signature covers: the version and the file's digest, so that a valid signature of
/// one version cannot be replayed under another name.
pub fn signed_message(version: &str, sha256: &str) -> Vec<u8> {
    format!("detector-fleet-model/1\n{version}\n{sha256}\n").into_bytes()
}

/// sha256 (hex).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The trainer's signing key.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new key as PKCS#8 (base64 text, as `fleet keygen` writes it).
    pub fn generate() -> anyhow::Result<String> {
        let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        Ok(B64.encode(doc.as_ref()))
    }

    /// Reads a key file written by `fleet keygen`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signing key {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// A key from its text (base64 PKCS#8).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let der = B64
            .decode(text.trim())
            .context("not a signing key: not base64 (write one with `detector fleet keygen`)")?;
        let kp = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 signing key: {e}"))?;
        Ok(Self(kp))
    }

    /// The public key (base64), for agents' `fleet.model_public_key`.
    pub fn public(&self) -> String {
        B64.encode(self.0.public_key().as_ref())
    }

    /// The signature (base64) of `version` with file digest `sha256`.
    pub fn sign(&self, version: &str, sha256: &str) -> String {
        B64.encode(self.0.sign(&signed_message(version, sha256)).as_ref())
    }
}

/// An Ed25519 public key from its base64 text (32 bytes).
pub fn parse_public_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let raw = B64
        .decode(text.trim())
        .context("not base64 (the public key `detector fleet keygen` prints)")?;
    ensure!(
        raw.len() == 32,
        "an Ed25519 public key is 32 bytes, this one {}",
        raw.len()
    );
    Ok(raw)
}

/// Why a fleet model is not served.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("the pointer is not a model pointer: {0}")]
    Pointer(String),
    #[error("the object {object} is {bytes} bytes, more than the {max} a model may be")]
    TooLarge {
        object: String,
        bytes: u64,
        max: u64,
    },
    #[error("cannot fetch the object {object}: {error}")]
    Fetch { object: String, error: String },
    #[error("sha256 mismatch: the pointer says {want}, the object {object} is {got}")]
    Digest {
        object: String,
        want: String,
        got: String,
    },
    #[error("bad signature for {version}: {why}")]
    Signature { version: String, why: String },
    #[error("the object {object} is not a usable model: {error}")]
    Model { object: String, error: String },
    #[error("{0}")]
    FalseAlerts(String),
}

impl Rejected {
    /// A short name for the refusal's kind (`signature`, `sha256`, `false_alerts`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejected::Pointer(_) => "pointer",
            Rejected::TooLarge { .. } => "size",
            Rejected::Fetch { .. } => "fetch",
            Rejected::Digest { .. } => "sha256",
            Rejected::Signature { .. } => "signature",
            Rejected::Model { .. } => "model",
            Rejected::FalseAlerts(_) => "false_alerts",
        }
    }
}

/// A pointer from a key-value entry.
pub fn parse_pointer(value: &[u8]) -> Result<Pointer, Rejected> {
    let p: Pointer = serde_json::from_slice(value).map_err(|e| Rejected::Pointer(e.to_string()))?;
    if p.version.is_empty() || p.object.is_empty() {
        return Err(Rejected::Pointer("empty version or object".into()));
    }
    Ok(p)
}

/// Checks a fetched model file against its pointer and the trainer's public key, and loads it.
pub fn verify(p: &Pointer, bytes: &[u8], public_key: &[u8]) -> Result<Model, Rejected> {
    let got = sha256_hex(bytes);
    if !got.eq_ignore_ascii_case(&p.sha256) {
        return Err(Rejected::Digest {
            object: p.object.clone(),
            want: p.sha256.clone(),
            got,
        });
    }
    let bad = |why: String| Rejected::Signature {
        version: p.version.clone(),
        why,
    };
    let sig = B64
        .decode(p.signature.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signed_message(&p.version, &p.sha256), &sig)
        .map_err(|_| bad("does not verify with fleet.model_public_key".into()))?;
    let m = Model::from_bytes(bytes, &p.object).map_err(|e| Rejected::Model {
        object: p.object.clone(),
        error: e.to_string(),
    })?;
    m.validate().map_err(|e| Rejected::Model {
        object: p.object.clone(),
        error: e,
    })?;
    m.input(LIVE_FEATURE_SET).map_err(|e| Rejected::Model {
        object: p.object.clone(),
        error: e.to_string(),
    })?;
    Ok(m)
}

/// Reads a model object, refusing one larger than [`MAX_MODEL_BYTES`].
pub async fn fetch(store: &object_store::ObjectStore, object: &str) -> Result<Vec<u8>, Rejected> {
    let err = |e: String| Rejected::Fetch {
        object: object.into(),
        error: e,
    };
    let mut obj = store.get(object).await.map_err(|e| err(e.to_string()))?;
    let size = obj.info().size as u64;
    if size > MAX_MODEL_BYTES {
        return Err(Rejected::TooLarge {
            object: object.into(),
            bytes: size,
            max: MAX_MODEL_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    obj.read_to_end(&mut bytes)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(bytes)
}

/// The buckets' streams (`fleet init`). The key-value stream is declared as a plain stream
/// with the settings a key-value bucket has (`$KV.<bucket>.>`, history per key, rollups,
/// direct gets): async-nats's `create_key_value` first asks for the account's limits, and
/// nats-server 2.9's answer to that does not parse in async-nats 0.52.
pub fn bucket_configs(replicas: usize) -> (stream::Config, object_store::Config) {
    (
        stream::Config {
            name: format!("KV_{POINTER_BUCKET}"),
            description: Some("detector: the fleet model pointer and its versions".into()),
            subjects: vec![format!("$KV.{POINTER_BUCKET}.>")],
            max_messages_per_subject: 16,
            max_message_size: 1 << 20,
            storage: StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
        object_store::Config {
            bucket: MODELS_BUCKET.into(),
            description: Some("detector: signed fleet model files".into()),
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
}

/// `fleet init`'s part: declares the buckets' streams (the key-value stream's limits are
/// updated when it exists; the object store is created when missing).
pub async fn init_buckets(js: &jetstream::Context, replicas: usize) -> anyhow::Result<Vec<String>> {
    let (k, o) = bucket_configs(replicas);
    let kv_stream = k.name.clone();
    js.create_or_update_stream(k)
        .await
        .with_context(|| format!("cannot create the key-value bucket {POINTER_BUCKET}"))?;
    if js.get_object_store(MODELS_BUCKET).await.is_err() {
        js.create_object_store(o)
            .await
            .with_context(|| format!("cannot create the object store {MODELS_BUCKET}"))?;
    }
    Ok(vec![kv_stream, format!("OBJ_{MODELS_BUCKET}")])
}

/// What a host's user may publish: its own subjects, and the JetStream API requests that read
/// the pointer (get, watch) and the model objects, nothing that writes them (`$KV.` and `$O.`
/// subjects, purges, deletes of streams). The trainer's user needs the whole account.
pub fn host_publish_allow(host: &str) -> Vec<String> {
    let mut allow = vec![format!("detector.{host}.>")];
    for stream in [
        format!("KV_{POINTER_BUCKET}"),
        format!("OBJ_{MODELS_BUCKET}"),
    ] {
        for api in [
            "STREAM.INFO",
            "STREAM.MSG.GET",
            "DIRECT.GET",
            "CONSUMER.CREATE",
            "CONSUMER.INFO",
            "CONSUMER.DELETE",
        ] {
            allow.push(format!("$JS.API.{api}.{stream}"));
            allow.push(format!("$JS.API.{api}.{stream}.>"));
        }
        // Flow control replies of the ordered consumers that deliver watches and chunks.
        allow.push(format!("$JS.FC.{stream}.>"));
    }
    allow
}

/// `detector fleet keygen`: writes the signing key (mode 0600, never over an existing file)
/// and `<key>.pub`; returns the public key.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = SigningKey::generate()?;
    let public = SigningKey::parse(&text)?.public();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok(public)
}

/// What `fleet train` did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// The version published, if any.
    pub published: Option<Pointer>,
    /// The version it started from (None: the base model).
    pub parent: Option<String>,
    /// New incidents read.
    pub incidents: usize,
    /// Incidents skipped as unreadable (with why).
    pub skipped: Vec<String>,
    /// Families adapted, and refused (with why).
    pub adapted: Vec<String>,
    pub refused: BTreeMap<String, String>,
    pub seconds: f64,
}

/// `detector fleet train`: the incidents no model has considered yet adapt the current fleet
/// model (or `base` when there is none), one adaptation per family, with the agent's own
/// adaptation and false-alert check (benign rows pooled from the incidents' hosts); the result
/// is signed and published, and the pointer moved. Nothing new: nothing published.
pub async fn train(
    client: async_nats::Client,
    key: &SigningKey,
    base: Model,
    fpr_budget: f64,
) -> anyhow::Result<TrainReport> {
    let start = std::time::Instant::now();
    let js = jetstream::new(client);
    let (kvs, objects) = buckets(&js).await?;
    let mut state: TrainerState = match kvs.get(TRAINER_KEY).await? {
        Some(v) => serde_json::from_slice(&v)
            .with_context(|| format!("{POINTER_BUCKET}/{TRAINER_KEY} is not trainer state"))?,
        None => TrainerState {
            next_version: 1,
            considered_through: 0,
        },
    };
    let current = match kvs.get(CURRENT_KEY).await? {
        Some(v) => {
            Some(parse_pointer(&v).with_context(|| format!("{POINTER_BUCKET}/{CURRENT_KEY}"))?)
        }
        None => None,
    };
    let (incidents, last_seq, skipped) = read_incidents(&js, state.considered_through).await?;
    let mut report = TrainReport {
        published: None,
        parent: current.as_ref().map(|p| p.version.clone()),
        incidents: incidents.len(),
        skipped,
        adapted: Vec::new(),
        refused: BTreeMap::new(),
        seconds: 0.0,
    };
    if incidents.is_empty() {
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut model = match &current {
        None => base,
        Some(p) => {
            let bytes = fetch(&objects, &p.object).await?;
            let public = parse_public_key(&key.public())?;
            verify(p, &bytes, &public).with_context(|| {
                format!(
                    "the current fleet model {} does not verify with this signing key",
                    p.version
                )
            })?
        }
    };
    // Benign rows pooled over every incident's host, evenly spread.
    let benign_all: Vec<&[f32]> = incidents
        .iter()
        .flat_map(|(_, i)| i.benign.iter().map(Vec::as_slice))
        .collect();
    let benign = spread(&benign_all, MAX_BENIGN);
    let mut families: BTreeMap<&str, Vec<&(String, IncidentEvent)>> = BTreeMap::new();
    for inc in &incidents {
        families.entry(inc.1.family.as_str()).or_default().push(inc);
    }
    let mut learned = Vec::new();
    for (family, list) in families {
        let rows: Vec<&[f32]> = list
            .iter()
            .flat_map(|(_, i)| i.rows.iter().map(Vec::as_slice))
            .collect();
        let support = Support {
            positives: spread(&rows, MAX_POSITIVES),
            flows: list.iter().map(|(_, i)| i.flows).sum(),
            benign: benign.clone(),
        };
        let m = model.clone();
        let fam = family.to_string();
        let done = tokio::task::spawn_blocking(move || adapt_model(&m, &support, &fam, fpr_budget))
            .await
            .context("the adaptation thread failed")?;
        match done {
            Ok(a) => {
                model = a.model;
                report.adapted.push(family.to_string());
                learned.extend(list.iter().map(|(id, _)| id.clone()));
            }
            Err(e) => {
                tracing::warn!(%family, "fleet train: {e:#}");
                report.refused.insert(family.to_string(), format!("{e:#}"));
            }
        }
    }
    if learned.is_empty() {
        // Every family refused: those incidents stay new for the next run (more benign rows
        // from more hosts may let them through).
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let bytes = model
        .to_bytes()
        .context("cannot serialise the fleet model")?;
    let pointer = Pointer {
        parent: current.as_ref().map(|p| p.version.clone()),
        incidents: learned,
        families: report.adapted.clone(),
        ..Pointer::signed(key, &format!("fleet-{}", state.next_version), &bytes)
    };
    objects
        .put(pointer.object.as_str(), &mut bytes.as_slice())
        .await
        .with_context(|| format!("cannot put {} in {MODELS_BUCKET}", pointer.object))?;
    state.next_version += 1;
    state.considered_through = last_seq;
    let json = serde_json::to_vec(&pointer)?;
    kvs.put(
        format!("{VERSION_PREFIX}{}", pointer.version),
        json.clone().into(),
    )
    .await
    .context("cannot record the version")?;
    kvs.put(TRAINER_KEY, serde_json::to_vec(&state)?.into())
        .await
        .context("cannot save the trainer state")?;
    kvs.put(CURRENT_KEY, json.into())
        .await
        .context("cannot move the pointer")?;
    report.published = Some(pointer);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// `detector fleet rollback [--to VERSION]`: the pointer moves to `to` (default: the current
/// version's parent); agents follow through the same checks as for a new model.
pub async fn rollback(client: async_nats::Client, to: Option<&str>) -> anyhow::Result<Pointer> {
    let js = jetstream::new(client);
    let (kvs, _) = buckets(&js).await?;
    let current = match kvs.get(CURRENT_KEY).await? {
        Some(v) => parse_pointer(&v).with_context(|| format!("{POINTER_BUCKET}/{CURRENT_KEY}"))?,
        None => bail!("no fleet model has been published: nothing to roll back"),
    };
    let target = match to {
        Some(v) => v.to_string(),
        None => current.parent.clone().with_context(|| {
            format!(
                "{} is the fleet's first model (adapted from the base model): give --to VERSION",
                current.version
            )
        })?,
    };
    ensure!(
        target != current.version,
        "{target} is already the current fleet model"
    );
    let Some(v) = kvs.get(format!("{VERSION_PREFIX}{target}")).await? else {
        bail!("no fleet model version {target} (see `detector fleet status`)");
    };
    let p =
        parse_pointer(&v).with_context(|| format!("{POINTER_BUCKET}/{VERSION_PREFIX}{target}"))?;
    kvs.put(CURRENT_KEY, v)
        .await
        .context("cannot move the pointer")?;
    Ok(p)
}

/// The current pointer, if any (`fleet status`).
pub async fn current(js: &jetstream::Context) -> Option<Pointer> {
    let kvs = js.get_key_value(POINTER_BUCKET).await.ok()?;
    let v = kvs.get(CURRENT_KEY).await.ok()??;
    parse_pointer(&v).ok()
}

async fn buckets(
    js: &jetstream::Context,
) -> anyhow::Result<(kv::Store, object_store::ObjectStore)> {
    let kvs = js.get_key_value(POINTER_BUCKET).await.with_context(|| {
        format!("no key-value bucket {POINTER_BUCKET} (run `detector fleet init`)")
    })?;
    let objects = js
        .get_object_store(MODELS_BUCKET)
        .await
        .with_context(|| format!("no object store {MODELS_BUCKET} (run `detector fleet init`)"))?;
    Ok((kvs, objects))
}

/// Confirmed incidents after stream sequence `after`, as (`<host>@<seq>`, incident); the last
/// sequence read; and the messages skipped (unreadable, or rows of another width).
async fn read_incidents(
    js: &jetstream::Context,
    after: u64,
) -> anyhow::Result<(Vec<(String, IncidentEvent)>, u64, Vec<String>)> {
    let stream = super::streams::stream(js, subjects::EVENTS_STREAM).await?;
    let mut consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subjects::all(subjects::Kind::Incident),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("cannot read the incidents")?;
    let pending = consumer
        .info()
        .await
        .context("cannot read the incidents")?
        .num_pending;
    let (mut out, mut skipped, mut last) = (Vec::new(), Vec::new(), after);
    if pending == 0 {
        return Ok((out, last, skipped));
    }
    let mut msgs = consumer
        .messages()
        .await
        .context("cannot read the incidents")?
        .take(pending as usize);
    loop {
        // The server said how many there are; one that stops delivering is an error, not a
        // wait without end.
        let next = tokio::time::timeout(Duration::from_secs(30), msgs.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "reading the incidents: nothing for 30 s after {} of {pending}",
                    out.len() + skipped.len()
                )
            })?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| anyhow::anyhow!("reading the incidents: {e}"))?;
        let seq = m
            .info()
            .map_err(|e| anyhow::anyhow!("an incident without stream info: {e}"))?
            .stream_sequence;
        last = last.max(seq);
        let host = subjects::host_of(&m.subject).unwrap_or("?").to_string();
        let id = format!("{host}@{seq}");
        match serde_json::from_slice::<IncidentEvent>(&m.payload) {
            Ok(i) if i.feature_set != LIVE_FEATURE_SET => skipped.push(format!(
                "{id}: feature set {}, not {LIVE_FEATURE_SET}",
                i.feature_set
            )),
            Ok(i)
                if i.rows.is_empty()
                    || i.rows
                        .iter()
                        .chain(&i.benign)
                        .any(|r| r.len() != LIVE_COUNT) =>
            {
                skipped.push(format!("{id}: no rows, or rows not {LIVE_COUNT} wide"))
            }
            Ok(i) => out.push((id, i)),
            Err(e) => skipped.push(format!("{id}: not an incident: {e}")),
        }
    }
    Ok((out, last, skipped))
}

/// At most `max` of `rows`, evenly spread, concatenated.
fn spread(rows: &[&[f32]], max: usize) -> Vec<f32> {
    let step = (rows.len() / max.max(1)).max(1);
    rows.iter()
        .step_by(step)
        .take(max)
        .flat_map(|r| r.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &SigningKey, bytes: &[u8]) -> Pointer {
        Pointer::signed(key, "fleet-1", bytes)
    }

    /// A signed model verifies and loads; a flipped byte, another key, a signature moved to
    /// another version, garbage and bad keys are each refused with their own reason.
    #[test]
    fn verification_refuses_what_it_should_and_names_why() {
        let key = SigningKey::parse(&SigningKey::generate().unwrap()).unwrap();
        let public = parse_public_key(&key.public()).unwrap();
        let (base, _) = crate::model::serving::base_model("").unwrap();
        let bytes = base.to_bytes().unwrap();
        let p = signed(&key, &bytes);
        assert!(verify(&p, &bytes, &public).is_ok());

        let mut corrupt = bytes.clone();
        corrupt[bytes.len() / 2] ^= 1;
        let e = verify(&p, &corrupt, &public).unwrap_err();
        assert_eq!(e.kind(), "sha256", "{e}");

        let other = SigningKey::parse(&SigningKey::generate().unwrap()).unwrap();
        let e = verify(&p, &bytes, &parse_public_key(&other.public()).unwrap()).unwrap_err();
        assert_eq!(e.kind(), "signature", "{e}");

        let mut renamed = p.clone();
        renamed.version = "fleet-9".into();
        let e = verify(&renamed, &bytes, &public).unwrap_err();
        assert_eq!(e.kind(), "signature", "a signature binds its version: {e}");

        let mut garbled = p.clone();
        garbled.signature = "!!".into();
        assert!(verify(&garbled, &bytes, &public)
            .unwrap_err()
            .to_string()
            .contains("not base64"));

        // Signed garbage is still not a model.
        let junk = b"not a model".to_vec();
        let pj = signed(&key, &junk);
        assert_eq!(verify(&pj, &junk, &public).unwrap_err().kind(), "model");

        assert!(parse_pointer(b"{").is_err());
        assert!(parse_public_key("AAAA")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        assert!(SigningKey::parse("bm90IGEga2V5").is_err());
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("detector-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.key");
        let public = keygen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SigningKey::load(&path).unwrap().public(), public);
        assert_eq!(
            std::fs::read_to_string(dir.join("fleet.key.pub"))
                .unwrap()
                .trim(),
            public
        );
        assert!(keygen(&path).is_err(), "never over an existing key");
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Detection: flow records in, alerts and drop decisions out. Records are featurised (flow +
//! context) as they arrive, batched (by size or deadline, whichever comes first), scored by the
//! model, and judged by the policy. The live agent and `detector replay --detect` both run this
//! code; only the [`Actions`] differ (the kernel blocklist, or shadow-only output).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use detector_common::{
    block::BlockKey,
    flow::{FlowKey, FlowState, Reason},
};
use serde::Serialize;

use crate::{
    blocklist::{key_for, Block},
    clock::TimeBase,
    features::{self, Featurizer, LIVE_COUNT, LIVE_FEATURE_SET},
    metrics::Metrics,
    model::{Contribution, Model, Pipeline, Score, ScorePath},
    policy::{Candidate, Decision, DropDecision, DropOutcome, Policy},
    recent::{unit_embeddings, ExemplarIndex, Recent, DISMISSAL_SIMILARITY, FAMILY_SIMILARITY},
    record::{endpoints, FlowJson, ProcessRef},
};

/// Batching and alert detail.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    pub batch_size: usize,
    pub batch_deadline: Duration,
    /// Features named in each alert.
    pub top_features: usize,
    /// Records kept for incidents to refer to.
    pub recent: usize,
    /// Offline: drops are reported as shadow drops, never inserted.
    pub forced_shadow: bool,
    /// Per-source and per-service context windows.
    pub context: crate::context::ContextConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            batch_deadline: Duration::from_millis(5),
            top_features: 5,
            recent: 50_000,
            forced_shadow: false,
            context: crate::context::ContextConfig::default(),
        }
    }
}

/// A model as it serves: the model, the version that names it, and the path it scores on.
#[derive(Clone)]
pub struct Serving {
    pub model: Arc<Model>,
    pub version: String,
    pub path: ScorePath,
}

/// An alert event (one JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct AlertJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    /// Unix ns of the record that raised it.
    pub ts_ns: u64,
    pub score: f32,
    pub probability: Option<f32>,
    pub novelty: Option<f32>,
    /// The confirmed-incident family it resembles most, or "unknown".
    pub family: String,
    pub model_version: String,
    /// "alert", "drop" or "shadow_drop".
    pub action: &'static str,
    pub drop: Option<DropDecision>,
    /// Alerts for this source held back by the cooldown since its last alert.
    pub suppressed: u64,
    pub top_features: Vec<Contribution>,
    pub flow: FlowJson,
}

/// Where decisions take effect.
pub trait Actions {
    /// True when `key` has an active blocklist entry.
    fn blocked(&self, key: &BlockKey) -> bool;
    /// Inserts a blocklist entry (only for `Dropped` decisions).
    fn block(&mut self, block: Block) -> anyhow::Result<()>;
    /// Writes an alert.
    fn alert(&mut self, alert: &AlertJson) -> anyhow::Result<()>;
    /// The process owning the flow's local socket, for an alert whose record came without one
    /// (the agent looks processes up per record only when it writes records).
    fn process_of(&self, _key: &FlowKey) -> Option<ProcessRef> {
        None
    }
}

/// How many records ahead the ring of recent records is prefetched (`prefetch_recent`).
const RECENT_AHEAD: usize = 8;

/// Asks the CPU to bring every 64-byte cache line that the `len` bytes at `p` touch into L1. A
/// hint: it never faults, whatever `p` is.
#[inline(always)]
fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // From the line that holds the first byte: the bytes need not start on a line.
        let first = p.wrapping_sub(p as usize % 64);
        let lines = (p as usize % 64 + len).div_ceil(64);
        for i in 0..lines {
            // SAFETY: a prefetch has no architectural effect and cannot fault; SSE is part of
            // x86_64. `wrapping_add` keeps the pointer arithmetic defined.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    first.wrapping_add(i * 64).cast(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Records featurised and waiting to be scored, in arrival order: what [`Detector::push`]
/// queues. `detector replay --detect` also fills batches on a thread of its own, with the
/// detector's [`Featurizer`] ([`Detector::take_featurizer`]), for [`Detector::score_batch`].
#[derive(Default)]
pub struct Batch {
    pending: Vec<Pending>,
    /// [`LIVE_COUNT`] raw features per record.
    values: Vec<f32>,
    /// When the oldest record was read (the batch's deadline runs from it).
    oldest: Option<Instant>,
}

impl Batch {
    /// An empty batch with room for `n` records.
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            pending: Vec::with_capacity(n),
            values: Vec::with_capacity(n * LIVE_COUNT),
            oldest: None,
        }
    }

    /// Featurises one record read at `read_at` (the start of its scoring latency) with
    /// `featurizer` and queues it.
    pub fn push(
        &mut self,
        featurizer: &mut Featurizer,
        key: &FlowKey,
        state: &FlowState,
        reason: Reason,
        process: Option<ProcessRef>,
        read_at: Instant,
    ) {
        let start = self.values.len();
        self.values.resize(start + LIVE_COUNT, 0.0);
        let evidence = featurizer.features(key, state, reason, &mut self.values[start..]);
        self.oldest.get_or_insert(read_at);
        self.pending.push(Pending {
            key: *key,
            state: *state,
            reason,
            process,
            read_at,
            evidence,
        });
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when no record waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Empties the batch, keeping its allocations.
    fn clear(&mut self) {
        self.pending.clear();
        self.values.clear();
        self.oldest = None;
    }
}

struct Pending {
    key: FlowKey,
    state: FlowState,
    reason: Reason,
    process: Option<ProcessRef>,
    read_at: Instant,
    /// Packets and neighbouring flows the score rests on (see [`Featurizer::features`]).
    evidence: u64,
}

/// A confirmed family's exemplar rows (raw features, concatenated), to name alerts.
#[derive(Clone, Debug)]
pub struct FamilySignature {
    pub family: String,
    pub exemplars: Vec<f32>,
}

/// The detection engine.
pub struct Detector {
    featurizer: Featurizer,
    pipeline: Pipeline,
    /// The scoring path the pipeline was built on (kept for a model swap).
    score_path: ScorePath,
    model: Arc<Model>,
    pub model_version: String,
    pub policy: Policy,
    /// Confirmed families, to name alerts ([`Detector::set_families`], [`Detector::add_family`]).
    families: Vec<FamilySignature>,
    /// The families' exemplars embedded by the serving model; built on the first alert after
    /// the model or the families change, not for every alert.
    family_index: Option<ExemplarIndex>,
    /// Exemplar rows of the patterns the operator dismissed ([`crate::dismissals`]), and
    /// their embeddings under the serving model (unit length; built when first needed).
    dismissed: Vec<f32>,
    dismissed_index: Option<ExemplarIndex>,
    cfg: DetectConfig,
    time: TimeBase,
    batch: Batch,
    recent: VecDeque<Recent>,
    alert_prefix: String,
    next_alert: u64,
    pub metrics: Arc<Metrics>,
}

impl Detector {
    /// A detector over `model` (which must have the live feature set's input layer).
    pub fn new(
        serving: Serving,
        policy: Policy,
        cfg: DetectConfig,
        time: TimeBase,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let Serving {
            model,
            version: model_version,
            path,
        } = serving;
        let pipeline = pipeline_for(&model, path)?;
        let mut policy = policy;
        policy.set_model_threshold(pipeline.rule().alert_threshold);
        if cfg.forced_shadow {
            policy.force_shadow();
        }
        let start = TimeBase::monotonic().to_unix_ns(crate::clock::monotonic_ns()) / 1_000_000_000;
        let recent = cfg.recent;
        Ok(Self {
            featurizer: Featurizer::new(cfg.context),
            pipeline,
            score_path: path,
            model,
            model_version,
            policy,
            families: Vec::new(),
            family_index: None,
            dismissed: Vec::new(),
            dismissed_index: None,
            batch: Batch::with_capacity(cfg.batch_size),
            cfg,
            time,
            // Exactly its size: a full ring then overwrites the slot it drops (`prefetch_recent`).
            recent: VecDeque::with_capacity(recent),
            alert_prefix: format!("{start:x}"),
            next_alert: 1,
            metrics,
        })
    }

    /// The scoring path in use.
    pub fn score_path(&self) -> ScorePath {
        self.score_path
    }

    /// The model in use.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Swaps in another model (after adaptation or rollback); batches in flight finish first.
    pub fn set_model(&mut self, serving: Serving) -> anyhow::Result<()> {
        let Serving {
            model,
            version,
            path,
        } = serving;
        let pipeline = pipeline_for(&model, path)?;
        self.policy
            .set_model_threshold(pipeline.rule().alert_threshold);
        self.pipeline = pipeline;
        self.score_path = path;
        self.model = model;
        self.model_version = version;
        self.family_index = None;
        self.dismissed_index = None;
        Ok(())
    }

    /// Replaces the confirmed families (at start and after a rollback).
    pub fn set_families(&mut self, families: Vec<FamilySignature>) {
        self.families = families;
        self.family_index = None;
    }

    /// Adds a confirmed family, replacing an earlier signature of the same name.
    pub fn add_family(&mut self, signature: FamilySignature) {
        self.families.retain(|f| f.family != signature.family);
        self.families.push(signature);
        self.family_index = None;
    }

    /// The confirmed families.
    pub fn families(&self) -> &[FamilySignature] {
        &self.families
    }

    /// Replaces the dismissed patterns' exemplar rows (raw, concatenated).
    pub fn set_dismissed(&mut self, rows: Vec<f32>) {
        self.dismissed = rows;
        self.dismissed_index = None;
    }

    /// The scoring path in use.
    pub fn path(&self) -> String {
        self.pipeline.path()
    }

    /// Recent scored records (oldest first).
    pub fn recent(&self) -> &VecDeque<Recent> {
        &self.recent
    }

    /// Featurises one record read at `read_at` (the start of its scoring latency) and queues
    /// it; returns true when the batch is full.
    pub fn push(
        &mut self,
        key: &FlowKey,
        state: &FlowState,
        reason: Reason,
        process: Option<ProcessRef>,
        read_at: Instant,
    ) -> bool {
        self.batch
            .push(&mut self.featurizer, key, state, reason, process, read_at);
        self.batch.len() >= self.cfg.batch_size
    }

    /// Records per batch: [`Detector::push`] asks for a flush at this many.
    pub fn batch_size(&self) -> usize {
        self.cfg.batch_size
    }

    /// Hands the context windows over to a caller that featurises records itself (into
    /// [`Batch`]es for [`Detector::score_batch`]); an empty featurizer takes their place until
    /// [`Detector::restore_featurizer`].
    pub fn take_featurizer(&mut self) -> Featurizer {
        std::mem::replace(&mut self.featurizer, Featurizer::new(self.cfg.context))
    }

    /// Puts back the featurizer [`Detector::take_featurizer`] handed out, windows and all.
    pub fn restore_featurizer(&mut self, featurizer: Featurizer) {
        self.featurizer = featurizer;
    }

    /// When the current batch must be scored at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.batch.oldest.map(|t| t + self.cfg.batch_deadline)
    }

    /// Records waiting in the batch.
    pub fn pending(&self) -> usize {
        self.batch.len()
    }

    /// Sources and services the context tracks.
    pub fn tracked(&self) -> (usize, usize) {
        self.featurizer.tracked()
    }

    /// Scores the batch and acts on each record.
    pub fn flush(&mut self, actions: &mut dyn Actions) -> anyhow::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        let scored = self.score_batch(&mut batch, actions);
        self.batch = batch;
        scored
    }

    /// Scores `b` and acts on each record, as [`Detector::flush`] does the detector's own
    /// batch; leaves `b` empty (its allocations kept) once scored. On a scoring error `b` is
    /// left as it was; on an error while acting, the rest of it is lost.
    pub fn score_batch(&mut self, b: &mut Batch, actions: &mut dyn Actions) -> anyhow::Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let n = b.len();
        let scores = self
            .pipeline
            .score(&b.values, n)
            .context("scoring failed")?;
        let batch = std::mem::take(&mut b.pending);
        let values = std::mem::take(&mut b.values);
        let dismissed = self.dismissed_among(&batch, &values, &scores);
        b.oldest = None;
        self.metrics.scored.inc_by(n as u64);
        // Scored now, the whole batch: one clock read, not one per record.
        let scored_at = Instant::now();
        self.metrics.latencies(
            batch
                .iter()
                .map(|p| scored_at.saturating_duration_since(p.read_at)),
        );
        for (i, (p, s)) in batch.iter().zip(&scores).enumerate() {
            let row = &values[i * LIVE_COUNT..(i + 1) * LIVE_COUNT];
            // The full record (three small vectors) is built only for an alert.
            let ((src, _), (dst, _)) = endpoints(&p.key, &p.state);
            let target_key = key_for(self.policy.config().drop_target, src, &p.key);
            // Before the policy, so that a dismissed record takes no cooldown or rate token
            // that a real alert from the same source would then lack.
            let d = if dismissed[i] {
                self.metrics.dismissed_alerts.inc();
                Decision::default()
            } else {
                self.policy.decide(&Candidate {
                    src,
                    target: &target_key,
                    score: s.score,
                    evidence: p.evidence,
                    now_ns: p.state.last_seen_ns,
                    // The blocklist is asked only where a drop could follow.
                    blocked: self.policy.may_drop(s.score) && actions.blocked(&target_key),
                })
            };
            let mut alert_id = None;
            if d.alert {
                let mut json = FlowJson::new(&p.key, &p.state, p.reason, self.time);
                json.process = p.process.clone().or_else(|| actions.process_of(&p.key));
                let id = format!("{}-{}", self.alert_prefix, self.next_alert);
                self.next_alert += 1;
                let family = self.family_of(row);
                let action = match d.drop.map(|x| x.outcome) {
                    Some(DropOutcome::Dropped) => "drop",
                    Some(DropOutcome::Shadow) => "shadow_drop",
                    _ => "alert",
                };
                if let Some(DropDecision { outcome, ttl_s, .. }) = d.drop {
                    match outcome {
                        DropOutcome::Dropped => {
                            let now_unix = json.last_seen_ns;
                            actions.block(Block {
                                key: target_key,
                                expires_unix_ns: now_unix
                                    .saturating_add(ttl_s.saturating_mul(1_000_000_000)),
                                alert_id: id.clone(),
                                family: family.clone(),
                            })?;
                            self.metrics.dropped(&family);
                        }
                        DropOutcome::Shadow => self.metrics.shadow_dropped(&family),
                        _ => {}
                    }
                }
                let top_features = self
                    .pipeline
                    .explain(&self.model, row, self.cfg.top_features)
                    .unwrap_or_default();
                let alert = AlertJson {
                    kind: "alert",
                    id: id.clone(),
                    ts_ns: json.last_seen_ns,
                    score: s.score,
                    probability: s.probability,
                    novelty: s.novelty,
                    family: family.clone(),
                    model_version: self.model_version.clone(),
                    action,
                    drop: d.drop,
                    suppressed: d.suppressed,
                    top_features,
                    flow: json,
                };
                actions.alert(&alert)?;
                self.metrics.alert(&family);
                alert_id = Some(id);
            }
            if self.cfg.recent > 0 {
                self.prefetch_recent();
                // Once full, the oldest entry's row is reused: no allocation per record.
                let reused = if self.recent.len() >= self.cfg.recent {
                    self.recent.pop_front().map(|old| old.row)
                } else {
                    None
                };
                let kept = match reused {
                    Some(mut r) if r.len() == LIVE_COUNT => {
                        r.copy_from_slice(row);
                        r
                    }
                    _ => row.into(),
                };
                self.recent.push_back(Recent {
                    ts_unix_ns: self.time.to_unix_ns(p.state.first_seen_ns),
                    src,
                    dst,
                    key: p.key,
                    alert_id,
                    score: s.score,
                    row: kept,
                });
            }
        }
        // Keep the allocations for the next batch.
        b.values = values;
        b.pending = batch;
        b.clear();
        Ok(())
    }

    /// Once the ring of recent records is full, the record kept [`RECENT_AHEAD`] records from now
    /// overwrites the slot and the row of `recent[RECENT_AHEAD]`: a full `VecDeque` whose
    /// capacity is its length puts `push_back` where `pop_front` took. Both are cold by then
    /// (50 000 entries and rows are megabytes, last touched one lap ago), and the stores into
    /// them stalled this loop for ~8% of the agent's time at saturation (BENCHMARKS.md). The
    /// entry is fetched twice as far ahead, so that its row pointer is at hand when the row is
    /// fetched. Only a hint: where the layout differs, nothing but the gain is lost.
    #[inline]
    fn prefetch_recent(&self) {
        if self.recent.len() < self.cfg.recent {
            return;
        }
        if let Some(e) = self.recent.get(2 * RECENT_AHEAD) {
            prefetch(std::ptr::from_ref(e).cast(), std::mem::size_of::<Recent>());
        }
        if let Some(e) = self.recent.get(RECENT_AHEAD) {
            prefetch(e.row.as_ptr().cast(), std::mem::size_of_val(&*e.row));
        }
    }

    /// New context settings (SIGHUP): the windows start again, empty.
    pub fn set_context(&mut self, context: crate::context::ContextConfig) {
        self.featurizer = Featurizer::new(context);
        self.cfg.context = context;
    }

    /// True when the model has novelty prototypes for the live feature set.
    pub fn has_baseline(&self) -> bool {
        self.pipeline.has_prototypes()
    }

    /// The confirmed family with the most similar exemplar to this row (cosine ≥
    /// [`FAMILY_SIMILARITY`]), in the serving model's embedding space: the space the model
    /// separates attacks in, where the records of one family lie together even when raw
    /// features such as a source's context differ between sessions.
    fn family_of(&mut self, row: &[f32]) -> String {
        if self.families.is_empty() {
            return "unknown".into();
        }
        if self.family_index.is_none() {
            let owners: Vec<&[f32]> = self.families.iter().map(|f| &f.exemplars[..]).collect();
            self.family_index = ExemplarIndex::build(&self.model, &self.pipeline.features, &owners);
        }
        let nearest = self.family_index.as_ref().and_then(|idx| {
            let e = unit_embeddings(&self.model, &self.pipeline.features, row)?;
            idx.nearest(&e, FAMILY_SIMILARITY)
        });
        nearest.map_or_else(|| "unknown".into(), |i| self.families[i].family.clone())
    }

    /// Per record of the batch: true when the policy would act on it (its score and evidence)
    /// and its embedding lies within cosine [`DISMISSAL_SIMILARITY`] of a dismissed exemplar.
    /// Only those records are embedded, in one call: none while nothing is dismissed.
    fn dismissed_among(
        &mut self,
        batch: &[Pending],
        values: &[f32],
        scores: &[Score],
    ) -> Vec<bool> {
        let mut out = vec![false; batch.len()];
        if self.dismissed.is_empty() {
            return out;
        }
        let acts: Vec<usize> = (0..batch.len())
            .filter(|&i| self.policy.acts_on(scores[i].score, batch[i].evidence))
            .collect();
        if acts.is_empty() {
            return out;
        }
        if self.dismissed_index.is_none() {
            self.dismissed_index =
                ExemplarIndex::build(&self.model, &self.pipeline.features, &[&self.dismissed]);
        }
        let rows: Vec<f32> = acts
            .iter()
            .flat_map(|&i| values[i * LIVE_COUNT..(i + 1) * LIVE_COUNT].iter().copied())
            .collect();
        let (Some(emb), Some(idx)) = (
            unit_embeddings(&self.model, &self.pipeline.features, &rows),
            &self.dismissed_index,
        ) else {
            return out;
        };
        for (&i, e) in acts.iter().zip(emb.chunks_exact(self.model.embed_dim())) {
            out[i] = idx.nearest(e, DISMISSAL_SIMILARITY).is_some();
        }
        out
    }
}

/// The scoring pipeline of the live feature set, or an error naming what the model has.
fn pipeline_for(model: &Model, path: ScorePath) -> anyhow::Result<Pipeline> {
    if !model.feature_sets().contains(&LIVE_FEATURE_SET) {
        anyhow::bail!(
            "the model has no input layer for the live feature set {LIVE_FEATURE_SET} (it has: {}); train one with `detector train` on data of that feature set",
            model.feature_sets().join(", ")
        );
    }
    let p = model.pipeline(LIVE_FEATURE_SET, path)?;
    if p.features != features::live_names() {
        anyhow::bail!("the model's {LIVE_FEATURE_SET} columns differ from this agent's: it was trained by another version");
    }
    Ok(p)
}

/// Offline actions kept in memory (evaluation, warm-up, tests): alerts collected, nothing
/// blocked.
#[derive(Default)]
pub struct CollectedAlerts {
    pub alerts: Vec<AlertJson>,
}

impl Actions for CollectedAlerts {
    fn blocked(&self, _: &BlockKey) -> bool {
        false
    }
    fn block(&mut self, _: Block) -> anyhow::Result<()> {
        anyhow::bail!("offline detection never blocks")
    }
    fn alert(&mut self, alert: &AlertJson) -> anyhow::Result<()> {
        self.alerts.push(alert.clone());
        Ok(())
    }
}

/// Offline actions: shadow only, alerts to a writer.
pub struct ShadowActions<'a> {
    pub out: &'a mut crate::output::JsonLines,
    pub alerts: u64,
}

impl Actions for ShadowActions<'_> {
    fn blocked(&self, _: &BlockKey) -> bool {
        false
    }
    fn block(&mut self, _: Block) -> anyhow::Result<()> {
        anyhow::bail!("offline detection never blocks")
    }
    fn alert(&mut self, alert: &AlertJson) -> anyhow::Result<()> {
        self.alerts += 1;
        self.out.write(alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detector_common::{
        flow::{
            process_packet,
            user::{MemEnv, MemTable},
            FlowConfig,
        },
        packet::{Captured, TCP_SYN},
        testpkt::tcp4,
    };

    #[test]
    fn the_configured_context_bounds_the_sources_tracked() {
        let context = crate::context::ContextConfig {
            max_sources: 8,
            ..Default::default()
        };
        let mut det = Detector::new(
            Serving {
                model: Arc::new(crate::model::default_model().unwrap()),
                version: "test".into(),
                path: ScorePath::Reference,
            },
            Policy::new(Default::default(), vec![]),
            DetectConfig {
                context,
                ..DetectConfig::default()
            },
            TimeBase::Unix,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let (mut t, mut env) = (MemTable::default(), MemEnv::default());
        for i in 0..100u8 {
            let f = tcp4([10, 0, 1, i], 40000, [10, 0, 0, 1], 80, TCP_SYN, 1, 0);
            process_packet(
                &Captured::whole(&f),
                1_000_000_000 + u64::from(i),
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
        }
        for (k, s, r) in env.records.drain(..) {
            det.push(&k, &s, r, None, Instant::now());
        }
        assert!(det.tracked().0 <= 8, "{} sources tracked", det.tracked().0);
    }

    #[test]
    fn alerts_are_named_by_the_nearest_confirmed_family_and_a_new_signature_is_used() {
        let mut det = Detector::new(
            Serving {
                model: Arc::new(crate::model::default_model().unwrap()),
                version: "test".into(),
                path: ScorePath::Reference,
            },
            Policy::new(Default::default(), vec![]),
            DetectConfig::default(),
            TimeBase::Unix,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        // A port scan's SYN, and a row far from it (the same, scaled).
        let row = |f: &[u8], ts: u64| {
            let (mut t, mut env) = (MemTable::default(), MemEnv::default());
            process_packet(
                &Captured::whole(f),
                ts,
                &FlowConfig::DEFAULT,
                &mut t,
                &mut env,
            );
            let (k, st, r) = env.records.pop().unwrap();
            let mut v = vec![0f32; LIVE_COUNT];
            Featurizer::new(Default::default()).features(&k, &st, r, &mut v);
            v
        };
        let syn = row(
            &tcp4([10, 0, 0, 9], 40000, [10, 0, 0, 1], 22, TCP_SYN, 1, 0),
            1,
        );
        let mut big = syn.clone();
        big.iter_mut().for_each(|x| *x = *x * 50.0 + 1e5);
        assert_eq!(det.family_of(&syn), "unknown", "no family confirmed yet");
        det.add_family(FamilySignature {
            family: "scan".into(),
            exemplars: syn.clone(),
        });
        assert_eq!(det.family_of(&syn), "scan");
        assert_eq!(
            det.family_of(&big),
            "unknown",
            "far from the first exemplar"
        );
        // The same name again with other exemplars: the cached embeddings are rebuilt.
        det.add_family(FamilySignature {
            family: "scan".into(),
            exemplars: big.clone(),
        });
        assert_eq!(det.families().len(), 1);
        assert_eq!(det.family_of(&big), "scan");
        det.set_families(vec![]);
        assert_eq!(det.family_of(&syn), "unknown");
    }
}

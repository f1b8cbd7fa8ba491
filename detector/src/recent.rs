//! What the detector remembers of recent records (for incidents and dismissals), the exemplar
//! rows that stand for a confirmed family or a dismissed pattern, and the one index that
//! compares a new record with them in the serving model's embedding space.

use std::net::IpAddr;

use detector_common::flow::FlowKey;

use crate::{
    features::{LIVE_COUNT, LIVE_FEATURE_SET},
    model::{layers::dot, Model, Rows},
};

/// A record names the confirmed family of its most similar exemplar at or above this cosine.
pub const FAMILY_SIMILARITY: f32 = 0.8;
/// A record resembles a dismissed pattern at or above this cosine to one of its exemplars:
/// stricter than [`FAMILY_SIMILARITY`], a dismissal silences, so it must match closely.
pub const DISMISSAL_SIMILARITY: f32 = 0.9;
/// Rows kept per confirmed family to name later alerts.
pub const SIGNATURE_EXEMPLARS: usize = 64;

/// A scored record kept for incidents.
#[derive(Clone, Debug)]
pub struct Recent {
    pub ts_unix_ns: u64,
    /// The flow's initiator and responder.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub key: FlowKey,
    pub alert_id: Option<String>,
    pub score: f32,
    pub row: Box<[f32]>,
}

/// A signature from an incident's (or a dismissal's) rows: up to `max` of them (raw,
/// concatenated), evenly spread; [`SIGNATURE_EXEMPLARS`] for a family. Exemplars rather than one
/// mean: an incident's records are of several kinds (a flow's first packet, its reply, its end),
/// and their mean resembles none of them.
pub fn exemplars(rows: &[f32], max: usize) -> Vec<f32> {
    let n = rows.len() / LIVE_COUNT;
    let m = n.min(max);
    if m == 0 {
        return Vec::new();
    }
    // Row k·n/m, moved on by k mod (n/m): a fixed stride can fall in step with the records' own
    // order (new, reply, early, final per flow) and take one kind only. Stays below n.
    let stride = n / m;
    (0..m)
        .map(|k| k * n / m + k % stride)
        .flat_map(|i| rows[i * LIVE_COUNT..(i + 1) * LIVE_COUNT].iter().copied())
        .collect()
}

/// Live-feature rows embedded by `model`, each scaled to unit length (cosine similarity is
/// then a dot product); None when the model cannot embed them.
pub fn unit_embeddings(model: &Model, features: &[String], values: &[f32]) -> Option<Vec<f32>> {
    let rows = Rows {
        feature_set: LIVE_FEATURE_SET,
        features,
        values,
    };
    let (_, mut emb) = model.forward(&rows).ok()?;
    emb.chunks_exact_mut(model.embed_dim()).for_each(unit);
    Some(emb)
}

/// Scales `v` to unit length.
fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Exemplar rows embedded by the serving model, each with the index of what it stands for
/// (a family, or one dismissal among all): built once per model and set of exemplars.
#[derive(Clone, Debug)]
pub struct ExemplarIndex {
    emb: Vec<f32>,
    owner: Vec<usize>,
    dim: usize,
}

impl ExemplarIndex {
    /// Embeds the exemplars of each owner (`owners[i]`: raw rows, concatenated); None when the
    /// model cannot embed them.
    pub fn build(model: &Model, features: &[String], owners: &[&[f32]]) -> Option<Self> {
        let mut values = Vec::new();
        let mut owner = Vec::new();
        for (i, rows) in owners.iter().enumerate() {
            let n = rows.len() / LIVE_COUNT;
            values.extend_from_slice(&rows[..n * LIVE_COUNT]);
            owner.extend(std::iter::repeat_n(i, n));
        }
        let emb = unit_embeddings(model, features, &values)?;
        Some(ExemplarIndex {
            emb,
            owner,
            dim: model.embed_dim(),
        })
    }

    /// The owner of the most similar exemplar to the unit embedding `e`, if its cosine
    /// reaches `min`.
    pub fn nearest(&self, e: &[f32], min: f32) -> Option<usize> {
        let mut best: Option<(f32, usize)> = None;
        for (x, &i) in self.emb.chunks_exact(self.dim).zip(&self.owner) {
            let sim = dot(x, e);
            if sim >= min && best.is_none_or(|(s, _)| sim > s) {
                best = Some((sim, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exemplars_take_every_kind_of_record_even_in_step_with_their_order() {
        // Records in a period of four (a flow's new, reply, early, final), as incidents have
        // them; 256 of them, 32 kept: a fixed stride of 8 would keep one kind only.
        let rows: Vec<f32> = (0..256)
            .flat_map(|i| std::iter::repeat_n((i % 4) as f32, LIVE_COUNT))
            .collect();
        let kept = exemplars(&rows, 32);
        assert_eq!(kept.len(), 32 * LIVE_COUNT);
        let kinds: std::collections::BTreeSet<u32> =
            kept.chunks_exact(LIVE_COUNT).map(|r| r[0] as u32).collect();
        assert_eq!(kinds.len(), 4, "kinds kept: {kinds:?}");
        // Fewer rows than the cap: all of them, in order.
        assert_eq!(
            exemplars(&rows[..20 * LIVE_COUNT], 64),
            rows[..20 * LIVE_COUNT]
        );
        assert!(exemplars(&[], 8).is_empty());
    }

    #[test]
    fn the_index_names_the_nearest_owner_above_the_bar() {
        let (model, _) = crate::model::serving::base_model("").unwrap();
        let names = crate::features::live_names();
        let a: Vec<f32> = (0..LIVE_COUNT).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..LIVE_COUNT)
            .map(|i| (LIVE_COUNT - i) as f32 * 3.0)
            .collect();
        let idx = ExemplarIndex::build(&model, &names, &[&a, &b]).unwrap();
        let eb = unit_embeddings(&model, &names, &b).unwrap();
        assert_eq!(idx.nearest(&eb, FAMILY_SIMILARITY), Some(1));
        // Nothing is that similar to a vector against every exemplar.
        let away: Vec<f32> = eb.iter().map(|x| -x).collect();
        assert_eq!(idx.nearest(&away, 0.99), None);
    }
}

//! Dismissals: flows the operator says were benign although the model alerted on them
//! (`detector incident dismiss`). Up to [`EXEMPLARS`] of their flagged records are kept per
//! dismissal. A later record that the policy would act on, and whose embedding under the serving
//! model lies within cosine [`crate::recent::DISMISSAL_SIMILARITY`] of one of them, is neither alerted on nor dropped; it is
//! counted (`dismissed_alerts`). The check comes before the policy, so a dismissed record takes
//! no cooldown or rate-limit token that a real alert from the same source would then lack.
//!
//! The model does not change. A dismissal is the operator's suppression, as in a signature
//! tool, but it is scoped by what the flows looked like, not by an address or a rule. It
//! silences whatever looks like it, attack or not, so dismiss precisely (by alert id). It
//! persists in the state directory and survives restarts and model swaps: the exemplars are raw
//! features, embedded again by whichever model serves.
//!
//! Cost: nothing while there are no dismissals. Otherwise, each batch embeds the records the
//! policy would act on in one call, and compares each with at most [`MAX`] × [`EXEMPLARS`]
//! exemplars.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{
    features::LIVE_COUNT,
    incidents::{self, Selector},
    recent::Recent,
};

/// Reserved: no confirmed family may take this name (it would read as a dismissal).
pub const FAMILY: &str = "dismissed";
/// At most this many dismissals are kept; the oldest goes first.
pub const MAX: usize = 32;
/// Flagged records kept per dismissal, evenly spread over the selection.
pub const EXEMPLARS: usize = 32;

/// One `incident dismiss`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dismissal {
    pub id: String,
    pub created_unix_ns: u64,
    /// What the operator selected, as they gave it (alert ids, source, window).
    pub selected: String,
    /// Distinct flows selected.
    pub flows: usize,
    /// Raw live-feature rows ([`LIVE_COUNT`] values each), concatenated.
    pub exemplars: Vec<f32>,
}

impl Dismissal {
    /// A dismissal of the recent records that `sel` picks among those that scored at the
    /// alert `threshold`: the pattern to silence, not the source's other, quiet flows.
    pub fn select(
        recent: &VecDeque<Recent>,
        sel: &Selector,
        threshold: f32,
        id: String,
        created_unix_ns: u64,
    ) -> anyhow::Result<Self> {
        let flagged: VecDeque<Recent> = recent
            .iter()
            .filter(|r| r.score >= threshold)
            .cloned()
            .collect();
        let support = incidents::select(&flagged, sel, threshold, 0)
            .context("among the recent records that alerted")?;
        Ok(Dismissal {
            id,
            created_unix_ns,
            selected: sel.to_string(),
            flows: support.flows,
            exemplars: crate::recent::exemplars(&support.positives, EXEMPLARS),
        })
    }
}

/// The dismissals of this host, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dismissals {
    pub dismissals: Vec<Dismissal>,
}

/// Where the dismissals live in the state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("dismissed.json")
}

impl Dismissals {
    /// Reads `path`; no file means none. A file that does not parse or holds rows of the wrong
    /// width is an error naming the file and the entry (the caller keeps it, untouched).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let d: Dismissals = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a dismissals file", path.display()))?;
        for (i, x) in d.dismissals.iter().enumerate() {
            if x.exemplars.is_empty()
                || !x.exemplars.len().is_multiple_of(LIVE_COUNT)
                || x.exemplars.iter().any(|v| !v.is_finite())
            {
                bail!(
                    "{}: dismissal {} ({}) has {} exemplar values, not whole rows of {LIVE_COUNT} finite values",
                    path.display(),
                    i + 1,
                    x.id,
                    x.exemplars.len()
                );
            }
        }
        Ok(d)
    }

    /// Writes `path` atomically (the old file stays on error).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(self).context("encoding the dismissals")?;
        crate::state::write_atomic(path, &bytes)
    }

    /// Adds one, dropping the oldest beyond [`MAX`].
    pub fn add(&mut self, d: Dismissal) {
        self.dismissals.push(d);
        let over = self.dismissals.len().saturating_sub(MAX);
        self.dismissals.drain(..over);
    }

    /// Removes the dismissal `id`; false when there is none.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.dismissals.len();
        self.dismissals.retain(|d| d.id != id);
        self.dismissals.len() < before
    }

    /// Every exemplar row, concatenated.
    pub fn exemplars(&self) -> Vec<f32> {
        self.dismissals
            .iter()
            .flat_map(|d| d.exemplars.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(id: &str, v: f32) -> Dismissal {
        Dismissal {
            id: id.into(),
            created_unix_ns: 1,
            selected: "alert a-1".into(),
            flows: 1,
            exemplars: vec![v; LIVE_COUNT],
        }
    }

    #[test]
    fn dismissals_survive_a_save_and_bad_files_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("dt-dismiss-{}", std::process::id()));
        let p = path(&dir);
        assert_eq!(Dismissals::load(&p).unwrap(), Dismissals::default());
        let mut d = Dismissals::default();
        d.add(one("d-1", 1.0));
        d.add(one("d-2", 2.0));
        d.save(&p).unwrap();
        let back = Dismissals::load(&p).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.exemplars().len(), 2 * LIVE_COUNT);

        std::fs::write(&p, "{\"dismissals\": [{").unwrap();
        let e = format!("{:#}", Dismissals::load(&p).unwrap_err());
        assert!(e.contains("dismissed.json"), "{e}");
        let mut short = one("d-3", 1.0);
        short.exemplars.pop();
        std::fs::write(
            &p,
            serde_json::to_vec(&Dismissals {
                dismissals: vec![short],
            })
            .unwrap(),
        )
        .unwrap();
        let e = format!("{:#}", Dismissals::load(&p).unwrap_err());
        assert!(e.contains("dismissal 1 (d-3)"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_oldest_dismissal_goes_beyond_the_cap() {
        let mut d = Dismissals::default();
        for i in 0..MAX + 3 {
            d.add(one(&format!("d-{i}"), 1.0));
        }
        assert_eq!(d.dismissals.len(), MAX);
        assert_eq!(d.dismissals[0].id, "d-3");
        assert!(d.remove("d-3"));
        assert!(!d.remove("d-3"));
        assert_eq!(d.dismissals.len(), MAX - 1);
    }
}

//! Episodic tasks: session-level train/validation splits, and support/query draws in which
//! support and query never share a session (EVALUATION.md). Used by meta-training and meant
//! for the evaluation harness (leave one family out, many support draws).

use std::collections::BTreeMap;

use rand::Rng;

use crate::dataset::Dataset;

/// What one task's positive class is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TaskBy {
    /// One coarse family (dos, scan, brute-force, …) against benign.
    Family,
    /// One attack type (the source's own label) against benign.
    Attack,
}

/// Row indices of a dataset split by session.
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// Rows for training.
    pub train: Vec<usize>,
    /// Rows for validation (other sessions).
    pub val: Vec<usize>,
    /// Rows of held-out families (in neither).
    pub held_out: Vec<usize>,
}

/// Splits `ds` by session: per family, a `val_fraction` of its sessions (at least one, when
/// it has two or more) go to validation; families in `holdout` go to `held_out`. A session's
/// family is the family of its first row. Seeded, so reproducible.
pub fn split_sessions(
    ds: &Dataset,
    val_fraction: f64,
    holdout: &[String],
    rng: &mut impl Rng,
) -> Split {
    let mut by_session: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for i in 0..ds.rows() {
        by_session.entry(ds.session[i]).or_default().push(i);
    }
    let mut by_family: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for (&s, rows) in &by_session {
        by_family.entry(ds.family[rows[0]]).or_default().push(s);
    }
    let mut split = Split::default();
    for (fam, mut sessions) in by_family {
        let name = &ds.family_names[fam as usize];
        if holdout.iter().any(|h| h == name) {
            for s in sessions {
                split.held_out.extend(&by_session[&s]);
            }
            continue;
        }
        shuffle(&mut sessions, rng);
        let n = sessions.len();
        let mut n_val = (n as f64 * val_fraction).round() as usize;
        if n >= 2 && val_fraction > 0.0 {
            n_val = n_val.clamp(1, n - 1);
        } else {
            n_val = 0;
        }
        for (k, s) in sessions.iter().enumerate() {
            let dst = if k < n_val {
                &mut split.val
            } else {
                &mut split.train
            };
            dst.extend(&by_session[s]);
        }
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.held_out.sort_unstable();
    split
}

/// The attack rows of one task, grouped by session.
#[derive(Clone, Debug)]
pub struct Group {
    /// Family or attack name.
    pub name: String,
    /// Row indices per session.
    pub sessions: Vec<Vec<usize>>,
}

impl Group {
    /// Rows in all sessions.
    pub fn rows(&self) -> usize {
        self.sessions.iter().map(Vec::len).sum()
    }
}

/// Tasks of one dataset (restricted to a set of rows): attack groups and benign sessions.
#[derive(Clone, Debug, Default)]
pub struct TaskIndex {
    /// Attack groups with their sessions.
    pub groups: Vec<Group>,
    /// Benign rows per session.
    pub benign: Vec<Vec<usize>>,
}

/// One episode: row indices into the dataset.
#[derive(Clone, Debug, Default)]
pub struct Episode {
    /// K attack rows.
    pub support_pos: Vec<usize>,
    /// Benign rows for the inner loop.
    pub support_neg: Vec<usize>,
    /// Attack rows from other sessions than the support's.
    pub query_pos: Vec<usize>,
    /// Benign rows from other sessions than the support's.
    pub query_neg: Vec<usize>,
}

impl TaskIndex {
    /// Indexes `rows` of `ds` by task group (family or attack) and session.
    pub fn build(ds: &Dataset, rows: &[usize], by: TaskBy) -> Self {
        let mut groups: BTreeMap<String, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
        let mut benign: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &i in rows {
            if ds.label[i] == 0 {
                benign.entry(ds.session[i]).or_default().push(i);
            } else {
                let name = match by {
                    TaskBy::Family => ds.family_of(i),
                    TaskBy::Attack => ds.attack_of(i),
                };
                groups
                    .entry(name.to_string())
                    .or_default()
                    .entry(ds.session[i])
                    .or_default()
                    .push(i);
            }
        }
        TaskIndex {
            groups: groups
                .into_iter()
                .map(|(name, s)| Group {
                    name,
                    sessions: s.into_values().collect(),
                })
                .collect(),
            benign: benign.into_values().collect(),
        }
    }

    /// Groups that can make an episode: two or more sessions (support and query apart), and
    /// two or more benign sessions.
    pub fn usable(&self) -> Vec<usize> {
        if self.benign.len() < 2 {
            return vec![];
        }
        (0..self.groups.len())
            .filter(|&g| self.groups[g].sessions.len() >= 2)
            .collect()
    }

    /// Draws an episode of group `g`: whole sessions are dealt to the support until it can
    /// hold `k` rows, `k` of their rows are drawn; the query draws up to `q` rows from the
    /// remaining sessions. The same for benign rows with `b` (support) and `qb` (query).
    /// `None` when the group or benign sessions cannot be split that way.
    pub fn draw(
        &self,
        g: usize,
        k: usize,
        b: usize,
        q: usize,
        qb: usize,
        rng: &mut impl Rng,
    ) -> Option<Episode> {
        let (support_pos, query_pos) = deal(&self.groups.get(g)?.sessions, k, q, rng)?;
        let (support_neg, query_neg) = deal(&self.benign, b, qb, rng)?;
        Some(Episode {
            support_pos,
            support_neg,
            query_pos,
            query_neg,
        })
    }
}

/// Deals shuffled sessions to the support until it holds ≥ `k` rows, draws `k` of those and up
/// to `q` from the rest. `None` if no session would be left for the query.
fn deal(
    sessions: &[Vec<usize>],
    k: usize,
    q: usize,
    rng: &mut impl Rng,
) -> Option<(Vec<usize>, Vec<usize>)> {
    let dealt = deal_sessions(sessions, k.max(1), rng)?;
    let mut support = dealt.support_rows(sessions);
    let mut rest = dealt.other_rows(sessions);
    Some((sample(&mut support, k, rng), sample(&mut rest, q, rng)))
}

/// Sessions in random order, the first `cut` of them dealt to a support.
pub struct Dealt {
    pub order: Vec<usize>,
    pub cut: usize,
}

impl Dealt {
    /// Every row of the support's sessions.
    pub fn support_rows(&self, sessions: &[Vec<usize>]) -> Vec<usize> {
        self.order[..self.cut]
            .iter()
            .flat_map(|&s| sessions[s].iter().copied())
            .collect()
    }

    /// Every row of the other sessions.
    pub fn other_rows(&self, sessions: &[Vec<usize>]) -> Vec<usize> {
        self.order[self.cut..]
            .iter()
            .flat_map(|&s| sessions[s].iter().copied())
            .collect()
    }
}

/// Deals whole sessions, shuffled, to a support until it holds at least `min_rows` rows (one
/// session at least): support and query never share a session. `None` when fewer than two
/// sessions, or when no session would be left for the query.
pub fn deal_sessions(
    sessions: &[Vec<usize>],
    min_rows: usize,
    rng: &mut impl Rng,
) -> Option<Dealt> {
    if sessions.len() < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..sessions.len()).collect();
    shuffle(&mut order, rng);
    let (mut rows, mut cut) = (0, 0);
    while cut < order.len() && (rows < min_rows || cut == 0) {
        rows += sessions[order[cut]].len();
        cut += 1;
    }
    (cut < order.len()).then_some(Dealt { order, cut })
}

/// Fisher–Yates shuffle.
pub fn shuffle<T>(v: &mut [T], rng: &mut impl Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// Up to `k` distinct elements, in random order (partial Fisher–Yates).
pub fn sample(v: &mut [usize], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let k = k.min(v.len());
    for i in 0..k {
        let j = rng.random_range(i..v.len());
        v.swap(i, j);
    }
    v[..k].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Benign sessions b0..b9 (20 rows each), dos sessions d0..d4, scan s0..s2 (10 rows each).
    pub(crate) fn toy() -> Dataset {
        let mut ds = Dataset::new("toy", vec!["x".into()]);
        for s in 0..10 {
            for r in 0..20 {
                ds.push(&[r as f32], 0, "benign", "normal", &format!("b{s}"), None);
            }
        }
        for (fam, att, n) in [("dos", "neptune", 5), ("scan", "nmap", 3)] {
            for s in 0..n {
                for r in 0..10 {
                    ds.push(&[r as f32], 1, fam, att, &format!("{fam}{s}"), None);
                }
            }
        }
        ds
    }

    #[test]
    fn split_keeps_sessions_whole_and_holds_out_families() {
        let ds = toy();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sp = split_sessions(&ds, 0.2, &["scan".to_string()], &mut rng);
        assert_eq!(sp.held_out.len(), 30);
        assert_eq!(sp.train.len() + sp.val.len() + sp.held_out.len(), ds.rows());
        let sess = |rows: &[usize]| {
            rows.iter()
                .map(|&i| ds.session[i])
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert!(sess(&sp.train).is_disjoint(&sess(&sp.val)));
        // 2 of 10 benign sessions and 1 of 5 dos sessions in validation.
        assert_eq!(sp.val.len(), 2 * 20 + 10);
        assert!(sp.train.iter().all(|&i| ds.family_of(i) != "scan"));
    }

    #[test]
    fn support_and_query_never_share_a_session() {
        let ds = toy();
        let all: Vec<usize> = (0..ds.rows()).collect();
        let idx = TaskIndex::build(&ds, &all, TaskBy::Family);
        assert_eq!(idx.usable().len(), 2);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..200 {
            let g = rng.random_range(0..2);
            let k = rng.random_range(1..=15);
            let e = idx.draw(g, k, 16, 8, 8, &mut rng).unwrap();
            assert_eq!(e.support_pos.len(), k);
            assert_eq!(e.support_neg.len(), 16);
            assert!(!e.query_pos.is_empty() && !e.query_neg.is_empty());
            let s = |v: &[usize]| {
                v.iter()
                    .map(|&i| ds.session[i])
                    .collect::<std::collections::BTreeSet<_>>()
            };
            assert!(s(&e.support_pos).is_disjoint(&s(&e.query_pos)));
            assert!(s(&e.support_neg).is_disjoint(&s(&e.query_neg)));
            assert!(e.support_pos.iter().all(|&i| ds.label[i] == 1));
            assert!(e.query_neg.iter().all(|&i| ds.label[i] == 0));
        }
        // 25 positives cannot come from the 3 scan sessions with one left for the query.
        let scan = idx.groups.iter().position(|g| g.name == "scan").unwrap();
        assert!(idx.draw(scan, 25, 4, 4, 4, &mut rng).is_none());
    }
}

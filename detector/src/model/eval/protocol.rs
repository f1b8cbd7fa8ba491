//! The evaluation protocol's data handling: benign sessions split once into training and query
//! sessions, the training set of one held-out family, and support/query draws in which support
//! and query never share a session.

use std::collections::BTreeMap;

use rand::Rng;

use crate::dataset::Dataset;
use crate::model::episodes::{deal_sessions, sample, shuffle};

/// Benign rows split by session: training sessions (meta-training, normaliser, benign
/// support, thresholds, the unsupervised baseline) and query sessions (only ever scored).
#[derive(Clone, Debug, Default)]
pub struct BenignSplit {
    /// Rows of the training sessions.
    pub train: Vec<usize>,
    /// Rows of the query sessions.
    pub query: Vec<usize>,
    /// Session counts.
    pub train_sessions: usize,
    /// Query sessions.
    pub query_sessions: usize,
}

/// Splits the benign sessions of `ds`: a `query_fraction` of them (at least one, and at least
/// one left for training) become query sessions. Errors with fewer than two benign sessions.
pub fn split_benign(
    ds: &Dataset,
    query_fraction: f64,
    rng: &mut impl Rng,
) -> Result<BenignSplit, String> {
    let mut by_session: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for i in 0..ds.rows() {
        if ds.label[i] == 0 {
            by_session.entry(ds.session[i]).or_default().push(i);
        }
    }
    let n = by_session.len();
    if n < 2 {
        return Err(format!(
            "{n} benign session(s): the evaluation needs at least two, one to train on and one \
             to measure false alerts on"
        ));
    }
    let mut sessions: Vec<u32> = by_session.keys().copied().collect();
    shuffle(&mut sessions, rng);
    let n_query = ((n as f64 * query_fraction).round() as usize).clamp(1, n - 1);
    let mut split = BenignSplit {
        query_sessions: n_query,
        train_sessions: n - n_query,
        ..Default::default()
    };
    for (k, s) in sessions.iter().enumerate() {
        let dst = if k < n_query {
            &mut split.query
        } else {
            &mut split.train
        };
        dst.extend(&by_session[s]);
    }
    split.train.sort_unstable();
    split.query.sort_unstable();
    Ok(split)
}

/// The attack rows of one family, by session (sessions in index order).
#[derive(Clone, Debug)]
pub struct FamilyRows {
    /// Family name.
    pub name: String,
    /// Row indices per session.
    pub sessions: Vec<Vec<usize>>,
}

impl FamilyRows {
    /// Indexes the attack rows of family `name`.
    pub fn of(ds: &Dataset, name: &str) -> Self {
        let mut by: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for i in 0..ds.rows() {
            if ds.label[i] == 1 && ds.family_of(i) == name {
                by.entry(ds.session[i]).or_default().push(i);
            }
        }
        FamilyRows {
            name: name.to_string(),
            sessions: by.into_values().collect(),
        }
    }

    /// All rows, session after session.
    pub fn rows(&self) -> Vec<usize> {
        self.sessions.iter().flatten().copied().collect()
    }
}

/// One support draw: `k` attack rows from whole sessions, the query from the others.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    /// Support rows (dataset indices).
    pub support: Vec<usize>,
    /// Sessions dealt to the support (indices into [`FamilyRows::sessions`]).
    pub support_sessions: Vec<usize>,
    /// Query rows: every row of the other sessions.
    pub query: Vec<usize>,
}

/// Deals the family's sessions in random order to the support until it holds at least `k`
/// rows (one session whenever the first holds `k`), draws `k` of those rows, and puts every
/// row of the remaining sessions in the query. `None` when no session would be left.
pub fn draw(fam: &FamilyRows, k: usize, rng: &mut impl Rng) -> Option<Draw> {
    if k == 0 {
        return None;
    }
    let dealt = deal_sessions(&fam.sessions, k, rng)?;
    let mut pool = dealt.support_rows(&fam.sessions);
    let support = sample(&mut pool, k, rng);
    let query = dealt.other_rows(&fam.sessions);
    let mut support_sessions = dealt.order[..dealt.cut].to_vec();
    support_sessions.sort_unstable();
    Some(Draw {
        support,
        support_sessions,
        query,
    })
}

/// The training set of one held-out family: the benign rows of the training sessions and
/// every attack row of the other families (dictionaries and timestamps carried over).
pub fn training_set(ds: &Dataset, benign_train: &[usize], held_out: &str) -> Dataset {
    let mut out = Dataset::new(&ds.source, ds.feature_names.clone());
    let ts = ds.timestamp_ns.as_ref();
    let mut push = |i: usize| {
        out.push(
            ds.row(i),
            ds.label[i],
            ds.family_of(i),
            ds.attack_of(i),
            ds.session_of(i),
            ts.map(|t| t[i]),
        )
    };
    for &i in benign_train {
        push(i);
    }
    for i in 0..ds.rows() {
        if ds.label[i] == 1 && ds.family_of(i) != held_out {
            push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeSet;

    /// Benign sessions b0..b9 (20 rows), dos d0..d4 (10 rows), scan s0..s2 (3 rows).
    fn toy() -> Dataset {
        let mut ds = Dataset::new("toy", vec!["x".into()]);
        for s in 0..10 {
            for r in 0..20 {
                ds.push(&[r as f32], 0, "benign", "normal", &format!("b{s}"), None);
            }
        }
        for (fam, n, rows) in [("dos", 5, 10), ("scan", 3, 3)] {
            for s in 0..n {
                for r in 0..rows {
                    ds.push(&[r as f32], 1, fam, fam, &format!("{fam}{s}"), None);
                }
            }
        }
        ds
    }

    fn sessions(ds: &Dataset, rows: &[usize]) -> BTreeSet<u32> {
        rows.iter().map(|&i| ds.session[i]).collect()
    }

    #[test]
    fn support_and_query_never_share_a_session() {
        let ds = toy();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let split = split_benign(&ds, 0.5, &mut rng).unwrap();
        assert_eq!((split.train_sessions, split.query_sessions), (5, 5));
        assert!(sessions(&ds, &split.train).is_disjoint(&sessions(&ds, &split.query)));
        assert_eq!(split.train.len() + split.query.len(), 200);
        for (fam, ks) in [("dos", &[1, 5, 10][..]), ("scan", &[1, 5][..])] {
            let f = FamilyRows::of(&ds, fam);
            for &k in ks {
                for _ in 0..100 {
                    let d = draw(&f, k, &mut rng).unwrap();
                    assert_eq!(d.support.len(), k);
                    assert!(!d.query.is_empty());
                    assert!(sessions(&ds, &d.support).is_disjoint(&sessions(&ds, &d.query)));
                    assert!(d.support.iter().all(|&i| ds.family_of(i) == fam));
                    // One session whenever one holds K rows.
                    let need = if fam == "dos" { 1 } else { k.div_ceil(3) };
                    assert_eq!(d.support_sessions.len(), need, "{fam} K={k}");
                    // The query is every row of the sessions not dealt.
                    let rows: usize = (0..f.sessions.len())
                        .filter(|s| !d.support_sessions.contains(s))
                        .map(|s| f.sessions[s].len())
                        .sum();
                    assert_eq!(d.query.len(), rows);
                }
            }
        }
        // Ten scan rows would need all three sessions: nothing left for the query.
        assert!(draw(&FamilyRows::of(&ds, "scan"), 7, &mut rng).is_none());
        // The training set of held-out `scan`: training benign rows and dos only.
        let t = training_set(&ds, &split.train, "scan");
        assert_eq!(t.rows(), 100 + 50);
        assert!((0..t.rows()).all(|i| t.family_of(i) != "scan"));
        // Too few benign sessions is an error.
        let mut one = Dataset::new("toy", vec!["x".into()]);
        one.push(&[0.0], 0, "benign", "normal", "b", None);
        assert!(split_benign(&one, 0.5, &mut rng).is_err());
    }
}

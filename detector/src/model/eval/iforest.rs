//! Isolation forest (Liu, Ting and Zhou, ICDM 2008): the unsupervised baseline, trained on
//! benign rows only. Each tree isolates a random subsample by random axis-aligned cuts; rows
//! unlike the training rows are isolated in fewer cuts. Score `2^(−E[h(x)] / c(ψ))` in (0, 1],
//! higher = more anomalous.

use rand::Rng;

/// Forest options (the paper's defaults: 100 trees of 256 rows).
#[derive(Clone, Copy, Debug)]
pub struct ForestConfig {
    /// Trees.
    pub trees: usize,
    /// Rows per tree (ψ); the depth limit is ⌈log₂ ψ⌉.
    pub sample: usize,
}

impl Default for ForestConfig {
    fn default() -> Self {
        ForestConfig {
            trees: 100,
            sample: 256,
        }
    }
}

#[derive(Clone, Debug)]
enum Node {
    /// Rows with `x[feature] < split` go left.
    Split {
        feature: usize,
        split: f32,
        left: usize,
        right: usize,
    },
    /// A leaf that held `size` training rows.
    Leaf { size: usize },
}

/// A trained isolation forest.
#[derive(Clone, Debug)]
pub struct IsolationForest {
    d: usize,
    /// Nodes of all trees; each tree's root index in `roots`.
    nodes: Vec<Node>,
    roots: Vec<usize>,
    /// c(ψ): the mean path length of an unsuccessful search in a BST of ψ rows.
    norm: f64,
}

/// Average path length of an unsuccessful BST search among `n` rows (the paper's c(n)).
fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

impl IsolationForest {
    /// Fits on `n` rows of width `d` (row-major). `None` without rows or columns.
    pub fn fit(rows: &[f32], d: usize, cfg: ForestConfig, rng: &mut impl Rng) -> Option<Self> {
        if d == 0 || rows.len() < d || cfg.trees == 0 {
            return None;
        }
        let n = rows.len() / d;
        let psi = cfg.sample.clamp(2, n.max(2)).min(n);
        let limit = (psi as f64).log2().ceil() as usize;
        let mut forest = IsolationForest {
            d,
            nodes: Vec::new(),
            roots: Vec::with_capacity(cfg.trees),
            norm: c(psi).max(1.0),
        };
        let mut all: Vec<usize> = (0..n).collect();
        for _ in 0..cfg.trees {
            // ψ distinct rows (partial Fisher–Yates).
            for i in 0..psi {
                let j = rng.random_range(i..n);
                all.swap(i, j);
            }
            let mut sample = all[..psi].to_vec();
            let root = forest.grow(rows, &mut sample, 0, limit, rng);
            forest.roots.push(root);
        }
        Some(forest)
    }

    fn grow(
        &mut self,
        rows: &[f32],
        idx: &mut [usize],
        depth: usize,
        limit: usize,
        rng: &mut impl Rng,
    ) -> usize {
        let d = self.d;
        let leaf = |s: &mut Self, size| {
            s.nodes.push(Node::Leaf { size });
            s.nodes.len() - 1
        };
        if depth >= limit || idx.len() <= 1 {
            return leaf(self, idx.len());
        }
        // A random feature that is not constant on these rows (a few tries, as in common
        // implementations; a subsample constant in every tried feature is a leaf).
        let mut chosen = None;
        for _ in 0..d.min(16) {
            let f = rng.random_range(0..d);
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &i in idx.iter() {
                let v = rows[i * d + f];
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if hi > lo {
                chosen = Some((f, lo, hi));
                break;
            }
        }
        let Some((feature, lo, hi)) = chosen else {
            return leaf(self, idx.len());
        };
        let mut split = rng.random_range(lo..hi);
        if split <= lo {
            split = hi;
        }
        // Partition in place: rows below the split first.
        let mut k = 0;
        for j in 0..idx.len() {
            if rows[idx[j] * d + feature] < split {
                idx.swap(j, k);
                k += 1;
            }
        }
        let me = self.nodes.len();
        self.nodes.push(Node::Leaf { size: 0 });
        let (l, r) = idx.split_at_mut(k);
        let left = self.grow(rows, l, depth + 1, limit, rng);
        let right = self.grow(rows, r, depth + 1, limit, rng);
        self.nodes[me] = Node::Split {
            feature,
            split,
            left,
            right,
        };
        me
    }

    /// Path length of one row in one tree, with c(size) for the rows a leaf still held.
    fn path(&self, root: usize, x: &[f32]) -> f64 {
        let mut node = root;
        let mut depth = 0.0;
        loop {
            match self.nodes[node] {
                Node::Split {
                    feature,
                    split,
                    left,
                    right,
                } => {
                    // NaN goes right, like any value not below the split.
                    node = if x[feature] < split { left } else { right };
                    depth += 1.0;
                }
                Node::Leaf { size } => return depth + c(size),
            }
        }
    }

    /// Anomaly scores of `rows` (row-major, width `d`): `2^(−E[h] / c(ψ))`.
    pub fn score(&self, rows: &[f32]) -> Vec<f32> {
        rows.chunks_exact(self.d)
            .map(|x| {
                let mean = self.roots.iter().map(|&r| self.path(r, x)).sum::<f64>()
                    / self.roots.len() as f64;
                2f64.powf(-mean / self.norm) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn an_obvious_outlier_scores_highest() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d = 4;
        let train: Vec<f32> = (0..2000 * d)
            .map(|_| rng.random_range(-1.0..1.0f32))
            .collect();
        let forest = IsolationForest::fit(&train, d, ForestConfig::default(), &mut rng).unwrap();
        let mut test: Vec<f32> = (0..50 * d)
            .map(|_| rng.random_range(-1.0..1.0f32))
            .collect();
        test.extend([6.0, -5.0, 4.0, 7.0]);
        let s = forest.score(&test);
        let outlier = s[50];
        let inliers_max = s[..50].iter().cloned().fold(f32::MIN, f32::max);
        assert!(outlier > inliers_max, "{outlier} vs {inliers_max}");
        assert!(outlier > 0.6, "an isolated point scores near 1: {outlier}");
        let mean_in = s[..50].iter().sum::<f32>() / 50.0;
        assert!(
            mean_in < outlier - 0.1,
            "inliers score well below it: {mean_in}"
        );
        // Reproducible from the seed; no rows is no forest.
        let a = IsolationForest::fit(&train, d, ForestConfig::default(), &mut rng_of(1)).unwrap();
        let b = IsolationForest::fit(&train, d, ForestConfig::default(), &mut rng_of(1)).unwrap();
        assert_eq!(a.score(&test), b.score(&test));
        assert!(IsolationForest::fit(&[], d, ForestConfig::default(), &mut rng).is_none());
        // Constant training rows: every tree is a leaf; scores are finite and equal.
        let flat = IsolationForest::fit(&[1.0; 40], d, ForestConfig::default(), &mut rng).unwrap();
        let s = flat.score(&[1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 9.0]);
        assert!(s.iter().all(|v| v.is_finite()) && s[0] == s[1]);
    }

    fn rng_of(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }
}

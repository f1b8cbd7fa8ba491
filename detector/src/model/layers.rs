//! The network's layers as plain f32 arrays, the f32 reference forward pass (used for
//! training-time evaluation, prototypes and explanations) and gradient × input.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Largest magnitude a weight or bias in a model file may have. Trained values stay within a few
/// units; with inputs clipped to ±`normalise::CLIP`, this bound keeps every activation, the logit
/// and the novelty distances finite, so a model file cannot make scores NaN (found by fuzzing).
pub const MAX_PARAM: f32 = 1e3;

/// Layer widths: input layer → `hidden[0]` → … → `hidden[last]` (the embedding) → 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    /// Output widths of the input layer and each encoder layer; the last is the embedding
    /// width. Each a multiple of 16 (the int8 kernels work on blocks of 16 outputs).
    pub hidden: Vec<usize>,
}

impl Default for Arch {
    fn default() -> Self {
        Arch {
            hidden: vec![64, 64, 32],
        }
    }
}

impl Arch {
    /// Width of the embedding (the last hidden layer).
    pub fn embed_dim(&self) -> usize {
        self.hidden.last().copied().unwrap_or(0)
    }

    /// Checks the widths.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden.is_empty() || self.hidden.len() > 8 {
            return Err(format!(
                "{} hidden layers (1 to 8 expected)",
                self.hidden.len()
            ));
        }
        if let Some(w) = self
            .hidden
            .iter()
            .find(|&&w| w == 0 || w % 16 != 0 || w > 4096)
        {
            return Err(format!(
                "hidden width {w} is not a positive multiple of 16 up to 4096"
            ));
        }
        Ok(())
    }
}

/// A dense layer `y = W x + b`, `W` row-major `[out][in]` as in candle's `Linear`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Output width.
    pub out_dim: usize,
    /// Input width.
    pub in_dim: usize,
    /// `out_dim × in_dim`, row-major.
    pub weight: Vec<f32>,
    /// `out_dim`.
    pub bias: Vec<f32>,
}

impl Linear {
    /// He-uniform initialisation (suits ReLU), zero bias.
    pub fn init(out_dim: usize, in_dim: usize, rng: &mut impl Rng) -> Self {
        let bound = (6.0 / in_dim.max(1) as f32).sqrt();
        Linear {
            out_dim,
            in_dim,
            weight: (0..out_dim * in_dim)
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
            bias: vec![0.0; out_dim],
        }
    }

    /// All-zero layer.
    pub fn zeros(out_dim: usize, in_dim: usize) -> Self {
        Linear {
            out_dim,
            in_dim,
            weight: vec![0.0; out_dim * in_dim],
            bias: vec![0.0; out_dim],
        }
    }

    /// `y = W x + b` for one row.
    #[inline]
    pub fn forward_row(&self, x: &[f32], y: &mut [f32]) {
        for (o, yo) in y.iter_mut().enumerate().take(self.out_dim) {
            let w = &self.weight[o * self.in_dim..(o + 1) * self.in_dim];
            *yo = self.bias[o] + dot(w, x);
        }
    }

    /// True when every value is finite and within [`MAX_PARAM`], and the lengths match the
    /// widths.
    pub fn is_valid(&self) -> bool {
        self.weight.len() == self.out_dim * self.in_dim
            && self.bias.len() == self.out_dim
            && self
                .weight
                .iter()
                .chain(&self.bias)
                .all(|v| v.is_finite() && v.abs() <= MAX_PARAM)
    }
}

/// Dot product with eight independent accumulators (vectorises; fixed summation order).
/// Always inlined, so it is compiled with the SIMD features of the kernel that calls it.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// The layers one feature set's rows go through: its input layer, the shared encoder layers,
/// the head. Borrowed from a model.
pub struct Stack<'a> {
    /// Input layer, then encoder layers (each followed by ReLU).
    pub body: Vec<&'a Linear>,
    /// Head (no activation): the logit.
    pub head: &'a Linear,
}

impl Stack<'_> {
    /// Width of the embedding.
    pub fn embed_dim(&self) -> usize {
        self.body.last().map(|l| l.out_dim).unwrap_or(0)
    }

    /// Reference forward pass on `n` normalised rows: logits and, when given, embeddings.
    pub fn forward(&self, x: &[f32], n: usize, logits: &mut [f32], mut emb: Option<&mut [f32]>) {
        let d = self.body.first().map(|l| l.in_dim).unwrap_or(0);
        let e = self.embed_dim();
        let widest = self.body.iter().map(|l| l.out_dim).max().unwrap_or(0);
        let mut a = vec![0f32; widest.max(d)];
        let mut b = vec![0f32; widest];
        for i in 0..n {
            a[..d].copy_from_slice(&x[i * d..(i + 1) * d]);
            let mut width = d;
            for l in &self.body {
                l.forward_row(&a[..width], &mut b[..l.out_dim]);
                for v in &mut b[..l.out_dim] {
                    *v = v.max(0.0);
                }
                width = l.out_dim;
                a[..width].copy_from_slice(&b[..width]);
            }
            if let Some(emb) = emb.as_deref_mut() {
                emb[i * e..(i + 1) * e].copy_from_slice(&a[..e]);
            }
            logits[i] = self.head.bias[0] + dot(&self.head.weight[..e], &a[..e]);
        }
    }

    /// Gradient of the logit with respect to one normalised input row, and the logit: one
    /// forward pass keeping the ReLU masks, one backward pass through them.
    pub fn input_gradient(&self, x: &[f32]) -> (Vec<f32>, f32) {
        let mut acts: Vec<Vec<f32>> = vec![x.to_vec()];
        for l in &self.body {
            let mut y = vec![0f32; l.out_dim];
            l.forward_row(acts.last().expect("input row"), &mut y);
            y.iter_mut().for_each(|v| *v = v.max(0.0));
            acts.push(y);
        }
        let top = acts.last().expect("embedding");
        let logit = self.head.bias[0] + dot(&self.head.weight[..top.len()], top);
        // Backward: δ = ∂logit/∂activation, masked by the ReLUs (active where output > 0).
        let mut delta: Vec<f32> = self.head.weight[..top.len()].to_vec();
        for (k, l) in self.body.iter().enumerate().rev() {
            let out = &acts[k + 1];
            let mut prev = vec![0f32; l.in_dim];
            for o in 0..l.out_dim {
                if out[o] <= 0.0 {
                    continue;
                }
                let g = delta[o];
                let w = &l.weight[o * l.in_dim..(o + 1) * l.in_dim];
                for (p, &wi) in prev.iter_mut().zip(w) {
                    *p += g * wi;
                }
            }
            delta = prev;
        }
        (delta, logit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn input_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let l0 = Linear::init(16, 5, &mut rng);
        let l1 = Linear::init(16, 16, &mut rng);
        let head = Linear::init(1, 16, &mut rng);
        let s = Stack {
            body: vec![&l0, &l1],
            head: &head,
        };
        let x = [0.3, -1.2, 0.7, 2.0, -0.4];
        let (g, logit) = s.input_gradient(&x);
        let mut out = [0f32];
        s.forward(&x, 1, &mut out, None);
        assert!((out[0] - logit).abs() < 1e-5);
        for j in 0..5 {
            let h = 1e-3;
            let mut xp = x;
            xp[j] += h;
            let mut xm = x;
            xm[j] -= h;
            let (mut yp, mut ym) = ([0f32], [0f32]);
            s.forward(&xp, 1, &mut yp, None);
            s.forward(&xm, 1, &mut ym, None);
            let fd = (yp[0] - ym[0]) / (2.0 * h);
            assert!(
                (fd - g[j]).abs() < 2e-2,
                "feature {j}: fd {fd} grad {}",
                g[j]
            );
        }
    }
}

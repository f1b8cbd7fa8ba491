//! The network in candle for training and adaptation: forward pass, class-balanced loss, the
//! loss gradient written out as candle operations (so that it is itself differentiable: that
//! is what second-order MAML needs), and the SGD inner loop.
//!
//! candle 0.11's `backward()` detaches the gradients it returns unless the environment variable
//! `CANDLE_GRAD_DO_NOT_DETACH` is set when a thread first uses it, so differentiating through
//! `backward()` silently gives the first-order answer (tested below). The explicit gradient
//! avoids that: the inner update is an ordinary graph and one ordinary `backward()` gives the
//! exact meta-gradient (checked against finite differences).

use candle_core::{DType, Device, Result, Tensor, Var};

use super::{Linear, Model, ModelError};

/// A labelled batch: normalised rows, 0/1 targets and per-row loss weights.
pub struct Batch {
    /// `(n, d)`.
    pub x: Tensor,
    /// `(n, 1)`, 0 or 1.
    pub y: Tensor,
    /// `(n, 1)`: each class carries half the loss whatever its size.
    pub w: Tensor,
    /// Rows.
    pub n: usize,
}

impl Batch {
    /// Builds a batch from normalised rows (`n × d`) and labels; the loss weights balance the
    /// classes (½ / n₊ per positive, ½ / n₋ per negative; one class alone gets weight 1 / n).
    pub fn new(x: &[f32], d: usize, labels: &[u8], dev: &Device) -> Result<Self> {
        let n = labels.len();
        let n_pos = labels.iter().filter(|&&l| l == 1).count();
        let n_neg = n - n_pos;
        let (wp, wn) = match (n_pos, n_neg) {
            (0, _) => (0.0, 1.0 / n_neg.max(1) as f32),
            (_, 0) => (1.0 / n_pos as f32, 0.0),
            _ => (0.5 / n_pos as f32, 0.5 / n_neg as f32),
        };
        let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let w: Vec<f32> = labels
            .iter()
            .map(|&l| if l == 1 { wp } else { wn })
            .collect();
        Ok(Batch {
            x: Tensor::from_slice(&x[..n * d], (n, d), dev)?,
            y: Tensor::from_vec(y, (n, 1), dev)?,
            w: Tensor::from_vec(w, (n, 1), dev)?,
            n,
        })
    }
}

/// `[W₀, b₀, W₁, b₁, …, W_head, b_head]` of one feature set's stack, W as `(out, in)`.
pub fn params_of(model: &Model, feature_set: &str, dev: &Device) -> Result<Vec<Tensor>> {
    let stack = model
        .stack(feature_set)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut out = Vec::new();
    for l in stack
        .body
        .iter()
        .copied()
        .chain(std::iter::once(stack.head))
    {
        out.push(Tensor::from_slice(&l.weight, (l.out_dim, l.in_dim), dev)?);
        out.push(Tensor::from_slice(&l.bias, l.out_dim, dev)?);
    }
    Ok(out)
}

/// Mutable references to the same layers, in the same order as [`params_of`].
pub fn layers_mut<'a>(
    model: &'a mut Model,
    feature_set: &str,
) -> std::result::Result<Vec<&'a mut Linear>, ModelError> {
    let known = model.feature_sets().join(", ");
    let input = model
        .inputs
        .get_mut(feature_set)
        .ok_or_else(|| ModelError::UnknownFeatureSet {
            found: feature_set.to_string(),
            known,
        })?;
    let mut v = vec![&mut input.linear];
    v.extend(model.encoder.iter_mut());
    v.push(&mut model.head);
    Ok(v)
}

/// Writes parameter tensors back into the model's layers.
pub fn store(
    model: &mut Model,
    feature_set: &str,
    params: &[Tensor],
) -> std::result::Result<(), ModelError> {
    let layers = layers_mut(model, feature_set)?;
    for (l, pair) in layers.into_iter().zip(params.chunks_exact(2)) {
        l.weight = pair[0].flatten_all()?.to_vec1::<f32>()?;
        l.bias = pair[1].flatten_all()?.to_vec1::<f32>()?;
    }
    Ok(())
}

/// Logits `(n, 1)`.
pub fn forward(p: &[Tensor], x: &Tensor) -> Result<Tensor> {
    let layers = p.len() / 2;
    let mut h = x.clone();
    for l in 0..layers {
        h = h.matmul(&p[2 * l].t()?)?.broadcast_add(&p[2 * l + 1])?;
        if l + 1 < layers {
            h = h.relu()?;
        }
    }
    Ok(h)
}

/// Weighted binary cross-entropy on logits, `Σ wᵢ (softplus(zᵢ) − yᵢ zᵢ)`, stable for any z.
pub fn loss(logits: &Tensor, b: &Batch) -> Result<Tensor> {
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    ((softplus - (logits * &b.y)?)? * &b.w)?.sum_all()
}

/// Loss of the parameters on a batch, as a number.
pub fn loss_value(p: &[Tensor], b: &Batch) -> Result<f32> {
    loss(&forward(p, &b.x)?, b)?.to_scalar::<f32>()
}

/// Gradient of [`loss`] with respect to every parameter, built from ordinary candle operations
/// (a hand-written backward pass), so the result can itself be differentiated.
pub fn grads(p: &[Tensor], b: &Batch) -> Result<Vec<Tensor>> {
    let layers = p.len() / 2;
    let mut acts = vec![b.x.clone()];
    let mut pre = Vec::with_capacity(layers);
    for l in 0..layers {
        let z = acts[l]
            .matmul(&p[2 * l].t()?)?
            .broadcast_add(&p[2 * l + 1])?;
        if l + 1 < layers {
            acts.push(z.relu()?);
        }
        pre.push(z);
    }
    // ∂loss/∂logit = w (σ(z) − y).
    let mut delta = ((candle_nn::ops::sigmoid(&pre[layers - 1])? - &b.y)? * &b.w)?;
    let mut out = vec![Tensor::zeros(1, DType::F32, b.x.device())?; p.len()];
    for l in (0..layers).rev() {
        out[2 * l] = delta.t()?.matmul(&acts[l])?;
        out[2 * l + 1] = delta.sum(0)?;
        if l > 0 {
            let mask = pre[l - 1].gt(0.0)?.to_dtype(DType::F32)?;
            delta = (delta.matmul(&p[2 * l])? * mask)?;
        }
    }
    Ok(out)
}

/// Largest gradient norm an SGD step takes: rare batches (a family with a handful of extreme
/// rows) otherwise throw the weights to infinity at lr 0.1, and one such task poisons a whole
/// meta-training run.
pub const MAX_GRAD_NORM: f64 = 10.0;

/// `steps` plain SGD steps on `b`, updating only the parameters marked in `trainable` (one flag
/// per tensor), with the gradient norm clipped to [`MAX_GRAD_NORM`]. With tracked parameters
/// the updates stay in the graph (MAML; the clipping factor is a constant there).
pub fn sgd(
    mut p: Vec<Tensor>,
    b: &Batch,
    steps: usize,
    lr: f32,
    trainable: &[bool],
) -> Result<Vec<Tensor>> {
    for _ in 0..steps {
        let g = grads(&p, b)?;
        let mut sq = 0f64;
        for gi in &g {
            sq += gi.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        let scale = if norm.is_finite() && norm > MAX_GRAD_NORM {
            MAX_GRAD_NORM / norm
        } else {
            1.0
        };
        if !norm.is_finite() {
            // A non-finite gradient: skip the step rather than spread NaN into the weights.
            continue;
        }
        for (i, gi) in g.iter().enumerate() {
            if trainable.get(i).copied().unwrap_or(true) {
                p[i] = (&p[i] - gi.affine(lr as f64 * scale, 0.0)?)?;
            }
        }
    }
    Ok(p)
}

/// Second-order MAML meta-gradient of one task: the gradient, with respect to `theta`, of the
/// query loss after `steps` SGD steps on the support. Also returns the query loss.
pub fn maml_meta_gradient(
    theta: &[Tensor],
    support: &Batch,
    query: &Batch,
    steps: usize,
    lr: f32,
) -> Result<(Vec<Tensor>, f32)> {
    let vars: Vec<Var> = theta.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let p: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let adapted = sgd(p, support, steps, lr, &[])?;
    let q = loss(&forward(&adapted, &query.x)?, query)?;
    let value = q.to_scalar::<f32>()?;
    let g = q.backward()?;
    let grads = vars
        .iter()
        .map(|v| match g.get(v) {
            Some(t) => Ok(t.clone()),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<Result<_>>()?;
    Ok((grads, value))
}

/// First-order MAML meta-gradient: the query-loss gradient at the adapted parameters.
pub fn fomaml_meta_gradient(
    theta: &[Tensor],
    support: &Batch,
    query: &Batch,
    steps: usize,
    lr: f32,
) -> Result<(Vec<Tensor>, f32)> {
    let adapted = sgd(theta.to_vec(), support, steps, lr, &[])?;
    let value = loss_value(&adapted, query)?;
    Ok((grads(&adapted, query)?, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tests::names, Arch, Normaliser};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A tiny model and two batches.
    fn tiny() -> (Vec<Tensor>, Batch, Batch) {
        let dev = Device::Cpu;
        let d = 3;
        let m = Model::new(
            Arch { hidden: vec![16] },
            &[("t".into(), Normaliser::unfitted(names(d)))],
            11,
        );
        let p = params_of(&m, "t", &dev).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut mk = |n: usize| {
            let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.5..1.5)).collect();
            let y: Vec<u8> = (0..n)
                .map(|i| (x[i * d] + 0.5 * x[i * d + 1] > 0.0) as u8)
                .collect();
            Batch::new(&x, d, &y, &dev).unwrap()
        };
        let s = mk(12);
        let q = mk(10);
        (p, s, q)
    }

    fn to_f64(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as f64)
            .collect()
    }

    #[test]
    fn explicit_gradient_equals_candle_autograd() {
        let (p, s, _) = tiny();
        let vars: Vec<Var> = p.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let pt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let l = loss(&forward(&pt, &s.x).unwrap(), &s).unwrap();
        let auto = l.backward().unwrap();
        let ours = grads(&p, &s).unwrap();
        for (v, g) in vars.iter().zip(&ours) {
            let a = to_f64(auto.get(v).unwrap());
            let b = to_f64(g);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }

    /// Query loss after the inner loop as a function of f64 parameters (finite differences).
    fn meta_loss(p: &[Tensor], s: &Batch, q: &Batch, steps: usize, lr: f32) -> f64 {
        let conv = |b: &Batch| Batch {
            x: b.x.to_dtype(DType::F64).unwrap(),
            y: b.y.to_dtype(DType::F64).unwrap(),
            w: b.w.to_dtype(DType::F64).unwrap(),
            n: b.n,
        };
        let (s, q) = (conv(s), conv(q));
        let mut p = p.to_vec();
        for _ in 0..steps {
            let g = grads64(&p, &s);
            for i in 0..p.len() {
                p[i] = (&p[i] - g[i].affine(lr as f64, 0.0).unwrap()).unwrap();
            }
        }
        loss(&forward(&p, &q.x).unwrap(), &q)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    fn grads64(p: &[Tensor], b: &Batch) -> Vec<Tensor> {
        // Same maths as `grads`, in f64 (the mask dtype follows the data).
        let layers = p.len() / 2;
        let mut acts = vec![b.x.clone()];
        let mut pre = vec![];
        for l in 0..layers {
            let z = acts[l]
                .matmul(&p[2 * l].t().unwrap())
                .unwrap()
                .broadcast_add(&p[2 * l + 1])
                .unwrap();
            if l + 1 < layers {
                acts.push(z.relu().unwrap());
            }
            pre.push(z);
        }
        let sig = (pre[layers - 1].neg().unwrap().exp().unwrap() + 1.0)
            .unwrap()
            .recip()
            .unwrap();
        let mut delta = ((sig - &b.y).unwrap() * &b.w).unwrap();
        let mut out = vec![delta.clone(); p.len()];
        for l in (0..layers).rev() {
            out[2 * l] = delta.t().unwrap().matmul(&acts[l]).unwrap();
            out[2 * l + 1] = delta.sum(0).unwrap();
            if l > 0 {
                let mask = pre[l - 1].gt(0.0).unwrap().to_dtype(DType::F64).unwrap();
                delta = (delta.matmul(&p[2 * l]).unwrap() * mask).unwrap();
            }
        }
        out
    }

    #[test]
    fn second_order_meta_gradient_matches_finite_differences() {
        let (p, s, q) = tiny();
        let (steps, lr) = (3, 0.5);
        let (g2, _) = maml_meta_gradient(&p, &s, &q, steps, lr).unwrap();
        let (g1, _) = fomaml_meta_gradient(&p, &s, &q, steps, lr).unwrap();
        // Central differences in f64 on a sample of coordinates of every tensor.
        let p64: Vec<Tensor> = p.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
        let h = 1e-6;
        let (mut err2, mut err1, mut scale) = (0f64, 0f64, 0f64);
        for (ti, t) in p64.iter().enumerate() {
            let base = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let a2 = to_f64(&g2[ti]);
            let a1 = to_f64(&g1[ti]);
            for j in (0..base.len()).step_by(base.len().div_ceil(6).max(1)) {
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[j] += delta;
                    let mut pp = p64.clone();
                    pp[ti] = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                    meta_loss(&pp, &s, &q, steps, lr)
                };
                let fd = (eval(h) - eval(-h)) / (2.0 * h);
                err2 = err2.max((fd - a2[j]).abs());
                err1 = err1.max((fd - a1[j]).abs());
                scale = scale.max(fd.abs());
            }
        }
        assert!(scale > 1e-3, "meta-gradient is not trivially zero");
        assert!(
            err2 < 2e-3 * scale.max(1.0),
            "second-order error {err2} (scale {scale})"
        );
        // The first-order approximation is measurably different: the test can tell them apart.
        assert!(err1 > 10.0 * err2, "first-order error {err1} vs {err2}");
    }

    #[test]
    fn candle_backward_detaches_by_default() {
        // Differentiating through candle's own backward() yields the first-order result: the
        // inner gradient is a constant to the outer backward.
        let (p, s, q) = tiny();
        let vars: Vec<Var> = p.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let theta: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let lr = 0.5;
        let inner = loss(&forward(&theta, &s.x).unwrap(), &s).unwrap();
        let g = inner.backward().unwrap();
        let adapted: Vec<Tensor> = theta
            .iter()
            .zip(&vars)
            .map(|(t, v)| (t - g.get(v).unwrap().affine(lr, 0.0).unwrap()).unwrap())
            .collect();
        let outer = loss(&forward(&adapted, &q.x).unwrap(), &q).unwrap();
        let native = outer.backward().unwrap();
        let (fo, _) = fomaml_meta_gradient(&p, &s, &q, 1, lr as f32).unwrap();
        let (so, _) = maml_meta_gradient(&p, &s, &q, 1, lr as f32).unwrap();
        let (mut d_fo, mut d_so) = (0f64, 0f64);
        for (i, v) in vars.iter().enumerate() {
            let a = to_f64(native.get(v).unwrap());
            for ((x, y), z) in a.iter().zip(to_f64(&fo[i])).zip(to_f64(&so[i])) {
                d_fo = d_fo.max((x - y).abs());
                d_so = d_so.max((x - z).abs());
            }
        }
        let detached = std::env::var("CANDLE_GRAD_DO_NOT_DETACH")
            .map(|s| s.is_empty() || s == "0")
            .unwrap_or(true);
        if detached {
            assert!(d_fo < 1e-5, "native = first order ({d_fo})");
            assert!(d_so > 1e-4, "and differs from second order ({d_so})");
        }
    }

    #[test]
    fn sgd_reduces_the_loss_and_respects_trainable() {
        let (p, s, _) = tiny();
        let before = loss_value(&p, &s).unwrap();
        let after = sgd(p.clone(), &s, 20, 0.5, &[]).unwrap();
        assert!(loss_value(&after, &s).unwrap() < before * 0.8);
        let head_only = [false, false, true, true];
        let after = sgd(p.clone(), &s, 5, 0.5, &head_only).unwrap();
        assert_eq!(to_f64(&after[0]), to_f64(&p[0]));
        assert_ne!(to_f64(&after[2]), to_f64(&p[2]));
    }
}

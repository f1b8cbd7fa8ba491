//! int8 inference: weights quantised per output channel to i8, activations per row to u8,
//! i32 accumulation, on AVX-512 VNNI (`vpdpbusd` on zmm), AVX-VNNI (`vpdpbusd` on ymm), AVX2
//! (`vpmaddubsw` on activation nibbles, then `vpmaddwd`) or scalar code, chosen at run time
//! (docs/model.md, "Quantisation").
//!
//! `vpmaddubsw`'s i16 pair sums would saturate for whole u8·i8 values (2·255·127 > 32767), so
//! AVX2 multiplies the activations' high and low nibbles separately. Every path therefore
//! computes exactly the same integers, and the float row steps do the same operations in the
//! same order, so all paths give bit-identical results (tested); only their speed differs.

use std::cell::RefCell;

use super::layers::{dot, Linear};

/// Zero point of the (signed) normalised input: values map to 1..=255 around 128.
const INPUT_ZP: i32 = 128;
/// Largest |weight| after quantisation (symmetric: −128 is never used).
const WMAX: f32 = 127.0;
/// Rows processed per block (keeps the block's activations in L1).
const BLOCK: usize = 32;

/// A SIMD level of the int8 kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SimdLevel {
    /// Portable code.
    Scalar,
    /// AVX2.
    Avx2,
    /// AVX-VNNI: `vpdpbusd` on 256-bit registers (with AVX2).
    AvxVnni,
    /// AVX-512 with VNNI (and BW).
    Avx512Vnni,
}

impl SimdLevel {
    /// The best level this CPU has.
    pub fn detect() -> Self {
        *Self::available().last().unwrap_or(&SimdLevel::Scalar)
    }

    /// Every level this CPU can run, slowest first.
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut v = vec![SimdLevel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            if avx2 {
                v.push(SimdLevel::Avx2);
            }
            if avx2 && std::arch::is_x86_feature_detected!("avxvnni") {
                v.push(SimdLevel::AvxVnni);
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                v.push(SimdLevel::Avx512Vnni);
            }
        }
        v
    }

    /// Short name ("scalar", "avx2", "avx-vnni", "avx512-vnni").
    pub fn name(&self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::AvxVnni => "avx-vnni",
            SimdLevel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The CPU feature that makes this level usable ("avx512vnni", …; "none" for scalar).
    pub fn feature(&self) -> &'static str {
        match self {
            SimdLevel::Scalar => "none",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::AvxVnni => "avxvnni",
            SimdLevel::Avx512Vnni => "avx512vnni",
        }
    }
}

/// One quantised layer.
#[derive(Clone, Debug)]
pub struct QLayer {
    out: usize,
    inp: usize,
    /// `inp` rounded up to a multiple of 4 (one VNNI/maddubs group).
    inp_pad: usize,
    /// `[inp_pad / 4][out][4]`: 4 inputs of 16 (or 8) consecutive outputs are one vector.
    packed: Vec<i8>,
    /// `[out][inp_pad]` for the scalar path.
    rowmajor: Vec<i8>,
    scale: Vec<f32>,
    /// Σᵢ q[o][i], for the zero-point correction.
    wsum: Vec<i32>,
    bias: Vec<f32>,
    /// Zero point of this layer's input.
    zp: i32,
}

impl QLayer {
    fn new(l: &Linear, zp: i32) -> Self {
        let inp_pad = l.in_dim.div_ceil(4) * 4;
        let mut rowmajor = vec![0i8; l.out_dim * inp_pad];
        let mut scale = vec![0f32; l.out_dim];
        let mut wsum = vec![0i32; l.out_dim];
        for o in 0..l.out_dim {
            let w = &l.weight[o * l.in_dim..(o + 1) * l.in_dim];
            let m = w.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let s = if m > 0.0 { m / WMAX } else { 1.0 };
            scale[o] = s;
            for (i, &v) in w.iter().enumerate() {
                let q = (v / s).round_ties_even().clamp(-WMAX, WMAX) as i8;
                rowmajor[o * inp_pad + i] = q;
                wsum[o] += q as i32;
            }
        }
        let mut packed = vec![0i8; l.out_dim * inp_pad];
        for g in 0..inp_pad / 4 {
            for o in 0..l.out_dim {
                for t in 0..4 {
                    packed[(g * l.out_dim + o) * 4 + t] = rowmajor[o * inp_pad + g * 4 + t];
                }
            }
        }
        QLayer {
            out: l.out_dim,
            inp: l.in_dim,
            inp_pad,
            packed,
            rowmajor,
            scale,
            wsum,
            bias: l.bias.clone(),
            zp,
        }
    }
}

/// A quantised stack: input layer and encoder layers in int8, the head in f32.
#[derive(Clone, Debug)]
pub struct QuantModel {
    layers: Vec<QLayer>,
    head_w: Vec<f32>,
    head_b: f32,
    level: SimdLevel,
}

#[derive(Default)]
struct Scratch {
    xq: Vec<u8>,
    /// The kernel's own (AVX2: the activations' nibbles).
    xn: Vec<u8>,
    scales: Vec<f32>,
    acc: Vec<i32>,
    h: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl QuantModel {
    /// Quantises a stack (input layer, encoder layers, head) for `level`. Every hidden width
    /// must be a multiple of 16 ([`super::Arch::validate`]).
    pub fn new(body: &[&Linear], head: &Linear, level: SimdLevel) -> Self {
        let layers = body
            .iter()
            .enumerate()
            .map(|(k, l)| QLayer::new(l, if k == 0 { INPUT_ZP } else { 0 }))
            .collect();
        QuantModel {
            layers,
            head_w: head.weight.clone(),
            head_b: head.bias.first().copied().unwrap_or(0.0),
            level,
        }
    }

    /// The SIMD level in use.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// Input width.
    pub fn n_features(&self) -> usize {
        self.layers.first().map(|l| l.inp).unwrap_or(0)
    }

    /// Embedding width.
    pub fn embed_dim(&self) -> usize {
        self.layers.last().map(|l| l.out).unwrap_or(0)
    }

    /// Logits (and embeddings) of `n` normalised rows.
    pub fn forward(&self, x: &[f32], n: usize, logits: &mut [f32], mut emb: Option<&mut [f32]>) {
        let d = self.n_features();
        let e = self.embed_dim();
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let mut r0 = 0;
            while r0 < n {
                let rows = BLOCK.min(n - r0);
                let em = emb.as_deref_mut().map(|v| &mut v[r0 * e..(r0 + rows) * e]);
                let xs = &x[r0 * d..(r0 + rows) * d];
                let ls = &mut logits[r0..r0 + rows];
                self.block(xs, rows, ls, em, &mut s);
                r0 += rows;
            }
        });
    }

    fn block(
        &self,
        x: &[f32],
        rows: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let widest = self
            .layers
            .iter()
            .map(|l| l.inp_pad.max(l.out))
            .max()
            .unwrap_or(0);
        if s.xq.len() < rows * widest {
            s.xq.resize(BLOCK * widest, 0);
            s.acc.resize(BLOCK * widest, 0);
            s.h.resize(BLOCK * widest, 0.0);
        }
        s.scales.resize(BLOCK, 0.0);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was chosen from `is_x86_feature_detected!` (or by a caller that
            // checked `SimdLevel::available()`), so the CPU has these instructions.
            SimdLevel::Avx512Vnni => unsafe { x86::block_vnni(self, x, rows, logits, emb, s) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX-VNNI (and AVX2).
            SimdLevel::AvxVnni => unsafe { x86::block_avxvnni(self, x, rows, logits, emb, s) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2.
            SimdLevel::Avx2 => unsafe { x86::block_avx2(self, x, rows, logits, emb, s) },
            _ => block_generic::<ScalarKernel>(self, x, rows, logits, emb, s),
        }
    }
}

/// Multiplies `rows` quantised rows (`xq`, stride `inp_pad`) by a layer's weights into `acc`
/// (stride `out`); `xn` is scratch space the kernel may use. The row steps around it are
/// `Rows`: kernels of the same vector width share them.
trait Kernel {
    type Rows: RowSteps;

    /// # Safety
    /// The CPU must have the kernel's instructions; buffers must hold the sizes above.
    unsafe fn gemm(l: &QLayer, xq: &[u8], rows: usize, acc: &mut [i32], xn: &mut Vec<u8>);
}

/// The steps around the products, row by row: the portable functions, or SIMD code that
/// must give the same bits.
trait RowSteps {
    /// [`quantise_input`].
    /// # Safety
    /// The CPU must have the steps' instructions.
    unsafe fn quantise_input(x: &[f32], q: &mut [u8], tmp: &mut [f32]) -> f32;

    /// [`epilogue`].
    /// # Safety
    /// The CPU must have the steps' instructions.
    unsafe fn epilogue(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]);

    /// [`quantise_relu`].
    /// # Safety
    /// The CPU must have the steps' instructions.
    unsafe fn quantise_relu(h: &[f32], q: &mut [u8]) -> f32;
}

/// The portable row steps.
struct Portable;

impl RowSteps for Portable {
    #[inline(always)]
    unsafe fn quantise_input(x: &[f32], q: &mut [u8], tmp: &mut [f32]) -> f32 {
        quantise_input(x, q, tmp)
    }

    #[inline(always)]
    unsafe fn epilogue(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]) {
        epilogue(l, a, sr, h)
    }

    #[inline(always)]
    unsafe fn quantise_relu(h: &[f32], q: &mut [u8]) -> f32 {
        quantise_relu(h, q)
    }
}

struct ScalarKernel;

impl Kernel for ScalarKernel {
    type Rows = Portable;

    #[inline(always)]
    unsafe fn gemm(l: &QLayer, xq: &[u8], rows: usize, acc: &mut [i32], _xn: &mut Vec<u8>) {
        for r in 0..rows {
            let x = &xq[r * l.inp_pad..(r + 1) * l.inp_pad];
            for o in 0..l.out {
                let w = &l.rowmajor[o * l.inp_pad..(o + 1) * l.inp_pad];
                let mut a = 0i32;
                for i in 0..l.inp_pad {
                    a += x[i] as i32 * w[i] as i32;
                }
                acc[r * l.out + o] = a;
            }
        }
    }
}

/// Largest value of `f(x)` over a row, 0 for an empty row: 16 independent lanes so that it
/// vectorises (max is exact, so the order does not change the result).
#[inline(always)]
fn lane_max(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            let v = f(c[k]);
            lanes[k] = if v > lanes[k] { v } else { lanes[k] };
        }
    }
    for &v in rest {
        let v = f(v);
        lanes[0] = if v > lanes[0] { v } else { lanes[0] };
    }
    // Tree reduction in fresh arrays, so the halves stay in registers.
    let mx = |a: f32, b: f32| if b > a { b } else { a };
    let l8: [f32; 8] = std::array::from_fn(|k| mx(lanes[k], lanes[k + 8]));
    let l4: [f32; 4] = std::array::from_fn(|k| mx(l8[k], l8[k + 4]));
    let l2: [f32; 2] = std::array::from_fn(|k| mx(l4[k], l4[k + 2]));
    mx(l2[0], l2[1])
}

/// Quantises one signed row to 1..=255 around [`INPUT_ZP`] (NaN reads as 0, values are held
/// within ±1e6 first so the conversions below stay in range); returns the scale.
#[inline(always)]
fn quantise_input(x: &[f32], q: &mut [u8], tmp: &mut [f32]) -> f32 {
    let tmp = &mut tmp[..x.len()];
    for (t, &v) in tmp.iter_mut().zip(x) {
        let v = if v.is_nan() { 0.0 } else { v };
        *t = v.clamp(-1e6, 1e6);
    }
    let m = lane_max(tmp, f32::abs);
    let inv = if m > 0.0 { 127.0 / m } else { 0.0 };
    let (head, pad) = q.split_at_mut(x.len());
    for (qi, &v) in head.iter_mut().zip(tmp.iter()) {
        let r = (v * inv).round_ties_even();
        // SAFETY: |v| ≤ m, so |v · 127/m| ≤ 127 (+ rounding), an i32 after rounding.
        let i = unsafe { r.to_int_unchecked::<i32>() };
        *qi = (i + INPUT_ZP) as u8;
    }
    pad.fill(INPUT_ZP as u8);
    if m > 0.0 {
        m / 127.0
    } else {
        0.0
    }
}

/// Quantises one non-negative, finite row to 0..=255; returns the scale.
#[inline(always)]
fn quantise_relu(h: &[f32], q: &mut [u8]) -> f32 {
    let m = lane_max(h, |v| v);
    let inv = if m > 0.0 { 255.0 / m } else { 0.0 };
    for (qi, &v) in q.iter_mut().zip(h) {
        let r = (v * inv).round_ties_even();
        // SAFETY: 0 ≤ v ≤ m, so 0 ≤ v · 255/m ≤ 255 (+ rounding): in range of i32 and u8.
        *qi = unsafe { r.to_int_unchecked::<i32>() } as u8;
    }
    if m > 0.0 {
        m / 255.0
    } else {
        0.0
    }
}

/// Dequantise one row's accumulators, add the bias, ReLU (a select, so −0 never appears and
/// every path gives the same bits).
#[inline(always)]
fn epilogue(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]) {
    let zp = l.zp;
    for ((((hv, &av), &ws), &sc), &b) in h.iter_mut().zip(a).zip(&l.wsum).zip(&l.scale).zip(&l.bias)
    {
        let v = (av - zp * ws) as f32 * (sr * sc) + b;
        *hv = if v > 0.0 { v } else { 0.0 };
    }
}

/// The whole block for one kernel: quantise, multiply, dequantise + ReLU, repeat; then the head.
#[inline(always)]
fn block_generic<K: Kernel>(
    qm: &QuantModel,
    x: &[f32],
    rows: usize,
    logits: &mut [f32],
    emb: Option<&mut [f32]>,
    s: &mut Scratch,
) {
    let Scratch {
        xq,
        xn,
        scales,
        acc,
        h,
    } = s;
    let first = &qm.layers[0];
    for r in 0..rows {
        let q = &mut xq[r * first.inp_pad..(r + 1) * first.inp_pad];
        // SAFETY (here and below): the caller runs this only where K's instructions exist.
        scales[r] =
            unsafe { K::Rows::quantise_input(&x[r * first.inp..(r + 1) * first.inp], q, h) };
    }
    let n_layers = qm.layers.len();
    for (k, l) in qm.layers.iter().enumerate() {
        // SAFETY: as above; sizes are the block's.
        unsafe { K::gemm(l, xq, rows, acc, xn) };
        let out = l.out;
        for ((a, hr), &sr) in acc[..rows * out]
            .chunks_exact(out)
            .zip(h[..rows * out].chunks_exact_mut(out))
            .zip(scales.iter())
        {
            unsafe { K::Rows::epilogue(l, a, sr, hr) };
        }
        if k + 1 < n_layers {
            let stride = qm.layers[k + 1].inp_pad;
            for (r, sc) in scales.iter_mut().enumerate().take(rows) {
                let (hr, qr) = (&h[r * out..(r + 1) * out], &mut xq[r * stride..][..out]);
                *sc = unsafe { K::Rows::quantise_relu(hr, qr) };
            }
        }
    }
    let e = qm.embed_dim();
    for (r, lg) in logits.iter_mut().enumerate().take(rows) {
        *lg = qm.head_b + dot(&qm.head_w, &h[r * e..(r + 1) * e]);
    }
    if let Some(emb) = emb {
        emb[..rows * e].copy_from_slice(&h[..rows * e]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{block_generic, Kernel, QLayer, QuantModel, RowSteps, Scratch, INPUT_ZP};

    /// Row steps 16 values at a time (AVX-512; the VNNI kernel's).
    struct Steps512;

    impl RowSteps for Steps512 {
        #[inline(always)]
        unsafe fn quantise_input(x: &[f32], q: &mut [u8], _tmp: &mut [f32]) -> f32 {
            quantise_input_512(x, q)
        }

        #[inline(always)]
        unsafe fn epilogue(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]) {
            epilogue_512(l, a, sr, h)
        }

        #[inline(always)]
        unsafe fn quantise_relu(h: &[f32], q: &mut [u8]) -> f32 {
            quantise_relu_512(h, q)
        }
    }

    /// Row steps 8 values at a time (AVX2; the AVX2 and AVX-VNNI kernels share them).
    struct Steps256;

    impl RowSteps for Steps256 {
        #[inline(always)]
        unsafe fn quantise_input(x: &[f32], q: &mut [u8], _tmp: &mut [f32]) -> f32 {
            quantise_input_256(x, q)
        }

        #[inline(always)]
        unsafe fn epilogue(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]) {
            epilogue_256(l, a, sr, h)
        }

        #[inline(always)]
        unsafe fn quantise_relu(h: &[f32], q: &mut [u8]) -> f32 {
            quantise_relu_256(h, q)
        }
    }

    /// AVX-512 VNNI: 16 outputs per register, 4 rows × up to 4 output blocks at a time.
    struct Vnni;

    impl Kernel for Vnni {
        type Rows = Steps512;

        #[inline(always)]
        unsafe fn gemm(l: &QLayer, xq: &[u8], rows: usize, acc: &mut [i32], _xn: &mut Vec<u8>) {
            let groups = l.inp_pad / 4;
            let mut r = 0;
            while r + 4 <= rows {
                let mut ob = 0;
                while ob < l.out {
                    let nb = ((l.out - ob) / 16).min(4);
                    match nb {
                        4 => vnni_tile::<4, 4>(l, xq, r, ob, groups, acc),
                        3 => vnni_tile::<4, 3>(l, xq, r, ob, groups, acc),
                        2 => vnni_tile::<4, 2>(l, xq, r, ob, groups, acc),
                        _ => vnni_tile::<4, 1>(l, xq, r, ob, groups, acc),
                    }
                    ob += nb * 16;
                }
                r += 4;
            }
            while r < rows {
                let mut ob = 0;
                while ob < l.out {
                    let nb = ((l.out - ob) / 16).min(4);
                    match nb {
                        4 => vnni_tile::<1, 4>(l, xq, r, ob, groups, acc),
                        3 => vnni_tile::<1, 3>(l, xq, r, ob, groups, acc),
                        2 => vnni_tile::<1, 2>(l, xq, r, ob, groups, acc),
                        _ => vnni_tile::<1, 1>(l, xq, r, ob, groups, acc),
                    }
                    ob += nb * 16;
                }
                r += 1;
            }
        }
    }

    /// The first `n` (1 ..= 16 or more) of 16 lanes, without a branch.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    /// Calls `f(i, mask)` for each run of 16 values of `0..n` (the last one masked).
    #[inline(always)]
    unsafe fn by16(n: usize, mut f: impl FnMut(usize, __mmask16)) {
        let mut i = 0;
        while i + 16 <= n {
            f(i, 0xffff);
            i += 16;
        }
        if i < n {
            f(i, lanes(n - i));
        }
    }

    /// [`super::quantise_input`], 16 values at a time: NaN → 0 and ±1e6 bounds, max |v|, then
    /// `v · 127/m` rounded to nearest even (the default MXCSR mode, as `round_ties_even`) + 128.
    #[inline(always)]
    unsafe fn quantise_input_512(x: &[f32], q: &mut [u8]) -> f32 {
        let n = x.len();
        let bounded = |i: usize, k: __mmask16| {
            let v = _mm512_maskz_loadu_ps(k, x.as_ptr().add(i));
            let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v);
            _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1e6)), _mm512_set1_ps(1e6))
        };
        let mut mx = _mm512_setzero_ps();
        by16(n, |i, k| {
            mx = _mm512_max_ps(mx, _mm512_abs_ps(bounded(i, k)))
        });
        let m = _mm512_reduce_max_ps(mx);
        let inv = _mm512_set1_ps(if m > 0.0 { 127.0 / m } else { 0.0 });
        by16(n, |i, k| {
            let r = _mm512_cvtps_epi32(_mm512_mul_ps(bounded(i, k), inv));
            let r = _mm512_add_epi32(r, _mm512_set1_epi32(INPUT_ZP));
            _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(i) as *mut _, k, r);
        });
        q[n..].fill(INPUT_ZP as u8);
        if m > 0.0 {
            m / 127.0
        } else {
            0.0
        }
    }

    /// [`super::epilogue`], 16 outputs at a time (a multiplication and an addition, not fused:
    /// the same roundings as the portable code).
    #[inline(always)]
    unsafe fn epilogue_512(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]) {
        let n = l.out.min(a.len()).min(h.len());
        let (zp, sr) = (_mm512_set1_epi32(l.zp), _mm512_set1_ps(sr));
        by16(n, |i, k| {
            let av = _mm512_maskz_loadu_epi32(k, a.as_ptr().add(i));
            let ws = _mm512_maskz_loadu_epi32(k, l.wsum.as_ptr().add(i));
            let sc = _mm512_maskz_loadu_ps(k, l.scale.as_ptr().add(i));
            let b = _mm512_maskz_loadu_ps(k, l.bias.as_ptr().add(i));
            let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(av, _mm512_mullo_epi32(zp, ws)));
            let v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_mul_ps(sr, sc)), b);
            // max(v, 0) returns its second operand unless v > 0: `if v > 0 { v } else { 0 }`.
            let v = _mm512_max_ps(v, _mm512_setzero_ps());
            _mm512_mask_storeu_ps(h.as_mut_ptr().add(i), k, v);
        });
    }

    /// [`super::quantise_relu`], 16 values at a time.
    #[inline(always)]
    unsafe fn quantise_relu_512(h: &[f32], q: &mut [u8]) -> f32 {
        let n = h.len().min(q.len());
        let mut mx = _mm512_setzero_ps();
        by16(n, |i, k| {
            mx = _mm512_max_ps(mx, _mm512_maskz_loadu_ps(k, h.as_ptr().add(i)));
        });
        let m = _mm512_reduce_max_ps(mx);
        let inv = _mm512_set1_ps(if m > 0.0 { 255.0 / m } else { 0.0 });
        by16(n, |i, k| {
            let v = _mm512_maskz_loadu_ps(k, h.as_ptr().add(i));
            let r = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(i) as *mut _, k, r);
        });
        if m > 0.0 {
            m / 255.0
        } else {
            0.0
        }
    }

    #[inline(always)]
    unsafe fn vnni_tile<const R: usize, const B: usize>(
        l: &QLayer,
        xq: &[u8],
        r0: usize,
        ob: usize,
        groups: usize,
        acc: &mut [i32],
    ) {
        let mut a = [[_mm512_setzero_si512(); B]; R];
        let wp = l.packed.as_ptr();
        let xp = xq.as_ptr();
        for g in 0..groups {
            let mut w = [_mm512_setzero_si512(); B];
            for (b, wb) in w.iter_mut().enumerate() {
                *wb = _mm512_loadu_si512(wp.add((g * l.out + ob + b * 16) * 4) as *const _);
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let x4 = (xp.add((r0 + r) * l.inp_pad + g * 4) as *const i32).read_unaligned();
                let xb = _mm512_set1_epi32(x4);
                for b in 0..B {
                    ar[b] = _mm512_dpbusd_epi32(ar[b], xb, w[b]);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (b, ab) in ar.iter().enumerate() {
                let dst = acc.as_mut_ptr().add((r0 + r) * l.out + ob + b * 16);
                _mm512_storeu_si512(dst as *mut _, *ab);
            }
        }
    }

    /// AVX-VNNI: `vpdpbusd` on ymm, 8 outputs per register, 4 rows × 16 outputs at a time.
    struct AvxVnni;

    impl Kernel for AvxVnni {
        type Rows = Steps256;

        #[inline(always)]
        unsafe fn gemm(l: &QLayer, xq: &[u8], rows: usize, acc: &mut [i32], _xn: &mut Vec<u8>) {
            by_tiles::<4>(l, rows, |r, ob, full, b| match (full, b) {
                (true, 2) => vnni256_tile::<4, 2>(l, xq, r, ob, acc),
                (true, _) => vnni256_tile::<4, 1>(l, xq, r, ob, acc),
                (false, 2) => vnni256_tile::<1, 2>(l, xq, r, ob, acc),
                (false, _) => vnni256_tile::<1, 1>(l, xq, r, ob, acc),
            })
        }
    }

    /// AVX2: `vpmaddubsw` (u8·i8 pairs summed into a saturating i16) on the activations split
    /// into nibbles, `x = 16·hi + lo`: a pair sum is then at most 2·15·127 = 3810, so eight
    /// groups add up in i16 without saturating (30480), and `vpmaddwd` by 16 and by 1 takes
    /// them to i32. The weights stay 8-bit; the sums are exactly VNNI's.
    struct Avx2;

    impl Kernel for Avx2 {
        type Rows = Steps256;

        #[inline(always)]
        unsafe fn gemm(l: &QLayer, xq: &[u8], rows: usize, acc: &mut [i32], xn: &mut Vec<u8>) {
            let n = rows * l.inp_pad;
            if xn.len() < 2 * n {
                xn.resize(2 * n, 0);
            }
            let (hi, lo) = xn.split_at_mut(n);
            split_nibbles(&xq[..n], hi, &mut lo[..n]);
            let (hi, lo) = (&*hi, &*lo);
            by_tiles::<2>(l, rows, |r, ob, full, b| match (full, b) {
                (true, 2) => avx2_tile::<2, 2>(l, hi, lo, r, ob, acc),
                (true, _) => avx2_tile::<2, 1>(l, hi, lo, r, ob, acc),
                (false, 2) => avx2_tile::<1, 2>(l, hi, lo, r, ob, acc),
                (false, _) => avx2_tile::<1, 1>(l, hi, lo, r, ob, acc),
            })
        }
    }

    /// Calls `tile(row, first output, whole, registers)` over the layer: `R` rows at a time
    /// (`whole`), then one at a time; 2 registers of 8 outputs at a time, then 1. Every layer
    /// width is a multiple of 16 ([`super::super::Arch::validate`]).
    #[inline(always)]
    unsafe fn by_tiles<const R: usize>(
        l: &QLayer,
        rows: usize,
        mut tile: impl FnMut(usize, usize, bool, usize),
    ) {
        let mut r = 0;
        while r < rows {
            let whole = r + R <= rows;
            let mut ob = 0;
            while ob + 8 <= l.out {
                let b = ((l.out - ob) / 8).min(2);
                tile(r, ob, whole, b);
                ob += 8 * b;
            }
            r += if whole { R } else { 1 };
        }
    }

    /// `hi[i] = x[i] >> 4`, `lo[i] = x[i] & 15`.
    #[inline(always)]
    unsafe fn split_nibbles(x: &[u8], hi: &mut [u8], lo: &mut [u8]) {
        let n = x.len().min(hi.len()).min(lo.len());
        let whole = n / 32 * 32;
        let m = _mm256_set1_epi8(15);
        for i in (0..whole).step_by(32) {
            let v = _mm256_loadu_si256(x.as_ptr().add(i) as *const _);
            let h = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
            _mm256_storeu_si256(hi.as_mut_ptr().add(i) as *mut _, h);
            _mm256_storeu_si256(lo.as_mut_ptr().add(i) as *mut _, _mm256_and_si256(v, m));
        }
        for i in whole..n {
            hi[i] = x[i] >> 4;
            lo[i] = x[i] & 15;
        }
    }

    /// `R` rows × `B` registers of 8 outputs from output `ob`, by [`Avx2`]'s nibble sums.
    #[inline(always)]
    unsafe fn avx2_tile<const R: usize, const B: usize>(
        l: &QLayer,
        hi: &[u8],
        lo: &[u8],
        r0: usize,
        ob: usize,
        acc: &mut [i32],
    ) {
        let groups = l.inp_pad / 4;
        let wp = l.packed.as_ptr();
        let mut g0 = 0;
        // At least one pass, so that a layer without inputs still writes its zeros.
        while g0 < groups.max(1) {
            let mut sh = [[_mm256_setzero_si256(); B]; R];
            let mut sl = [[_mm256_setzero_si256(); B]; R];
            for g in g0..(g0 + 8).min(groups) {
                let mut w = [_mm256_setzero_si256(); B];
                for (b, wb) in w.iter_mut().enumerate() {
                    *wb = _mm256_loadu_si256(wp.add((g * l.out + ob + b * 8) * 4) as *const _);
                }
                for r in 0..R {
                    let at = (r0 + r) * l.inp_pad + g * 4;
                    let xh =
                        _mm256_set1_epi32((hi.as_ptr().add(at) as *const i32).read_unaligned());
                    let xl =
                        _mm256_set1_epi32((lo.as_ptr().add(at) as *const i32).read_unaligned());
                    for b in 0..B {
                        sh[r][b] = _mm256_add_epi16(sh[r][b], _mm256_maddubs_epi16(xh, w[b]));
                        sl[r][b] = _mm256_add_epi16(sl[r][b], _mm256_maddubs_epi16(xl, w[b]));
                    }
                }
            }
            // The i32 sums live in `acc`, not in registers: the i16 sums need them all.
            for r in 0..R {
                for b in 0..B {
                    let v = _mm256_add_epi32(
                        _mm256_madd_epi16(sh[r][b], _mm256_set1_epi16(16)),
                        _mm256_madd_epi16(sl[r][b], _mm256_set1_epi16(1)),
                    );
                    let dst = acc.as_mut_ptr().add((r0 + r) * l.out + ob + b * 8) as *mut __m256i;
                    let v = if g0 == 0 {
                        v
                    } else {
                        _mm256_add_epi32(_mm256_loadu_si256(dst), v)
                    };
                    _mm256_storeu_si256(dst, v);
                }
            }
            g0 += 8;
        }
    }

    /// `R` rows × `B` registers of 8 outputs from output `ob`, by `vpdpbusd` on ymm.
    #[inline(always)]
    unsafe fn vnni256_tile<const R: usize, const B: usize>(
        l: &QLayer,
        xq: &[u8],
        r0: usize,
        ob: usize,
        acc: &mut [i32],
    ) {
        let mut a = [[_mm256_setzero_si256(); B]; R];
        let wp = l.packed.as_ptr();
        let xp = xq.as_ptr();
        for g in 0..l.inp_pad / 4 {
            let mut w = [_mm256_setzero_si256(); B];
            for (b, wb) in w.iter_mut().enumerate() {
                *wb = _mm256_loadu_si256(wp.add((g * l.out + ob + b * 8) * 4) as *const _);
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let x4 = (xp.add((r0 + r) * l.inp_pad + g * 4) as *const i32).read_unaligned();
                let xb = _mm256_set1_epi32(x4);
                for b in 0..B {
                    ar[b] = _mm256_dpbusd_avx_epi32(ar[b], xb, w[b]);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (b, ab) in ar.iter().enumerate() {
                let dst = acc.as_mut_ptr().add((r0 + r) * l.out + ob + b * 8);
                _mm256_storeu_si256(dst as *mut _, *ab);
            }
        }
    }

    /// Largest lane of a vector of non-negative values.
    #[inline(always)]
    unsafe fn hmax256(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        _mm_cvtss_f32(m)
    }

    /// Stores the low byte of each of 8 i32 lanes (each in 0..=255) at `dst`.
    #[inline(always)]
    unsafe fn store_bytes8(dst: *mut u8, v: __m256i) {
        // Byte 0 of each dword to the low 4 bytes of each 128-bit half, then the two halves'
        // first dwords together.
        let pick = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let b = _mm256_shuffle_epi8(v, pick);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        (dst as *mut i64).write_unaligned(_mm_cvtsi128_si64(_mm256_castsi256_si128(b)));
    }

    /// [`super::quantise_input`], 8 values at a time, the tail with the portable steps (the
    /// same operations: max is exact, `vcvtps2dq` rounds to nearest even as `round_ties_even`).
    #[inline(always)]
    unsafe fn quantise_input_256(x: &[f32], q: &mut [u8]) -> f32 {
        let n = x.len();
        let whole = n / 8 * 8;
        let bound = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(-1e6, 1e6) };
        let bounded = |i: usize| {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-1e6)), _mm256_set1_ps(1e6))
        };
        let sign = _mm256_set1_ps(-0.0);
        let mut mx = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, bounded(i)));
        }
        let mut m = hmax256(mx);
        for &v in &x[whole..] {
            let a = bound(v).abs();
            m = if a > m { a } else { m };
        }
        let inv_s = if m > 0.0 { 127.0 / m } else { 0.0 };
        let inv = _mm256_set1_ps(inv_s);
        for i in (0..whole).step_by(8) {
            let r = _mm256_cvtps_epi32(_mm256_mul_ps(bounded(i), inv));
            let r = _mm256_add_epi32(r, _mm256_set1_epi32(INPUT_ZP));
            store_bytes8(q.as_mut_ptr().add(i), r);
        }
        for (qi, &v) in q[whole..n].iter_mut().zip(&x[whole..]) {
            let r = (bound(v) * inv_s).round_ties_even() as i32;
            *qi = (r + INPUT_ZP) as u8;
        }
        q[n..].fill(INPUT_ZP as u8);
        if m > 0.0 {
            m / 127.0
        } else {
            0.0
        }
    }

    /// [`super::epilogue`], 8 outputs at a time (multiply then add, not fused).
    #[inline(always)]
    unsafe fn epilogue_256(l: &QLayer, a: &[i32], sr: f32, h: &mut [f32]) {
        let n = l.out.min(a.len()).min(h.len());
        let whole = n / 8 * 8;
        let (zp, srv) = (_mm256_set1_epi32(l.zp), _mm256_set1_ps(sr));
        for i in (0..whole).step_by(8) {
            let av = _mm256_loadu_si256(a.as_ptr().add(i) as *const _);
            let ws = _mm256_loadu_si256(l.wsum.as_ptr().add(i) as *const _);
            let sc = _mm256_loadu_ps(l.scale.as_ptr().add(i));
            let b = _mm256_loadu_ps(l.bias.as_ptr().add(i));
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(av, _mm256_mullo_epi32(zp, ws)));
            let v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_mul_ps(srv, sc)), b);
            // max(v, 0) returns its second operand unless v > 0: `if v > 0 { v } else { 0 }`.
            let v = _mm256_max_ps(v, _mm256_setzero_ps());
            _mm256_storeu_ps(h.as_mut_ptr().add(i), v);
        }
        for o in whole..n {
            let v = (a[o] - l.zp * l.wsum[o]) as f32 * (sr * l.scale[o]) + l.bias[o];
            h[o] = if v > 0.0 { v } else { 0.0 };
        }
    }

    /// [`super::quantise_relu`], 8 values at a time, the tail with the portable steps.
    #[inline(always)]
    unsafe fn quantise_relu_256(h: &[f32], q: &mut [u8]) -> f32 {
        let n = h.len().min(q.len());
        let whole = n / 8 * 8;
        let mut mx = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            mx = _mm256_max_ps(mx, _mm256_loadu_ps(h.as_ptr().add(i)));
        }
        let mut m = hmax256(mx);
        for &v in &h[whole..n] {
            m = if v > m { v } else { m };
        }
        let inv_s = if m > 0.0 { 255.0 / m } else { 0.0 };
        let inv = _mm256_set1_ps(inv_s);
        for i in (0..whole).step_by(8) {
            let v = _mm256_loadu_ps(h.as_ptr().add(i));
            store_bytes8(
                q.as_mut_ptr().add(i),
                _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)),
            );
        }
        for (qi, &v) in q[whole..n].iter_mut().zip(&h[whole..n]) {
            *qi = (v * inv_s).round_ties_even() as i32 as u8;
        }
        if m > 0.0 {
            m / 255.0
        } else {
            0.0
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn block_vnni(
        qm: &QuantModel,
        x: &[f32],
        rows: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        block_generic::<Vnni>(qm, x, rows, logits, emb, s)
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn block_avxvnni(
        qm: &QuantModel,
        x: &[f32],
        rows: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        block_generic::<AvxVnni>(qm, x, rows, logits, emb, s)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_avx2(
        qm: &QuantModel,
        x: &[f32],
        rows: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        block_generic::<Avx2>(qm, x, rows, logits, emb, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tests::names, Arch, Model, Normaliser};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn setup(d: usize, seed: u64) -> (Model, Vec<f32>, usize) {
        let m = Model::new(
            Arch::default(),
            &[("t".into(), Normaliser::unfitted(names(d)))],
            seed,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = 203;
        let x: Vec<f32> = (0..n * d)
            .map(|i| {
                if i % 11 == 0 {
                    0.0
                } else {
                    rng.random_range(-3.0..3.0f32)
                }
            })
            .collect();
        (m, x, n)
    }

    #[test]
    fn every_simd_level_gives_identical_results() {
        for d in [126, 64, 5] {
            let (m, mut x, n) = setup(d, d as u64);
            // Values the input quantiser must bound or zero, and an all-zero row (scale 0).
            x[3 * d + 1] = f32::NAN;
            x[4 * d + 2] = f32::INFINITY;
            x[5 * d] = -1e9;
            x[9 * d] = -0.0;
            x[6 * d..7 * d].fill(0.0);
            let st = m.stack("t").unwrap();
            let mut base: Option<(Vec<f32>, Vec<f32>)> = None;
            let levels = SimdLevel::available();
            assert!(levels.contains(&SimdLevel::Scalar));
            for level in levels {
                let q = QuantModel::new(&st.body, st.head, level);
                let mut logits = vec![0f32; n];
                let mut emb = vec![0f32; n * 32];
                q.forward(&x, n, &mut logits, Some(&mut emb));
                // Batch of one gives the same as in a batch (per-row quantisation).
                let mut one = [0f32];
                q.forward(&x[7 * d..8 * d], 1, &mut one, None);
                assert_eq!(one[0].to_bits(), logits[7].to_bits());
                match &base {
                    None => base = Some((logits, emb)),
                    Some((bl, be)) => {
                        assert_eq!(bl, &logits, "{level:?} logits differ from scalar (d = {d})");
                        assert_eq!(be, &emb, "{level:?} embeddings differ (d = {d})");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_agrees_with_f32_within_tolerance() {
        // Stated tolerance, relative to the spread σ of the f32 logits: every row within
        // 0.1·σ, mean absolute error within 0.02·σ (measured on this random network: worst
        // 0.07·σ, mean 0.013·σ). The detection-level check is the ROC-AUC gap on real data.
        for d in [126, 64] {
            let (m, x, n) = setup(d, 3);
            let st = m.stack("t").unwrap();
            let mut lf = vec![0f32; n];
            st.forward(&x, n, &mut lf, None);
            let mean = lf.iter().sum::<f32>() / n as f32;
            let sigma = (lf.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32).sqrt();
            for level in SimdLevel::available() {
                let q = QuantModel::new(&st.body, st.head, level);
                let mut li = vec![0f32; n];
                q.forward(&x, n, &mut li, None);
                let (mut worst, mut mae) = (0f32, 0f32);
                for i in 0..n {
                    let err = (li[i] - lf[i]).abs();
                    worst = worst.max(err);
                    mae += err / n as f32;
                }
                eprintln!("d {d} {level:?}: σ {sigma:.3}, worst {worst:.4}, mean {mae:.4}");
                assert!(
                    worst <= 0.1 * sigma,
                    "{level:?}: worst {worst} vs σ {sigma}"
                );
                assert!(mae <= 0.02 * sigma, "{level:?}: mean {mae} vs σ {sigma}");
            }
        }
    }

    #[test]
    fn degenerate_rows_are_finite() {
        let (m, _, _) = setup(10, 1);
        let st = m.stack("t").unwrap();
        for level in SimdLevel::available() {
            let q = QuantModel::new(&st.body, st.head, level);
            let x = vec![0f32; 30];
            let mut l = vec![0f32; 3];
            q.forward(&x, 3, &mut l, None);
            let mut f = vec![0f32; 3];
            st.forward(&x, 3, &mut f, None);
            for i in 0..3 {
                assert!(l[i].is_finite() && (l[i] - f[i]).abs() < 0.05);
            }
            q.forward(&[], 0, &mut [], None);
        }
    }
}

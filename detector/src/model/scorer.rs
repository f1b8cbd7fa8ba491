//! Inference paths behind one trait, and the pipeline around them (normalise → [`Scorer`] →
//! calibrate, novelty, combine).

use candle_core::{Device, Tensor};

use super::{
    int8::{QuantModel, SimdLevel},
    normalise::Plan,
    Calibration, Contribution, Linear, Model, ModelError, Prototypes, Score, ScoreRule,
};

/// An inference path: the encoder and head on normalised rows.
pub trait Scorer: Send + Sync {
    /// What runs ("int8/avx512-vnni", "candle-f32/cpu", …).
    fn path(&self) -> String;
    /// Input width.
    fn n_features(&self) -> usize;
    /// Embedding width.
    fn embed_dim(&self) -> usize;
    /// Logits of `n` normalised rows (`x`: `n × n_features()`), and their embeddings
    /// (`n × embed_dim()`) when `emb` is given.
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
    ) -> Result<(), ModelError>;
}

/// Which inference path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScorePath {
    /// Plain-Rust f32 (the reference the others are tested against).
    Reference,
    /// int8 at the given SIMD level; `None`: the best this CPU has.
    Int8(Option<SimdLevel>),
    /// candle f32 on the CPU.
    CandleCpu,
    /// candle on CUDA device `n` (needs the `cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for ScorePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => ScorePath::auto().0,
            "reference" | "f32" => ScorePath::Reference,
            "int8" => ScorePath::Int8(None),
            "int8-scalar" => ScorePath::Int8(Some(SimdLevel::Scalar)),
            "int8-avx2" => ScorePath::Int8(Some(SimdLevel::Avx2)),
            "int8-avx-vnni" => ScorePath::Int8(Some(SimdLevel::AvxVnni)),
            "int8-avx512-vnni" => ScorePath::Int8(Some(SimdLevel::Avx512Vnni)),
            "candle" | "candle-cpu" => ScorePath::CandleCpu,
            "cuda" => ScorePath::Cuda(0),
            _ => {
                return Err(format!(
                    "unknown scoring path `{s}` (auto, reference, int8, int8-scalar, int8-avx2, \
                     int8-avx-vnni, int8-avx512-vnni, candle-cpu, cuda)"
                ))
            }
        })
    }
}

impl ScorePath {
    /// What `scoring.path = "auto"` picks on this CPU, and why. By CPU features against the
    /// measured table in BENCHMARKS.md (Scoring), not a timed check at start: the choice must
    /// not depend on the host's load at that moment, since int8 and f32 give slightly different
    /// scores (docs/model.md, "Choosing a path").
    pub fn auto() -> (ScorePath, String) {
        let level = SimdLevel::detect();
        let why = match level {
            SimdLevel::Avx512Vnni => {
                "int8 on AVX-512 VNNI measured 2-3x faster than candle f32 at batch 64 and 1024"
            }
            SimdLevel::AvxVnni => "int8 on AVX-VNNI: the AVX2 kernel's products in one instruction",
            SimdLevel::Avx2 => {
                "no VNNI; int8 on AVX2 measured faster than candle f32 on an AVX2-only CPU"
            }
            SimdLevel::Scalar => {
                return (
                    ScorePath::CandleCpu,
                    "auto: CPU has no AVX2; portable int8 measured slower than candle f32".into(),
                )
            }
        };
        (
            ScorePath::Int8(Some(level)),
            format!("auto: CPU has {}; {why}", level.feature()),
        )
    }

    /// Why the `scoring.path` value `configured` gives the path it does (for the startup log
    /// and `detector status`).
    pub fn reason(configured: &str) -> String {
        if configured == "auto" {
            Self::auto().1
        } else {
            format!("set by scoring.path = \"{configured}\"")
        }
    }
}

fn check_len(
    x: &[f32],
    n: usize,
    d: usize,
    logits: &[f32],
    emb: Option<&[f32]>,
    e: usize,
) -> Result<(), ModelError> {
    if x.len() != n * d || logits.len() < n || emb.is_some_and(|v| v.len() < n * e) {
        return Err(ModelError::Shape(format!(
            "forward of {n} rows of {d} features needs {} inputs, {n} logits and {} embedding \
             values; got {}, {} and {}",
            n * d,
            n * e,
            x.len(),
            logits.len(),
            emb.map_or(0, <[f32]>::len)
        )));
    }
    Ok(())
}

/// The plain-Rust f32 path.
pub struct ReferenceScorer {
    body: Vec<Linear>,
    head: Linear,
}

impl Scorer for ReferenceScorer {
    fn path(&self) -> String {
        "f32/reference".into()
    }
    fn n_features(&self) -> usize {
        self.body[0].in_dim
    }
    fn embed_dim(&self) -> usize {
        self.head.in_dim
    }
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
    ) -> Result<(), ModelError> {
        check_len(
            x,
            n,
            self.n_features(),
            logits,
            emb.as_deref(),
            self.embed_dim(),
        )?;
        let st = super::layers::Stack {
            body: self.body.iter().collect(),
            head: &self.head,
        };
        st.forward(x, n, logits, emb);
        Ok(())
    }
}

/// The int8 path.
pub struct Int8Scorer(pub QuantModel);

impl Scorer for Int8Scorer {
    fn path(&self) -> String {
        format!("int8/{}", self.0.level().name())
    }
    fn n_features(&self) -> usize {
        self.0.n_features()
    }
    fn embed_dim(&self) -> usize {
        self.0.embed_dim()
    }
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
    ) -> Result<(), ModelError> {
        check_len(
            x,
            n,
            self.n_features(),
            logits,
            emb.as_deref(),
            self.embed_dim(),
        )?;
        self.0.forward(x, n, logits, emb);
        Ok(())
    }
}

/// candle f32 on a device (CPU, or CUDA with the `cuda` feature).
pub struct CandleScorer {
    device: Device,
    /// Per layer: `Wᵀ` as `(in, out)` (contiguous, so no transpose per call) and `b` as `(1, out)`.
    layers: Vec<(Tensor, Tensor)>,
    n_features: usize,
    embed: usize,
}

impl CandleScorer {
    /// Copies a stack's weights to `device`.
    pub fn new(body: &[&Linear], head: &Linear, device: Device) -> Result<Self, ModelError> {
        let mut layers = Vec::new();
        for l in body.iter().copied().chain(std::iter::once(head)) {
            let w = Tensor::from_slice(&l.weight, (l.out_dim, l.in_dim), &device)?
                .t()?
                .contiguous()?;
            let b = Tensor::from_slice(&l.bias, (1, l.out_dim), &device)?;
            layers.push((w, b));
        }
        Ok(CandleScorer {
            device,
            layers,
            n_features: body.first().map(|l| l.in_dim).unwrap_or(0),
            embed: head.in_dim,
        })
    }
}

impl Scorer for CandleScorer {
    fn path(&self) -> String {
        match &self.device {
            Device::Cpu => "candle-f32/cpu".into(),
            d => format!("candle-f32/{d:?}"),
        }
    }
    fn n_features(&self) -> usize {
        self.n_features
    }
    fn embed_dim(&self) -> usize {
        self.embed
    }
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        logits: &mut [f32],
        emb: Option<&mut [f32]>,
    ) -> Result<(), ModelError> {
        check_len(x, n, self.n_features, logits, emb.as_deref(), self.embed)?;
        if n == 0 {
            return Ok(());
        }
        let mut h = Tensor::from_slice(x, (n, self.n_features), &self.device)?;
        let last = self.layers.len() - 1;
        let mut emb = emb;
        for (k, (w, b)) in self.layers.iter().enumerate() {
            if k == last {
                if let Some(emb) = emb.take() {
                    let v = h.flatten_all()?.to_vec1::<f32>()?;
                    emb[..v.len()].copy_from_slice(&v);
                }
            }
            h = h.matmul(w)?.broadcast_add(b)?;
            if k < last {
                h = h.relu()?;
            }
        }
        let v = h.flatten_all()?.to_vec1::<f32>()?;
        logits[..n].copy_from_slice(&v);
        Ok(())
    }
}

/// Builds the scorer of one feature set on a path.
pub fn scorer(
    model: &Model,
    feature_set: &str,
    path: ScorePath,
) -> Result<Box<dyn Scorer>, ModelError> {
    let st = model.stack(feature_set)?;
    Ok(match path {
        ScorePath::Reference => Box::new(ReferenceScorer {
            body: st.body.iter().map(|l| (*l).clone()).collect(),
            head: st.head.clone(),
        }),
        ScorePath::Int8(level) => {
            let level = level.unwrap_or_else(SimdLevel::detect);
            if !SimdLevel::available().contains(&level) {
                return Err(ModelError::PathUnavailable(
                    format!("int8/{}", level.name()),
                    "this CPU lacks the instructions".into(),
                ));
            }
            Box::new(Int8Scorer(QuantModel::new(&st.body, st.head, level)))
        }
        ScorePath::CandleCpu => Box::new(CandleScorer::new(&st.body, st.head, Device::Cpu)?),
        ScorePath::Cuda(ordinal) => cuda_scorer(&st.body, st.head, ordinal)?,
    })
}

#[cfg(feature = "cuda")]
fn cuda_scorer(
    body: &[&Linear],
    head: &Linear,
    ordinal: usize,
) -> Result<Box<dyn Scorer>, ModelError> {
    let device = Device::new_cuda(ordinal)?;
    Ok(Box::new(CandleScorer::new(body, head, device)?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_scorer(
    _body: &[&Linear],
    _head: &Linear,
    _ordinal: usize,
) -> Result<Box<dyn Scorer>, ModelError> {
    Err(ModelError::PathUnavailable(
        "cuda".into(),
        "this build has no CUDA support (build with `--features cuda` where the CUDA toolkit \
         is installed)"
            .into(),
    ))
}

/// Normaliser, scorer, calibration, prototypes and rule of one feature set: raw rows in,
/// [`Score`]s out.
pub struct Pipeline {
    /// Feature set.
    pub feature_set: String,
    /// Its columns.
    pub features: Vec<String>,
    normaliser: Plan,
    scorer: Box<dyn Scorer>,
    calibration: Calibration,
    prototypes: Option<Prototypes>,
    rule: ScoreRule,
    trained: bool,
}

impl Pipeline {
    /// Builds the pipeline of `feature_set` on `path`.
    pub fn new(model: &Model, feature_set: &str, path: ScorePath) -> Result<Self, ModelError> {
        let input = model.input(feature_set)?;
        Ok(Pipeline {
            feature_set: feature_set.to_string(),
            features: input.normaliser.features.clone(),
            normaliser: Plan::of(&input.normaliser),
            scorer: scorer(model, feature_set, path)?,
            calibration: input.calibration,
            prototypes: model.prototypes.get(feature_set).cloned(),
            rule: input.rule,
            trained: input.trained,
        })
    }

    /// The scorer's path.
    pub fn path(&self) -> String {
        self.scorer.path()
    }

    /// The feature set's score rule (novelty weight, alert threshold).
    pub fn rule(&self) -> ScoreRule {
        self.rule
    }

    /// Whether the probability part is used (the input layer has been trained).
    pub fn trained(&self) -> bool {
        self.trained
    }

    /// Whether novelty is scored (the feature set has benign prototypes).
    pub fn has_prototypes(&self) -> bool {
        self.prototypes.is_some()
    }

    /// The inner scorer (normalised inputs).
    pub fn scorer(&self) -> &dyn Scorer {
        self.scorer.as_ref()
    }

    /// Normalises raw rows.
    pub fn normalise(&self, raw: &[f32], out: &mut [f32]) {
        self.normaliser.apply(raw, out)
    }

    /// [`Model::explain`] of one raw row on this pipeline's normaliser plan (`model` is the
    /// model the pipeline was built from): the alert path, which need not rebuild the plan
    /// per alert.
    pub fn explain(
        &self,
        model: &Model,
        row: &[f32],
        top: usize,
    ) -> Result<Vec<Contribution>, ModelError> {
        if row.len() != self.features.len() {
            return Err(ModelError::Shape(format!(
                "explain takes one row of {} features, got {} values",
                self.features.len(),
                row.len()
            )));
        }
        let mut x = vec![0f32; row.len()];
        self.normaliser.apply(row, &mut x);
        model.explain_normalised(&self.feature_set, &self.features, &x, top)
    }

    /// Scores `n` raw rows (`n × features.len()`).
    pub fn score(&self, raw: &[f32], n: usize) -> Result<Vec<Score>, ModelError> {
        let d = self.features.len();
        if raw.len() != n * d {
            return Err(ModelError::Shape(format!(
                "{} values are not {n} rows of {d} features",
                raw.len()
            )));
        }
        let mut x = vec![0f32; raw.len()];
        self.normaliser.apply(raw, &mut x);
        let e = self.scorer.embed_dim();
        let mut logits = vec![0f32; n];
        let mut emb = vec![0f32; if self.prototypes.is_some() { n * e } else { 0 }];
        let want_emb = self.prototypes.is_some().then_some(emb.as_mut_slice());
        self.scorer.forward(&x, n, &mut logits, want_emb)?;
        Ok((0..n)
            .map(|i| {
                let probability = self
                    .trained
                    .then(|| self.calibration.probability(logits[i]));
                let novelty = self
                    .prototypes
                    .as_ref()
                    .map(|p| p.novelty(&emb[i * e..(i + 1) * e]));
                let score = self.rule.combine(probability, novelty);
                Score {
                    probability,
                    novelty,
                    score,
                    alert: score >= self.rule.alert_threshold,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{tests::names, Arch, Normaliser, Rows};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_path_agrees_with_the_reference() {
        let d = 64;
        let rows: Vec<f32> = {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            (0..150 * d)
                .map(|_| rng.random_range(0.0..1000.0f32))
                .collect()
        };
        let norm = Normaliser::fit(names(d), &rows);
        let mut m = Model::new(Arch::default(), &[("t".into(), norm)], 3);
        m.inputs.get_mut("t").unwrap().trained = true;
        let feats = names(d);
        let r = Rows {
            feature_set: "t",
            features: &feats,
            values: &rows,
        };
        m.fit_prototypes(&r, 1).unwrap();
        let reference = m.score(&r).unwrap();
        let mut paths = vec![ScorePath::Reference, ScorePath::CandleCpu];
        paths.extend(
            SimdLevel::available()
                .into_iter()
                .map(|l| ScorePath::Int8(Some(l))),
        );
        for path in paths {
            let p = m.pipeline("t", path).unwrap();
            let s = p.score(&rows, 150).unwrap();
            let tol = if matches!(path, ScorePath::Int8(_)) {
                0.02
            } else {
                1e-5
            };
            let mut nov_err = 0f32;
            for (a, b) in s.iter().zip(&reference) {
                let (pa, pb) = (a.probability.unwrap(), b.probability.unwrap());
                assert!((pa - pb).abs() <= tol, "{}: p {pa} vs {pb}", p.path());
                nov_err += (a.novelty.unwrap() - b.novelty.unwrap()).abs();
            }
            // Novelty is a rank among benign distances: int8 embedding error moves it by a
            // few ranks at most on average.
            let nov_err = nov_err / 150.0;
            let nov_tol = if tol > 1e-4 { 0.03 } else { 0.01 };
            assert!(nov_err <= nov_tol, "{}: novelty error {nov_err}", p.path());
            assert!(p.score(&rows[..10], 150).is_err());
        }
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(
            m.pipeline("t", ScorePath::Cuda(0)),
            Err(ModelError::PathUnavailable(..))
        ));
        assert!("int8".parse::<ScorePath>().is_ok() && "x".parse::<ScorePath>().is_err());
    }

    #[test]
    fn auto_picks_the_best_level_here_and_says_why() {
        let (path, why) = ScorePath::auto();
        let level = SimdLevel::detect();
        match path {
            ScorePath::Int8(Some(l)) => {
                assert_eq!(l, level);
                assert!(why.contains(l.feature()), "{why}");
            }
            ScorePath::CandleCpu => assert_eq!(level, SimdLevel::Scalar, "{why}"),
            p => panic!("auto picked {p:?}"),
        }
        assert_eq!("auto".parse::<ScorePath>().unwrap(), path);
        assert_eq!(ScorePath::reason("auto"), why);
        assert!(ScorePath::reason("int8-avx2").contains("scoring.path = \"int8-avx2\""));
        let model = crate::model::default_model().unwrap();
        let fs = model.feature_sets()[0].to_string();
        assert!(model.pipeline(&fs, path).is_ok());
    }

    /// The committed NSL-KDD import (detector/models/data), and the lab recording when the
    /// checkout has one, with the embedded model: int8's ROC-AUC within 0.005 of f32's for
    /// every family against benign (EVALUATION.md).
    #[test]
    fn int8_auc_matches_f32_per_family() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = crate::model::default_model().unwrap();
        let mut checked = 0;
        for (rel, step) in [
            ("models/data/nsl-kdd-test.dds", 2),
            ("../lab/recordings/default/flows.dds", 1),
        ] {
            let path = root.join(rel);
            if !path.exists() {
                eprintln!("{rel}: absent, skipped");
                continue;
            }
            let ds = crate::dataset::Dataset::read(&path).unwrap();
            if model.input(&ds.source).is_err() {
                continue;
            }
            checked += auc_gaps(&model, &ds, step);
        }
        assert!(checked >= 4, "{checked} families checked");
    }

    fn auc_gaps(model: &Model, ds: &crate::dataset::Dataset, step: usize) -> usize {
        let idx: Vec<usize> = (0..ds.rows()).step_by(step).collect();
        let raw = crate::model::gather(&ds.features, ds.n_features(), &idx);
        let x = model.normalise(&Rows::of(ds).with_values(&raw)).unwrap();
        let n = idx.len();
        let reference = scorer(model, &ds.source, ScorePath::Reference).unwrap();
        let int8 = scorer(model, &ds.source, ScorePath::Int8(None)).unwrap();
        let (mut lf, mut li) = (vec![0f32; n], vec![0f32; n]);
        reference.forward(&x, n, &mut lf, None).unwrap();
        int8.forward(&x, n, &mut li, None).unwrap();
        let mut checked = 0;
        for fam in &ds.family_names {
            if fam == "benign" {
                continue;
            }
            let sel: Vec<usize> = (0..n)
                .filter(|&k| ds.label[idx[k]] == 0 || ds.family_of(idx[k]) == fam)
                .collect();
            let y: Vec<u8> = sel.iter().map(|&k| ds.label[idx[k]]).collect();
            if y.iter().filter(|&&v| v == 1).count() < 5 {
                continue;
            }
            let a = |l: &[f32]| {
                let s: Vec<f32> = sel.iter().map(|&k| l[k]).collect();
                crate::model::metrics::roc_auc(&s, &y).unwrap()
            };
            let (af, ai) = (a(&lf), a(&li));
            eprintln!(
                "{} {fam}: f32 {af:.5} int8 {ai:.5} gap {:.5}",
                ds.source,
                (af - ai).abs()
            );
            assert!((af - ai).abs() <= 0.005, "{fam}: f32 {af} int8 {ai}");
            checked += 1;
        }
        checked
    }
}

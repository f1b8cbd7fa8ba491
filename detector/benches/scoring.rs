//! Scoring speed: ns per flow at batch 1, 64 and 1024 for each int8 SIMD level this CPU has and
//! for candle f32 (and candle CUDA with `--features cuda`), on normalised rows, in one run; plus
//! the normaliser (as this CPU runs it, and without AVX-512) and the novelty distance alone. One thread (`RAYON_NUM_THREADS=1` unless
//! set), the embedded model's shapes. Run: `cargo bench -p detector --bench scoring` (results
//! in BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use detector::model::{default_model, int8::SimdLevel, normalise::Plan, ScorePath};

fn rows(n: usize, d: usize) -> Vec<f32> {
    // Deterministic values spread like normalised features (|z| mostly below 3).
    let mut s = 0x9e37_79b9_u32;
    (0..n * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s % 6001) as f32 / 1000.0) - 3.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let model = default_model().expect("embedded model");
    let mut paths = vec![ScorePath::CandleCpu];
    paths.extend(
        SimdLevel::available()
            .into_iter()
            .map(|l| ScorePath::Int8(Some(l))),
    );
    if cfg!(feature = "cuda") {
        paths.push(ScorePath::Cuda(0));
    }
    for fs in model.feature_sets() {
        let d = model.input(fs).expect("input").normaliser.len();
        let mut g = c.benchmark_group(format!("scoring/{fs}"));
        for &batch in &[1usize, 64, 1024] {
            let x = rows(batch, d);
            let mut logits = vec![0f32; batch];
            g.throughput(Throughput::Elements(batch as u64));
            for &path in &paths {
                let p = model.pipeline(fs, path).expect("pipeline");
                let s = p.scorer();
                g.bench_with_input(BenchmarkId::new(s.path(), batch), &batch, |b, &n| {
                    b.iter(|| {
                        s.forward(black_box(&x), n, &mut logits, None)
                            .expect("forward");
                        black_box(&logits);
                    })
                });
            }
            let p = model.pipeline(fs, ScorePath::Reference).expect("pipeline");
            let raw: Vec<f32> = x.iter().map(|v| (v * 100.0).abs()).collect();
            let mut out = vec![0f32; raw.len()];
            g.bench_with_input(BenchmarkId::new("normalise", batch), &batch, |b, _| {
                b.iter(|| {
                    p.normalise(black_box(&raw), &mut out);
                    black_box(&out);
                })
            });
            // The normaliser as an AVX2-only CPU runs it (the same as above without AVX-512).
            let plan = Plan::of(&model.input(fs).expect("input").normaliser);
            g.bench_with_input(BenchmarkId::new("normalise-avx2", batch), &batch, |b, _| {
                b.iter(|| {
                    plan.apply_avx2(black_box(&raw), &mut out);
                    black_box(&out);
                })
            });
            // The novelty distance of the scores (nearest benign prototype, its quantile).
            if let Some(proto) = model.prototypes.get(fs) {
                let e = proto.dim;
                let emb = rows(batch, e);
                g.bench_with_input(BenchmarkId::new("novelty", batch), &batch, |b, _| {
                    b.iter(|| {
                        for r in emb.chunks_exact(e) {
                            black_box(proto.novelty(black_box(r)));
                        }
                    })
                });
            }
        }
        g.finish();
    }
}

fn config() -> Criterion {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // One thread for every path, so ns per flow compare per core. Set before candle reads it.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);

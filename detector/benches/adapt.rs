//! Few-shot adaptation latency: `model::adapt` of the embedded default model to K = 1, 5, 10
//! attack rows of one NSL-KDD family plus 256 benign rows (half held back for the false-alert
//! check), on one thread. Run: `taskset -c 0 cargo bench -p detector --bench adapt`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detector::dataset::Dataset;
use detector::model::{adapt, default_model, gather, AdaptConfig, Rows};

fn bench(c: &mut Criterion) {
    let model = default_model().expect("embedded model");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/data/nsl-kdd-test.dds");
    let ds = Dataset::read(&path).expect("committed NSL-KDD dataset");
    let d = ds.n_features();
    let attack: Vec<usize> = (0..ds.rows())
        .filter(|&i| ds.family_of(i) == "r2l")
        .collect();
    let benign: Vec<usize> = (0..ds.rows())
        .filter(|&i| ds.label[i] == 0)
        .step_by(37)
        .take(256)
        .collect();
    let ben = gather(&ds.features, d, &benign);
    let cfg = AdaptConfig {
        fpr_budget: 1.0,
        ..AdaptConfig::default()
    };
    let mut g = c.benchmark_group("adapt/nsl-kdd");
    for k in [1usize, 5, 10] {
        let pos = gather(&ds.features, d, &attack[..k]);
        g.bench_with_input(BenchmarkId::new("K", k), &k, |b, _| {
            b.iter(|| {
                let a = adapt(
                    black_box(&model),
                    &Rows::of(&ds).with_values(&pos),
                    &Rows::of(&ds).with_values(&ben),
                    &cfg,
                )
                .expect("adapt");
                black_box(a.report.loss_after);
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);

//! Replay speed: packets per second through `detector replay`'s code on the largest corpus
//! capture, against reading the same capture without the flow logic (the baseline), in one run:
//! the flow logic alone, with JSON records, and with detection (`replay --detect`: featurise,
//! score, decide) on one thread, with the flow logic on a second, and with the context on a
//! third.
//!
//! `cargo bench -p detector --bench replay` (results in BENCHMARKS.md).

use std::{hint::black_box, path::PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use detector::{clock::TimeBase, pcap, record::FlowJson, replay};
use detector_common::flow::FlowConfig;

/// The largest capture of the corpus ($DETECTOR_SHARED_DIR, ../shared, or /work/shared).
fn largest_capture() -> PathBuf {
    let shared = [
        std::env::var_os("DETECTOR_SHARED_DIR").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared"
        ))),
        Some(PathBuf::from("/work/shared")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("corpus").is_dir())
    .expect("shared corpus not found: set DETECTOR_SHARED_DIR");
    let mut files: Vec<(u64, PathBuf)> = ["benign", "attack", "edge"]
        .iter()
        .flat_map(|d| std::fs::read_dir(shared.join("corpus/pcap").join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    files.sort();
    files.pop().unwrap().1
}

fn bench(c: &mut Criterion) {
    let file = largest_capture();
    let cfg = FlowConfig::DEFAULT;
    let packets = replay::replay_file(&file, &cfg, |_, _, _| Ok(()))
        .unwrap()
        .packets;
    let mut g = c.benchmark_group(format!(
        "replay {}",
        file.file_name().unwrap().to_string_lossy()
    ));
    g.throughput(Throughput::Elements(packets));
    g.sample_size(20);
    g.bench_function("baseline: read packets only", |b| {
        b.iter(|| {
            let mut r = pcap::Reader::open(&file).unwrap();
            let mut bytes = 0usize;
            while let Some(p) = r.next_packet().unwrap() {
                bytes += p.data.len();
            }
            black_box(bytes)
        })
    });
    g.bench_function("flow logic, records discarded", |b| {
        b.iter(|| {
            replay::replay_file(&file, &cfg, |k, s, r| {
                black_box((k, s, r));
                Ok(())
            })
        })
    });
    g.bench_function("flow logic + JSON records (detector replay)", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1 << 20);
            replay::replay_file(&file, &cfg, |k, s, r| {
                serde_json::to_writer(&mut out, &FlowJson::new(k, s, r, TimeBase::Unix))?;
                out.push(b'\n');
                Ok(())
            })
            .unwrap();
            black_box(out.len())
        })
    });
    let cfg_all = detector::config::Config::load(None).unwrap();
    let (model, version) = detector::model::serving::base_model("").unwrap();
    let model = std::sync::Arc::new(model);
    for (name, threads) in [
        ("flow logic + detect, one thread", 1),
        ("flow logic + detect, flow logic on its own thread", 2),
        (
            "flow logic + detect, flow logic, context and scoring each on its own",
            3,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut det =
                    replay::offline_detector(model.clone(), version.clone(), &cfg_all, 0).unwrap();
                let mut alerts = detector::detect::CollectedAlerts::default();
                let s = replay::detect_file_on(
                    &file,
                    &cfg,
                    detector_common::flow::DEFAULT_TABLE_SIZE,
                    threads,
                    &mut det,
                    &mut alerts,
                )
                .unwrap();
                black_box((s.records, alerts.alerts.len()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

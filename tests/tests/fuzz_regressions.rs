//! Every input the fuzzers ever crashed on (`fuzz/regressions/<target>/`) and every seed of
//! their corpora (`fuzz/corpus/<target>/`) runs clean through the same checks the fuzz targets
//! run: no panic, and every promise the parsers make holds. Unprivileged; see docs/fuzzing.md.

use std::{
    fs,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

/// The fuzz targets' bodies, compiled here as they are in the fuzz crate.
#[path = "../../fuzz/src/lib.rs"]
mod fuzz;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut v: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Runs every saved input of `target`; fails naming each input that panicked.
fn replay(target: &str) {
    let (_, run) = fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let seeds = inputs("corpus", target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ has no seeds");
    let mut failed = Vec::new();
    for path in seeds.iter().chain(&inputs("regressions", target)) {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", path.display()));
        }
    }
    assert!(failed.is_empty(), "{target}:\n{}", failed.join("\n"));
}

#[test]
fn every_target_has_a_test_here() {
    let tested = [
        "pcap_reader",
        "dataset_decode",
        "import_nsl_kdd",
        "import_cicflowmeter",
        "import_nf_v2",
        "import_unsw_nb15",
        "packet_flow",
        "config_parse",
        "model_load",
        "control_request",
    ];
    let names: Vec<&str> = fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, tested);
    // Saved crash inputs belong to a target that exists.
    if let Ok(dirs) = fs::read_dir(fuzz_dir().join("regressions")) {
        for d in dirs {
            let name = d.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                names.contains(&name.as_str()),
                "regressions/{name}: no such target"
            );
        }
    }
}

#[test]
fn pcap_reader_inputs_run_clean() {
    replay("pcap_reader");
}

#[test]
fn dataset_decode_inputs_run_clean() {
    replay("dataset_decode");
}

#[test]
fn import_nsl_kdd_inputs_run_clean() {
    replay("import_nsl_kdd");
}

#[test]
fn import_cicflowmeter_inputs_run_clean() {
    replay("import_cicflowmeter");
}

#[test]
fn import_nf_v2_inputs_run_clean() {
    replay("import_nf_v2");
}

#[test]
fn import_unsw_nb15_inputs_run_clean() {
    replay("import_unsw_nb15");
}

#[test]
fn packet_flow_inputs_run_clean() {
    replay("packet_flow");
}

#[test]
fn config_parse_inputs_run_clean() {
    replay("config_parse");
}

#[test]
fn model_load_inputs_run_clean() {
    replay("model_load");
}

#[test]
fn control_request_inputs_run_clean() {
    replay("control_request");
}

/// The seeds reach the code behind the first checks: each capture yields packets, each CSV
/// imports rows, each dataset file decodes, each packet sequence builds flows, each config
/// and model file loads, and each control request seed named `valid-*` parses (the others must
/// not).
#[test]
fn seeds_are_valid_inputs() {
    for path in inputs("corpus", "pcap_reader") {
        let mut r = detector::pcap::Reader::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(r.next_packet(), Ok(Some(_))),
            "{}: no first packet",
            path.display()
        );
    }
    for path in inputs("corpus", "dataset_decode") {
        detector::dataset::Dataset::read(&path).unwrap_or_else(|e| panic!("{e:#}"));
    }
    for target in [
        "import_nsl_kdd",
        "import_cicflowmeter",
        "import_nf_v2",
        "import_unsw_nb15",
    ] {
        for path in inputs("corpus", target) {
            let (ds, _) =
                detector::dataset::import_file(&path, &detector::dataset::ImportOptions::default())
                    .unwrap_or_else(|e| panic!("{e:#}"));
            assert!(ds.rows() > 0, "{}: no rows", path.display());
        }
    }
    for path in inputs("corpus", "config_parse") {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        detector::config::Config::parse(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    for path in inputs("corpus", "model_load") {
        detector::model::Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    for path in inputs("corpus", "control_request") {
        let line = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let valid = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("valid-"));
        let parsed = detector::control::parse_request(&line);
        assert_eq!(parsed.is_ok(), valid, "{}: {parsed:?}", path.display());
    }
}

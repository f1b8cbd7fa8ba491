//! `detector dataset export --format parquet` on committed datasets, read back by the tools
//! data people use (pyarrow, from the tests' Python environment): the same rows, columns and
//! values. Damaged or missing inputs end in one error naming the file, and write nothing.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use detector::dataset::Dataset;
use integration_tests::{detector_bin, unique};

/// The tests' Python environment with pyarrow: `cargo xtask setup --test-tools` makes it
/// (xtask/src/setup.rs, `TEST_VENV`).
const TEST_VENV: &str = "/opt/detector-tests/venv";

/// Reads a Parquet file with pyarrow and prints what the test compares, as JSON.
const READ_BACK: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
t = f.read()
def counts(name):
    col = t.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return {str(v["values"]): v["counts"] for v in pc.value_counts(col).to_pylist()}
features = [n for n in t.column_names if n not in
            ("label", "family", "attack", "session", "source", "timestamp_ns")]
out = {
    "rows": t.num_rows,
    "columns": t.column_names,
    "types": [str(t.schema.field(n).type) for n in t.column_names],
    "row_groups": f.metadata.num_row_groups,
    "compression": sorted({f.metadata.row_group(g).column(c).compression
                           for g in range(f.metadata.num_row_groups)
                           for c in range(f.metadata.num_columns)}),
    "metadata": {k.decode(): v.decode() for k, v in (f.metadata.metadata or {}).items()
                 if k.startswith(b"detector.")},
    "schema_metadata": {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()},
    "sums": {n: pc.sum(t.column(n).cast(pa.float64())).as_py() for n in features},
    "first_row": {n: t.column(n)[0].as_py() for n in features},
    "labels": counts("label"),
    "families": counts("family"),
    "attacks": counts("attack"),
    "sessions": len(counts("session")),
    "sources": counts("source"),
}
if "timestamp_ns" in t.column_names:
    ts = t.column("timestamp_ns").cast(pa.int64())
    out["timestamp_min"] = pc.min(ts).as_py()
    out["timestamp_max"] = pc.max(ts).as_py()
print(json.dumps(out))
"#;

/// A fresh folder for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(unique("dataset-export-"));
        fs::create_dir_all(&d).expect("create a temporary folder");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn export(input: &Path, out: &Path) -> Output {
    Command::new(detector_bin())
        .args(["dataset", "export", "--format", "parquet"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run detector dataset export")
}

/// The venv's python, or a failure that says how to make it.
fn python() -> PathBuf {
    let python = Path::new(TEST_VENV).join("bin/python3");
    let ok = Command::new(&python)
        .args(["-c", "import pyarrow"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no Python with pyarrow at {}: run `cargo xtask setup --test-tools` as root first",
        python.display()
    );
    python
}

fn read_back(parquet: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .arg("-c")
        .arg(READ_BACK)
        .arg(parquet)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "pyarrow could not read {}:\n{}",
        parquet.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn count_by<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.to_string()).or_default() += 1;
    }
    m
}

fn json_counts(v: &serde_json::Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v.clone()).expect("a count map")
}

/// Exports `rel` and checks what pyarrow reads against the dataset itself.
fn export_and_compare(rel: &str) {
    let input = repo_file(rel);
    let ds = Dataset::read(&input).unwrap_or_else(|e| panic!("{rel}: {e:#}"));
    let dir = TempDir::new();
    let out_path = dir.0.join("export.parquet");
    let out = export(&input, &out_path);
    assert!(
        out.status.success(),
        "{rel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read_back(&out_path);

    assert_eq!(got["rows"], ds.rows() as u64, "{rel}: rows");
    let mut columns: Vec<String> = ds.feature_names.clone();
    columns.extend(["label", "family", "attack", "session", "source"].map(String::from));
    if ds.timestamp_ns.is_some() {
        columns.push("timestamp_ns".into());
    }
    assert_eq!(got["columns"], serde_json::json!(columns), "{rel}: columns");
    let types: Vec<String> = serde_json::from_value(got["types"].clone()).unwrap();
    let n = ds.n_features();
    assert!(types[..n].iter().all(|t| t == "float"), "{rel}: {types:?}");
    assert_eq!(types[n], "uint8", "{rel}: label type");
    assert!(
        types[n + 1..n + 5]
            .iter()
            .all(|t| t == "dictionary<values=string, indices=int32, ordered=0>"),
        "{rel}: string columns {types:?}"
    );
    if ds.timestamp_ns.is_some() {
        assert_eq!(types[n + 5], "timestamp[ns, tz=UTC]", "{rel}");
    }
    assert_eq!(got["compression"], serde_json::json!(["ZSTD"]), "{rel}");
    let groups = ds
        .rows()
        .div_ceil(detector::dataset::export::ROW_GROUP_ROWS);
    assert_eq!(got["row_groups"], groups as u64, "{rel}: row groups");
    assert_eq!(
        got["metadata"]["detector.source"],
        ds.source.as_str(),
        "{rel}"
    );
    assert_eq!(got["metadata"]["detector.sha256"], ds.digest(), "{rel}");
    assert_eq!(
        got["schema_metadata"], got["metadata"],
        "{rel}: pyarrow's schema.metadata"
    );

    for (j, name) in ds.feature_names.iter().enumerate() {
        let want: f64 = (0..ds.rows()).map(|i| f64::from(ds.row(i)[j])).sum();
        let scale: f64 = (0..ds.rows()).map(|i| f64::from(ds.row(i)[j]).abs()).sum();
        let sum = got["sums"][name].as_f64().expect("a sum");
        assert!(
            (sum - want).abs() <= 1e-9 * scale + 1e-9,
            "{rel}: sum of `{name}`: pyarrow {sum}, dataset {want}"
        );
        let first = got["first_row"][name].as_f64().expect("a value");
        assert_eq!(first as f32, ds.row(0)[j], "{rel}: row 0 `{name}`");
    }
    let labels = count_by(ds.label.iter().map(|&l| if l == 1 { "1" } else { "0" }));
    assert_eq!(json_counts(&got["labels"]), labels, "{rel}: labels");
    let families = count_by((0..ds.rows()).map(|i| ds.family_of(i)));
    assert_eq!(json_counts(&got["families"]), families, "{rel}: families");
    let attacks = count_by((0..ds.rows()).map(|i| ds.attack_of(i)));
    assert_eq!(json_counts(&got["attacks"]), attacks, "{rel}: attacks");
    let sessions = count_by((0..ds.rows()).map(|i| ds.session_of(i))).len();
    assert_eq!(got["sessions"], sessions as u64, "{rel}: sessions");
    let sources = BTreeMap::from([(ds.source.clone(), ds.rows() as u64)]);
    assert_eq!(json_counts(&got["sources"]), sources, "{rel}: source");
    if let Some(ts) = &ds.timestamp_ns {
        assert_eq!(
            got["timestamp_min"],
            ts.iter().min().copied().unwrap(),
            "{rel}"
        );
        assert_eq!(
            got["timestamp_max"],
            ts.iter().max().copied().unwrap(),
            "{rel}"
        );
    }
}

#[test]
#[ignore = "needs pyarrow in the tests' Python environment: run `cargo xtask setup --test-tools` as root (`cargo xtask test` does)"]
fn the_lab_recording_reads_back_in_pyarrow() {
    export_and_compare("lab/recordings/default/flows.dds");
}

#[test]
#[ignore = "needs pyarrow in the tests' Python environment: run `cargo xtask setup --test-tools` as root (`cargo xtask test` does)"]
fn nsl_kdd_reads_back_in_pyarrow() {
    export_and_compare("detector/models/data/nsl-kdd-test.dds");
}

/// Asserts a failed export whose stderr names `needles`, with no output file left.
fn assert_failed(out: &Output, out_path: &Path, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the export succeeded:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from:\n{stderr}");
    }
    assert!(
        !out_path.exists(),
        "a failed export wrote {}",
        out_path.display()
    );
}

#[test]
fn truncated_and_missing_inputs_are_errors_naming_the_file() {
    let dir = TempDir::new();
    let out_path = dir.0.join("export.parquet");

    let missing = dir.0.join("no-such.dds");
    let out = export(&missing, &out_path);
    assert_failed(&out, &out_path, &["no-such.dds", "No such file"]);

    let bytes = fs::read(repo_file("detector/models/data/nsl-kdd-test.dds")).unwrap();
    let cut = dir.0.join("cut.dds");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = export(&cut, &out_path);
    assert_failed(&out, &out_path, &["cut.dds", "truncated"]);

    let not_a_dataset = dir.0.join("flows.csv");
    fs::write(&not_a_dataset, "a,b\n1,2\n").unwrap();
    let out = export(&not_a_dataset, &out_path);
    assert_failed(&out, &out_path, &["flows.csv", "not a detector dataset"]);

    // The output's folder cannot be made: a regular file stands where it would be.
    fs::write(dir.0.join("file"), b"").unwrap();
    let blocked = dir.0.join("file/export.parquet");
    let input = repo_file("detector/models/data/nsl-kdd-test.dds");
    let out = export(&input, &blocked);
    assert_failed(&out, &blocked, &["cannot write", "file/export.parquet"]);
}

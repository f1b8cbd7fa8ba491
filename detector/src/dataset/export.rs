//! `detector dataset export`: a dataset as a Parquet file (arrow-rs's writer, zstd), for the
//! tools data people use (pandas, polars, DuckDB, Spark). The project's own format stays the
//! `.dds` file; docs/dataset-format.md, "Export", describes the columns.

use std::{collections::HashSet, fs, ops::Range, path::Path, sync::Arc};

use anyhow::{bail, Context};
use arrow_array::{
    types::Int32Type, ArrayRef, DictionaryArray, Float32Array, Int32Array, RecordBatch,
    StringArray, TimestampNanosecondArray, UInt8Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::{metadata::KeyValue, properties::WriterProperties},
};

use super::Dataset;

/// Rows per row group: about 40 MB of features at 78 columns while a group is built, and few
/// enough groups that readers' per-group costs vanish (DuckDB's default is 122,880).
pub const ROW_GROUP_ROWS: usize = 131_072;
/// zstd level of the pages: the level the .dds columns use.
const ZSTD_LEVEL: i32 = 3;
/// The columns after the features, in this order (`timestamp_ns` only when the dataset has
/// timestamps).
pub const LABEL_COLUMNS: [&str; 6] = [
    "label",
    "family",
    "attack",
    "session",
    "source",
    "timestamp_ns",
];

/// Export file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Apache Parquet, zstd-compressed.
    Parquet,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows written.
    pub rows: usize,
    /// Columns written (features, then the label columns).
    pub columns: usize,
    /// Row groups in the file.
    pub row_groups: usize,
    /// Size of the file.
    pub bytes: u64,
    /// The dataset's content digest ([`Dataset::digest`]), also in the file's metadata.
    pub sha256: String,
}

/// The Arrow schema of `ds`'s export: one Float32 column per feature, named as the feature,
/// then `label` (UInt8), `family`, `attack`, `session`, `source` (dictionary-encoded strings)
/// and, when the dataset has them, `timestamp_ns` (Timestamp(ns, UTC)). Fails when a feature
/// name repeats or is one of the label columns' names.
pub fn schema(ds: &Dataset) -> anyhow::Result<SchemaRef> {
    let mut seen = HashSet::new();
    for name in &ds.feature_names {
        if LABEL_COLUMNS.contains(&name.as_str()) {
            bail!("feature `{name}` has the name of one of the label columns");
        }
        if !seen.insert(name.as_str()) {
            bail!("feature name `{name}` appears twice");
        }
    }
    let string = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut fields: Vec<Field> = ds
        .feature_names
        .iter()
        .map(|n| Field::new(n, DataType::Float32, false))
        .collect();
    fields.push(Field::new("label", DataType::UInt8, false));
    for name in ["family", "attack", "session", "source"] {
        fields.push(Field::new(name, string(), false));
    }
    if ds.timestamp_ns.is_some() {
        fields.push(Field::new(
            "timestamp_ns",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Writes `ds` to `path` as Parquet (replaced atomically), one row group of
/// [`ROW_GROUP_ROWS`] rows at a time: the dataset is the only full copy in memory.
pub fn write_parquet(ds: &Dataset, path: &Path) -> anyhow::Result<ExportSummary> {
    write_parquet_groups(ds, path, ROW_GROUP_ROWS)
}

/// [`write_parquet`] with row groups of `group_rows` rows.
pub fn write_parquet_groups(
    ds: &Dataset,
    path: &Path,
    group_rows: usize,
) -> anyhow::Result<ExportSummary> {
    let out = path.display();
    let sha256 = ds.digest();
    // In the file's key-value metadata (Parquet tools, DuckDB) and in the Arrow schema's
    // (pyarrow's and polars' `schema.metadata`).
    let metadata = [
        ("detector.source".to_string(), ds.source.clone()),
        ("detector.sha256".to_string(), sha256.clone()),
    ];
    let schema = schema(ds).with_context(|| format!("cannot export to {out}"))?;
    let schema = Arc::new(Arc::unwrap_or_clone(schema).with_metadata(metadata.clone().into()));
    let group_rows = group_rows.max(1);
    let level = ZstdLevel::try_new(ZSTD_LEVEL).context("zstd level")?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(group_rows))
        .set_key_value_metadata(Some(metadata.map(|(k, v)| KeyValue::new(k, v)).into()))
        .build();
    let dicts = Dictionaries::new(ds)?;
    let mut row_groups = 0;
    crate::atomic_write::write_atomic_with(path, |file| -> anyhow::Result<()> {
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        let mut start = 0;
        while start < ds.rows() {
            let end = ds.rows().min(start + group_rows);
            writer.write(&batch(ds, &schema, &dicts, start..end)?)?;
            // One batch, one row group: the writer holds no more than a group.
            writer.flush()?;
            start = end;
        }
        row_groups = writer.close()?.num_row_groups();
        Ok(())
    })
    .with_context(|| format!("cannot write {out}"))?;
    let bytes = fs::metadata(path)
        .with_context(|| format!("cannot read back {out}"))?
        .len();
    Ok(ExportSummary {
        rows: ds.rows(),
        columns: schema.fields().len(),
        row_groups,
        bytes,
        sha256,
    })
}

/// The dictionaries of the string columns, shared by every batch.
struct Dictionaries {
    family: ArrayRef,
    attack: ArrayRef,
    session: ArrayRef,
    source: ArrayRef,
}

impl Dictionaries {
    fn new(ds: &Dataset) -> anyhow::Result<Self> {
        if i32::try_from(ds.session_names.len()).is_err() {
            bail!(
                "{} session names are more than a Parquet dictionary's Int32 keys can index",
                ds.session_names.len()
            );
        }
        let strings = |names: &[String]| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(names.iter()))
        };
        Ok(Dictionaries {
            family: strings(&ds.family_names),
            attack: strings(&ds.attack_names),
            session: strings(&ds.session_names),
            source: strings(std::slice::from_ref(&ds.source)),
        })
    }
}

/// The record batch of rows `rows`.
fn batch(
    ds: &Dataset,
    schema: &SchemaRef,
    dicts: &Dictionaries,
    rows: Range<usize>,
) -> anyhow::Result<RecordBatch> {
    let n = ds.n_features();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for j in 0..n {
        let values = rows.clone().map(|i| ds.features[i * n + j]);
        columns.push(Arc::new(Float32Array::from_iter_values(values)));
    }
    columns.push(Arc::new(UInt8Array::from(ds.label[rows.clone()].to_vec())));
    let dict = |keys: Vec<i32>, values: &ArrayRef| -> anyhow::Result<ArrayRef> {
        let keys = Int32Array::from(keys);
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
            keys,
            values.clone(),
        )?))
    };
    let family = ds.family[rows.clone()].iter().map(|&k| i32::from(k));
    columns.push(dict(family.collect(), &dicts.family)?);
    let attack = ds.attack[rows.clone()].iter().map(|&k| i32::from(k));
    columns.push(dict(attack.collect(), &dicts.attack)?);
    // Dictionaries::new checked that every session index fits in an i32.
    let session = ds.session[rows.clone()].iter().map(|&k| k as i32);
    columns.push(dict(session.collect(), &dicts.session)?);
    columns.push(dict(vec![0; rows.len()], &dicts.source)?);
    if let Some(ts) = &ds.timestamp_ns {
        let mut values = Vec::with_capacity(rows.len());
        for i in rows.clone() {
            values.push(i64::try_from(ts[i]).map_err(|_| {
                anyhow::anyhow!(
                    "row {i}: timestamp {} ns is past what Parquet's signed 64-bit \
                     timestamps hold (year 2262)",
                    ts[i]
                )
            })?);
        }
        columns.push(Arc::new(
            TimestampNanosecondArray::from(values).with_timezone("UTC"),
        ));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::test_util::temp_dir;
    use arrow_array::{cast::AsArray, types::TimestampNanosecondType, Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn sample(timestamps: bool) -> Dataset {
        let mut ds = Dataset::new("test-set", vec!["bytes".into(), "rate".into()]);
        let ts = |t: u64| timestamps.then_some(t);
        ds.push(&[1.0, 0.5], 0, "benign", "normal", "s1", ts(10));
        ds.push(&[2.5, -4.0], 1, "dos", "neptune", "s2", ts(20));
        ds.push(&[f32::MAX, 0.0], 1, "dos", "smurf", "s2", ts(30));
        ds.push(
            &[7.0, 1e-3],
            0,
            "benign",
            "normal",
            "s3",
            ts(1_796_579_716_712_105_862),
        );
        ds.push(&[-1.0, 3.0], 1, "scan", "nmap", "s1", ts(50));
        ds
    }

    /// An export as read back.
    struct ReadBack {
        schema: SchemaRef,
        /// Rows of each row group.
        groups: Vec<usize>,
        batches: Vec<RecordBatch>,
        /// The file's `detector.*` key-value metadata.
        metadata: Vec<(String, String)>,
    }

    fn read_back(path: &Path) -> ReadBack {
        let file = fs::File::open(path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let meta = builder.metadata().clone();
        let groups = meta
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .collect();
        let metadata = meta
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter(|kv| kv.key.starts_with("detector."))
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        let schema = builder.schema().clone();
        let batches = builder.build().unwrap().map(|b| b.unwrap()).collect();
        ReadBack {
            schema,
            groups,
            batches,
            metadata,
        }
    }

    fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            let dict = b
                .column_by_name(column)
                .unwrap()
                .as_dictionary::<Int32Type>();
            let values = dict.values().as_string::<i32>();
            out.extend(
                dict.keys()
                    .values()
                    .iter()
                    .map(|&k| values.value(k as usize).to_string()),
            );
        }
        out
    }

    #[test]
    fn writes_every_column_and_row_in_row_groups() {
        let ds = sample(true);
        let dir = temp_dir("export");
        let path = dir.join("out.parquet");
        let sum = write_parquet_groups(&ds, &path, 2).unwrap();
        assert_eq!(
            sum,
            ExportSummary {
                rows: 5,
                columns: 8,
                row_groups: 3,
                bytes: fs::metadata(&path).unwrap().len(),
                sha256: ds.digest(),
            }
        );
        let ReadBack {
            schema,
            groups,
            batches,
            metadata,
        } = read_back(&path);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "bytes",
                "rate",
                "label",
                "family",
                "attack",
                "session",
                "source",
                "timestamp_ns"
            ]
        );
        assert_eq!(schema.field(0).data_type(), &DataType::Float32);
        assert_eq!(
            schema.field(7).data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
        );
        assert_eq!(groups, [2, 2, 1]);
        let expected = [
            ("detector.source".to_string(), "test-set".to_string()),
            ("detector.sha256".to_string(), ds.digest()),
        ];
        assert_eq!(metadata, expected);
        assert_eq!(schema.metadata(), &expected.into());

        let f32s = |col: usize| -> Vec<f32> {
            batches
                .iter()
                .flat_map(|b| {
                    b.column(col)
                        .as_primitive::<arrow_array::types::Float32Type>()
                        .values()
                        .to_vec()
                })
                .collect()
        };
        let rows = 0..ds.rows();
        assert_eq!(
            f32s(0),
            rows.clone().map(|i| ds.row(i)[0]).collect::<Vec<_>>()
        );
        assert_eq!(
            f32s(1),
            rows.clone().map(|i| ds.row(i)[1]).collect::<Vec<_>>()
        );
        let labels: Vec<u8> = batches
            .iter()
            .flat_map(|b| {
                b.column(2)
                    .as_primitive::<arrow_array::types::UInt8Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(labels, ds.label);
        let of = |f: fn(&Dataset, usize) -> &str| -> Vec<String> {
            rows.clone().map(|i| f(&ds, i).to_string()).collect()
        };
        assert_eq!(strings(&batches, "family"), of(Dataset::family_of));
        assert_eq!(strings(&batches, "attack"), of(Dataset::attack_of));
        assert_eq!(strings(&batches, "session"), of(Dataset::session_of));
        assert_eq!(strings(&batches, "source"), vec!["test-set"; 5]);
        let ts: Vec<u64> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column(7).as_primitive::<TimestampNanosecondType>();
                assert_eq!(a.null_count(), 0);
                a.values().iter().map(|&v| v as u64).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(Some(ts), ds.timestamp_ns);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn without_timestamps_and_empty() {
        let dir = temp_dir("export-empty");
        let path = dir.join("out.parquet");
        let sum = write_parquet(&sample(false), &path).unwrap();
        assert_eq!((sum.rows, sum.columns, sum.row_groups), (5, 7, 1));
        let schema = read_back(&path).schema;
        assert!(schema.field_with_name("timestamp_ns").is_err());

        let empty = Dataset::new("nothing", vec!["a".into()]);
        let sum = write_parquet(&empty, &path).unwrap();
        assert_eq!((sum.rows, sum.columns, sum.row_groups), (0, 6, 0));
        let back = read_back(&path);
        assert_eq!(back.schema.fields().len(), 6);
        assert!(back.groups.is_empty());
        assert_eq!(back.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn clashing_names_and_bad_paths_are_errors_naming_the_file() {
        let dir = temp_dir("export-errors");
        let path = dir.join("out.parquet");
        let mut ds = Dataset::new("x", vec!["label".into()]);
        ds.push(&[1.0], 0, "benign", "normal", "s", None);
        let err = format!("{:#}", write_parquet(&ds, &path).unwrap_err());
        assert!(
            err.contains("out.parquet") && err.contains("`label`"),
            "{err}"
        );
        let ds = Dataset::new("x", vec!["a".into(), "a".into()]);
        let err = format!("{:#}", write_parquet(&ds, &path).unwrap_err());
        assert!(err.contains("`a` appears twice"), "{err}");
        assert!(!path.exists(), "a failed export left a file");

        // A folder that cannot be created: under a regular file.
        fs::write(dir.join("file"), b"").unwrap();
        let bad = dir.join("file/out.parquet");
        let err = format!("{:#}", write_parquet(&sample(true), &bad).unwrap_err());
        assert!(err.contains("file/out.parquet"), "{err}");

        let mut ds = sample(true);
        ds.timestamp_ns.as_mut().unwrap()[3] = u64::MAX;
        let err = format!("{:#}", write_parquet(&ds, &path).unwrap_err());
        assert!(err.contains("row 3: timestamp"), "{err}");
        assert!(!path.exists(), "a failed export left a file");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "a temporary was left"
        );
        let _ = fs::remove_dir_all(dir);
    }
}

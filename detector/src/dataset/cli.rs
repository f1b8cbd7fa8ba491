//! `detector dataset …`: import public flow datasets into the project's dataset format and
//! print statistics of dataset files.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{
    export::{self, ExportFormat},
    flows,
    import::{import_file, Format, ImportOptions, OnError, DEFAULT_SESSION_ROWS},
    stats, Dataset,
};

/// Dataset subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DatasetCommand {
    /// Import public flow-dataset files into one dataset file.
    ///
    /// Reads NSL-KDD / KDD Cup 99 text files, CICFlowMeter CSVs (CICIDS2017 layout, raw or
    /// cleaned), NF-v2 NetFlow CSVs and UNSW-NB15 CSVs (`.zst`-compressed inputs too), streaming
    /// row by row. Identifiers (addresses, source ports, absolute times, TTLs) are never
    /// features. All files must give the same feature set. Prints a summary per file: rows
    /// read, kept and skipped, cells sanitised (Infinity → ±1e12, NaN and empty → 0), rows per
    /// family and warnings. See docs/dataset-format.md.
    Import {
        /// Input files (one format; detected from each file's first line unless --format).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Input format, instead of detecting it.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Dataset file to write (replaced atomically).
        #[arg(long, short, value_name = "PATH")]
        out: PathBuf,
        /// Bad rows (wrong field count, unparsable number, contradictory label): skip and count
        /// them, or stop at the first.
        #[arg(long, value_enum, default_value = "skip")]
        on_error: OnError,
        /// Add the rows to the existing --out file instead of replacing it (same feature set).
        #[arg(long)]
        append: bool,
        /// Rows per pseudo-session for sources without addresses (NSL-KDD, cleaned CICIDS2017,
        /// UNSW-NB15 training/testing sets).
        #[arg(long, default_value_t = DEFAULT_SESSION_ROWS as u64, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        session_rows: u64,
    },
    /// Build a dataset of the live feature set from the project's own flow records: agent
    /// output (`detector run`), `detector replay` output, or lab recordings (`.jsonl.zst`).
    ///
    /// Records are read in order and each one's context (per-source windows) is computed as the
    /// agent computes it live. Lab records carry their label in a "lab" object; other records
    /// take --label/--family/--session.
    FromFlows {
        /// JSON-lines files (`.zst`-compressed too), in time order.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Dataset file to write (replaced atomically).
        #[arg(long, short, value_name = "PATH")]
        out: PathBuf,
        /// all: a row per record, as the agent scores them; final: a row per flow.
        #[arg(long, value_enum, default_value = "all")]
        rows: flows::Rows,
        /// Label of records without a "lab" object.
        #[arg(long, value_parser = ["benign", "attack"])]
        label: Option<String>,
        /// Family of records without a "lab" object (default: benign, or other-attack).
        #[arg(long)]
        family: Option<String>,
        /// Session name of records without a "lab" object (default: the file name).
        #[arg(long)]
        session: Option<String>,
        /// Keep lab records no session explains (neighbour discovery, housekeeping) as benign.
        #[arg(long)]
        keep_unattributed: bool,
        /// Which lab sessions become rows: all, or the training or test split (the test split,
        /// every session `scenario/N` with N ≡ 3 mod 5, is what `detector eval-offlab` scores).
        /// The others still feed the context windows.
        #[arg(long, value_enum, default_value = "all")]
        sessions: flows::Sessions,
    },
    /// Build a dataset of the live feature set from captures (pcap, pcapng): each replayed
    /// through the kernel's flow logic as `detector replay` does, its records featurised with
    /// fresh context windows as the agent does live, labelled as given; each file is a session.
    FromCaptures {
        /// Captures.
        #[arg(value_name = "FILE", required_unless_present = "manifest")]
        files: Vec<PathBuf>,
        /// Also every file of this corpus manifest (MANIFEST.tsv) whose label is --label and
        /// whose split is --split, each checked against its sha256.
        #[arg(long, value_name = "PATH", requires = "split")]
        manifest: Option<PathBuf>,
        /// The manifest's split to take (e.g. train).
        #[arg(long, value_name = "NAME", requires = "manifest")]
        split: Option<String>,
        /// Dataset file to write (replaced atomically).
        #[arg(long, short, value_name = "PATH")]
        out: PathBuf,
        /// all: a row per record, as the agent scores them; final: a row per flow.
        #[arg(long, value_enum, default_value = "all")]
        rows: flows::Rows,
        /// Label of every row.
        #[arg(long, value_parser = ["benign", "attack"])]
        label: String,
        /// Family (default: benign, or other-attack).
        #[arg(long)]
        family: Option<String>,
        /// Add the rows to the existing --out file instead of replacing it (same feature set).
        #[arg(long)]
        append: bool,
    },
    /// Write a dataset file as Parquet, for pandas, polars, DuckDB or Spark.
    ///
    /// One Float32 column per feature (the dataset's feature names), then label (UInt8, 1 =
    /// attack), family, attack, session and source (dictionary-encoded strings) and, when the
    /// dataset has them, timestamp_ns (Timestamp(ns, UTC)); zstd, row groups of 131,072 rows.
    /// See docs/dataset-format.md, "Export".
    Export {
        /// Dataset file (.dds).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "parquet")]
        format: ExportFormat,
        /// File to write (replaced atomically).
        #[arg(long, short, value_name = "PATH")]
        out: PathBuf,
    },
    /// Print rows per family, attack and session, and per-feature ranges of dataset files.
    Stats {
        /// Dataset files written by `dataset import` (or by the agent's recorder).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a dataset subcommand.
pub fn run(cmd: DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Import {
            files,
            format,
            out,
            on_error,
            append,
            session_rows,
        } => {
            let opts = ImportOptions {
                format,
                on_error,
                session_rows: usize::try_from(session_rows).unwrap_or(usize::MAX),
            };
            let ds = import_all(&files, &opts, append.then_some(out.as_path()))?;
            ds.write(&out)?;
            println!(
                "wrote {}: feature set {}, {} rows, {} features, sha256 {}",
                out.display(),
                ds.source,
                ds.rows(),
                ds.n_features(),
                ds.digest()
            );
            Ok(())
        }
        DatasetCommand::FromFlows {
            files,
            out,
            rows,
            label,
            family,
            session,
            keep_unattributed,
            sessions,
        } => {
            let default_label = label.map(|l| {
                let attack = l == "attack";
                flows::DefaultLabel {
                    attack,
                    family: family
                        .unwrap_or_else(|| if attack { "other-attack" } else { "benign" }.into()),
                    session: session.unwrap_or_else(|| {
                        files[0]
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    }),
                }
            });
            let opts = flows::FlowsOptions {
                rows,
                default_label,
                keep_unattributed,
                sessions,
            };
            let (ds, sum) = flows::from_files(&files, &opts)?;
            ds.write(&out)?;
            println!(
                "wrote {}: feature set {}, {} rows from {} flow records ({} unattributed skipped, {} outside the sessions asked for, {} other lines), sha256 {}",
                out.display(),
                ds.source,
                sum.rows,
                sum.records,
                sum.skipped_unattributed,
                sum.skipped_test_split,
                sum.other_lines,
                ds.digest()
            );
            Ok(())
        }
        DatasetCommand::FromCaptures {
            mut files,
            manifest,
            split,
            out,
            rows,
            label,
            family,
            append,
        } => {
            let attack = label == "attack";
            if let (Some(m), Some(split)) = (&manifest, &split) {
                files.extend(crate::corpus::manifest_files(m, split, &label)?);
            }
            let family =
                family.unwrap_or_else(|| if attack { "other-attack" } else { "benign" }.into());
            let flow = crate::config::Config::default().flow_config();
            let (new, sum) = flows::from_captures(&files, rows, attack, &family, &flow)?;
            let ds = if append && out.exists() {
                let mut ds = Dataset::read(&out)?;
                ds.append(&new)?;
                ds
            } else {
                new
            };
            ds.write(&out)?;
            println!(
                "wrote {}: feature set {}, {} rows from {} flow records of {} captures ({} skipped; {} rows in all), sha256 {}",
                out.display(),
                ds.source,
                sum.rows,
                sum.records,
                files.len() - sum.skipped_captures as usize,
                sum.skipped_captures,
                ds.rows(),
                ds.digest()
            );
            Ok(())
        }
        DatasetCommand::Export { file, format, out } => {
            let ds = Dataset::read(&file)?;
            let sum = match format {
                ExportFormat::Parquet => export::write_parquet(&ds, &out)?,
            };
            println!(
                "wrote {}: {} rows, {} columns ({} features), row groups: {}, {} bytes, from {} (sha256 {})",
                out.display(),
                sum.rows,
                sum.columns,
                ds.n_features(),
                sum.row_groups,
                sum.bytes,
                file.display(),
                sum.sha256
            );
            Ok(())
        }
        DatasetCommand::Stats { files, json } => {
            let mut all = Vec::with_capacity(files.len());
            for f in &files {
                let ds = Dataset::read(f)?;
                all.push(stats::compute(&ds, Some(&f.display().to_string())));
            }
            if json {
                let value = serde_json::json!({
                    "files": all,
                    "per_source": stats::per_source(&all)
                        .into_iter()
                        .map(|(source, (files, rows))| {
                            serde_json::json!({"source": source, "files": files, "rows": rows})
                        })
                        .collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                for s in &all {
                    println!("{s}");
                }
                if all.len() > 1 {
                    println!("{:<20} {:>6} {:>12}", "feature set", "files", "rows");
                    for (source, (files, rows)) in stats::per_source(&all) {
                        println!("{source:<20} {files:>6} {rows:>12}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// Imports `files` into one dataset, starting from the dataset at `existing` when given (and
/// present); prints each file's summary.
pub fn import_all(
    files: &[PathBuf],
    opts: &ImportOptions,
    existing: Option<&Path>,
) -> anyhow::Result<Dataset> {
    let mut acc: Option<Dataset> = match existing {
        Some(p) if p.exists() => Some(
            Dataset::read(p).with_context(|| format!("--append: cannot read {}", p.display()))?,
        ),
        _ => None,
    };
    for f in files {
        let (ds, summary) = import_file(f, opts)?;
        print!("{summary}");
        match &mut acc {
            None => acc = Some(ds),
            Some(a) => a
                .append(&ds)
                .with_context(|| format!("cannot combine {} with the earlier rows", f.display()))?,
        }
    }
    acc.ok_or_else(|| anyhow::anyhow!("no input files"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::test_util::{corpus, fixture, temp_dir};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: DatasetCommand,
    }

    const KDD_ROW: &str = "0,tcp,http,SF,181,5450,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,8,8,0.00,\
        0.00,0.00,0.00,1.00,0.00,0.00,9,9,1.00,0.00,0.11,0.00,0.00,0.00,0.00,0.00";

    fn parse(args: &[&std::ffi::OsStr]) -> DatasetCommand {
        let mut all = vec![std::ffi::OsStr::new("x")];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().cmd
    }

    #[test]
    fn import_then_append_then_stats() {
        let dir = temp_dir("cli");
        let out = dir.join("kdd.dds");
        let kdd = fixture(
            &dir,
            "kdd.txt",
            &format!("{KDD_ROW},normal,21\n{KDD_ROW},neptune,20\n{KDD_ROW},neptune,20\n"),
        );
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        run(parse(&[
            os("import"),
            kdd.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ]))
        .unwrap();
        assert_eq!(Dataset::read(&out).unwrap().rows(), 3);

        run(parse(&[
            os("import"),
            kdd.as_os_str(),
            os("--append"),
            os("--on-error"),
            os("fail"),
            os("--format"),
            os("nsl-kdd"),
            os("--out"),
            out.as_os_str(),
        ]))
        .unwrap();
        let ds = Dataset::read(&out).unwrap();
        assert_eq!(ds.rows(), 6);
        // Same file twice: same pseudo-session names, so the sessions are shared.
        assert_eq!(ds.session[1], ds.session[4]);

        // Without --append the file is replaced.
        run(parse(&[
            os("import"),
            kdd.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ]))
        .unwrap();
        assert_eq!(Dataset::read(&out).unwrap().rows(), 3);

        let cic = corpus("cicids2017-subset--cleaned_dataset.csv");
        let err = run(parse(&[
            os("import"),
            cic.as_os_str(),
            os("--append"),
            os("-o"),
            out.as_os_str(),
        ]))
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("cannot append a `cicflowmeter` dataset to a `nsl-kdd` dataset"),
            "{err}"
        );
        let err = run(parse(&[
            os("import"),
            cic.as_os_str(),
            os("--on-error"),
            os("fail"),
            os("-o"),
            out.as_os_str(),
        ]))
        .unwrap_err();
        assert!(format!("{err:#}").contains(":66: column 12"), "{err:#}");
        assert_eq!(
            Dataset::read(&out).unwrap().rows(),
            3,
            "a failed import wrote"
        );

        run(parse(&[
            os("stats"),
            os("--json"),
            out.as_os_str(),
            out.as_os_str(),
        ]))
        .unwrap();
        run(parse(&[os("stats"), out.as_os_str()])).unwrap();
        let err = run(parse(&[os("stats"), kdd.as_os_str()])).unwrap_err();
        assert!(
            format!("{err:#}").contains("kdd.txt: not a detector dataset"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn arguments_are_checked() {
        assert!(Cli::try_parse_from(["x", "import", "-o", "a"]).is_err());
        assert!(Cli::try_parse_from(["x", "import", "f", "-o", "a", "--format", "csv"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "import", "f", "-o", "a", "--session-rows", "0"]).is_err()
        );
        assert!(Cli::try_parse_from(["x", "stats"]).is_err());
        let cli = Cli::try_parse_from(["x", "import", "f", "-o", "a", "--format", "kdd"]).unwrap();
        assert!(matches!(
            cli.cmd,
            DatasetCommand::Import {
                format: Some(Format::NslKdd),
                on_error: OnError::Skip,
                session_rows: 100,
                ..
            }
        ));
    }
}

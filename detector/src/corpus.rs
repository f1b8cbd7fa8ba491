//! The shared corpus (`../shared/corpus`: real captures and flow tables from public
//! repositories): where it is, and its manifests.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The shared folder (the one holding `corpus/`): `$DETECTOR_SHARED_DIR`, else `../shared`
/// beside the checkout this was built from, else `/work/shared`; None when none has a corpus.
pub fn shared_dir() -> Option<PathBuf> {
    std::env::var_os("DETECTOR_SHARED_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
            PathBuf::from("/work/shared"),
        ])
        .find(|c| c.join("corpus").is_dir())
}

/// One row of a corpus manifest (`MANIFEST.tsv`): file, label, family, sha256, split.
pub struct ManifestRow {
    /// Relative to the manifest's folder.
    pub file: String,
    pub label: String,
    pub family: String,
    pub sha256: Option<String>,
    pub split: Option<String>,
}

/// Reads a corpus manifest (tab-separated, with a header naming at least `file`, `label` and
/// `family`; `sha256` and `split` are read where present).
pub fn manifest(path: &Path) -> anyhow::Result<Vec<ManifestRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .with_context(|| format!("{}: empty", path.display()))?
        .split('\t')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(file), Some(label), Some(family)) = (col("file"), col("label"), col("family")) else {
        bail!(
            "{}: the header needs the columns file, label and family",
            path.display()
        );
    };
    let split = col("split");
    let sha = col("sha256");
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| {
            f.get(i)
                .map(|s| s.to_string())
                .with_context(|| format!("{}:{}: too few columns", path.display(), n + 2))
        };
        rows.push(ManifestRow {
            file: get(file)?,
            label: get(label)?,
            family: get(family)?,
            sha256: sha.map(get).transpose()?,
            split: split.map(get).transpose()?,
        });
    }
    Ok(rows)
}

/// The files of a manifest's `split` with `label`, as paths, each checked against the
/// manifest's sha256 (a training set that changed under the same name must not pass unseen).
pub fn manifest_files(
    manifest_path: &Path,
    split: &str,
    label: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    use sha2::{Digest, Sha256};
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for row in manifest(manifest_path)? {
        if row.split.as_deref() != Some(split) || row.label != label {
            continue;
        }
        let path = dir.join(&row.file);
        if let Some(want) = &row.sha256 {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let got = hex::encode(Sha256::digest(&bytes));
            if &got != want {
                bail!(
                    "{}: sha256 {got}, but {} says {want}",
                    path.display(),
                    manifest_path.display()
                );
            }
        }
        out.push(path);
    }
    if out.is_empty() {
        bail!(
            "{}: no {label} files in split {split}",
            manifest_path.display()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_manifest_is_an_error_naming_file_and_line() {
        let dir = std::env::temp_dir().join(format!("detector-offlab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join("MANIFEST.tsv");
        std::fs::write(&m, "file\tlabel\nx.pcap\tbenign\n").unwrap();
        let e = format!("{:#}", manifest(&m).err().unwrap());
        assert!(e.contains("MANIFEST.tsv") && e.contains("family"), "{e}");
        std::fs::write(&m, "file\tlabel\tfamily\tsplit\nx.pcap\tbenign\n").unwrap();
        let e = format!("{:#}", manifest(&m).err().unwrap());
        assert!(
            e.contains("MANIFEST.tsv:2") && e.contains("too few columns"),
            "{e}"
        );
        // A file whose bytes are not the manifest's is refused by name.
        std::fs::write(
            &m,
            "file\tlabel\tfamily\tsha256\tsplit\nx.pcap\tbenign\tweb\t00\ttrain\n",
        )
        .unwrap();
        std::fs::write(dir.join("x.pcap"), b"not the same").unwrap();
        let e = format!("{:#}", manifest_files(&m, "train", "benign").unwrap_err());
        assert!(e.contains("x.pcap") && e.contains("sha256"), "{e}");
        let e = format!("{:#}", manifest_files(&m, "dev", "benign").unwrap_err());
        assert!(e.contains("no benign files in split dev"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

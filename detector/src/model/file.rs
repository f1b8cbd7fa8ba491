//! Model files: safetensors with the model's JSON header in the safetensors metadata under the
//! key `detector` (docs/model.md, "File format").

use std::{collections::BTreeMap, collections::HashMap, path::Path};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Arch, Calibration, InputLayer, Linear, Model, ModelError, ModelInfo, Normaliser, Prototypes,
    ScoreRule, FORMAT_VERSION,
};

/// Metadata key of the JSON header.
pub const METADATA_KEY: &str = "detector";
const FORMAT_NAME: &str = "detector-model";

/// The JSON header.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    arch: Arch,
    feature_sets: Vec<FeatureSetEntry>,
    info: ModelInfo,
    /// sha256 over every tensor (name, shape, bytes) in name order: any damaged byte is caught.
    tensors_sha256: String,
}

#[derive(Serialize, Deserialize)]
struct FeatureSetEntry {
    name: String,
    trained: bool,
    calibration: Calibration,
    rule: ScoreRule,
    normaliser: Normaliser,
}

struct Owned {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn tensors_of(m: &Model) -> BTreeMap<String, Owned> {
    let mut t = BTreeMap::new();
    let put_linear = |t: &mut BTreeMap<String, Owned>, prefix: String, l: &Linear| {
        t.insert(
            format!("{prefix}/weight"),
            Owned {
                shape: vec![l.out_dim, l.in_dim],
                bytes: f32_bytes(&l.weight),
            },
        );
        t.insert(
            format!("{prefix}/bias"),
            Owned {
                shape: vec![l.out_dim],
                bytes: f32_bytes(&l.bias),
            },
        );
    };
    for (name, l) in &m.inputs {
        put_linear(&mut t, format!("input/{name}"), &l.linear);
    }
    for (i, l) in m.encoder.iter().enumerate() {
        put_linear(&mut t, format!("encoder/{i}"), l);
    }
    put_linear(&mut t, "head".into(), &m.head);
    for (name, p) in &m.prototypes {
        t.insert(
            format!("prototypes/{name}/centroids"),
            Owned {
                shape: vec![p.k(), p.dim],
                bytes: f32_bytes(p.centroids()),
            },
        );
        t.insert(
            format!("prototypes/{name}/benign_distances"),
            Owned {
                shape: vec![p.benign_distances().len()],
                bytes: f32_bytes(p.benign_distances()),
            },
        );
    }
    t
}

fn digest<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT_NAME.as_bytes());
    for (name, shape, bytes) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

impl Model {
    /// The file image of this model.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let bad = |reason: String| ModelError::Format {
            file: "(writing)".into(),
            reason,
        };
        self.validate().map_err(bad)?;
        let tensors = tensors_of(self);
        let header = Header {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            arch: self.arch.clone(),
            feature_sets: self
                .inputs
                .iter()
                .map(|(name, l)| FeatureSetEntry {
                    name: name.clone(),
                    trained: l.trained,
                    calibration: l.calibration,
                    rule: l.rule,
                    normaliser: l.normaliser.clone(),
                })
                .collect(),
            info: self.info.clone(),
            tensors_sha256: digest(
                tensors
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.shape.as_slice(), v.bytes.as_slice())),
            ),
        };
        let json = serde_json::to_string(&header).map_err(|e| bad(e.to_string()))?;
        let mut views = Vec::with_capacity(tensors.len());
        for (k, v) in &tensors {
            let view = TensorView::new(Dtype::F32, v.shape.clone(), &v.bytes)
                .map_err(|e| bad(format!("tensor `{k}`: {e}")))?;
            views.push((k.clone(), view));
        }
        let meta = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))
    }

    /// Writes the model atomically (temporary file in the same folder, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let bytes = self.to_bytes()?;
        crate::atomic_write::write_atomic(path, &bytes).map_err(|source| ModelError::Io {
            file: path.display().to_string(),
            source,
        })
    }

    /// Reads a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &file)
    }

    /// Parses a file image; `file` names it in errors. Never panics on corrupt input.
    pub fn from_bytes(bytes: &[u8], file: &str) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::Format {
            file: file.to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            bad(format!(
                "{e} (truncated or not a safetensors file; {} bytes)",
                bytes.len()
            ))
        })?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| bad(format!("no `{METADATA_KEY}` metadata")))?;
        let header: Header = serde_json::from_str(json)
            .map_err(|e| bad(format!("`{METADATA_KEY}` metadata: {e}")))?;
        if header.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is `{}`, expected `{FORMAT_NAME}`",
                header.format
            )));
        }
        if header.version != FORMAT_VERSION {
            return Err(bad(format!(
                "version {} is not supported (this build reads version {FORMAT_VERSION})",
                header.version
            )));
        }
        header.arch.validate().map_err(bad)?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut views = BTreeMap::new();
        for n in &names {
            let v = st.tensor(n).map_err(|e| bad(e.to_string()))?;
            if v.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{n}` is {:?}, expected F32",
                    v.dtype()
                )));
            }
            views.insert(n.clone(), v);
        }
        let actual = digest(views.iter().map(|(k, v)| (k.as_str(), v.shape(), v.data())));
        if actual != header.tensors_sha256 {
            return Err(bad(format!(
                "tensor digest mismatch (header {}, data {actual}): the file is corrupt",
                header.tensors_sha256
            )));
        }
        let mut used = 0usize;
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let v = views
                .get(name)
                .ok_or_else(|| bad(format!("tensor `{name}` is missing")))?;
            if v.shape() != shape {
                return Err(bad(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    v.shape()
                )));
            }
            used += 1;
            Ok(v.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut linear = |prefix: &str, out_dim: usize, in_dim: usize| {
            Ok::<_, ModelError>(Linear {
                out_dim,
                in_dim,
                weight: take(&format!("{prefix}/weight"), &[out_dim, in_dim])?,
                bias: take(&format!("{prefix}/bias"), &[out_dim])?,
            })
        };
        let h = header.arch.hidden.clone();
        let mut inputs = BTreeMap::new();
        for fs in header.feature_sets {
            let d = fs.normaliser.len();
            let l = linear(&format!("input/{}", fs.name), h[0], d)?;
            inputs.insert(
                fs.name,
                InputLayer {
                    normaliser: fs.normaliser,
                    linear: l,
                    trained: fs.trained,
                    calibration: fs.calibration,
                    rule: fs.rule,
                },
            );
        }
        let encoder = h
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(&format!("encoder/{i}"), w[1], w[0]))
            .collect::<Result<Vec<_>, _>>()?;
        let head = linear("head", 1, header.arch.embed_dim())?;
        let dim = header.arch.embed_dim();
        let mut prototypes = BTreeMap::new();
        for name in inputs.keys() {
            let c = format!("prototypes/{name}/centroids");
            let Some(cv) = views.get(&c) else { continue };
            let k = cv.shape().first().copied().unwrap_or(0);
            let d = format!("prototypes/{name}/benign_distances");
            let m = views.get(&d).and_then(|v| v.shape().first().copied());
            let m = m.ok_or_else(|| bad(format!("tensor `{d}` is missing")))?;
            let p = Prototypes::new(dim, take(&c, &[k, dim])?, take(&d, &[m])?);
            // NaN or unsorted distances would make novelty meaningless (found by the
            // `model_load` fuzz target: `Model::validate` does not look at prototypes).
            p.validate(dim)
                .map_err(|e| bad(format!("prototypes of `{name}`: {e}")))?;
            prototypes.insert(name.clone(), p);
        }
        if used != views.len() {
            let expected: std::collections::BTreeSet<String> =
                tensors_names(&inputs, &prototypes, h.len());
            let extra: Vec<&String> = views.keys().filter(|k| !expected.contains(*k)).collect();
            return Err(bad(format!("unexpected tensors {extra:?}")));
        }
        let model = Model {
            arch: header.arch,
            inputs,
            encoder,
            head,
            prototypes,
            info: header.info,
        };
        model.validate().map_err(bad)?;
        Ok(model)
    }
}

fn tensors_names(
    inputs: &BTreeMap<String, InputLayer>,
    prototypes: &BTreeMap<String, Prototypes>,
    layers: usize,
) -> std::collections::BTreeSet<String> {
    let mut s = std::collections::BTreeSet::new();
    let mut lin = |p: String| {
        s.insert(format!("{p}/weight"));
        s.insert(format!("{p}/bias"));
    };
    for k in inputs.keys() {
        lin(format!("input/{k}"));
    }
    for i in 0..layers.saturating_sub(1) {
        lin(format!("encoder/{i}"));
    }
    lin("head".into());
    for k in prototypes.keys() {
        s.insert(format!("prototypes/{k}/centroids"));
        s.insert(format!("prototypes/{k}/benign_distances"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::names;

    fn model() -> Model {
        let rows: Vec<f32> = (0..300).map(|i| (i % 17) as f32 * 3.0).collect();
        let norm = Normaliser::fit(names(6), &rows);
        let mut m = Model::new(Arch::default(), &[("a".into(), norm)], 2);
        m.inputs.get_mut("a").unwrap().trained = true;
        m.info.metrics.insert("val_auc".into(), 0.9);
        m.inputs.get_mut("a").unwrap().calibration = Calibration { a: 0.7, b: -0.2 };
        let feats = names(6);
        m.fit_prototypes(
            &super::super::Rows {
                feature_set: "a",
                features: &feats,
                values: &rows,
            },
            1,
        )
        .unwrap();
        m
    }

    #[test]
    fn round_trip_is_exact() {
        let m = model();
        let bytes = m.to_bytes().unwrap();
        let back = Model::from_bytes(&bytes, "mem").unwrap();
        assert!(m == back, "round trip changed the model");
        let dir = std::env::temp_dir().join(format!("detector-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.safetensors");
        m.save(&p).unwrap();
        assert!(Model::load(&p).unwrap() == m);
        std::fs::remove_dir_all(&dir).ok();
        // Readable by candle's own safetensors loader too.
        let t = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
        assert_eq!(t["head/weight"].dims(), &[1, 32]);
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let bytes = model().to_bytes().unwrap();
        for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
            let e = Model::from_bytes(&bytes[..cut], "cut").unwrap_err();
            assert!(matches!(e, ModelError::Format { .. }), "cut {cut}: {e}");
        }
        // One flipped byte anywhere: in the tensors (digest), in the JSON (parse or digest).
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for pos in [8 + header_len + 5, bytes.len() - 3, 8 + header_len / 2, 12] {
            let mut b = bytes.clone();
            b[pos] ^= 0x5a;
            let e = Model::from_bytes(&b, "flip").unwrap_err();
            assert!(matches!(e, ModelError::Format { .. }), "pos {pos}: {e}");
        }
        let e = Model::from_bytes(b"not a model at all", "junk").unwrap_err();
        assert!(e.to_string().contains("junk"), "{e}");
        let e = Model::load(Path::new("/nonexistent/model.safetensors")).unwrap_err();
        assert!(matches!(e, ModelError::Io { .. }));
        // A safetensors file without our metadata.
        let plain = safetensors::serialize(
            [(
                "x",
                TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap(),
            )],
            None,
        )
        .unwrap();
        let e = Model::from_bytes(&plain, "plain").unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        // Finite but huge values would make scores NaN (inf - inf in the network or distances).
        let mut m = model();
        m.head.weight[0] = 1e30;
        assert!(m.validate().unwrap_err().contains("head"));
        let mut m = model();
        m.inputs.get_mut("a").unwrap().calibration.a = 1e20;
        assert!(m.validate().unwrap_err().contains("calibration"));
        let mut m = model();
        let dim = m.embed_dim();
        let p = &m.prototypes["a"];
        let mut centroids = p.centroids().to_vec();
        centroids[0] = 1e30;
        let broken = Prototypes::new(p.dim, centroids, p.benign_distances().to_vec());
        m.prototypes.insert("a".into(), broken);
        assert!(m.prototypes["a"]
            .validate(dim)
            .unwrap_err()
            .contains("exceed"));
        // The embedded default model is well inside the bounds.
        let d = crate::model::default_model().unwrap();
        assert!(d.validate().is_ok());
        assert!(d
            .inputs
            .values()
            .all(|l| l.linear.weight.iter().all(|w| w.abs() < 100.0)));
    }
}

//! Which model serves: the configured file, or the one compiled into the binary, as the agent
//! and the offline paths (`replay --detect`, `eval-offlab`) all load it.

use std::path::Path;

use anyhow::Context;

use super::Model;
use crate::features::LIVE_FEATURE_SET;

/// The base model: `model_file` (`scoring.model`), or the embedded default when it is empty;
/// with the version that names it as loaded (file stem or `default`, and a digest).
///
/// Novelty means "unlike this host's traffic": a model whose live rule alerts on probability or
/// novelty serves none until the host's own baseline is fitted, its prototypes describing its
/// training data, not this host (every foreign flow is novel against the lab's), so they are
/// removed. One whose rule requires both keeps them: they describe benign traffic of many
/// networks, the "unusual" of a host not learnt yet.
pub fn base_model(model_file: &str) -> anyhow::Result<(Model, String)> {
    let (mut m, stem) = if model_file.is_empty() {
        let m = super::default_model().context("the embedded default model is damaged")?;
        (m, "default".to_string())
    } else {
        let p = Path::new(model_file);
        let m = Model::load(p).with_context(|| format!("cannot load the model {}", p.display()))?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        (m, stem)
    };
    let version = format!("{stem}-{}", &digest(&m)[..8]);
    let requires = m
        .inputs
        .get(LIVE_FEATURE_SET)
        .is_some_and(|l| l.rule.require_novelty);
    if !requires {
        m.prototypes.remove(LIVE_FEATURE_SET);
    }
    Ok((m, version))
}

/// sha256 of the model's file image.
fn digest(m: &Model) -> String {
    use sha2::{Digest, Sha256};
    let bytes = m.to_bytes().unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_model_serves_without_its_training_prototypes() {
        let (m, version) = base_model("").unwrap();
        assert!(version.starts_with("default-"), "{version}");
        assert!(!m.prototypes.contains_key(LIVE_FEATURE_SET));
        let e = format!(
            "{:#}",
            base_model("/nonexistent/m.safetensors").unwrap_err()
        );
        assert!(e.contains("/nonexistent/m.safetensors"), "{e}");
    }
}

//! Builds the eBPF object (detector-ebpf, nightly, bpfel-unknown-none) into OUT_DIR so the
//! agent can embed it. Needs `bpf-linker` and the nightly `rust-src` component:
//! `cargo xtask setup` installs both.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest)
        .join("../detector-ebpf")
        .canonicalize()?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    // The shared crate is compiled into the object too.
    println!("cargo:rerun-if-changed={ebpf_dir}/../detector-common/src");
    if let Ok(linker) = which_bpf_linker() {
        println!("cargo:rerun-if-changed={linker}");
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "detector-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF object failed ({e:#}); run `cargo xtask setup` to install \
             bpf-linker and the nightly rust-src component"
        )
    })
}

fn which_bpf_linker() -> anyhow::Result<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("bpf-linker");
        if candidate.is_file() {
            return Ok(candidate.to_string_lossy().into_owned());
        }
    }
    anyhow::bail!("bpf-linker not found in PATH")
}

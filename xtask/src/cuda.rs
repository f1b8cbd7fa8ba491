//! `cargo xtask check-cuda`: type-checks the CUDA build (`--features cuda`) on a machine without
//! a GPU or a CUDA installation. NVIDIA publishes the CUDA 13 compiler, headers and libraries
//! as Python wheels, and PyPI is reachable where Debian's mirror has no CUDA toolkit (it lives
//! in non-free), so they go into a virtual environment under target/, pinned. The check
//! compiles candle's CUDA kernels with that `nvcc` (for `CUDA_COMPUTE_CAP`, default 90) and
//! our code against candle's CUDA API. It does not link or run anything: that needs the driver
//! (`libcuda.so`) and a GPU.

use std::{path::PathBuf, process::Command};

use anyhow::Context;

use crate::{cargo, root, run, setup};

/// The wheels, pinned: the versions the check last passed with (2026-11-29).
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.5.37",
    "nvidia-cuda-crt==13.5.37",
    "nvidia-nvvm==13.5.37",
    "nvidia-cuda-runtime==13.5.37",
    "nvidia-cuda-nvrtc==13.5.37",
    "nvidia-cuda-cccl==13.3.5.0.6",
    "nvidia-cublas==13.10.0.20",
    "nvidia-curand==10.4.5.25",
];

/// cudarc 0.19 names the toolkit versions it knows; 13.5 is newer than its list, and 13.4's
/// bindings are what it would pick for it.
const CUDARC_VERSION: &str = "13040";

pub fn check() -> anyhow::Result<()> {
    setup::all(false)?;
    setup::debian_packages(&["python3-venv"])?;
    let venv = root().join("target/cuda/venv");
    let python = venv.join("bin/python3");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(WHEELS))?;
    let toolkit = cu13(&venv)?;
    let path = format!(
        "{}:{}",
        toolkit.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    eprintln!(
        "== cargo check --features cuda with nvcc from {} (compute capability {cap}; the first \
         run compiles candle's kernels: ~10 min)",
        toolkit.display()
    );
    run(cargo()
        .args([
            "check",
            "-p",
            "detector",
            "--features",
            "cuda",
            "--all-targets",
        ])
        // Its own target directory: a CUDA build must not invalidate the usual one.
        .args(["--target-dir", "target/cuda/target"])
        .env("PATH", path)
        .env("CUDA_ROOT", &toolkit)
        .env("CUDA_PATH", &toolkit)
        .env("CUDA_HOME", &toolkit)
        .env("CUDA_COMPUTE_CAP", cap)
        .env("CUDARC_CUDA_VERSION", CUDARC_VERSION))?;
    eprintln!("== the CUDA build type-checks");
    Ok(())
}

/// The toolkit directory inside the environment (site-packages/nvidia/cu13).
fn cu13(venv: &std::path::Path) -> anyhow::Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in
        std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?
    {
        let dir = entry?.path().join("site-packages/nvidia/cu13");
        if dir.join("bin/nvcc").exists() {
            return Ok(dir);
        }
    }
    anyhow::bail!(
        "no nvidia/cu13/bin/nvcc under {}: the nvidia-cuda-nvcc wheel did not install",
        lib.display()
    )
}

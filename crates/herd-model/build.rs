//! With the `cuda` feature: herd's own CUDA kernels (src/cuda/*.cu) compiled to PTX by nvcc,
//! embedded in the library and loaded by the driver at run time (which compiles the PTX for
//! whatever GPU it finds). Without the feature this does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: &[&str] = &["gemv"];

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let nvcc = nvcc();
    // PTX for the oldest target herd supports runs on every newer GPU through the driver's
    // JIT; CUDA_COMPUTE_CAP (as candle's kernels read it) pins another.
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.trim_end_matches(['a', 'f']).to_string())
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
        .unwrap_or_else(|| "80".to_string());
    for name in KERNELS {
        let src = Path::new("src/cuda").join(format!("{name}.cu"));
        println!("cargo::rerun-if-changed={}", src.display());
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .map_err(|e| {
                format!(
                    "running {}: {e} (set NVCC or CUDA_HOME; tools/cuda/build.sh does)",
                    nvcc.display()
                )
            })?;
        if !status.success() {
            return Err(format!("nvcc failed on {}", src.display()));
        }
    }
    Ok(())
}

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = Path::new(&home).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

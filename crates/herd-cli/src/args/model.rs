//! Which checkpoint to load, on which device, in which precision.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use herd_model::TextModel;

#[derive(Args)]
pub struct ModelArgs {
    /// Checkpoint folder as downloaded from Hugging Face (config.json + *.safetensors).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Compute precision. f32 matches the reference to ~1e-5; bf16 halves memory.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// `cpu`, or `cuda` / `cuda:N` when herd is built with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

impl ModelArgs {
    pub fn device(&self) -> Result<Device> {
        match self.device.as_str() {
            "cpu" => Ok(Device::Cpu),
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal: usize = d
                    .strip_prefix("cuda:")
                    .unwrap_or("0")
                    .parse()
                    .context("--device cuda:N")?;
                if !candle_core::utils::cuda_is_available() {
                    bail!("--device {d}: this herd was built without CUDA (rebuild with --features cuda)");
                }
                Ok(Device::new_cuda(ordinal)?)
            }
            other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
        }
    }

    pub fn load(&self) -> Result<TextModel> {
        let device = self.device()?;
        TextModel::load(&self.model, self.dtype.dtype(), &device)
            .with_context(|| format!("loading {}", self.model.display()))
    }
}

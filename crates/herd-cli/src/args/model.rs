//! Which checkpoint to load, on which device, in which precision.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use herd_model::nn::MatmulPrecision;
use herd_model::{KvFormat, LoadOptions, QuantType, TextModel};

pub(crate) fn parse_quant(text: &str) -> std::result::Result<QuantType, String> {
    QuantType::parse(text)
        .filter(|t| t.writable())
        .ok_or_else(|| format!("`{text}`: expected q8_0, q4_0, q4_k, q5_k or q6_k"))
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A checkpoint folder as downloaded from Hugging Face (config.json + *.safetensors), or a
    /// GGUF file (the first part of a split GGUF opens all parts). Weights stay in their stored
    /// format (bf16, Q8_0, Q4_K, …) in memory.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: PathBuf,
    /// Activation (compute) precision, separate from how weights are stored. f32 matches the
    /// reference to ~1e-5.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Quantize dense weights at load: q8_0, q4_0, q4_k, q5_k or q6_k (with llama.cpp's
    /// choices of which tensors keep more bits, as `herd quantize`).
    #[arg(long, value_name = "TYPE", value_parser = parse_quant)]
    pub quant: Option<QuantType>,
    /// How the KV cache stores keys and values: f16 or bf16 halve its memory and what a decode
    /// step reads at depth (llama.cpp's default cache is f16); q8_0 (llama.cpp's -ctk/-ctv
    /// q8_0: 32 values in 34 bytes, CPU only) nearly halves f16 again; f32 keeps the reference's
    /// values. Default: the compute dtype.
    #[arg(long, value_enum, value_name = "DTYPE")]
    pub kv_dtype: Option<KvDTypeArg>,
    /// How far activations are rounded before products with bf16/f16/fp8 weights (PyTorch's
    /// float32 matmul precision levels): highest keeps the f32 product; high rounds them to two
    /// bf16 planes (16 significant bits); medium to bf16, as llama.cpp computes bf16 weights,
    /// about 2× faster prefill on AVX-512 BF16. Everything else stays in the compute dtype;
    /// quantized weights are unaffected.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = MatmulPrecisionArg::Highest)]
    pub matmul_precision: MatmulPrecisionArg,
    /// `cpu`, or `cuda` / `cuda:N` when herd is built with `--features cuda` (tools/cuda/build.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A LoRA adapter to apply (a PEFT folder: adapter_config.json + adapter_model.safetensors,
    /// as `herd finetune` or PEFT writes it), kept beside the base weights unmerged; repeat to
    /// stack several. `herd serve` also takes NAME=DIR: served beside the base model, chosen by
    /// a request's `model`.
    #[arg(long, value_name = "DIR")]
    pub adapter: Vec<String>,
    /// Debugging: check every layer's output for NaN/inf and stop naming the first layer at
    /// fault (costs one pass over the activations per layer).
    #[arg(long)]
    pub check_finite: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MatmulPrecisionArg {
    Highest,
    High,
    Medium,
}

impl MatmulPrecisionArg {
    pub fn precision(self) -> MatmulPrecision {
        match self {
            MatmulPrecisionArg::Highest => MatmulPrecision::Highest,
            MatmulPrecisionArg::High => MatmulPrecision::High,
            MatmulPrecisionArg::Medium => MatmulPrecision::Medium,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KvDTypeArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl KvDTypeArg {
    pub fn format(self) -> KvFormat {
        match self {
            KvDTypeArg::F32 => KvFormat::Dtype(DType::F32),
            KvDTypeArg::F16 => KvFormat::Dtype(DType::F16),
            KvDTypeArg::Bf16 => KvFormat::Dtype(DType::BF16),
            KvDTypeArg::Q8_0 => KvFormat::Q8_0,
        }
    }
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
    /// `--adapter NAME=DIR` entries (served by name); the rest are applied to the model. A
    /// value that is an existing path, or whose part before `=` holds a `/`, is a folder
    /// (`runs/lr=3e-3`), not a name.
    pub fn named_adapters(&self) -> Vec<(String, PathBuf)> {
        self.adapter.iter().filter_map(|a| named(a)).collect()
    }

    /// The `--adapter DIR` entries applied to the model itself.
    pub fn unnamed_adapters(&self) -> Vec<PathBuf> {
        self.adapter
            .iter()
            .filter(|a| named(a).is_none())
            .map(PathBuf::from)
            .collect()
    }

    /// Applies the adapter in `dir` to `model` (unmerged).
    pub fn apply_adapter(model: &mut TextModel, dir: &std::path::Path) -> Result<()> {
        let adapter = herd_train::adapter::Adapter::load(dir)
            .with_context(|| format!("--adapter {}", dir.display()))?;
        adapter
            .apply(model)
            .with_context(|| format!("--adapter {}", dir.display()))?;
        Ok(())
    }

    /// Loads the model with its unnamed adapters; NAME=DIR ones are an error outside `serve`.
    pub fn load(&self) -> Result<TextModel> {
        if let Some((name, _)) = self.named_adapters().first() {
            bail!("--adapter {name}=…: named adapters are served side by side by `herd serve`; here give the folder alone");
        }
        self.load_base()
    }

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
                Ok(herd_model::device::cuda_device(ordinal)?)
            }
            other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
        }
    }

    /// Loads the model with the `--adapter DIR` entries applied (NAME=DIR ones are left to the
    /// caller).
    pub fn load_base(&self) -> Result<TextModel> {
        let options = LoadOptions {
            dtype: self.dtype.dtype(),
            device: self.device()?,
            quant: self.quant,
            dequantize: false,
        };
        let load = || -> Result<TextModel> {
            let (source, config) = herd_model::WeightSource::open(&self.model)?;
            // A bar on stderr while the weights load (indicatif draws nothing when stderr is
            // not a terminal).
            let bar = indicatif::ProgressBar::new(config.layers.len() as u64 + 2);
            bar.set_style(
                indicatif::ProgressStyle::with_template("loading {bar:40} {pos}/{len} {elapsed_precise}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut model =
                TextModel::from_source_with_progress(&source, config, &options, |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })?;
            bar.finish_and_clear();
            for dir in self.unnamed_adapters() {
                Self::apply_adapter(&mut model, &dir)?;
            }
            model.set_check_finite(self.check_finite);
            model.set_kv_format(self.kv_dtype.map(KvDTypeArg::format))?;
            model.set_matmul_precision(self.matmul_precision.precision());
            Ok(model)
        };
        load().with_context(|| format!("loading {}", self.model.display()))
    }
}

/// `NAME=DIR` → (NAME, DIR), unless the value is a folder's path.
fn named(value: &str) -> Option<(String, PathBuf)> {
    if std::path::Path::new(value).exists() {
        return None;
    }
    let (name, dir) = value.split_once('=')?;
    (!name.is_empty() && !name.contains('/')).then(|| (name.to_string(), PathBuf::from(dir)))
}

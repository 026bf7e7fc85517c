//! The weight-source seam: safetensors folders and GGUF files answer the same questions, by
//! Hugging Face tensor names, so one model code path loads both.

use candle_core::Tensor;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::weights::gguf::GgufFile;
use crate::weights::gguf_llama4::{self, gguf_name};
use crate::weights::QuantTensor;

/// A tensor in the format its file stores it.
#[derive(Debug)]
pub enum Stored {
    /// f32 / bf16 / f16 on the CPU.
    Dense(Tensor),
    Quantized(QuantTensor),
}

impl Stored {
    /// [rows, cols] of a matrix.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Stored::Dense(t) => Ok(t.dims2()?),
            Stored::Quantized(q) => Ok((q.rows(), q.cols())),
        }
    }
}

/// One MoE layer's routed experts, each matrix `[out, in]` as nn.Linear stores it:
/// gate and up `[F, D]`, down `[D, F]`.
pub struct ExpertWeights {
    pub gate: Vec<Stored>,
    pub up: Vec<Stored>,
    pub down: Vec<Stored>,
}

pub enum WeightSource {
    Safetensors(Checkpoint),
    Gguf(GgufFile),
}

impl WeightSource {
    /// Prefix of the text decoder's tensor names (`model.` or `language_model.model.`).
    pub fn text_prefix(&self) -> &str {
        match self {
            WeightSource::Safetensors(c) => c.text_prefix(),
            WeightSource::Gguf(_) => gguf_llama4::TEXT_PREFIX,
        }
    }

    /// Full name of the output projection.
    pub fn lm_head_name(&self) -> &str {
        match self {
            WeightSource::Safetensors(c) => c.lm_head_name(),
            WeightSource::Gguf(_) => gguf_llama4::LM_HEAD,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Safetensors(c) => c.contains(name),
            WeightSource::Gguf(g) => gguf_name(name).is_some_and(|n| g.tensor_info(&n).is_some()),
        }
    }

    /// Tensor `name` with `shape` (HF order), as stored.
    pub fn stored(&self, name: &str, shape: &[usize]) -> Result<Stored> {
        match self {
            WeightSource::Safetensors(c) => Ok(Stored::Dense(c.stored(name, shape)?)),
            WeightSource::Gguf(g) => {
                let gname = gguf_tensor(g, name)?;
                let actual = g.tensor_info(&gname).map(|t| t.shape()).unwrap_or_default();
                if actual != shape {
                    return Err(Error::TensorShape {
                        name: gname,
                        expected: shape.to_vec(),
                        actual,
                    });
                }
                g.read(&gname)
            }
        }
    }

    /// The routed experts under `prefix` (`…feed_forward.experts.`), split per expert.
    pub fn experts(&self, prefix: &str, n_experts: usize, d: usize, f: usize) -> Result<ExpertWeights> {
        match self {
            WeightSource::Safetensors(c) => fused_experts(c, prefix, n_experts, d, f),
            WeightSource::Gguf(g) => stacked_experts(g, prefix, n_experts, d, f),
        }
    }
}

/// transformers' fused layout: `gate_up_proj` [E, D, 2F] and `down_proj` [E, F, D], used as
/// `x @ W`. Each expert's slices are transposed once, at load, into nn.Linear's `[out, in]`
/// in the stored dtype (never widened), so experts run through the same `Linear` as everything
/// else.
fn fused_experts(
    c: &Checkpoint,
    prefix: &str,
    n_experts: usize,
    d: usize,
    f: usize,
) -> Result<ExpertWeights> {
    let gate_up = c.stored(&format!("{prefix}gate_up_proj"), &[n_experts, d, 2 * f])?;
    let down = c.stored(&format!("{prefix}down_proj"), &[n_experts, f, d])?;
    let mut experts = ExpertWeights {
        gate: Vec::with_capacity(n_experts),
        up: Vec::with_capacity(n_experts),
        down: Vec::with_capacity(n_experts),
    };
    for e in 0..n_experts {
        let gu = gate_up.get(e)?; // [D, 2F]
        experts
            .gate
            .push(Stored::Dense(gu.narrow(1, 0, f)?.t()?.contiguous()?));
        experts
            .up
            .push(Stored::Dense(gu.narrow(1, f, f)?.t()?.contiguous()?));
        experts.down.push(Stored::Dense(down.get(e)?.t()?.contiguous()?));
    }
    Ok(experts)
}

/// The GGUF name for HF name `name`, or a missing-tensor error naming both.
fn gguf_tensor(g: &GgufFile, name: &str) -> Result<String> {
    match gguf_name(name) {
        Some(n) if g.tensor_info(&n).is_some() => Ok(n),
        Some(n) => Err(Error::MissingTensor {
            name: format!("{n} (herd's {name})"),
            dir: g.path().to_path_buf(),
        }),
        None => Err(Error::MissingTensor {
            name: name.to_string(),
            dir: g.path().to_path_buf(),
        }),
    }
}

/// llama.cpp's split layout: `ffn_gate_exps` / `ffn_up_exps` [E, F, D] and `ffn_down_exps`
/// [E, D, F] (row-major), each expert a contiguous run of rows, read one expert at a time.
fn stacked_experts(
    g: &GgufFile,
    prefix: &str,
    n_experts: usize,
    d: usize,
    f: usize,
) -> Result<ExpertWeights> {
    let mut experts = ExpertWeights {
        gate: Vec::with_capacity(n_experts),
        up: Vec::with_capacity(n_experts),
        down: Vec::with_capacity(n_experts),
    };
    for (proj, shape, out) in [
        ("gate_proj", [n_experts, f, d], &mut experts.gate),
        ("up_proj", [n_experts, f, d], &mut experts.up),
        ("down_proj", [n_experts, d, f], &mut experts.down),
    ] {
        let gname = gguf_tensor(g, &format!("{prefix}{proj}"))?;
        let actual = g.tensor_info(&gname).map(|t| t.shape()).unwrap_or_default();
        if actual != shape {
            return Err(Error::TensorShape {
                name: gname,
                expected: shape.to_vec(),
                actual,
            });
        }
        let rows = shape[1];
        for e in 0..n_experts {
            out.push(g.read_rows(&gname, e * rows, rows)?);
        }
    }
    Ok(experts)
}

impl WeightSource {
    /// Opens a model path: a GGUF file (or the first part of a split one), or a Hugging Face
    /// folder (config.json + safetensors). Returns the source and its resolved config.
    pub fn open(path: &std::path::Path) -> Result<(Self, crate::ModelConfig)> {
        if path.is_dir() {
            let config = crate::ModelConfig::load(path)?;
            return Ok((WeightSource::Safetensors(Checkpoint::open(path)?), config));
        }
        if !path.exists() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: "no such file or folder".into(),
            });
        }
        let gguf = GgufFile::open(path)?;
        let config = crate::ModelConfig::from_json(&gguf_llama4::config_json(&gguf)?)?;
        Ok((WeightSource::Gguf(gguf), config))
    }
}

impl From<GgufFile> for WeightSource {
    fn from(g: GgufFile) -> Self {
        WeightSource::Gguf(g)
    }
}

impl From<Checkpoint> for WeightSource {
    fn from(c: Checkpoint) -> Self {
        WeightSource::Safetensors(c)
    }
}

/// Widens a stored tensor to a dense one (for small tensors such as norms).
pub fn to_dense(name: &str, stored: Stored) -> Result<Tensor> {
    match stored {
        Stored::Dense(t) => Ok(t),
        Stored::Quantized(q) => {
            let (r, c) = (q.rows(), q.cols());
            Tensor::from_vec(q.dequantize()?, (r, c), &candle_core::Device::Cpu).map_err(|e| {
                Error::Quantization {
                    name: name.to_string(),
                    message: e.to_string(),
                }
            })
        }
    }
}

//! The weight-source seam: safetensors folders and GGUF files answer the same questions, by
//! Hugging Face tensor names, so one model code path loads both.

use candle_core::Tensor;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::kernels::transpose::transpose_tensor;
use crate::weights::fp8::Fp8Matrix;
use crate::weights::gguf::GgufFile;
use crate::weights::gguf_llama4::{self, gguf_name};
use crate::weights::{QuantTensor, QuantType};

/// A tensor in the format its file stores it.
#[derive(Debug)]
pub enum Stored {
    /// f32 / bf16 / f16 on the CPU.
    Dense(Tensor),
    Quantized(QuantTensor),
    /// float8_e4m3fn with per-row scales (FP8 checkpoints).
    Fp8(Fp8Matrix),
}

impl Stored {
    /// [rows, cols] of a matrix.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Stored::Dense(t) => Ok(t.dims2()?),
            Stored::Quantized(q) => Ok((q.rows(), q.cols())),
            Stored::Fp8(m) => Ok((m.rows(), m.cols())),
        }
    }
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

    /// llama.cpp's `rope_freqs` (a GGUF's llama3 scaling: the factor each RoPE pair's
    /// frequency is divided by), if the source has them; `n_pairs` values.
    pub fn rope_freqs(&self, n_pairs: usize) -> Result<Option<Vec<f32>>> {
        let WeightSource::Gguf(g) = self else {
            return Ok(None);
        };
        if g.tensor_info("rope_freqs.weight").is_none() {
            return Ok(None);
        }
        let t = to_dense("rope_freqs.weight", &g.read("rope_freqs.weight")?)?;
        let factors = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if factors.len() != n_pairs || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(Error::TensorShape {
                name: "rope_freqs.weight".into(),
                expected: vec![n_pairs],
                actual: vec![factors.len()],
            });
        }
        Ok(Some(factors))
    }

    /// Tensor `name` with `shape` (HF order), as stored.
    pub fn stored(&self, name: &str, shape: &[usize]) -> Result<Stored> {
        match self {
            WeightSource::Safetensors(c) => safetensors_stored(c, name, shape),
            WeightSource::Gguf(g) => g.read(&gguf_tensor_shaped(g, name, shape)?),
        }
    }

    /// Rows `start .. start + n` of 2-D tensor `name` ([rows, cols], HF order), as stored.
    pub fn stored_rows(&self, name: &str, shape: &[usize], start: usize, n: usize) -> Result<Stored> {
        match self {
            WeightSource::Safetensors(c) => Ok(Stored::Dense(c.stored_rows(name, shape, start, n)?)),
            WeightSource::Gguf(g) => g.read_rows(&gguf_tensor_shaped(g, name, shape)?, start, n),
        }
    }

    /// Expert `e` of the MoE layer under `prefix` (`…feed_forward.experts.`): its gate, up
    /// and down matrices, `[F, D]`, `[F, D]`, `[D, F]`, read one expert at a time so a layer's
    /// experts are never all in memory in a format they will not keep.
    pub fn expert(
        &self,
        prefix: &str,
        e: usize,
        n_experts: usize,
        d: usize,
        f: usize,
    ) -> Result<[Stored; 3]> {
        match self {
            WeightSource::Safetensors(c) => fused_expert(c, prefix, e, n_experts, d, f),
            WeightSource::Gguf(g) => stacked_expert(g, prefix, e, n_experts, d, f),
        }
    }
}

/// transformers' fused layout: `gate_up_proj` [E, D, 2F] and `down_proj` [E, F, D], used as
/// `x @ W`. One expert's slabs ([D, 2F] and [F, D]) are read and transposed once, at load,
/// into nn.Linear's `[out, in]` in the stored dtype (never widened), so experts run through
/// the same `Linear` as everything else.
fn fused_expert(
    c: &Checkpoint,
    prefix: &str,
    e: usize,
    n_experts: usize,
    d: usize,
    f: usize,
) -> Result<[Stored; 3]> {
    // Meta's FP8 checkpoint (and its converter's offline-quantization mode) store one
    // nn.Linear per expert instead: `experts.{e}.{gate,up,down}_proj.weight`, `[out, in]`.
    if !c.contains(&format!("{prefix}gate_up_proj")) && c.contains(&format!("{prefix}0.gate_proj.weight")) {
        let one = |proj: &str, shape: [usize; 2]| -> Result<Stored> {
            safetensors_stored(c, &format!("{prefix}{e}.{proj}.weight"), &shape)
        };
        return Ok([
            one("gate_proj", [f, d])?,
            one("up_proj", [f, d])?,
            one("down_proj", [d, f])?,
        ]);
    }
    if c.dtype_of(&format!("{prefix}gate_up_proj")) == Some("F8_E4M3") {
        return Err(Error::TensorDtype {
            name: format!("{prefix}gate_up_proj"),
            dtype: "F8_E4M3 (fused fbgemm layout)".into(),
            supported: "FP8 experts stored per expert (experts.{e}.*_proj.weight + weight_scale), as Meta's FP8 checkpoint stores them",
        });
    }
    let gu = c.stored_rows(&format!("{prefix}gate_up_proj"), &[n_experts, d, 2 * f], e * d, d)?; // [D, 2F]
    let down = c.stored_rows(&format!("{prefix}down_proj"), &[n_experts, f, d], e * f, f)?; // [F, D]
    let gu_t = transpose_tensor(&gu)?; // [2F, D]: gate rows, then up rows
    Ok([
        Stored::Dense(gu_t.narrow(0, 0, f)?),
        Stored::Dense(gu_t.narrow(0, f, f)?),
        Stored::Dense(transpose_tensor(&down)?),
    ])
}

/// llama.cpp's split layout: `ffn_gate_exps` / `ffn_up_exps` [E, F, D] and `ffn_down_exps`
/// [E, D, F] (row-major), each expert a contiguous run of rows.
fn stacked_expert(
    g: &GgufFile,
    prefix: &str,
    e: usize,
    n_experts: usize,
    d: usize,
    f: usize,
) -> Result<[Stored; 3]> {
    let read = |proj: &str, shape: [usize; 3]| -> Result<Stored> {
        let gname = gguf_tensor_shaped(g, &format!("{prefix}{proj}"), &shape)?;
        g.read_rows(&gname, e * shape[1], shape[1])
    };
    Ok([
        read("gate_proj", [n_experts, f, d])?,
        read("up_proj", [n_experts, f, d])?,
        read("down_proj", [n_experts, d, f])?,
    ])
}

/// A folder's `quantization_config`, if any, must describe weights herd reads as stored: FP8
/// with a per-channel scale (compressed-tensors `float-quantized` 8-bit float weights, or
/// fbgemm's `fbgemm_fp8`). GPTQ, AWQ, bitsandbytes and the like are refused by name rather
/// than loaded as garbage.
fn check_quantization_config(dir: &std::path::Path) -> Result<()> {
    let value = crate::json_file::read_json(&dir.join("config.json"))?;
    let Some(q) = value.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(());
    };
    let method = q
        .get("quant_method")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("(missing)");
    let ok = match method {
        "fbgemm_fp8" => true,
        "compressed-tensors" => {
            let format_ok = q.get("format").and_then(serde_json::Value::as_str) == Some("float-quantized");
            let weights_ok = q
                .get("config_groups")
                .and_then(serde_json::Value::as_object)
                .is_some_and(|groups| {
                    groups.values().all(|g| {
                        let w = &g["weights"];
                        w["num_bits"].as_u64() == Some(8)
                            && w["type"].as_str() == Some("float")
                            && matches!(w["strategy"].as_str(), Some("channel") | Some("tensor"))
                    })
                });
            format_ok && weights_ok
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "quantization_config",
            format!(
                "quant_method `{method}` with this configuration is not supported; herd reads FP8 (float8_e4m3) weights \
                 with per-channel scales (compressed-tensors float-quantized, fbgemm_fp8), or use a GGUF"
            ),
        ))
    }
}

/// Tensor `name` of a safetensors folder as stored: FP8 with its scale, or dense.
fn safetensors_stored(c: &Checkpoint, name: &str, shape: &[usize]) -> Result<Stored> {
    if c.dtype_of(name) == Some("F8_E4M3") {
        fp8_matrix(c, name, shape)
    } else {
        Ok(Stored::Dense(c.stored(name, shape)?))
    }
}

/// An FP8 weight `name` ([out, in] float8_e4m3fn) with its per-row `{name}_scale` ([out, 1] or
/// [out], bf16 or f32).
fn fp8_matrix(c: &Checkpoint, name: &str, shape: &[usize]) -> Result<Stored> {
    let [rows, cols] = shape else {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: vec![0, 0],
            actual: shape.to_vec(),
        });
    };
    let bytes = c.stored_bytes_of(name, shape)?;
    let scale_name = format!("{name}_scale");
    if c.dtype_of(&scale_name).is_none() {
        return Err(Error::MissingTensor {
            name: format!("{scale_name} (the per-channel scale of FP8 weight {name})"),
            dir: c.dir().to_path_buf(),
        });
    }
    let t = c
        .stored(&scale_name, &[*rows, 1])
        .or_else(|_| c.stored(&scale_name, &[*rows]))?;
    let scale = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Stored::Fp8(Fp8Matrix::new(*rows, *cols, bytes, scale, name)?))
}

/// [`gguf_tensor`], after checking the tensor has `shape` (HF order).
fn gguf_tensor_shaped(g: &GgufFile, name: &str, shape: &[usize]) -> Result<String> {
    let gname = gguf_tensor(g, name)?;
    let actual = g.tensor_info(&gname).map(|t| t.shape()).unwrap_or_default();
    if actual != shape {
        return Err(Error::TensorShape {
            name: gname,
            expected: shape.to_vec(),
            actual,
        });
    }
    Ok(gname)
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

/// How a tensor is stored, read from headers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFormat {
    /// f32 / bf16 / f16 with this element size.
    Dense {
        element_bytes: usize,
    },
    Quantized(QuantType),
    /// One byte per value plus an f32 scale per row.
    Fp8,
}

impl WeightSource {
    /// The stored format of tensor `name` (HF name; for experts, the `…experts.` prefix plus
    /// `gate_proj` / `up_proj` / `down_proj`), from headers alone.
    pub fn stored_format(&self, name: &str) -> Result<StoredFormat> {
        let missing = |dir: &std::path::Path| Error::MissingTensor {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        };
        match self {
            WeightSource::Safetensors(c) => {
                let fused = name
                    .strip_suffix("gate_proj")
                    .or_else(|| name.strip_suffix("up_proj"))
                    .filter(|p| p.ends_with("experts."))
                    .map(|p| format!("{p}gate_up_proj"));
                let per_expert = name
                    .rsplit_once("experts.")
                    .filter(|(p, _)| !c.contains(&format!("{p}experts.gate_up_proj")))
                    .map(|(p, proj)| format!("{p}experts.0.{proj}.weight"));
                let lookup = per_expert.or(fused).unwrap_or_else(|| name.to_string());
                let dtype = c.dtype_of(&lookup).ok_or_else(|| missing(c.dir()))?;
                if dtype == "F8_E4M3" {
                    return Ok(StoredFormat::Fp8);
                }
                match crate::weights::safetensors::dense_dtype(dtype) {
                    Some(d) => Ok(StoredFormat::Dense {
                        element_bytes: d.size_in_bytes(),
                    }),
                    None => Err(Error::TensorDtype {
                        name: lookup,
                        dtype: dtype.to_string(),
                        supported: crate::weights::safetensors::DENSE_DTYPES,
                    }),
                }
            }
            WeightSource::Gguf(g) => {
                let gname = gguf_tensor(g, name)?;
                let info = g.tensor_info(&gname).ok_or_else(|| missing(g.path()))?;
                match info.ggml_type {
                    0 => Ok(StoredFormat::Dense { element_bytes: 4 }),
                    1 | 30 => Ok(StoredFormat::Dense { element_bytes: 2 }),
                    id => QuantType::from_ggml_type_id(id)
                        .map(StoredFormat::Quantized)
                        .ok_or_else(|| Error::TensorDtype {
                            name: gname,
                            dtype: crate::weights::gguf::ggml_type_name(id),
                            supported: crate::weights::gguf::SUPPORTED_TYPES,
                        }),
                }
            }
        }
    }

    /// Opens a model path: a GGUF file (or the first part of a split one), or a Hugging Face
    /// folder (config.json + safetensors). Returns the source and its resolved config.
    pub fn open(path: &std::path::Path) -> Result<(Self, crate::ModelConfig)> {
        if path.is_dir() {
            let config = crate::ModelConfig::load(path)?;
            check_quantization_config(path)?;
            let source = WeightSource::Safetensors(Checkpoint::open(path)?);
            source.check_matches(&config)?;
            return Ok((source, config));
        }
        if !path.exists() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message:
                    "no such file or folder (expected a checkpoint folder with config.json, or a .gguf file)"
                        .into(),
            });
        }
        let gguf = GgufFile::open(path)?;
        let config = crate::ModelConfig::from_json(&gguf_llama4::config_json(&gguf)?)?;
        let source = WeightSource::Gguf(gguf);
        source.check_matches(&config)?;
        Ok((source, config))
    }

    /// Refuses a config that would silently ignore weights: layers past `num_hidden_layers`,
    /// or an `lm_head` beside `tie_word_embeddings: true` (transformers would drop it and use
    /// the embedding; a file with both is ambiguous, so herd asks).
    fn check_matches(&self, config: &crate::ModelConfig) -> Result<()> {
        let n_layers = config.n_layers();
        let (names, layer_prefix): (Vec<&str>, String) = match self {
            WeightSource::Safetensors(c) => (
                c.names().into_iter().collect(),
                format!("{}layers.", c.text_prefix()),
            ),
            WeightSource::Gguf(g) => (
                g.tensors().keys().map(String::as_str).collect(),
                "blk.".to_string(),
            ),
        };
        let extra: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| {
                name.strip_prefix(layer_prefix.as_str())
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i >= n_layers)
            })
            .collect();
        if let Some(first) = extra.first() {
            return Err(Error::config(
                "num_hidden_layers",
                format!(
                    "is {n_layers} but the weights hold {} tensors of further layers (`{first}`, ...): \
                     the config does not describe these weights",
                    extra.len()
                ),
            ));
        }
        if config.tie_word_embeddings && self.contains(self.lm_head_name()) {
            return Err(Error::config(
                "tie_word_embeddings",
                format!(
                    "is true but the weights hold `{}` too: set it to false to use that output \
                     projection, or remove the tensor to use the embedding",
                    self.lm_head_name()
                ),
            ));
        }
        Ok(())
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
pub fn to_dense(name: &str, stored: &Stored) -> Result<Tensor> {
    match stored {
        Stored::Dense(t) => Ok(t.clone()),
        Stored::Fp8(m) => Ok(Tensor::from_vec(
            m.dequantize(),
            (m.rows(), m.cols()),
            &candle_core::Device::Cpu,
        )?),
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

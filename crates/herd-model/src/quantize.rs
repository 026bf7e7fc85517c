//! `herd quantize`: write a model as a GGUF file llama.cpp can read — tensor names, metadata and
//! vocabulary as llama.cpp's `convert_hf_to_gguf.py` writes them for `llama4`, weights in the
//! chosen file type with the same per-tensor choices as herd's in-situ quantization
//! ([`QuantPlan`]), so a GGUF written here and read back holds bit for bit the quantized tensors
//! `--quant` would build at load.
//!
//! GGUF cannot express every Llama 4 config (see `weights::gguf_llama4`): a checkpoint whose
//! chunk size, NoPE interval, temperature tuning or QK-norm differ from llama.cpp's `llama4`
//! conventions is refused rather than written as a different model.

use std::path::Path;

use half::{bf16, f16};
use serde_json::Value as Json;

use crate::config::{AttentionKind, FeedForwardKind, ModelConfig, RouterScoring, ScoreAt};
use crate::error::{Error, Result};
use crate::weights::gguf::Value;
use crate::weights::gguf_llama4::{
    self, gguf_name, CHUNK_LEN, NOPE_INTERVAL, TEMPERATURE_FLOOR, TEMPERATURE_SCALE,
};
use crate::weights::gguf_writer::{self, TensorSpec};
use crate::weights::plan::TensorRole;
use crate::weights::source::{to_dense, Stored};
use crate::weights::tensors::text_tensors;
use crate::weights::{gguf_vocab, QuantPlan, QuantTensor, QuantType, WeightSource};

/// What `herd quantize --type` writes, named as llama.cpp names its file types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    Bf16,
    /// Block-quantized with this base type (Q4_K means Q4_K_M: some tensors get Q6_K).
    Quant(QuantType),
}

impl FileType {
    pub const NAMES: &'static str = "F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K";

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_uppercase().as_str() {
            "F32" => FileType::F32,
            "F16" => FileType::F16,
            "BF16" => FileType::Bf16,
            "Q8_0" => FileType::Quant(QuantType::Q8_0),
            "Q4_0" => FileType::Quant(QuantType::Q4_0),
            "Q4_K_M" | "Q4_K" => FileType::Quant(QuantType::Q4K),
            "Q5_K_M" | "Q5_K" => FileType::Quant(QuantType::Q5K),
            "Q6_K" => FileType::Quant(QuantType::Q6K),
            _ => return None,
        })
    }

    /// llama.cpp's `llama_ftype` number (`general.file_type`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Bf16 => 32,
            FileType::Quant(QuantType::Q4_0) => 2,
            FileType::Quant(QuantType::Q8_0) => 7,
            FileType::Quant(QuantType::Q4K) => 15,
            FileType::Quant(QuantType::Q5K) => 17,
            FileType::Quant(QuantType::Q6K) => 18,
            // Formats herd reads but does not write (`FileType::parse` never makes these):
            // llama.cpp's numbers for files whose base type they are.
            FileType::Quant(QuantType::Q4_1) => 3,
            FileType::Quant(QuantType::Q5_0) => 8,
            FileType::Quant(QuantType::Q5_1) => 9,
            FileType::Quant(QuantType::Q2K) => 10,
            FileType::Quant(QuantType::Q3K) => 12,
            FileType::Quant(QuantType::Iq4Nl) => 25,
            FileType::Quant(QuantType::Iq4Xs) => 30,
        }
    }
}

/// Refuses configs a `llama4` GGUF would silently turn into a different model.
pub fn check_gguf_conventions(config: &ModelConfig) -> Result<()> {
    let refuse = |field: &str, message: String| {
        Err(Error::config(field, format!("{message}; a llama4 GGUF cannot express that (llama.cpp assumes its own value), so herd will not write one")))
    };
    let n_layers = config.layers.len();
    let chunked = config
        .layers
        .iter()
        .any(|l| matches!(l.attention, AttentionKind::LocalRope { .. }));
    for (i, l) in config.layers.iter().enumerate() {
        let nope_here = (i + 1) % NOPE_INTERVAL == 0 && chunked;
        match l.attention {
            AttentionKind::LocalRope { chunk_len } if chunk_len != CHUNK_LEN => {
                return refuse(
                    "attention_chunk_size",
                    format!("chunk {chunk_len} (llama.cpp: {CHUNK_LEN})"),
                )
            }
            AttentionKind::GlobalNope if !nope_here => {
                return refuse(
                    "no_rope_layers",
                    format!("layer {i} is NoPE (llama.cpp: every {NOPE_INTERVAL}th)"),
                )
            }
            AttentionKind::LocalRope { .. } | AttentionKind::GlobalRope if nope_here => {
                return refuse(
                    "no_rope_layers",
                    format!("layer {i} uses RoPE (llama.cpp: NoPE every {NOPE_INTERVAL}th)"),
                )
            }
            _ => {}
        }
        if let Some(t) = l.temperature_tuning {
            if t.floor_scale != TEMPERATURE_FLOOR || t.attn_scale != TEMPERATURE_SCALE {
                return refuse(
                    "floor_scale",
                    format!("temperature floor {} / scale {} (llama.cpp: {TEMPERATURE_FLOOR} / {TEMPERATURE_SCALE})", t.floor_scale, t.attn_scale),
                );
            }
        }
        let n_experts = moe_shape(config).map_or(0, |m| m.0);
        if l.attention.uses_rope() && l.uses_qk_norm != (n_experts != 128) {
            return refuse(
                "use_qk_norm",
                format!(
                    "layer {i} qk-norm {} (llama.cpp: on unless 128 experts)",
                    l.uses_qk_norm
                ),
            );
        }
    }
    if config.routing.scoring != RouterScoring::Sigmoid || config.routing.score_at != ScoreAt::ExpertInput {
        return refuse(
            "routing",
            "not Llama 4's sigmoid router scaling the expert input".into(),
        );
    }
    if n_layers == 0 {
        return refuse("num_hidden_layers", "0".into());
    }
    Ok(())
}

/// (experts, top-k, width, interleave step) of the MoE layers, if any.
fn moe_shape(config: &ModelConfig) -> Option<(usize, usize, usize, usize)> {
    let moe: Vec<(usize, (usize, usize, usize))> = config
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l.feed_forward {
            FeedForwardKind::Moe {
                n_experts,
                top_k,
                width,
            } => Some((i, (n_experts, top_k, width))),
            FeedForwardKind::Dense { .. } => None,
        })
        .collect();
    let &(first, (e, k, f)) = moe.first()?;
    let step = moe.get(1).map_or(first + 1, |(second, _)| second - first);
    Some((e, k, f, step))
}

/// One tensor to write: its GGUF name, its HF name and row-major shape, and whether it is a
/// stack of experts (then the shape is [E, out, in]).
struct Planned {
    spec: TensorSpec,
    hf: String,
    shape: Vec<usize>,
    expert: Option<(usize, usize)>, // (layer, projection 0 gate / 1 up / 2 down)
    kind: Kind,
}

enum Kind {
    F32,
    Half(candle_core::DType),
    Quant(QuantType),
}

fn ggml_type(kind: &Kind) -> u32 {
    match kind {
        Kind::F32 => 0,
        Kind::Half(candle_core::DType::F16) => 1,
        Kind::Half(_) => 30,
        Kind::Quant(q) => q.ggml_type_id(),
    }
}

fn kind_bytes(kind: &Kind, rows: usize, cols: usize) -> Option<u64> {
    Some(match kind {
        Kind::F32 => (rows * cols * 4) as u64,
        Kind::Half(_) => (rows * cols * 2) as u64,
        Kind::Quant(q) => q.matrix_bytes(rows, cols)? as u64,
    })
}

/// What a written file holds.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub n_tensors: usize,
    pub file_bytes: u64,
}

/// Writes the model at `src` (a Hugging Face folder) as a GGUF of type `ftype` at `out`.
/// `progress(done, total, name)` is called after each tensor.
pub fn quantize_to_gguf(
    src: &Path,
    out: &Path,
    ftype: FileType,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<QuantizeReport> {
    let (source, config) = WeightSource::open(src)?;
    if !src.is_dir() {
        return Err(Error::Checkpoint {
            path: src.to_path_buf(),
            message: "herd quantize reads a Hugging Face folder (config.json, safetensors, tokenizer.json)"
                .into(),
        });
    }
    // Never a device, a link or one of the checkpoint's own files (writing over a file being
    // read would corrupt both).
    let mut inputs: Vec<&std::path::Path> = vec![src];
    let shards = match &source {
        WeightSource::Safetensors(c) => c.files(),
        WeightSource::Gguf(g) => g.paths().to_vec(),
    };
    inputs.extend(shards.iter().map(|p| p.as_path()));
    herd_limits::check_output(out, &inputs).map_err(|e| Error::Checkpoint {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    check_gguf_conventions(&config)?;
    let raw: Json = crate::json_file::read_json(&src.join("config.json"))?;
    let text_raw = raw.get("text_config").filter(|t| t.is_object()).unwrap_or(&raw);
    let plan = match ftype {
        FileType::Quant(base) => Some(QuantPlan {
            base,
            n_layers: config.layers.len(),
        }),
        _ => None,
    };
    let tensors = plan_tensors(&source, &config, ftype, plan)?;
    let mut metadata = model_metadata(src, &config, text_raw, ftype)?;
    metadata.extend(gguf_vocab::metadata(src, config.vocab_size, config.bos_token_id)?);
    let specs: Vec<TensorSpec> = tensors.iter().map(|t| t.spec.clone()).collect();
    let rope_factors = rope_freqs(&config);
    let total = tensors.len();
    // A layer's three stacked expert tensors are encoded together, one expert at a time, on
    // the first request and handed out in turn.
    let mut cached: Option<(usize, [Vec<u8>; 3])> = None;
    gguf_writer::write(out, &metadata, &specs, |i| {
        let t = &tensors[i];
        let bytes = if t.spec.name == "rope_freqs.weight" {
            rope_factors.iter().flat_map(|f| f.to_le_bytes()).collect()
        } else if let Some((layer, proj)) = t.expert {
            if cached.as_ref().map(|c| c.0) != Some(layer) {
                let (e, _, f, _) = moe_shape(&config).unwrap_or((0, 0, 0, 0));
                let prefix = format!("{}layers.{layer}.feed_forward.experts.", source.text_prefix());
                let kinds: Vec<&Kind> = (0..3)
                    .map(|p| {
                        tensors
                            .iter()
                            .find(|x| x.expert == Some((layer, p)))
                            .map(|x| &x.kind)
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::Kernel(format!("layer {layer}: expert tensors missing from the plan"))
                    })?;
                let mut encoded: [Vec<u8>; 3] = Default::default();
                for expert in 0..e {
                    let triple = source.expert(&prefix, expert, e, config.hidden_size, f)?;
                    for (p, stored) in triple.iter().enumerate() {
                        encoded[p].extend(encode(
                            &format!("{prefix}{}", ["gate_proj", "up_proj", "down_proj"][p]),
                            stored,
                            kinds[p],
                        )?);
                    }
                }
                cached = Some((layer, encoded));
            }
            let encoded = cached
                .as_mut()
                .map(|c| &mut c.1)
                .ok_or_else(|| Error::Kernel("expert cache".into()))?;
            std::mem::take(&mut encoded[proj])
        } else {
            encode_rows(&source, &t.hf, &t.shape, &t.kind)?
        };
        progress(i + 1, total, &t.spec.name);
        Ok(bytes)
    })?;
    let file_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeReport {
        n_tensors: total,
        file_bytes,
    })
}

/// llama.cpp's `rope_freqs`: per RoPE pair, the factor llama3 scaling divides the frequency by
/// (empty without scaling).
fn rope_freqs(config: &ModelConfig) -> Vec<f32> {
    if config.rope.scaling.is_none() {
        return Vec::new();
    }
    let unscaled = crate::config::RopeConfig {
        theta: config.rope.theta,
        scaling: None,
    }
    .inv_freq(config.head_dim);
    let scaled = config.rope.inv_freq(config.head_dim);
    unscaled.iter().zip(&scaled).map(|(u, s)| u / s).collect()
}

fn encode(name: &str, stored: &Stored, kind: &Kind) -> Result<Vec<u8>> {
    if let (Stored::Quantized(q), Kind::Quant(ty)) = (stored, kind) {
        if q.quant_type() == *ty {
            return Ok(q.bytes().to_vec());
        }
    }
    let values = to_dense(name, stored)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(match kind {
        Kind::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Kind::Half(candle_core::DType::F16) => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Kind::Half(_) => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Kind::Quant(ty) => {
            let (rows, cols) = stored.dims2()?;
            QuantTensor::quantize(*ty, rows, cols, &values, name)?
                .bytes()
                .to_vec()
        }
    })
}

/// A whole (non-expert) tensor, read and converted a slab of rows at a time so that not even an
/// embedding table is ever widened to f32 whole.
fn encode_rows(source: &WeightSource, name: &str, shape: &[usize], kind: &Kind) -> Result<Vec<u8>> {
    let cols = *shape.last().unwrap_or(&1);
    let rows: usize = shape.iter().rev().skip(1).product();
    if shape.len() == 1 || rows == 0 {
        return encode(name, &source.stored(name, shape)?, kind);
    }
    let slab_f32 = |first: usize, n: usize| -> Result<Vec<f32>> {
        let slab = to_dense(name, &source.stored_rows(name, shape, first, n)?)?;
        Ok(slab
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    match kind {
        Kind::Quant(ty) => {
            if let Ok(crate::weights::source::StoredFormat::Quantized(stored_ty)) = source.stored_format(name)
            {
                if stored_ty == *ty {
                    return encode(name, &source.stored(name, shape)?, kind);
                }
            }
            let q = QuantTensor::quantize_with(*ty, rows, cols, name, |first, values| {
                values.copy_from_slice(&slab_f32(first, values.len() / cols)?);
                Ok(())
            })?;
            Ok(q.bytes().to_vec())
        }
        _ => {
            let slab_rows = (crate::weights::quant::SLAB_VALUES / cols.max(1)).max(1);
            let mut bytes = Vec::new();
            let mut first = 0;
            while first < rows {
                let n = slab_rows.min(rows - first);
                let values = slab_f32(first, n)?;
                match kind {
                    Kind::Half(candle_core::DType::F16) => {
                        bytes.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()))
                    }
                    Kind::Half(_) => {
                        bytes.extend(values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()))
                    }
                    _ => bytes.extend(values.iter().flat_map(|v| v.to_le_bytes())),
                }
                first += n;
            }
            Ok(bytes)
        }
    }
}

/// The type a 2-D tensor is written in.
fn kind_for(ftype: FileType, plan: Option<QuantPlan>, hf: &str, cols: usize) -> Kind {
    let role = TensorRole::of(hf);
    match ftype {
        FileType::Quant(_) => match plan.and_then(|p| p.type_for(role, cols)) {
            Some(q) => Kind::Quant(q),
            None => Kind::F32,
        },
        _ if role == TensorRole::Router => Kind::F32,
        FileType::F32 => Kind::F32,
        FileType::F16 => Kind::Half(candle_core::DType::F16),
        FileType::Bf16 => Kind::Half(candle_core::DType::BF16),
    }
}

fn plan_tensors(
    source: &WeightSource,
    config: &ModelConfig,
    ftype: FileType,
    plan: Option<QuantPlan>,
) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for t in text_tensors(config, source) {
        // GGUF names the output projection `output.weight` whatever the HF layout calls it.
        let gname = if t.name == source.lm_head_name() {
            "output.weight".to_string()
        } else {
            gguf_name(&t.name).ok_or_else(|| Error::Kernel(format!("no GGUF name for {}", t.name)))?
        };
        let (rows, cols) = t.rows_cols();
        let kind = if t.shape.len() == 1 {
            Kind::F32
        } else {
            kind_for(ftype, plan, &t.name, cols)
        };
        let n_bytes =
            kind_bytes(&kind, rows, cols).ok_or_else(|| Error::Kernel(format!("{}: size", t.name)))?;
        out.push(Planned {
            spec: TensorSpec {
                name: gname,
                dims: t.shape.iter().rev().copied().collect(),
                ggml_type: ggml_type(&kind),
                n_bytes,
            },
            hf: t.name,
            shape: t.shape,
            expert: t.expert,
            kind,
        });
    }
    let dh = config.head_dim;
    if config.rope.scaling.is_some() {
        let n = dh / 2;
        out.insert(
            0,
            Planned {
                spec: TensorSpec {
                    name: "rope_freqs.weight".into(),
                    dims: vec![n],
                    ggml_type: 0,
                    n_bytes: (n * 4) as u64,
                },
                hf: String::new(),
                shape: vec![n],
                expert: None,
                kind: Kind::F32,
            },
        );
    }
    Ok(out)
}

fn model_metadata(
    src: &Path,
    config: &ModelConfig,
    raw: &Json,
    ftype: FileType,
) -> Result<Vec<(String, Value)>> {
    let a = gguf_llama4::ARCH;
    let u = |v: usize| Value::U32(v as u32);
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let dense_width = raw
        .get("intermediate_size_mlp")
        .and_then(Json::as_u64)
        .map(|w| w as usize)
        .or_else(|| {
            config.layers.iter().find_map(|l| match l.feed_forward {
                FeedForwardKind::Dense { width } => Some(width),
                FeedForwardKind::Moe { .. } => None,
            })
        })
        .unwrap_or(0);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name)),
        (format!("{a}.block_count"), u(config.layers.len())),
        (format!("{a}.context_length"), u(config.max_position_embeddings)),
        (format!("{a}.embedding_length"), u(config.hidden_size)),
        (format!("{a}.feed_forward_length"), u(dense_width)),
        (format!("{a}.attention.head_count"), u(config.n_heads)),
        (format!("{a}.attention.head_count_kv"), u(config.n_kv_heads)),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(config.rope.theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
    ];
    let (e, k, f, step) = moe_shape(config).unwrap_or((0, 0, 0, 0));
    if e > 0 {
        m.push((format!("{a}.expert_count"), u(e)));
        m.push((format!("{a}.expert_used_count"), u(k)));
    }
    m.push((format!("{a}.attention.key_length"), u(config.head_dim)));
    m.push((format!("{a}.attention.value_length"), u(config.head_dim)));
    m.push(("general.file_type".into(), Value::U32(ftype.llama_ftype())));
    m.push((format!("{a}.vocab_size"), u(config.vocab_size)));
    m.push((format!("{a}.rope.dimension_count"), u(config.head_dim)));
    if e > 0 {
        m.push((format!("{a}.interleave_moe_layer_step"), u(step)));
        m.push((format!("{a}.expert_feed_forward_length"), u(f)));
    }
    if !config
        .layers
        .iter()
        .any(|l| matches!(l.attention, AttentionKind::LocalRope { .. }))
    {
        m.push((format!("{a}.attention.sliding_window"), Value::U32(0)));
    }
    if matches!(ftype, FileType::Quant(_)) {
        m.push(("general.quantization_version".into(), Value::U32(2)));
    }
    Ok(m)
}

//! What a model costs, from its config alone: parameter counts (total and active per token),
//! and KV-cache bytes (per token for global layers, a fixed bound for chunked ones). Needs no
//! weights, so it answers for a Scout-sized config on a laptop.

use std::fmt::Write;

use crate::config::{AttentionKind, FeedForwardKind, ModelConfig};

/// Text-model parameter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: u64,
    /// Parameters one token touches: the routed top-k experts, not all of them.
    pub active: u64,
}

/// KV-cache footprint of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvFootprint {
    pub global_layers: usize,
    pub chunked_layers: usize,
    /// Bytes each token adds across all global layers (grows with the context).
    pub global_bytes_per_token: u64,
    /// Bytes each cached token costs across all chunked layers...
    pub chunked_bytes_per_token: u64,
    /// ...which keep at most this many tokens, whatever the context length.
    pub chunked_max_tokens: usize,
}

impl KvFootprint {
    /// Total bytes for a context of `n_tokens`.
    pub fn bytes_at(&self, n_tokens: usize) -> u64 {
        self.global_bytes_per_token
            .saturating_mul(n_tokens as u64)
            .saturating_add(
                self.chunked_bytes_per_token
                    .saturating_mul(n_tokens.min(self.chunked_max_tokens) as u64),
            )
    }
}

/// Parameter counts; computed in u128 so that no config can wrap them (a config past u64
/// saturates, and config resolution refuses anything near that).
pub fn param_counts(config: &ModelConfig) -> ParamCounts {
    let d = config.hidden_size as u128;
    let dh = config.head_dim as u128;
    let (h, hkv) = (config.n_heads as u128, config.n_kv_heads as u128);
    let attention = d * h * dh * 2 + d * hkv * dh * 2 + 2 * d; // q, o, k, v, two norms
    let mut total: u128 = 0;
    let mut active: u128 = 0;
    for plan in &config.layers {
        let (ff_total, ff_active) = match plan.feed_forward {
            FeedForwardKind::Dense { width } => {
                let p = 3 * d * width as u128;
                (p, p)
            }
            FeedForwardKind::Moe {
                n_experts,
                top_k,
                width,
            } => {
                let expert = 3 * d * width as u128;
                let router = d * n_experts as u128;
                let shared = expert;
                (
                    router + shared + expert * n_experts as u128,
                    router + shared + expert * top_k as u128,
                )
            }
        };
        total += attention + ff_total;
        active += attention + ff_active;
    }
    let v = config.vocab_size as u128;
    let lm_head = if config.tie_word_embeddings { 0 } else { v * d };
    let edges = v * d + d + lm_head; // embeddings, final norm, head
    let saturate = |n: u128| u64::try_from(n).unwrap_or(u64::MAX);
    ParamCounts {
        total: saturate(total + edges),
        // An embedding lookup reads one row, but counting conventions (and Meta's "17B
        // active") include the whole table.
        active: saturate(active + edges),
    }
}

pub fn kv_footprint(config: &ModelConfig, bytes_per_element: usize) -> KvFootprint {
    let per_layer_token = (2 * config.n_kv_heads * config.head_dim * bytes_per_element) as u64;
    let mut fp = KvFootprint {
        global_layers: 0,
        chunked_layers: 0,
        global_bytes_per_token: 0,
        chunked_bytes_per_token: 0,
        chunked_max_tokens: 0,
    };
    for plan in &config.layers {
        match plan.attention {
            AttentionKind::LocalRope { chunk_len } => {
                fp.chunked_layers += 1;
                fp.chunked_bytes_per_token += per_layer_token;
                // A block never holds more than the context (a config may say 2⁶⁴ − 1).
                let held = chunk_len.min(config.max_position_embeddings);
                fp.chunked_max_tokens = fp.chunked_max_tokens.max(held);
            }
            AttentionKind::GlobalRope | AttentionKind::GlobalNope => {
                fp.global_layers += 1;
                fp.global_bytes_per_token += per_layer_token;
            }
        }
    }
    fp
}

/// The human-readable report `herd inspect` prints.
pub fn report(config: &ModelConfig, bytes_per_element: usize, stored_weight_bytes: Option<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "text model: {} layers, hidden {}, {} query / {} KV heads × {}, vocab {}, context {}",
        config.n_layers(),
        config.hidden_size,
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.vocab_size,
        config.max_position_embeddings
    );
    let scaling = match &config.rope.scaling {
        Some(s) => format!(
            "llama3 (factor {}, low {}, high {}, original context {})",
            s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings
        ),
        None => "none".into(),
    };
    let _ = writeln!(out, "rope: theta {}, scaling {scaling}", config.rope.theta);
    let _ = writeln!(out, "layer plan:");
    for (i, plan) in config.layers.iter().enumerate() {
        let attention = match plan.attention {
            AttentionKind::LocalRope { chunk_len } => format!("rope, chunked {chunk_len}"),
            AttentionKind::GlobalRope => "rope, global".into(),
            AttentionKind::GlobalNope => "nope, global".into(),
        };
        let extras = match (plan.uses_qk_norm, plan.temperature_tuning) {
            (true, _) => ", qk-norm".to_string(),
            (false, Some(t)) => format!(", temperature (floor {}, scale {})", t.floor_scale, t.attn_scale),
            (false, None) => String::new(),
        };
        let ff = match plan.feed_forward {
            FeedForwardKind::Dense { width } => format!("dense swiglu {width}"),
            FeedForwardKind::Moe {
                n_experts,
                top_k,
                width,
            } => format!("moe {n_experts} experts, top-{top_k}, width {width} + shared"),
        };
        let attention = format!("{attention}{extras}");
        let _ = writeln!(out, "  {i:>3}  attention: {attention:<48}  ffn: {ff}");
    }
    let params = param_counts(config);
    let _ = writeln!(
        out,
        "parameters: {} total, {} active per token",
        human_count(params.total),
        human_count(params.active)
    );
    let _ = writeln!(
        out,
        "weight bytes at {bytes_per_element} B/param: {}",
        human_bytes(params.total * bytes_per_element as u64)
    );
    if let Some(stored) = stored_weight_bytes {
        let _ = writeln!(
            out,
            "weight bytes as stored (text model): {}",
            human_bytes(stored)
        );
    }
    let kv = kv_footprint(config, bytes_per_element);
    let _ = writeln!(
        out,
        "kv cache at {bytes_per_element} B/element: {} global layers: {} per token; {} chunked layers: {} per token, at most {} tokens ({})",
        kv.global_layers,
        human_bytes(kv.global_bytes_per_token),
        kv.chunked_layers,
        human_bytes(kv.chunked_bytes_per_token),
        kv.chunked_max_tokens,
        human_bytes(kv.chunked_bytes_per_token.saturating_mul(kv.chunked_max_tokens as u64)),
    );
    for n in [8192usize, 131072, 1 << 20] {
        if n <= config.max_position_embeddings {
            let _ = writeln!(out, "  kv cache for {n} tokens: {}", human_bytes(kv.bytes_at(n)));
        }
    }
    out
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B ({n})", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M ({n})", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K ({n})", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn human_bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    match n as f64 {
        b if b >= GIB => format!("{:.2} GiB", b / GIB),
        b if b >= MIB => format!("{:.2} MiB", b / MIB),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{n} B"),
    }
}

/// Vision tower cost: parameters and the activation memory one tile needs at its peak
/// (attention scores or MLP activations, whichever is larger), which bounds an image's
/// memory at `tiles × per tile` since tiles are one batch.
pub fn vision_report(
    vc: &crate::vision::VisionConfig,
    text_hidden: usize,
    bytes_per_element: usize,
) -> String {
    let c = vc.hidden_size as u64;
    let i = vc.intermediate_size as u64;
    let p = (vc.grid() * vc.grid()) as u64;
    let l = p + 1;
    let layer = 4 * (c * c + c) + (c * i + i) + (i * c + c) + 4 * c;
    let params = (vc.n_channels * vc.patch_size * vc.patch_size) as u64 * c
        + c
        + l * c
        + 4 * c
        + vc.n_layers as u64 * layer
        + i * vc.projector_input_dim as u64
        + (vc.projector_input_dim * vc.projector_output_dim) as u64
        + (vc.vision_output_dim * text_hidden) as u64;
    let b = bytes_per_element as u64;
    let scores = vc.n_heads as u64 * l * l * b;
    let mlp = l * i * b;
    let per_tile = scores.max(mlp) + 4 * l * c * b;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vision: {} layers, width {}, {} heads, {}-px tiles of {}-px patches ({} tokens per tile); {} parameters",
        vc.n_layers,
        vc.hidden_size,
        vc.n_heads,
        vc.image_size,
        vc.patch_size,
        vc.tokens_per_tile(),
        human_count(params)
    );
    let _ = writeln!(
        out,
        "vision activations at {bytes_per_element} B/element: {} per tile at peak; an image of 16 tiles + global: {}",
        human_bytes(per_tile),
        human_bytes(17 * per_tile)
    );
    out
}

/// The bytes the text weights will occupy once loaded with `options` — computed from headers
/// alone, tensor by tensor, with the same rules the loader follows: quantized tensors stay
/// as stored (or widen to f32 with `dequantize`), dense ones keep their stored dtype under f32
/// compute (are converted to the compute dtype otherwise), `--quant` picks each matrix's type
/// as [`crate::weights::QuantPlan`] does, norms are held in the compute dtype, a tied output
/// projection is the embedding table.
pub fn resident_weight_bytes(
    source: &crate::WeightSource,
    config: &ModelConfig,
    options: &crate::LoadOptions,
) -> crate::Result<u64> {
    use crate::weights::plan::TensorRole;
    use crate::weights::source::StoredFormat;
    let compute = options.dtype.size_in_bytes() as u64;
    let plan = options.quant.map(|base| crate::weights::QuantPlan {
        base,
        n_layers: config.layers.len(),
    });
    let matrix = |name: &str, rows: usize, cols: usize| -> crate::Result<u64> {
        let n = (rows * cols) as u64;
        Ok(match source.stored_format(name)? {
            StoredFormat::Quantized(_) | StoredFormat::Fp8 if options.dequantize => n * 4,
            StoredFormat::Fp8 => n + rows as u64 * 4,
            StoredFormat::Quantized(q) => q.matrix_bytes(rows, cols).unwrap_or(0) as u64,
            StoredFormat::Dense { element_bytes } => {
                match plan.and_then(|p| p.type_for(TensorRole::of(name), cols)) {
                    Some(_) if options.dequantize => n * 4,
                    Some(q) => q.matrix_bytes(rows, cols).unwrap_or(0) as u64,
                    None if options.dtype == candle_core::DType::F32 => n * element_bytes as u64,
                    None => n * compute,
                }
            }
        })
    };
    let mut total = 0;
    for t in crate::weights::tensors::text_tensors(config, source) {
        let (rows, cols) = t.rows_cols();
        total += if t.shape.len() == 1 {
            cols as u64 * compute // norms, held in the compute dtype
        } else {
            matrix(&t.name, rows, cols)?
        };
    }
    Ok(total)
}

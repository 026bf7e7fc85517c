//! `herd synth`: random-weight checkpoints of real shapes, written as Hugging Face folders
//! (config.json, bf16 `model.safetensors`, a byte-level tokenizer.json), so benchmarks and memory
//! checks need no download and no Python. The configs follow llama.cpp's `llama4` conventions
//! (chunk 8192, NoPE every 4th layer, temperature floor 8192 / scale 0.1, QK-norm), so
//! `herd quantize` can turn them into GGUFs.
//!
//! Weights are uniform in ±√3·σ (σ = 0.02, norms 1), from a fixed-seed generator: the same
//! preset and seed give the same bytes.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result};

/// The shapes of a synthetic model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub experts: usize,
    pub expert_width: usize,
    /// Width of the dense FFN layers (`intermediate_size_mlp`) when `moe_step` > 1.
    pub dense_width: usize,
    /// Every `moe_step`-th layer is MoE (1: all).
    pub moe_step: usize,
    pub vocab: usize,
}

/// The Llama 4 special tokens written into the synthetic tokenizer, from id 200000 (as in the
/// real vocabulary), when the vocabulary is large enough.
const SPECIALS: [&str; 9] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|finetune_right_pad|>",
];

impl SynthSpec {
    /// `bench-moe-2.7b`: Scout's structure scaled down (the benchmark model of issues 7 and 8).
    pub fn bench_moe_2_7b() -> Self {
        SynthSpec {
            hidden: 2048,
            layers: 16,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            experts: 16,
            expert_width: 1024,
            dense_width: 4096,
            moe_step: 1,
            vocab: 202048,
        }
    }

    /// `scout`: Llama 4 Scout's text model at its real shapes (109B parameters over 48
    /// layers; `--layers 4` makes the 10.9B-parameter slice the GPU benchmark uses).
    pub fn scout() -> Self {
        SynthSpec {
            hidden: 5120,
            layers: 48,
            heads: 40,
            kv_heads: 8,
            head_dim: 128,
            experts: 16,
            expert_width: 8192,
            dense_width: 16384,
            moe_step: 1,
            vocab: 202048,
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "bench-moe-2.7b" => Some(Self::bench_moe_2_7b()),
            "scout" => Some(Self::scout()),
            _ => None,
        }
    }

    fn special_base(&self) -> usize {
        if self.vocab >= 200000 + SPECIALS.len() {
            200000
        } else {
            self.vocab - SPECIALS.len()
        }
    }

    pub fn config_json(&self) -> serde_json::Value {
        let moe_layers: Vec<usize> = (0..self.layers)
            .filter(|i| (i + 1) % self.moe_step == 0)
            .collect();
        let base = self.special_base();
        json!({
            "architectures": ["Llama4ForCausalLM"],
            "model_type": "llama4_text",
            "dtype": "bfloat16",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.expert_width,
            "intermediate_size_mlp": self.dense_width,
            "num_local_experts": self.experts,
            "num_experts_per_tok": 1,
            "interleave_moe_layer_step": self.moe_step,
            "moe_layers": moe_layers,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0,
                "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                "original_max_position_embeddings": 8192
            },
            "attention_chunk_size": 8192,
            "no_rope_layer_interval": 4,
            "attn_temperature_tuning": true,
            "floor_scale": 8192,
            "attn_scale": 0.1,
            "use_qk_norm": true,
            "tie_word_embeddings": false,
            "bos_token_id": base,
            "eos_token_id": [base + 1, base + 4, base + 5],
            "pad_token_id": base + 8
        })
    }

    /// Every tensor: (name, shape, σ) — σ 0 means ones (norms).
    fn tensors(&self) -> Vec<(String, Vec<usize>, f32)> {
        let (d, v, f) = (self.hidden, self.vocab, self.expert_width);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let sigma = 0.02;
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, d], sigma)];
        for i in 0..self.layers {
            let l = format!("model.layers.{i}.");
            t.push((format!("{l}input_layernorm.weight"), vec![d], 0.0));
            t.push((format!("{l}post_attention_layernorm.weight"), vec![d], 0.0));
            t.push((format!("{l}self_attn.q_proj.weight"), vec![q, d], sigma));
            t.push((format!("{l}self_attn.k_proj.weight"), vec![kv, d], sigma));
            t.push((format!("{l}self_attn.v_proj.weight"), vec![kv, d], sigma));
            t.push((format!("{l}self_attn.o_proj.weight"), vec![d, q], sigma));
            let ff = format!("{l}feed_forward.");
            if (i + 1) % self.moe_step == 0 {
                let e = self.experts;
                t.push((format!("{ff}router.weight"), vec![e, d], sigma));
                t.push((format!("{ff}experts.gate_up_proj"), vec![e, d, 2 * f], sigma));
                t.push((format!("{ff}experts.down_proj"), vec![e, f, d], sigma));
                t.push((format!("{ff}shared_expert.gate_proj.weight"), vec![f, d], sigma));
                t.push((format!("{ff}shared_expert.up_proj.weight"), vec![f, d], sigma));
                t.push((format!("{ff}shared_expert.down_proj.weight"), vec![d, f], sigma));
            } else {
                let w = self.dense_width;
                t.push((format!("{ff}gate_proj.weight"), vec![w, d], sigma));
                t.push((format!("{ff}up_proj.weight"), vec![w, d], sigma));
                t.push((format!("{ff}down_proj.weight"), vec![d, w], sigma));
            }
        }
        t.push(("model.norm.weight".to_string(), vec![d], 0.0));
        t.push(("lm_head.weight".to_string(), vec![v, d], sigma));
        t
    }

    /// Bytes of `model.safetensors`' tensor data.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>() as u64 * 2)
            .sum()
    }
}

/// A small, fast, seeded generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Writes the folder `out` (created if needed). `progress(done, total)` counts bytes.
pub fn write(spec: &SynthSpec, out: &Path, seed: u64, mut progress: impl FnMut(u64, u64)) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    };
    if spec.vocab < 256 + SPECIALS.len()
        || spec.layers == 0
        || spec.moe_step == 0
        || !spec.heads.is_multiple_of(spec.kv_heads.max(1))
    {
        return Err(Error::config("synth", format!("unusable shapes {spec:?}")));
    }
    if std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::Checkpoint {
            path: out.to_path_buf(),
            message: "is a symbolic link; herd does not write through links (give the real path)".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    // Never through a link or over a device inside the folder either.
    let create = |path: &Path| {
        herd_limits::create_output_file(path).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let json_out = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = out.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::config("synth", e.to_string()))?;
        create(&path)?.write_all(text.as_bytes()).map_err(io(&path))
    };
    json_out("config.json", &spec.config_json())?;
    json_out("tokenizer.json", &tokenizer_json(spec))?;
    let base = spec.special_base();
    json_out(
        "tokenizer_config.json",
        &json!({"bos_token": SPECIALS[0], "eos_token": SPECIALS[5], "pad_token": SPECIALS[8], "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072, "added_bos_token_ids": [base]}),
    )?;

    // safetensors: header with every offset, then the data streamed tensor by tensor.
    let tensors = spec.tensors();
    let mut header = BTreeMap::new();
    let mut offset = 0u64;
    for (name, shape, _) in &tensors {
        let n = shape.iter().product::<usize>() as u64 * 2;
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut header_bytes = serde_json::to_vec(&header).map_err(|e| Error::config("synth", e.to_string()))?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let path = out.join("model.safetensors");
    let mut w = BufWriter::with_capacity(1 << 22, create(&path)?);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io(&path))?;
    w.write_all(&header_bytes).map_err(io(&path))?;
    let mut rng = Rng(seed);
    let mut done = 0u64;
    let mut buf = Vec::with_capacity(1 << 22);
    for (_, shape, sigma) in &tensors {
        let n: usize = shape.iter().product();
        let bound = sigma * 3f32.sqrt();
        let mut left = n;
        while left > 0 {
            let chunk = left.min(1 << 20);
            buf.clear();
            for _ in 0..chunk.div_ceil(2) {
                let r = rng.next();
                for half in [r as u32, (r >> 32) as u32] {
                    let value = if *sigma == 0.0 {
                        1.0
                    } else {
                        ((half >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * bound
                    };
                    buf.extend_from_slice(&half::bf16::from_f32(value).to_le_bytes());
                }
            }
            buf.truncate(chunk * 2);
            w.write_all(&buf).map_err(io(&path))?;
            left -= chunk;
            done += chunk as u64 * 2;
            progress(done, offset);
        }
    }
    w.flush().map_err(io(&path))?;
    Ok(())
}

/// A byte-level BPE with the 256 byte tokens, no merges, filler tokens up to the vocabulary
/// size and Llama 4's special tokens: enough for text prompts, chat templates and GGUF export.
fn tokenizer_json(spec: &SynthSpec) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (id, ch) in byte_level_chars().into_iter().enumerate() {
        vocab.insert(ch.to_string(), json!(id));
    }
    let base = spec.special_base();
    for id in 256..base {
        vocab.insert(format!("<|filler_{id}|>"), json!(id));
    }
    let added: Vec<serde_json::Value> = (base..spec.vocab)
        .map(|id| {
            let content = SPECIALS
                .get(id - base)
                .map_or_else(|| format!("<|reserved_special_token_{}|>", id - base), |s| s.to_string());
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": []}
    })
}

/// GPT-2's byte → printable-character map, in byte order.
fn byte_level_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

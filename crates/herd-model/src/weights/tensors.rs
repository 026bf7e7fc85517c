//! The text model's tensors as a list — Hugging Face names and row-major shapes, in the order
//! the model loads them — for what must walk all of them without loading them: the resident
//! bytes `inspect` predicts and the tensor table `herd quantize` writes.

use crate::config::{FeedForwardKind, ModelConfig};
use crate::weights::WeightSource;

/// One tensor of the text model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTensor {
    /// Hugging Face name (for routed experts, `…experts.{gate,up,down}_proj`: the stack).
    pub name: String,
    /// Row-major shape; routed-expert stacks are `[E, out, in]`.
    pub shape: Vec<usize>,
    /// For a routed-expert stack: (layer, projection 0 gate / 1 up / 2 down).
    pub expert: Option<(usize, usize)>,
}

impl TextTensor {
    /// (rows, cols) seen as a matrix of rows of `cols` values.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(0);
        (self.shape.iter().rev().skip(1).product(), cols)
    }
}

/// Every tensor the text model holds, embedding first, output projection last (absent when
/// tied to the embedding).
pub fn text_tensors(config: &ModelConfig, source: &WeightSource) -> Vec<TextTensor> {
    let p = source.text_prefix();
    let (v, d) = (config.vocab_size, config.hidden_size);
    let (dh, h, hkv) = (config.head_dim, config.n_heads, config.n_kv_heads);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, expert: Option<(usize, usize)>| {
        out.push(TextTensor { name, shape, expert });
    };
    push(format!("{p}embed_tokens.weight"), vec![v, d], None);
    for (i, layer) in config.layers.iter().enumerate() {
        let l = format!("{p}layers.{i}.");
        push(format!("{l}input_layernorm.weight"), vec![d], None);
        push(format!("{l}self_attn.q_proj.weight"), vec![h * dh, d], None);
        push(format!("{l}self_attn.k_proj.weight"), vec![hkv * dh, d], None);
        push(format!("{l}self_attn.v_proj.weight"), vec![hkv * dh, d], None);
        push(format!("{l}self_attn.o_proj.weight"), vec![d, h * dh], None);
        push(format!("{l}post_attention_layernorm.weight"), vec![d], None);
        let ff = format!("{l}feed_forward.");
        match layer.feed_forward {
            FeedForwardKind::Dense { width } => {
                push(format!("{ff}gate_proj.weight"), vec![width, d], None);
                push(format!("{ff}up_proj.weight"), vec![width, d], None);
                push(format!("{ff}down_proj.weight"), vec![d, width], None);
            }
            FeedForwardKind::Moe { n_experts, width, .. } => {
                let e = n_experts;
                push(format!("{ff}router.weight"), vec![e, d], None);
                push(format!("{ff}experts.gate_proj"), vec![e, width, d], Some((i, 0)));
                push(format!("{ff}experts.up_proj"), vec![e, width, d], Some((i, 1)));
                push(format!("{ff}experts.down_proj"), vec![e, d, width], Some((i, 2)));
                push(
                    format!("{ff}shared_expert.gate_proj.weight"),
                    vec![width, d],
                    None,
                );
                push(format!("{ff}shared_expert.up_proj.weight"), vec![width, d], None);
                push(
                    format!("{ff}shared_expert.down_proj.weight"),
                    vec![d, width],
                    None,
                );
            }
        }
    }
    push(format!("{p}norm.weight"), vec![d], None);
    let lm_head = source.lm_head_name();
    if !config.tie_word_embeddings {
        push(lm_head.to_string(), vec![v, d], None);
    }
    out
}

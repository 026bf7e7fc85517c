//! Which tensors to quantize at load (`--quant`), and to what — llama.cpp's choices for its
//! `*_K_M` mixes (`llama_tensor_get_type` in `src/llama-quant.cpp`), so herd's in-situ
//! quantization and `herd quantize` give what `llama-quantize` gives for the same base type:
//!
//! - norms, the router (`ffn_gate_inp`) and anything not 2-D stay as stored;
//! - the output projection gets Q6_K when the base is a K-quant (Q8_0 stays Q8_0);
//! - with a Q4_K or Q5_K base (`Q4_K_M`, `Q5_K_M`), `attn_v` and `ffn_down` (dense, shared and
//!   routed experts) get Q6_K on
//!   the layers `use_more_bits` picks (the first and last eighth, and every third between);
//! - a row that is not whole blocks of the chosen type falls back to Q8_0 (32-value blocks),
//!   or stays dense if not even that fits. Deviation: llama.cpp falls back to Q5_0/Q5_1 for
//!   K-quants, which herd does not compute with; Q8_0 never has fewer bits.

use super::QuantType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantPlan {
    pub base: QuantType,
    pub n_layers: usize,
}

/// What a tensor is, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Embedding,
    Output,
    AttnV { layer: usize },
    FfnDown { layer: usize },
    Router,
    Other,
}

impl TensorRole {
    /// From a Hugging Face tensor name (`model.layers.3.self_attn.v_proj.weight`, …).
    pub fn of(name: &str) -> Self {
        let layer = name
            .split("layers.")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if name.ends_with("embed_tokens.weight") {
            TensorRole::Embedding
        } else if name.ends_with("lm_head.weight") {
            TensorRole::Output
        } else if name.contains(".router.") {
            TensorRole::Router
        } else if let (Some(layer), true) = (layer, name.contains("v_proj")) {
            TensorRole::AttnV { layer }
        } else if let (Some(layer), true) = (layer, name.contains("down_proj")) {
            TensorRole::FfnDown { layer }
        } else {
            TensorRole::Other
        }
    }
}

impl QuantPlan {
    /// The type for a `[rows, cols]` matrix with role `role`; `None` keeps it as stored.
    pub fn type_for(&self, role: TensorRole, cols: usize) -> Option<QuantType> {
        let k_quant = matches!(self.base, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K);
        let wanted = match role {
            TensorRole::Router => return None,
            TensorRole::Output if k_quant => QuantType::Q6K,
            TensorRole::AttnV { layer } | TensorRole::FfnDown { layer }
                if matches!(self.base, QuantType::Q4K | QuantType::Q5K)
                    && use_more_bits(layer, self.n_layers) =>
            {
                QuantType::Q6K
            }
            _ => self.base,
        };
        [wanted, QuantType::Q8_0]
            .into_iter()
            .find(|t| cols > 0 && cols.is_multiple_of(t.block_len()))
    }
}

/// llama.cpp's `use_more_bits(i_layer, n_layers)`.
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    match layer.checked_sub(eighth) {
        None => true,
        Some(_) if layer >= 7 * n_layers / 8 => true,
        Some(from_eighth) => from_eighth % 3 == 2,
    }
}

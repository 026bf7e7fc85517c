//! SwiGLU feed-forward, `down(silu(gate(x)) ⊙ up(x))`: Llama 4's dense layers and its shared
//! expert (transformers `Llama4TextMLP`).

use candle_core::Tensor;

use super::Linear;
use crate::error::Result;
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    pub fn load(vb: &Weights, hidden: usize, width: usize) -> Result<Self> {
        Ok(Mlp {
            gate_proj: Linear::load(vb, "gate_proj", hidden, width)?,
            up_proj: Linear::load(vb, "up_proj", hidden, width)?,
            down_proj: Linear::load(vb, "down_proj", width, hidden)?,
        })
    }

    /// x: [T, D] → [T, D]
    pub fn forward(&self, x_td: &Tensor) -> Result<Tensor> {
        let gate_tf = candle_nn::ops::silu(&self.gate_proj.forward(x_td)?)?;
        let up_tf = self.up_proj.forward(x_td)?;
        self.down_proj.forward(&(gate_tf * up_tf)?)
    }

    /// Calls `f(path, linear)` on each projection, path `{prefix}gate_proj` etc.
    pub fn visit_linears(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        f(&format!("{prefix}gate_proj"), &mut self.gate_proj)?;
        f(&format!("{prefix}up_proj"), &mut self.up_proj)?;
        f(&format!("{prefix}down_proj"), &mut self.down_proj)
    }

    pub fn stored_bytes(&self) -> usize {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .map(|l| l.stored_bytes())
            .sum()
    }
}

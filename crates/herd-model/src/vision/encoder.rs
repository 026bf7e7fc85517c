//! One pre-LN vision encoder layer: `h += o(Attn(LN1 h)); h += fc2(GELU(fc1(LN2 h)))`, with
//! bidirectional multi-head attention (biases on q/k/v/o, 2-D RoPE on q and k, scale
//! 1/√Dh). Shapes: N tiles, L = P + 1 tokens, C width, H heads, Dh head dim.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::kernels::full_attention::rotary_full_attention;
use crate::nn::linear::with_cpu_values;
use crate::nn::norm::LayerNorm;
use crate::nn::BiasedLinear as Linear;
use crate::weights::Weights;

/// LayerNorm (eps 1e-5, torch's default: `norm_eps` in the config is unused).
pub fn layer_norm(vb: &Weights, name: &str, dim: usize) -> Result<LayerNorm> {
    LayerNorm::load(vb, name, dim, 1e-5)
}

/// nn.Linear with bias, its weight in the stored format like the text model's.
pub fn linear_b(vb: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Linear::load(vb, name, in_dim, out_dim)
}

/// The attention's input projections: q, k and v stacked into one product where their weights
/// allow ([`Linear::stack`]), three otherwise.
#[derive(Debug, Clone)]
enum Projections {
    /// [3C, C]: q, k and v side by side in each output row.
    Stacked(Linear),
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
}

#[derive(Debug, Clone)]
pub struct EncoderLayer {
    input_layernorm: LayerNorm,
    qkv: Projections,
    o_proj: Linear,
    post_attention_layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    n_heads: usize,
}

impl EncoderLayer {
    pub fn load(vb: &Weights, hidden: usize, intermediate: usize, n_heads: usize) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        let q = linear_b(&attn, "q_proj", hidden, hidden)?;
        let k = linear_b(&attn, "k_proj", hidden, hidden)?;
        let v = linear_b(&attn, "v_proj", hidden, hidden)?;
        let qkv = match Linear::stack(&[&q, &k, &v])? {
            Some(stacked) => Projections::Stacked(stacked),
            None => Projections::Separate { q, k, v },
        };
        Ok(EncoderLayer {
            input_layernorm: layer_norm(vb, "input_layernorm", hidden)?,
            qkv,
            o_proj: linear_b(&attn, "o_proj", hidden, hidden)?,
            post_attention_layernorm: layer_norm(vb, "post_attention_layernorm", hidden)?,
            fc1: linear_b(&mlp, "fc1", hidden, intermediate)?,
            fc2: linear_b(&mlp, "fc2", intermediate, hidden)?,
            n_heads,
        })
    }

    /// h: [N, L, C], cos/sin: [L, Dh/2] → [N, L, C]
    pub fn forward(&self, h: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let h = (h + self.attention(&self.input_layernorm.forward(h)?, cos, sin)?)?;
        let mlp = self.fc2.forward(
            &self
                .fc1
                .forward_gelu(&self.post_attention_layernorm.forward(&h)?)?,
        )?;
        Ok((h + mlp)?)
    }

    fn attention(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, l, c) = x.dims3()?;
        let dh = c / self.n_heads;
        let scale = 1.0 / (dh as f64).sqrt();
        if x.device().is_cpu() {
            // The projections' f32 values where they lie; each attention task gathers and
            // rotates its own head (`attention_slow` is the twin).
            let f32 = DType::F32;
            if !dh.is_multiple_of(2) || dh * self.n_heads != c {
                return Err(crate::error::Error::Kernel(format!(
                    "vision attention: width {c} is not {} heads of an even size",
                    self.n_heads
                )));
            }
            let table = |t: &Tensor| -> Result<Vec<f32>> {
                let values = t.to_dtype(f32)?.flatten_all()?.to_vec1::<f32>()?;
                match values.get(..l * dh / 2) {
                    Some(rows) => Ok(rows.to_vec()),
                    None => Err(crate::error::Error::Kernel(format!(
                        "rotary tables hold {} values, {l} tokens need {}",
                        values.len(),
                        l * dh / 2
                    ))),
                }
            };
            let (cos, sin) = (table(cos)?, table(sin)?);
            let (h, scale) = (self.n_heads, scale as f32);
            let out = match &self.qkv {
                Projections::Stacked(qkv) => {
                    // [N, L, 3C]: each token's q, k and v side by side, 3C apart.
                    let y = qkv.forward(x)?.to_dtype(f32)?;
                    with_cpu_values(&y, |y: &[f32]| {
                        let (q, k, v) = (y, y.get(c..).unwrap_or(&[]), y.get(2 * c..).unwrap_or(&[]));
                        rotary_full_attention(q, k, v, 3 * c, &cos, &sin, n, h, l, dh, scale)
                    })?
                }
                Projections::Separate { q, k, v } => {
                    let q = q.forward(x)?.to_dtype(f32)?;
                    let k = k.forward(x)?.to_dtype(f32)?;
                    let v = v.forward(x)?.to_dtype(f32)?;
                    with_cpu_values(&q, |q: &[f32]| {
                        with_cpu_values(&k, |k: &[f32]| {
                            with_cpu_values(&v, |v: &[f32]| {
                                rotary_full_attention(q, k, v, c, &cos, &sin, n, h, l, dh, scale)
                            })
                        })
                    })???
                }
            };
            let out = Tensor::from_vec(out, (n, l, c), x.device())?.to_dtype(x.dtype())?;
            return self.o_proj.forward(&out);
        }
        self.o_proj.forward(&self.attention_slow(x, cos, sin)?)
    }

    /// The attention before o_proj in candle's tensor ops (other devices): x [N, L, C] →
    /// [N, L, C].
    fn attention_slow(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, l, c) = x.dims3()?;
        let dh = c / self.n_heads;
        // [N, L, C] → [N, H, L, Dh]
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((n, l, self.n_heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = match &self.qkv {
            Projections::Stacked(qkv) => {
                let y = qkv.forward(x)?;
                (y.narrow(2, 0, c)?, y.narrow(2, c, c)?, y.narrow(2, 2 * c, c)?)
            }
            Projections::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
        };
        let q = candle_nn::rotary_emb::rope_i(&heads(q)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(k)?, cos, sin)?;
        let v = heads(v)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?; // [N, H, L, L]
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((n, l, c))?)
    }
}

//! The differentiable twin of herd-model's text model: `embed → layers → norm → lm_head` over
//! a flat axis of packed samples, loaded from the same weight sources (safetensors folders,
//! GGUF files, quantized at load or not) through the same `Weights` view, with every weight
//! either frozen in its stored format or a trainable f32 `Var`.
//!
//! Shapes: T rows, D hidden, V vocabulary, N trained tokens.

pub mod attention;
pub mod batch;
pub mod feed_forward;
pub mod linear;
pub mod norm;

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use herd_model::config::{FeedForwardKind, LayerPlan};
use herd_model::nn::{Embedding, Linear};
use herd_model::weights::{QuantPlan, QuantType, Weights};
use herd_model::{ModelConfig, WeightSource};

pub use batch::{Batch, Geometry};

use self::attention::TrainAttention;
use self::feed_forward::{ExpertWeights, TrainExperts, TrainFeedForward, TrainMlp, TrainMoe};
use self::linear::{Base, TrainLinear};
use self::norm::{NormWeight, TrainNorm};
use crate::error::{Error, Result};
use crate::frozen::FrozenLinear;
use crate::lora::{init_pair, mix, ExpertLora, LoraPair, LoraSettings, PassKey};

/// What is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Low-rank adapters on the targeted modules; the base is frozen.
    Lora(LoraSettings),
    /// Every weight is trainable (f32 master copies).
    Full,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub mode: Mode,
    /// Seeds the adapters' initialisation.
    pub seed: u64,
    /// Quantize the frozen base at load (QLoRA); LoRA only.
    pub quant: Option<QuantType>,
    /// Activations' dtype: f32, or bf16 (frozen products still accumulate in f32).
    pub dtype: DType,
    /// Widen quantized weights to dense f32 at load (the slow twin of a quantized base).
    pub dequantize: bool,
}

/// One trainable tensor, named as it is saved: PEFT's adapter key for LoRA factors, the
/// checkpoint's own name for full fine-tuning.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    /// The decoder layer it belongs to (for per-layer learning rates).
    pub layer: Option<usize>,
}

#[derive(Debug, Clone)]
enum TrainEmbedding {
    Frozen(Embedding),
    Trainable(Var),
}

#[derive(Debug, Clone)]
pub struct TrainLayer {
    input_layernorm: TrainNorm,
    self_attn: TrainAttention,
    post_attention_layernorm: TrainNorm,
    feed_forward: TrainFeedForward,
}

#[derive(Debug, Clone)]
pub struct TrainModel {
    config: ModelConfig,
    embed_tokens: TrainEmbedding,
    layers: Vec<TrainLayer>,
    norm: TrainNorm,
    lm_head: TrainLinear,
    inv_freq: Vec<f32>,
    params: Vec<Param>,
    dtype: DType,
    /// Where PEFT finds the text layers in the transformers module tree (`model.`, or
    /// `model.language_model.` for the multimodal class).
    module_prefix: String,
}

impl TrainModel {
    pub fn load(path: &Path, options: &TrainOptions) -> Result<Self> {
        let (source, config) = WeightSource::open(path)?;
        Self::from_source(&source, config, options)
    }

    pub fn from_source(source: &WeightSource, config: ModelConfig, options: &TrainOptions) -> Result<Self> {
        if !matches!(options.dtype, DType::F32 | DType::BF16) {
            return Err(Error::Config(format!(
                "training computes in f32 or bf16, not {}",
                options.dtype.as_str()
            )));
        }
        if let Mode::Lora(lora) = &options.mode {
            lora.validate()?;
        }
        if options.quant.is_some() && options.mode == Mode::Full {
            return Err(Error::Config(
                "full fine-tuning trains f32 weights; quantizing the base (--quant) is for LoRA".into(),
            ));
        }
        let plan = options.quant.map(|base| QuantPlan {
            base,
            n_layers: config.layers.len(),
        });
        let prefix = source.text_prefix().to_string();
        let vb = Weights::new(source, &prefix, DType::F32, &Device::Cpu)
            .with_quant(plan)
            .with_dequantize(options.dequantize);
        let mut b = Builder {
            options,
            params: Vec::new(),
            module_prefix: module_prefix(&prefix),
            checkpoint_prefix: prefix.clone(),
            next_id: 0,
        };
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embed_name = format!("{prefix}embed_tokens.weight");
        let embedding = vb.embedding_absolute(&embed_name, v, d)?;
        let embed_tokens = match options.mode {
            Mode::Full => {
                let w = embedding.as_linear().weight_f32(&Device::Cpu)?;
                TrainEmbedding::Trainable(b.trainable(&embed_name, w, None)?)
            }
            Mode::Lora(_) => TrainEmbedding::Frozen(embedding.clone()),
        };
        let layers_vb = vb.pp("layers");
        let layers = config
            .layers
            .iter()
            .enumerate()
            .map(|(i, plan)| b.layer(&layers_vb.pp(i), &config, plan, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = b.norm(&vb, "norm", d, config.rms_norm_eps, None)?;
        let lm_head = match (&embed_tokens, config.tie_word_embeddings) {
            (TrainEmbedding::Trainable(w), true) => TrainLinear {
                base: Base::Trainable(w.clone()),
                lora: None,
            },
            (TrainEmbedding::Frozen(e), true) => TrainLinear {
                base: Base::Frozen(FrozenLinear::new(e.as_linear())),
                lora: None,
            },
            (_, false) => {
                let name = source.lm_head_name().to_string();
                let linear = vb.linear_absolute(&name, d, v)?;
                match options.mode {
                    Mode::Full => {
                        let w = linear.weight_f32(&Device::Cpu)?;
                        TrainLinear {
                            base: Base::Trainable(b.trainable(&name, w, None)?),
                            lora: None,
                        }
                    }
                    Mode::Lora(_) => TrainLinear {
                        base: Base::Frozen(FrozenLinear::new(linear)),
                        lora: None,
                    },
                }
            }
        };
        let mut inv_freq = config.rope.inv_freq(config.head_dim);
        if let Some(factors) = source.rope_freqs(inv_freq.len())? {
            inv_freq.iter_mut().zip(&factors).for_each(|(f, s)| *f /= s);
        }
        if b.params.is_empty() {
            return Err(Error::Config(
                "nothing to train: no module of this model matches the LoRA targets".into(),
            ));
        }
        Ok(TrainModel {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            params: b.params,
            dtype: options.dtype,
            module_prefix: b.module_prefix,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn module_prefix(&self) -> &str {
        &self.module_prefix
    }

    /// Number of trainable values.
    pub fn n_trainable(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Sets trainable tensors by name (an adapter or checkpoint being resumed); every name must
    /// be a parameter of this model with the same shape, and every parameter must be given.
    pub fn set_params(&self, values: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for name in values.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                return Err(Error::Adapter(format!(
                    "`{name}` is not a trainable tensor of this model and settings"
                )));
            }
        }
        for p in &self.params {
            let t = values
                .get(&p.name)
                .ok_or_else(|| Error::Adapter(format!("`{}` is missing", p.name)))?;
            if t.dims() != p.var.dims() {
                return Err(Error::Adapter(format!(
                    "`{}` has shape {:?}, this model needs {:?}",
                    p.name,
                    t.dims(),
                    p.var.dims()
                )));
            }
            p.var.set(&t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)?;
        }
        Ok(())
    }

    /// Hidden states after the final norm: [T, D].
    fn hidden(&self, batch: &Batch, pass: &PassKey) -> Result<Tensor> {
        batch.check(self.config.vocab_size)?;
        if batch.is_empty() {
            return Err(Error::Data("an empty batch".into()));
        }
        let geo = Geometry::new(batch, &self.config, &self.inv_freq)?;
        let mut x = match &self.embed_tokens {
            TrainEmbedding::Frozen(e) => e.forward(&batch.ids, self.dtype, &Device::Cpu)?,
            TrainEmbedding::Trainable(w) => {
                let ids = Tensor::from_slice(&batch.ids, batch.ids.len(), &Device::Cpu)?;
                w.as_tensor().index_select(&ids, 0)?.to_dtype(self.dtype)?
            }
        };
        for layer in &self.layers {
            let h = (&x
                + layer
                    .self_attn
                    .forward(&layer.input_layernorm.forward(&x)?, &geo, pass)?)?;
            let ff = layer
                .feed_forward
                .forward(&layer.post_attention_layernorm.forward(&h)?, pass)?;
            x = (h + ff)?;
        }
        self.norm.forward(&x)
    }

    /// f32 logits for every row: [T, V] (parity checks).
    pub fn logits(&self, batch: &Batch, pass: &PassKey) -> Result<Tensor> {
        let x = self.hidden(batch, pass)?;
        Ok(self.lm_head.forward(&x, pass)?.to_dtype(DType::F32)?)
    }

    /// Σ over trained tokens of −log p(token), and how many there are. The LM head runs only
    /// on the rows that predict a trained token.
    pub fn loss_sum(&self, batch: &Batch, pass: &PassKey) -> Result<(Tensor, usize)> {
        let targets = batch.targets();
        if targets.is_empty() {
            return Ok((Tensor::zeros((), DType::F32, &Device::Cpu)?, 0));
        }
        let x = self.hidden(batch, pass)?;
        let n = targets.len();
        let rows: Vec<u32> = targets.iter().map(|t| t.0).collect();
        let ids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        let rows = Tensor::from_vec(rows, n, &Device::Cpu)?;
        let logits = self
            .lm_head
            .forward(&x.index_select(&rows, 0)?, pass)?
            .to_dtype(DType::F32)?; // [N, V]
        let ids = Tensor::from_vec(ids, (n, 1), &Device::Cpu)?;
        Ok((cross_entropy_sum(&logits, &ids)?, n))
    }
}

/// Σ_rows (logsumexp(row) − row[target]). logits [N, V], targets [N, 1] u32.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?; // [N, 1]
    let picked = logits.gather(targets, 1)?; // [N, 1]
    Ok((lse - picked)?.sum_all()?)
}

/// transformers' module path of the text layers for a checkpoint's key prefix: `model.` in
/// Llama4ForCausalLM, `language_model.model.` in Llama4ForConditionalGeneration (PEFT 0.21 on
/// transformers 5.24 names them so: tools/reference/make_lora_tiny.py's multimodal probe).
fn module_prefix(checkpoint_prefix: &str) -> String {
    match checkpoint_prefix {
        p if p.starts_with("language_model.") => "language_model.model.".into(),
        _ => "model.".into(),
    }
}

/// Builds the layers and collects the trainable tensors in load order.
struct Builder<'o> {
    options: &'o TrainOptions,
    params: Vec<Param>,
    module_prefix: String,
    checkpoint_prefix: String,
    next_id: u64,
}

impl Builder<'_> {
    fn trainable(&mut self, name: &str, value: Tensor, layer: Option<usize>) -> Result<Var> {
        let var = Var::from_tensor(&value.to_dtype(DType::F32)?)?;
        self.params.push(Param {
            name: name.to_string(),
            var: var.clone(),
            layer,
        });
        Ok(var)
    }

    /// A fresh pair of LoRA factors (A [rows_a, in] by PEFT's initialisation, B [out, rows_a]
    /// zeros), registered as `{key}.lora_A.weight` / `{key}.lora_B.weight`; with the module's
    /// id (its dropout masks' seed).
    fn lora_factors(
        &mut self,
        key: &str,
        rows_a: usize,
        in_dim: usize,
        out_dim: usize,
        layer: usize,
    ) -> Result<(Var, Var, u64)> {
        let id = self.next_id;
        self.next_id += 1;
        let (a, b) = init_pair(rows_a, in_dim, out_dim, mix(&[self.options.seed, id]))?;
        for (factor, var) in [("lora_A", &a), ("lora_B", &b)] {
            self.params.push(Param {
                name: format!("{key}.{factor}.weight"),
                var: var.clone(),
                layer: Some(layer),
            });
        }
        Ok((a, b, id))
    }

    fn lora(&self) -> Option<&LoraSettings> {
        match &self.options.mode {
            Mode::Lora(l) => Some(l),
            Mode::Full => None,
        }
    }

    /// `path` is the module path under the layers, e.g. `self_attn.q_proj`.
    fn linear(
        &mut self,
        vb: &Weights,
        layer: usize,
        path: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<TrainLinear> {
        let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
        let vb_parent = if parent.is_empty() {
            vb.clone()
        } else {
            vb.pp(parent)
        };
        let linear = Linear::load(&vb_parent, name, in_dim, out_dim)?;
        let module = format!("{}layers.{layer}.{path}", self.module_prefix);
        let Some(lora) = self.lora().cloned() else {
            let w = linear.weight_f32(&Device::Cpu)?;
            let ckpt = format!("{}layers.{layer}.{path}.weight", self.checkpoint_prefix);
            return Ok(TrainLinear {
                base: Base::Trainable(self.trainable(&ckpt, w, Some(layer))?),
                lora: None,
            });
        };
        let pair = if lora.targets_module(&module) {
            let key = format!("base_model.model.{module}");
            let (a, b, id) = self.lora_factors(&key, lora.rank, in_dim, out_dim, layer)?;
            Some(LoraPair {
                a,
                b,
                scaling: lora.scaling(),
                dropout: lora.dropout,
                id,
            })
        } else {
            None
        };
        Ok(TrainLinear {
            base: Base::Frozen(FrozenLinear::new(linear)),
            lora: pair,
        })
    }

    fn norm(
        &mut self,
        vb: &Weights,
        name: &str,
        dim: usize,
        eps: f64,
        layer: Option<usize>,
    ) -> Result<TrainNorm> {
        let key = format!("{name}.weight");
        let w = vb.get(&key, &[dim])?;
        let weight = match self.options.mode {
            Mode::Full => {
                let full_name = match layer {
                    Some(i) => format!("{}layers.{i}.{key}", self.checkpoint_prefix),
                    None => format!("{}{key}", self.checkpoint_prefix),
                };
                NormWeight::Trainable(self.trainable(&full_name, w, layer)?)
            }
            Mode::Lora(_) => NormWeight::Frozen(w),
        };
        Ok(TrainNorm { weight, eps })
    }

    fn mlp(&mut self, vb: &Weights, layer: usize, path: &str, d: usize, width: usize) -> Result<TrainMlp> {
        let p = |n: &str| {
            if path.is_empty() {
                n.to_string()
            } else {
                format!("{path}.{n}")
            }
        };
        Ok(TrainMlp {
            gate_proj: self.linear(vb, layer, &p("gate_proj"), d, width)?,
            up_proj: self.linear(vb, layer, &p("up_proj"), d, width)?,
            down_proj: self.linear(vb, layer, &p("down_proj"), width, d)?,
        })
    }

    fn experts(&mut self, vb: &Weights, layer: usize, n: usize, d: usize, f: usize) -> Result<TrainExperts> {
        let loaded = vb.pp("feed_forward").pp("experts").experts(n, d, f)?;
        let stem = format!("layers.{layer}.feed_forward.experts");
        let weights = match self.lora() {
            Some(_) => ExpertWeights::Frozen(
                loaded
                    .into_iter()
                    .map(|[g, u, dn]| [FrozenLinear::new(g), FrozenLinear::new(u), FrozenLinear::new(dn)])
                    .collect(),
            ),
            None => {
                // Back to transformers' fused layout: gate_up [E, D, 2F], down [E, F, D].
                let mut gate_up = Vec::with_capacity(n);
                let mut down = Vec::with_capacity(n);
                for [g, u, dn] in &loaded {
                    let g = g.weight_f32(&Device::Cpu)?.t()?; // [D, F]
                    let u = u.weight_f32(&Device::Cpu)?.t()?;
                    gate_up.push(Tensor::cat(&[g, u], 1)?);
                    down.push(dn.weight_f32(&Device::Cpu)?.t()?.contiguous()?); // [F, D]
                }
                let gu_name = format!("{}{stem}.gate_up_proj", self.checkpoint_prefix);
                let dn_name = format!("{}{stem}.down_proj", self.checkpoint_prefix);
                ExpertWeights::Trainable {
                    gate_up: self.trainable(&gu_name, Tensor::stack(&gate_up, 0)?, Some(layer))?,
                    down: self.trainable(&dn_name, Tensor::stack(&down, 0)?, Some(layer))?,
                }
            }
        };
        let expert_lora =
            |this: &mut Self, param: &str, in_dim: usize, out_dim: usize| -> Result<Option<ExpertLora>> {
                let Some(lora) = this.lora().cloned() else {
                    return Ok(None);
                };
                let path = format!("{}{stem}.{param}", this.module_prefix);
                if !lora.targets_parameter(&path) {
                    return Ok(None);
                }
                let both = ["gate_up_proj", "down_proj"]
                    .iter()
                    .all(|p| lora.targets_parameter(&format!("{}{stem}.{p}", this.module_prefix)));
                let key = expert_adapter_key(&this.module_prefix, layer, param, both);
                // A [r·E, d2] (PEFT: nn.Linear(d2, r·E), kaiming over d2), B [d1, r·E] zeros.
                let (a, b, _) = this.lora_factors(&key, lora.rank * n, out_dim, in_dim, layer)?;
                Ok(Some(ExpertLora {
                    a,
                    b,
                    rank: lora.rank,
                    n_experts: n,
                    scaling: lora.scaling(),
                }))
            };
        let gate_up_lora = expert_lora(self, "gate_up_proj", d, 2 * f)?;
        let down_lora = expert_lora(self, "down_proj", f, d)?;
        Ok(TrainExperts {
            weights,
            gate_up_lora,
            down_lora,
            width: f,
        })
    }

    fn layer(
        &mut self,
        vb: &Weights,
        config: &ModelConfig,
        plan: &LayerPlan,
        i: usize,
    ) -> Result<TrainLayer> {
        let (d, dh, eps) = (config.hidden_size, config.head_dim, config.rms_norm_eps);
        let input_layernorm = self.norm(vb, "input_layernorm", d, eps, Some(i))?;
        let self_attn = TrainAttention {
            q_proj: self.linear(vb, i, "self_attn.q_proj", d, config.n_heads * dh)?,
            k_proj: self.linear(vb, i, "self_attn.k_proj", d, config.n_kv_heads * dh)?,
            v_proj: self.linear(vb, i, "self_attn.v_proj", d, config.n_kv_heads * dh)?,
            o_proj: self.linear(vb, i, "self_attn.o_proj", config.n_heads * dh, d)?,
            kind: plan.attention,
            uses_qk_norm: plan.uses_qk_norm,
            temperature_tuning: plan.temperature_tuning,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: dh,
            norm_eps: eps,
            rope_pairing: config.rope_pairing,
        };
        let post_attention_layernorm = self.norm(vb, "post_attention_layernorm", d, eps, Some(i))?;
        let feed_forward = match plan.feed_forward {
            FeedForwardKind::Dense { width } => {
                TrainFeedForward::Dense(self.mlp(vb, i, "feed_forward", d, width)?)
            }
            FeedForwardKind::Moe {
                n_experts,
                top_k,
                width,
            } => TrainFeedForward::Moe(Box::new(TrainMoe {
                router: self.linear(vb, i, "feed_forward.router", d, n_experts)?,
                experts: self.experts(vb, i, n_experts, d, width)?,
                shared_expert: self.mlp(vb, i, "feed_forward.shared_expert", d, width)?,
                top_k,
                routing: config.routing,
            })),
        };
        Ok(TrainLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            feed_forward,
        })
    }
}

/// PEFT's key stem for a LoRA on a fused expert tensor (`target_parameters`). PEFT wraps the
/// experts module once per targeted parameter in the module's registration order (gate_up_proj
/// first), so with both targeted gate_up_proj's wrapper is the inner one, under `base_layer`.
pub fn expert_adapter_key(module_prefix: &str, layer: usize, param: &str, both_targeted: bool) -> String {
    let base = format!("base_model.model.{module_prefix}layers.{layer}.feed_forward.experts");
    if param == "gate_up_proj" && both_targeted {
        format!("{base}.base_layer")
    } else {
        base
    }
}

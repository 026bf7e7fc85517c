//! The text model: `embed → layers → norm → lm_head`, over a flat axis of the step's tokens.
//!
//! Shapes: T tokens in the step, D hidden, V vocabulary.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvFormat};
use crate::nn::matmul_precision::{self, MatmulPrecision};
use crate::nn::{Embedding, Linear, RmsNorm};
use crate::step::{DecodeInputs, StepInputs};
use crate::text::attention::Segment;
use crate::text::DecoderLayer;
use crate::weights::{QuantPlan, QuantType, WeightSource, Weights};

/// Which positions of a step need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position: [T, V] (parity checks, `herd logits`).
    All,
    /// Only the last position: [1, V] (generation).
    Last,
}

/// One sequence's part of a batched step ([`TextModel::forward_batch`]).
pub struct BatchItem<'a> {
    /// The tokens this step feeds, after what `cache` holds.
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
    pub logits_for: LogitsFor,
    /// Image features [F, D] for the `<|patch|>` tokens among `ids` (exactly F of them), and
    /// the patch token's id.
    pub images: Option<(&'a Tensor, u32)>,
}

/// How to load a model: the compute dtype and device are separate from the stored format;
/// `quant` quantizes dense weights at load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    pub quant: Option<QuantType>,
    /// Widen quantized weights to dense f32 at load: every product becomes the slow twin's
    /// (dequantize, then an f32 matmul). For checking a quantized file's decoding against a
    /// reference computed on its dequantized weights.
    pub dequantize: bool,
}

impl LoadOptions {
    pub fn new(dtype: DType, device: &Device) -> Self {
        LoadOptions {
            dtype,
            device: device.clone(),
            quant: None,
            dequantize: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TextModel {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// The output projection is the embedding table itself (counted once).
    tied_lm_head: bool,
    inv_freq: Vec<f32>,
    dtype: DType,
    device: Device,
    /// Debugging: check every layer's output for NaN/inf (one pass over the activations).
    check_finite: bool,
    /// What [`TextModel::new_cache`] stores keys and values as (None: the compute dtype).
    kv_format: Option<KvFormat>,
    /// How far activations are rounded before products with narrow-float weights.
    matmul_precision: MatmulPrecision,
}

impl TextModel {
    /// Reads `dir/config.json` and the checkpoint's text weights (or a GGUF file).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::new(dtype, device))
    }

    /// Loads a Hugging Face folder or a GGUF file with `options`.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Self> {
        let (source, config) = WeightSource::open(path)?;
        Self::from_source(&source, config, options)
    }

    /// Builds the model from an open checkpoint with an already resolved (possibly altered)
    /// config.
    pub fn from_checkpoint(
        checkpoint: Checkpoint,
        config: ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::from_source(
            &WeightSource::from(checkpoint),
            config,
            &LoadOptions::new(dtype, device),
        )
    }

    /// Builds the model from any weight source with a resolved config.
    pub fn from_source(source: &WeightSource, config: ModelConfig, options: &LoadOptions) -> Result<Self> {
        Self::from_source_with_progress(source, config, options, |_, _| {})
    }

    /// [`Self::from_source`], calling `progress(done, total)` as the embedding, each layer and
    /// the output projection are loaded (for a progress bar on long loads).
    pub fn from_source_with_progress(
        source: &WeightSource,
        config: ModelConfig,
        options: &LoadOptions,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let total = config.layers.len() + 2;
        let (dtype, device) = (options.dtype, &options.device);
        let plan = options.quant.map(|base| QuantPlan {
            base,
            n_layers: config.layers.len(),
        });
        let vb = Weights::new(source, source.text_prefix(), dtype, device)
            .with_quant(plan)
            .with_dequantize(options.dequantize);
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embed_tokens =
            vb.embedding_absolute(&format!("{}embed_tokens.weight", source.text_prefix()), v, d)?;
        progress(1, total);
        let layers_vb = vb.pp("layers");
        let layers = config
            .layers
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let layer = DecoderLayer::load(&layers_vb.pp(i), &config, plan);
                progress(i + 2, total);
                layer
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&vb, "norm", d, config.rms_norm_eps)?;
        let lm_head_name = source.lm_head_name();
        let tied_lm_head = config.tie_word_embeddings;
        let lm_head = if tied_lm_head {
            embed_tokens.as_linear_on(device)?
        } else {
            vb.linear_absolute(lm_head_name, d, v)?
        };
        progress(total, total);
        let mut inv_freq = config.rope.inv_freq(config.head_dim);
        if let Some(factors) = source.rope_freqs(inv_freq.len())? {
            // llama.cpp divides each pair's frequency by its factor (llama3 scaling in a GGUF).
            inv_freq.iter_mut().zip(&factors).for_each(|(f, s)| *f /= s);
        }
        Ok(TextModel {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied_lm_head,
            check_finite: false,
            kv_format: None,
            matmul_precision: MatmulPrecision::Highest,
            inv_freq,
            dtype,
            device: device.clone(),
        })
    }

    /// Calls `f(path, linear)` on every linear of the decoder layers — module paths as
    /// transformers names them below the text model (`layers.3.self_attn.q_proj`,
    /// `layers.1.feed_forward.router`, `layers.1.feed_forward.experts.2.down_proj`, one per
    /// routed expert) — so an adapter can replace them (see [`Linear::adapted`]).
    pub fn visit_linears(&mut self, f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_linears(&format!("layers.{i}."), f)?;
        }
        Ok(())
    }

    /// Stacks every MoE layer's experts so a decode step routes on the device (what loading
    /// onto a GPU does). On the CPU this runs the GPU's decode path through candle's ops, for
    /// tests. Returns how many layers now route on the device.
    pub fn stack_experts(&mut self) -> Result<usize> {
        let mut stacked = 0;
        for layer in &mut self.layers {
            stacked += usize::from(layer.stack_experts()?);
        }
        Ok(stacked)
    }

    /// How many MoE layers route a decode step on the device now (all of them after loading
    /// onto a GPU, unless an adapter replaced their experts since).
    pub fn stacked_expert_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.experts_stacked()).count()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes the text weights occupy in memory, as loaded.
    pub fn weight_bytes(&self) -> usize {
        self.embed_tokens.stored_bytes()
            + if self.tied_lm_head {
                0
            } else {
                self.lm_head.stored_bytes()
            }
            + self.norm.stored_bytes()
            + self.layers.iter().map(DecoderLayer::stored_bytes).sum::<usize>()
    }

    /// Weight bytes one decode step reads: every layer's active weights (routed experts only),
    /// the final norm and the LM head; of the embedding table, one row. What decode speed is
    /// bound by on a CPU: these bytes stream from memory once per token.
    pub fn decode_bytes_per_token(&self) -> usize {
        let embed_row = self.embed_tokens.stored_bytes() / self.config.vocab_size.max(1);
        let head = if self.tied_lm_head {
            self.embed_tokens.stored_bytes()
        } else {
            self.lm_head.stored_bytes()
        };
        embed_row
            + head
            + self.norm.stored_bytes()
            + self.layers.iter().map(DecoderLayer::active_bytes).sum::<usize>()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::with_format(&self.config, self.kv_format)
    }

    /// Stores the KV caches this model makes from now on as `dtype` (f16 or bf16 halve the
    /// memory and the bytes a decode step reads at depth; f32 keeps the reference's values), or
    /// in the compute dtype when `None`. [`Self::set_kv_format`] also takes Q8_0.
    pub fn set_kv_dtype(&mut self, dtype: Option<DType>) {
        self.kv_format = dtype.map(KvFormat::Dtype);
    }

    /// Stores the KV caches this model makes from now on as `format`, or in the compute dtype
    /// when `None`. Q8_0 takes 34 bytes per 32 values (0.53× f16), so a decode step at depth
    /// reads about half; it needs a head size that is a multiple of 32 and the CPU, and is
    /// refused otherwise.
    pub fn set_kv_format(&mut self, format: Option<KvFormat>) -> Result<()> {
        if let Some(format) = format {
            format.check(self.config.head_dim, self.device())?;
        }
        self.kv_format = format;
        Ok(())
    }

    /// How this model's caches store keys and values (None: the compute dtype).
    pub fn kv_format(&self) -> Option<KvFormat> {
        self.kv_format
    }

    /// The cache's format as stored: [`Self::kv_format`], or the compute dtype.
    pub fn kv_format_stored(&self) -> KvFormat {
        self.kv_format.unwrap_or(KvFormat::Dtype(self.dtype()))
    }

    /// Rounds activations before every product with bf16/f16/fp8 weights to `precision` in
    /// this model's forward passes (`medium`: bf16, as llama.cpp computes bf16 weights, one
    /// block-kernel pass in place of three); `highest` (the default) keeps the f32 product.
    pub fn set_matmul_precision(&mut self, precision: MatmulPrecision) {
        self.matmul_precision = precision;
    }

    pub fn matmul_precision(&self) -> MatmulPrecision {
        self.matmul_precision
    }

    /// Bytes of cached keys and values a decode query at position `position` reads (with the
    /// positions before it in the cache): every earlier position for global layers, the ones
    /// in its own block for chunked layers, in the cache's dtype. With
    /// [`Self::decode_bytes_per_token`], what one decode step streams at that depth.
    pub fn kv_bytes_read(&self, position: usize) -> usize {
        let row = 2 * self.config.n_kv_heads * self.kv_format_stored().row_bytes(self.config.head_dim);
        self.config
            .layers
            .iter()
            .map(|plan| {
                let visible = match plan.attention.chunk_len() {
                    Some(c) if c > 0 => position % c + 1,
                    _ => position + 1,
                };
                visible * row
            })
            .sum()
    }

    /// Feeds `ids` at the positions after what `cache` holds; returns f32 logits [T, V] or
    /// [1, V]. Prefill, chunked prefill and decode are all this one call.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, logits_for: LogitsFor) -> Result<Tensor> {
        self.forward_one(BatchItem {
            ids,
            cache,
            logits_for,
            images: None,
        })
    }

    /// [`Self::forward`] with image features [F, D] in place of the step's `<|patch|>`
    /// embeddings (early fusion; the step must hold exactly F patch tokens).
    pub fn forward_with_images(
        &self,
        ids: &[u32],
        features: &Tensor,
        patch_id: u32,
        cache: &mut KvCache,
        logits_for: LogitsFor,
    ) -> Result<Tensor> {
        self.forward_one(BatchItem {
            ids,
            cache,
            logits_for,
            images: Some((features, patch_id)),
        })
    }

    fn forward_one(&self, item: BatchItem<'_>) -> Result<Tensor> {
        self.forward_batch(&mut [item])?.pop().ok_or(Error::EmptyInput)
    }

    /// One step over several sequences (continuous batching): each item's tokens go after
    /// what its own cache holds, at its own positions, and the items' rows share one flat
    /// token axis, so every weight streams from memory once per step, not once per sequence.
    /// Returns each item's f32 logits ([Tᵢ, V] or [1, V]) in order. Nothing is written to any
    /// cache unless every item's ids and context length check out.
    pub fn forward_batch(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>> {
        matmul_precision::scoped(self.matmul_precision, || self.forward_batch_scoped(items))
    }

    fn forward_batch_scoped(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut xs = Vec::with_capacity(items.len());
        let mut steps = Vec::with_capacity(items.len());
        for item in items.iter() {
            let x_td = self.embed(item.ids, item.cache)?;
            xs.push(match item.images {
                Some((features, patch_id)) => {
                    crate::vision::fusion::fuse(item.ids, &x_td, features, patch_id)?
                }
                None => x_td,
            });
            let start = item.cache.n_positions();
            steps.push(StepInputs::new(
                &self.config,
                &self.inv_freq,
                start..start + item.ids.len(),
                self.dtype,
                &self.device,
            )?);
        }
        let x_td = cat_rows(xs)?; // [T = Σ Tᵢ, D]
        let h_td = self.run_layers(&x_td, &steps, items)?;

        // The rows that need logits, gathered so the LM head runs once for the whole step.
        let mut picked = Vec::with_capacity(items.len());
        let mut counts = Vec::with_capacity(items.len());
        let mut row = 0;
        for (item, step) in items.iter().zip(&steps) {
            let t = step.len();
            let (first, n) = match item.logits_for {
                LogitsFor::All => (row, t),
                LogitsFor::Last => (row + t - 1, 1),
            };
            picked.push(h_td.narrow(0, first, n)?);
            counts.push(n);
            row += t;
        }
        let h = cat_rows(picked)?;
        let logits = self
            .lm_head
            .forward(&self.norm.forward(&h)?)?
            .to_dtype(DType::F32)?;
        let mut out = Vec::with_capacity(counts.len());
        let mut row = 0;
        for n in counts {
            out.push(logits.narrow(0, row, n)?);
            row += n;
        }
        Ok(out)
    }

    /// Runs the decoder layers over the step's embeddings [T, D], each item's rows with its own
    /// step inputs and cache, and advances every cache; returns the last hidden states [T, D]
    /// before the final norm.
    fn run_layers(&self, x_td: &Tensor, steps: &[StepInputs], items: &mut [BatchItem<'_>]) -> Result<Tensor> {
        let start = steps.first().map_or(0, |s| s.positions.start);
        let mut h = x_td.clone();
        if self.check_finite {
            check_finite(&h, "the input embedding", start)?;
        }
        // The batched-decode path is herd's CPU kernels; on a GPU each sequence attends by
        // candle's ops, so the joined tables would be launches for nothing.
        let decode = match x_td.device().is_cpu() {
            true => DecodeInputs::new(steps)?,
            false => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let mut segments = Vec::with_capacity(items.len());
            for (item, step) in items.iter_mut().zip(steps) {
                let cache = item.cache.layers_mut().get_mut(i).ok_or(Error::EmptyInput)?;
                segments.push(Segment { step, cache });
            }
            h = layer.forward_batch(&h, &mut segments, decode.as_ref())?;
            if self.check_finite {
                check_finite(&h, &format!("the output of layer {i}"), start)?;
            }
        }
        for (item, step) in items.iter_mut().zip(steps) {
            item.cache.advance(step.len())?;
        }
        Ok(h)
    }

    /// Debugging aid: when on, every layer's output is checked for NaN/inf and the first
    /// offending layer is named in [`Error::NonFinite`].
    pub fn set_check_finite(&mut self, on: bool) {
        self.check_finite = on;
    }

    /// Every check [`Self::forward_batch`] makes of one item before it writes to any cache:
    /// ids in the vocabulary, the context length, and as many image rows [F, D] as the ids
    /// hold `<|patch|>` tokens. An engine checks each item first, so one bad request is
    /// refused alone and a failure inside a batched step is never a request's fault.
    pub fn check_feed(&self, ids: &[u32], cache: &KvCache, images: Option<(&Tensor, u32)>) -> Result<()> {
        self.check_ids(ids, cache)?;
        if let Some((features, patch_id)) = images {
            let patch_tokens = ids.iter().filter(|&&id| id == patch_id).count();
            let (rows, d) = features.dims2()?;
            if rows != patch_tokens {
                return Err(Error::ImageTokens {
                    patch_tokens,
                    features: rows,
                });
            }
            if d != self.config.hidden_size {
                return Err(Error::TensorShape {
                    name: "image features".into(),
                    expected: vec![rows, self.config.hidden_size],
                    actual: vec![rows, d],
                });
            }
        }
        Ok(())
    }

    /// Token embeddings [T, D], after checking the ids and the context length.
    pub fn embed(&self, ids: &[u32], cache: &KvCache) -> Result<Tensor> {
        self.check_ids(ids, cache)?;
        self.embed_tokens.forward(ids, self.dtype, &self.device)
    }

    fn check_ids(&self, ids: &[u32], cache: &KvCache) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        let vocab_size = self.config.vocab_size;
        if let Some((index, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                index,
                vocab_size,
            });
        }
        let requested = cache.n_positions() + ids.len();
        if requested > self.config.max_position_embeddings {
            return Err(Error::ContextOverflow {
                requested,
                max_positions: self.config.max_position_embeddings,
            });
        }
        Ok(())
    }
}

/// Rows of several [Tᵢ, D] tensors on one axis (no copy for one).
fn cat_rows(mut xs: Vec<Tensor>) -> Result<Tensor> {
    if xs.len() == 1 {
        return xs.pop().ok_or(Error::EmptyInput);
    }
    Ok(Tensor::cat(&xs, 0)?)
}

/// Fails on the first row of `x_td` [T, D] holding NaN or ±inf; `start` is row 0's position.
fn check_finite(x_td: &Tensor, what: &str, start: usize) -> Result<()> {
    let rows = x_td.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    match rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
        None => Ok(()),
        Some(row) => Err(Error::NonFinite {
            what: what.to_string(),
            position: start + row,
            dtype: format!("{:?}", x_td.dtype()),
        }),
    }
}

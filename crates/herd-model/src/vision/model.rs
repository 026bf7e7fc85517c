//! The vision tower, adapter and projector: tiles of pixels → rows of text embeddings.
//! Reference: transformers `Llama4VisionModel`, `Llama4VisionPixelShuffleMLP`,
//! `Llama4MultiModalProjector`.

use crate::nn::norm::LayerNorm;
use candle_core::Tensor;

use super::config::VisionConfig;
use super::encoder::{layer_norm, EncoderLayer};
use super::pixel_shuffle::pixel_shuffle;
use super::rope2d;
use crate::error::{Error, Result};
use crate::nn::matmul_precision::{self, MatmulPrecision};
use crate::nn::Linear;
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct VisionModel {
    config: VisionConfig,
    /// [C, 3·p·p], input = a patch flattened as (channel, row, column).
    patch_embedding: Linear,
    class_embedding: Tensor,
    positional_embedding_vlm: Tensor,
    layernorm_pre: LayerNorm,
    layers: Vec<EncoderLayer>,
    layernorm_post: LayerNorm,
    adapter_fc1: Linear,
    adapter_fc2: Linear,
    multi_modal_projector: Linear,
    rope_cos: Tensor,
    rope_sin: Tensor,
    /// How far activations are rounded before products with narrow-float weights.
    matmul_precision: MatmulPrecision,
}

/// Intermediate results of one batch of tiles, for parity checks.
#[derive(Debug, Clone)]
pub struct VisionTaps {
    /// After patch embedding, class token and positions: [N, P + 1, C].
    pub embeddings: Tensor,
    /// After `layernorm_post`, class token dropped: [N, P, C].
    pub encoder_out: Tensor,
    /// [N, P / 4, 4C]
    pub shuffled: Tensor,
    /// [N, P / 4, Dv]
    pub adapter_out: Tensor,
    /// [N · P / 4, D]
    pub projected: Tensor,
}

impl VisionModel {
    /// Loads `vision_model.*` and `multi_modal_projector.*`; `text_hidden` is the text width.
    pub fn load(vb: &Weights, config: &VisionConfig, text_hidden: usize) -> Result<Self> {
        let c = config.hidden_size;
        let p = config.patch_size;
        let n_patches = config.grid() * config.grid();
        let v = vb.pp("vision_model");
        let layers_vb = v.pp("model").pp("layers");
        let layers = (0..config.n_layers)
            .map(|i| EncoderLayer::load(&layers_vb.pp(i), c, config.intermediate_size, config.n_heads))
            .collect::<Result<Vec<_>>>()?;
        let adapter = v.pp("vision_adapter").pp("mlp");
        let (cos, sin) = rope2d::tables(config.grid(), config.head_dim(), config.rope_theta, vb.device())?;
        Ok(VisionModel {
            config: config.clone(),
            patch_embedding: Linear::load(&v.pp("patch_embedding"), "linear", config.n_channels * p * p, c)?,
            class_embedding: v.get("class_embedding", &[c])?,
            positional_embedding_vlm: v.get("positional_embedding_vlm", &[n_patches + 1, c])?,
            layernorm_pre: layer_norm(&v, "layernorm_pre", c)?,
            layers,
            layernorm_post: layer_norm(&v, "layernorm_post", c)?,
            adapter_fc1: Linear::load(
                &adapter,
                "fc1",
                config.intermediate_size,
                config.projector_input_dim,
            )?,
            adapter_fc2: Linear::load(
                &adapter,
                "fc2",
                config.projector_input_dim,
                config.projector_output_dim,
            )?,
            multi_modal_projector: Linear::load(
                &vb.pp("multi_modal_projector"),
                "linear_1",
                config.vision_output_dim,
                text_hidden,
            )?,
            rope_cos: cos.to_dtype(vb.dtype())?,
            rope_sin: sin.to_dtype(vb.dtype())?,
            matmul_precision: MatmulPrecision::Highest,
        })
    }

    /// The vision tower of checkpoint folder `dir`, or `None` for a text-only checkpoint.
    pub fn load_dir(
        dir: &std::path::Path,
        text_hidden: usize,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<Option<Self>> {
        let top = crate::json_file::read_json(&dir.join("config.json"))?;
        let Some(config) = VisionConfig::from_json(&top)? else {
            return Ok(None);
        };
        let source = crate::weights::WeightSource::from(crate::Checkpoint::open(dir)?);
        let vb = Weights::new(&source, "", dtype, device);
        Self::load(&vb, &config, text_hidden).map(Some)
    }

    /// Rounds activations before every product with bf16/f16/fp8 weights to `precision` in
    /// this tower's forward passes (see [`MatmulPrecision`]).
    pub fn set_matmul_precision(&mut self, precision: MatmulPrecision) {
        self.matmul_precision = precision;
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// pixels: [N, 3, S, S] → text embeddings [N · P/4, D], tiles in order.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward_taps(pixels)?.projected)
    }

    /// The forward pass, keeping its named intermediates.
    pub fn forward_taps(&self, pixels: &Tensor) -> Result<VisionTaps> {
        matmul_precision::scoped(self.matmul_precision, || self.forward_taps_scoped(pixels))
    }

    fn forward_taps_scoped(&self, pixels: &Tensor) -> Result<VisionTaps> {
        let cfg = &self.config;
        let (s, p, g) = (cfg.image_size, cfg.patch_size, cfg.grid());
        let dims = pixels.dims();
        let expected = [dims.first().copied().unwrap_or(0), cfg.n_channels, s, s];
        if dims.len() != 4 || dims[1..] != expected[1..] {
            return Err(Error::TensorShape {
                name: "pixel_values".into(),
                expected: expected.to_vec(),
                actual: dims.to_vec(),
            });
        }
        let n = dims[0];
        let c = cfg.hidden_size;
        // Pixels are made on the host (the image pipeline); the tower may be on a GPU.
        let pixels = pixels
            .to_device(self.class_embedding.device())?
            .to_dtype(self.class_embedding.dtype())?;
        // Unfold: [N, 3, G, p, G, p] → [N, G, G, 3, p, p] → [N, P, 3·p·p]
        let patches = pixels
            .reshape((n, cfg.n_channels, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, cfg.n_channels * p * p))?;
        let x = self.patch_embedding.forward(&patches)?.reshape((n, g * g, c))?;
        let cls = self.class_embedding.reshape((1, 1, c))?.broadcast_as((n, 1, c))?;
        let x = Tensor::cat(&[&x, &cls.contiguous()?], 1)?; // class token LAST
        let embeddings = x.broadcast_add(&self.positional_embedding_vlm)?;
        let mut h = self.layernorm_pre.forward(&embeddings)?;
        for layer in &self.layers {
            h = layer.forward(&h, &self.rope_cos, &self.rope_sin)?;
        }
        let encoder_out = self.layernorm_post.forward(&h)?.narrow(1, 0, g * g)?;
        let shuffled = pixel_shuffle(&encoder_out, g)?;
        let (_, t, dv) = shuffled.dims3()?;
        let a = self
            .adapter_fc1
            .forward(&shuffled.reshape((n * t, dv))?)?
            .gelu_erf()?;
        let adapter_out = self.adapter_fc2.forward(&a)?.gelu_erf()?;
        let projected = self.multi_modal_projector.forward(&adapter_out)?;
        let adapter_out = adapter_out.reshape((n, t, cfg.projector_output_dim))?;
        Ok(VisionTaps {
            embeddings,
            encoder_out,
            shuffled,
            adapter_out,
            projected,
        })
    }
}

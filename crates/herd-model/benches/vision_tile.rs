//! Time to encode 336-px tiles with a Scout-sized vision tower (34 layers, width 1408, 16
//! heads, MLP 5632, adapter and projector into width 5120), random weights:
//! `cargo bench -p herd-model --bench vision_tile` (`COMPUTE=f32|medium|bf16` for one).
//! Prints a table, then one JSON line.
//! The random checkpoint (bf16, ~1.7 GB) is written to a temporary folder and removed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench may panic on a broken setup

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use herd_model::nn::MatmulPrecision;
use herd_model::vision::VisionModel;

const C: usize = 1408;
const LAYERS: usize = 34;
const MLP: usize = 5632;
const PATCHES: usize = 576;
const TEXT: usize = 5120;

fn main() {
    let dir = std::env::temp_dir().join(format!("herd-vision-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama4",
        "image_token_index": 200092,
        "text_config": {"hidden_size": TEXT},
        "vision_config": {
            "hidden_size": C, "num_hidden_layers": LAYERS, "num_attention_heads": 16,
            "intermediate_size": MLP, "image_size": 336, "patch_size": 14,
            "pixel_shuffle_ratio": 0.5, "projector_input_dim": 4096, "projector_output_dim": 4096,
            "vision_output_dim": 4096, "rope_theta": 10000
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let dev = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut add = |name: &str, shape: &[usize]| {
        let t = (Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * 0.02)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        tensors.insert(name.to_string(), t);
    };
    add("language_model.model.embed_tokens.weight", &[8, TEXT]);
    add("vision_model.patch_embedding.linear.weight", &[C, 588]);
    add("vision_model.class_embedding", &[C]);
    add("vision_model.positional_embedding_vlm", &[PATCHES + 1, C]);
    for ln in ["layernorm_pre", "layernorm_post"] {
        add(&format!("vision_model.{ln}.weight"), &[C]);
        add(&format!("vision_model.{ln}.bias"), &[C]);
    }
    for l in 0..LAYERS {
        let p = format!("vision_model.model.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            add(&format!("{p}.self_attn.{proj}.weight"), &[C, C]);
            add(&format!("{p}.self_attn.{proj}.bias"), &[C]);
        }
        add(&format!("{p}.mlp.fc1.weight"), &[MLP, C]);
        add(&format!("{p}.mlp.fc1.bias"), &[MLP]);
        add(&format!("{p}.mlp.fc2.weight"), &[C, MLP]);
        add(&format!("{p}.mlp.fc2.bias"), &[C]);
        for ln in ["input_layernorm", "post_attention_layernorm"] {
            add(&format!("{p}.{ln}.weight"), &[C]);
            add(&format!("{p}.{ln}.bias"), &[C]);
        }
    }
    add("vision_model.vision_adapter.mlp.fc1.weight", &[4096, MLP]);
    add("vision_model.vision_adapter.mlp.fc2.weight", &[4096, 4096]);
    add("multi_modal_projector.linear_1.weight", &[TEXT, 4096]);
    let params: usize = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("vision") || k.starts_with("multi"))
        .map(|(_, t)| t.elem_count())
        .sum();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    drop(tensors);

    println!(
        "Scout-sized vision tower: {:.0}M parameters, {} threads, {} kernels",
        params as f64 / 1e6,
        herd_model::kernels::row_split::threads(),
        herd_model::kernels::isa::Isa::current()
    );
    println!(
        "{:<8} {:<8} {:>10} {:>14}",
        "compute", "tiles", "seconds", "s per tile"
    );
    let mut results = Vec::new();
    // COMPUTE=f32, medium or bf16 times one alone (for a profile). `medium`: f32 compute with
    // activations rounded to bf16 before the products (`--matmul-precision medium`).
    let only = std::env::var("COMPUTE").ok();
    for (name, dtype, precision) in [
        ("f32", DType::F32, MatmulPrecision::Highest),
        ("medium", DType::F32, MatmulPrecision::Medium),
        ("bf16", DType::BF16, MatmulPrecision::Highest),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut model = VisionModel::load_dir(&dir, TEXT, dtype, &dev).unwrap().unwrap();
        model.set_matmul_precision(precision);
        for tiles in [1usize, 2] {
            let pixels = Tensor::randn(0f32, 1.0, (tiles, 3, 336, 336), &dev).unwrap();
            model.forward(&pixels).unwrap(); // warm-up
            let t = Instant::now();
            let out = model.forward(&pixels).unwrap();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(out.dims(), &[tiles * 144, TEXT]);
            println!("{name:<8} {tiles:<8} {s:>10.2} {:>14.2}", s / tiles as f64);
            results.push(serde_json::json!({"compute": name, "tiles": tiles, "seconds": s}));
        }
    }
    println!(
        "{}",
        serde_json::json!({"bench": "vision_tile", "params": params, "runs": results})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

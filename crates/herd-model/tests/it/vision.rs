//! The vision tower, adapter, projector and early fusion against the reference.

use candle_core::{DType, Device, Tensor};
use herd_model::vision::pixel_shuffle::{pixel_shuffle, pixel_shuffle_slow};
use herd_model::vision::VisionModel;
use herd_model::{Error, LogitsFor};
use herd_testkit::{assert_close, fixture_path, Reference};

use crate::load_fixture;

const TOL_F32: f32 = 1e-4;

#[test]
fn pixel_shuffle_matches_slow_twin() {
    for (tiles, grid, c) in [(1, 2, 1), (2, 4, 3), (3, 24, 5)] {
        let x = Tensor::randn(0f32, 1.0, (tiles, grid * grid, c), &Device::Cpu).unwrap();
        let fast = pixel_shuffle(&x, grid).unwrap();
        for t in 0..tiles {
            let rows = x.get(t).unwrap().to_vec2::<f32>().unwrap();
            let slow = pixel_shuffle_slow(&rows, grid);
            let slow = Tensor::new(slow, &Device::Cpu).unwrap();
            assert_close(&fast.get(t).unwrap(), &slow, 0.0, "pixel shuffle");
        }
    }
}

#[test]
fn image_prompt_matches_reference_through_vision_projector_and_fusion() {
    let dir = fixture_path("sharded-bf16");
    let text = load_fixture("sharded-bf16", DType::F32);
    let vision = VisionModel::load_dir(&dir, text.config().hidden_size, DType::F32, &crate::test_device())
        .unwrap()
        .unwrap();
    let reference = Reference::load("sharded-bf16");
    let pixels = reference.tensor("image.pixel_values");
    let projected = vision.forward(&pixels).unwrap();
    let d = assert_close(
        &projected,
        &reference.tensor("image.projected"),
        TOL_F32,
        "projected image features",
    );
    println!("sharded-bf16 image features: max |Δ| = {d:e}");

    let ids = reference.ids("image.ids");
    let patch = vision.config().image_token_id;
    let mut cache = text.new_cache();
    let logits = text
        .forward_with_images(&ids, &projected, patch, &mut cache, LogitsFor::All)
        .unwrap();
    let d = assert_close(
        &logits,
        &reference.tensor("image.logits"),
        TOL_F32,
        "fused prompt logits",
    );
    println!("sharded-bf16 image prompt logits: max |Δ| = {d:e}");

    // A prompt whose <|patch|> count does not match the features is an error.
    let mut cache = text.new_cache();
    let e = text
        .forward_with_images(&ids[..4], &projected, patch, &mut cache, LogitsFor::All)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ImageTokens {
                patch_tokens: 0,
                features: 1
            }
        ),
        "{e}"
    );
    // Pixels of the wrong size are an error naming both shapes.
    let wrong = Tensor::zeros((1, 3, 30, 30), DType::F32, &crate::test_device()).unwrap();
    assert!(matches!(vision.forward(&wrong), Err(Error::TensorShape { .. })));
}

#[test]
fn text_only_checkpoints_have_no_vision_tower() {
    let dir = fixture_path("scout-tiny");
    assert!(VisionModel::load_dir(&dir, 64, DType::F32, &Device::Cpu)
        .unwrap()
        .is_none());
}

#[test]
fn vision_tiny_taps_and_fused_prompt_match_reference() {
    let dir = fixture_path("vision-tiny");
    let text = load_fixture("vision-tiny", DType::F32);
    let vision = VisionModel::load_dir(&dir, text.config().hidden_size, DType::F32, &crate::test_device())
        .unwrap()
        .unwrap();
    let reference = Reference::load("vision-tiny");
    let mut features = Vec::new();
    for k in 0..2 {
        let taps = vision
            .forward_taps(&reference.tensor(&format!("img.{k}.pixel_values")))
            .unwrap();
        for (name, got) in [
            ("patch_embeds", &taps.embeddings),
            ("encoder_out", &taps.encoder_out),
            ("shuffled", &taps.shuffled),
            ("adapter_out", &taps.adapter_out),
            ("projected", &taps.projected),
        ] {
            let key = format!("img.{k}.{name}");
            let d = assert_close(got, &reference.tensor(&key), TOL_F32, &key);
            println!("vision-tiny {key}: max |Δ| = {d:e}");
        }
        features.push(taps.projected);
    }
    let features = Tensor::cat(&features, 0).unwrap();
    let ids = reference.ids("prompt.ids");
    let mut cache = text.new_cache();
    let logits = text
        .forward_with_images(
            &ids,
            &features,
            vision.config().image_token_id,
            &mut cache,
            LogitsFor::All,
        )
        .unwrap();
    let d = assert_close(
        &logits,
        &reference.tensor("prompt.logits"),
        TOL_F32,
        "vision-tiny fused prompt",
    );
    println!("vision-tiny fused prompt ({} tokens): max |Δ| = {d:e}", ids.len());
    // Greedy continuation through the cache.
    let mut next = logits
        .get(ids.len() - 1)
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    let mut greedy = vec![next];
    for _ in 1..reference.ids("prompt.greedy").len() {
        let l = text.forward(&[next], &mut cache, LogitsFor::Last).unwrap();
        next = l.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        greedy.push(next);
    }
    assert_eq!(greedy, reference.ids("prompt.greedy"));
}

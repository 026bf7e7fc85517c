//! Mutation twins: the parity suite must notice each plausible mistake. Each test breaks one
//! knob of the resolved config and shows the logits then leave the reference tolerance.

use candle_core::{DType, Device};
use herd_model::config::{AttentionKind, FeedForwardKind, ModelConfig, RopePairing, RouterScoring, ScoreAt};
use herd_model::{Checkpoint, TextModel};
use herd_testkit::{divergence, fixture_path, Reference, TEXT_FIXTURES};

use crate::full_logits;

const TOL_F32: f32 = 1e-4;

/// Max |Δ| over every prompt of `name` with the config altered by `mutate`.
fn mutated_divergence(name: &str, mutate: impl Fn(&mut ModelConfig)) -> f32 {
    let dir = fixture_path(name);
    let mut config = ModelConfig::load(&dir).expect("config");
    mutate(&mut config);
    let checkpoint = Checkpoint::open(&dir).expect("checkpoint");
    let model = TextModel::from_checkpoint(checkpoint, config, DType::F32, &Device::Cpu).expect("model");
    let reference = Reference::load(name);
    reference
        .prompts()
        .iter()
        .map(|p| divergence(&full_logits(&model, &p.ids), &p.logits, TOL_F32).max_abs)
        .fold(0.0, f32::max)
}

fn has_moe(config: &ModelConfig) -> bool {
    config
        .layers
        .iter()
        .any(|l| matches!(l.feed_forward, FeedForwardKind::Moe { .. }))
}

fn assert_breaks_every(fixtures: &[&str], what: &str, mutate: impl Fn(&mut ModelConfig) + Copy) {
    for name in fixtures {
        let d = mutated_divergence(name, mutate);
        assert!(
            d > TOL_F32,
            "{what} on {name}: max |Δ| {d:e} stays within tolerance: parity would not notice"
        );
        println!("{what} on {name}: max |Δ| = {d:e}");
    }
}

#[test]
fn unmutated_config_is_within_tolerance() {
    // The control: the same harness with no mutation passes.
    for name in TEXT_FIXTURES {
        let d = mutated_divergence(name, |_| {});
        assert!(d <= TOL_F32, "{name}: {d:e}");
    }
}

#[test]
fn rope_on_every_layer_breaks_parity() {
    assert_breaks_every(&TEXT_FIXTURES, "RoPE on every layer", |c| {
        let chunk = c.layers.iter().find_map(|l| l.attention.chunk_len());
        for layer in &mut c.layers {
            layer.attention = chunk.map_or(AttentionKind::GlobalRope, |chunk_len| AttentionKind::LocalRope {
                chunk_len,
            });
            layer.temperature_tuning = None;
        }
    });
}

#[test]
fn chunk_size_off_by_one_breaks_parity() {
    for delta in [1isize, -1] {
        assert_breaks_every(
            &["scout-tiny", "maverick-tiny", "sharded-bf16"],
            &format!("chunk size {delta:+}"),
            |c| {
                for layer in &mut c.layers {
                    if let AttentionKind::LocalRope { chunk_len } = &mut layer.attention {
                        *chunk_len = chunk_len.checked_add_signed(delta).expect("chunk");
                    }
                }
            },
        );
    }
}

#[test]
fn softmax_router_breaks_parity() {
    let moe: Vec<&str> = TEXT_FIXTURES
        .into_iter()
        .filter(|n| has_moe(&ModelConfig::load(&fixture_path(n)).expect("config")))
        .collect();
    assert_eq!(moe.len(), 4, "four fixtures have MoE layers");
    assert_breaks_every(&moe, "softmax router", |c| {
        c.routing.scoring = RouterScoring::Softmax
    });
    assert_breaks_every(&moe, "score on expert output", |c| {
        c.routing.score_at = ScoreAt::ExpertOutput
    });
}

#[test]
fn rotate_half_rope_breaks_parity() {
    assert_breaks_every(&TEXT_FIXTURES, "rotate-half RoPE", |c| {
        c.rope_pairing = RopePairing::Halves
    });
}

#[test]
fn dropping_temperature_tuning_or_qk_norm_breaks_parity() {
    assert_breaks_every(&TEXT_FIXTURES, "no temperature tuning", |c| {
        for layer in &mut c.layers {
            layer.temperature_tuning = None;
        }
    });
    assert_breaks_every(&["scout-tiny", "sharded-bf16"], "no qk-norm", |c| {
        for layer in &mut c.layers {
            layer.uses_qk_norm = false;
        }
    });
}

#[test]
fn dropping_rope_scaling_breaks_parity() {
    assert_breaks_every(&["scout-tiny"], "no llama3 rope scaling", |c| {
        c.rope.scaling = None
    });
}

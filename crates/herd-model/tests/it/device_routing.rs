//! The GPU's decode path for MoE layers — top-k on the device, each (token, choice) row's
//! product reading its expert out of the stacked weights — run on the CPU through candle's ops
//! (its slow twin), against the reference and the host-routed path, on every MoE fixture.

use candle_core::DType;
use herd_model::config::{FeedForwardKind, ModelConfig, RouterScoring, ScoreAt};
use herd_model::{Checkpoint, TextModel};
use herd_testkit::{assert_close, divergence, fixture_path, Reference, TEXT_FIXTURES};

use crate::{load_fixture, piecewise_logits, test_device};

const TOL_F32: f32 = 1e-4;

#[test]
fn device_routed_decode_matches_reference_and_host_routing() {
    let mut routed_fixtures = 0;
    for name in TEXT_FIXTURES {
        let host = load_fixture(name, DType::F32);
        let mut device = load_fixture(name, DType::F32);
        let stacked = device.stack_experts().unwrap();
        let has_moe = host
            .config()
            .layers
            .iter()
            .any(|l| matches!(l.feed_forward, herd_model::config::FeedForwardKind::Moe { .. }));
        assert_eq!(
            stacked > 0,
            has_moe,
            "{name}: every MoE layer stacks, no dense one does"
        );
        if stacked == 0 {
            continue;
        }
        routed_fixtures += 1;
        let reference = Reference::load(name);
        for (i, p) in reference.prompts().iter().enumerate() {
            // One token at a time: every step routes on the device.
            let got = piecewise_logits(&device, &p.ids, &[1]);
            let what = format!("{name} prompt {i} device-routed decode");
            let d = assert_close(&got, &p.decode_logits, TOL_F32, &what);
            let host_got = piecewise_logits(&host, &p.ids, &[1]);
            assert_close(&got, &host_got, TOL_F32, &format!("{what} vs host routing"));
            println!("{what}: max |Δ| = {d:e}");
        }
    }
    assert!(routed_fixtures > 0, "no MoE fixture exercised device routing");
}

/// Mutation twins: with one routing knob broken, the device-routed decode leaves the
/// reference's tolerance on every MoE fixture — the path reads the scoring, where the score
/// applies and k, and does not pass by accident.
#[test]
fn device_routed_decode_notices_routing_mistakes() {
    type Mutation = fn(&mut ModelConfig);
    let mutations: [(&str, Mutation); 3] = [
        ("softmax scores", |c| c.routing.scoring = RouterScoring::Softmax),
        ("score on the expert output", |c| {
            c.routing.score_at = ScoreAt::ExpertOutput
        }),
        ("one expert too many", |c| {
            for layer in &mut c.layers {
                if let FeedForwardKind::Moe { top_k, .. } = &mut layer.feed_forward {
                    *top_k += 1;
                }
            }
        }),
    ];
    for name in ["scout-tiny", "maverick-tiny"] {
        let reference = Reference::load(name);
        for (what, mutate) in mutations {
            let dir = fixture_path(name);
            let mut config = ModelConfig::load(&dir).unwrap();
            mutate(&mut config);
            let load = || {
                let checkpoint = Checkpoint::open(&dir).unwrap();
                TextModel::from_checkpoint(checkpoint, config.clone(), DType::F32, &test_device()).unwrap()
            };
            let (host, mut device) = (load(), load());
            assert!(device.stack_experts().unwrap() > 0);
            let mut d = 0f32;
            for p in reference.prompts() {
                let got = piecewise_logits(&device, &p.ids, &[1]);
                d = d.max(divergence(&got, &p.decode_logits, TOL_F32).max_abs);
                // The same mistake routed on the host computes the same: the device path
                // follows the config for every knob (k > 1 takes its sort, not the argmax).
                let host_got = piecewise_logits(&host, &p.ids, &[1]);
                assert_close(
                    &got,
                    &host_got,
                    TOL_F32,
                    &format!("{what} on {name}: device vs host routing"),
                );
            }
            assert!(
                d > TOL_F32,
                "{what} on {name}: max |Δ| {d:e} stays within tolerance"
            );
            println!("{what} on {name}: max |Δ| = {d:e}");
        }
    }
}

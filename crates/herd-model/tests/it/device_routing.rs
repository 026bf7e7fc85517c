//! The GPU's decode path for MoE layers — top-k on the device, each (token, choice) row's
//! product reading its expert out of the stacked weights — run on the CPU through candle's ops
//! (its slow twin), against the reference and the host-routed path, on every MoE fixture.

use candle_core::{DType, Device, Tensor};
use herd_model::config::{FeedForwardKind, ModelConfig, RouterScoring, ScoreAt};
use herd_model::nn::{Linear, LowRank};
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

/// A rank-2 update of `linear`'s shape with fixed values (the same for every model it goes on).
fn update(linear: &Linear, seed: f64) -> LowRank {
    let (out, inp) = linear.dims().unwrap();
    let factor = |rows: usize, cols: usize, phase: f64| {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (0.05 * ((i as f64) * 0.37 + phase).sin()) as f32)
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    };
    LowRank::new(factor(2, inp, seed), factor(out, 2, seed + 1.0), 2.0).unwrap()
}

/// Applies two stacked updates to every linear whose path `pick` accepts.
fn adapt(model: &mut TextModel, pick: fn(&str) -> bool) -> usize {
    let mut adapted = 0;
    model
        .visit_linears(&mut |path, linear| {
            if pick(path) {
                let once = linear.clone().adapted(update(linear, 1.0))?;
                *linear = once.clone().adapted(update(&once, 3.0))?;
                adapted += 1;
            }
            Ok(())
        })
        .unwrap();
    adapted
}

/// An adapter that leaves the routed experts alone (attention, the router) keeps every MoE
/// layer routing on the device, where its updates — two stacked, on the base weight's device —
/// compute what host routing does; one on an expert sends that expert's layer to the host.
#[test]
fn an_adapter_keeps_device_routing_unless_it_replaces_an_expert() {
    let name = "scout-tiny";
    let reference = Reference::load(name);
    let ids = &reference.prompt(0).ids;
    // Host routing on the CPU: on a GPU a model stacks its experts at load, and would route
    // on the device too.
    let mut host = TextModel::load(&fixture_path(name), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(host.stacked_expert_layers(), 0);
    let mut device = load_fixture(name, DType::F32);
    let layers = device.stack_experts().unwrap();
    assert!(layers > 0);
    let attention_and_router =
        |p: &str| p.ends_with("self_attn.q_proj") || p.ends_with("feed_forward.router");
    let adapted = adapt(&mut device, attention_and_router);
    assert_eq!(adapt(&mut host, attention_and_router), adapted);
    assert!(adapted >= 2 * layers);
    assert_eq!(
        device.stacked_expert_layers(),
        layers,
        "an adapter off the experts unstacked them"
    );
    let got = piecewise_logits(&device, ids, &[1]);
    assert_close(
        &got,
        &piecewise_logits(&host, ids, &[1]),
        TOL_F32,
        "adapted, device vs host routing",
    );
    let moved = divergence(&got, &reference.prompt(0).decode_logits, 0.0).max_abs;
    assert!(
        moved > 1e-2,
        "the updates did not reach the forward pass: {moved}"
    );

    let one_expert = |p: &str| p == "layers.0.feed_forward.experts.1.up_proj";
    assert_eq!(adapt(&mut device, one_expert), 1);
    assert_eq!(adapt(&mut host, one_expert), 1);
    assert_eq!(device.stacked_expert_layers(), layers - 1);
    let got = piecewise_logits(&device, ids, &[1]);
    assert_close(
        &got,
        &piecewise_logits(&host, ids, &[1]),
        TOL_F32,
        "an adapted expert",
    );
}

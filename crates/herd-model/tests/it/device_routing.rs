//! The GPU's decode path for MoE layers — top-k on the device, each (token, choice) row's
//! product reading its expert out of the stacked weights — run on the CPU through candle's ops
//! (its slow twin), against the reference and the host-routed path, on every MoE fixture.

use candle_core::DType;
use herd_testkit::{assert_close, Reference, TEXT_FIXTURES};

use crate::{load_fixture, piecewise_logits};

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

//! Llama 4 at its real long-context settings (chunk 8192, floor_scale 8192, Scout's llama3
//! rope scaling) on a 20,000-token prompt: the only place where temperature tuning (from
//! position 8191), chunk boundaries in prefill and decode (8192, 16384) and f32 RoPE precision
//! at large positions all bite. Reference rows around each boundary and at the tail.

use candle_core::{DType, Tensor};
use herd_model::LogitsFor;
use herd_testkit::{assert_close, Reference};

use crate::load_fixture;

const TOL_F32: f32 = 1e-4;

#[test]
fn twenty_thousand_tokens_match_reference_across_chunk_and_temperature_boundaries() {
    let model = load_fixture("scout-long", DType::F32);
    let reference = Reference::load("scout-long");
    let ids = reference.ids("long.ids");
    let rows: Vec<u32> = reference.ids("long.rows");
    assert_eq!(ids.len(), 20_000);

    // One full pass (attention runs block by block, so this fits in memory).
    let mut cache = model.new_cache();
    let all = model.forward(&ids, &mut cache, LogitsFor::All).unwrap();
    let rows_t = Tensor::from_vec(rows.clone(), rows.len(), all.device()).unwrap();
    let got = all.index_select(&rows_t, 0).unwrap();
    let d = assert_close(
        &got,
        &reference.tensor("long.logits"),
        TOL_F32,
        "scout-long full pass rows",
    );
    println!("scout-long rows {rows:?}: max |Δ| = {d:e}");
    // The chunked layers kept one chunk, the global one everything.
    let lens: Vec<usize> = cache.layers().iter().map(|l| l.len()).collect();
    assert_eq!(
        lens,
        vec![20_000 - 16_384, 20_000 - 16_384, 20_000 - 16_384, 20_000]
    );

    // Prefill 16380 tokens, then decode across the temperature step (16383) and the chunk
    // boundary (16384) one token at a time.
    let mut cache = model.new_cache();
    model
        .forward(&ids[..16_380], &mut cache, LogitsFor::Last)
        .unwrap();
    let decoded: Vec<Tensor> = ids[16_380..16_390]
        .iter()
        .map(|&id| model.forward(&[id], &mut cache, LogitsFor::All).unwrap())
        .collect();
    let decoded = Tensor::cat(&decoded, 0).unwrap();
    let d = assert_close(
        &decoded,
        &reference.tensor("long.decode_logits"),
        TOL_F32,
        "scout-long decode",
    );
    assert_close(
        &decoded,
        &reference.tensor("long.decode_full_logits"),
        TOL_F32,
        "scout-long decode vs full",
    );
    println!("scout-long decode 16380..16390: max |Δ| = {d:e}");
}

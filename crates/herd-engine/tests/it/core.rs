//! The engine core's continuous batching against a fake model (ordering, limits, stops,
//! cancellation, seeds) and against the real tiny checkpoint (batched = alone).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{DType, Device};
use herd_engine::{
    generate, EngineCore, EngineError, Event, Feed, FinishReason, ImageFeatures, LanguageModel, Logits,
    Request, RequestId, SamplingParams, SchedulerConfig,
};
use herd_model::TextModel;
use herd_testkit::fixture_path;

/// Logits from the last token: a peak at `(last + 1) % V` over a seeded spread, so greedy
/// counts up and sampling depends on the seed. Records each batch's sizes.
struct Fake {
    vocab: usize,
    max_positions: usize,
    batches: RefCell<Vec<Vec<usize>>>,
}

impl Fake {
    fn new(max_positions: usize) -> Self {
        Fake {
            vocab: 32,
            max_positions,
            batches: RefCell::new(Vec::new()),
        }
    }

    fn logits_after(&self, last: u32) -> Vec<f32> {
        (0..self.vocab)
            .map(|i| {
                let peak = if i == (last as usize + 1) % self.vocab {
                    3.0
                } else {
                    0.0
                };
                peak + ((i * 7 + last as usize * 13) % 11) as f32 / 10.0
            })
            .collect()
    }
}

impl LanguageModel for Fake {
    type Cache = Vec<u32>;

    fn new_cache(&self) -> Vec<u32> {
        Vec::new()
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn check_feed(
        &self,
        ids: &[u32],
        _cache: &Vec<u32>,
        _images: Option<&ImageFeatures>,
    ) -> Result<(), EngineError> {
        if ids.contains(&999) {
            return Err(EngineError::EmptyPrompt); // a poisoned request, refused by the check
        }
        Ok(())
    }

    fn feed(&self, ids: &[u32], cache: &mut Vec<u32>) -> Result<Vec<f32>, EngineError> {
        if ids.contains(&998) {
            // A failure inside the forward pass itself (the check let it through).
            return Err(EngineError::NonFiniteLogits { position: 0 });
        }
        cache.extend_from_slice(ids);
        Ok(self.logits_after(*cache.last().unwrap()))
    }

    fn feed_batch(&self, items: &mut [Feed<'_, Vec<u32>>]) -> Result<Vec<Logits>, EngineError> {
        self.batches
            .borrow_mut()
            .push(items.iter().map(|i| i.ids.len()).collect());
        let mut out = Vec::new();
        for item in items.iter_mut() {
            if item.all_logits {
                let mut values = Vec::new();
                for (j, _) in item.ids.iter().enumerate() {
                    let mut c = item.cache.clone();
                    values.extend(self.feed(&item.ids[..=j], &mut c)?);
                }
                item.cache.extend_from_slice(item.ids);
                out.push(Logits {
                    values,
                    rows: item.ids.len(),
                });
            } else {
                out.push(Logits {
                    values: self.feed(item.ids, item.cache)?,
                    rows: 1,
                });
            }
        }
        Ok(out)
    }

    fn kv_bytes_for(&self, positions: usize, _max_step: usize) -> usize {
        positions
    }
}

fn config(max_running: usize, max_tokens_per_step: usize, kv_budget_bytes: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_running,
        max_tokens_per_step,
        kv_budget_bytes,
    }
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        ..SamplingParams::greedy()
    }
}

type Outputs = HashMap<RequestId, (Vec<u32>, FinishReason)>;

/// Steps until idle; each request's tokens and finish, and every step's events.
fn run<M: LanguageModel>(core: &mut EngineCore<M>) -> (Outputs, Vec<Vec<Event>>) {
    let mut out = Outputs::new();
    let mut steps = Vec::new();
    let mut guard = 0;
    while core.has_work() {
        let events = core.step();
        for e in &events {
            match e {
                Event::Token { id, token, .. } => out
                    .entry(*id)
                    .or_insert((vec![], FinishReason::Length))
                    .0
                    .push(*token),
                Event::Finished { id, reason, .. } => out.entry(*id).or_insert((vec![], *reason)).1 = *reason,
                Event::Failed { id, message } => panic!("request {id} failed: {message}"),
                Event::PromptLogprobs { .. } => {}
            }
        }
        steps.push(events);
        guard += 1;
        assert!(guard < 10_000, "the engine never went idle");
    }
    (out, steps)
}

#[test]
fn concurrent_requests_batch_together_and_each_gets_its_own_tokens() {
    let mut core = EngineCore::new(Fake::new(1000), config(4, 16, 10_000)).unwrap();
    let a = core.add(Request::new(vec![1, 2, 3], greedy(4))).unwrap();
    let b = core.add(Request::new(vec![10], greedy(2))).unwrap();
    let c = core.add(Request::new(vec![5; 20], greedy(3))).unwrap();
    let (out, _) = run(&mut core);
    assert_eq!(out[&a], (vec![4, 5, 6, 7], FinishReason::Length));
    assert_eq!(out[&b], (vec![11, 12], FinishReason::Length));
    assert_eq!(out[&c], (vec![6, 7, 8], FinishReason::Length));
    let batches = core.model().batches.borrow();
    // Step 1: a and b whole, c's first 12 prompt tokens (budget 16); step 2: decodes of a and
    // b beside c's last 8 prompt tokens, in one forward.
    assert_eq!(batches[0], vec![3, 1, 12]);
    assert_eq!(batches[1], vec![1, 1, 8]);
    assert_eq!(core.stats().running, 0);
    assert_eq!(
        core.stats().kv_reserved_bytes,
        0,
        "finished requests free their memory"
    );
}

#[test]
fn stop_tokens_max_tokens_and_the_context_end() {
    let mut core = EngineCore::new(Fake::new(8), config(4, 64, 10_000)).unwrap();
    let stop = core
        .add(Request::new(
            vec![1],
            SamplingParams {
                stop_token_ids: vec![4],
                ..greedy(10)
            },
        ))
        .unwrap();
    let full = core
        .add(Request::new(vec![1, 1, 1, 1, 1, 1], greedy(10)))
        .unwrap();
    let (out, _) = run(&mut core);
    assert_eq!(out[&stop], (vec![2, 3], FinishReason::Stop(4)));
    assert_eq!(out[&full], (vec![2, 3], FinishReason::ContextFull));
}

#[test]
fn a_request_waits_for_memory_and_runs_when_it_frees() {
    // Budget 30 positions: a holds 3 + 19 = 22, b needs 20: b waits until a finishes.
    let mut core = EngineCore::new(Fake::new(1000), config(4, 64, 30)).unwrap();
    let a = core.add(Request::new(vec![1, 2, 3], greedy(20))).unwrap();
    let b = core.add(Request::new(vec![7], greedy(20))).unwrap();
    let (out, steps) = run(&mut core);
    let first_b = steps
        .iter()
        .position(|s| s.iter().any(|e| e.request() == b))
        .unwrap();
    let a_done = steps
        .iter()
        .position(|s| {
            s.iter()
                .any(|e| matches!(e, Event::Finished { id, .. } if *id == a))
        })
        .unwrap();
    assert!(first_b > a_done, "b ran beside a over the memory budget");
    assert_eq!(out[&b].0.len(), 20);
    // One that could never fit is refused at once, naming both numbers.
    let e = core.add(Request::new(vec![1; 20], greedy(20))).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::DoesNotFit {
                needed_bytes: 39,
                budget_bytes: 30
            }
        ),
        "{e}"
    );
}

#[test]
fn cancellation_frees_memory_and_others_continue() {
    let mut core = EngineCore::new(Fake::new(1000), config(2, 16, 100)).unwrap();
    let a = core.add(Request::new(vec![1], greedy(50))).unwrap();
    let b = core.add(Request::new(vec![2], greedy(5))).unwrap();
    core.step();
    core.step();
    assert!(core.cancel(a));
    assert!(!core.cancel(a), "already gone");
    assert_eq!(core.stats().kv_reserved_bytes, 5);
    let (out, _) = run(&mut core);
    assert!(!out.contains_key(&a));
    assert_eq!(out[&b].0.len(), 3, "b's first two tokens came before run()");
}

#[test]
fn seeds_make_sampling_reproducible_whatever_runs_beside() {
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_new_tokens: 12,
        ..SamplingParams::default()
    };
    let alone = {
        let mut core = EngineCore::new(Fake::new(1000), config(4, 16, 10_000)).unwrap();
        let id = core.add(Request::new(vec![3, 4], sampled(7))).unwrap();
        run(&mut core).0.remove(&id).unwrap().0
    };
    let mut core = EngineCore::new(Fake::new(1000), config(4, 16, 10_000)).unwrap();
    core.add(Request::new(vec![9; 7], sampled(1))).unwrap();
    let id = core.add(Request::new(vec![3, 4], sampled(7))).unwrap();
    core.add(Request::new(vec![1], sampled(2))).unwrap();
    let (out, _) = run(&mut core);
    assert_eq!(out[&id].0, alone);
    let other = {
        let mut core = EngineCore::new(Fake::new(1000), config(4, 16, 10_000)).unwrap();
        let id = core.add(Request::new(vec![3, 4], sampled(8))).unwrap();
        run(&mut core).0.remove(&id).unwrap().0
    };
    assert_ne!(other, alone, "another seed, other tokens");
}

#[test]
fn one_failing_request_does_not_take_the_batch_down() {
    let mut core = EngineCore::new(Fake::new(1000), config(4, 16, 10_000)).unwrap();
    let good = core.add(Request::new(vec![1, 2], greedy(3))).unwrap();
    let bad = core.add(Request::new(vec![999], greedy(3))).unwrap();
    let events = core.step();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Failed { id, .. } if *id == bad)));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Token { id, token: 3, .. } if *id == good)));
    let mut tokens = 1;
    while core.has_work() {
        tokens += core
            .step()
            .iter()
            .filter(|e| matches!(e, Event::Token { .. }))
            .count();
    }
    assert_eq!(tokens, 3);
    // A failure of the batched forward itself may have written some caches: every request of
    // that step fails, and the engine goes on with new ones.
    let a = core.add(Request::new(vec![1, 2], greedy(3))).unwrap();
    let b = core.add(Request::new(vec![998], greedy(3))).unwrap();
    let events = core.step();
    for id in [a, b] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Failed { id: i, .. } if *i == id)),
            "{events:?}"
        );
    }
    assert!(!core.has_work());
    let c = core.add(Request::new(vec![4], greedy(2))).unwrap();
    let (out, _) = run(&mut core);
    assert_eq!(out[&c].0, vec![5, 6]);
}

#[test]
fn bad_requests_are_refused_up_front() {
    let mut core = EngineCore::new(Fake::new(10), config(2, 16, 1000)).unwrap();
    assert!(matches!(
        core.add(Request::new(vec![], greedy(1))),
        Err(EngineError::EmptyPrompt)
    ));
    let e = core.add(Request::new(vec![1; 11], greedy(1))).unwrap_err();
    assert!(matches!(
        e,
        EngineError::PromptTooLong {
            prompt_tokens: 11,
            max_positions: 10
        }
    ));
    assert!(
        core.add(Request::new(vec![1], greedy(0))).is_err(),
        "0 tokens needs prompt logprobs"
    );
    let bad = SamplingParams {
        top_p: 0.0,
        ..greedy(1)
    };
    assert!(core.add(Request::new(vec![1], bad)).is_err());
    assert!(!core.has_work());
}

#[test]
fn prompt_logprobs_score_every_prompt_token_across_pieces() {
    let model = Fake::new(1000);
    let expected: Vec<f32> = {
        let prompt = [4u32, 5, 9, 10, 11];
        (1..prompt.len())
            .map(|i| {
                herd_engine::request::token_logprob(&model.logits_after(prompt[i - 1]), prompt[i], 0).logprob
            })
            .collect()
    };
    let mut core = EngineCore::new(model, config(2, 2, 1000)).unwrap();
    let mut request = Request::new(vec![4, 5, 9, 10, 11], greedy(0));
    request.prompt_logprobs = Some(1);
    let id = core.add(request).unwrap();
    let mut events = Vec::new();
    while core.has_work() {
        events.extend(core.step());
    }
    let Event::PromptLogprobs { logprobs, .. } = &events[0] else {
        panic!("{events:?}")
    };
    let got: Vec<f32> = logprobs.iter().map(|l| l.logprob).collect();
    assert_eq!(got, expected);
    assert_eq!(logprobs[0].top.len(), 1);
    assert!(matches!(
        events[1],
        Event::Finished { id: i, reason: FinishReason::Length, usage } if i == id && usage.completion_tokens == 0
    ));
}

#[test]
fn the_real_model_batched_gives_what_each_request_gives_alone() {
    // Mixed lengths crossing the fixture's 8-token chunks; a step budget that splits prompts.
    let model = TextModel::load(&fixture_path("scout-tiny"), DType::F32, &Device::Cpu).unwrap();
    let prompts: Vec<Vec<u32>> = [19usize, 3, 11, 8]
        .iter()
        .enumerate()
        .map(|(s, &n)| (0..n).map(|i| ((i * 31 + s * 57 + 2) % 200) as u32).collect())
        .collect();
    let params = |s: usize| SamplingParams {
        temperature: if s.is_multiple_of(2) { 0.0 } else { 0.8 },
        seed: Some(s as u64),
        max_new_tokens: 10 + s,
        ..SamplingParams::default()
    };
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| {
            generate(&model, p, &params(s), |_| ControlFlow::Continue(()))
                .unwrap()
                .tokens
        })
        .collect();
    let mut core = EngineCore::new(model, config(4, 12, 1 << 30)).unwrap();
    let ids: Vec<RequestId> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| core.add(Request::new(p.clone(), params(s))).unwrap())
        .collect();
    let (out, _) = run(&mut core);
    for (s, id) in ids.iter().enumerate() {
        assert_eq!(out[id].0, alone[s], "request {s}");
    }
}

#[test]
fn a_constraint_masks_tokens_and_a_complete_reply_ends_at_a_stop_token() {
    use herd_engine::constraint::TokenConstraint;
    /// Allows only 7, then 8, then is complete.
    #[derive(Debug)]
    struct TwoTokens(usize);
    impl TokenConstraint for TwoTokens {
        fn allows(&self, token: u32) -> bool {
            token == [7, 8][self.0.min(1)]
        }
        fn advance(&mut self, _token: u32) {
            self.0 += 1;
        }
        fn is_complete(&self) -> bool {
            self.0 >= 2
        }
    }
    let mut core = EngineCore::new(Fake::new(1000), config(2, 16, 10_000)).unwrap();
    let mut with_stop = Request::new(
        vec![1],
        SamplingParams {
            stop_token_ids: vec![30],
            temperature: 1.0,
            seed: Some(1),
            max_new_tokens: 10,
            ..SamplingParams::default()
        },
    );
    with_stop.constraint = Some(Box::new(TwoTokens(0)));
    let a = core.add(with_stop).unwrap();
    let mut without = Request::new(vec![1], greedy(10));
    without.constraint = Some(Box::new(TwoTokens(0)));
    let b = core.add(without).unwrap();
    let (out, _) = run(&mut core);
    assert_eq!(out[&a], (vec![7, 8], FinishReason::Stop(30)));
    assert_eq!(out[&b], (vec![7, 8], FinishReason::Complete));
}

#[test]
fn kv_reservations_cover_a_step_that_crosses_a_chunk() {
    // scout-tiny: chunks of 8; a step of up to 4 tokens may hold 8 − 1 + 4 = 11 positions in a
    // chunked layer; global layers hold every position.
    let model = TextModel::load(&fixture_path("scout-tiny"), DType::F32, &Device::Cpu).unwrap();
    let c = model.config();
    let row = 2 * c.n_kv_heads * c.head_dim * 4;
    let chunked = c
        .layers
        .iter()
        .filter(|l| l.attention.chunk_len().is_some())
        .count();
    let global = c.layers.len() - chunked;
    assert_eq!(model.kv_bytes_for(100, 4), (chunked * 11 + global * 100) * row);
    assert_eq!(model.kv_bytes_for(5, 4), c.layers.len() * 5 * row);
    // What a sequence fed that way actually allocates never exceeds it.
    let mut cache = model.new_cache_for(40);
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 % 200) as u32).collect();
    for piece in ids.chunks(4) {
        model.feed(piece, &mut cache).unwrap();
    }
    assert!(
        cache.bytes() <= model.kv_bytes_for(40, 4),
        "{} > {}",
        cache.bytes(),
        model.kv_bytes_for(40, 4)
    );
    // A chunk longer than any context (a config's 2⁶⁴ − 1) holds every position, as a global
    // layer does: the estimate saturates rather than wrapping to a step's worth.
    let dir = std::env::temp_dir().join(format!("herd-core-huge-chunk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture_path("scout-tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["attention_chunk_size"] = serde_json::json!(u64::MAX);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let huge = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(huge.kv_bytes_for(100, 4), c.layers.len() * 100 * row);
    std::fs::remove_dir_all(&dir).ok();
}

/// Image rows must pair with the prompt's patch tokens: a request whose prompt has fewer (a
/// patch id the tokenizer does not use) is refused at once, not run without its image.
#[test]
fn image_rows_without_their_patch_tokens_are_refused() {
    let mut core = EngineCore::new(Fake::new(64), config(4, 16, 1 << 20)).unwrap();
    let rows =
        candle_core::Tensor::zeros((3, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let mut request = Request::new(vec![1, 9, 9, 2], greedy(2));
    request.images = Some(ImageFeatures { rows, patch_id: 9 });
    let err = core.add(request).unwrap_err().to_string();
    assert!(
        err.contains("2 <|patch|> tokens") && err.contains("3 feature rows"),
        "{err}"
    );
}

//! The generation loop against a fake model, and against the reference fixture.

use std::cell::RefCell;
use std::ops::ControlFlow;

use candle_core::{DType, Device};
use herd_engine::{generate, EngineError, FinishReason, LanguageModel, SamplingParams};
use herd_model::TextModel;
use herd_testkit::{fixture_path, Reference};

/// Predicts `(last + 1) % vocab` with certainty; records every feed.
struct Counter {
    vocab: usize,
    max_positions: usize,
    feeds: RefCell<Vec<usize>>,
}

impl LanguageModel for Counter {
    type Cache = Vec<u32>;

    fn new_cache(&self) -> Vec<u32> {
        Vec::new()
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn feed(&self, ids: &[u32], cache: &mut Vec<u32>) -> Result<Vec<f32>, EngineError> {
        self.feeds.borrow_mut().push(ids.len());
        cache.extend_from_slice(ids);
        let mut logits = vec![0.0; self.vocab];
        logits[(*cache.last().unwrap() as usize + 1) % self.vocab] = 100.0;
        Ok(logits)
    }
}

fn counter(max_positions: usize) -> Counter {
    Counter {
        vocab: 10,
        max_positions,
        feeds: RefCell::new(Vec::new()),
    }
}

fn greedy(max_new_tokens: usize, stop: &[u32]) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        stop_token_ids: stop.to_vec(),
        ..SamplingParams::greedy()
    }
}

#[test]
fn stops_at_max_new_tokens_streaming_each_token() {
    let model = counter(100);
    let mut streamed = Vec::new();
    let g = generate(&model, &[1, 2], &greedy(4, &[]), |t| {
        streamed.push(t);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(g.tokens, vec![3, 4, 5, 6]);
    assert_eq!(streamed, g.tokens);
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(
        *model.feeds.borrow(),
        vec![2, 1, 1, 1],
        "prefill once, then one token a step"
    );
}

#[test]
fn stop_token_ends_generation_and_is_not_emitted() {
    let g = generate(&counter(100), &[1], &greedy(50, &[5, 9]), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(g.tokens, vec![2, 3, 4]);
    assert_eq!(g.finish_reason, FinishReason::Stop(5));
}

#[test]
fn context_end_and_cancellation() {
    let g = generate(&counter(5), &[1, 2, 3], &greedy(50, &[]), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!((g.tokens.len(), g.finish_reason), (2, FinishReason::ContextFull));
    let g = generate(&counter(100), &[1], &greedy(50, &[]), |t| {
        if t == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!((g.tokens, g.finish_reason), (vec![2, 3], FinishReason::Cancelled));
}

#[test]
fn long_prompts_prefill_in_pieces() {
    let model = counter(10_000);
    let prompt = vec![1u32; 1300];
    generate(&model, &prompt, &greedy(1, &[]), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(*model.feeds.borrow(), vec![512, 512, 276]);
}

#[test]
fn bad_requests_are_errors() {
    assert!(matches!(
        generate(&counter(10), &[], &greedy(1, &[]), |_| ControlFlow::Continue(())),
        Err(EngineError::EmptyPrompt)
    ));
    let bad = SamplingParams {
        top_p: 2.0,
        ..SamplingParams::default()
    };
    assert!(matches!(
        generate(&counter(10), &[1], &bad, |_| ControlFlow::Continue(())),
        Err(EngineError::InvalidParameter { field: "top_p", .. })
    ));
}

#[test]
fn greedy_generation_reproduces_the_reference_tokens() {
    for name in ["scout-tiny", "maverick-tiny"] {
        let model = TextModel::load(&fixture_path(name), DType::F32, &Device::Cpu).unwrap();
        let reference = Reference::load(name);
        let p = reference.prompt(0);
        let g = generate(&model, &p.ids, &greedy(16, &[]), |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(g.tokens, p.greedy, "{name}");
    }
}

#[test]
fn seeded_sampling_on_a_real_model_is_reproducible() {
    let model = TextModel::load(&fixture_path("scout-tiny"), DType::F32, &Device::Cpu).unwrap();
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        min_p: 0.01,
        repetition_penalty: 1.1,
        seed: Some(42),
        max_new_tokens: 24,
        stop_token_ids: vec![],
        ..SamplingParams::default()
    };
    let run = || {
        generate(&model, &[1, 10, 20, 30], &params, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens
    };
    let first = run();
    assert_eq!(first, run());
    assert_eq!(first.len(), 24);
}

/// A model whose logits turn NaN after `good` feeds (broken weights).
struct Broken {
    good: usize,
    feeds: RefCell<usize>,
}

impl LanguageModel for Broken {
    type Cache = ();

    fn new_cache(&self) {}

    fn max_positions(&self) -> usize {
        100
    }

    fn feed(&self, _ids: &[u32], _cache: &mut ()) -> Result<Vec<f32>, EngineError> {
        let mut feeds = self.feeds.borrow_mut();
        *feeds += 1;
        let bad = if *feeds > self.good { f32::NAN } else { 0.0 };
        Ok(vec![1.0, bad, f32::NEG_INFINITY])
    }
}

#[test]
fn non_finite_logits_stop_generation_with_an_error() {
    let model = Broken {
        good: 2,
        feeds: RefCell::new(0),
    };
    let mut emitted = Vec::new();
    let err = generate(&model, &[1], &greedy(10, &[]), |t| {
        emitted.push(t);
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(
        matches!(err, EngineError::NonFiniteLogits { position: 2 }),
        "{err}"
    );
    assert_eq!(emitted, vec![0, 0], "-inf alone is a mask, not an error");
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_up_front() {
    let model = counter(4096);
    let prompt = vec![1u32; 25_002];
    let err = generate(&model, &prompt, &greedy(1, &[]), |_| ControlFlow::Continue(())).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::PromptTooLong {
                prompt_tokens: 25_002,
                max_positions: 4096
            }
        ),
        "{err}"
    );
    assert!(model.feeds.borrow().is_empty(), "nothing was computed");
}

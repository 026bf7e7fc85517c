//! The engine core: continuous batching over any [`LanguageModel`], in token ids only.
//!
//! Each [`EngineCore::step`]: the [`Scheduler`] says how many tokens every running request
//! advances; the model runs one batched forward over all of them (prefill pieces and decode
//! tokens together); each request samples with its own parameters and seed; finished ones free
//! their memory at once. Requests join and leave between steps.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::constraint::{masked_logits, TokenConstraint};
use crate::error::EngineError;
use crate::generate::FinishReason;
use crate::model::{Feed, ImageFeatures, LanguageModel, Logits};
use crate::request::{token_logprob, token_logprob_watching, Event, Request, TokenLogprob, Usage};
use crate::sampling::{Sampler, SamplingParams};
use crate::scheduler::{RequestId, Scheduler, SchedulerConfig};

/// One running or waiting request.
struct Sequence<C> {
    /// Prompt, then the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens fed to the model so far.
    fed: usize,
    cache: C,
    sampler: Sampler,
    params: SamplingParams,
    images: Option<ImageFeatures>,
    /// Image rows already fed.
    patches_fed: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    prompt_logprob_rows: Vec<TokenLogprob>,
    constraint: Option<Box<dyn TokenConstraint>>,
    watch: Vec<u32>,
}

impl<C> Sequence<C> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
        }
    }

    /// The image rows of the next `n` tokens' `<|patch|>` ids, if any.
    fn images_for(&mut self, n: usize) -> Result<Option<ImageFeatures>, EngineError> {
        let Some(images) = &self.images else {
            return Ok(None);
        };
        let ids = &self.tokens[self.fed..self.fed + n];
        let count = ids.iter().filter(|&&t| t == images.patch_id).count();
        if count == 0 {
            return Ok(None);
        }
        let rows: Tensor = images
            .rows
            .narrow(0, self.patches_fed, count)
            .map_err(herd_model::Error::from)?;
        self.patches_fed += count;
        Ok(Some(ImageFeatures {
            rows,
            patch_id: images.patch_id,
        }))
    }
}

/// Counters the server's metrics read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub kv_reserved_bytes: usize,
    pub kv_budget_bytes: usize,
}

pub struct EngineCore<M: LanguageModel> {
    model: M,
    scheduler: Scheduler,
    sequences: HashMap<RequestId, Sequence<M::Cache>>,
    next_id: RequestId,
}

impl<M: LanguageModel> EngineCore<M> {
    pub fn new(model: M, config: SchedulerConfig) -> Result<Self, EngineError> {
        Ok(EngineCore {
            model,
            scheduler: Scheduler::new(config)?,
            sequences: HashMap::new(),
            next_id: 1,
        })
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// Checks and queues a request; its events come from later [`Self::step`]s.
    pub fn add(&mut self, request: Request) -> Result<RequestId, EngineError> {
        let Request {
            prompt,
            images,
            params,
            logprobs,
            prompt_logprobs,
            constraint,
            watch,
        } = request;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let max_positions = self.model.max_positions();
        if prompt.len() > max_positions {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                max_positions,
            });
        }
        if let Some(images) = &images {
            // Every feature row needs its `<|patch|>` token. A prompt whose patch id is not the
            // features' (a config's image_token_index other than the tokenizer's <|patch|>)
            // would otherwise take no rows, and the model would answer without the image.
            let patch_tokens = prompt.iter().filter(|&&t| t == images.patch_id).count();
            let features = images.rows.dim(0).map_err(herd_model::Error::from)?;
            if patch_tokens != features {
                return Err(herd_model::Error::ImageTokens {
                    patch_tokens,
                    features,
                }
                .into());
            }
        }
        if params.max_new_tokens == 0 && prompt_logprobs.is_none() {
            return Err(EngineError::InvalidParameter {
                field: "max_new_tokens",
                message: "must be at least 1 unless prompt logprobs are asked for".into(),
            });
        }
        // The sampler's own check wants a token to make; 0 is this request's business.
        let sampler = Sampler::new(SamplingParams {
            max_new_tokens: params.max_new_tokens.max(1),
            ..params.clone()
        })?;
        // The last generated token is never fed back, so it takes no cache position.
        let positions = (prompt.len() + params.max_new_tokens.saturating_sub(1)).min(max_positions);
        let kv_bytes = self
            .model
            .kv_bytes_for(positions, self.scheduler.config().max_tokens_per_step);
        let id = self.next_id;
        self.scheduler.add(id, prompt.len(), kv_bytes)?;
        self.next_id += 1;
        let cache = self.model.new_cache_for(positions);
        self.sequences.insert(
            id,
            Sequence {
                prompt_len: prompt.len(),
                tokens: prompt,
                fed: 0,
                cache,
                sampler,
                params,
                images,
                patches_fed: 0,
                logprobs,
                prompt_logprobs,
                prompt_logprob_rows: Vec::new(),
                constraint,
                watch,
            },
        );
        Ok(id)
    }

    /// Drops a request at once (a client went away); false if it is not known (finished).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.scheduler.remove(id);
        self.sequences.remove(&id).is_some()
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            waiting: self.scheduler.n_waiting(),
            running: self.scheduler.n_running(),
            kv_reserved_bytes: self.scheduler.reserved_bytes(),
            kv_budget_bytes: self.scheduler.config().kv_budget_bytes,
        }
    }

    /// Runs one batched step; returns what happened to each request in it.
    pub fn step(&mut self) -> Vec<Event> {
        let plan = self.scheduler.schedule();
        let mut events = Vec::new();
        if plan.is_empty() {
            return events;
        }
        // Take the step's sequences out of the map so their caches can be borrowed together.
        let mut batch: Vec<(RequestId, usize, Sequence<M::Cache>)> = Vec::with_capacity(plan.items.len());
        for &(id, n) in &plan.items {
            if let Some(seq) = self.sequences.remove(&id) {
                batch.push((id, n, seq));
            }
        }
        let results = self.feed(&mut batch);
        for ((id, n, mut seq), result) in batch.into_iter().zip(results) {
            let done = match result {
                Ok(logits) => {
                    seq.fed += n;
                    self.advance(id, &mut seq, n, &logits, &mut events)
                }
                Err(e) => {
                    events.push(Event::Failed {
                        id,
                        message: e.to_string(),
                    });
                    true
                }
            };
            if done {
                self.scheduler.remove(id);
            } else {
                self.sequences.insert(id, seq);
            }
        }
        events
    }

    /// One forward over the whole step. Each item is checked first (a bad one fails alone,
    /// before any cache changes); a failure of the batched forward itself is no request's fault
    /// and may have left caches half-written, so it fails every item of the step.
    fn feed(&self, batch: &mut [(RequestId, usize, Sequence<M::Cache>)]) -> Vec<Result<Logits, EngineError>> {
        let mut failed: Vec<Option<EngineError>> = Vec::with_capacity(batch.len());
        for (_, n, seq) in batch.iter_mut() {
            let before = seq.patches_fed;
            let checked = seq.images_for(*n).and_then(|images| {
                let ids = &seq.tokens[seq.fed..seq.fed + *n];
                self.model.check_feed(ids, &seq.cache, images.as_ref())
            });
            seq.patches_fed = before;
            failed.push(checked.err());
        }
        let mut logits = match self.feed_checked(batch, &failed) {
            Ok(l) => l.into_iter(),
            Err(e) => {
                let message = e.to_string();
                return failed
                    .into_iter()
                    .map(|f| {
                        Err(f.unwrap_or_else(|| {
                            EngineError::Frontend(format!("the batched step failed: {message}"))
                        }))
                    })
                    .collect();
            }
        };
        failed
            .into_iter()
            .map(|f| match f {
                Some(e) => Err(e),
                None => logits.next().ok_or(EngineError::EmptyPrompt),
            })
            .collect()
    }

    /// The batched forward over the items that passed their checks (`failed[i]` is `None`);
    /// their logits in order.
    fn feed_checked(
        &self,
        batch: &mut [(RequestId, usize, Sequence<M::Cache>)],
        failed: &[Option<EngineError>],
    ) -> Result<Vec<Logits>, EngineError> {
        let mut feeds: Vec<Feed<'_, M::Cache>> = Vec::with_capacity(batch.len());
        for ((_, n, seq), f) in batch.iter_mut().zip(failed) {
            if f.is_some() {
                continue;
            }
            let images = seq.images_for(*n)?;
            feeds.push(Feed {
                ids: &seq.tokens[seq.fed..seq.fed + *n],
                cache: &mut seq.cache,
                all_logits: seq.prompt_logprobs.is_some() && seq.fed < seq.prompt_len,
                images,
            });
        }
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        self.model.feed_batch(&mut feeds)
    }

    /// After a sequence was fed `n` tokens with these logits: records prompt logprobs, samples
    /// once its known tokens are all fed, and reports. True when the request is done.
    fn advance(
        &self,
        id: RequestId,
        seq: &mut Sequence<M::Cache>,
        n: usize,
        logits: &Logits,
        events: &mut Vec<Event>,
    ) -> bool {
        if let Some(top) = seq.prompt_logprobs {
            let first = seq.fed - n;
            // Row j predicts the token at position first + j + 1.
            for j in 0..logits.rows.min(n) {
                let target = first + j + 1;
                if target < seq.prompt_len && logits.rows == n {
                    seq.prompt_logprob_rows
                        .push(token_logprob(logits.row(j), seq.tokens[target], top));
                }
            }
            if seq.fed == seq.prompt_len && seq.fed - n < seq.prompt_len {
                events.push(Event::PromptLogprobs {
                    id,
                    logprobs: std::mem::take(&mut seq.prompt_logprob_rows),
                });
            }
        }
        if seq.fed < seq.tokens.len() {
            return false; // still prefilling
        }
        let finish = |reason, usage| Event::Finished { id, reason, usage };
        if seq.generated() >= seq.params.max_new_tokens {
            events.push(finish(FinishReason::Length, seq.usage())); // max_new_tokens 0: scoring only
            return true;
        }
        let last = logits.last();
        // -inf is a masked token; NaN or +inf means the forward pass went wrong.
        if last.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
            events.push(Event::Failed {
                id,
                message: EngineError::NonFiniteLogits {
                    position: seq.tokens.len() - 1,
                }
                .to_string(),
            });
            return true;
        }
        let token = match &seq.constraint {
            None => seq.sampler.sample(last, &seq.tokens),
            Some(rule) => match masked_logits(last, rule.as_ref(), &seq.params) {
                Some(allowed) => seq.sampler.sample(&allowed, &seq.tokens),
                None => {
                    // Nothing may follow (a complete reply and no stop token to end it).
                    events.push(finish(FinishReason::Complete, seq.usage()));
                    return true;
                }
            },
        };
        if let Some(rule) = &mut seq.constraint {
            rule.advance(token);
        }
        if seq.params.stop_token_ids.contains(&token) {
            events.push(finish(FinishReason::Stop(token), seq.usage()));
            return true;
        }
        seq.tokens.push(token);
        events.push(Event::Token {
            id,
            token,
            logprob: (seq.logprobs.is_some() || !seq.watch.is_empty())
                .then(|| token_logprob_watching(last, token, seq.logprobs.unwrap_or(0), &seq.watch)),
        });
        let reason = if seq.generated() >= seq.params.max_new_tokens {
            FinishReason::Length
        } else if seq.tokens.len() >= self.model.max_positions() {
            FinishReason::ContextFull
        } else {
            return false;
        };
        events.push(finish(reason, seq.usage()));
        true
    }
}

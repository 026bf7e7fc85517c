//! One choice of a response as it is generated: the engine's token events turned into text
//! (incremental detokenization, stop strings), with latency metrics. Dropping it before the
//! end cancels the request in the engine (a client that went away frees its memory at once).

use std::sync::Arc;
use std::time::Instant;

use herd_engine::frontend::output::{OutputText, StopStrings};
use herd_engine::{Event, FinishReason, RequestId, TokenLogprob, Usage};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::state::AppState;

/// A generated token and, when asked for, its log-probability.
#[derive(Debug, Clone)]
pub struct GeneratedToken {
    pub id: u32,
    pub logprob: Option<TokenLogprob>,
}

#[derive(Debug, Clone)]
pub enum Update {
    /// Log-probabilities of the prompt's tokens after the first.
    PromptLogprobs(Vec<TokenLogprob>),
    /// New text and the tokens that produced it (text may lag its tokens: a partial
    /// character or a possible stop string is held back).
    Text {
        text: String,
        tokens: Vec<GeneratedToken>,
    },
    Done {
        /// OpenAI's `finish_reason`: `stop` (a stop token or string) or `length`.
        finish_reason: &'static str,
        usage: Usage,
    },
}

pub struct Generation {
    id: RequestId,
    /// The engine running it (the served model's or an adapter's).
    engine: crate::worker::EngineHandle,
    events: UnboundedReceiver<Event>,
    state: Arc<AppState>,
    output: OutputText,
    prompt_tokens: usize,
    generated: usize,
    arrived: Instant,
    last_token_at: Option<Instant>,
    done: bool,
    /// `Done`, after the last `Text`.
    pending_done: Option<Update>,
}

impl Generation {
    pub fn new(
        state: Arc<AppState>,
        engine: crate::worker::EngineHandle,
        id: RequestId,
        events: UnboundedReceiver<Event>,
        stop: StopStrings,
        prompt_tokens: usize,
        arrived: Instant,
    ) -> Self {
        Generation {
            id,
            engine,
            events,
            state,
            output: OutputText::with_stops(stop),
            prompt_tokens,
            generated: 0,
            arrived,
            last_token_at: None,
            done: false,
            pending_done: None,
        }
    }

    /// The next update; `None` after `Done`.
    pub async fn next(&mut self) -> Option<Result<Update, ApiError>> {
        if let Some(done) = self.pending_done.take() {
            return Some(Ok(done));
        }
        if self.done {
            return None;
        }
        let Some(event) = self.events.recv().await else {
            self.done = true;
            return Some(Err(ApiError::unavailable(
                "the engine stopped before the request ended",
            )));
        };
        Some(self.on_event(event))
    }

    fn on_event(&mut self, event: Event) -> Result<Update, ApiError> {
        match event {
            Event::PromptLogprobs { logprobs, .. } => Ok(Update::PromptLogprobs(logprobs)),
            Event::Token { token, logprob, .. } => {
                let now = Instant::now();
                match self.last_token_at {
                    None => self.state.metrics.time_to_first_token(now - self.arrived),
                    Some(t) => self.state.metrics.inter_token(now - t),
                }
                self.last_token_at = Some(now);
                self.generated += 1;
                let delta = self
                    .output
                    .push(&self.state.frontend.tokenizer, token)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let tokens = vec![GeneratedToken { id: token, logprob }];
                if delta.stopped {
                    // A stop string: the reply ends here; the engine need not go on.
                    self.finish();
                    self.engine.cancel(self.id);
                    return Ok(self.text_then_done(delta.text, tokens, "stop"));
                }
                Ok(Update::Text {
                    text: delta.text,
                    tokens,
                })
            }
            Event::Finished { reason, .. } => {
                self.finish();
                let reason = match reason {
                    FinishReason::Stop(_) | FinishReason::Cancelled | FinishReason::Complete => "stop",
                    FinishReason::Length | FinishReason::ContextFull => "length",
                };
                let rest = self.output.finish();
                Ok(self.text_then_done(rest, Vec::new(), reason))
            }
            Event::Failed { message, .. } => {
                self.finish();
                Err(ApiError::internal(message))
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.state.metrics.tokens(self.prompt_tokens, self.generated);
    }

    /// The last text; `Done` follows on the next call.
    fn text_then_done(&mut self, text: String, tokens: Vec<GeneratedToken>, reason: &'static str) -> Update {
        self.pending_done = Some(Update::Done {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.generated,
            },
        });
        Update::Text { text, tokens }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.done {
            self.engine.cancel(self.id);
        }
    }
}

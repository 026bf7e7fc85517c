//! Writing a generation to the terminal as it happens (token ids, or text through the
//! incremental detokenizer), and the one-line summary after it.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use herd_engine::{FinishReason, Generation};
use herd_text::{IncrementalDecoder, Tokenizer};

/// Streams tokens to stdout and times the run.
pub struct TokenStream<'a> {
    tokenizer: Option<&'a Tokenizer>,
    decoder: IncrementalDecoder,
    started: Instant,
    first_token_at: Option<Instant>,
    /// The first write error; generation stops on it.
    pub error: Option<anyhow::Error>,
    /// Text emitted so far (text mode).
    pub text: String,
}

impl<'a> TokenStream<'a> {
    /// Text output when a tokenizer is given, else space-separated ids.
    pub fn new(tokenizer: Option<&'a Tokenizer>) -> Self {
        TokenStream {
            tokenizer,
            decoder: IncrementalDecoder::new(),
            started: Instant::now(),
            first_token_at: None,
            error: None,
            text: String::new(),
        }
    }

    pub fn on_token(&mut self, id: u32) -> ControlFlow<()> {
        self.first_token_at.get_or_insert_with(Instant::now);
        let piece = match self.tokenizer {
            Some(t) => match self.decoder.push(t, id) {
                Ok(text) => text,
                Err(e) => return self.fail(e.into()),
            },
            None => format!("{id} "),
        };
        self.write(&piece)
    }

    /// Flushes what the detokenizer still holds and ends the line.
    pub fn finish(&mut self) -> ControlFlow<()> {
        let rest = self.decoder.finish();
        self.write(&format!("{rest}\n"))
    }

    fn write(&mut self, piece: &str) -> ControlFlow<()> {
        if self.tokenizer.is_some() {
            self.text.push_str(piece.trim_end_matches('\n'));
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => self.fail(e.into()),
        }
    }

    fn fail(&mut self, e: anyhow::Error) -> ControlFlow<()> {
        self.error.get_or_insert(e);
        ControlFlow::Break(())
    }

    /// Time to first token and decode speed, for the summary line.
    pub fn summary(&self, generation: &Generation) -> String {
        let ttft = self
            .first_token_at
            .map_or(self.started.elapsed(), |t| t - self.started);
        let decode = self.started.elapsed().saturating_sub(ttft);
        let finish = match generation.finish_reason {
            FinishReason::Stop(id) => format!("stop token {id}"),
            FinishReason::Length => "max_new_tokens".into(),
            FinishReason::ContextFull => "context full".into(),
            FinishReason::Cancelled => "cancelled".into(),
            FinishReason::Complete => "a complete constrained reply".into(),
        };
        let decoded = generation.tokens.len().saturating_sub(1);
        let tps = if decode > Duration::ZERO {
            decoded as f64 / decode.as_secs_f64()
        } else {
            0.0
        };
        let peak = peak_rss_bytes().map_or(String::new(), |b| format!(", peak RSS {:.1} MB", b as f64 / 1e6));
        format!(
            "[{} prompt tokens, {} generated, finished by {finish}; prefill {:.1} ms, decode {tps:.1} tok/s{peak}]",
            generation.prompt_tokens,
            generation.tokens.len(),
            ttft.as_secs_f64() * 1e3
        )
    }
}

/// This process's peak resident set (`VmHWM` of /proc/self/status), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

//! Continuous batching's scheduler: each step, how many tokens every running sequence
//! advances. It counts tokens and bytes only — no tensors, no text (vLLM v1's contract: the
//! step is `{request → n_tokens}`; prefill, chunked prefill and decode are one operation).
//!
//! Per step, in order:
//! 1. every running sequence that is decoding gets its one token (the budget is at least the
//!    number of sequences that may run, so decode never stalls behind a long prefill);
//! 2. running sequences still prefilling get pieces of their prompt from what budget is left;
//! 3. waiting requests are admitted first come, first served while a sequence slot and the KV
//!    budget allow, and start their prefill with what budget is left.
//!
//! KV memory is reserved whole at admission (prompt + the most tokens the request may
//! generate), so a running sequence can never run out of it: a request that does not fit
//! waits, and one that could never fit is refused when it arrives.

use std::collections::VecDeque;

use crate::error::EngineError;

/// An engine-wide request handle.
pub type RequestId = u64;

/// The scheduler's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running (holding KV memory) at once.
    pub max_running: usize,
    /// Most tokens one step feeds, across all sequences (prefill pieces and decode tokens).
    pub max_tokens_per_step: usize,
    /// Bytes of KV cache all running sequences may reserve together.
    pub kv_budget_bytes: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_running: 16,
            max_tokens_per_step: 512,
            kv_budget_bytes: 4 << 30,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field, message: String| Err(EngineError::InvalidParameter { field, message });
        if self.max_running == 0 {
            return bad("max_running", "must be at least 1".into());
        }
        if self.max_tokens_per_step < self.max_running {
            return bad(
                "max_tokens_per_step",
                format!(
                    "{} must be at least max_running ({}): every running sequence needs a token a step",
                    self.max_tokens_per_step, self.max_running
                ),
            );
        }
        Ok(())
    }
}

/// What the scheduler knows of one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: RequestId,
    /// Tokens that must be fed before the first sample (the prompt).
    prompt_len: usize,
    /// Tokens fed so far.
    fed: usize,
    /// KV bytes reserved while running.
    kv_bytes: usize,
}

impl Entry {
    fn prefilling(&self) -> bool {
        self.fed < self.prompt_len
    }
}

/// One step's plan: `(request, tokens to feed)` in the order they are batched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub items: Vec<(RequestId, usize)>,
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn n_tokens(&self) -> usize {
        self.items.iter().map(|&(_, n)| n).sum()
    }
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    waiting: VecDeque<Entry>,
    running: Vec<Entry>,
    reserved_bytes: usize,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, EngineError> {
        config.validate()?;
        Ok(Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved_bytes: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request whose prompt has `prompt_len` tokens and which may hold `kv_bytes` of
    /// cache at its longest. Refused when it could never fit the KV budget.
    pub fn add(&mut self, id: RequestId, prompt_len: usize, kv_bytes: usize) -> Result<(), EngineError> {
        if kv_bytes > self.config.kv_budget_bytes {
            return Err(EngineError::DoesNotFit {
                needed_bytes: kv_bytes,
                budget_bytes: self.config.kv_budget_bytes,
            });
        }
        self.waiting.push_back(Entry {
            id,
            prompt_len,
            fed: 0,
            kv_bytes,
        });
        Ok(())
    }

    /// Forgets a request (finished, failed or cancelled), freeing its reservation at once.
    pub fn remove(&mut self, id: RequestId) {
        self.waiting.retain(|e| e.id != id);
        if let Some(i) = self.running.iter().position(|e| e.id == id) {
            let e = self.running.remove(i);
            self.reserved_bytes -= e.kv_bytes;
        }
    }

    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn reserved_bytes(&self) -> usize {
        self.reserved_bytes
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Plans the next step and counts its tokens as fed.
    pub fn schedule(&mut self) -> Step {
        let mut budget = self.config.max_tokens_per_step;
        let mut items = Vec::new();
        // 1. Decodes: one token for each (the budget holds them all: it is at least
        //    `max_running`).
        for e in self.running.iter_mut().filter(|e| !e.prefilling()) {
            budget -= 1;
            e.fed += 1;
            items.push((e.id, 1));
        }
        // 2. Prefill pieces of running sequences, oldest first.
        for e in self.running.iter_mut().filter(|e| e.prefilling()) {
            if budget == 0 {
                break;
            }
            let piece = (e.prompt_len - e.fed).min(budget);
            budget -= piece;
            e.fed += piece;
            items.push((e.id, piece));
        }
        // 3. Admissions, first come first served (no overtaking: a big request at the head
        //    waits for memory rather than being passed forever by small ones).
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(head) = self.waiting.front() else {
                break;
            };
            if self.reserved_bytes + head.kv_bytes > self.config.kv_budget_bytes {
                break;
            }
            let Some(mut e) = self.waiting.pop_front() else {
                break;
            };
            self.reserved_bytes += e.kv_bytes;
            let piece = e.prompt_len.min(budget);
            budget -= piece;
            e.fed = piece;
            items.push((e.id, piece));
            self.running.push(e);
        }
        Step { items }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scheduler(max_running: usize, max_tokens_per_step: usize, kv_budget_bytes: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            max_running,
            max_tokens_per_step,
            kv_budget_bytes,
        })
        .unwrap()
    }

    #[test]
    fn prefill_is_split_by_the_budget_and_decodes_go_first() {
        let mut s = scheduler(4, 8, 1000);
        s.add(1, 5, 10).unwrap();
        s.add(2, 12, 10).unwrap();
        assert_eq!(s.schedule().items, vec![(1, 5), (2, 3)]);
        // Request 1 decodes; request 2 continues its prefill with the rest of the budget.
        assert_eq!(s.schedule().items, vec![(1, 1), (2, 7)]);
        assert_eq!(s.schedule().items, vec![(1, 1), (2, 2)]);
        assert_eq!(s.schedule().items, vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn admission_waits_for_a_slot_and_for_memory_in_arrival_order() {
        let mut s = scheduler(2, 100, 30);
        s.add(1, 1, 10).unwrap();
        s.add(2, 1, 15).unwrap();
        s.add(3, 1, 10).unwrap();
        assert_eq!(s.schedule().items, vec![(1, 1), (2, 1)]);
        // No slot for 3.
        assert_eq!(s.schedule().items, vec![(1, 1), (2, 1)]);
        s.remove(1);
        assert_eq!(s.reserved_bytes(), 15);
        assert_eq!(s.schedule().items, vec![(2, 1), (3, 1)]);
        // Memory: 4 needs 10, 25 of 30 are held.
        s.add(4, 1, 10).unwrap();
        s.remove(3);
        let mut s2 = scheduler(8, 100, 30);
        s2.add(1, 1, 25).unwrap();
        s2.add(2, 1, 10).unwrap();
        s2.add(3, 1, 1).unwrap();
        // 2 does not fit beside 1, and 3 does not overtake it.
        assert_eq!(s2.schedule().items, vec![(1, 1)]);
        assert_eq!(s2.n_waiting(), 2);
        s2.remove(1);
        assert_eq!(s2.schedule().items, vec![(2, 1), (3, 1)]);
    }

    #[test]
    fn a_request_that_can_never_fit_is_refused() {
        let mut s = scheduler(2, 10, 30);
        let e = s.add(1, 5, 31).unwrap_err();
        assert!(
            e.to_string().contains("31") && e.to_string().contains("30"),
            "{e}"
        );
        assert!(!s.has_work());
    }

    #[test]
    fn removing_frees_memory_at_once_and_keeps_turns_fair() {
        let mut s = scheduler(3, 3, 100);
        for id in 1..=3 {
            s.add(id, 1, 30).unwrap();
        }
        s.schedule();
        s.remove(2);
        assert_eq!(s.reserved_bytes(), 60);
        assert_eq!(s.n_running(), 2);
        let step = s.schedule();
        assert_eq!(step.n_tokens(), 2);
        s.remove(1);
        s.remove(3);
        assert_eq!(s.reserved_bytes(), 0);
        assert!(!s.has_work());
    }

    #[test]
    fn a_budget_below_the_running_limit_is_refused() {
        let e = Scheduler::new(SchedulerConfig {
            max_running: 8,
            max_tokens_per_step: 4,
            kv_budget_bytes: 1,
        })
        .unwrap_err();
        assert!(e.to_string().contains("max_tokens_per_step"), "{e}");
    }
}

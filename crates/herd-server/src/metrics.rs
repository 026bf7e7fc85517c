//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4): requests, tokens in and
//! out, queue depth, running sequences, KV memory, time to first token and inter-token latency.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use herd_engine::EngineStats;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, c) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, c) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
    engine: Mutex<EngineStats>,
}

impl Metrics {
    pub fn request_done(&self, ok: bool) {
        let counter = if ok {
            &self.requests_ok
        } else {
            &self.requests_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    pub fn time_to_first_token(&self, d: Duration) {
        lock(&self.ttft).observe(d.as_secs_f64());
    }

    pub fn inter_token(&self, d: Duration) {
        lock(&self.itl).observe(d.as_secs_f64());
    }

    pub fn engine(&self, stats: EngineStats) {
        *lock(&self.engine) = stats;
    }

    pub fn engine_stats(&self) -> EngineStats {
        *lock(&self.engine)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, labels: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP herd_requests_total Requests answered, by outcome.\n# TYPE herd_requests_total counter"
        );
        let _ = writeln!(
            out,
            "herd_requests_total{{status=\"ok\"}} {}",
            self.requests_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "herd_requests_total{{status=\"error\"}} {}",
            self.requests_failed.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "herd_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            "",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "herd_generation_tokens_total",
            "Tokens generated.",
            "",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        let e = self.engine_stats();
        for (name, help, v) in [
            ("herd_queue_depth", "Requests waiting to run.", e.waiting),
            ("herd_running_sequences", "Sequences running.", e.running),
            (
                "herd_kv_reserved_bytes",
                "KV cache bytes reserved by running sequences.",
                e.kv_reserved_bytes,
            ),
            (
                "herd_kv_budget_bytes",
                "KV cache budget, bytes.",
                e.kv_budget_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        lock(&self.ttft).render(
            &mut out,
            "herd_time_to_first_token_seconds",
            "Time from a request's arrival to its first token.",
        );
        lock(&self.itl).render(
            &mut out,
            "herd_inter_token_latency_seconds",
            "Time between a request's consecutive tokens.",
        );
        out
    }
}

/// A poisoned lock only means a thread panicked mid-update; the numbers are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request_done(true);
        m.request_done(false);
        m.tokens(7, 3);
        m.time_to_first_token(Duration::from_millis(30));
        m.inter_token(Duration::from_millis(2));
        m.inter_token(Duration::from_millis(200));
        let text = m.render();
        assert!(text.contains("herd_requests_total{status=\"ok\"} 1"), "{text}");
        assert!(text.contains("herd_prompt_tokens_total 7"));
        assert!(text.contains("herd_generation_tokens_total 3"));
        assert!(text.contains("herd_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("herd_time_to_first_token_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("herd_inter_token_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("herd_inter_token_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("herd_queue_depth 0"));
    }
}

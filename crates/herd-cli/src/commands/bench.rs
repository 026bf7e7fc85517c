//! `herd bench`: prompt-processing and decode speed in the manner of llama-bench — random
//! prompt tokens, a warm-up, `-r` repetitions of each test (taken round-robin over the tests,
//! the deepest first), mean ± standard deviation — plus
//! time to first token, peak RSS, and how much of the machine's memory bandwidth decode uses
//! (weight bytes read per token × tokens/s ÷ the bandwidth this run probed).

use std::time::Instant;

use anyhow::Result;
use herd_engine::{LanguageModel, Sampler, SamplingParams};
use herd_model::kernels::isa::Isa;
use serde_json::json;

use crate::args::BenchArgs;
use crate::commands::bandwidth;
use crate::commands::stream::peak_rss_bytes;

/// One timed test: prompt processing (`pp`) of `tokens` or decoding (`tg`) of `tokens`, after
/// `depth` positions already in the cache.
#[derive(Clone, Copy)]
struct Test {
    prompt: bool,
    tokens: usize,
    depth: usize,
}

impl Test {
    fn name(&self) -> String {
        let kind = if self.prompt { "pp" } else { "tg" };
        if self.depth > 0 {
            format!("{kind}{} @ d{}", self.tokens, self.depth)
        } else {
            format!("{kind}{}", self.tokens)
        }
    }
}

/// The order tests run in: every test once, then again, `repetitions` rounds; within a round
/// the deepest first (stable otherwise). A test's untimed prefill of its depth runs just before
/// its own timing, so the shallower tests' timings follow the deeper one's without a long
/// prefill between them (decode at 8192 and at 0 a second apart, not the ~40 s of a prefill).
fn run_order(depths: &[usize], repetitions: u32) -> Vec<usize> {
    let mut round: Vec<usize> = (0..depths.len()).collect();
    round.sort_by_key(|&i| std::cmp::Reverse(depths[i]));
    (0..repetitions).flat_map(|_| round.iter().copied()).collect()
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = herd_model::kernels::row_split::threads();
    let bar = |len: u64, what: &str| {
        let bar = if args.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(len)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:24} {bar:40} {pos}/{len} {elapsed_precise}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        bar
    };

    let probe_bar = bar(1, "memory bandwidth probe");
    // Decode streams the weights from wherever they live: host memory, or the GPU's.
    let (bandwidth, probe_name) = match args.model.device()? {
        device if device.is_cpu() => (bandwidth::probe(3), "probe, best of 3"),
        device => (
            bandwidth::probe_device(&device, 5)?,
            "GPU device-to-device copy, read + written, best of 5",
        ),
    };
    probe_bar.finish_and_clear();
    bandwidth::reset_peak_rss();

    let load_start = Instant::now();
    let model = args.model.load()?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size;
    let bytes_per_token = model.decode_bytes_per_token();

    let mut tests = Vec::new();
    for &depth in &args.depth {
        tests.extend(args.n_prompt.iter().filter(|&&p| p > 0).map(|&tokens| Test {
            prompt: true,
            tokens,
            depth,
        }));
        tests.extend(args.n_gen.iter().filter(|&&n| n > 0).map(|&tokens| Test {
            prompt: false,
            tokens,
            depth,
        }));
    }
    for t in &tests {
        let needed = t.depth + t.tokens + 1;
        if needed > model.max_positions() {
            anyhow::bail!(
                "{}: needs {needed} positions, the model holds {}",
                t.name(),
                model.max_positions()
            );
        }
    }

    // Random prompt tokens, as llama-bench uses (a fixed seed: every run feeds the same ids).
    let mut state = args
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut random_ids = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % vocab as u64) as u32
            })
            .collect()
    };

    // Warm-up: a short prompt and a few decode steps (page in the weights, start the pools).
    {
        let mut cache = model.new_cache();
        let mut logits = model.feed(&random_ids(16), &mut cache)?;
        let mut sampler = Sampler::new(SamplingParams::greedy())?;
        for _ in 0..4 {
            let next = sampler.sample(&logits, &[]);
            logits = model.feed(&[next], &mut cache)?;
        }
    }

    let total = tests.len() as u64 * u64::from(args.repetitions);
    let run_bar = bar(total, "running");
    // Repetitions go round-robin over the tests (all tests once, then again), not test by test,
    // the deepest first in each round: on a shared machine the memory bandwidth drifts over
    // minutes, and a ratio of two tests (decode at depth over decode at 0) is only meaningful
    // if the drift hits both alike.
    let mut speeds = vec![Vec::new(); tests.len()];
    let mut first_token_ms = vec![Vec::new(); tests.len()];
    let depths: Vec<usize> = tests.iter().map(|t| t.depth).collect();
    for i in run_order(&depths, args.repetitions) {
        let test = &tests[i];
        run_bar.set_message(test.name());
        let mut cache = model.new_cache();
        // The depth, untimed: pieces as generation prefills them.
        let depth_ids = random_ids(test.depth);
        for piece in depth_ids.chunks(herd_engine::PREFILL_PIECE) {
            model.feed(piece, &mut cache)?;
        }
        if test.prompt {
            let ids = random_ids(test.tokens);
            let start = Instant::now();
            let mut logits = Vec::new();
            for piece in ids.chunks(herd_engine::PREFILL_PIECE) {
                logits = model.feed(piece, &mut cache)?;
            }
            let mut sampler = Sampler::new(SamplingParams::greedy())?;
            let _first = sampler.sample(&logits, &ids);
            let seconds = start.elapsed().as_secs_f64();
            speeds[i].push(test.tokens as f64 / seconds);
            first_token_ms[i].push(seconds * 1e3);
        } else {
            // As llama-bench's tg: one token at a time from the first, every step timed.
            let mut sampler = Sampler::new(SamplingParams::greedy())?;
            let mut next = random_ids(1)[0];
            let start = Instant::now();
            for _ in 0..test.tokens {
                let logits = model.feed(&[next], &mut cache)?;
                next = sampler.sample(&logits, &[]);
            }
            speeds[i].push(test.tokens as f64 / start.elapsed().as_secs_f64());
        }
        run_bar.inc(1);
    }
    let rows: Vec<_> = tests
        .iter()
        .zip(speeds.iter().zip(&first_token_ms))
        .map(|(test, (speeds, ttft))| (*test, mean_sd(speeds), mean_sd(ttft)))
        .collect();
    run_bar.finish_and_clear();
    let peak = peak_rss_bytes();

    let name = args.model.model.file_name().map_or_else(
        || args.model.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let quant = args
        .model
        .quant
        .map(|q| format!(" --quant {q}"))
        .unwrap_or_default();
    let precision = match model.matmul_precision() {
        herd_model::nn::MatmulPrecision::Highest => String::new(),
        p => format!(" --matmul-precision {p}"),
    };
    let isa = Isa::current();
    let mut results = Vec::new();
    if !args.json {
        println!(
            "model: {name}{quant}{precision} · weights {:.2} GB resident, {:.3} GB read per decoded token · device {} · {threads} threads · {isa} · load {load_seconds:.1} s",
            model.weight_bytes() as f64 / 1e9,
            bytes_per_token as f64 / 1e9,
            args.model.device,
        );
        println!(
            "memory bandwidth ({probe_name}): {:.1} GB/s · peak RSS {}",
            bandwidth / 1e9,
            peak.map_or("unknown".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
        );
        println!();
        println!(
            "| {:<16} | {:>18} | {:>12} | {:>15} |",
            "test", "t/s", "TTFT ms", "bandwidth use"
        );
        println!("| {:-<16} | {:->18} | {:->12} | {:->15} |", "", "", "", "");
    }
    for (test, (speed, sd), (ttft, ttft_sd)) in &rows {
        // Decode streams the active weights and the cache once per token (the cache's share
        // averaged over the test's positions); prefill is compute-bound.
        let use_fraction = (!test.prompt).then(|| {
            let cache: usize = (0..test.tokens)
                .map(|i| model.kv_bytes_read(test.depth + i))
                .sum();
            let per_token = bytes_per_token as f64 + cache as f64 / test.tokens.max(1) as f64;
            per_token * speed / bandwidth
        });
        if !args.json {
            println!(
                "| {:<16} | {:>18} | {:>12} | {:>15} |",
                test.name(),
                format!("{speed:.2} ± {sd:.2}"),
                if test.prompt {
                    format!("{ttft:.0} ± {ttft_sd:.0}")
                } else {
                    "—".into()
                },
                use_fraction.map_or("—".into(), |f| format!("{:.0} %", f * 100.0)),
            );
        }
        results.push(json!({
            "test": test.name(),
            "kind": if test.prompt { "pp" } else { "tg" },
            "n_tokens": test.tokens,
            "depth": test.depth,
            "tok_s": speed,
            "tok_s_sd": sd,
            "ttft_ms": test.prompt.then_some(*ttft),
            "bandwidth_use": use_fraction,
        }));
    }
    let line = json!({
        "bench": "herd",
        "model": name,
        "quant": args.model.quant.map(|q| q.to_string()),
        "dtype": format!("{:?}", model.dtype()).to_lowercase(),
        "kv_dtype": model.kv_format_stored().name(),
        "matmul_precision": model.matmul_precision().as_str(),
        // Threads and ISA are the CPU kernels'; on a GPU they only run the host's side.
        "device": args.model.device,
        "threads": threads,
        "isa": isa.name(),
        "repetitions": args.repetitions,
        "weight_bytes": model.weight_bytes(),
        "decode_bytes_per_token": bytes_per_token,
        "bandwidth_bytes_s": bandwidth,
        "peak_rss_bytes": peak,
        "load_s": load_seconds,
        "results": results,
    });
    if !args.json {
        println!();
    }
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn repetitions_go_round_robin_over_the_tests_deepest_first() {
        assert_eq!(super::run_order(&[0, 0, 0], 2), [0, 1, 2, 0, 1, 2]);
        // pp512, tg128, pp512 @ d8192, tg128 @ d8192, tg128 @ d4096.
        assert_eq!(
            super::run_order(&[0, 0, 8192, 8192, 4096], 2),
            [2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
        );
        assert!(super::run_order(&[0, 8192], 0).is_empty());
    }
}

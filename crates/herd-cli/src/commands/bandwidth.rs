//! A short memory-bandwidth probe: how fast this machine streams a buffer larger than its
//! caches on the kernels' threads — the bound on CPU decode speed, measured in the same run as
//! the benchmark that is compared with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bytes streamed per pass: past any last-level cache (this kind of machine reports 480 MiB).
const PROBE_BYTES: usize = 1 << 30;
/// Bytes each task reads.
const TASK_BYTES: usize = 1 << 20;

/// Best-of-`passes` read bandwidth in bytes per second.
pub fn probe(passes: usize) -> f64 {
    let words = PROBE_BYTES / 8;
    // Written once, so every page is real memory and not the shared zero page.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let sink = AtomicU64::new(0);
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        let chunks: Vec<&[u64]> = buffer.chunks(TASK_BYTES / 8).collect();
        candle_core::utils::barrier_pool().execute_chunked(chunks.len(), |range| {
            let mut acc = [0u64; 8];
            for chunk in &chunks[range] {
                for lane in chunk.chunks_exact(8) {
                    for (a, v) in acc.iter_mut().zip(lane) {
                        *a = a.wrapping_add(*v);
                    }
                }
            }
            sink.fetch_add(acc.iter().fold(0, |s, a| s.wrapping_add(*a)), Ordering::Relaxed);
        });
        let seconds = start.elapsed().as_secs_f64();
        best = best.max(PROBE_BYTES as f64 / seconds);
    }
    std::hint::black_box(sink.load(Ordering::Relaxed));
    best
}

/// Best-of-`passes` device-to-device copy bandwidth of a GPU in bytes per second, counting
/// bytes read plus bytes written (as NVIDIA and PyTorch report a copy's bandwidth).
pub fn probe_device(device: &candle_core::Device, passes: usize) -> candle_core::Result<f64> {
    let src = candle_core::Tensor::zeros(PROBE_BYTES / 4, candle_core::DType::F32, device)?;
    drop(src.copy()?);
    device.synchronize()?;
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        let dst = src.copy()?;
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        drop(dst);
        best = best.max(2.0 * PROBE_BYTES as f64 / seconds);
    }
    Ok(best)
}

/// Resets the process's peak resident set (`VmHWM`) to its current size, so a probe run before
/// loading a model does not count as the model's memory. Linux only; elsewhere a no-op.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

//! Opening a GPU for herd.

use candle_core::Device;

use crate::error::Result;

/// CUDA device `ordinal` (in a build without the `cuda` feature, candle's error saying so).
///
/// candle queues work on the calling thread's default stream, and cudarc records an event per
/// buffer per launch so that a buffer used from two streams (two threads) is ordered. That
/// bookkeeping is a few driver calls per launch, which a decode step pays dozens of times a
/// layer. `HERD_CUDA_EVENT_TRACKING=off` turns it off, for measuring what it costs: safe for
/// one thread doing everything (`herd generate`, `herd bench`), not for the server, whose
/// engine thread uses what the loading thread made.
pub fn cuda_device(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        if std::env::var("HERD_CUDA_EVENT_TRACKING").as_deref() == Ok("off") {
            // SAFETY: the variable's contract above: every use of this device's buffers is
            // on one thread, so one stream orders them all.
            unsafe { cuda.disable_event_tracking() };
        }
    }
    Ok(device)
}

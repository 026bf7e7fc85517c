//! Opening a GPU for herd.

use candle_core::Device;

use crate::error::Result;

/// CUDA device `ordinal`, set up as herd uses it: every kernel, copy and cuBLAS call goes on
/// the device's one stream, so ordering on that stream is all the synchronisation there is,
/// and cudarc's per-buffer event tracking (which guards buffers shared between streams, at a
/// few driver calls per buffer per launch) is turned off. In a build without the `cuda`
/// feature this is candle's error saying so.
pub fn cuda_device(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        // SAFETY: herd queues all work for this device on its one stream, and buffers are
        // freed stream-ordered, so no buffer is used or freed across streams.
        unsafe { cuda.disable_event_tracking() };
    }
    Ok(device)
}

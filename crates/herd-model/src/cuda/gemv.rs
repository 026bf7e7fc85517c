//! Launchers for `gemv.cu`: the decode-time matrix-vector products at the memory bound, plain
//! (`W [N, K]`) and indexed by an expert id read on the device (`W [E, N, K]`), so a MoE layer
//! routes without the host ever seeing the router's choice.

use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use half::bf16;

use crate::error::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gemv.ptx"));
const MODULE: &str = "herd_gemv";
/// Rows (warps) per block: `WARPS` in gemv.cu.
const WARPS: u32 = 4;

/// herd's CUDA kernels run unless `HERD_CUDA_KERNELS=off` (then cuBLAS through candle
/// everywhere: the slow twin, for A/B runs on the device).
pub fn kernels_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("HERD_CUDA_KERNELS").map_or(true, |v| v != "off"))
}

/// `y [R, N] = x [R, K] · W[e(r)]ᵀ`, W `[N, K]` (no `ids`) or `[E, N, K]` with `ids` u32 `[R]`
/// naming each row's matrix; accumulated in f32, y in x's dtype. `Ok(None)` where the kernels
/// don't apply (not CUDA, other dtypes, a strided weight): the caller takes candle's path.
pub fn gemv(w: &Tensor, x_rk: &Tensor, ids_r: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Device::Cuda(dev) = x_rk.device() else {
        return Ok(None);
    };
    if !kernels_enabled() || !w.is_contiguous() || !w.device().same_device(x_rk.device()) {
        return Ok(None);
    }
    let (r, k) = x_rk.dims2()?;
    let (n, k_w) = match (ids_r, w.dims()) {
        (None, &[n, k]) => (n, k),
        (Some(_), &[_, n, k]) => (n, k),
        _ => return Ok(None),
    };
    if k != k_w || r == 0 || n == 0 {
        return Ok(None);
    }
    let x_rk = x_rk.contiguous()?;
    let ids_r = match ids_r {
        Some(ids) if ids.dtype() != DType::U32 || ids.dims() != [r] => return Ok(None),
        Some(ids) => Some(ids.contiguous()?),
        None => None,
    };
    let y = match (w.dtype(), x_rk.dtype()) {
        (DType::BF16, DType::BF16) => launch::<bf16, bf16>(dev, w, &x_rk, ids_r.as_ref(), n, k, "bf16_bf16")?,
        (DType::BF16, DType::F32) => launch::<bf16, f32>(dev, w, &x_rk, ids_r.as_ref(), n, k, "bf16_f32")?,
        (DType::F32, DType::F32) => launch::<f32, f32>(dev, w, &x_rk, ids_r.as_ref(), n, k, "f32_f32")?,
        _ => return Ok(None),
    };
    Ok(Some(y))
}

fn launch<TW: CudaDType + DeviceRepr, TX: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    w: &Tensor,
    x_rk: &Tensor,
    ids_r: Option<&Tensor>,
    n: usize,
    k: usize,
    suffix: &str,
) -> Result<Tensor> {
    let r = x_rk.dim(0)?;
    let (w_storage, w_layout) = w.storage_and_layout();
    let (x_storage, x_layout) = x_rk.storage_and_layout();
    let (Storage::Cuda(w_cuda), Storage::Cuda(x_cuda)) = (&*w_storage, &*x_storage) else {
        return Err(candle_core::Error::Msg("gemv: tensors not on the GPU".into()).into());
    };
    let w_slice = w_cuda.as_cuda_slice::<TW>()?.slice(w_layout.start_offset()..);
    let x_slice = x_cuda.as_cuda_slice::<TX>()?.slice(x_layout.start_offset()..);
    // The 16-byte loads need 8-element rows starting on 16-byte boundaries.
    let aligned = |offset: usize, size: usize| (offset * size).is_multiple_of(16);
    let vector = k.is_multiple_of(8)
        && aligned(w_layout.start_offset(), std::mem::size_of::<TW>())
        && aligned(x_layout.start_offset(), std::mem::size_of::<TX>());
    let name = match (ids_r.is_some(), vector) {
        (false, true) => format!("gemv_{suffix}"),
        (false, false) => format!("gemv_scalar_{suffix}"),
        (true, true) => format!("moe_gemv_{suffix}"),
        (true, false) => format!("moe_gemv_scalar_{suffix}"),
    };
    let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    // SAFETY: every element is written by the kernel before it is read.
    let mut y = unsafe { dev.alloc::<TX>(r * n)? };
    let (n_i32, k_i32) = (to_i32(n)?, to_i32(k)?);
    let ids_storage = ids_r.map(|t| t.storage_and_layout());
    let cfg = LaunchConfig {
        grid_dim: (to_u32(n.div_ceil(WARPS as usize))?, to_u32(r)?, 1),
        block_dim: (32 * WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&w_slice);
    builder.arg(&x_slice);
    // A null pointer where no ids: the plain kernels never read it.
    let null: u64 = 0;
    let ids_slice;
    match &ids_storage {
        Some((storage, layout)) => {
            let Storage::Cuda(ids_cuda) = &**storage else {
                return Err(candle_core::Error::Msg("gemv: ids not on the GPU".into()).into());
            };
            ids_slice = ids_cuda.as_cuda_slice::<u32>()?.slice(layout.start_offset()..);
            builder.arg(&ids_slice);
        }
        None => {
            builder.arg(&null);
        }
    }
    // Mutably: cudarc records a write event on y, so a reader on another stream waits for it.
    builder.arg(&mut y);
    builder.arg(&n_i32);
    builder.arg(&k_i32);
    // SAFETY: the kernel reads W [E or 1, n, k], x [r, k] and ids [r] (each id < E: the
    // router's top-k indices) and writes y [r, n], all allocated at those sizes.
    unsafe { builder.launch(cfg) }.w()?;
    drop(builder);
    let y = CudaStorage::wrap_cuda_slice(y, dev.clone());
    Ok(Tensor::from_storage(
        Storage::Cuda(y),
        (r, n),
        BackpropOp::none(),
        false,
    ))
}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("gemv: dimension {v} over i32")).into())
}

fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("gemv: grid {v} over u32")).into())
}

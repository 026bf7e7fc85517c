//! A block-quantized matrix held on a GPU in its GGUF bytes (every [`QuantType`]), so
//! a quantized file takes the same memory there as on disk. Products run on candle's CUDA
//! kernels: llama.cpp's integer matrix-vector and matrix-matrix kernels for up to eight rows,
//! dequantize-then-cuBLAS beyond.

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::Result;
use crate::weights::{QuantTensor, QuantType};

pub struct DeviceQuantTensor {
    ty: QuantType,
    rows: usize,
    cols: usize,
    stored_bytes: usize,
    device: Device,
    matmul: QMatMul,
}

impl std::fmt::Debug for DeviceQuantTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceQuantTensor[{}; {}×{}]", self.ty, self.rows, self.cols)
    }
}

impl DeviceQuantTensor {
    /// The same blocks, copied to `device` unchanged.
    pub fn upload(q: &QuantTensor, device: &Device) -> Result<Self> {
        let Some(dtype) = q.quant_type().ggml() else {
            return Err(crate::error::Error::Quantization {
                name: format!("{q:?}"),
                message: format!(
                    "candle has no GPU kernel for {}: run this file on the CPU (--device cpu)",
                    q.quant_type()
                ),
            });
        };
        let storage = QStorage::from_data(Cow::Borrowed(q.bytes()), device, dtype)?;
        let tensor = QTensor::new(storage, (q.rows(), q.cols()))?;
        Ok(DeviceQuantTensor {
            ty: q.quant_type(),
            rows: q.rows(),
            cols: q.cols(),
            stored_bytes: q.stored_bytes(),
            device: device.clone(),
            matmul: QMatMul::from_qtensor(tensor)?,
        })
    }

    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// x [..., cols] → [..., rows] in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let rows_in = x.elem_count() / self.cols.max(1);
        let x2 = x.reshape((rows_in, self.cols))?;
        // candle's kernels take f32, f16 or bf16 activations; anything else goes through f32.
        let x2 = match x2.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => x2,
            _ => x2.to_dtype(DType::F32)?,
        };
        let y = self.matmul.forward(&x2)?.to_dtype(x.dtype())?;
        if let Some(last) = dims.last_mut() {
            *last = self.rows;
        }
        Ok(y.reshape(dims)?)
    }

    /// The weight [rows, cols] as f32 on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let w = match &self.matmul {
            QMatMul::QTensor(q) => q.dequantize(device)?,
            QMatMul::Tensor(w) | QMatMul::TensorF16(w) => w.to_device(device)?,
        };
        Ok(w.to_dtype(DType::F32)?)
    }
}

//! A low-rank update beside a frozen weight — a LoRA adapter applied without merging:
//! `y = W x + s · B (A x)`, A [r, in], B [out, r], in f32. Kept apart from W so a quantized
//! or bf16 base stays exactly as stored and the update keeps full precision.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct LowRank {
    /// [r, in]
    a: Tensor,
    /// [out, r]
    b: Tensor,
    scaling: f64,
}

impl LowRank {
    pub fn new(a: Tensor, b: Tensor, scaling: f64) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            return Err(Error::Kernel(format!(
                "low-rank factors disagree on the rank: A has {r} rows, B has {rb} columns"
            )));
        }
        Ok(LowRank {
            a: a.to_dtype(DType::F32)?,
            b: b.to_dtype(DType::F32)?,
            scaling,
        })
    }

    /// The same update on `device` (where its base weight lives).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(LowRank {
            a: self.a.to_device(device)?,
            b: self.b.to_device(device)?,
            scaling: self.scaling,
        })
    }

    /// (out, in)
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok((self.b.dims2()?.0, self.a.dims2()?.1))
    }

    /// x: [..., in] → the update [..., out], in x's dtype (computed in f32).
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let y = x32
            .broadcast_matmul(&self.a.t()?)?
            .broadcast_matmul(&self.b.t()?)?;
        Ok((y * self.scaling)?.to_dtype(x.dtype())?)
    }

    /// grad_y [..., out] → grad_y · s·B A [..., in] (the update's share of the input gradient).
    pub fn backward(&self, grad_y: &Tensor) -> Result<Tensor> {
        let g = grad_y.to_dtype(DType::F32)?;
        let y = g.broadcast_matmul(&self.b)?.broadcast_matmul(&self.a)?;
        Ok((y * self.scaling)?.to_dtype(grad_y.dtype())?)
    }

    /// s · B A: [out, in] in f32.
    pub fn weight_f32(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scaling)?)
    }

    pub fn stored_bytes(&self) -> usize {
        (self.a.elem_count() + self.b.elem_count()) * 4
    }
}

//! Block-quantized weights in llama.cpp's ggml layouts (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS), kept quantized in memory. The blocks are candle's
//! `k_quants` types, whose byte layout is ggml's, so a GGUF tensor's bytes are read straight
//! into them and written straight back out; the i-quants, which candle lacks, are kept as the
//! bytes read ([`super::iquant`]).
//!
//! A [`QuantTensor`] is a row-major matrix `[rows, cols]`; each row is `cols / block_len` blocks.
//! Its product [`QuantTensor::matmul_t`] quantizes the activations to the format's dot-product
//! type (Q8_0 / Q8_K), as llama.cpp does; [`QuantTensor::dequantize`] is the plain reference.

use std::fmt;
use std::sync::Mutex;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
    GgmlType,
};
use candle_core::quantized::{GgmlDType, QuantizedType};
use candle_core::CpuStorage;

use super::{iquant, kquant};
use crate::error::{Error, Result};

/// The block formats herd reads and computes with: every ggml type that llama-quantize's
/// Q2_K … Q8_0, legacy Q4_0 … Q5_1, IQ4_NL and IQ4_XS files hold. The other i-quants
/// (IQ1_S … IQ3_S) are not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Iq4Nl,
    Iq4Xs,
}

impl QuantType {
    pub const ALL: [QuantType; 12] = [
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::Iq4Nl,
        Self::Iq4Xs,
    ];

    /// The formats herd also writes (`--quant`, `herd quantize`): those whose quantizers are
    /// llama.cpp's reference ones (Q4_K, Q5_K, Q6_K byte for byte with `llama-quantize`). The
    /// others are read from files and computed, never made.
    pub const WRITABLE: [QuantType; 5] = [Self::Q8_0, Self::Q4_0, Self::Q4K, Self::Q5K, Self::Q6K];

    pub fn writable(self) -> bool {
        Self::WRITABLE.contains(&self)
    }

    /// ggml's type id (the number in a GGUF tensor header).
    pub fn ggml_type_id(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Iq4Nl => 20,
            Self::Iq4Xs => 23,
        }
    }

    pub fn from_ggml_type_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_type_id() == id)
    }

    /// candle's name for the format, if candle has its blocks (not the i-quants).
    pub fn ggml(self) -> Option<GgmlDType> {
        Some(match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q2K => GgmlDType::Q2K,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
            Self::Iq4Nl | Self::Iq4Xs => return None,
        })
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Iq4Nl => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K | Self::Iq4Xs => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            Self::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            Self::Q4_1 => std::mem::size_of::<BlockQ4_1>(),
            Self::Q5_0 => std::mem::size_of::<BlockQ5_0>(),
            Self::Q5_1 => std::mem::size_of::<BlockQ5_1>(),
            Self::Q2K => std::mem::size_of::<BlockQ2K>(),
            Self::Q3K => std::mem::size_of::<BlockQ3K>(),
            Self::Q4K => std::mem::size_of::<BlockQ4K>(),
            Self::Q5K => std::mem::size_of::<BlockQ5K>(),
            Self::Q6K => std::mem::size_of::<BlockQ6K>(),
            Self::Iq4Nl => 18,
            Self::Iq4Xs => 136,
        }
    }

    /// Stored bytes of a `[rows, cols]` matrix, or `None` if a row is not whole blocks.
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        rows.checked_mul(cols / self.block_len())?
            .checked_mul(self.block_bytes())
    }

    /// The name llama.cpp prints (`Q8_0`, `Q4_K`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Iq4Nl => "IQ4_NL",
            Self::Iq4Xs => "IQ4_XS",
        }
    }

    /// Parses `q8_0`, `Q4_K`, `q6k`, … (case and underscore insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        let key: String = text
            .chars()
            .filter(|c| *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name().replace('_', "").to_ascii_lowercase() == key)
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quantized `[rows, cols]` matrix (for a linear layer: `[out, in]`, as nn.Linear stores it).
pub struct QuantTensor {
    ty: QuantType,
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

/// Where a matrix's blocks live: candle's block vectors for the formats candle knows (its
/// dequantizers and kernels serve them), plain bytes for the i-quants, which herd computes on
/// its own.
enum Blocks {
    Candle(Box<dyn QuantizedType>),
    Bytes(Vec<u8>),
}

impl fmt::Debug for QuantTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuantTensor[{}; {}×{}]", self.ty, self.rows, self.cols)
    }
}

impl QuantTensor {
    /// Builds the matrix from its stored bytes, filled by `read` (e.g. a file read), with no
    /// intermediate copy.
    pub fn read_with(
        ty: QuantType,
        rows: usize,
        cols: usize,
        name: &str,
        read: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Self> {
        let n_blocks = Self::n_blocks(ty, rows, cols, name)?;
        let blocks = match ty {
            QuantType::Q8_0 => read_blocks::<BlockQ8_0>(n_blocks, read)?,
            QuantType::Q4_0 => read_blocks::<BlockQ4_0>(n_blocks, read)?,
            QuantType::Q4_1 => read_blocks::<BlockQ4_1>(n_blocks, read)?,
            QuantType::Q5_0 => read_blocks::<BlockQ5_0>(n_blocks, read)?,
            QuantType::Q5_1 => read_blocks::<BlockQ5_1>(n_blocks, read)?,
            QuantType::Q2K => read_blocks::<BlockQ2K>(n_blocks, read)?,
            QuantType::Q3K => read_blocks::<BlockQ3K>(n_blocks, read)?,
            QuantType::Q4K => read_blocks::<BlockQ4K>(n_blocks, read)?,
            QuantType::Q5K => read_blocks::<BlockQ5K>(n_blocks, read)?,
            QuantType::Q6K => read_blocks::<BlockQ6K>(n_blocks, read)?,
            QuantType::Iq4Nl | QuantType::Iq4Xs => {
                let mut bytes = vec![0u8; n_blocks * ty.block_bytes()];
                read(&mut bytes)?;
                Blocks::Bytes(bytes)
            }
        };
        Ok(QuantTensor {
            ty,
            rows,
            cols,
            blocks,
        })
    }

    /// Quantizes a matrix a slab of rows at a time: `fill(first_row, values)` writes rows
    /// `first_row ..` as f32 into `values` (whose length is a whole number of rows). Only one slab
    /// is ever widened to f32, so quantizing an embedding table costs its quantized size plus
    /// one slab, not its f32 size. Only [`QuantType::WRITABLE`] formats: the others are an error.
    pub fn quantize_with(
        ty: QuantType,
        rows: usize,
        cols: usize,
        name: &str,
        fill: impl FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<Self> {
        let n_blocks = Self::n_blocks(ty, rows, cols, name)?;
        let blocks = match ty {
            QuantType::Q8_0 => {
                quantize_blocks::<BlockQ8_0>(n_blocks, rows, cols, fill, BlockQ8_0::from_float)?
            }
            QuantType::Q4_0 => {
                quantize_blocks::<BlockQ4_0>(n_blocks, rows, cols, fill, BlockQ4_0::from_float)?
            }
            QuantType::Q4K => quantize_blocks::<BlockQ4K>(n_blocks, rows, cols, fill, |x, b| {
                kquant::quantize_q4_k(x, block_bytes_mut(b))
            })?,
            QuantType::Q5K => quantize_blocks::<BlockQ5K>(n_blocks, rows, cols, fill, |x, b| {
                kquant::quantize_q5_k(x, block_bytes_mut(b))
            })?,
            QuantType::Q6K => quantize_blocks::<BlockQ6K>(n_blocks, rows, cols, fill, |x, b| {
                kquant::quantize_q6_k(x, block_bytes_mut(b))
            })?,
            QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::Q2K
            | QuantType::Q3K
            | QuantType::Iq4Nl
            | QuantType::Iq4Xs => {
                return Err(Error::Quantization {
                    name: name.to_string(),
                    message: format!(
                        "herd reads {ty} files but does not write {ty} (it writes {})",
                        QuantType::WRITABLE.map(QuantType::name).join(", ")
                    ),
                })
            }
        };
        Ok(QuantTensor {
            ty,
            rows,
            cols,
            blocks,
        })
    }

    /// Quantizes a row-major f32 matrix with llama.cpp's reference quantizers (Q4_K, Q5_K, Q6_K:
    /// herd's port of ggml's current `quantize_row_*_ref`, byte-identical to `llama-quantize`
    /// without an importance matrix; Q8_0, Q4_0: candle's ports).
    pub fn quantize(ty: QuantType, rows: usize, cols: usize, values: &[f32], name: &str) -> Result<Self> {
        Self::n_blocks(ty, rows, cols, name)?;
        if values.len() != rows * cols {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: vec![rows, cols],
                actual: vec![values.len()],
            });
        }
        Self::quantize_with(ty, rows, cols, name, |first, slab| {
            let start = first * cols;
            slab.copy_from_slice(&values[start..start + slab.len()]);
            Ok(())
        })
    }

    fn n_blocks(ty: QuantType, rows: usize, cols: usize, name: &str) -> Result<usize> {
        if !cols.is_multiple_of(ty.block_len()) || cols == 0 {
            return Err(Error::Quantization {
                name: name.to_string(),
                message: format!(
                    "rows of {cols} values are not whole {ty} blocks of {}",
                    ty.block_len()
                ),
            });
        }
        rows.checked_mul(cols / ty.block_len())
            .ok_or_else(|| Error::Quantization {
                name: name.to_string(),
                message: format!("{rows}×{cols} overflows"),
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

    /// The stored bytes, exactly as a GGUF holds them.
    pub fn bytes(&self) -> &[u8] {
        match &self.blocks {
            // SAFETY: `as_ptr` points at the block vector's storage, which holds exactly
            // `storage_size_in_bytes` initialised bytes and lives as long as `self`.
            Blocks::Candle(b) => unsafe { std::slice::from_raw_parts(b.as_ptr(), b.storage_size_in_bytes()) },
            Blocks::Bytes(b) => b,
        }
    }

    pub fn stored_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Candle(b) => b.storage_size_in_bytes(),
            Blocks::Bytes(b) => b.len(),
        }
    }

    /// `x Wᵀ`: x is row-major [T, cols] f32 → [T, rows] f32. Q4_K and Q6_K on AVX-512 VNNI
    /// below AMX take the integer panel kernel from a few rows ([`crate::kernels::quant_gemm`]);
    /// otherwise many rows take dequantized panels ([`crate::kernels::quant_matmul`]) and few
    /// rows the per-token integer dots.
    pub fn matmul_t(&self, x: &[f32], t: usize) -> Result<Vec<f32>> {
        if x.len() != t * self.cols {
            return Err(Error::Quantization {
                name: format!("{self:?}"),
                message: format!("input of {} values is not {t} rows of {}", x.len(), self.cols),
            });
        }
        let isa = crate::kernels::isa::Isa::current();
        if crate::kernels::quant_gemm::applies(isa, self.ty)
            && t >= crate::kernels::quant_gemm::min_rows(self.ty)
        {
            return Ok(crate::kernels::quant_gemm::matmul_t(
                self.ty,
                self.bytes(),
                self.rows,
                self.cols,
                x,
                t,
            ));
        }
        if t >= crate::kernels::quant_matmul::panel_min_rows(isa) {
            return Ok(crate::kernels::quant_matmul::matmul_t_panels(self, x, t));
        }
        if crate::kernels::quant_dot::supports(self.ty) {
            return Ok(crate::kernels::quant_matmul::matmul_t(
                self.ty,
                self.bytes(),
                self.rows,
                self.cols,
                x,
                t,
            ));
        }
        self.matmul_t_candle(x, t)
    }

    /// `x Wᵀ` through candle's k_quants (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K and Q5_K, which herd
    /// has no kernel of its own for; and the comparison point for those it has). Their
    /// activations are quantized as llama.cpp's are: Q8_0 for Q4_0 / Q5_0, Q8_1 for Q4_1 / Q5_1,
    /// Q8_K for the K formats.
    pub fn matmul_t_candle(&self, x: &[f32], t: usize) -> Result<Vec<f32>> {
        if x.len() != t * self.cols {
            return Err(Error::Quantization {
                name: format!("{self:?}"),
                message: format!("input of {} values is not {t} rows of {}", x.len(), self.cols),
            });
        }
        let Blocks::Candle(blocks) = &self.blocks else {
            return Err(Error::Quantization {
                name: format!("{self:?}"),
                message: format!("candle has no kernel for {}", self.ty),
            });
        };
        let mut out = vec![0f32; t * self.rows];
        if t > 0 {
            blocks.matmul_t((t, self.cols, self.rows), x, &mut out)?;
        }
        Ok(out)
    }

    /// Rows `start .. start + out.len() / cols` dequantized into `out` (f32, row-major).
    ///
    /// # Panics
    /// If the rows are out of range or `out` is not whole rows.
    pub fn dequantize_rows_into(&self, start: usize, out: &mut [f32]) {
        let n = out.len() / self.cols.max(1);
        assert_eq!(out.len(), n * self.cols);
        assert!(start + n <= self.rows);
        let row_bytes = self.stored_bytes() / self.rows.max(1);
        let bytes = &self.bytes()[start * row_bytes..(start + n) * row_bytes];
        match self.ty {
            QuantType::Q8_0 => BlockQ8_0::to_float(typed(bytes), out),
            QuantType::Q4_0 => BlockQ4_0::to_float(typed(bytes), out),
            QuantType::Q4_1 => BlockQ4_1::to_float(typed(bytes), out),
            QuantType::Q5_0 => BlockQ5_0::to_float(typed(bytes), out),
            QuantType::Q5_1 => BlockQ5_1::to_float(typed(bytes), out),
            QuantType::Q2K => BlockQ2K::to_float(typed(bytes), out),
            QuantType::Q3K => BlockQ3K::to_float(typed(bytes), out),
            QuantType::Q4K => BlockQ4K::to_float(typed(bytes), out),
            QuantType::Q5K => BlockQ5K::to_float(typed(bytes), out),
            QuantType::Q6K => BlockQ6K::to_float(typed(bytes), out),
            QuantType::Iq4Nl | QuantType::Iq4Xs => iquant::dequantize(self.ty, bytes, out),
        }
    }

    /// The whole matrix in f32, row-major (the slow twin's weight).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let blocks = match &self.blocks {
            Blocks::Candle(blocks) => blocks,
            Blocks::Bytes(bytes) => {
                let mut out = vec![0f32; self.rows * self.cols];
                iquant::dequantize(self.ty, bytes, &mut out);
                return Ok(out);
            }
        };
        match blocks.dequantize(self.rows * self.cols)? {
            CpuStorage::F32(v) => Ok(v),
            other => Err(Error::Quantization {
                name: format!("{self:?}"),
                message: format!(
                    "dequantized to {:?}, expected f32",
                    candle_core::backend::BackendStorage::dtype(&other)
                ),
            }),
        }
    }

    /// Rows `ids` in f32, [ids.len(), cols] row-major: an embedding lookup that dequantizes only
    /// the rows it needs.
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let blocks = match &self.blocks {
            Blocks::Candle(blocks) => blocks,
            Blocks::Bytes(_) => {
                let mut out = vec![0f32; ids.len() * self.cols];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.cols.max(1))) {
                    if id as usize >= self.rows {
                        return Err(Error::Quantization {
                            name: format!("{self:?}"),
                            message: format!("row {id} of {}", self.rows),
                        });
                    }
                    self.dequantize_rows_into(id as usize, row);
                }
                return Ok(out);
            }
        };
        match blocks.embedding(ids, self.rows, self.cols)? {
            CpuStorage::F32(v) => Ok(v),
            other => Err(Error::Quantization {
                name: format!("{self:?}"),
                message: format!(
                    "rows came back as {:?}, expected f32",
                    candle_core::backend::BackendStorage::dtype(&other)
                ),
            }),
        }
    }

    /// The rows `range` as their own matrix (a GGUF stacks every expert in one tensor).
    pub fn slice_rows(&self, start: usize, n: usize, name: &str) -> Result<Self> {
        let row_bytes = self.stored_bytes() / self.rows.max(1);
        let bytes = self
            .bytes()
            .get(start * row_bytes..(start + n) * row_bytes)
            .ok_or_else(|| Error::Quantization {
                name: name.to_string(),
                message: format!("rows {start}..{} of {}", start + n, self.rows),
            })?;
        Self::read_with(self.ty, n, self.cols, name, |dst| {
            dst.copy_from_slice(bytes);
            Ok(())
        })
    }
}

/// Rows per slab in [`QuantTensor::quantize_with`]: (at most) 16 MiB of f32.
pub const SLAB_VALUES: usize = 1 << 22;

fn quantize_blocks<T: GgmlType + 'static>(
    n_blocks: usize,
    rows: usize,
    cols: usize,
    mut fill: impl FnMut(usize, &mut [f32]) -> Result<()>,
    encode: impl Fn(&[f32], &mut [T]) + Sync,
) -> Result<Blocks> {
    let mut blocks: Vec<T> = vec![T::zeros(); n_blocks];
    let blocks_per_row = n_blocks / rows.max(1);
    let slab_rows = (SLAB_VALUES / cols.max(1)).max(1);
    let mut values = vec![0f32; slab_rows.min(rows) * cols];
    let mut first = 0;
    while first < rows {
        let n = slab_rows.min(rows - first);
        let slab = &mut values[..n * cols];
        fill(first, slab)?;
        encode_in_parallel(
            slab,
            &mut blocks[first * blocks_per_row..(first + n) * blocks_per_row],
            cols,
            blocks_per_row,
            &encode,
        );
        first += n;
    }
    Ok(Blocks::Candle(Box::new(blocks)))
}

/// Values per task when a slab is encoded across threads.
const TASK_VALUES: usize = 1 << 16;

/// `encode(values, blocks)` over runs of whole rows on the kernels' thread pool. Every block
/// depends only on its own values, so the bytes are those of one serial call (the quantizers
/// were the whole of `herd quantize`'s time, on one core).
fn encode_in_parallel<T: GgmlType>(
    values: &[f32],
    blocks: &mut [T],
    cols: usize,
    blocks_per_row: usize,
    encode: &(impl Fn(&[f32], &mut [T]) + Sync),
) {
    let rows_per_task = (TASK_VALUES / cols.max(1)).max(1);
    let tasks: Vec<Mutex<(&[f32], &mut [T])>> = values
        .chunks(rows_per_task * cols.max(1))
        .zip(blocks.chunks_mut(rows_per_task * blocks_per_row.max(1)))
        .map(Mutex::new)
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(tasks.len(), |range| {
        for i in range {
            // Each task's lock is taken once, by the one thread that runs it.
            let Ok(mut task) = tasks[i].lock() else { continue };
            let (values, blocks) = &mut *task;
            encode(values, blocks);
        }
    });
}

fn read_blocks<T: GgmlType + 'static>(
    n_blocks: usize,
    read: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<Blocks> {
    let mut blocks: Vec<T> = vec![T::zeros(); n_blocks];
    read(block_bytes_mut(&mut blocks))?;
    Ok(Blocks::Candle(Box::new(blocks)))
}

/// Stored bytes back as the blocks they hold.
///
/// # Panics
/// If `bytes` is not aligned for `T` or not whole blocks (never, for bytes of a [`QuantTensor`]:
/// they are a `Vec<T>`'s storage).
fn typed<T: GgmlType>(bytes: &[u8]) -> &[T] {
    assert!(bytes.as_ptr().cast::<T>().is_aligned() && bytes.len().is_multiple_of(std::mem::size_of::<T>()));
    // SAFETY: aligned and whole blocks (asserted); ggml blocks are plain integers and f16 with
    // no padding, so any bytes are a valid value; the borrow keeps the storage alive.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / std::mem::size_of::<T>()) }
}

/// The bytes of a slice of ggml blocks, as a GGUF stores them.
fn block_bytes_mut<T: GgmlType>(blocks: &mut [T]) -> &mut [u8] {
    // SAFETY: ggml block types are `#[repr(C)]` structs of integers and f16 with no padding
    // (their sizes are ggml's type sizes), so every byte pattern is a valid value and the
    // slice's storage is exactly `len * size_of::<T>()` initialised bytes, borrowed mutably
    // for the returned lifetime.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) }
}

//! One `.safetensors` file: the JSON header parsed and checked against the file's length, tensor
//! data read on demand with positioned reads straight into the buffer the tensor will own.
//!
//! Deviation from mmap loading: candle's CPU tensors own their memory, so a mapped file would
//! be copied anyway and both copies would count as resident while loading. Reading each tensor
//! into its final buffer keeps the peak at the size of the weights.

// Parses untrusted bytes: no unchecked indexing or arithmetic (a bad header must not panic).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Headers larger than this are refused (real ones are a few MB at most).
const MAX_HEADER_BYTES: u64 = 100 << 20;

pub const DENSE_DTYPES: &str = "f32, bf16 and f16 safetensors";

#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// safetensors' spelling: `BF16`, `F32`, `F8_E4M3`, …
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn n_bytes(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    tensors: BTreeMap<String, TensorInfo>,
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

fn element_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        // Regular files only, checked on the open descriptor (a FIFO would block).
        let file = herd_limits::open_regular(path)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact_at(&mut len_bytes, 0)
            .map_err(|_| bad("shorter than a safetensors header".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
            return Err(bad(format!(
                "header length {header_len} does not fit a file of {file_len} bytes"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(io)?;
        let raw: crate::json_file::UniqueMap<serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let data_start = header_len.saturating_add(8);
        let mut tensors = BTreeMap::new();
        for (name, value) in raw.0 {
            if name == "__metadata__" {
                continue;
            }
            let info: RawInfo = serde_json::from_value(value)
                .map_err(|e| bad(format!("tensor `{name}`: malformed entry: {e}")))?;
            let (lo, hi) = info.data_offsets;
            let elem = element_bytes(&info.dtype)
                .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype {}", info.dtype)))?;
            let numel = info
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                .and_then(|n| n.checked_mul(elem));
            let end = data_start.checked_add(hi);
            match (numel, end) {
                (Some(n), Some(end)) if hi.checked_sub(lo) == Some(n) && end <= file_len => {
                    tensors.insert(
                        name,
                        TensorInfo {
                            dtype: info.dtype,
                            shape: info.shape,
                            start: data_start.saturating_add(lo),
                            end,
                        },
                    );
                }
                _ => {
                    return Err(bad(format!(
                        "tensor `{name}` ({} {:?}) has data offsets {lo}..{hi}, which do not match its \
                         size or lie beyond the end of the file ({file_len} bytes)",
                        info.dtype, info.shape
                    )))
                }
            }
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Reads the tensor's bytes into `dst` (whose length must be the tensor's byte size).
    pub fn read_bytes(&self, info: &TensorInfo, dst: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(dst, info.start)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The tensor in its stored dtype (f32, bf16 or f16), on the CPU.
    pub fn read_dense(&self, name: &str, info: &TensorInfo) -> Result<Tensor> {
        let shape = info.shape.clone();
        let numel: usize = shape.iter().product();
        Ok(match info.dtype.as_str() {
            "F32" => Tensor::from_vec(self.read_plain::<f32>(info, numel)?, shape, &Device::Cpu)?,
            "BF16" => Tensor::from_vec(self.read_plain::<bf16>(info, numel)?, shape, &Device::Cpu)?,
            "F16" => Tensor::from_vec(self.read_plain::<f16>(info, numel)?, shape, &Device::Cpu)?,
            other => {
                return Err(Error::TensorDtype {
                    name: name.to_string(),
                    dtype: other.to_string(),
                    supported: DENSE_DTYPES,
                })
            }
        })
    }

    /// Rows `start .. start + n` of the tensor seen as `[rows, cols]` (`cols` its last
    /// dimension; for a 3-D tensor, the first two dims flattened), read directly from the file.
    pub fn read_rows(&self, name: &str, info: &TensorInfo, start: usize, n: usize) -> Result<Tensor> {
        let cols = info.shape.last().copied().unwrap_or(1);
        let rows: usize = info.shape.iter().rev().skip(1).product();
        let elem = element_bytes(&info.dtype).unwrap_or(1);
        let out_of_range = || Error::Checkpoint {
            path: self.path.clone(),
            message: format!("tensor `{name}`: rows {start}..{start}+{n} of {rows}"),
        };
        let stop = start
            .checked_add(n)
            .filter(|&stop| stop <= rows)
            .ok_or_else(out_of_range)?;
        // Within the validated tensor, so none of these overflow; checked anyway.
        let row_bytes = (cols as u64).checked_mul(elem).ok_or_else(out_of_range)?;
        let offset = |row: usize| {
            (row as u64)
                .checked_mul(row_bytes)
                .and_then(|b| b.checked_add(info.start))
                .ok_or_else(out_of_range)
        };
        let part = TensorInfo {
            dtype: info.dtype.clone(),
            shape: vec![n, cols],
            start: offset(start)?,
            end: offset(stop)?,
        };
        self.read_dense(name, &part)
    }

    fn read_plain<T: Plain>(&self, info: &TensorInfo, numel: usize) -> Result<Vec<T>> {
        let mut values = vec![T::ZERO; numel];
        self.read_bytes(info, as_bytes_mut(&mut values))?;
        Ok(values)
    }
}

/// Little-endian plain-old-data element types: any byte pattern is a valid value.
pub trait Plain: Copy {
    const ZERO: Self;
}
impl Plain for f32 {
    const ZERO: Self = 0.0;
}
impl Plain for bf16 {
    const ZERO: Self = bf16::ZERO;
}
impl Plain for f16 {
    const ZERO: Self = f16::ZERO;
}
impl Plain for u8 {
    const ZERO: Self = 0;
}

pub fn as_bytes_mut<T: Plain>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: `Plain` types have no padding and accept every bit pattern; the byte slice covers
    // exactly the values' memory and borrows it mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// A stored dtype as candle names it, if candle computes with it.
pub fn dense_dtype(safetensors_dtype: &str) -> Option<DType> {
    match safetensors_dtype {
        "F32" => Some(DType::F32),
        "BF16" => Some(DType::BF16),
        "F16" => Some(DType::F16),
        _ => None,
    }
}

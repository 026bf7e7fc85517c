//! GGUF files (llama.cpp's format, versions 2 and 3): the header's metadata and tensor table
//! parsed with bounds on every count and length, tensor data read on demand into the buffer
//! the tensor keeps. Split files (`name-00001-of-00003.gguf`) open as one.
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64; metadata entries
//! (key string, type u32, value); tensor entries (name, n_dims u32, dims u64 × n_dims in ggml
//! order — `ne0`, the contiguous axis, first —, type u32, offset u64 relative to the data
//! section); the data section starts at the header's end rounded up to `general.alignment`
//! (default 32). All integers little-endian; strings are a u64 length and UTF-8 bytes.

// Parses untrusted bytes: no unchecked indexing or arithmetic (a bad header must not panic).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use half::{bf16, f16};

use super::quant::{QuantTensor, QuantType};
use super::safetensors::{as_bytes_mut, Plain};
use super::source::Stored;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bounds that no real file comes near; they stop a corrupt count from allocating gigabytes.
const MAX_STRING_BYTES: u64 = 64 << 20;
/// Array items in all of a file's metadata together (one array's bound too). Each item is a
/// [`Value`] of 32 bytes however few bytes it takes in the file (a bool takes one): a bound
/// per array alone let 64 arrays of 2²⁶ bools be 128 GiB from a 4 GiB header. Llama 4's
/// vocabulary, merges and token types are about a million.
const MAX_METADATA_ITEMS: u64 = 1 << 23;
const MAX_ENTRIES: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;

pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type as u64 (negative → None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// ggml's element types: (id, name, values per block, bytes per block).
const GGML_TYPES: [(u32, &str, u64, u64); 31] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
];

/// ggml's name for a type id (`Q4_K`, `IQ2_XXS`, `type 99` when unknown).
pub fn ggml_type_name(id: u32) -> String {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map_or_else(|| format!("type {id}"), |t| t.1.to_string())
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml order: `dims[0]` is the contiguous axis.
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    /// Which file of a split set holds it.
    pub file: usize,
    /// Absolute byte offset in that file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order: ggml's dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

#[derive(Debug)]
pub struct GgufFile {
    paths: Vec<PathBuf>,
    files: Vec<File>,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl GgufFile {
    /// Opens `path`; for `…-00001-of-0000N.gguf` opens all N parts.
    pub fn open(path: &Path) -> Result<Self> {
        let paths = split_paths(path)?;
        let mut merged: Option<GgufFile> = None;
        for (i, part) in paths.iter().enumerate() {
            let one = read_one(part, i)?;
            match &mut merged {
                None => merged = Some(one),
                Some(m) => {
                    for (name, info) in one.tensors {
                        if m.tensors.insert(name.clone(), info).is_some() {
                            return Err(gguf_error(part, format!("tensor `{name}` appears in two parts")));
                        }
                    }
                    m.files.extend(one.files);
                }
            }
        }
        let mut gguf = merged.ok_or_else(|| gguf_error(path, "no files".into()))?;
        gguf.paths = paths;
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        // `open` always has at least one path.
        self.paths.first().map_or(Path::new(""), PathBuf::as_path)
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.n_bytes).sum()
    }

    /// Reads tensor `name` in its stored format. Dense types come back in row-major shape
    /// (ggml's dims reversed); block types as a `[rows, ne0]` matrix.
    pub fn read(&self, name: &str) -> Result<Stored> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| gguf_error(self.path(), format!("tensor `{name}` is missing")))?;
        self.read_info(name, info)
    }

    fn read_info(&self, name: &str, info: &TensorInfo) -> Result<Stored> {
        let shape = info.shape();
        let numel: usize = shape.iter().product();
        match info.ggml_type {
            0 => Ok(Stored::Dense(Tensor::from_vec(
                self.read_plain::<f32>(info, numel)?,
                shape,
                &Device::Cpu,
            )?)),
            1 => Ok(Stored::Dense(Tensor::from_vec(
                self.read_plain::<f16>(info, numel)?,
                shape,
                &Device::Cpu,
            )?)),
            30 => Ok(Stored::Dense(Tensor::from_vec(
                self.read_plain::<bf16>(info, numel)?,
                shape,
                &Device::Cpu,
            )?)),
            id => {
                let ty = QuantType::from_ggml_type_id(id).ok_or_else(|| Error::TensorDtype {
                    name: name.to_string(),
                    dtype: ggml_type_name(id),
                    supported: SUPPORTED_TYPES,
                })?;
                let cols = info.dims.first().copied().unwrap_or(0);
                let rows = numel.checked_div(cols).unwrap_or(0);
                QuantTensor::read_with(ty, rows, cols, name, |dst| self.read_into(info, dst))
            }
            .map(Stored::Quantized),
        }
    }

    /// Rows `start .. start + n` of tensor `name` seen as a `[rows, ne0]` matrix (e.g. one
    /// expert of a stacked `[E, F, D]` tensor), read directly from the file.
    pub fn read_rows(&self, name: &str, start: usize, n: usize) -> Result<Stored> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| gguf_error(self.path(), format!("tensor `{name}` is missing")))?;
        let cols = info.dims.first().copied().unwrap_or(0);
        let total_rows = info.dims.iter().skip(1).product::<usize>();
        let out_of_range = || {
            gguf_error(
                self.path(),
                format!("tensor `{name}`: rows {start}..{start}+{n} of {total_rows}"),
            )
        };
        if start.checked_add(n).is_none_or(|stop| stop > total_rows) || cols == 0 {
            return Err(out_of_range());
        }
        // Within the validated tensor, so none of these overflow; checked anyway.
        let row_bytes = info
            .n_bytes
            .checked_div(total_rows as u64)
            .ok_or_else(out_of_range)?;
        let part = TensorInfo {
            dims: vec![cols, n],
            ggml_type: info.ggml_type,
            file: info.file,
            offset: (start as u64)
                .checked_mul(row_bytes)
                .and_then(|b| b.checked_add(info.offset))
                .ok_or_else(out_of_range)?,
            n_bytes: (n as u64).checked_mul(row_bytes).ok_or_else(out_of_range)?,
        };
        self.read_info(name, &part)
    }

    fn read_plain<T: Plain>(&self, info: &TensorInfo, numel: usize) -> Result<Vec<T>> {
        let mut values = vec![T::ZERO; numel];
        self.read_into(info, as_bytes_mut(&mut values))?;
        Ok(values)
    }

    fn read_into(&self, info: &TensorInfo, dst: &mut [u8]) -> Result<()> {
        let (Some(path), Some(file)) = (self.paths.get(info.file), self.files.get(info.file)) else {
            return Err(gguf_error(
                self.path(),
                format!("tensor in split file {}, which is not open", info.file),
            ));
        };
        if dst.len() as u64 != info.n_bytes {
            return Err(gguf_error(
                path,
                format!(
                    "tensor holds {} bytes, its type needs {}",
                    info.n_bytes,
                    dst.len()
                ),
            ));
        }
        file.read_exact_at(dst, info.offset).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })
    }
}

fn gguf_error(path: &Path, message: String) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        message,
    }
}

/// The parts of a split GGUF (`…-00001-of-00003.gguf`), or just `path`.
fn split_paths(path: &Path) -> Result<Vec<PathBuf>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(stem) = name.strip_suffix(".gguf") else {
        return Ok(vec![path.to_path_buf()]);
    };
    // stem = base-00001-of-00003
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    let (Some(&total), Some(&"of"), Some(&index), Some(&base)) =
        (parts.first(), parts.get(1), parts.get(2), parts.get(3))
    else {
        return Ok(vec![path.to_path_buf()]);
    };
    let (Ok(total_n), Ok(_)) = (total.parse::<usize>(), index.parse::<usize>()) else {
        return Ok(vec![path.to_path_buf()]);
    };
    if total_n == 0 || total_n > 9999 {
        return Err(gguf_error(path, format!("split count {total_n} is out of range")));
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    (1..=total_n)
        .map(|i| {
            let p = dir.join(format!("{base}-{i:0w$}-of-{total}.gguf", w = index.len()));
            if p.is_file() {
                Ok(p)
            } else {
                Err(gguf_error(path, format!("split part {} is missing", p.display())))
            }
        })
        .collect()
}

/// A bounded little-endian reader over the header.
struct Header<'a> {
    reader: BufReader<&'a File>,
    pos: u64,
    path: &'a Path,
    /// Metadata array items still allowed ([`MAX_METADATA_ITEMS`]).
    items_left: u64,
}

impl Header<'_> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n as usize];
        self.reader.read_exact(&mut buf).map_err(|_| {
            gguf_error(
                self.path,
                format!("file ends inside {what} (at byte {})", self.pos),
            )
        })?;
        self.pos = self.pos.saturating_add(n);
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf).map_err(|_| {
            gguf_error(
                self.path,
                format!("file ends inside {what} (at byte {})", self.pos),
            )
        })?;
        self.pos = self.pos.saturating_add(N as u64);
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > MAX_STRING_BYTES {
            return Err(gguf_error(
                self.path,
                format!("{what}: string of {len} bytes is implausible"),
            ));
        }
        String::from_utf8(self.bytes(len, what)?)
            .map_err(|_| gguf_error(self.path, format!("{what}: not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(gguf_error(self.path, format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(gguf_error(
                        self.path,
                        format!("{what}: nested arrays are not supported"),
                    ));
                }
                let item_type = self.u32(what)?;
                let len = self.u64(what)?;
                if len > MAX_METADATA_ITEMS {
                    return Err(gguf_error(
                        self.path,
                        format!("{what}: array of {len} items is implausible"),
                    ));
                }
                self.items_left = self.items_left.checked_sub(len).ok_or_else(|| {
                    gguf_error(
                        self.path,
                        format!("{what}: the metadata's arrays hold more than {MAX_METADATA_ITEMS} items together, which is implausible"),
                    )
                })?;
                let mut items = Vec::with_capacity(len.min(1 << 16) as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, what, depth.saturating_add(1))?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(gguf_error(self.path, format!("{what}: unknown value type {t}"))),
        })
    }
}

fn read_one(path: &Path, file_index: usize) -> Result<GgufFile> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    // Regular files only, checked on the open descriptor (a FIFO would block).
    let file = herd_limits::open_regular(path)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut h = Header {
        reader: BufReader::with_capacity(1 << 20, &file),
        pos: 0,
        path,
        items_left: MAX_METADATA_ITEMS,
    };
    let magic = h.array::<4>("the magic number")?;
    if &magic != MAGIC {
        return Err(gguf_error(path, format!("not a GGUF file (magic {magic:02x?})")));
    }
    let version = h.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(gguf_error(
            path,
            format!("GGUF version {version}; herd reads versions 2 and 3"),
        ));
    }
    let n_tensors = h.u64("the tensor count")?;
    let n_kv = h.u64("the metadata count")?;
    if n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES {
        return Err(gguf_error(
            path,
            format!("{n_tensors} tensors / {n_kv} metadata entries is implausible"),
        ));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = h.string(&format!("metadata key {i}"))?;
        let type_id = h.u32(&key)?;
        let value = h.value(type_id, &key, 0)?;
        metadata.insert(key, value);
    }
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = h.string(&format!("tensor name {i}"))?;
        let n_dims = h.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(gguf_error(
                path,
                format!("tensor `{name}` has {n_dims} dimensions"),
            ));
        }
        let dims = (0..n_dims).map(|_| h.u64(&name)).collect::<Result<Vec<u64>>>()?;
        let ggml_type = h.u32(&name)?;
        let offset = h.u64(&name)?;
        raw.push((name, dims, ggml_type, offset));
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(gguf_error(
                    path,
                    format!("general.alignment {v:?} is not a power of two"),
                ))
            }
        },
    };
    let data_start = h
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| gguf_error(path, "header too long".into()))?;
    let mut tensors = BTreeMap::new();
    for (name, dims, ggml_type, offset) in raw {
        let numel = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n_bytes = match (GGML_TYPES.iter().find(|t| t.0 == ggml_type), numel) {
            (Some(&(_, tname, block, bytes)), Some(numel)) => {
                let row = dims.first().copied().unwrap_or(0);
                if row.checked_rem(block) != Some(0) {
                    return Err(gguf_error(
                        path,
                        format!(
                            "tensor `{name}`: rows of {row} values are not whole {tname} blocks of {block}"
                        ),
                    ));
                }
                // numel is a multiple of the row length, hence of the block.
                numel
                    .checked_div(block)
                    .and_then(|b| b.checked_mul(bytes))
                    .ok_or_else(|| gguf_error(path, format!("tensor `{name}` dims {dims:?} overflow")))?
            }
            // Dims that overflow are refused whatever the type, an unknown one too: a reader
            // of it (rope_freqs is read before its shape is checked) multiplies them.
            (_, None) => {
                return Err(gguf_error(
                    path,
                    format!("tensor `{name}` dims {dims:?} overflow"),
                ))
            }
            (None, Some(_)) => 0, // reported if anyone reads it
        };
        let start = data_start.checked_add(offset);
        match start.and_then(|s| s.checked_add(n_bytes)) {
            Some(end) if end <= file_len && offset.checked_rem(alignment) == Some(0) => {}
            _ => {
                return Err(gguf_error(
                    path,
                    format!(
                        "tensor `{name}` ({} {dims:?}) at data offset {offset} needs {n_bytes} bytes; \
                         the file has {file_len} (truncated or corrupt)",
                        ggml_type_name(ggml_type)
                    ),
                ))
            }
        }
        let dims = dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| gguf_error(path, format!("tensor `{name}` dims overflow")))?;
        let info = TensorInfo {
            dims,
            ggml_type,
            file: file_index,
            offset: data_start.saturating_add(offset),
            n_bytes,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(gguf_error(path, format!("tensor `{name}` is listed twice")));
        }
    }
    Ok(GgufFile {
        paths: vec![path.to_path_buf()],
        files: vec![file],
        version,
        metadata,
        tensors,
    })
}

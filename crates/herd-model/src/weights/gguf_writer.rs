//! Writes GGUF version 3 files: metadata, then the tensor table, then tensor data aligned to
//! 32 bytes. Tensors are produced one at a time by a callback, so writing a model never holds
//! more than one tensor in memory. The file is written beside the target and renamed into
//! place only when complete.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use super::gguf::Value;
use crate::error::{Error, Result};

const ALIGNMENT: u64 = 32;

/// One tensor's table entry.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order (`dims[0]` contiguous).
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    pub n_bytes: u64,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn put_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => put_string(w, s),
        Value::Array(items) => {
            let item_type = items.first().map_or(Value::U32(0).type_id(), Value::type_id);
            w.write_all(&item_type.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| put_value(w, item))
        }
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Writes `path`. `produce(i)` returns the bytes of `tensors[i]` (exactly `n_bytes` of them).
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    mut produce: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    if let Some(item) = metadata.iter().find_map(|(k, v)| match v {
        Value::Array(items) if items.iter().any(|i| i.type_id() != items[0].type_id()) => Some(k),
        _ => None,
    }) {
        return Err(Error::Gguf {
            path: path.to_path_buf(),
            message: format!("metadata `{item}` mixes value types in one array"),
        });
    }
    let tmp: PathBuf = path.with_extension("gguf.partial");
    let result = (|| -> Result<()> {
        let file = herd_limits::create_output_file(&tmp).map_err(|e| Error::Checkpoint {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let io = io_error(&tmp);
        w.write_all(b"GGUF").map_err(&io)?;
        w.write_all(&3u32.to_le_bytes()).map_err(&io)?;
        w.write_all(&(tensors.len() as u64).to_le_bytes()).map_err(&io)?;
        w.write_all(&(metadata.len() as u64).to_le_bytes()).map_err(&io)?;
        for (key, value) in metadata {
            put_string(&mut w, key).map_err(&io)?;
            w.write_all(&value.type_id().to_le_bytes()).map_err(&io)?;
            put_value(&mut w, value).map_err(&io)?;
        }
        let mut offset = 0u64;
        for t in tensors {
            put_string(&mut w, &t.name).map_err(&io)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes()).map_err(&io)?;
            for &d in &t.dims {
                w.write_all(&(d as u64).to_le_bytes()).map_err(&io)?;
            }
            w.write_all(&t.ggml_type.to_le_bytes()).map_err(&io)?;
            w.write_all(&offset.to_le_bytes()).map_err(&io)?;
            offset = (offset + t.n_bytes).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        pad(&mut w).map_err(&io)?;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = produce(i)?;
            if bytes.len() as u64 != t.n_bytes {
                return Err(Error::Gguf {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{}` came out as {} bytes, expected {}",
                        t.name,
                        bytes.len(),
                        t.n_bytes
                    ),
                });
            }
            w.write_all(&bytes).map_err(&io)?;
            pad(&mut w).map_err(&io)?;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(&io)?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path).map_err(io_error(path)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Zero bytes up to the next multiple of the alignment.
fn pad(w: &mut BufWriter<File>) -> std::io::Result<()> {
    let pos = w.stream_position()?;
    let padded = pos.div_ceil(ALIGNMENT) * ALIGNMENT;
    w.write_all(&vec![0u8; (padded - pos) as usize])
}

//! Checkpoints in the base's own layout: the base folder's shards rewritten with some tensors
//! replaced (a full fine-tune's weights, or an adapter merged in), each in its stored dtype,
//! every other tensor and file copied as it is, so transformers (or herd) loads the result as
//! it loaded the base.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use herd_model::weights::safetensors::SafetensorsFile;
use herd_model::Checkpoint;

use crate::adapter::{Adapter, Delta};
use crate::error::{Error, Result};

/// One tensor's stored bytes, for the safetensors writer.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The base as a safetensors folder (the only layout herd writes weights back into).
fn open_base(base: &Path) -> Result<Checkpoint> {
    if !base.is_dir() {
        return Err(Error::Checkpoint(format!(
            "{} is not a checkpoint folder: writing weights needs a safetensors base (GGUF bases can be trained with LoRA, not exported or merged)",
            base.display()
        )));
    }
    Ok(Checkpoint::open(base)?)
}

/// Whether [`write_checkpoint`] can put these tensors (checkpoint name, shape) into `base`:
/// each stored under that name, with that shape, as f32, bf16 or f16 — checked before a run
/// rather than at its first save.
pub fn check_replacements(base: &Path, tensors: &[(String, Vec<usize>)]) -> Result<()> {
    let checkpoint = open_base(base)?;
    for (name, shape) in tensors {
        match checkpoint.dtype_of(name) {
            None => {
                return Err(Error::Checkpoint(format!(
                    "{} has no tensor `{name}` to write back (only transformers' fused layout is exported; Meta's per-expert FP8 layout is not)",
                    base.display()
                )))
            }
            Some("F32" | "BF16" | "F16") => {}
            Some(other) => {
                return Err(Error::Checkpoint(format!(
                    "`{name}` is stored as {other}: herd writes new values into f32, bf16 or f16 tensors only"
                )))
            }
        }
        checkpoint.info(name, shape)?;
    }
    Ok(())
}

/// Writes `base`'s checkpoint into `out` with `replacements` (checkpoint names → values) in
/// place of the stored tensors. Every replacement must name a stored tensor of the same shape.
pub fn write_checkpoint(base: &Path, out: &Path, replacements: &HashMap<String, Tensor>) -> Result<()> {
    let checkpoint = open_base(base)?;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut used = HashSet::new();
    let shard_names: HashSet<_> = checkpoint
        .files()
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    for shard_path in checkpoint.files() {
        let file = SafetensorsFile::open(&shard_path)?;
        let mut tensors: Vec<(String, Raw)> = Vec::new();
        for (name, info) in file.tensors() {
            let dtype: safetensors::Dtype =
                serde_json::from_value(serde_json::Value::String(info.dtype.clone()))
                    .map_err(|_| Error::Checkpoint(format!("`{name}`: unknown dtype {}", info.dtype)))?;
            let raw = match replacements.get(name) {
                Some(value) => {
                    used.insert(name.clone());
                    if value.dims() != info.shape.as_slice() {
                        return Err(Error::Checkpoint(format!(
                            "`{name}`: new value has shape {:?}, the checkpoint's is {:?}",
                            value.dims(),
                            info.shape
                        )));
                    }
                    Raw {
                        dtype,
                        shape: info.shape.clone(),
                        bytes: stored_bytes(name, value, &info.dtype)?,
                    }
                }
                None => {
                    let mut bytes = vec![0u8; info.n_bytes() as usize];
                    file.read_bytes(info, &mut bytes)?;
                    Raw {
                        dtype,
                        shape: info.shape.clone(),
                        bytes,
                    }
                }
            };
            tensors.push((name.clone(), raw));
        }
        let name = shard_path
            .file_name()
            .ok_or_else(|| Error::Checkpoint(format!("{}: no file name", shard_path.display())))?;
        let target = out.join(name);
        crate::trainer::replace_file(&target, |p| {
            safetensors::serialize_to_file(tensors.iter().map(|(n, r)| (n.as_str(), r)), None, p)
                .map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
        })?;
    }
    if let Some(missing) = replacements.keys().find(|k| !used.contains(*k)) {
        return Err(Error::Checkpoint(format!(
            "`{missing}` is not a tensor of {}",
            base.display()
        )));
    }
    // The base's other files (config, tokenizer, templates, shard index), regular files only.
    let entries = std::fs::read_dir(base).map_err(|source| Error::Io {
        path: base.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let path = entry.path();
        if shard_names.contains(&name) || !path.is_file() {
            continue;
        }
        let text = name.to_string_lossy();
        if text.ends_with(".safetensors") || text.starts_with('.') {
            continue;
        }
        let target = out.join(&name);
        if target == path {
            continue;
        }
        crate::trainer::replace_file(&target, |p| {
            std::fs::copy(&path, p).map(|_| ()).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })
        })?;
    }
    Ok(())
}

/// `value` in a stored dense dtype's bytes.
fn stored_bytes(name: &str, value: &Tensor, dtype: &str) -> Result<Vec<u8>> {
    let flat = value.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(match dtype {
        "F32" => flat.iter().flat_map(|x| x.to_le_bytes()).collect(),
        "BF16" => flat
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
        "F16" => flat
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        other => {
            return Err(Error::Checkpoint(format!(
                "`{name}` is stored as {other}: herd writes new values into f32, bf16 or f16 tensors only"
            )))
        }
    })
}

/// The base's tensors with the adapter folded in (W + (α/r)·B A, in f32): checkpoint name →
/// merged value, for [`write_checkpoint`].
pub fn merged_tensors(base: &Path, adapter: &Adapter) -> Result<HashMap<String, Tensor>> {
    let checkpoint = open_base(base)?;
    let prefix = checkpoint.text_prefix().to_string();
    let mut out = HashMap::new();
    for (path, delta) in adapter.deltas()? {
        let (name, delta) = match delta {
            Delta::Module(d) => (format!("{prefix}{path}.weight"), d),
            Delta::Experts(d) => (format!("{prefix}{path}"), d),
        };
        if !checkpoint.contains(&name) {
            return Err(Error::Adapter(format!(
                "the adapter changes `{name}`, which {} does not have (Meta's per-expert FP8 layout and other layouts are not merged)",
                base.display()
            )));
        }
        let w = checkpoint.tensor(&name, delta.dims(), DType::F32, &Device::Cpu)?;
        out.insert(name, (w + delta)?);
    }
    Ok(out)
}

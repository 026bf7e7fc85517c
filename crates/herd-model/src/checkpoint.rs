//! A Hugging Face checkpoint folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, memory-mapped. Resolves the key layout
//! (`model.*` + `lm_head.weight` for `Llama4ForCausalLM`, `language_model.model.*` +
//! `language_model.lm_head.weight` for `Llama4ForConditionalGeneration`) and hands out tensors
//! after checking their shape and dtype.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype as StDtype;
use serde::Deserialize;

use crate::error::{Error, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The open, memory-mapped weights of one checkpoint folder.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<PathBuf>,
    tensors: MmapedSafetensors,
    /// Prefix of the text decoder's tensors: `model.` or `language_model.model.`.
    text_prefix: String,
    /// Name of the output projection (absent when embeddings are tied).
    lm_head: String,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The layouts herd knows: (text prefix, lm_head name).
const LAYOUTS: [(&str, &str); 2] = [
    ("model.", "lm_head.weight"),
    ("language_model.model.", "language_model.lm_head.weight"),
];

impl Checkpoint {
    /// Opens `dir`, reading only headers; tensor data stays on disk until used.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        // SAFETY (of the mmap inside): the files are opened read-only; herd, like every
        // safetensors loader, assumes nobody truncates a checkpoint while it is loaded.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("not a valid safetensors checkpoint: {e}"),
        })?;
        let names: BTreeSet<String> = tensors.tensors().into_iter().map(|(n, _)| n).collect();
        let (text_prefix, lm_head) = LAYOUTS
            .iter()
            .find(|(prefix, _)| names.contains(&format!("{prefix}embed_tokens.weight")))
            .map(|(p, h)| (p.to_string(), h.to_string()))
            .ok_or_else(|| Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "no `model.embed_tokens.weight` or `language_model.model.embed_tokens.weight`: \
                          not a Llama 4 checkpoint layout herd knows"
                    .into(),
            })?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            tensors,
            text_prefix,
            lm_head,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// `model.` or `language_model.model.`.
    pub fn text_prefix(&self) -> &str {
        &self.text_prefix
    }

    pub fn lm_head_name(&self) -> &str {
        &self.lm_head
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.get(name).is_ok()
    }

    /// Total bytes of the tensors whose names start with `prefix`, as stored.
    pub fn stored_bytes(&self, prefix: &str) -> usize {
        self.tensors
            .tensors()
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, view)| view.data().len())
            .sum()
    }

    /// Loads tensor `name`, checks it has `shape`, converts it to `dtype` on `device`.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let view = self.tensors.get(name).map_err(|_| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        if view.shape() != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        let stored = view.dtype();
        if !matches!(stored, StDtype::BF16 | StDtype::F16 | StDtype::F32) {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                dtype: format!("{stored:?}"),
            });
        }
        let tensor = view.load(device)?;
        Ok(tensor.to_dtype(dtype)?)
    }
}

/// The safetensors files of a checkpoint: the single file, or every shard the index names.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| Error::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: index_path.clone(),
            source,
        })?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        if shards.is_empty() {
            return Err(Error::Checkpoint {
                path: index_path,
                message: "weight_map lists no tensors".into(),
            });
        }
        return shards
            .into_iter()
            .map(|shard| {
                let path = dir.join(shard);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(Error::Checkpoint {
                        path: index_path.clone(),
                        message: format!("names shard `{shard}`, which is not in the folder"),
                    })
                }
            })
            .collect();
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("neither {SINGLE_FILE} nor {INDEX_FILE} found"),
    })
}

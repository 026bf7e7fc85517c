//! A Hugging Face checkpoint folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Resolves the key layout
//! (`model.*` + `lm_head.weight` for `Llama4ForCausalLM`, `language_model.model.*` +
//! `language_model.lm_head.weight` for `Llama4ForConditionalGeneration`) and hands out tensors
//! in their stored dtype after checking their shape.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::weights::safetensors::{SafetensorsFile, TensorInfo};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The open weights of one checkpoint folder: headers parsed, data read on demand.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<SafetensorsFile>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
    /// Prefix of the text decoder's tensors: `model.` or `language_model.model.`.
    text_prefix: String,
    /// Name of the output projection (absent when embeddings are tied).
    lm_head: String,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: crate::json_file::UniqueMap<String>,
}

impl ShardIndex {
    /// The folder's index, if it has one.
    fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(INDEX_FILE);
        if !herd_limits::exists(&path) {
            return Ok(None);
        }
        crate::json_file::read_json_as(&path).map(Some)
    }
}

/// The layouts herd knows: (text prefix, lm_head name).
const LAYOUTS: [(&str, &str); 2] = [
    ("model.", "lm_head.weight"),
    ("language_model.model.", "language_model.lm_head.weight"),
];

impl Checkpoint {
    /// Opens `dir`, reading only headers; tensor data stays on disk until used.
    pub fn open(dir: &Path) -> Result<Self> {
        let shard_index = ShardIndex::load(dir)?;
        let files = shard_files(dir, shard_index.as_ref())?;
        let shards = files
            .iter()
            .map(|f| SafetensorsFile::open(f))
            .collect::<Result<Vec<_>>>()?;
        let mut index = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.tensors().keys() {
                if let Some(first) = index.insert(name.clone(), i) {
                    return Err(Error::Checkpoint {
                        path: dir.to_path_buf(),
                        message: format!(
                            "tensor `{name}` is in both {} and {}",
                            shards[first].path().display(),
                            shard.path().display()
                        ),
                    });
                }
            }
        }
        if let Some(map) = &shard_index {
            check_weight_map(dir, map, &shards, &index)?;
        }
        let (text_prefix, lm_head) = LAYOUTS
            .iter()
            .find(|(prefix, _)| index.contains_key(&format!("{prefix}embed_tokens.weight")))
            .map(|(p, h)| (p.to_string(), h.to_string()))
            .ok_or_else(|| Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "no `model.embed_tokens.weight` or `language_model.model.embed_tokens.weight`: \
                          not a Llama 4 checkpoint layout herd knows"
                    .into(),
            })?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            index,
            text_prefix,
            lm_head,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path().to_path_buf()).collect()
    }

    /// `model.` or `language_model.model.`.
    pub fn text_prefix(&self) -> &str {
        &self.text_prefix
    }

    pub fn lm_head_name(&self) -> &str {
        &self.lm_head
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> BTreeSet<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    /// Total bytes of the tensors whose names start with `prefix`, as stored.
    pub fn stored_bytes(&self, prefix: &str) -> usize {
        self.shards
            .iter()
            .flat_map(|s| s.tensors().iter())
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, info)| info.n_bytes() as usize)
            .sum()
    }

    /// The stored dtype of `name` in safetensors' spelling (`BF16`, `F8_E4M3`, …).
    pub fn dtype_of(&self, name: &str) -> Option<&str> {
        let shard = self.shards.get(*self.index.get(name)?)?;
        shard.tensors().get(name).map(|t| t.dtype.as_str())
    }

    /// The header entry of `name`, after checking its shape.
    pub fn info(&self, name: &str, shape: &[usize]) -> Result<(&SafetensorsFile, &TensorInfo)> {
        let shard = self
            .index
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                dir: self.dir.clone(),
            })?;
        let info = shard.tensors().get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        if info.shape != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        Ok((shard, info))
    }

    /// Tensor `name`, shape-checked, in its stored dtype (f32, bf16 or f16), on the CPU.
    pub fn stored(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (shard, info) = self.info(name, shape)?;
        shard.read_dense(name, info)
    }

    /// The raw bytes of `name` (shape-checked), e.g. FP8 values.
    pub fn stored_bytes_of(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        let (shard, info) = self.info(name, shape)?;
        let mut bytes = vec![0u8; info.n_bytes() as usize];
        shard.read_bytes(info, &mut bytes)?;
        Ok(bytes)
    }

    /// Rows `start .. start + n` of `name` (shape-checked) seen as `[rows, last dim]`, as stored.
    pub fn stored_rows(&self, name: &str, shape: &[usize], start: usize, n: usize) -> Result<Tensor> {
        let (shard, info) = self.info(name, shape)?;
        shard.read_rows(name, info, start, n)
    }

    /// Loads tensor `name`, checks it has `shape`, converts it to `dtype` on `device`.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(self.stored(name, shape)?.to_dtype(dtype)?.to_device(device)?)
    }
}

/// The index's `weight_map` must say where each tensor really is: an entry naming the wrong
/// shard, or a tensor the shard does not hold, is an error (a sign of a mixed-up download).
fn check_weight_map(
    dir: &Path,
    map: &ShardIndex,
    shards: &[SafetensorsFile],
    index: &HashMap<String, usize>,
) -> Result<()> {
    let index_path = dir.join(INDEX_FILE);
    for (name, shard) in &map.weight_map.0 {
        let actual = index.get(name).and_then(|&i| shards.get(i));
        let actual_name = actual.and_then(|s| s.path().file_name()).and_then(|n| n.to_str());
        if actual_name != Some(shard.as_str()) {
            return Err(Error::Checkpoint {
                path: index_path,
                message: format!(
                    "weight_map puts `{name}` in {shard}, but {}",
                    actual_name.map_or("no shard holds it".to_string(), |a| format!("it is in {a}"))
                ),
            });
        }
    }
    Ok(())
}

/// A shard name from the index must be a plain relative path inside the folder.
fn inside_folder(shard: &str) -> bool {
    let path = Path::new(shard);
    !shard.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The safetensors files of a checkpoint: the single file, or every shard the index names.
fn shard_files(dir: &Path, index: Option<&ShardIndex>) -> Result<Vec<PathBuf>> {
    let index_path = dir.join(INDEX_FILE);
    if let Some(index) = index {
        let shards: BTreeSet<&String> = index.weight_map.0.iter().map(|(_, shard)| shard).collect();
        if shards.is_empty() {
            return Err(Error::Checkpoint {
                path: index_path,
                message: "weight_map lists no tensors".into(),
            });
        }
        return shards
            .into_iter()
            .map(|shard| {
                if !inside_folder(shard) {
                    return Err(Error::Checkpoint {
                        path: index_path.clone(),
                        message: format!("names shard `{shard}`, which is not a file name inside the folder"),
                    });
                }
                let path = dir.join(shard);
                // Present but not a regular file: opening it says so.
                if herd_limits::exists(&path) {
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

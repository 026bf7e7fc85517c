//! The JSON metadata files of a model folder, read under [`herd_limits`]' rules: regular files
//! only, at most `config_bytes`.

use std::path::Path;

use herd_limits::FileKind;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// `path` parsed as JSON.
pub fn read_json(path: &Path) -> Result<Value> {
    read_json_as(path)
}

/// `path` deserialized as `T`; a type error names the field's path (`text_config.rope_theta`).
pub fn read_json_as<T: DeserializeOwned>(path: &Path) -> Result<T> {
    read_json_of_kind(path, FileKind::Config)
}

/// [`read_json_as`] for a JSON file that is not metadata (e.g. `tokenizer.json`, with the
/// tokenizer's limit).
pub fn read_json_of_kind<T: DeserializeOwned>(path: &Path, kind: FileKind) -> Result<T> {
    let bytes = herd_limits::read_file(path, kind)?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: if e.path().to_string() == "." {
            e.into_inner()
        } else {
            let field = e.path().to_string();
            let inner = e.into_inner();
            <serde_json::Error as serde::de::Error>::custom(format!("field `{field}`: {inner}"))
        },
    })
}

/// Like [`read_json`], `None` when the file does not exist (a FIFO or a directory of that name
/// is still an error, not silently absent).
pub fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    read_json(path).map(Some)
}

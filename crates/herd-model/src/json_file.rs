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
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: if e.path().to_string() == "." {
            e.into_inner()
        } else {
            let field = e.path().to_string();
            let inner = e.into_inner();
            <serde_json::Error as serde::de::Error>::custom(format!("field `{field}`: {inner}"))
        },
    })?;
    // Nothing but whitespace may follow the value (as `serde_json::from_slice` checks).
    de.end().map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(value)
}

/// A JSON object read as its entries in file order, refusing a key that appears twice
/// (`serde`'s maps keep the last of two entries without a word: two headers for one tensor,
/// two shards for one weight).
#[derive(Debug)]
pub struct UniqueMap<V>(pub Vec<(String, V)>);

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("`{key}` is listed twice")));
                    }
                    out.push((key, value));
                }
                Ok(UniqueMap(out))
            }
        }
        de.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// Like [`read_json`], `None` when the file does not exist (a FIFO or a directory of that name
/// is still an error, not silently absent).
pub fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !herd_limits::exists(path) {
        return Ok(None);
    }
    read_json(path).map(Some)
}

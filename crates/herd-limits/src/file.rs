//! Reading a file someone else made: only a regular file (a FIFO would block forever, a device
//! or `/proc` link could stream without end), never more than its kind's limit, and the
//! check made on the opened file itself so nothing can be swapped in between.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::policy::Limits;

/// What a file is for; each kind has its own byte limit in [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Tokenizer,
    Template,
    Image,
    Prompt,
}

impl FileKind {
    pub fn limit(self, limits: &Limits) -> u64 {
        match self {
            FileKind::Config => limits.config_bytes,
            FileKind::Tokenizer => limits.tokenizer_bytes,
            FileKind::Template => limits.template_bytes,
            FileKind::Image => limits.image_bytes,
            FileKind::Prompt => limits.prompt_bytes,
        }
    }

    /// The `--limit` name that raises this kind's limit.
    pub fn limit_name(self) -> &'static str {
        match self {
            FileKind::Config => "config-bytes",
            FileKind::Tokenizer => "tokenizer-bytes",
            FileKind::Template => "template-bytes",
            FileKind::Image => "image-bytes",
            FileKind::Prompt => "prompt-bytes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file ({what}); herd reads only regular files")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{path} holds more than {limit} bytes (raise with --limit {name}=N)")]
    TooLarge {
        path: PathBuf,
        limit: u64,
        name: &'static str,
    },
    #[error("{path} is not UTF-8 text: {source}")]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

/// Whether a directory entry named `path` exists (a dangling link, a FIFO or an unreadable
/// entry does: reading it then says what is wrong). Only "not found" means absent, so an
/// optional file that is there but broken is an error, never silently skipped.
pub fn exists(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The bytes of `path`, which must be a regular file (after following links) of at most
/// `kind`'s limit under the current [`Limits`].
pub fn read_file(path: &Path, kind: FileKind) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let limit = kind.limit(&Limits::current());
    let file = open_regular(path)?;
    let len = file.metadata().map_err(io)?.len();
    let too_large = || ReadError::TooLarge {
        path: path.to_path_buf(),
        limit,
        name: kind.limit_name(),
    };
    if len > limit {
        return Err(too_large());
    }
    read_capped(file, limit).map_err(io)?.ok_or_else(too_large)
}

/// [`read_file`] as UTF-8 text.
pub fn read_file_to_string(path: &Path, kind: FileKind) -> Result<String, ReadError> {
    String::from_utf8(read_file(path, kind)?).map_err(|source| ReadError::NotUtf8 {
        path: path.to_path_buf(),
        source,
    })
}

/// Everything `reader` yields if that is at most `limit` bytes; `None` if it holds more (the
/// read stops one byte past the limit, so a decompression bomb costs `limit` bytes, no more).
pub fn read_capped(reader: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

/// Opens `path` for reading if it is a regular file. The open does not block on a FIFO
/// (`O_NONBLOCK`), and the type is checked on the open descriptor.
pub fn open_regular(path: &Path) -> Result<File, ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let kind = file.metadata().map_err(io)?.file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(ReadError::NotRegular {
        path: path.to_path_buf(),
        what,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("herd-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let link = dir.join("zero-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for (path, what) in [(&fifo, "FIFO"), (&link, "device"), (&dir, "directory")] {
            let err = read_file(path, FileKind::Config).unwrap_err().to_string();
            assert!(err.contains("not a regular file") && err.contains(what), "{err}");
        }
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; 100]).unwrap();
        assert_eq!(read_file(&big, FileKind::Config).unwrap().len(), 100);
        assert_eq!(read_capped(&b"12345"[..], 5).unwrap().unwrap(), b"12345");
        assert!(read_capped(&b"123456"[..], 5).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

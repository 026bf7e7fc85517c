//! Writing a file a command produces (`--out`) without harming anything else: the target
//! must be absent or a regular file (never a device, a FIFO, a directory, or a link whose
//! target would be silently replaced), must not be one of the command's own inputs, and is
//! written beside and renamed into place so a failed write leaves the old file whole.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "{path} is a symbolic link; herd does not replace links or write through them (give the real path)"
    )]
    Link { path: PathBuf },
    #[error("{path} exists and is not a regular file; refusing to replace it")]
    NotRegular { path: PathBuf },
    #[error("{path} is {input}, an input of this command; refusing to overwrite it")]
    IsInput { path: PathBuf, input: String },
    #[error("cannot list {path} to check the output is not one of its files: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `out` may be written by a command reading `inputs` (files, or folders whose
/// files are all inputs).
pub fn check_output(out: &Path, inputs: &[&Path]) -> Result<(), OutputError> {
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return Ok(()); // absent: nothing to harm
    };
    if meta.file_type().is_symlink() {
        return Err(OutputError::Link {
            path: out.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(OutputError::NotRegular {
            path: out.to_path_buf(),
        });
    }
    let same = |m: &std::fs::Metadata| m.dev() == meta.dev() && m.ino() == meta.ino();
    for input in inputs {
        let Ok(input_meta) = std::fs::metadata(input) else {
            continue;
        };
        if input_meta.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|source| OutputError::Input {
                path: input.to_path_buf(),
                source,
            })?;
            for entry in entries.flatten() {
                if std::fs::metadata(entry.path()).is_ok_and(|m| same(&m)) {
                    return Err(OutputError::IsInput {
                        path: out.to_path_buf(),
                        input: format!("{} in {}", entry.file_name().to_string_lossy(), input.display()),
                    });
                }
            }
        } else if same(&input_meta) {
            return Err(OutputError::IsInput {
                path: out.to_path_buf(),
                input: input.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Creates `path` for writing, refusing what [`check_output`] refuses; an existing regular
/// file is replaced. Never follows a link at `path`, even one planted after the check
/// (`O_NOFOLLOW`, `O_EXCL`).
pub fn create_output_file(path: &Path) -> Result<std::fs::File, OutputError> {
    use std::os::unix::fs::OpenOptionsExt;
    check_output(path, &[])?;
    let io = |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)
}

/// Checks `out` (see [`check_output`]), lets `write` fill a temporary file beside it, and
/// renames that into place; on failure the temporary file is removed and `out` is untouched.
pub fn write_output<E>(
    out: &Path,
    inputs: &[&Path],
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<Result<(), E>, OutputError> {
    check_output(out, inputs)?;
    let name = out
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = out.with_file_name(format!(".{name}.{}-{nanos}.tmp", std::process::id()));
    // Reserve the name (never through a link); `write` then fills it by path (writers such as
    // safetensors' may replace it with a file of their own).
    create_output_file(&tmp)?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Ok(Err(e));
    }
    // Still a regular file, not a link swapped in while it was written?
    if !std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_file()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(OutputError::NotRegular { path: tmp });
    }
    // The target may have changed while we wrote (a link put in its place): check again.
    if let Err(e) = check_output(out, inputs) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|source| OutputError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Ok(()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_devices_and_inputs_are_refused() {
        let dir = std::env::temp_dir().join(format!("herd-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.bin");
        std::fs::write(&input, b"keep").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.join("hard");
        let _ = std::fs::remove_file(&hard);
        std::fs::hard_link(&input, &hard).unwrap();
        assert!(matches!(check_output(&link, &[]), Err(OutputError::Link { .. })));
        assert!(matches!(
            check_output(Path::new("/dev/null"), &[]),
            Err(OutputError::NotRegular { .. })
        ));
        assert!(matches!(
            check_output(&dir, &[]),
            Err(OutputError::NotRegular { .. })
        ));
        assert!(matches!(
            check_output(&input, &[&input]),
            Err(OutputError::IsInput { .. })
        ));
        assert!(matches!(
            check_output(&hard, &[&dir]),
            Err(OutputError::IsInput { .. })
        ));
        let fresh = dir.join("fresh.bin");
        write_output(&fresh, &[&input], |tmp| std::fs::write(tmp, b"new"))
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
        // A writer that replaces the file it is given (as safetensors' does) is fine...
        write_output(&fresh, &[], |tmp| {
            let side = tmp.with_extension("side");
            std::fs::write(&side, b"renamed")?;
            std::fs::rename(&side, tmp)
        })
        .unwrap()
        .unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"renamed");
        // ...one that leaves a link there is not, and nothing is renamed into place.
        let swapped = write_output(&fresh, &[], |tmp| {
            std::fs::remove_file(tmp)?;
            std::os::unix::fs::symlink(&input, tmp)
        });
        assert!(matches!(swapped, Err(OutputError::NotRegular { .. })));
        assert_eq!(std::fs::read(&fresh).unwrap(), b"renamed");
        let failed: Result<(), std::io::Error> =
            write_output(&fresh, &[], |_| Err(std::io::Error::other("no"))).unwrap();
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&fresh).unwrap(), b"renamed");
        assert_eq!(std::fs::read(&input).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

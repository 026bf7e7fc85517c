//! Training data: JSONL of chats or plain text, rendered, tokenized, packed and split.
//!
//! ```text
//! file.jsonl ──read_jsonl──► Record (+ BadLine per unusable line, with its line number)
//!            ──Renderer────► Sample { ids, trained }   chat template; loss on assistant turns
//!            ──split───────► train / validation         seeded, or a separate file
//!            ──pack────────► PackedSequence             ≤ max_len, attention per segment
//! ```
//!
//! [`Dataset::load`] runs all four. A line that cannot be read or rendered is reported, not
//! fatal; a file with no usable line is an error.

pub mod jsonl;
pub mod pack;
pub mod render;
pub mod split;

use std::path::{Path, PathBuf};

pub use jsonl::{read_jsonl, BadLine, Record, RecordKind};
pub use pack::{pack, Packed, PackedSequence, Packing};
pub use render::{Renderer, Sample, TRAINED_END, TRAINED_START};
pub use split::{epoch_order, split_validation};

use crate::error::Result;

/// Where validation examples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    None,
    /// This fraction (in `[0, 1)`) of the training file, chosen by the seed.
    Fraction(f64),
    /// A file of its own, in the training file's format.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// Tokens per training sequence.
    pub max_len: usize,
    pub packing: Packing,
    pub validation: Validation,
    /// Seeds the validation split.
    pub seed: u64,
}

/// A loaded training set: its samples (in file order, for `--dry-run`) and the packed
/// sequences training runs on.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train_samples: Vec<Sample>,
    pub validation_samples: Vec<Sample>,
    pub train: Packed,
    pub validation: Packed,
    /// Lines of the training and validation files that gave no example, file by file in line
    /// order.
    pub bad_lines: Vec<BadLine>,
}

impl Dataset {
    /// Reads, renders, splits and packs `path` (and the validation file, if any).
    pub fn load(path: &Path, renderer: &Renderer, options: &DataOptions) -> Result<Dataset> {
        let (samples, mut bad_lines) = load_samples(path, renderer)?;
        let (train_samples, validation_samples) = match &options.validation {
            Validation::None => (samples, Vec::new()),
            Validation::Fraction(fraction) => split_validation(samples, *fraction, options.seed)?,
            Validation::File(validation_path) => {
                let (validation, bad) = load_samples(validation_path, renderer)?;
                bad_lines.extend(bad);
                (samples, validation)
            }
        };
        let train = pack(&train_samples, options.max_len, options.packing)?;
        let validation = pack(&validation_samples, options.max_len, options.packing)?;
        if train.sequences.is_empty() {
            return Err(crate::Error::Data(format!(
                "{}: no training example keeps a trained token within the first {} tokens \
                 (raise the sequence length)",
                path.display(),
                options.max_len
            )));
        }
        Ok(Dataset {
            train_samples,
            validation_samples,
            train,
            validation,
            bad_lines,
        })
    }

    /// Samples cut to the sequence length, training and validation.
    pub fn truncated(&self) -> usize {
        self.train.truncated + self.validation.truncated
    }
}

/// The samples of one file, and its lines that gave none (unreadable or unrenderable), in
/// line order. A file with no usable line is an error.
pub fn load_samples(path: &Path, renderer: &Renderer) -> Result<(Vec<Sample>, Vec<BadLine>)> {
    let (records, mut bad_lines) = read_jsonl(path)?;
    let mut samples = Vec::with_capacity(records.len());
    for record in &records {
        match renderer.sample(record) {
            Ok(sample) => samples.push(sample),
            Err(e) => bad_lines.push(BadLine {
                path: path.to_path_buf(),
                line: record.line,
                reason: e.to_string(),
            }),
        }
    }
    bad_lines.sort_by_key(|b| b.line);
    if samples.is_empty() {
        return Err(jsonl::no_examples(path, &bad_lines));
    }
    Ok((samples, bad_lines))
}

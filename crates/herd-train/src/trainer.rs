//! The training loop: micro-batches of packed sequences, gradient accumulation normalised by
//! the step's trained tokens (one big batch's loss, as transformers' Trainer computes it with
//! `num_items_in_batch`), global-norm clipping, AdamW under warmup + cosine with per-layer
//! multipliers, validation, and checkpoints that resume bit for bit.
//!
//! Every step's data and dropout masks are functions of (seed, step): the epoch order comes
//! from the seed and the epoch, the micro-batches of step k are the sequences k·B·A ..
//! (k+1)·B·A of that order. A checkpoint therefore needs only the step, the parameters and the
//! optimizer's moments.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{epoch_order, PackedSequence};
use crate::error::{Error, Result};
use crate::lora::PassKey;
use crate::model::{Batch, TrainModel};
use crate::optim::{clip_grad_norm, cosine_with_warmup, AdamW, AdamWConfig, Moments};

/// A learning-rate multiplier for a range of decoder layers (`--layer-lr 0-7=0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerLr {
    pub first: usize,
    pub last: usize,
    pub multiplier: f64,
}

impl std::str::FromStr for LayerLr {
    type Err = String;

    /// `N=M`, `A-B=M` or `A-=M` (from A to the last layer).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (layers, mult) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected LAYERS=MULTIPLIER, e.g. 0-3=0.5"))?;
        let multiplier: f64 = mult.parse().map_err(|_| format!("`{mult}` is not a number"))?;
        if !(multiplier.is_finite() && multiplier >= 0.0) {
            return Err(format!("multiplier `{mult}` must be a finite number ≥ 0"));
        }
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{x}` is not a layer index"))
        };
        let (first, last) = match layers.split_once('-') {
            Some((a, "")) => (num(a)?, usize::MAX),
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(layers)?, num(layers)?),
        };
        if first > last {
            return Err(format!("`{layers}`: the first layer is after the last"));
        }
        Ok(LayerLr {
            first,
            last,
            multiplier,
        })
    }
}

/// Everything that decides the arithmetic of a run (a resumed run must use the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Optimizer steps in the run.
    pub total_steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub grad_accum: usize,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
    pub seed: u64,
    pub layer_lr: Vec<LayerLr>,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be a positive number", self.lr));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch size and gradient accumulation must be at least 1".into());
        }
        if self.total_steps == 0 {
            return bad("a run needs at least one step".into());
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("AdamW betas must be in [0, 1)".into());
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad("--max-grad-norm must be ≥ 0".into());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be ≥ 0".into());
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("AdamW's epsilon {} must be a positive number", self.eps));
        }
        let fits = self
            .batch_size
            .checked_mul(self.grad_accum)
            .and_then(|per_step| per_step.checked_mul(usize::try_from(self.total_steps).ok()?));
        if fits.is_none() {
            return bad("batch size × gradient accumulation × steps is too large".into());
        }
        Ok(())
    }

    fn layer_multiplier(&self, layer: Option<usize>) -> f64 {
        let Some(l) = layer else { return 1.0 };
        self.layer_lr
            .iter()
            .rev()
            .find(|r| (r.first..=r.last).contains(&l))
            .map_or(1.0, |r| r.multiplier)
    }

    /// Sequences one optimizer step consumes.
    pub fn sequences_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

/// One line of the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based: the update this row reports.
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub trained_tokens: usize,
    pub seconds: f64,
    pub validation_loss: Option<f64>,
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub config: TrainConfig,
    /// Identifies the data and model settings the run was started with.
    pub fingerprint: String,
    pub history: Vec<StepRecord>,
}

pub struct Trainer<'m> {
    pub model: &'m TrainModel,
    pub config: TrainConfig,
    pub train: Vec<PackedSequence>,
    pub validation: Vec<PackedSequence>,
    pub optimizer: AdamW,
    pub history: Vec<StepRecord>,
    pub fingerprint: String,
}

impl<'m> Trainer<'m> {
    pub fn new(
        model: &'m TrainModel,
        config: TrainConfig,
        train: Vec<PackedSequence>,
        validation: Vec<PackedSequence>,
        fingerprint: String,
    ) -> Result<Self> {
        config.validate()?;
        if train.is_empty() {
            return Err(Error::Data("no training sequence".into()));
        }
        let sizes: Vec<usize> = model.params().iter().map(|p| p.var.elem_count()).collect();
        let adamw = AdamWConfig {
            lr: config.lr,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        };
        Ok(Trainer {
            model,
            optimizer: AdamW::new(adamw, &sizes),
            config,
            train,
            validation,
            history: Vec::new(),
            fingerprint,
        })
    }

    pub fn step(&self) -> u64 {
        self.optimizer.step
    }

    pub fn done(&self) -> bool {
        self.optimizer.step >= self.config.total_steps
    }

    /// The sequences of micro-batch `micro` of update `step`.
    fn micro_batch(&self, step: u64, micro: usize) -> Batch {
        let n = self.train.len();
        let per_step = self.config.sequences_per_step();
        let first = step as usize * per_step + micro * self.config.batch_size;
        let mut batch = Batch::default();
        let mut order_epoch = u64::MAX;
        let mut order = Vec::new();
        for k in first..first + self.config.batch_size {
            let (epoch, i) = ((k / n) as u64, k % n);
            if epoch != order_epoch {
                order = epoch_order(n, self.config.seed, epoch);
                order_epoch = epoch;
            }
            push_sequence(&mut batch, &self.train[order[i]]);
        }
        batch
    }

    /// One optimizer update. Returns its record (also kept in `history`).
    pub fn train_step(&mut self) -> Result<StepRecord> {
        let started = Instant::now();
        let step = self.optimizer.step;
        let params = self.model.params();
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0f32; p.var.elem_count()]).collect();
        let (mut loss_sum, mut n_targets, mut tokens) = (0f64, 0usize, 0usize);
        for micro in 0..self.config.grad_accum {
            let batch = self.micro_batch(step, micro);
            tokens += batch.len();
            let pass = PassKey {
                training: true,
                seed: self.config.seed,
                step,
                micro: micro as u64,
            };
            let (sum, n) = self.model.loss_sum(&batch, &pass)?;
            if n == 0 {
                continue;
            }
            loss_sum += sum.to_scalar::<f32>()? as f64;
            n_targets += n;
            let store = sum.backward()?;
            for (acc, p) in grads.iter_mut().zip(params) {
                if let Some(g) = store.get(p.var.as_tensor()) {
                    let g = g.flatten_all()?.to_vec1::<f32>()?;
                    acc.iter_mut().zip(&g).for_each(|(a, g)| *a += g);
                }
            }
        }
        if n_targets == 0 {
            return Err(Error::Data(format!(
                "step {}: its micro-batches hold no trained token",
                step + 1
            )));
        }
        let inv = 1.0 / n_targets as f32;
        grads.iter_mut().flatten().for_each(|g| *g *= inv);
        let grad_norm = clip_grad_norm(&mut grads, self.config.max_grad_norm);
        if !grad_norm.is_finite() {
            return Err(Error::Data(format!(
                "step {}: the gradient is not finite (loss {}); lower the learning rate",
                step + 1,
                loss_sum / n_targets as f64
            )));
        }
        let lr = self.config.lr * cosine_with_warmup(step, self.config.warmup_steps, self.config.total_steps);
        let lrs: Vec<f64> = params
            .iter()
            .map(|p| lr * self.config.layer_multiplier(p.layer))
            .collect();
        let vars: Vec<&candle_core::Var> = params.iter().map(|p| &p.var).collect();
        self.optimizer.update(&vars, &grads, &lrs)?;
        let record = StepRecord {
            step: step + 1,
            epoch: ((step + 1) as usize * self.config.sequences_per_step()) as f64 / self.train.len() as f64,
            loss: loss_sum / n_targets as f64,
            lr,
            grad_norm,
            tokens,
            trained_tokens: n_targets,
            seconds: started.elapsed().as_secs_f64(),
            validation_loss: None,
        };
        self.history.push(record.clone());
        Ok(record)
    }

    /// Mean loss over the validation sequences (no dropout), or `None` without any.
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let (mut sum, mut n) = (0f64, 0usize);
        for chunk in self.validation.chunks(self.config.batch_size) {
            let mut batch = Batch::default();
            chunk.iter().for_each(|s| push_sequence(&mut batch, s));
            let (s, k) = self.model.loss_sum(&batch, &PassKey::eval())?;
            sum += s.to_scalar::<f32>()? as f64;
            n += k;
        }
        Ok((n > 0).then(|| sum / n as f64))
    }

    /// Records a validation loss on the last step's row.
    pub fn note_validation(&mut self, loss: Option<f64>) {
        if let Some(last) = self.history.last_mut() {
            last.validation_loss = loss;
        }
    }

    /// Writes `dir/trainer_state.json` and `dir/optimizer.safetensors` (moments and the exact
    /// f32 parameters); the caller writes the user-facing weights beside them.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut tensors = HashMap::new();
        for (p, m) in self.model.params().iter().zip(&self.optimizer.moments) {
            let shape = p.var.dims();
            tensors.insert(format!("param.{}", p.name), p.var.as_tensor().clone());
            tensors.insert(
                format!("exp_avg.{}", p.name),
                Tensor::from_slice(&m.exp_avg, shape, &Device::Cpu)?,
            );
            tensors.insert(
                format!("exp_avg_sq.{}", p.name),
                Tensor::from_slice(&m.exp_avg_sq, shape, &Device::Cpu)?,
            );
        }
        let state = TrainerState {
            step: self.optimizer.step,
            config: self.config.clone(),
            fingerprint: self.fingerprint.clone(),
            history: self.history.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Checkpoint(e.to_string()))?;
        replace_file(&dir.join(OPTIMIZER_FILE), |p| {
            candle_core::safetensors::save(&tensors, p).map_err(Error::from)
        })?;
        replace_file(&dir.join(STATE_FILE), |p| {
            std::fs::write(p, &json).map_err(|source| Error::Io {
                path: p.to_path_buf(),
                source,
            })
        })
    }

    /// Continues from a checkpoint written by [`Self::save_state`]: the same settings and data
    /// (else an error naming what differs), its parameters, moments, step and history.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let state_path = dir.join(STATE_FILE);
        let bytes = herd_limits::read_file(&state_path, herd_limits::FileKind::Config)?;
        let state: TrainerState = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", state_path.display())))?;
        if state.fingerprint != self.fingerprint {
            // Fingerprints are `part=hash` lists: name the parts that differ.
            let parts = |f: &str| -> Vec<(String, String)> {
                f.split(';')
                    .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                    .collect()
            };
            let (was, now) = (parts(&state.fingerprint), parts(&self.fingerprint));
            let differ: Vec<&str> = now
                .iter()
                .filter(|(k, v)| !was.iter().any(|(k2, v2)| k2 == k && v2 == v))
                .map(|(k, _)| k.as_str())
                .collect();
            return Err(Error::Checkpoint(format!(
                "{} was made with other {} (the run's fingerprint was {}, this one is {})",
                dir.display(),
                if differ.is_empty() {
                    "settings".to_string()
                } else {
                    differ.join(" and ")
                },
                state.fingerprint,
                self.fingerprint
            )));
        }
        if state.config != self.config {
            return Err(Error::Checkpoint(format!(
                "{} was made with other training settings: {}",
                dir.display(),
                config_difference(&state.config, &self.config)
            )));
        }
        let path = dir.join(OPTIMIZER_FILE);
        let file = herd_model::weights::safetensors::SafetensorsFile::open(&path)?;
        let read = |key: &str| -> Result<Tensor> {
            let info = file
                .tensors()
                .get(key)
                .ok_or_else(|| Error::Checkpoint(format!("{}: `{key}` is missing", path.display())))?;
            Ok(file.read_dense(key, info)?)
        };
        let mut values = HashMap::new();
        let mut moments = Vec::new();
        for p in self.model.params() {
            values.insert(p.name.clone(), read(&format!("param.{}", p.name))?);
            let vec = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
            let m = Moments {
                exp_avg: vec(read(&format!("exp_avg.{}", p.name))?)?,
                exp_avg_sq: vec(read(&format!("exp_avg_sq.{}", p.name))?)?,
            };
            if m.exp_avg.len() != p.var.elem_count() || m.exp_avg_sq.len() != p.var.elem_count() {
                return Err(Error::Checkpoint(format!(
                    "{}: moments of `{}` have the wrong size",
                    path.display(),
                    p.name
                )));
            }
            moments.push(m);
        }
        self.model.set_params(&values)?;
        self.optimizer.moments = moments;
        self.optimizer.step = state.step;
        self.history = state.history;
        Ok(())
    }
}

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

fn push_sequence(batch: &mut Batch, seq: &PackedSequence) {
    for seg in &seq.segments {
        batch.push(&seq.ids[seg.clone()], &seq.trained[seg.clone()]);
    }
}

fn config_difference(a: &TrainConfig, b: &TrainConfig) -> String {
    let (a, b) = (serde_json::to_value(a), serde_json::to_value(b));
    match (a, b) {
        (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) => a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} was {v}, now {}", b.get(k).cloned().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; "),
        _ => "unknown".into(),
    }
}

/// Writes `path` through a temporary file, replacing an earlier version.
pub(crate) fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_file() {
            return Err(Error::Checkpoint(format!(
                "{} exists and is not a regular file",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    herd_limits::write_output(path, &[], write)?
}

/// The loss curve as CSV: step, epoch, loss, validation loss, lr, gradient norm, tokens.
pub fn history_csv(history: &[StepRecord]) -> String {
    let mut out =
        String::from("step,epoch,train_loss,validation_loss,lr,grad_norm,tokens,trained_tokens,seconds\n");
    for r in history {
        out.push_str(&format!(
            "{},{:.4},{:.6},{},{:e},{:.6},{},{},{:.3}\n",
            r.step,
            r.epoch,
            r.loss,
            r.validation_loss.map_or(String::new(), |v| format!("{v:.6}")),
            r.lr,
            r.grad_norm,
            r.tokens,
            r.trained_tokens,
            r.seconds
        ));
    }
    out
}

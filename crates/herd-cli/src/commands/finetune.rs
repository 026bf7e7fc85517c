//! `herd finetune`: load the base, render and pack the data, train, write the adapter (or the
//! full checkpoint), resumable checkpoints, loss.csv and loss.png.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use herd_engine::frontend::Frontend;
use herd_model::WeightSource;
use herd_train::adapter::Adapter;
use herd_train::data::{DataOptions, Dataset, Packing, Renderer, Validation};
use herd_train::lora::LoraSettings;
use herd_train::model::{Mode, TrainModel, TrainOptions};
use herd_train::trainer::{history_csv, TrainConfig, Trainer};

use crate::args::finetune::FinetuneArgs;

pub fn run(args: FinetuneArgs) -> Result<()> {
    let (source, config) =
        WeightSource::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let frontend = Frontend::load(&args.model, &config)?;
    let renderer = Renderer::from_frontend(&frontend);
    let validation = match (&args.validation_fraction, &args.validation_data) {
        (Some(f), _) => Validation::Fraction(*f),
        (None, Some(path)) => Validation::File(path.clone()),
        (None, None) => Validation::None,
    };
    let data_options = DataOptions {
        max_len: args.max_len,
        packing: if args.no_packing {
            Packing::OnePerSequence
        } else {
            Packing::Greedy
        },
        validation,
        seed: args.seed,
    };
    let dataset = Dataset::load(&args.data, &renderer, &data_options)?;
    for bad in dataset.bad_lines.iter().take(20) {
        eprintln!("skipped {}:{}: {}", bad.path.display(), bad.line, bad.reason);
    }
    if dataset.bad_lines.len() > 20 {
        eprintln!("… and {} more skipped lines", dataset.bad_lines.len() - 20);
    }
    let mode = mode(&args)?;
    let per_step = args.batch_size.max(1) * args.grad_accum.max(1);
    let n_train = dataset.train.sequences.len();
    let total_steps = match args.steps {
        Some(n) => n,
        None => {
            if !(args.epochs.is_finite() && args.epochs > 0.0) {
                bail!("--epochs must be a positive number");
            }
            ((args.epochs * n_train as f64) / per_step as f64).ceil().max(1.0) as u64
        }
    };
    let train_config = TrainConfig {
        lr: args.lr,
        beta1: args.adam_beta1,
        beta2: args.adam_beta2,
        eps: args.adam_eps,
        weight_decay: args.weight_decay,
        warmup_steps: args.warmup_steps,
        total_steps,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        layer_lr: args.layer_lr.clone(),
    };
    train_config.validate()?;
    let summary = format!(
        "{} examples ({} validation) → {} sequences of ≤ {} tokens, {} tokens, {} trained; {} cut to length, {} dropped (no trained token within --max-len); {} steps of {} sequences",
        dataset.train_samples.len() + dataset.validation_samples.len(),
        dataset.validation_samples.len(),
        n_train,
        args.max_len,
        dataset.train.n_tokens(),
        dataset.train.n_trained(),
        dataset.truncated(),
        dataset.train.dropped + dataset.validation.dropped,
        total_steps,
        per_step
    );
    if args.dry_run {
        for sample in dataset.train_samples.iter().take(args.dry_run_examples) {
            println!(
                "── line {} · {} tokens, {} trained ──",
                sample.line,
                sample.len(),
                sample.n_trained()
            );
            println!("{}", renderer.marked_text(sample)?);
        }
        println!("{summary}");
        println!("{}", describe_mode(&mode));
        return Ok(());
    }
    check_out_dir(&args)?;
    eprintln!("{summary}");
    let options = TrainOptions {
        mode: mode.clone(),
        seed: args.seed,
        quant: args.quant,
        dtype: args.dtype.dtype(),
        dequantize: false,
    };
    let n_layers = config.layers.len();
    if let Some(r) = args.layer_lr.iter().find(|r| r.first >= n_layers) {
        bail!(
            "--layer-lr {}-…: the model has layers 0 to {}",
            r.first,
            n_layers.saturating_sub(1)
        );
    }
    let model = TrainModel::from_source(&source, config, &options)?;
    if mode == Mode::Full {
        // The weights are written in the base's layout at every save: check now, not after
        // the run, that they can be.
        let params: Vec<(String, Vec<usize>)> = model
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.var.dims().to_vec()))
            .collect();
        herd_train::export::check_replacements(&args.model, &params)?;
    }
    eprintln!(
        "{} · {} trainable values in {} tensors",
        describe_mode(&mode),
        model.n_trainable(),
        model.params().len()
    );
    if let Some(dir) = &args.init_adapter {
        let adapter = Adapter::load(dir)?;
        if let Mode::Lora(run) = &mode {
            let theirs = &adapter.settings;
            if (theirs.rank, theirs.use_rslora) != (run.rank, run.use_rslora)
                || theirs.scaling() != run.scaling()
            {
                bail!(
                    "--init-adapter {}: made with r={} alpha={} rslora={}, this run has r={} alpha={} rslora={} (give the same --lora-rank, --lora-alpha and --use-rslora)",
                    dir.display(),
                    theirs.rank,
                    theirs.alpha,
                    theirs.use_rslora,
                    run.rank,
                    run.alpha,
                    run.use_rslora
                );
            }
        }
        let values: HashMap<_, _> = adapter.tensors.into_iter().collect();
        model
            .set_params(&values)
            .with_context(|| format!("--init-adapter {}", dir.display()))?;
    }
    let fingerprint = fingerprint(&args, &dataset, &mode, model.config());
    let mut trainer = Trainer::new(
        &model,
        train_config,
        dataset.train.sequences.clone(),
        dataset.validation.sequences.clone(),
        fingerprint,
    )?;
    if let Some(dir) = &args.resume {
        trainer
            .resume(dir)
            .with_context(|| format!("--resume {}", dir.display()))?;
        eprintln!("resumed at step {} of {}", trainer.step(), total_steps);
    }
    let bar = progress_bar(total_steps, trainer.step(), args.quiet);
    let started = Instant::now();
    let mut tokens_done = 0usize;
    while !trainer.done() {
        let record = trainer.train_step()?;
        tokens_done += record.tokens;
        let step = record.step;
        let last = step == total_steps;
        if args.eval_every.is_some_and(|n| n > 0 && step % n == 0) || (last && !trainer.validation.is_empty())
        {
            let v = trainer.validation_loss()?;
            trainer.note_validation(v);
        }
        let rate = tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let val = trainer
            .history
            .last()
            .and_then(|r| r.validation_loss)
            .map_or(String::new(), |v| format!(" · val {v:.4}"));
        let line = format!(
            "loss {:.4}{val} · {:.0} tok/s · lr {:.2e}",
            record.loss, rate, record.lr
        );
        match &bar {
            Some(bar) => {
                bar.set_message(line);
                bar.set_position(step);
            }
            None => eprintln!("step {step}/{total_steps} · {line}"),
        }
        if args.save_every.is_some_and(|n| n > 0 && step % n == 0) || last {
            save(
                &args,
                &trainer,
                &model,
                &args.out.join(format!("checkpoint-{step}")),
            )?;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    save(&args, &trainer, &model, &args.out)?;
    write_curves(&args.out, &trainer)?;
    if let Some(last) = trainer.history.last() {
        eprintln!(
            "done: {} steps, final loss {:.4}{}; wrote {}",
            last.step,
            last.loss,
            last.validation_loss
                .map_or(String::new(), |v| format!(", validation {v:.4}")),
            args.out.display()
        );
    }
    Ok(())
}

fn mode(args: &FinetuneArgs) -> Result<Mode> {
    if args.full {
        return Ok(Mode::Full);
    }
    let settings = LoraSettings {
        rank: args.lora_rank,
        alpha: args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f64),
        dropout: args.lora_dropout,
        use_rslora: args.use_rslora,
        target_modules: args
            .target_modules
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
        target_parameters: args.target_parameters.clone(),
    };
    settings.validate()?;
    Ok(Mode::Lora(settings))
}

fn describe_mode(mode: &Mode) -> String {
    match mode {
        Mode::Full => "full fine-tuning: every weight trainable".into(),
        Mode::Lora(l) => format!(
            "LoRA r={} alpha={} dropout={} on [{}]{}",
            l.rank,
            l.alpha,
            l.dropout,
            l.target_modules.join(", "),
            if l.target_parameters.is_empty() {
                String::new()
            } else {
                format!(" + experts [{}]", l.target_parameters.join(", "))
            }
        ),
    }
}

/// --out must be (or become) a folder, and a fresh run refuses one that already holds a run
/// (resuming writes into it).
fn check_out_dir(args: &FinetuneArgs) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {} exists and is not a folder", args.out.display());
    }
    if args.resume.is_some() {
        return std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()));
    }
    if let Ok(mut entries) = std::fs::read_dir(&args.out) {
        if entries.next().is_some() {
            bail!(
                "{} is not empty: give another --out, or --resume {}/checkpoint-N to continue a run",
                args.out.display(),
                args.out.display()
            );
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    Ok(())
}

/// What must not change between a run and its resumption, part by part (a resume names the
/// part that differs; the training settings are compared field by field): the data as token
/// ids, the base model (its resolved config and the sizes of its weight files: another file of
/// the same shapes and sizes is not told apart), and the model-side settings.
fn fingerprint(
    args: &FinetuneArgs,
    dataset: &Dataset,
    mode: &Mode,
    config: &herd_model::ModelConfig,
) -> String {
    fn hash(feed: impl FnOnce(&mut dyn FnMut(&[u8]))) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        feed(&mut |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        });
        format!("{h:016x}")
    }
    let data = hash(|eat| {
        for seq in dataset
            .train
            .sequences
            .iter()
            .chain(&dataset.validation.sequences)
        {
            seq.ids.iter().for_each(|id| eat(&id.to_le_bytes()));
            seq.trained.iter().for_each(|&t| eat(&[u8::from(t)]));
            seq.segments.iter().for_each(|s| eat(&s.len().to_le_bytes()));
        }
    });
    let model = hash(|eat| {
        eat(format!("{config:?}").as_bytes());
        let files: Vec<std::path::PathBuf> = if args.model.is_dir() {
            std::fs::read_dir(&args.model)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        } else {
            vec![args.model.clone()]
        };
        let mut sizes: Vec<(String, u64)> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "gguf"))
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            })
            .collect();
        sizes.sort();
        eat(format!("{sizes:?}").as_bytes());
    });
    let settings = hash(|eat| eat(format!("{mode:?}|{:?}|{:?}", args.quant, args.dtype.dtype()).as_bytes()));
    format!("data={data};model={model};settings={settings}")
}

fn progress_bar(total: u64, at: u64, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps · {msg} · {elapsed_precise} (ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    Some(bar)
}

/// The run's weights in `dir` (adapter files, or a full checkpoint) and its resumable state.
fn save(args: &FinetuneArgs, trainer: &Trainer<'_>, model: &TrainModel, dir: &Path) -> Result<()> {
    let tensors: HashMap<String, candle_core::Tensor> = model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
        .collect();
    match &trainer_mode(model, args)? {
        Mode::Lora(settings) => {
            let base = args.model.to_string_lossy().into_owned();
            Adapter::save(dir, settings, Some(&base), model.module_prefix(), &tensors)?;
        }
        Mode::Full => herd_train::export::write_checkpoint(&args.model, dir, &tensors)?,
    }
    trainer.save_state(dir)?;
    Ok(())
}

fn trainer_mode(_model: &TrainModel, args: &FinetuneArgs) -> Result<Mode> {
    mode(args)
}

fn write_curves(out: &Path, trainer: &Trainer<'_>) -> Result<()> {
    let csv = history_csv(&trainer.history);
    std::fs::write(out.join("loss.csv"), csv)
        .with_context(|| format!("writing {}/loss.csv", out.display()))?;
    let png = herd_train::plot::loss_png(&trainer.history, "herd finetune: loss")?;
    std::fs::write(out.join("loss.png"), png)
        .with_context(|| format!("writing {}/loss.png", out.display()))?;
    Ok(())
}

//! `herd serve`: the OpenAI-compatible server (herd-server) over the loaded model.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use herd_engine::frontend::images::ImageEncoder;
use herd_engine::frontend::Frontend;
use herd_engine::guard::Policy;
use herd_engine::SchedulerConfig;
use herd_server::guard::{GuardMode, GuardService, Screening};
use herd_server::{GuardChoice, ServerOptions};

use crate::args::{GuardModeArg, ServeArgs};

pub fn run(args: ServeArgs) -> Result<()> {
    let host: IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host {}: expected an IP address such as 127.0.0.1", args.host))?;
    let policy = if args.guard_exclude.is_empty() {
        Policy::default()
    } else {
        Policy::excluding(&args.guard_exclude).context("--guard-exclude")?
    };
    if args.model.device != "cpu" && std::env::var("HERD_CUDA_EVENT_TRACKING").as_deref() == Ok("off") {
        // The server loads on one thread, encodes images on request threads and decodes on its
        // engine thread: without cudarc's events nothing orders their streams.
        anyhow::bail!(
            "HERD_CUDA_EVENT_TRACKING=off is for one thread doing everything (generate, bench); \
             `herd serve` uses the GPU from several threads: unset it"
        );
    }
    let path = &args.model.model;
    let model = args.model.load_base()?;
    // `--adapter NAME=DIR`: the model again (its weights shared) with the adapter beside them.
    let adapters = args
        .model
        .named_adapters()
        .into_iter()
        .map(|(name, dir)| {
            let mut adapted = model.clone();
            crate::args::ModelArgs::apply_adapter(&mut adapted, &dir)?;
            Ok((name, adapted))
        })
        .collect::<Result<Vec<_>>>()?;
    let frontend = Frontend::load(path, model.config()).context("serve needs the model's tokenizer")?;
    let images = if herd_engine::frontend::is_gguf(path) {
        None
    } else {
        ImageEncoder::for_model(path, &model)?
    };
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        path.file_name()
            .map_or_else(|| "herd".into(), |n| n.to_string_lossy().into_owned())
    });
    let scheduler = SchedulerConfig {
        max_running: args.max_running as usize,
        max_tokens_per_step: args.max_tokens_per_step,
        kv_budget_bytes: args.kv_budget_mib.saturating_mul(1 << 20),
    };
    let options = ServerOptions {
        model_name: name,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_mib.saturating_mul(1 << 20),
        default_max_tokens: args.default_max_tokens,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        allow_image_urls: args.allow_image_urls,
        image_url_timeout: Duration::from_secs(args.image_url_timeout_secs),
        screening: None,
    };
    let guard = match &args.guard {
        Some(guard_path) => {
            let mut guard_args = args.model.clone();
            guard_args.model = guard_path.clone();
            guard_args.adapter = Vec::new();
            let guard_model = guard_args.load()?;
            let guard_frontend = Frontend::load(guard_path, guard_model.config())
                .context("--guard needs the guard's tokenizer")?;
            let guard_images = if herd_engine::frontend::is_gguf(guard_path) {
                None
            } else {
                ImageEncoder::for_model(guard_path, &guard_model)?
            };
            let name = guard_path
                .file_name()
                .map_or_else(|| "guard".into(), |n| n.to_string_lossy().into_owned());
            GuardChoice::Service(Box::new(GuardService::spawn(
                guard_model,
                guard_frontend,
                guard_images,
                scheduler,
                policy,
                name,
            )?))
        }
        // A served Llama Guard answers /v1/moderations itself.
        None if herd_engine::guard::is_guard_template(&frontend.template) => {
            GuardChoice::ServedModel(Box::new(Frontend::load(path, model.config())?), policy)
        }
        None => GuardChoice::None,
    };
    let screening = args.guard_mode.map(|mode| Screening {
        mode: match mode {
            GuardModeArg::Input => GuardMode::Input,
            GuardModeArg::Output => GuardMode::Output,
            GuardModeArg::Both => GuardMode::Both,
        },
        refusal: args.guard_refusal.clone(),
        fail_open: args.guard_fail_open,
    });
    let options = ServerOptions { screening, ..options };
    let state =
        herd_server::build_state_with_adapters(model, adapters, frontend, images, scheduler, options, guard)?;
    herd_server::serve_blocking(state, SocketAddr::new(host, args.port))?;
    Ok(())
}

//! `herd serve`: the OpenAI-compatible server (herd-server) over the loaded model.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use herd_engine::frontend::images::ImageEncoder;
use herd_engine::frontend::Frontend;
use herd_engine::SchedulerConfig;
use herd_server::ServerOptions;

use crate::args::ServeArgs;

pub fn run(args: ServeArgs) -> Result<()> {
    let host: IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host {}: expected an IP address such as 127.0.0.1", args.host))?;
    let path = &args.model.model;
    let model = args.model.load()?;
    let frontend = Frontend::load(path, model.config()).context("serve needs the model's tokenizer")?;
    let images = if herd_engine::frontend::is_gguf(path) {
        None
    } else {
        ImageEncoder::load(path, model.config().hidden_size, model.dtype(), model.device())?
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
    };
    let state = herd_server::build_state(model, frontend, images, scheduler, options)?;
    herd_server::serve_blocking(state, SocketAddr::new(host, args.port))?;
    Ok(())
}

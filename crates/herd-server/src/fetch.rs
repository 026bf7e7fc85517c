//! Fetching an `http(s)://` image URL (`herd serve --allow-image-urls`): one GET, redirects
//! followed (at most 3), the whole exchange bounded in time, the body in bytes
//! (`--limit image-bytes`), then decoded as any image.

use std::io::Read;
use std::time::Duration;

use herd_engine::image::RgbImage;

/// Downloads and decodes the image at `url`; the error says what went wrong, for a 400.
/// The pixels are taken out of `budget` (the request's) once the header is read.
pub fn image(
    url: &str,
    timeout: Duration,
    budget: &mut herd_engine::image::PixelBudget,
) -> Result<RgbImage, String> {
    let limit = herd_limits::Limits::current().image_bytes;
    let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(3).build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => format!("fetching {url}: HTTP {code}"),
        ureq::Error::Transport(t) => format!("fetching {url}: {t}"),
    })?;
    if let Some(length) = response
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
        .filter(|&l| l > limit)
    {
        return Err(format!(
            "{url} is {length} bytes, more than {limit} (raise with --limit image-bytes=N)"
        ));
    }
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {url}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{url} holds more than {limit} bytes (raise with --limit image-bytes=N)"
        ));
    }
    herd_engine::image::decode_within(&bytes, url, budget).map_err(|e| e.to_string())
}

//! The one place herd-redteam reaches the network: a JSON POST to a path under a base URL the
//! user gave. Redirects are never followed, so no other host is ever contacted.

use std::time::Duration;

use serde_json::Value;

use crate::error::RedteamError;

/// The longest excerpt of an error body kept in a message.
const ERROR_BODY_CHARS: usize = 400;

/// A base URL (`http://host:port/v1`) with its agent; requests go to `{base}/{path}` only.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl Endpoint {
    pub(crate) fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, RedteamError> {
        let bad = |reason| RedteamError::BadUrl {
            url: base_url.to_string(),
            reason,
        };
        let rest = base_url
            .strip_prefix("http://")
            .or_else(|| base_url.strip_prefix("https://"))
            .ok_or_else(|| bad("it must start with http:// or https://"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("it names no host"));
        }
        if rest.contains(['?', '#']) || rest.contains(char::is_whitespace) {
            return Err(bad("a base URL has no query, fragment or spaces"));
        }
        let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(0).build();
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            api_key,
            agent,
        })
    }

    /// `{base}/{path}`, the only URL a request for `path` goes to.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// POSTs `body` to `{base}/{path}` and returns the JSON answer; any status outside 2xx, a
    /// transport failure or a body that is not JSON is an error naming the URL.
    pub(crate) fn post_json(&self, path: &str, body: &Value) -> Result<Value, RedteamError> {
        let url = self.url(path);
        let mut request = self.agent.post(&url).set("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match request.send_string(&body.to_string()) {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                return Err(RedteamError::Status {
                    url,
                    status,
                    body: excerpt(&response.into_string().unwrap_or_default()),
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                // Not `to_string()`: that repeats the URL the error already names.
                let mut message = transport.kind().to_string();
                if let Some(m) = transport.message() {
                    message.push_str(&format!(": {m}"));
                }
                if let Some(source) = std::error::Error::source(&transport) {
                    message.push_str(&format!(": {source}"));
                }
                return Err(RedteamError::Transport { url, message });
            }
        };
        let status = response.status();
        // A 3xx arrives here because redirects are off; following it could reach another host.
        if !(200..300).contains(&status) {
            return Err(RedteamError::Status {
                url,
                status,
                body: excerpt(&response.into_string().unwrap_or_default()),
            });
        }
        // ureq caps this read at 10 MB, which bounds what a misbehaving server can make us hold.
        let text = response.into_string().map_err(|e| RedteamError::Transport {
            url: url.clone(),
            message: format!("reading the body: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| RedteamError::BadResponse {
            url,
            reason: format!("not JSON ({e}): {}", excerpt(&text)),
        })
    }
}

fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(ERROR_BODY_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

//! The API client the command line uses to talk to a daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{UserError, datadir};

/// Where the daemon's API is and how to authenticate.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the API at `api`, with the token from `$UNDERSTUDY_TOKEN` or the data
    /// directory's `token` file.
    ///
    /// # Errors
    ///
    /// No token can be found.
    pub fn new(api: &str, data_dir: Option<&Path>) -> Result<Client> {
        let token = match std::env::var("UNDERSTUDY_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
            _ => {
                let dir = data_dir.map_or_else(datadir::default_data_dir, Path::to_path_buf);
                read_token(&dir)?
            }
        };
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.to_string()
        } else {
            format!("http://{api}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http })
    }

    /// A client with a known token (the in-process daemon of `demo`).
    pub fn with_token(api: &str, token: String) -> Client {
        Client { base: format!("http://{api}"), token, http: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|error| {
            if error.is_connect() || error.is_timeout() {
                anyhow::Error::from(UserError(format!(
                    "cannot reach the understudy daemon at {}: is `understudy serve` running? (give --api ADDR if it listens elsewhere)",
                    self.base
                )))
            } else {
                anyhow::Error::from(error).context(format!("talking to {}", self.base))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        Err(UserError(message).into())
    }

    /// GET, expecting JSON.
    ///
    /// # Errors
    ///
    /// The daemon is unreachable or answered with an error (its message).
    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self.send(self.http.get(self.url(path))).await?;
        Ok(response.json().await?)
    }

    /// GET, expecting text.
    ///
    /// # Errors
    ///
    /// The daemon is unreachable or answered with an error.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let response = self.send(self.http.get(self.url(path))).await?;
        Ok(response.text().await?)
    }

    /// POST JSON, expecting JSON.
    ///
    /// # Errors
    ///
    /// The daemon is unreachable or answered with an error (its message).
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self.send(self.http.post(self.url(path)).json(body)).await?;
        Ok(response.json().await?)
    }

    /// GET a streaming body, handing each line to `line` until the stream ends.
    ///
    /// # Errors
    ///
    /// The daemon is unreachable or the stream breaks.
    pub async fn stream_lines(&self, path: &str, mut line: impl FnMut(&str) -> bool) -> Result<()> {
        use futures::StreamExt;
        let response = self.send(self.http.get(self.url(path))).await?;
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let text = String::from_utf8_lossy(&buffer[..end]).to_string();
                buffer.drain(..=end);
                if !line(&text) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn read_token(dir: &Path) -> Result<String> {
    let path: PathBuf = dir.join("token");
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|_| {
        UserError(format!(
            "no API token: none in {} and UNDERSTUDY_TOKEN is not set (give --data-dir DIR of the daemon, or set UNDERSTUDY_TOKEN)",
            path.display()
        ))
        .into()
    })
}

//! A small HTTP client for the CLI (`meridian kv …`, `status`, `promote`, …) and the benchmark.

use std::time::Duration;

use reqwest::{Client, Response, StatusCode};

pub struct MeridianClient {
    pub base: String,
    pub http: Client,
    token: Option<String>,
}

/// An error with its causes (`error sending request: … : Connection refused`): reqwest's
/// own message alone does not say what went wrong.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {}", with_causes(source))]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status}: {body}")]
    Status { status: StatusCode, body: String },
}

impl MeridianClient {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> MeridianClient {
        let http = Client::builder().timeout(timeout).pool_max_idle_per_host(256).build().expect("HTTP client builds");
        MeridianClient { base: base.trim_end_matches('/').to_owned(), http, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn key_path(key: &str) -> String {
        // Keep '/' (keys are paths), escape everything else that is not URL-safe.
        let mut out = String::from("/v1/kv/");
        for b in key.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, url: &str) -> Result<Response, ClientError> {
        let resp = self.auth(rb).send().await.map_err(|source| ClientError::Unreachable { url: url.to_owned(), source })?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let status = resp.status();
            Err(ClientError::Status { status, body: resp.text().await.unwrap_or_default() })
        }
    }

    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        let url = self.url(path);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn put(&self, path: &str, body: Vec<u8>) -> Result<Response, ClientError> {
        let url = self.url(path);
        self.send(self.http.put(&url).body(body), &url).await
    }

    pub async fn post(&self, path: &str) -> Result<Response, ClientError> {
        let url = self.url(path);
        self.send(self.http.post(&url), &url).await
    }

    pub async fn delete(&self, path: &str) -> Result<Response, ClientError> {
        let url = self.url(path);
        self.send(self.http.delete(&url), &url).await
    }
}

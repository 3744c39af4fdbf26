//! A small JSON-over-HTTP client for the server's /api/v1, turning error bodies into
//! failures with the server's message and hint.

use anyhow::Context;
use protocol::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

use crate::failure::Failure;

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `token` wins; else DATA_DIR/admin.token when it is there.
    pub fn new(server: &str, token: Option<String>, data_dir: &Path) -> Result<Self, Failure> {
        let token = token.or_else(|| std::fs::read_to_string(data_dir.join("admin.token")).ok().map(|t| t.trim().to_owned()));
        let http = reqwest::Client::builder()
            .user_agent(concat!("cobb/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("while building the HTTP client")?;
        Ok(Self { base: format!("{}/api/v1", server.trim_end_matches('/')), token, http })
    }

    /// The server's base URL (without /api/v1) and the token in use, for in-process workers.
    pub fn worker_login(&self) -> (String, Option<String>) {
        (self.base.trim_end_matches("/api/v1").to_owned(), self.token.clone())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send::<(), T>(Method::GET, path, None).await?.ok_or_else(|| Failure::Runtime(anyhow::anyhow!("empty answer from {path}")))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Failure> {
        self.send(Method::POST, path, Some(body)).await?.ok_or_else(|| Failure::Runtime(anyhow::anyhow!("empty answer from {path}")))
    }

    /// The body of a successful GET as text (CSV downloads).
    pub async fn get_text(&self, path: &str) -> Result<String, Failure> {
        Ok(self.exchange::<()>(Method::GET, path, None).await?.unwrap_or_default())
    }

    /// None for 204 No Content.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, Failure> {
        let url = format!("{}{path}", self.base);
        match self.exchange(method, path, body).await? {
            None => Ok(None),
            Some(text) => {
                serde_json::from_str(&text).map(Some).with_context(|| format!("unexpected answer from {url}")).map_err(Failure::Runtime)
            }
        }
    }

    /// The body of a successful answer (None for 204), or the server's error as a failure.
    async fn exchange<B: Serialize>(&self, method: Method, path: &str, body: Option<&B>) -> Result<Option<String>, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            Failure::Runtime(
                anyhow::anyhow!(
                    "cannot reach the cobb server at {}: start one with `cobb server` or point --server/COBB_SERVER at it",
                    self.base.trim_end_matches("/api/v1")
                )
                .context(e),
            )
        })?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = response.text().await.context("while reading the server's answer")?;
        if status.is_success() {
            return Ok(Some(text));
        }
        let error = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => anyhow::anyhow!("{body}"),
            Err(_) => anyhow::anyhow!("the server answered {status}: {}", text.chars().take(200).collect::<String>()),
        };
        Err(if status.is_client_error() { Failure::Input(error) } else { Failure::Runtime(error) })
    }
}

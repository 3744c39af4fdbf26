//! The CLI's view of the one API client (the `client` crate): the same requests, with
//! the server's refusals turned into failures that say what to do next (exit code 2 for a
//! request the server refused as wrong, 1 for everything else).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

use crate::failure::Failure;

pub use client::ClientError;

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused { status, body } if (400..500).contains(&status) => Failure::Input(anyhow::anyhow!("{body}")),
            ClientError::Unreachable { url, message } => Failure::Runtime(anyhow::anyhow!(
                "cannot reach the cobb server at {url} ({message}): start one with `cobb server` or point --server/COBB_SERVER at it"
            )),
            other => Failure::Runtime(other.into()),
        }
    }
}

pub struct Client {
    inner: client::Client,
}

impl Client {
    /// `token` wins; else DATA_DIR/admin.token when it is there.
    pub fn new(server: &str, token: Option<String>, data_dir: &Path) -> Result<Self, Failure> {
        let token = token.or_else(|| std::fs::read_to_string(data_dir.join("admin.token")).ok().map(|t| t.trim().to_owned()));
        Ok(Self { inner: client::Client::new(server, token) })
    }

    /// The server's base URL (without /api/v1) and the token in use, for in-process workers.
    pub fn worker_login(&self) -> (String, Option<String>) {
        (self.inner.servers(), self.inner.token().map(str::to_owned))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        Ok(self.inner.get(path).await?)
    }

    /// Like [`Client::get`], with None when the server answers 404.
    pub async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Failure> {
        match self.inner.get(path).await {
            Ok(value) => Ok(Some(value)),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Failure> {
        Ok(self.inner.post(path, body).await?)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.inner
            .send::<(), T>(reqwest::Method::DELETE, path, None)
            .await?
            .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("empty answer from {path}")))
    }

    /// The body of a successful GET as text (CSV downloads).
    pub async fn post_for_bytes(&self, path: &str) -> Result<bytes::Bytes, Failure> {
        Ok(self.inner.post_for_bytes(path).await?)
    }

    pub async fn get_text(&self, path: &str) -> Result<String, Failure> {
        Ok(self.inner.get_text(path).await?)
    }
}

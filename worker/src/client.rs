//! The worker's HTTP client for the server's worker protocol. Transient failures
//! (connection refused, 5xx) are retried with backoff so a server restart does not lose
//! a run; refusals (409 lease expired/lost) are returned as such.

use protocol::api::{
    ArtifactInfo, Complete, EpochResults, Heartbeat, HeartbeatReply, ItemList, JobInfo, JobLease, LeaseRequest, MetricsAccepted,
    MetricsBatch, Release,
};
use protocol::{ErrorBody, JobKind};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the write because the lease is no longer this worker's.
    #[error("lease refused: {0}")]
    LeaseLost(String),
    #[error("the server answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach the server at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered success with a body this worker cannot read (a version skew).
    #[error("the server's answer to {what} could not be read: {message}")]
    Undecodable { what: String, message: String },
    /// The server answered 204 where an answer was due.
    #[error("the server sent no answer to {what}")]
    Empty { what: String },
    /// A downloaded file's content does not match the sha256 it was asked for.
    #[error("the file downloaded as {expected} has sha256 {actual}")]
    Corrupt { expected: String, actual: String },
    /// A local file could not be written or read while exchanging it with the server.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    /// How long to keep retrying transient failures.
    patience: Duration,
}

impl Client {
    pub fn new(server: &str, token: &str) -> Self {
        Self {
            base: format!("{}/api/v1", server.trim_end_matches('/')),
            token: token.to_owned(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default(),
            patience: Duration::from_secs(300),
        }
    }

    async fn send<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<Option<T>, ClientError> {
        let answer = self.exchange(path, |http, url| http.post(url).json(body)).await?;
        answer
            .map(|bytes| serde_json::from_slice(&bytes))
            .transpose()
            .map_err(|e| ClientError::Undecodable { what: path.to_owned(), message: e.to_string() })
    }

    /// Sends the request `build` makes, retrying transient failures (connection refused,
    /// 5xx) with backoff; the answer's body, or None for 204.
    async fn exchange(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Option<bytes::Bytes>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(250);
        let started = std::time::Instant::now();
        loop {
            let attempt = build(&self.http, &url).bearer_auth(&self.token).send().await;
            let transient = match attempt {
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::NO_CONTENT {
                        return Ok(None);
                    }
                    let body = response.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(Some(body));
                    }
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.message).unwrap_or(text);
                    if status == StatusCode::CONFLICT {
                        return Err(ClientError::LeaseLost(message));
                    }
                    if !status.is_server_error() {
                        return Err(ClientError::Refused { status: status.as_u16(), message });
                    }
                    message
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() > self.patience {
                return Err(ClientError::Unreachable { url, message: transient });
            }
            tracing::warn!(%url, error = %transient, retry_in_ms = delay.as_millis() as u64, "server unavailable; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Uploads a file of the lease's run to the artifact store; returns what was recorded.
    pub async fn upload(&self, run: i64, lease: &str, kind: &str, bytes: Vec<u8>) -> Result<ArtifactInfo, ClientError> {
        let body = bytes::Bytes::from(bytes);
        let path = format!("/runs/{run}/blobs?lease_id={lease}&kind={kind}");
        let answer = self.exchange(&path, |http, url| http.put(url).body(body.clone())).await?;
        let bytes = Self::expect(answer, "upload")?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Undecodable { what: "upload".to_owned(), message: e.to_string() })
    }

    /// A stored file by sha256 (checked here against its content).
    pub async fn download(&self, sha256: &str) -> Result<Vec<u8>, ClientError> {
        let bytes = Self::expect(self.exchange(&format!("/blobs/{sha256}"), |http, url| http.get(url)).await?, "download")?;
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if actual != sha256 {
            return Err(ClientError::Corrupt { expected: sha256.to_owned(), actual });
        }
        Ok(bytes.to_vec())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), message: e.to_string() })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::CONFLICT {
            return Err(ClientError::LeaseLost(text));
        }
        if !status.is_success() {
            return Err(ClientError::Refused { status: status.as_u16(), message: text });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Undecodable { what: path.to_owned(), message: e.to_string() })
    }

    fn expect<T>(value: Option<T>, what: &str) -> Result<T, ClientError> {
        value.ok_or_else(|| ClientError::Empty { what: what.to_owned() })
    }

    /// The next job of `kinds` (every kind when empty) under a new lease, or None.
    pub async fn lease(&self, worker: &str, device: &str, kinds: &[JobKind]) -> Result<Option<JobLease>, ClientError> {
        let request = LeaseRequest { worker: worker.to_owned(), device: Some(device.to_owned()), kinds: kinds.to_vec() };
        self.send("/leases", &request).await
    }

    /// The items the lease's job works on (train and validation for training, test for an
    /// evaluation).
    pub async fn items(&self, lease: &str) -> Result<ItemList, ClientError> {
        self.get(&format!("/leases/{lease}/items")).await
    }

    pub async fn heartbeat(&self, lease: &str, epoch: Option<i64>) -> Result<HeartbeatReply, ClientError> {
        let reply = self.send(&format!("/leases/{lease}/heartbeat"), &Heartbeat { epoch }).await?;
        Self::expect(reply, "heartbeat")
    }

    pub async fn metrics(&self, run: i64, batch: &MetricsBatch) -> Result<MetricsAccepted, ClientError> {
        Self::expect(self.send(&format!("/runs/{run}/metrics"), batch).await?, "metrics")
    }

    pub async fn results(&self, run: i64, results: &EpochResults) -> Result<(), ClientError> {
        self.send::<_, serde_json::Value>(&format!("/runs/{run}/results"), results).await.map(|_| ())
    }

    pub async fn complete(&self, lease: &str, complete: &Complete) -> Result<JobInfo, ClientError> {
        Self::expect(self.send(&format!("/leases/{lease}/complete"), complete).await?, "complete")
    }

    pub async fn release(&self, lease: &str, reason: &str) -> Result<JobInfo, ClientError> {
        Self::expect(self.send(&format!("/leases/{lease}/release"), &Release { reason: reason.to_owned() }).await?, "release")
    }
}

//! cobb's one HTTP client for the server's `/api/v1`, used by the CLI, the workers and
//! `cobb-bench`. JSON in and out, bearer token, the server's error body kept whole (code,
//! message, hint). A client made [`Client::patient`] retries transient failures (connection
//! refused, 5xx) with backoff, so a worker rides out a server restart; the CLI's does not.
//! Given several servers (`http://a:8080,http://b:8080`: replicas on one database), a request
//! that gets no answer from one goes to the next at once; a patient client keeps going round.

use protocol::ErrorBody;
use protocol::api::{
    ArtifactInfo, Complete, EpochResults, Heartbeat, HeartbeatReply, ItemList, JobInfo, JobLease, LeaseRequest, MetricsAccepted,
    MetricsBatch, PredictionsUpload, Release,
};
use protocol::{JobKind, error::code};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// What went wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: its status and body (`code`, `message`, `hint`).
    #[error("{body}")]
    Refused { status: u16, body: ErrorBody },
    /// No answer: the server is down, unreachable, or (for a patient client) stayed so.
    #[error("cannot reach the cobb server at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered success with a body this client cannot read (a version skew).
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

impl ClientError {
    /// A worker's lease is no longer its own (expired, ended, another kind's): send nothing
    /// more for it.
    pub fn is_lease_refusal(&self) -> bool {
        matches!(self, ClientError::Refused { status: 409, body } if body.code == code::LEASE_LOST || body.code == code::LEASE_EXPIRED)
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    /// Each server's `/api/v1` base, in the order given.
    bases: std::sync::Arc<Vec<String>>,
    /// The one in use: the last that answered.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
    http: reqwest::Client,
    /// How long to keep retrying transient failures; None: fail at once.
    patience: Option<Duration>,
}

impl Client {
    /// A client for the server at `server` (`http://host:port`, or several separated by
    /// commas), failing when no server answers.
    pub fn new(server: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("cobb/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap_or_default();
        let mut bases: Vec<String> =
            server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| format!("{}/api/v1", s.trim_end_matches('/'))).collect();
        if bases.is_empty() {
            bases.push(format!("{}/api/v1", server.trim_end_matches('/')));
        }
        Self { bases: std::sync::Arc::new(bases), current: Default::default(), token, http, patience: None }
    }

    /// Like [`Client::new`], retrying connection failures and 5xx answers with backoff for up
    /// to `patience` (workers: a server restart must not lose a run).
    pub fn patient(server: &str, token: Option<String>, patience: Duration) -> Self {
        Self { patience: Some(patience), ..Self::new(server, token) }
    }

    /// The base URL (without /api/v1) of the server in use.
    pub fn server(&self) -> &str {
        self.base().trim_end_matches("/api/v1")
    }

    /// Every server this client may use, as given (comma-separated).
    pub fn servers(&self) -> String {
        self.bases.iter().map(|b| b.trim_end_matches("/api/v1")).collect::<Vec<_>>().join(",")
    }

    fn base(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Sends the request `build` makes and returns the answer's body (None for 204),
    /// retrying transient failures when the client is patient.
    async fn exchange(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Option<bytes::Bytes>, ClientError> {
        let mut delay = Duration::from_millis(250);
        let started = std::time::Instant::now();
        // Servers that gave no answer in this round; after a whole round, wait and go again.
        let mut failed_in_round = 0;
        loop {
            let url = format!("{}{path}", self.base());
            let mut request = build(&self.http, &url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let transient = match request.send().await {
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
                    let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or_else(|_| {
                        ErrorBody::new(
                            code::INTERNAL,
                            format!("the server answered {status}: {}", text.chars().take(200).collect::<String>()),
                        )
                    });
                    if !status.is_server_error() || self.patience.is_none() {
                        return Err(ClientError::Refused { status: status.as_u16(), body });
                    }
                    body.message
                }
                Err(e) => e.to_string(),
            };
            failed_in_round += 1;
            if failed_in_round < self.bases.len() {
                let next = (self.current.load(std::sync::atomic::Ordering::Relaxed) + 1) % self.bases.len();
                self.current.store(next, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%url, error = %transient, next = %self.server(), "server unavailable; trying the next one");
                continue;
            }
            failed_in_round = 0;
            match self.patience {
                Some(patience) if started.elapsed() <= patience => {
                    tracing::warn!(%url, error = %transient, retry_in_ms = delay.as_millis() as u64, "server unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                _ => return Err(ClientError::Unreachable { url: self.servers(), message: transient }),
            }
        }
    }

    fn decode<T: DeserializeOwned>(what: &str, body: Option<bytes::Bytes>) -> Result<Option<T>, ClientError> {
        body.map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|e| ClientError::Undecodable { what: what.to_owned(), message: e.to_string() })
    }

    fn expect<T>(what: &str, value: Option<T>) -> Result<T, ClientError> {
        value.ok_or_else(|| ClientError::Empty { what: what.to_owned() })
    }

    /// Any method and JSON body; None for 204.
    pub async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, ClientError> {
        let answer = self
            .exchange(path, |http, url| {
                let request = http.request(method.clone(), url);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        Self::decode(path, answer)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::expect(path, self.send::<(), T>(Method::GET, path, None).await?)
    }

    /// POST with a JSON body; None when the server answers 204.
    pub async fn post_maybe<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<Option<T>, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        Self::expect(path, self.post_maybe(path, body).await?)
    }

    /// POST whose answer does not matter (204, or a body left unread).
    pub async fn post_ignore<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        self.exchange(path, |http, url| http.post(url).json(body)).await.map(|_| ())
    }

    /// The body of a successful POST without a request body, as bytes (a backup).
    pub async fn post_for_bytes(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        Self::expect(path, self.exchange(path, |http, url| http.post(url)).await?)
    }

    /// The body of a successful GET as text (CSV downloads, pages).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.exchange(path, |http, url| http.get(url)).await?;
        Ok(body.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default())
    }

    // ---- the worker protocol ---------------------------------------------------------

    /// The next job of `kinds` (every kind when empty) under a new lease, or None.
    pub async fn lease(&self, worker: &str, device: &str, kinds: &[JobKind]) -> Result<Option<JobLease>, ClientError> {
        let request = LeaseRequest { worker: worker.to_owned(), device: Some(device.to_owned()), kinds: kinds.to_vec(), job: None };
        self.post_maybe("/leases", &request).await
    }

    /// Leases one job held for this token (a classification batch it created to run itself).
    pub async fn lease_job(&self, worker: &str, device: &str, job: i64) -> Result<Option<JobLease>, ClientError> {
        let request = LeaseRequest { worker: worker.to_owned(), device: Some(device.to_owned()), kinds: Vec::new(), job: Some(job) };
        self.post_maybe("/leases", &request).await
    }

    /// Sends classified images of batch `batch` under its job's lease.
    pub async fn classified(&self, batch: i64, upload: &protocol::classify::ClassifiedUpload) -> Result<serde_json::Value, ClientError> {
        self.post(&format!("/classifications/{batch}/items"), upload).await
    }

    /// The items the lease's job works on (train and validation for training, test for an
    /// evaluation).
    pub async fn items(&self, lease: &str) -> Result<ItemList, ClientError> {
        self.get(&format!("/leases/{lease}/items")).await
    }

    pub async fn heartbeat(&self, lease: &str, epoch: Option<i64>) -> Result<HeartbeatReply, ClientError> {
        self.post(&format!("/leases/{lease}/heartbeat"), &Heartbeat { epoch }).await
    }

    pub async fn metrics(&self, run: i64, batch: &MetricsBatch) -> Result<MetricsAccepted, ClientError> {
        self.post(&format!("/runs/{run}/metrics"), batch).await
    }

    pub async fn results(&self, run: i64, results: &EpochResults) -> Result<(), ClientError> {
        self.post_ignore(&format!("/runs/{run}/results"), results).await
    }

    /// The validation predictions of the run's best epoch so far.
    pub async fn predictions(&self, run: i64, upload: &PredictionsUpload) -> Result<(), ClientError> {
        self.post_ignore(&format!("/runs/{run}/predictions"), upload).await
    }

    pub async fn complete(&self, lease: &str, complete: &Complete) -> Result<JobInfo, ClientError> {
        self.post(&format!("/leases/{lease}/complete"), complete).await
    }

    pub async fn release(&self, lease: &str, reason: &str) -> Result<JobInfo, ClientError> {
        self.post(&format!("/leases/{lease}/release"), &Release { reason: reason.to_owned() }).await
    }

    /// Uploads a file of the lease's run to the artifact store; returns what was recorded.
    pub async fn upload(&self, run: i64, lease: &str, kind: &str, bytes: Vec<u8>) -> Result<ArtifactInfo, ClientError> {
        let body = bytes::Bytes::from(bytes);
        let path = format!("/runs/{run}/blobs?lease_id={lease}&kind={kind}");
        let answer = self.exchange(&path, |http, url| http.put(url).body(body.clone())).await?;
        Self::expect("upload", Self::decode("upload", answer)?)
    }

    /// A stored file by sha256, checked here against its content.
    pub async fn download(&self, sha256: &str) -> Result<Vec<u8>, ClientError> {
        self.download_from(&format!("/blobs/{sha256}"), sha256).await
    }

    /// The promoted checkpoint of the caller's own classification lease (no worker role needed).
    pub async fn download_with_lease(&self, sha256: &str, lease: &str) -> Result<Vec<u8>, ClientError> {
        self.download_from(&format!("/blobs/{sha256}?lease_id={lease}"), sha256).await
    }

    async fn download_from(&self, path: &str, sha256: &str) -> Result<Vec<u8>, ClientError> {
        let bytes = Self::expect("download", self.exchange(path, |http, url| http.get(url)).await?)?;
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if actual != sha256 {
            return Err(ClientError::Corrupt { expected: sha256.to_owned(), actual });
        }
        Ok(bytes.to_vec())
    }
}

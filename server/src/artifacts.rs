//! The artifact store: checkpoints and other files of runs, content-addressed by sha256
//! (`sha256/ab/abcdef...`), in a local directory (default `DATA_DIR/artifacts`) or any
//! object store the `object_store` crate reaches by URL (`s3://bucket/prefix`, with the
//! usual `AWS_*` variables for credentials and endpoint, e.g. MinIO). Workers never talk
//! to it: they upload and download through the server's API, fenced by their lease.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::config::ServerConfig;

pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for logs and errors.
    pub location: String,
}

/// The URI recorded for a stored blob.
pub fn uri(sha256: &str) -> String {
    format!("cas:sha256:{sha256}")
}

fn key(sha256: &str) -> Path {
    Path::from(format!("sha256/{}/{sha256}", &sha256[..2.min(sha256.len())]))
}

/// Why a streamed upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload broke off: {0}")]
    Broken(String),
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// Parts in flight at once while streaming an upload (each up to 5 MB): what an upload can
/// cost the server's memory, whatever its size.
const PARTS_IN_FLIGHT: usize = 2;

/// How long the start-up probe of the store may take before the server gives up.
const STARTUP_CHECK_SECS: u64 = 30;

impl ArtifactStore {
    pub fn open(config: &ServerConfig) -> anyhow::Result<Self> {
        match config.artifacts.as_deref() {
            Some(target) if target.contains("://") => {
                let url = url::Url::parse(target).map_err(|e| anyhow::anyhow!("artifacts URL `{target}`: {e}"))?;
                let options = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.to_ascii_lowercase(), v));
                let (store, prefix) = object_store::parse_url_opts(&url, options)
                    .map_err(|e| anyhow::anyhow!("artifacts URL `{target}` is not an object store cobb can open: {e}"))?;
                let store: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(store, prefix));
                Ok(Self { store, location: target.to_owned() })
            }
            other => {
                let dir = other.map(std::path::PathBuf::from).unwrap_or_else(|| config.data_dir.join("artifacts"));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("while creating the artifact directory {}: {e}", dir.display()))?;
                let store = LocalFileSystem::new_with_prefix(&dir)?;
                Ok(Self { store: Arc::new(store), location: dir.display().to_string() })
            }
        }
    }

    /// Proves at start that the store takes writes: a probe object is written, read back and
    /// deleted. Wrong credentials, a missing bucket or an unreachable endpoint are then a clear
    /// error when the server starts, not a failed checkpoint upload hours later.
    pub async fn check(&self) -> anyhow::Result<()> {
        let probe = Path::from(format!("cobb-probe/{}", uuid::Uuid::new_v4().simple()));
        let attempt = async {
            self.store.put(&probe, Bytes::from_static(b"cobb").into()).await?;
            self.store.get(&probe).await?.bytes().await?;
            self.store.delete(&probe).await
        };
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(STARTUP_CHECK_SECS), attempt).await;
        let remote = self.location.contains("://");
        let error = match outcome {
            Ok(Ok(())) => return Ok(()),
            Err(_) => anyhow::anyhow!(
                "the artifact store {} did not answer within {STARTUP_CHECK_SECS} s: check that it is up and that \
                 AWS_ENDPOINT (and AWS_ALLOW_HTTP=true for a plain-http endpoint) point at it",
                self.location
            ),
            Ok(Err(object_store::Error::NotFound { .. })) if remote => anyhow::anyhow!(
                "the bucket of the artifact store {} does not exist: create it (for example `aws s3 mb s3://BUCKET`) \
                 or correct --artifacts",
                self.location
            ),
            Ok(Err(e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }))) => anyhow::anyhow!(
                "the artifact store {} refused cobb's credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or the role the server runs under) and that they may put, get and delete objects in the bucket ({e})",
                self.location
            ),
            // With no key in the environment the S3 client asks the instance metadata service.
            Ok(Err(e)) if remote && e.to_string().contains("169.254.169.254") => anyhow::anyhow!(
                "the artifact store {} needs credentials and found none: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or run the server where an instance or pod role provides them) ({e})",
                self.location
            ),
            Ok(Err(e)) => anyhow::anyhow!("the artifact store {} cannot be written: {e}", self.location),
        };
        Err(error)
    }

    /// Streams `body` into the store under its sha256 without holding it in memory: the bytes
    /// go to a staging object as they arrive (parts of 5 MB, at most [`PARTS_IN_FLIGHT`] in
    /// flight), hashed on the way; the staged object then moves to its content address, or is
    /// dropped when that content is stored already. Returns the sha256 and the size.
    pub async fn put_stream<E: std::fmt::Display>(
        &self,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
        limit: u64,
    ) -> Result<(String, u64), PutError> {
        let staging = Path::from(format!("staging/{}", uuid::Uuid::new_v4().simple()));
        let mut writer = WriteMultipart::new(self.store.put_multipart(&staging).await?);
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        let streamed: Result<(), PutError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| PutError::Broken(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(PutError::TooLarge { limit });
                }
                hasher.update(&chunk);
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(staging = %staging, error = %abort, "could not abort a broken upload");
            }
            return Err(e);
        }
        writer.finish().await?;
        let sha256 = hex::encode(hasher.finalize());
        let path = key(&sha256);
        if self.store.head(&path).await.is_ok() {
            self.store.delete(&staging).await?;
        } else {
            self.store.rename(&staging, &path).await?;
        }
        Ok((sha256, size))
    }

    pub async fn get(&self, sha256: &str) -> Result<Bytes, object_store::Error> {
        self.store.get(&key(sha256)).await?.bytes().await
    }

    pub async fn delete(&self, sha256: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&key(sha256)).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }
}

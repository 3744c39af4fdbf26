//! The artifact store: checkpoints and other files of runs, content-addressed by sha256
//! (`sha256/ab/abcdef...`), in a local directory (default `DATA_DIR/artifacts`) or any
//! object store the `object_store` crate reaches by URL (`s3://bucket/prefix`, with the
//! usual `AWS_*` variables for credentials and endpoint, e.g. MinIO). Workers never talk
//! to it: they upload and download through the server's API, fenced by their lease.

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutPayload};
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

    /// Stores `bytes` under their sha256 (once: the same content is kept once).
    pub async fn put(&self, bytes: Bytes) -> Result<String, object_store::Error> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let path = key(&sha256);
        if self.store.head(&path).await.is_err() {
            self.store.put(&path, PutPayload::from_bytes(bytes)).await?;
        }
        Ok(sha256)
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

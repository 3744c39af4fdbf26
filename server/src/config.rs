//! Server configuration: defaults -> optional TOML file -> `COBB_*` environment -> flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Unknown keys (in `cobb.toml` above all) are errors that name the key, not silently ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: String,
    /// Holds the SQLite file, artifacts and the first admin token.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; SQLite under `data_dir` when absent.
    pub database_url: Option<String>,
    /// Where artifacts go: a directory (default `data_dir/artifacts`) or an object-store URL.
    pub artifacts: Option<String>,
    /// A lease expires this long after its last heartbeat.
    pub lease_ttl_secs: u64,
    /// How often workers are asked to heartbeat.
    pub heartbeat_secs: u64,
    /// Leases a run may take before an expiry fails it for good.
    pub max_attempts: u32,
    /// How often the reaper looks for expired leases.
    pub reap_interval_secs: u64,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("cobb-data"),
            database_url: None,
            artifacts: None,
            lease_ttl_secs: 60,
            heartbeat_secs: 15,
            max_attempts: 3,
            reap_interval_secs: 5,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ServerConfig {
    /// Layers defaults, `cobb.toml` (or the file named by `COBB_CONFIG`), `COBB_*`
    /// variables, and finally `overrides` (the command-line flags that were given).
    pub fn load(overrides: impl Serialize) -> Result<Self, Box<figment::Error>> {
        let file = std::env::var("COBB_CONFIG").unwrap_or_else(|_| "cobb.toml".to_owned());
        Self::load_from(std::path::Path::new(&file), overrides)
    }

    /// [`ServerConfig::load`] with the TOML file named (a missing file is no error).
    pub fn load_from(file: &std::path::Path, overrides: impl Serialize) -> Result<Self, Box<figment::Error>> {
        Figment::from(Serialized::defaults(ServerConfig::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("COBB_").only(&[
                "bind",
                "data_dir",
                "database_url",
                "artifacts",
                "lease_ttl_secs",
                "heartbeat_secs",
                "max_attempts",
                "reap_interval_secs",
                "max_body_bytes",
            ]))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("cobb.db").display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("cobb.toml");
        std::fs::write(&file, "lease_ttl_secs = 30\nlease_tll_secs = 90\n").expect("write");
        let message = ServerConfig::load_from(&file, NoFlags {}).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("lease_tll_secs"), "{message}");
        std::fs::write(&file, "lease_ttl_secs = 30\n").expect("write");
        let config = ServerConfig::load_from(&file, NoFlags {}).expect("a known key loads");
        assert_eq!(config.lease_ttl_secs, 30);
    }
}

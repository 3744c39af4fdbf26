//! The state every request and background task shares: the database pools, the artifact
//! store, the configuration and the token cache. Built by `startup.rs`; used by routes,
//! services and the dashboards without importing the web layer's startup.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::config::ServerConfig;
use crate::db::Db;
use crate::principal::Principal;

pub struct AppState {
    pub db: Db,
    pub artifacts: crate::artifacts::ArtifactStore,
    pub config: ServerConfig,
    /// token hash -> principal, filled on first use.
    pub token_cache: RwLock<HashMap<String, Principal>>,
}

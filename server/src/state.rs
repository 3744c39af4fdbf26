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
    /// token hash -> principal and until when the entry may be used (a few seconds, so a
    /// revocation or expiry reaches every server at once or within [`TOKEN_CACHE_TTL`]).
    pub token_cache: RwLock<HashMap<String, (Principal, std::time::Instant)>>,
    /// Recent failed dashboard logins by client address: (count, first failure), to slow
    /// token guessing down.
    pub login_failures: std::sync::Mutex<HashMap<String, (u32, std::time::Instant)>>,
    /// sweep id -> its early-stop rule (None: the sweep has none). A sweep's spec never
    /// changes, so the cache is never stale.
    pub early_stop_rules: std::sync::Mutex<HashMap<i64, Option<std::sync::Arc<crate::service::early_stop::Rule>>>>,
    /// sweep id -> the spec it was submitted with, decoded (stored once per sweep and never
    /// changed, so the cache is never stale; emptied past [`PARAMS_CACHE_MAX`] sweeps). A lease
    /// and a completion read it without a database round trip.
    pub sweep_specs: std::sync::Mutex<HashMap<i64, std::sync::Arc<protocol::spec::ExperimentSpec>>>,
    /// run id -> its decoded params, for TPE's history (a run's params never change, so
    /// the cache is never stale; it is emptied when it grows past [`PARAMS_CACHE_MAX`]).
    pub params_cache: std::sync::Mutex<HashMap<i64, std::sync::Arc<protocol::spec::Params>>>,
    /// SQLite's group commit of metric batches (None on PostgreSQL).
    pub group_commit: Option<crate::service::group_commit::GroupCommit>,
    /// PostgreSQL connections kept by each HTTP worker thread for metric writes (None on
    /// SQLite).
    pub hot: Option<crate::store::hot::HotConnections>,
    /// run id -> its sweep id (never changes), so an epoch report finds its sweep's
    /// early-stop rule without reading the run.
    pub run_sweeps: std::sync::Mutex<HashMap<i64, i64>>,
    /// Intervals computed from stored predictions, until those predictions change.
    pub evidence_cache: crate::service::evidence::EvidenceCache,
    pub versus_cache: crate::service::evidence::VersusCache,
    /// This process's counters and request histograms for `/metrics`.
    pub counters: crate::prom::Counters,
}

/// The most runs' params kept decoded in memory.
pub const PARAMS_CACHE_MAX: usize = 200_000;

/// How long a resolved token is trusted without asking the database again. A revocation on
/// this server evicts the entry at once; one made through another server (two servers on one
/// PostgreSQL) or an expiry takes effect within this time.
pub const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

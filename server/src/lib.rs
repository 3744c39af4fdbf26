//! cobb's server: owns the database, the run queue and leases, and the REST API.

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod routes;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use config::ServerConfig;
pub use startup::{AppState, Application};

//! cobb's server: owns the database, the run queue and leases, the REST API and the dashboards.

pub mod artifacts;
pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod principal;
pub mod prom;
pub mod routes;
pub mod service;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ui;

pub use config::ServerConfig;
pub use startup::Application;
pub use state::AppState;

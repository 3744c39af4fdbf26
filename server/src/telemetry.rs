//! Logging setup shared by every cobb binary.

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` (or `COBB_LOG`) overrides the default `info` level.
pub fn init() {
    let filter = std::env::var("COBB_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info,sqlx=warn,sea_orm=warn,actix_server=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

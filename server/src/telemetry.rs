//! Logging setup shared by every cobb binary.

use tracing_subscriber::EnvFilter;

/// What long-running processes (server, workers) log by default.
pub const SERVICE_LEVEL: &str = "info,sqlx=warn,sea_orm=warn,actix_server=warn";

/// What one-shot commands log by default: warnings and errors only, so a worker's warning
/// during `cobb demo`, `cobb train` or `cobb promote --evaluate-here` is seen without
/// burying the command's own output.
pub const COMMAND_LEVEL: &str = "warn";

/// Logs to stderr, once per process; `COBB_LOG` (or `RUST_LOG`) overrides `default`.
pub fn init(default: &str) {
    let filter = std::env::var("COBB_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

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
    // Colours on a terminal only: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// One span per HTTP request (method and path, never the query: it may carry a lease id)
/// and one event when it ends, with its status and latency: 5xx at error, 4xx at info (a
/// refused request is worth seeing in the log), the rest at debug (metric batches arrive
/// thousands a second). Handlers' own events carry the span.
pub async fn request_span(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let span = tracing::info_span!("http", method = %req.method(), path = %req.path());
    let started = std::time::Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let ms = (seconds * 1e6).round() / 1e3;
    // The request histogram, by route pattern (`/api/v1/runs/{id}`: a few dozen series).
    if let Ok(response) = &result
        && let Some(state) = response.request().app_data::<actix_web::web::Data<crate::state::AppState>>()
    {
        let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
        state.counters.observe_request(response.request().method().as_str(), &route, seconds);
    }
    let _inside = span.enter();
    match &result {
        Ok(response) => {
            let status = response.status().as_u16();
            if status >= 500 {
                tracing::error!(status, ms, "request failed");
            } else if status >= 400 {
                tracing::info!(status, ms, "request refused");
            } else {
                tracing::debug!(status, ms, "request");
            }
        }
        Err(e) => tracing::error!(error = %e, ms, "request failed"),
    }
    result
}

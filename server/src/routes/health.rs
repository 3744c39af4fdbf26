use actix_web::{HttpResponse, get, web};
use protocol::api::Health;

use crate::error::ApiError;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(health);
}

/// Prometheus metrics (viewer role: scrape with a bearer token, docs/design.md).
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>, who: crate::principal::Principal) -> Result<HttpResponse, ApiError> {
    who.require(protocol::Role::Viewer)?;
    let queue = crate::store::jobs::queue_counts(&state.db.read).await?;
    let mut pools = crate::db::pool_counts(&state.db);
    if let Some(hot) = &state.hot {
        let (open, idle) = hot.counts();
        pools.push(("metric_writes", open as u32, idle));
    }
    let text = crate::prom::render(&state.counters, &queue, &pools);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text))
}

/// Unauthenticated liveness and database check.
#[get("/health")]
async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    crate::store::tokens::count(&state.db.read).await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        database: format!("{:?}", state.db.backend).to_lowercase(),
    }))
}

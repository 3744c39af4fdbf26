use actix_web::{HttpResponse, get, post, web};
use protocol::Role;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(audit).service(backup);
}

/// A consistent copy of the SQLite database, streamed (admin; `cobb backup`).
#[post("/backup")]
async fn backup(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Admin)?;
    let (size, stream) = service::backup::sqlite(&state).await?;
    tracing::info!(by = %who.name, bytes = size, "database backup taken");
    Ok(HttpResponse::Ok().content_type("application/vnd.sqlite3").insert_header(("Content-Length", size.to_string())).streaming(stream))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    experiment: Option<String>,
}

/// Every audit event (or one experiment's) and whether the hash chain holds.
#[get("/audit")]
async fn audit(state: web::Data<AppState>, who: Principal, q: web::Query<AuditQuery>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::audit::log(&state, q.experiment.as_deref()).await?))
}

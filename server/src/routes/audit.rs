use actix_web::{HttpResponse, get, web};
use protocol::Role;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(audit);
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

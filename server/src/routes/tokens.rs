use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::{CreateToken, WhoAmI};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::service;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(whoami).service(workers).service(audit);
}

#[post("/tokens")]
async fn create(state: web::Data<AppState>, who: Principal, body: web::Json<CreateToken>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Admin)?;
    let created = service::tokens::create(&state, &who.name, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(created))
}

#[get("/whoami")]
async fn whoami(who: Principal) -> HttpResponse {
    HttpResponse::Ok().json(WhoAmI { name: who.name, role: who.role })
}

#[get("/workers")]
async fn workers(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let rows = crate::store::workers::list(&state.db.read).await?;
    let list: Vec<protocol::api::WorkerInfo> = rows
        .into_iter()
        .map(|w| protocol::api::WorkerInfo {
            name: w.name,
            device: w.device,
            last_seen_at: w.last_seen_at,
            current_run: w.current_run_id,
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
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

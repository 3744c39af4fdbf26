use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::SubmitExperiment;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;
use crate::store::runs::RunScope;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(submit).service(list).service(show).service(sweep).service(cancel_sweep);
}

#[post("/experiments")]
async fn submit(state: web::Data<AppState>, who: Principal, body: web::Json<SubmitExperiment>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Submitter)?;
    let body = body.into_inner();
    let dry_run = body.dry_run;
    let result = service::experiments::submit(&state, &who.name, body).await?;
    Ok(if dry_run { HttpResponse::Ok().json(result) } else { HttpResponse::Created().json(result) })
}

#[get("/experiments")]
async fn list(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::experiments::list(&state).await?))
}

#[get("/experiments/{name}")]
async fn show(state: web::Data<AppState>, who: Principal, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::experiments::show(&state, &name).await?))
}

#[get("/sweeps/{id}")]
async fn sweep(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::experiments::sweep(&state, *id).await?))
}

#[post("/sweeps/{id}/cancel")]
async fn cancel_sweep(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Submitter)?;
    Ok(HttpResponse::Ok().json(service::runs::cancel(&state, &who.name, RunScope::Sweep, *id).await?))
}

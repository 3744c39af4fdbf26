use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::RegisterDataset;
use serde::Deserialize;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(register).service(list).service(items).service(show);
}

#[post("/datasets")]
async fn register(state: web::Data<AppState>, who: Principal, body: web::Json<RegisterDataset>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Submitter)?;
    let info = service::datasets::register(&state, &who.name, body.into_inner()).await?;
    Ok(if info.created { HttpResponse::Created().json(info) } else { HttpResponse::Ok().json(info) })
}

#[get("/datasets")]
async fn list(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::datasets::list(&state).await?))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<String>,
}

#[get("/datasets/{name}")]
async fn show(
    state: web::Data<AppState>,
    who: Principal,
    name: web::Path<String>,
    query: web::Query<VersionQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let info = service::datasets::show(&state, &name, query.version.as_deref()).await.map_err(plain_not_found)?;
    Ok(HttpResponse::Ok().json(info))
}

#[get("/datasets/{name}/items")]
async fn items(
    state: web::Data<AppState>,
    who: Principal,
    name: web::Path<String>,
    query: web::Query<VersionQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Reviewer)?;
    let found = service::datasets::items(&state, &name, query.version.as_deref()).await.map_err(plain_not_found)?;
    Ok(HttpResponse::Ok().json(found))
}

/// A missing dataset is a plain 404 on the dataset routes (it is 422 inside a submission).
fn plain_not_found(e: ApiError) -> ApiError {
    match e {
        ApiError::DatasetNotFound(name) => ApiError::not_found("dataset", name),
        other => other,
    }
}

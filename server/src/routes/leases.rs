use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::{Complete, Heartbeat, LeaseRequest, Release};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::service;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(lease).service(heartbeat).service(complete).service(release).service(items).service(blob).service(
        web::resource("/runs/{run}/blobs").app_data(web::PayloadConfig::new(MAX_BLOB_BYTES)).route(web::put().to(upload)),
    );
}

/// The largest file a worker may upload (a B7 checkpoint with its optimizer state is well
/// under it).
pub const MAX_BLOB_BYTES: usize = 4 << 30;

#[derive(serde::Deserialize)]
struct UploadQuery {
    lease_id: String,
    kind: String,
}

/// A file of a run (checkpoint parts), content-addressed in the artifact store.
async fn upload(
    state: web::Data<AppState>,
    who: Principal,
    run: web::Path<i64>,
    q: web::Query<UploadQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Created().json(service::leases::upload_blob(&state, *run, &q.lease_id, &q.kind, body).await?))
}

#[get("/blobs/{sha256}")]
async fn blob(state: web::Data<AppState>, who: Principal, sha256: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().content_type("application/octet-stream").body(service::leases::blob(&state, &sha256).await?))
}

/// 200 with a lease, or 204 when no run is waiting.
#[post("/leases")]
async fn lease(state: web::Data<AppState>, who: Principal, body: web::Json<LeaseRequest>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(match service::leases::lease(&state, &who, body.into_inner()).await? {
        Some(lease) => HttpResponse::Ok().json(lease),
        None => HttpResponse::NoContent().finish(),
    })
}

#[post("/leases/{id}/heartbeat")]
async fn heartbeat(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: Option<web::Json<Heartbeat>>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    let beat = body.map(|b| b.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Ok().json(service::leases::heartbeat(&state, &id, beat).await?))
}

#[post("/leases/{id}/complete")]
async fn complete(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: web::Json<Complete>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().json(service::leases::complete(&state, &id, body.into_inner()).await?))
}

#[post("/leases/{id}/release")]
async fn release(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: web::Json<Release>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().json(service::leases::release(&state, &id, body.into_inner()).await?))
}

#[get("/leases/{id}/items")]
async fn items(state: web::Data<AppState>, who: Principal, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().json(service::leases::items(&state, &id).await?))
}

//! Classification batches (issue 15): created by a submitter, run under a lease (the
//! creator's own process or a worker), read by viewers, reviewed by reviewers.

use actix_web::{HttpResponse, get, post, web};
use protocol::classify::{ClassifiedUpload, ClassifyRequest, ReviewRequest};
use protocol::{Decision, Role};

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service::classify;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(list).service(items).service(upload).service(review).service(one);
}

#[post("/classifications")]
async fn create(state: web::Data<AppState>, who: Principal, body: web::Json<ClassifyRequest>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Submitter)?;
    Ok(HttpResponse::Created().json(classify::create(&state, &who, body.into_inner()).await?))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    experiment: Option<String>,
    limit: Option<u64>,
}

#[get("/classifications")]
async fn list(state: web::Data<AppState>, who: Principal, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(classify::list(&state, q.experiment.as_deref(), q.limit.unwrap_or(100)).await?))
}

#[get("/classifications/{id}")]
async fn one(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(classify::show(&state, *id).await?))
}

#[derive(serde::Deserialize)]
struct ItemsQuery {
    decision: Option<String>,
}

#[get("/classifications/{id}/items")]
async fn items(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    q: web::Query<ItemsQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let decision = q.decision.as_deref().map(str::parse::<Decision>).transpose().map_err(ApiError::InvalidRequest)?;
    Ok(HttpResponse::Ok().json(classify::items(&state, *id, decision).await?))
}

/// Classified images, under the batch job's lease (fenced like every worker write).
#[post("/classifications/{id}/items")]
async fn upload(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<ClassifiedUpload>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker).or_else(|_| who.require(Role::Submitter))?;
    let stored = classify::upload(&state, &who, *id, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "stored": stored })))
}

#[post("/classifications/{id}/review")]
async fn review(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<ReviewRequest>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Reviewer)?;
    Ok(HttpResponse::Ok().json(classify::review(&state, &who, *id, body.into_inner()).await?))
}

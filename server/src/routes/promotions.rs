//! Promotion (reviewer), its test report (viewer; JSON or CSV), and the evaluation jobs
//! that workers lease: the only route by which test items leave the server.

use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::{EvaluationComplete, LeaseRequest, PromoteRequest};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::service::promotions;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(promote)
        .service(list)
        .service(report_csv)
        .service(test_report)
        .service(one)
        .service(lease_evaluation)
        .service(items)
        .service(heartbeat)
        .service(complete);
}

#[post("/runs/{id}/promote")]
async fn promote(state: web::Data<AppState>, who: Principal, id: web::Path<i64>, body: web::Json<PromoteRequest>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Reviewer)?;
    Ok(HttpResponse::Created().json(promotions::promote(&state, &who, *id, &body.reason).await?))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    experiment: Option<String>,
}

#[get("/promotions")]
async fn list(state: web::Data<AppState>, who: Principal, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(promotions::list(&state, q.experiment.as_deref()).await?))
}

#[get("/promotions/{id}")]
async fn one(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(promotions::get(&state, *id).await?))
}

#[get("/promotions/{id}/report")]
async fn test_report(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(promotions::report(&state, *id).await?))
}

#[get("/promotions/{id}/report.csv")]
async fn report_csv(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let report = promotions::report(&state, *id).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"promotion-{}-test-report.csv\"", *id)))
        .body(promotions::report_csv(&report)))
}

/// 200 with an evaluation job, or 204 when none is waiting.
#[post("/evaluations/lease")]
async fn lease_evaluation(state: web::Data<AppState>, who: Principal, body: web::Json<LeaseRequest>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    if body.worker.is_empty() || body.worker.len() > 100 {
        return Err(ApiError::InvalidRequest("worker name must be 1-100 characters".to_owned()));
    }
    Ok(match promotions::lease(&state, &who, &body.worker).await? {
        Some(lease) => HttpResponse::Ok().json(lease),
        None => HttpResponse::NoContent().finish(),
    })
}

#[get("/evaluations/{lease_id}/items")]
async fn items(state: web::Data<AppState>, who: Principal, lease_id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().json(promotions::items(&state, &lease_id).await?))
}

#[post("/evaluations/{lease_id}/heartbeat")]
async fn heartbeat(state: web::Data<AppState>, who: Principal, lease_id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    promotions::heartbeat(&state, &lease_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[post("/evaluations/{lease_id}/complete")]
async fn complete(
    state: web::Data<AppState>,
    who: Principal,
    lease_id: web::Path<String>,
    body: web::Json<EvaluationComplete>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().json(promotions::complete(&state, &lease_id, body.into_inner()).await?))
}

//! Promotion (reviewer) and its test report (viewer; JSON or CSV). The evaluation itself is
//! a job that workers lease through the worker protocol (routes::leases).

use actix_web::{HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::PromoteRequest;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service::promotions;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(promote)
        .service(list)
        .service(report_csv)
        .service(study_md)
        .service(study_html)
        .service(study)
        .service(approve)
        .service(test_report)
        .service(one);
}

#[post("/runs/{id}/promote")]
async fn promote(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<PromoteRequest>,
) -> Result<HttpResponse, ApiError> {
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

#[get("/promotions/{id}/study")]
async fn study(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(promotions::study(&state, *id).await?))
}

#[get("/promotions/{id}/study.md")]
async fn study_md(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let report = promotions::study(&state, *id).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/markdown; charset=utf-8")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"promotion-{}-study-report.md\"", *id)))
        .body(protocol::study::markdown(&report)))
}

#[get("/promotions/{id}/study.html")]
async fn study_html(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let report = promotions::study(&state, *id).await?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(protocol::study::html(&report)))
}

#[derive(serde::Deserialize)]
struct ApproveRequest {
    #[serde(default)]
    note: String,
}

#[post("/promotions/{id}/approve")]
async fn approve(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<ApproveRequest>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Reviewer)?;
    Ok(HttpResponse::Ok().json(promotions::approve(&state, &who, *id, &body.note).await?))
}

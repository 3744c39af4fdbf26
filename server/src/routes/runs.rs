use actix_web::{HttpRequest, HttpResponse, get, post, web};
use protocol::Role;
use protocol::api::{EpochResults, MetricsBatch, RecordArtifact};
use serde::Deserialize;

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;
use crate::store::runs::{Filter, RunScope};

/// What workers send while they train (see routes::api).
pub fn worker_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(ingest_metrics).service(results);
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list)
        .service(show)
        .service(cancel)
        .service(metrics)
        .service(artifacts)
        .service(compare)
        .service(record_predictions)
        .service(predictions)
        .service(evidence)
        .service(versus);
}

#[derive(Deserialize)]
struct SplitQuery {
    /// `val` (default) or `test`.
    split: Option<String>,
}

fn split_of(q: &SplitQuery) -> Result<protocol::Split, ApiError> {
    match q.split.as_deref().unwrap_or("val") {
        "val" => Ok(protocol::Split::Val),
        "test" => Ok(protocol::Split::Test),
        other => Err(ApiError::InvalidRequest(format!("split `{other}`: predictions are stored for `val` and `test`"))),
    }
}

#[post("/runs/{id}/predictions")]
async fn record_predictions(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<protocol::api::PredictionsUpload>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    service::evidence::record_val(&state, &who, *id, body.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[get("/runs/{id}/predictions")]
async fn predictions(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    q: web::Query<SplitQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::evidence::predictions(&state, *id, split_of(&q)?).await?))
}

#[get("/runs/{id}/evidence")]
async fn evidence(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    q: web::Query<SplitQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(&*service::evidence::run_evidence(&state, *id, split_of(&q)?).await?))
}

#[get("/runs/{a}/versus/{b}")]
async fn versus(state: web::Data<AppState>, who: Principal, ids: web::Path<(i64, i64)>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let (a, b) = ids.into_inner();
    Ok(HttpResponse::Ok().json(&*service::evidence::versus(&state, a, b).await?))
}

#[derive(Deserialize)]
struct ListQuery {
    experiment: Option<String>,
    sweep: Option<i64>,
    status: Option<String>,
    /// `created`, `-created`, or a metric key (`val_macro_f1`, `-val_loss`).
    sort: Option<String>,
    order: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

#[get("/runs")]
async fn list(state: web::Data<AppState>, who: Principal, q: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let q = q.into_inner();
    let sort = service::runs::parse_sort(q.sort.as_deref(), q.order.as_deref())?;
    let filter = Filter { experiment: q.experiment, sweep: q.sweep, status: q.status };
    let list = service::runs::list(&state, filter, sort, q.limit.unwrap_or(100), q.offset.unwrap_or(0)).await?;
    Ok(HttpResponse::Ok().json(list))
}

#[get("/runs/{id}")]
async fn show(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::runs::show(&state, *id, who.role.allows(Role::Worker)).await?))
}

#[post("/runs/{id}/cancel")]
async fn cancel(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Submitter)?;
    Ok(HttpResponse::Ok().json(service::runs::cancel(&state, &who.name, RunScope::Run, *id).await?))
}

#[derive(Deserialize)]
struct MetricsQuery {
    key: Option<String>,
}

#[get("/runs/{id}/metrics")]
async fn metrics(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    q: web::Query<MetricsQuery>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::runs::metrics(&state, *id, q.key.as_deref()).await?))
}

#[post("/runs/{id}/metrics")]
async fn ingest_metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<MetricsBatch>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    let header = req.headers().get("Cobb-Lease").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let accepted = service::worker_writes::ingest_metrics(&state, &who, *id, header, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(accepted))
}

#[post("/runs/{id}/results")]
async fn results(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<EpochResults>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    service::worker_writes::record_results(&state, &who, *id, body.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[post("/runs/{id}/artifacts")]
async fn artifacts(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<i64>,
    body: web::Json<RecordArtifact>,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    service::worker_writes::record_artifact(&state, &who, *id, body.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `?runs=1,2,3&baseline=2`: the per-class comparison of 2-20 runs (viewer).
#[get("/compare")]
async fn compare(req: HttpRequest, state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let (ids, baseline) = service::compare::parse_query(req.query_string())?;
    Ok(HttpResponse::Ok().json(service::compare::compare(&state, &ids, baseline).await?))
}

//! The worker protocol, one for every kind of job: lease, heartbeat, items, complete,
//! release; checkpoint files; and the job queue as viewers see it (`/jobs`).

use actix_web::{HttpResponse, get, post, web};
use protocol::api::{Complete, Heartbeat, LeaseRequest, Release};
use protocol::{JobKind, JobStatus, Role};

use crate::error::ApiError;
use crate::principal::Principal;
use crate::service;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(lease)
        .service(heartbeat)
        .service(complete)
        .service(release)
        .service(items)
        .service(blob)
        .service(jobs)
        .service(job)
        .service(web::resource("/runs/{run}/blobs").route(web::put().to(upload)));
}

/// The largest file a worker may upload (a B7 checkpoint with its optimizer state is well
/// under it).
pub const MAX_BLOB_BYTES: usize = 4 << 30;

#[derive(serde::Deserialize)]
struct UploadQuery {
    lease_id: String,
    kind: String,
}

/// A file of a run (checkpoint parts), content-addressed in the artifact store. The lease is
/// checked before a byte of the body is read (a made-up lease costs the server nothing), and
/// the body streams to the store as it arrives, never whole in memory.
async fn upload(
    state: web::Data<AppState>,
    who: Principal,
    run: web::Path<i64>,
    q: web::Query<UploadQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    service::worker_writes::check_upload(&state, &who, *run, &q.lease_id, &q.kind).await?;
    let info = service::worker_writes::upload_blob(&state, &who, *run, &q.lease_id, &q.kind, body, MAX_BLOB_BYTES as u64).await?;
    Ok(HttpResponse::Created().json(info))
}

/// Workers, and the token that runs its own classification (`cobb classify`: a submitter,
/// whose every lease write is fenced like a worker's, and which only ever holds such leases).
fn require_lease_holder(who: &Principal) -> Result<(), ApiError> {
    who.require(Role::Worker).or_else(|_| who.require(Role::Submitter))
}

#[derive(serde::Deserialize)]
struct BlobQuery {
    lease_id: Option<String>,
}

/// A stored file by sha256 (worker role), or the promoted checkpoint of the caller's own live
/// classification lease (`?lease_id=`).
#[get("/blobs/{sha256}")]
async fn blob(
    state: web::Data<AppState>,
    who: Principal,
    sha256: web::Path<String>,
    q: web::Query<BlobQuery>,
) -> Result<HttpResponse, ApiError> {
    match (&q.lease_id, who.require(Role::Worker)) {
        (_, Ok(())) => {}
        (Some(lease_id), Err(_)) => {
            who.require(Role::Submitter)?;
            service::classify::may_download(&state, &who, lease_id, &sha256).await?;
        }
        (None, Err(e)) => return Err(e),
    }
    Ok(HttpResponse::Ok().content_type("application/octet-stream").body(service::worker_writes::blob(&state, &sha256).await?))
}

/// 200 with a job under a new lease, or 204 when no job (of the kinds asked for) is waiting.
#[post("/leases")]
async fn lease(state: web::Data<AppState>, who: Principal, body: web::Json<LeaseRequest>) -> Result<HttpResponse, ApiError> {
    require_lease_holder(&who)?;
    Ok(match service::jobs::lease(&state, &who, body.into_inner()).await? {
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
    require_lease_holder(&who)?;
    let beat = body.map(|b| b.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Ok().json(service::jobs::heartbeat(&state, &who, &id, beat).await?))
}

#[post("/leases/{id}/complete")]
async fn complete(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: web::Json<Complete>,
) -> Result<HttpResponse, ApiError> {
    require_lease_holder(&who)?;
    Ok(HttpResponse::Ok().json(service::jobs::complete(&state, &who, &id, body.into_inner()).await?))
}

#[post("/leases/{id}/release")]
async fn release(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: web::Json<Release>,
) -> Result<HttpResponse, ApiError> {
    require_lease_holder(&who)?;
    Ok(HttpResponse::Ok().json(service::jobs::release(&state, &who, &id, body.into_inner()).await?))
}

#[get("/leases/{id}/items")]
async fn items(state: web::Data<AppState>, who: Principal, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Worker)?;
    Ok(HttpResponse::Ok().json(service::jobs::items(&state, &who, &id).await?))
}

#[derive(serde::Deserialize)]
struct JobQuery {
    run: Option<i64>,
    kind: Option<String>,
    status: Option<String>,
    limit: Option<u64>,
}

/// The job queue, newest first (viewer).
#[get("/jobs")]
async fn jobs(state: web::Data<AppState>, who: Principal, q: web::Query<JobQuery>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    let filter = crate::store::jobs::Filter {
        run: q.run,
        kind: q.kind.as_deref().map(str::parse::<JobKind>).transpose().map_err(ApiError::InvalidRequest)?,
        status: q.status.as_deref().map(str::parse::<JobStatus>).transpose().map_err(ApiError::InvalidRequest)?,
    };
    Ok(HttpResponse::Ok().json(service::jobs::list(&state, filter, q.limit.unwrap_or(100)).await?))
}

/// One job with its attempt history (viewer).
#[get("/jobs/{id}")]
async fn job(state: web::Data<AppState>, who: Principal, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    who.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(service::jobs::show(&state, *id, who.role.allows(Role::Worker)).await?))
}

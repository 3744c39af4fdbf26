//! The worker protocol: lease -> heartbeat -> metrics/results/artifacts -> complete.
//!
//! A lease is live while it has not ended and has not passed `expires_at`. Every write a
//! worker makes names its lease and is refused (409) unless the lease is live and is
//! still its run's current lease. Expired leases are reaped: the run goes back to the
//! queue (attempt + 1 on the next lease) until `max_attempts`, then fails with the reason.

use protocol::api::{
    ArtifactInfo, Complete, EpochResults, Heartbeat, HeartbeatAction, HeartbeatReply, ItemList, Lease, LeaseRequest,
    MetricPoint, MetricsAccepted, MetricsBatch, Outcome, RecordArtifact, Release,
};
use protocol::metrics::ConfusionMatrix;
use protocol::{ExperimentSpec, Split};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, TransactionTrait};
use std::collections::BTreeMap;

use crate::auth::Principal;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store;
use crate::store::leases::LeaseRow;

pub const MAX_METRICS_PER_BATCH: usize = 10_000;

fn ttl_ms(state: &AppState) -> i64 {
    state.config.lease_ttl_secs as i64 * 1000
}

/// Hands the oldest eligible queued run to `req.worker`, or None when there is none.
pub async fn lease(state: &AppState, principal: &Principal, req: LeaseRequest) -> Result<Option<Lease>, ApiError> {
    if req.worker.is_empty() || req.worker.len() > 100 {
        return Err(ApiError::InvalidRequest("worker name must be 1-100 characters".to_owned()));
    }
    reap_expired(state).await?;
    let now = now_ms();
    let lease_id = uuid::Uuid::new_v4().to_string();
    let expires_at = now + ttl_ms(state);
    let tx = state.db.write.begin().await?;
    let Some(run_id) = store::leases::next_queued(&tx).await? else {
        store::workers::seen(&tx, &req.worker, req.device.as_deref(), None, now).await?;
        tx.commit().await?;
        return Ok(None);
    };
    let Some(attempt) = store::leases::claim(&tx, run_id, &lease_id, &req.worker, now).await? else {
        // Taken between the select and the update: impossible under the lock, but the
        // guarded update makes it safe regardless.
        tx.rollback().await?;
        return Ok(None);
    };
    store::leases::insert(&tx, &lease_id, run_id, &req.worker, attempt, now, expires_at).await?;
    store::workers::seen(&tx, &req.worker, req.device.as_deref(), Some(run_id), now).await?;
    tx.commit().await?;
    tracing::info!(run.id = run_id, lease.id = %lease_id, worker = %req.worker, attempt, by = %principal.name, "run leased");

    let conn = &state.db.write;
    let run = super::runs::get(conn, run_id).await?;
    let version = store::datasets::version_by_id(conn, run.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", run.dataset_version_id))?;
    let config: ExperimentSpec = serde_json::from_str(&run.config_json).map_err(anyhow::Error::from)?;
    let info = |a: store::artifacts::ArtifactRow| ArtifactInfo { kind: a.kind, uri: a.uri, sha256: a.sha256, bytes: a.bytes as u64, created_at: a.created_at };
    let resume_from = store::artifacts::latest(conn, run_id, "last_checkpoint").await?.map(info);
    let mut resume_files = Vec::new();
    for kind in ["last_checkpoint", "last_optimizer", "last_state"] {
        if let Some(a) = store::artifacts::latest(conn, run_id, kind).await? {
            resume_files.push(info(a));
        }
    }
    Ok(Some(Lease {
        lease_id,
        run_id,
        run_name: run.name,
        experiment: run.experiment,
        attempt: attempt as u32,
        expires_at,
        ttl_seconds: state.config.lease_ttl_secs,
        heartbeat_seconds: state.config.heartbeat_secs,
        params: serde_json::from_str(&run.params_json).unwrap_or_default(),
        config,
        dataset: version.dataset,
        dataset_version: version.version,
        resume_from,
        resume_files,
    }))
}

/// Why a lease may not write.
pub(crate) enum Refusal {
    Lost(String),
    Expired(LeaseRow),
}

/// The live lease `lease_id` read inside `conn` (a write transaction, so the answer holds
/// until it commits), or why it is not live. With `run_id`, the lease must be that run's.
async fn fenced(conn: &impl ConnectionTrait, lease_id: &str, run_id: Option<i64>) -> Result<Result<LeaseRow, Refusal>, DbErr> {
    let Some(lease) = store::leases::get_for_write(conn, lease_id).await? else {
        return Ok(Err(Refusal::Lost(format!("lease `{lease_id}` does not exist"))));
    };
    if let Some(run_id) = run_id
        && lease.run_id != run_id {
            return Ok(Err(Refusal::Lost(format!("lease `{lease_id}` belongs to run {}, not run {run_id}", lease.run_id))));
        }
    if let Some(ended) = lease.ended_at {
        let reason = lease.end_reason.clone().unwrap_or_else(|| "ended".to_owned());
        return Ok(Err(match reason.as_str() {
            "expired" => Refusal::Expired(lease),
            _ => Refusal::Lost(format!("lease `{lease_id}` of run {} has ended ({reason} at {ended} ms)", lease.run_id)),
        }));
    }
    if lease.expires_at < now_ms() {
        return Ok(Err(Refusal::Expired(lease)));
    }
    Ok(Ok(lease))
}

/// Turns a refusal into the error answer, reaping first when the lease has expired so the
/// run is already requeued when the worker hears about it.
async fn refuse(state: &AppState, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Lost(message) => ApiError::LeaseLost(message),
        Refusal::Expired(lease) => {
            if let Err(e) = reap_expired(state).await {
                return e.into();
            }
            ApiError::LeaseExpired(expired_message(&lease))
        }
    }
}

/// Opens a write transaction holding the live lease, or answers why it is not live.
async fn begin_fenced(
    state: &AppState,
    lease_id: &str,
    run_id: Option<i64>,
) -> Result<(DatabaseTransaction, LeaseRow), ApiError> {
    let tx = state.db.write.begin().await?;
    match fenced(&tx, lease_id, run_id).await? {
        Ok(lease) => Ok((tx, lease)),
        Err(refusal) => {
            tx.rollback().await?;
            Err(refuse(state, refusal).await)
        }
    }
}

fn expired_message(lease: &LeaseRow) -> String {
    format!(
        "lease `{}` of run {} expired: no heartbeat since {} ms (expiry at {} ms); the run was requeued or failed by the reaper",
        lease.id, lease.run_id, lease.heartbeat_at, lease.expires_at
    )
}

pub async fn heartbeat(state: &AppState, lease_id: &str, _beat: Heartbeat) -> Result<HeartbeatReply, ApiError> {
    let (tx, lease) = begin_fenced(state, lease_id, None).await?;
    let now = now_ms();
    let expires_at = now + ttl_ms(state);
    store::leases::extend(&tx, lease_id, now, expires_at).await?;
    store::workers::touch(&tx, &lease.worker, now).await?;
    let run = super::runs::get(&tx, lease.run_id).await?;
    tx.commit().await?;
    let action = if run.cancel_requested != 0 { HeartbeatAction::Stop } else { HeartbeatAction::Continue };
    Ok(HeartbeatReply { action, expires_at })
}

pub async fn complete(state: &AppState, lease_id: &str, req: Complete) -> Result<protocol::api::RunInfo, ApiError> {
    let (tx, lease) = begin_fenced(state, lease_id, None).await?;
    let now = now_ms();
    let run = super::runs::get(&tx, lease.run_id).await?;
    let retry = req.outcome == Outcome::Failed && req.retryable && run.attempt < run.max_attempts;
    let status = if run.cancel_requested != 0 {
        "cancelled"
    } else if retry {
        "queued"
    } else {
        match req.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    };
    let error = match (req.outcome, &req.error) {
        (Outcome::Failed, None) => Some("the worker reported a failure without a reason".to_owned()),
        (_, e) => e.clone(),
    };
    if !store::leases::end(&tx, lease_id, "completed", now).await?
        || store::runs::finish_lease(&tx, run.id, lease_id, status, error, req.best_epoch, !retry, now).await? != 1
    {
        tx.rollback().await?;
        return Err(ApiError::LeaseLost(format!("lease `{lease_id}` ended while completing")));
    }
    store::workers::seen(&tx, &lease.worker, None, None, now).await?;
    tx.commit().await?;
    tracing::info!(run.id = run.id, lease.id = %lease_id, status, "run completed");
    Ok(super::runs::run_info(super::runs::get(&state.db.write, run.id).await?))
}

/// Gives a run back (worker shutting down): it is queued again at once and resumes from
/// its last checkpoint; the attempt is not held against it.
pub async fn release(state: &AppState, lease_id: &str, req: Release) -> Result<protocol::api::RunInfo, ApiError> {
    let (tx, lease) = begin_fenced(state, lease_id, None).await?;
    let now = now_ms();
    let run = super::runs::get(&tx, lease.run_id).await?;
    let status = if run.cancel_requested != 0 { "cancelled" } else { "queued" };
    store::leases::end(&tx, lease_id, "released", now).await?;
    store::runs::finish_lease(&tx, run.id, lease_id, status, None, None, status == "cancelled", now).await?;
    if status == "queued" {
        store::runs::forgive_attempt(&tx, run.id).await?;
    }
    store::workers::seen(&tx, &lease.worker, None, None, now).await?;
    tx.commit().await?;
    tracing::info!(run.id = run.id, lease.id = %lease_id, reason = %req.reason, "lease released");
    Ok(super::runs::run_info(super::runs::get(&state.db.write, run.id).await?))
}

/// Ends every expired lease: its run is requeued, failed (attempts used up) or
/// cancelled (a cancel was pending). Returns how many leases were reaped.
pub async fn reap_expired(state: &AppState) -> Result<usize, DbErr> {
    let now = now_ms();
    let expired = store::leases::expired(&state.db.write, now).await?;
    let mut reaped = 0;
    for lease in expired {
        let tx = state.db.write.begin().await?;
        if !store::leases::end(&tx, &lease.id, "expired", now).await? {
            tx.rollback().await?;
            continue;
        }
        if let Some(run) = store::runs::get(&tx, lease.run_id).await? {
            let (status, error) = if run.cancel_requested != 0 {
                ("cancelled", None)
            } else if run.attempt >= run.max_attempts {
                (
                    "failed",
                    Some(format!(
                        "lease expired on attempt {} of {} (worker `{}` stopped heartbeating); no attempts left",
                        run.attempt, run.max_attempts, lease.worker
                    )),
                )
            } else {
                ("queued", None)
            };
            let finished = status != "queued";
            store::runs::finish_lease(&tx, run.id, &lease.id, status, error, None, finished, now).await?;
            tracing::warn!(run.id = run.id, lease.id = %lease.id, worker = %lease.worker, status, "lease expired");
        }
        store::workers::seen(&tx, &lease.worker, None, None, lease.heartbeat_at).await?;
        tx.commit().await?;
        reaped += 1;
    }
    Ok(reaped)
}

fn lease_of(header: Option<String>, body: Option<String>) -> Result<String, ApiError> {
    body.or(header).ok_or_else(|| {
        ApiError::InvalidRequest("worker writes must name their lease: `lease_id` in the body or a Cobb-Lease header".to_owned())
    })
}

pub async fn ingest_metrics(
    state: &AppState,
    run_id: i64,
    header_lease: Option<String>,
    batch: MetricsBatch,
) -> Result<MetricsAccepted, ApiError> {
    if batch.metrics.len() > MAX_METRICS_PER_BATCH {
        return Err(ApiError::InvalidRequest(format!(
            "{} metrics in one batch; send at most {MAX_METRICS_PER_BATCH}",
            batch.metrics.len()
        )));
    }
    for m in &batch.metrics {
        if m.key.is_empty() || m.key.len() > 250 || m.step < 0 || !m.value.is_finite() {
            return Err(ApiError::InvalidRequest(format!(
                "metric `{}` at step {}: keys are 1-250 characters, steps >= 0, values finite",
                m.key, m.step
            )));
        }
        if m.key.starts_with("test_") {
            return Err(ApiError::InvalidRequest(format!(
                "metric `{}`: test_* metrics are written by the server from a promotion's evaluation only; \
                 training reports train_* and val_* keys",
                m.key
            )));
        }
    }
    let lease_id = lease_of(header_lease, batch.lease_id)?;
    // One point per (key, step): the last one sent wins, as a resend would.
    let mut unique: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for m in batch.metrics {
        unique.insert((m.key, m.step), m.value);
    }
    let points: Vec<MetricPoint> = unique.into_iter().map(|((key, step), value)| MetricPoint { key, step, value }).collect();
    let accepted = MetricsAccepted { accepted: points.len() as u64 };
    if points.is_empty() {
        // Nothing to write, but the lease must still be live.
        let (tx, _) = begin_fenced(state, &lease_id, Some(run_id)).await?;
        tx.commit().await?;
        return Ok(accepted);
    }
    // Hot path: one fenced statement for an ordinary batch.
    if points.len() <= 1000 && store::metrics::upsert_fenced(&state.db.write, run_id, &lease_id, &points, now_ms()).await? > 0 {
        return Ok(accepted);
    }
    // Large batches, and refusals (which say why), go through a fenced transaction.
    let (tx, _) = begin_fenced(state, &lease_id, Some(run_id)).await?;
    store::metrics::upsert(&tx, run_id, &points, now_ms()).await?;
    tx.commit().await?;
    Ok(accepted)
}

pub async fn record_results(state: &AppState, run_id: i64, req: EpochResults) -> Result<(), ApiError> {
    let matrix = ConfusionMatrix::from_parts(req.confusion.classes, req.confusion.counts)
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if req.epoch < 0 {
        return Err(ApiError::InvalidRequest("epoch must be >= 0".to_owned()));
    }
    let report = matrix.report();
    let (tx, _) = begin_fenced(state, &req.lease_id, Some(run_id)).await?;
    store::results::upsert_epoch(&tx, run_id, req.epoch, Split::Val.as_str(), &matrix, &report).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn record_artifact(state: &AppState, run_id: i64, req: RecordArtifact) -> Result<(), ApiError> {
    if req.sha256.len() != 64 || !req.sha256.bytes().all(|b| b.is_ascii_hexdigit()) || req.kind.is_empty() || req.uri.is_empty() {
        return Err(ApiError::InvalidRequest("an artifact needs a kind, a uri and a 64-digit sha256".to_owned()));
    }
    let (tx, _) = begin_fenced(state, &req.lease_id, Some(run_id)).await?;
    store::artifacts::insert(&tx, run_id, &req.lease_id, &req.kind, &req.uri, &req.sha256, req.bytes as i64, now_ms())
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Stores a file of a run (a checkpoint part) in the artifact store under its sha256 and
/// records it as an artifact of `kind`, fenced by the lease before and after the upload. A
/// newer `last_*` artifact replaces the run's older one of that kind, and the older blob is
/// deleted unless something else still names it.
pub async fn upload_blob(state: &AppState, run_id: i64, lease_id: &str, kind: &str, bytes: bytes::Bytes) -> Result<ArtifactInfo, ApiError> {
    if kind.is_empty() || kind.len() > 100 || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b)) {
        return Err(ApiError::InvalidRequest("an artifact kind is 1-100 letters, digits, '_', '-', '.' or '/'".to_owned()));
    }
    // Nothing is stored for a lease that is not live.
    let (tx, _) = begin_fenced(state, lease_id, Some(run_id)).await?;
    tx.commit().await?;
    let size = bytes.len() as i64;
    let sha256 = state
        .artifacts
        .put(bytes)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("artifact store {}: {e}", state.artifacts.location)))?;
    let uri = crate::artifacts::uri(&sha256);
    let now = now_ms();
    let (tx, _) = begin_fenced(state, lease_id, Some(run_id)).await?;
    store::artifacts::insert(&tx, run_id, lease_id, kind, &uri, &sha256, size, now).await?;
    let replaced = if kind.starts_with("last_") { store::artifacts::delete_older(&tx, run_id, kind).await? } else { Vec::new() };
    tx.commit().await?;
    for old in replaced {
        if old != sha256
            && !store::artifacts::referenced(&state.db.write, &old).await?
            && let Err(e) = state.artifacts.delete(&old).await
        {
            tracing::warn!(sha256 = %old, error = %e, "could not delete a replaced checkpoint blob");
        }
    }
    Ok(ArtifactInfo { kind: kind.to_owned(), uri, sha256, bytes: size as u64, created_at: now })
}

/// A stored blob, by sha256 (only blobs that an artifact names).
pub async fn blob(state: &AppState, sha256: &str) -> Result<bytes::Bytes, ApiError> {
    if sha256.len() != 64 || !store::artifacts::referenced(&state.db.read, sha256).await? {
        return Err(ApiError::not_found("artifact", sha256));
    }
    state.artifacts.get(sha256).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => ApiError::not_found("artifact blob", sha256),
        e => ApiError::Internal(anyhow::anyhow!("artifact store {}: {e}", state.artifacts.location)),
    })
}

/// The train and validation items of the lease's dataset version. The test split never
/// leaves the server through a training lease.
pub async fn items(state: &AppState, lease_id: &str) -> Result<ItemList, ApiError> {
    let (tx, lease) = begin_fenced(state, lease_id, None).await?;
    tx.commit().await?;
    let conn = &state.db.read;
    let run = super::runs::get(conn, lease.run_id).await?;
    let version = store::datasets::version_by_id(conn, run.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", run.dataset_version_id))?;
    super::datasets::item_list(conn, version, &[Split::Train, Split::Val]).await
}

/// Runs the reaper every `reap_interval_secs` until the process ends.
pub fn spawn_reaper(state: actix_web::web::Data<AppState>) -> tokio::task::JoinHandle<()> {
    let every = std::time::Duration::from_secs(state.config.reap_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = reap_expired(&state).await {
                tracing::error!(error = %e, "reaper failed; retrying at the next tick");
            }
        }
    })
}

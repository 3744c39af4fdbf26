//! What a worker writes while it trains a run: metrics, per-epoch confusion matrices,
//! artifacts and checkpoint files. Each write is fenced by a live lease of the run's
//! training job (service::jobs); an evaluation lease writes only through its completion.

use protocol::Split;
use protocol::api::{ArtifactInfo, EpochResults, MetricPoint, MetricsAccepted, MetricsBatch, RecordArtifact};
use protocol::metrics::ConfusionMatrix;
use std::collections::BTreeMap;

use super::jobs::{Expect, begin_fenced};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;
use crate::store;

pub const MAX_METRICS_PER_BATCH: usize = 10_000;

fn lease_of(header: Option<String>, body: Option<String>) -> Result<String, ApiError> {
    body.or(header).ok_or_else(|| {
        ApiError::InvalidRequest("worker writes must name their lease: `lease_id` in the body or a Cobb-Lease header".to_owned())
    })
}

pub async fn ingest_metrics(
    state: &AppState,
    who: &Principal,
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
        if m.key.is_empty() || m.key.len() > 250 || m.step < 0 || m.step > MAX_STEP || !m.value.is_finite() {
            return Err(ApiError::InvalidRequest(format!(
                "metric `{}` at step {}: keys are 1-250 characters, steps 0-{MAX_STEP}, values finite",
                m.key, m.step
            )));
        }
        if protocol::keys::is_test_metric(&m.key) {
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
    let points: std::sync::Arc<Vec<MetricPoint>> =
        std::sync::Arc::new(unique.into_iter().map(|((key, step), value)| MetricPoint { key, step, value }).collect());
    let mut accepted = MetricsAccepted { accepted: points.len() as u64, stop: false };
    if points.is_empty() {
        // Nothing to write, but the lease must still be live.
        let (tx, _, _) = begin_fenced(state, who, &lease_id, Expect::training_of(run_id)).await?;
        tx.commit().await?;
        return Ok(accepted);
    }
    // Hot path: one fenced statement for an ordinary batch. Large batches, and refusals
    // (which say why), go through a fenced transaction.
    let written = if points.len() > 1000 {
        0
    } else {
        match &state.group_commit {
            Some(group) => match group.write(run_id, &lease_id, &who.name, points.clone(), now_ms()).await {
                super::group_commit::Written::Rows(rows) => rows,
                super::group_commit::Written::Retry => 0,
            },
            None if state.db.backend == sea_orm::DbBackend::Postgres => upsert_pg(state, run_id, &lease_id, &who.name, &points).await?,
            None => store::metrics::upsert_fenced(&state.db.write, run_id, &lease_id, &who.name, &points, now_ms()).await?,
        }
    };
    if written == 0 {
        let (tx, _, _) = begin_fenced(state, who, &lease_id, Expect::training_of(run_id)).await?;
        store::metrics::upsert(&tx, run_id, &points, now_ms()).await?;
        tx.commit().await?;
    }
    crate::prom::Counters::add(&state.counters.metric_points, points.len() as u64);
    // An epoch's report: the sweep's early-stop rule decides whether the run goes on.
    accepted.stop = super::early_stop::after_epoch(state, run_id, &points).await?;
    Ok(accepted)
}

/// [`store::metrics::upsert_fenced_pg`] on this thread's own connection (store::hot), or on
/// one from the pool when the server's own connections are all in use.
async fn upsert_pg(state: &AppState, run_id: i64, lease_id: &str, holder: &str, points: &[MetricPoint]) -> Result<u64, ApiError> {
    let failed = |e: sea_orm::sqlx::Error| ApiError::from(sea_orm::DbErr::Custom(format!("while storing metrics: {e}")));
    if let Some(hot) = &state.hot
        && let Some(mut conn) = hot.get().await
    {
        match store::metrics::upsert_fenced_pg(conn.conn(), run_id, lease_id, holder, points, now_ms()).await {
            Ok(rows) => {
                conn.keep();
                return Ok(rows);
            }
            // A connection PostgreSQL closed (a restart, an idle timeout): drop it and try
            // once more on the pool.
            Err(e) if store::hot::connection_lost(&e) => {
                tracing::warn!(error = %e, "a metric-write connection failed; retrying on the pool");
            }
            Err(e) => {
                conn.keep();
                return Err(failed(e));
            }
        }
    }
    let mut conn = state.db.write.get_postgres_connection_pool().acquire().await.map_err(failed)?;
    store::metrics::upsert_fenced_pg(&mut conn, run_id, lease_id, holder, points, now_ms()).await.map_err(failed)
}

/// An epoch's validation confusion matrix: the lease is checked first, then the matrix must
/// be over exactly the dataset version's classes, in order (nothing else is computed or
/// stored, whatever its size).
pub async fn record_results(state: &AppState, who: &Principal, run_id: i64, req: EpochResults) -> Result<(), ApiError> {
    if req.epoch < 0 || req.epoch > MAX_STEP {
        return Err(ApiError::InvalidRequest(format!("epoch must be 0-{MAX_STEP}")));
    }
    let (tx, _, job) = begin_fenced(state, who, &req.lease_id, Expect::training_of(run_id)).await?;
    let matrix = match version_matrix(&tx, job.dataset_version_id, req.confusion).await {
        Ok(matrix) => matrix,
        Err(e) => {
            tx.rollback().await?;
            return Err(e);
        }
    };
    let report = matrix.report();
    store::results::upsert_epoch(&tx, run_id, req.epoch, Split::Val.as_str(), &matrix, &report).await?;
    tx.commit().await?;
    Ok(())
}

/// The largest step (epoch) a metric or result may carry: far beyond any training run, and
/// small enough that every page can do arithmetic on it.
pub const MAX_STEP: i64 = 1_000_000;

/// `confusion` as a matrix, when its classes are exactly the dataset version's (the same
/// names in the same order): a worker cannot store a matrix of any other shape.
pub(crate) async fn version_matrix(
    conn: &impl sea_orm::ConnectionTrait,
    version_id: i64,
    confusion: ConfusionMatrix,
) -> Result<ConfusionMatrix, ApiError> {
    let version =
        store::datasets::version_by_id(conn, version_id).await?.ok_or_else(|| ApiError::not_found("dataset version", version_id))?;
    let classes = version.classes()?;
    if confusion.classes != classes {
        return Err(ApiError::InvalidRequest(format!(
            "the confusion matrix's classes must be the dataset version's {} classes in their order ({}), not {} class(es)",
            classes.len(),
            classes.join(", "),
            confusion.classes.len()
        )));
    }
    ConfusionMatrix::from_parts(confusion.classes, confusion.counts).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

pub async fn record_artifact(state: &AppState, who: &Principal, run_id: i64, req: RecordArtifact) -> Result<(), ApiError> {
    if req.sha256.len() != 64 || !req.sha256.bytes().all(|b| b.is_ascii_hexdigit()) || req.kind.is_empty() || req.uri.is_empty() {
        return Err(ApiError::InvalidRequest("an artifact needs a kind, a uri and a 64-digit sha256".to_owned()));
    }
    let (tx, _, _) = begin_fenced(state, who, &req.lease_id, Expect::training_of(run_id)).await?;
    store::artifacts::insert(&tx, run_id, &req.lease_id, &req.kind, &req.uri, &req.sha256, req.bytes as i64, now_ms()).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores a file of a run (a checkpoint part) in the artifact store under its sha256 and
/// records it as an artifact of `kind`, fenced by the lease before and after the upload. A
/// newer `last_*` artifact replaces the run's older one of that kind, and the older blob is
/// deleted unless something else still names it.
/// Whether an upload may start: a valid kind and a live training lease of the run held by
/// `who` (checked again when the file is recorded).
pub async fn check_upload(state: &AppState, who: &Principal, run_id: i64, lease_id: &str, kind: &str) -> Result<(), ApiError> {
    if kind.is_empty() || kind.len() > 100 || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b)) {
        return Err(ApiError::InvalidRequest("an artifact kind is 1-100 letters, digits, '_', '-', '.' or '/'".to_owned()));
    }
    let (tx, _, _) = begin_fenced(state, who, lease_id, Expect::training_of(run_id)).await?;
    tx.commit().await?;
    Ok(())
}

/// Streams an upload's body into the artifact store (the lease was checked before: see
/// [`check_upload`]) and records it as an artifact of the run.
pub async fn upload_blob<E: std::fmt::Display>(
    state: &AppState,
    who: &Principal,
    run_id: i64,
    lease_id: &str,
    kind: &str,
    body: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    limit: u64,
) -> Result<ArtifactInfo, ApiError> {
    use crate::artifacts::PutError;
    let (sha256, size) = state.artifacts.put_stream(body, limit).await.map_err(|e| match e {
        PutError::TooLarge { .. } => ApiError::PayloadTooLarge { limit: limit as usize },
        PutError::Broken(why) => ApiError::InvalidRequest(format!("the upload broke off: {why}")),
        PutError::Store(e) => ApiError::Internal(anyhow::anyhow!("artifact store {}: {e}", state.artifacts.location)),
    })?;
    // The lease may have ended while the body streamed in: then nothing is recorded, and the
    // blob goes unless something else names it.
    match record_blob(state, who, run_id, lease_id, kind, &sha256, size as i64).await {
        Ok(info) => Ok(info),
        Err(e) => {
            if !store::artifacts::referenced(&state.db.write, &sha256).await.unwrap_or(true)
                && let Err(delete) = state.artifacts.delete(&sha256).await
            {
                tracing::warn!(sha256 = %sha256, error = %delete, "could not delete an upload whose lease ended");
            }
            Err(e)
        }
    }
}

async fn record_blob(
    state: &AppState,
    who: &Principal,
    run_id: i64,
    lease_id: &str,
    kind: &str,
    sha256: &str,
    size: i64,
) -> Result<ArtifactInfo, ApiError> {
    let sha256 = sha256.to_owned();
    let uri = crate::artifacts::uri(&sha256);
    let now = now_ms();
    let (tx, _, _) = begin_fenced(state, who, lease_id, Expect::training_of(run_id)).await?;
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

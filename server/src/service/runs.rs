//! Reading and cancelling runs.

use protocol::api::{ArtifactInfo, CancelResult, EpochClassResults, MetricSeries, MetricValue, RunDetail, RunInfo, RunList};
use protocol::metrics::ClassMetrics;
use protocol::{ExperimentSpec, RunStatus, Split};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use std::collections::BTreeMap;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::runs::{Filter, RunRow, RunScope, Sort};

pub const MAX_PAGE: u64 = 10_000;

pub(crate) fn run_info(row: RunRow) -> Result<RunInfo, ApiError> {
    let (status, cancel_requested, params) = (row.status()?, row.cancel_requested()?, row.params()?);
    let constraints_missed = row.violations()?;
    Ok(RunInfo {
        constraints_missed,
        id: row.id,
        name: row.name,
        experiment: row.experiment,
        sweep_id: row.sweep_id,
        index: row.idx as u32,
        status,
        cancel_requested,
        attempt: row.attempt as u32,
        max_attempts: row.max_attempts as u32,
        params,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        worker: row.worker,
        error: row.error,
        best_epoch: row.best_epoch,
        sort_value: row.sort_value,
    })
}

/// `sort` is `created`, `-created`, or a metric key; a leading `-` sorts descending
/// (metric sorts default to descending for scores and ascending for losses).
pub fn parse_sort(sort: Option<&str>, order: Option<&str>) -> Result<Sort, ApiError> {
    let raw = sort.unwrap_or("-created");
    let (explicit_desc, key) = match raw.strip_prefix('-') {
        Some(k) => (Some(true), k),
        None => (None, raw),
    };
    let descending = match order {
        Some("desc") => Some(true),
        Some("asc") => Some(false),
        Some(other) => return Err(ApiError::InvalidRequest(format!("order `{other}` must be asc or desc"))),
        None => explicit_desc,
    };
    if key == "created" {
        return Ok(Sort::Created { descending: descending.unwrap_or(false) });
    }
    if key.is_empty() || key.len() > 250 {
        return Err(ApiError::InvalidRequest("sort needs `created` or a metric key".to_owned()));
    }
    let lower_is_better = key.ends_with("loss");
    Ok(Sort::Metric { key: key.to_owned(), descending: descending.unwrap_or(!lower_is_better) })
}

pub async fn list(state: &AppState, filter: Filter, sort: Sort, limit: u64, offset: u64) -> Result<RunList, ApiError> {
    if let Some(status) = &filter.status {
        status.parse::<RunStatus>().map_err(ApiError::InvalidRequest)?;
    }
    let limit = limit.clamp(1, MAX_PAGE);
    let conn = &state.db.read;
    let rows = store::runs::list(conn, &filter, &sort, limit, offset).await?;
    let total = store::runs::count(conn, &filter).await? as u64;
    Ok(RunList { runs: rows.into_iter().map(run_info).collect::<Result<_, _>>()?, total })
}

pub(crate) async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<RunRow, ApiError> {
    store::runs::get(conn, id).await?.ok_or_else(|| ApiError::not_found("run", id))
}

pub(crate) async fn class_results(
    conn: &impl ConnectionTrait,
    run_id: i64,
    split: Split,
    epoch: Option<i64>,
) -> Result<Option<EpochClassResults>, ApiError> {
    let Some(matrix) = store::results::matrix(conn, run_id, split.as_str(), epoch).await? else {
        return Ok(None);
    };
    let confusion = matrix.decode(run_id, split.as_str())?;
    let rows = store::results::classes(conn, run_id, split.as_str(), matrix.epoch).await?;
    let mut by_class: BTreeMap<String, ClassMetrics> = rows
        .into_iter()
        .map(|r| {
            (
                r.class.clone(),
                ClassMetrics { class: r.class, precision: r.precision, recall: r.recall, f1: r.f1, support: r.support as u64 },
            )
        })
        .collect();
    let per_class = confusion.classes.iter().filter_map(|c| by_class.remove(c)).collect();
    Ok(Some(EpochClassResults { epoch: matrix.epoch, split, per_class, confusion }))
}

/// A configuration's identity for the validation budget: sha256 of the resolved config with
/// its name and description blanked (they do not change what is trained).
pub(crate) fn config_hash(config: &ExperimentSpec) -> String {
    use sha2::Digest;
    let mut bare = config.clone();
    bare.name.clear();
    bare.description.clear();
    bare.max_val_configs = None;
    hex::encode(sha2::Sha256::digest(serde_json::to_string(&bare).unwrap_or_default().as_bytes()))
}

/// The spec a sweep was submitted with (stored once per sweep), decoded.
pub(crate) async fn sweep_spec(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<ExperimentSpec, ApiError> {
    let json = store::experiments::sweep_spec_json(conn, sweep_id).await?.ok_or_else(|| ApiError::not_found("sweep", sweep_id))?;
    Ok(store::decode_json(&format!("sweeps row {sweep_id}"), "spec_json", &json)?)
}

/// [`sweep_spec`] through the server's cache (a sweep's spec never changes).
pub(crate) async fn sweep_spec_cached(
    state: &AppState,
    conn: &impl ConnectionTrait,
    sweep_id: i64,
) -> Result<std::sync::Arc<ExperimentSpec>, ApiError> {
    if let Some(spec) = state.sweep_specs.lock().ok().and_then(|cache| cache.get(&sweep_id).cloned()) {
        return Ok(spec);
    }
    let spec = std::sync::Arc::new(sweep_spec(conn, sweep_id).await?);
    if let Ok(mut cache) = state.sweep_specs.lock() {
        if cache.len() >= crate::state::PARAMS_CACHE_MAX {
            cache.clear();
        }
        cache.insert(sweep_id, spec.clone());
    }
    Ok(spec)
}

/// The complete spec a run trains with: its sweep's spec (stored once per sweep) with the
/// run's params set, defaults resolved, and the frozen dataset version it names (lineage).
/// Derived exactly as the spec was expanded at submission.
pub(crate) async fn config_of(conn: &impl ConnectionTrait, run: &RunRow, dataset_version: &str) -> Result<ExperimentSpec, ApiError> {
    config_from(&sweep_spec(conn, run.sweep_id).await?, run, dataset_version)
}

/// [`config_of`] from the sweep's spec already at hand.
pub(crate) fn config_from(spec: &ExperimentSpec, run: &RunRow, dataset_version: &str) -> Result<ExperimentSpec, ApiError> {
    let params = run.params()?;
    let mut config = protocol::plan::config_for(spec, &params).map_err(|issue| {
        ApiError::Internal(anyhow::anyhow!("run {}'s params no longer fit its sweep's spec at `{}`: {}", run.id, issue.path, issue.message))
    })?;
    config.dataset.version = Some(dataset_version.to_owned());
    Ok(config)
}

/// One run in full; lease ids only when `reveal_lease_ids` (a worker or admin asks).
pub async fn show(state: &AppState, id: i64, reveal_lease_ids: bool) -> Result<RunDetail, ApiError> {
    let conn = &state.db.read;
    let row = get(conn, id).await?;
    let version = store::datasets::version_by_id(conn, row.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", row.dataset_version_id))?;
    let config = config_of(conn, &row, &version.version).await?;
    let latest =
        store::metrics::latest(conn, id).await?.into_iter().map(|m| (m.key, MetricValue { step: m.step, value: m.value })).collect();
    let class_results = class_results(conn, id, Split::Val, row.best_epoch).await?;
    let artifacts = store::artifacts::of_run(conn, id)
        .await?
        .into_iter()
        .map(|a| ArtifactInfo { kind: a.kind, uri: a.uri, sha256: a.sha256, bytes: a.bytes as u64, created_at: a.created_at })
        .collect();
    let leases = store::leases::of_run(conn, id)
        .await?
        .into_iter()
        .map(|l| super::jobs::lease_info(l, reveal_lease_ids))
        .collect::<Result<_, _>>()?;
    Ok(RunDetail {
        run: run_info(row)?,
        config,
        dataset: version.dataset,
        dataset_version: version.version,
        latest,
        class_results,
        artifacts,
        leases,
    })
}

pub async fn metrics(state: &AppState, id: i64, key: Option<&str>) -> Result<Vec<MetricSeries>, ApiError> {
    get(&state.db.read, id).await?;
    let mut out: Vec<MetricSeries> = Vec::new();
    for m in store::metrics::series(&state.db.read, id, key).await? {
        let point = MetricValue { step: m.step, value: m.value };
        match out.last_mut() {
            Some(series) if series.key == m.key => series.points.push(point),
            _ => out.push(MetricSeries { key: m.key, points: vec![point] }),
        }
    }
    Ok(out)
}

pub async fn cancel(state: &AppState, actor: &str, scope: RunScope, id: i64) -> Result<CancelResult, ApiError> {
    let tx = state.db.write.begin().await?;
    let experiment = match scope {
        RunScope::Run => {
            let run = get(&tx, id).await?;
            let status: RunStatus = run.status.parse().map_err(ApiError::InvalidRequest)?;
            if status.is_terminal() {
                return Err(ApiError::Conflict(format!("run {id} has already {status}; there is nothing to cancel")));
            }
            run.experiment
        }
        RunScope::Sweep => store::experiments::sweep(&tx, id).await?.ok_or_else(|| ApiError::not_found("sweep", id))?.experiment,
    };
    let now = now_ms();
    if matches!(scope, RunScope::Sweep) {
        // A tpe sweep creates no more runs.
        store::experiments::cancel_sweep(&tx, id, now).await?;
    }
    let cancelled = store::jobs::cancel_queued(&tx, scope, id, now).await?;
    let stopping = store::jobs::request_cancel(&tx, scope, id, now).await?;
    let action = match scope {
        RunScope::Run => protocol::AuditAction::RunCancel,
        RunScope::Sweep => protocol::AuditAction::SweepCancel,
    };
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action,
            experiment: Some(&experiment),
            run_id: matches!(scope, RunScope::Run).then_some(id),
            details: json!({"id": id, "cancelled": cancelled, "stopping": stopping}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(CancelResult { cancelled, stopping })
}

//! Submitting experiment specs: validate, pin the frozen dataset version, expand the
//! sweep and queue its runs, all in one transaction.

use protocol::api::{ExperimentDetail, ExperimentSummary, PlannedRunInfo, SubmitExperiment, SubmitResult, SweepInfo};
use protocol::plan;
use protocol::sweep::Method;
use sea_orm::TransactionTrait;
use serde_json::json;

use super::counts_for;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::experiments::{ExperimentRow, NewExperiment, NewSweep, SweepRow};
use crate::store::runs::NewRun;

fn run_name(experiment: &str, sweep_id: Option<i64>, index: u32) -> String {
    match sweep_id {
        Some(id) => format!("{experiment}-s{id}-{index}"),
        None => format!("{experiment}-{index}"),
    }
}

pub async fn submit(state: &AppState, actor: &str, req: SubmitExperiment) -> Result<SubmitResult, ApiError> {
    if req.file.as_ref().is_some_and(|f| f.len() > 255 || f.chars().any(char::is_control)) {
        return Err(ApiError::InvalidRequest("the spec's file name is at most 255 characters, without control characters".to_owned()));
    }
    let file = req.file.clone().unwrap_or_else(|| "experiment.yaml".to_owned());
    // Parsing is CPU work (bounded by plan::MAX_SPEC_BYTES and MAX_FLOW_DEPTH): off the
    // request threads.
    let (yaml, name) = (req.yaml.clone(), file.clone());
    let parsed = tokio::task::spawn_blocking(move || plan::parse(&yaml, &name))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the spec parser crashed: {e}")))?;
    let plan::Plan { spec: parsed, runs: planned } = parsed.map_err(|e| ApiError::InvalidSpec(Box::new(e)))?;

    let tx = state.db.write.begin().await?;
    let version = super::datasets::resolve(&tx, &parsed.dataset.name, parsed.dataset.version.as_deref()).await?;
    let existing = store::experiments::by_name(&tx, &parsed.name).await?;
    if let Some(e) = &existing
        && e.dataset_version_id != version.id
    {
        return Err(ApiError::Conflict(format!(
            "experiment `{}` is frozen on dataset version {} of `{}`, but this spec resolves to {}; \
                 set dataset.version: {} to add runs to it, or give the spec a new name to study the new version",
            e.name,
            &e.dataset_version[..12],
            e.dataset,
            &version.version[..12],
            &e.dataset_version[..12]
        )));
    }
    let method = match parsed.sweep.as_ref().map(|s| s.method) {
        Some(Method::Grid) => "grid",
        Some(Method::Random) => "random",
        None => "single",
    };
    if req.dry_run {
        tx.rollback().await?;
        return Ok(SubmitResult {
            experiment: parsed.name.clone(),
            dataset: version.dataset.clone(),
            dataset_version: version.version.clone(),
            sweep_id: None,
            dry_run: true,
            runs: planned
                .iter()
                .map(|r| PlannedRunInfo {
                    index: r.index,
                    name: run_name(&parsed.name, None, r.index),
                    params: r.params.clone(),
                    run_id: None,
                })
                .collect(),
        });
    }

    let now = now_ms();
    let spec_json = serde_json::to_string(&parsed).map_err(anyhow::Error::from)?;
    let experiment_id = match &existing {
        Some(e) => e.id,
        None => {
            store::experiments::insert(
                &tx,
                NewExperiment {
                    name: &parsed.name,
                    description: &parsed.description,
                    dataset_version_id: version.id,
                    spec_yaml: &req.yaml,
                    spec_json: &spec_json,
                    created_at: now,
                    created_by: actor,
                },
            )
            .await?
        }
    };
    let sweep_id = store::experiments::insert_sweep(
        &tx,
        NewSweep {
            experiment_id,
            method,
            file: req.file.as_deref(),
            spec_yaml: &req.yaml,
            spec_json: &spec_json,
            parallel: parsed.sweep.as_ref().and_then(|s| s.parallel).map(i64::from),
            created_at: now,
            created_by: actor,
        },
    )
    .await?;
    // The spec is stored once, with the sweep; a run stores only the params it sets, and its
    // config is derived from the two (service::runs::config_of).
    let mut runs = Vec::with_capacity(planned.len());
    for run in planned {
        let name = run_name(&parsed.name, Some(sweep_id), run.index);
        let params_json = serde_json::to_string(&run.params).map_err(anyhow::Error::from)?;
        let id = store::runs::insert(
            &tx,
            NewRun {
                experiment_id,
                sweep_id,
                idx: i64::from(run.index),
                name: &name,
                max_attempts: i64::from(state.config.max_attempts),
                params_json: &params_json,
                now,
            },
        )
        .await?;
        runs.push(PlannedRunInfo { index: run.index, name, params: run.params, run_id: Some(id) });
    }
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action: protocol::AuditAction::ExperimentSubmit,
            experiment: Some(&parsed.name),
            run_id: None,
            details: json!({"sweep_id": sweep_id, "runs": runs.len(), "file": req.file,
                            "dataset_version": version.version, "method": method}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(experiment = %parsed.name, sweep.id = sweep_id, runs = runs.len(), "experiment submitted");
    Ok(SubmitResult {
        experiment: parsed.name,
        dataset: version.dataset,
        dataset_version: version.version,
        sweep_id: Some(sweep_id),
        dry_run: false,
        runs,
    })
}

fn summary(row: &ExperimentRow, counts: protocol::api::StatusCounts, sweeps: i64) -> ExperimentSummary {
    ExperimentSummary {
        name: row.name.clone(),
        description: row.description.clone(),
        dataset: row.dataset.clone(),
        dataset_version: row.dataset_version.clone(),
        created_at: row.created_at,
        created_by: row.created_by.clone(),
        sweeps: sweeps as u64,
        runs: counts,
    }
}

pub async fn list(state: &AppState) -> Result<Vec<ExperimentSummary>, ApiError> {
    let conn = &state.db.read;
    let counts = store::experiments::run_counts_by_experiment(conn).await?;
    let mut out = Vec::new();
    for row in store::experiments::list(conn).await? {
        let sweeps = store::experiments::sweep_count(conn, row.id).await?;
        out.push(summary(&row, counts_for(&counts, row.id), sweeps));
    }
    Ok(out)
}

fn sweep_info(row: SweepRow, counts: protocol::api::StatusCounts) -> SweepInfo {
    SweepInfo {
        id: row.id,
        experiment: row.experiment,
        method: row.method,
        file: row.file,
        spec_yaml: row.spec_yaml,
        created_at: row.created_at,
        created_by: row.created_by,
        runs: counts,
    }
}

pub async fn show(state: &AppState, name: &str) -> Result<ExperimentDetail, ApiError> {
    let conn = &state.db.read;
    let row = store::experiments::by_name(conn, name).await?.ok_or_else(|| ApiError::not_found("experiment", name))?;
    let all_counts = store::experiments::run_counts_by_experiment(conn).await?;
    let sweep_counts = store::experiments::run_counts_by_sweep(conn, row.id).await?;
    let sweeps: Vec<SweepInfo> = store::experiments::sweeps_of(conn, row.id)
        .await?
        .into_iter()
        .map(|s| {
            let counts = counts_for(&sweep_counts, s.id);
            sweep_info(s, counts)
        })
        .collect();
    Ok(ExperimentDetail {
        summary: summary(&row, counts_for(&all_counts, row.id), sweeps.len() as i64),
        spec_yaml: row.spec_yaml.clone(),
        sweeps,
    })
}

pub async fn sweep(state: &AppState, id: i64) -> Result<SweepInfo, ApiError> {
    let conn = &state.db.read;
    let row = store::experiments::sweep(conn, id).await?.ok_or_else(|| ApiError::not_found("sweep", id))?;
    let experiment =
        store::experiments::by_name(conn, &row.experiment).await?.ok_or_else(|| ApiError::not_found("experiment", &row.experiment))?;
    let counts = store::experiments::run_counts_by_sweep(conn, experiment.id).await?;
    Ok(sweep_info(row, counts_for(&counts, id)))
}

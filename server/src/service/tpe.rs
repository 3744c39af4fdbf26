//! TPE sweeps (`method: tpe`): a run is created when a worker asks for work and no job is
//! queued, suggested by `protocol::tpe` from every earlier run of the sweep as the database
//! holds them (finished runs with their objective, running and queued ones as the constant
//! liar). Nothing about a sweep is kept in memory: any server, restarted or not, suggests the
//! same configuration from the same history.

use protocol::spec::Goal;
use protocol::tpe::{self, Observation, Settings, Space};
use protocol::{JobStatus, plan};
use sea_orm::DatabaseTransaction;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::runs::NewRun;

/// Candidates drawn from the good estimator per suggestion (Optuna's default).
const CANDIDATES: usize = 24;

/// Creates the next run of the oldest tpe sweep with room, with its queued training job;
/// returns the job id (None when no tpe sweep may create one now).
pub async fn create_next(state: &AppState, tx: &DatabaseTransaction, now: i64) -> Result<Option<i64>, ApiError> {
    for sweep_id in store::experiments::tpe_sweeps_with_room(tx).await? {
        store::experiments::lock_sweep(tx, sweep_id).await?;
        // Read again under the lock: another server may have just created one.
        let Some(sweep) = store::experiments::tpe_sweep(tx, sweep_id).await? else { continue };
        let full = sweep.max_runs.is_some_and(|max| sweep.created >= max);
        let busy = sweep.parallel.is_some_and(|p| sweep.running >= p);
        if sweep.cancelled_at.is_some() || full || busy {
            continue;
        }
        return Ok(Some(create(state, tx, &sweep, now).await?));
    }
    Ok(None)
}

async fn create(state: &AppState, tx: &DatabaseTransaction, sweep: &store::experiments::TpeSweep, now: i64) -> Result<i64, ApiError> {
    let what = format!("sweeps row {}", sweep.id);
    let spec: protocol::ExperimentSpec = store::decode_json(&what, "spec_json", &sweep.spec_json)?;
    let Some(sweep_spec) = &spec.sweep else {
        return Err(ApiError::Internal(anyhow::anyhow!("sweep {} is a tpe sweep without a sweep section", sweep.id)));
    };
    let (metric, goal) = (spec.select.metric.clone(), spec.select.goal);
    let mut history = Vec::new();
    for row in store::experiments::history(tx, sweep.id, &metric, goal == Goal::Maximize).await? {
        let params: protocol::spec::Params = store::decode_json(&format!("runs row {}", row.id), "params_json", &row.params_json)?;
        let status: JobStatus = store::decode_enum(&format!("runs row {}", row.id), "status", &row.status)?;
        let value = match status {
            JobStatus::Succeeded | JobStatus::Pruned => match row.value {
                Some(v) => Some(v),
                None => continue,
            },
            JobStatus::Queued | JobStatus::Running => None,
            // Failed and cancelled runs say nothing about the objective (as in Optuna).
            JobStatus::Failed | JobStatus::Cancelled => continue,
        };
        // Constrained TPE: a finished run that missed a constraint ranks below every feasible one.
        history.push(Observation { params, value, feasible: row.feasible != Some(0) });
    }
    let settings = Settings {
        seed: sweep_spec.seed.unwrap_or(spec.train.seed),
        startup: sweep_spec.startup_runs() as usize,
        candidates: CANDIDATES,
        goal,
    };
    let index = sweep.created;
    let params = tpe::suggest(&Space::of(sweep_spec), &history, index as u64, &settings);
    let mut config = plan::config_for(&spec, &params).map_err(|issue| {
        ApiError::Internal(anyhow::anyhow!("tpe suggested {params:?} for sweep {}, which is not a valid run: {}", sweep.id, issue.message))
    })?;
    config.dataset.version = Some(sweep.dataset_version.clone());
    let name = format!("{}-s{}-{index}", sweep.experiment, sweep.id);
    let params_json = serde_json::to_string(&params).map_err(anyhow::Error::from)?;
    let run_id = store::runs::insert(
        tx,
        NewRun {
            experiment_id: sweep.experiment_id,
            sweep_id: sweep.id,
            idx: index,
            name: &name,
            max_attempts: i64::from(state.config.max_attempts),
            params_json: &params_json,
            config_hash: &super::runs::config_hash(&config),
            now,
        },
    )
    .await?;
    let job = store::jobs::of_run_training(tx, run_id).await?.ok_or_else(|| ApiError::not_found("training job of run", run_id))?;
    tracing::info!(sweep.id = sweep.id, run.id = run_id, index, finished = history.iter().filter(|o| o.value.is_some()).count(),
        params = %protocol::sweep::describe(&params), "tpe suggested a run");
    Ok(job)
}

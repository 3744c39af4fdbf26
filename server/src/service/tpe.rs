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
        store::experiments::lock_sweep(tx, sweep_id, store::experiments::SweepLock::Suggest).await?;
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

/// A sweep's runs as the sampler (and the importance analysis) sees them, in run order:
/// finished runs (succeeded or pruned) with their best value of `select.metric` and whether
/// they met the constraints, queued and running ones without a value; failed and cancelled
/// runs are left out (they say nothing about the objective, as in Optuna).
pub async fn observations(
    state: &AppState,
    conn: &impl sea_orm::ConnectionTrait,
    sweep_id: i64,
    spec: &protocol::ExperimentSpec,
) -> Result<Vec<Observation>, ApiError> {
    let (metric, goal) = (spec.select.metric.clone(), spec.select.goal);
    let mut history = Vec::new();
    for row in store::experiments::history(conn, sweep_id, &metric, goal == Goal::Maximize).await? {
        let cached = state.params_cache.lock().ok().and_then(|c| c.get(&row.id).cloned());
        let params = match cached {
            Some(params) => params,
            None => {
                let decoded: protocol::spec::Params = store::decode_json(&format!("runs row {}", row.id), "params_json", &row.params_json)?;
                let decoded = std::sync::Arc::new(decoded);
                if let Ok(mut cache) = state.params_cache.lock() {
                    if cache.len() >= crate::state::PARAMS_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(row.id, decoded.clone());
                }
                decoded
            }
        };
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
        history.push(Observation { params: (*params).clone(), value, feasible: row.feasible != Some(0) });
    }
    Ok(history)
}

async fn create(state: &AppState, tx: &DatabaseTransaction, sweep: &store::experiments::TpeSweep, now: i64) -> Result<i64, ApiError> {
    let what = format!("sweeps row {}", sweep.id);
    let spec: protocol::ExperimentSpec = store::decode_json(&what, "spec_json", &sweep.spec_json)?;
    let Some(sweep_spec) = &spec.sweep else {
        return Err(ApiError::Internal(anyhow::anyhow!("sweep {} is a tpe sweep without a sweep section", sweep.id)));
    };
    let goal = spec.select.goal;
    let history = observations(state, tx, sweep.id, &spec).await?;
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

/// What a sweep's page shows about its search: each parameter's importance (PED-ANOVA), every
/// finished run's position on each parameter's axis (0..1) with its objective, and the best
/// value found after each finished run.
pub struct Analysis {
    pub metric: String,
    pub goal: Goal,
    pub importance: Vec<(String, f64)>,
    pub axes: Vec<(String, String, String)>,
    pub runs: Vec<(Vec<f64>, f64)>,
    pub best_so_far: Vec<(f64, f64)>,
}

pub async fn analysis(state: &AppState, sweep_id: i64) -> Result<Option<Analysis>, ApiError> {
    let conn = &state.db.read;
    let spec = super::runs::sweep_spec(conn, sweep_id).await?;
    let Some(sweep_spec) = &spec.sweep else { return Ok(None) };
    let space = Space::of(sweep_spec);
    let history = observations(state, conn, sweep_id, &spec).await?;
    let goal = spec.select.goal;
    let importance = protocol::importance::ped_anova(&space, &history, goal);
    let axes: Vec<(String, String, String)> = space
        .0
        .iter()
        .map(|(path, dim)| {
            let (low, high) = match dim {
                tpe::Dim::Categorical(values) => {
                    (values.first().map(|v| v.to_string()).unwrap_or_default(), values.last().map(|v| v.to_string()).unwrap_or_default())
                }
                tpe::Dim::Float { low, high, log } => (format!("{low}{}", if *log { " (log)" } else { "" }), high.to_string()),
                tpe::Dim::Int { low, high } => (low.to_string(), high.to_string()),
            };
            (path.clone(), low, high)
        })
        .collect();
    let finished: Vec<&Observation> = history.iter().filter(|o| o.value.is_some()).collect();
    let values: Vec<f64> = finished.iter().filter_map(|o| o.value).collect();
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let shade = |v: f64| {
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 1.0 };
        if goal == Goal::Maximize { t } else { 1.0 - t }
    };
    let runs = finished
        .iter()
        .filter_map(|o| {
            let coords: Option<Vec<f64>> = space.0.iter().map(|(path, dim)| position(dim, o.params.get(path)?)).collect();
            Some((coords?, shade(o.value?)))
        })
        .collect();
    let mut best: Option<f64> = None;
    let best_so_far = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let b = match (best, goal) {
                (Some(b), Goal::Maximize) => b.max(v),
                (Some(b), Goal::Minimize) => b.min(v),
                (None, _) => v,
            };
            best = Some(b);
            ((i + 1) as f64, b)
        })
        .collect();
    Ok(Some(Analysis { metric: spec.select.metric.clone(), goal, importance, axes, runs, best_so_far }))
}

/// Where a value sits on its parameter's axis, 0 (bottom) to 1 (top).
fn position(dim: &tpe::Dim, value: &serde_json::Value) -> Option<f64> {
    match dim {
        tpe::Dim::Categorical(values) => {
            let i = values.iter().position(|v| v == value)?;
            Some(if values.len() > 1 { i as f64 / (values.len() - 1) as f64 } else { 0.5 })
        }
        tpe::Dim::Float { low, high, log } => {
            let x = value.as_f64()?;
            let (x, lo, hi) = if *log { (x.max(1e-300).ln(), low.ln(), high.ln()) } else { (x, *low, *high) };
            Some(if hi > lo { (x - lo) / (hi - lo) } else { 0.5 })
        }
        tpe::Dim::Int { low, high } => {
            let x = value.as_f64()?;
            Some(if high > low { (x - *low as f64) / (*high - *low) as f64 } else { 0.5 })
        }
    }
}

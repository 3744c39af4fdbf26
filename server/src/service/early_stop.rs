//! The server's early stopping (`sweep.early_stop`): when a worker reports an epoch, the
//! sweep's rule (protocol::early_stop) decides whether the run goes on. The decision is a
//! row (store::early_stops) made once per (run, epoch) inside one transaction that, on
//! PostgreSQL, holds the sweep's early-stop advisory lock, so decisions at one rung are made one after the
//! other in report order, and a restarted or second server repeats none and changes none.

use protocol::api::MetricPoint;
use protocol::early_stop::{self, EarlyStopMethod, EarlyStopSpec};
use protocol::spec::Goal;
use sea_orm::TransactionTrait;
use serde_json::json;
use std::sync::Arc;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::early_stops::DecisionRow;

/// A sweep's early-stop rule, resolved against its spec.
#[derive(Debug)]
pub struct Rule {
    pub spec: EarlyStopSpec,
    pub metric: String,
    pub goal: Goal,
    /// Completed-epoch counts where a decision is made.
    pub decision_epochs: Vec<u32>,
}

/// The rule of `sweep_id` (cached; a sweep's spec never changes).
async fn rule(state: &AppState, sweep_id: i64) -> Result<Option<Arc<Rule>>, ApiError> {
    if let Ok(cache) = state.early_stop_rules.lock()
        && let Some(rule) = cache.get(&sweep_id)
    {
        return Ok(rule.clone());
    }
    let spec = super::runs::sweep_spec(&state.db.read, sweep_id).await?;
    let rule = spec.sweep.as_ref().and_then(|s| s.early_stop.clone()).map(|early| {
        let metric = early.metric(&spec.select.metric).to_owned();
        let goal = early.goal(&spec.select.metric, spec.select.goal);
        let decision_epochs = early.decision_epochs(spec.train.epochs);
        Arc::new(Rule { spec: early, metric, goal, decision_epochs })
    });
    if let Ok(mut cache) = state.early_stop_rules.lock() {
        cache.insert(sweep_id, rule.clone());
    }
    Ok(rule)
}

/// The sweep of `run_id` (cached: a run never changes sweeps; emptied past 200,000 runs).
async fn sweep_of(state: &AppState, run_id: i64) -> Result<i64, ApiError> {
    if let Some(&sweep) = state.run_sweeps.lock().ok().as_ref().and_then(|c| c.get(&run_id)) {
        return Ok(sweep);
    }
    let sweep = super::runs::get(&state.db.read, run_id).await?.sweep_id;
    remember_sweep(state, run_id, sweep);
    Ok(sweep)
}

/// Notes the sweep of a run read elsewhere (a lease reads the run anyway), so its first epoch
/// report costs no read.
pub fn remember_sweep(state: &AppState, run_id: i64, sweep: i64) {
    if let Ok(mut cache) = state.run_sweeps.lock() {
        if cache.len() >= crate::state::PARAMS_CACHE_MAX {
            cache.clear();
        }
        cache.insert(run_id, sweep);
    }
}

/// The sweep's early-stop rule in a sentence, for its page.
pub async fn describe(state: &AppState, sweep_id: i64) -> Result<Option<String>, ApiError> {
    let spec = super::runs::sweep_spec(&state.db.read, sweep_id).await?;
    Ok(spec
        .sweep
        .as_ref()
        .and_then(|s| s.early_stop.as_ref())
        .map(|e| e.describe(&spec.select.metric, spec.select.goal, spec.train.epochs)))
}

/// Applies the run's sweep rule to the epoch `points` report (the points are stored
/// already). Returns whether the run is to stop.
pub async fn after_epoch(state: &AppState, run_id: i64, points: &[MetricPoint]) -> Result<bool, ApiError> {
    // Epoch reports carry val_* keys; per-step batches never reach the store here.
    if !points.iter().any(|p| p.key.starts_with("val_") || p.key.starts_with("train_")) {
        return Ok(false);
    }
    let sweep_id = sweep_of(state, run_id).await?;
    let Some(rule) = rule(state, sweep_id).await? else { return Ok(false) };
    let Some(point) = points.iter().find(|p| p.key == rule.metric) else { return Ok(false) };
    let epochs = point.step + 1;
    if !rule.decision_epochs.iter().any(|&e| i64::from(e) == epochs) {
        return Ok(false);
    }
    let tx = state.db.write.begin().await?;
    // One decision at a time per sweep: each sees every earlier one.
    store::experiments::lock_sweep(&tx, sweep_id, store::experiments::SweepLock::EarlyStop).await?;
    if let Some(done) = store::early_stops::get(&tx, run_id, epochs).await? {
        tx.commit().await?;
        return Ok(done.stop()?);
    }
    let maximize = rule.goal == Goal::Maximize;
    let Some(value) = store::early_stops::best_up_to(&tx, run_id, &rule.metric, point.step, maximize).await? else {
        tx.commit().await?;
        return Ok(false);
    };
    tracing::debug!(run_id, epochs, value, "early-stop decision");
    let decision = match rule.spec.method {
        EarlyStopMethod::Asha => {
            let earlier = store::early_stops::values_at(&tx, sweep_id, epochs, run_id).await?;
            early_stop::asha(value, &earlier, rule.spec.reduction_factor(), rule.goal)
        }
        EarlyStopMethod::Median => {
            let others = store::early_stops::others_best_up_to(&tx, sweep_id, run_id, &rule.metric, point.step, maximize).await?;
            early_stop::median(value, &others, rule.spec.min_runs(), rule.goal)
        }
    };
    let now = now_ms();
    let row = DecisionRow {
        run_id,
        epochs,
        sweep_id,
        method: match rule.spec.method {
            EarlyStopMethod::Asha => "asha".to_owned(),
            EarlyStopMethod::Median => "median".to_owned(),
        },
        metric: rule.metric.clone(),
        value,
        threshold: decision.threshold,
        compared: decision.compared as i64,
        stop: i64::from(decision.stop),
        decided_at: now,
    };
    store::early_stops::insert(&tx, &row).await?;
    if decision.stop && store::jobs::request_prune(&tx, run_id, now).await? > 0 {
        let run = super::runs::get(&tx, run_id).await?;
        super::audit::append(
            &tx,
            super::audit::Event {
                actor: "early-stop",
                action: protocol::AuditAction::RunPrune,
                experiment: Some(&run.experiment),
                run_id: Some(run_id),
                details: json!({"sweep_id": sweep_id, "method": row.method, "metric": row.metric, "epochs": epochs,
                                "value": value, "threshold": decision.threshold, "compared": decision.compared}),
            },
        )
        .await?;
        tracing::info!(run.id = run_id, sweep.id = sweep_id, epochs, value, threshold = ?decision.threshold, "run pruned");
    }
    tx.commit().await?;
    Ok(decision.stop)
}

//! Constraints that protect the weak classes (`select.constraints`): when a run's training
//! ends (succeeded or pruned), its values at its best epoch are checked against its sweep's
//! constraints and the outcome is stored on the run (`runs.feasible`, `runs.violations`), so
//! every ranking (the leaderboard, `cobb runs --sort`, the best-run choice, TPE) can put runs
//! that miss one below every run that meets them all, in SQL or in Rust, without re-reading
//! specs.

use sea_orm::ConnectionTrait;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store;

/// Checks run `run_id` of `sweep_id` at `best_epoch` (else at each metric's last step) and
/// stores the result with the run's objective (its best `select.metric`) and `best_epoch`
/// (when given: a completion's report). A sweep without
/// constraints stores "feasible". The sweep's spec comes through the server's cache.
pub async fn record(
    state: &AppState,
    conn: &impl ConnectionTrait,
    run_id: i64,
    sweep_id: i64,
    best_epoch: Option<i64>,
) -> Result<Vec<String>, ApiError> {
    let spec = super::runs::sweep_spec_cached(state, conn, sweep_id).await?;
    let mut missed = Vec::new();
    for c in &spec.select.constraints {
        let value = store::metrics::value_at(conn, run_id, &c.metric, best_epoch).await?;
        if let Some(why) = c.missed(value) {
            missed.push(why);
        }
    }
    let text = serde_json::to_string(&missed).map_err(anyhow::Error::from)?;
    let maximize = spec.select.goal == protocol::spec::Goal::Maximize;
    let objective = store::early_stops::best_up_to(conn, run_id, &spec.select.metric, i64::MAX, maximize).await?;
    store::runs::set_outcome(conn, run_id, best_epoch, missed.is_empty(), &text, objective, crate::clock::now_ms()).await?;
    Ok(missed)
}

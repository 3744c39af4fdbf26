//! Promotion to the sealed test split.
//!
//! A reviewer promotes one succeeded run of an experiment; that supersedes the previous
//! promotion (kept, with a record) and queues one evaluation of the run's best checkpoint
//! on the test split of the experiment's frozen dataset version. A worker leases the
//! evaluation (`/api/v1/evaluations/lease`), fetches the test items through that lease --
//! the only way test items leave the server -- and reports a confusion matrix; the server
//! computes the test metrics. A run evaluated once is never evaluated again: promoting it
//! a second time reuses its result. Every step is an audit event.

use protocol::api::{
    ArtifactInfo, EvaluationComplete, EvaluationLease, EvaluationStatus, ItemList, MetricPoint, Outcome, PromotionInfo,
    TestReport,
};
use protocol::metrics::ConfusionMatrix;
use protocol::{ExperimentSpec, RunStatus, Split};
use sea_orm::{DbErr, TransactionTrait};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::service::audit::{self, Event};
use crate::startup::AppState;
use crate::store;
use crate::store::promotions::{NewPromotion, PromotionRow};

/// The git commit this server was built from (`unknown` outside a git checkout).
pub const CODE_VERSION: &str = env!("COBB_GIT_COMMIT");

pub const MAX_REASON: usize = 2000;

fn info(row: PromotionRow, reused: bool) -> PromotionInfo {
    PromotionInfo {
        id: row.id,
        experiment: row.experiment,
        run_id: row.run_id,
        run_name: row.run_name,
        actor: row.actor,
        reason: row.reason,
        created_at: row.created_at,
        checkpoint_sha256: row.checkpoint_sha256,
        best_epoch: row.best_epoch,
        dataset_version: row.dataset_version,
        config_hash: row.config_hash,
        code_version: row.code_version,
        status: EvaluationStatus::parse(&row.status).unwrap_or(EvaluationStatus::Failed),
        attempt: row.attempt,
        error: row.error,
        finished_at: row.finished_at,
        superseded_by: row.superseded_by,
        superseded_at: row.superseded_at,
        reused_evaluation: reused,
    }
}

/// Whether `row` reuses an earlier promotion's evaluation: it never leased one itself and
/// an earlier promotion of the same run (among `others`) was evaluated.
fn reuses(row: &PromotionRow, others: &[PromotionRow]) -> bool {
    row.attempt == 0 && others.iter().any(|p| p.run_id == row.run_id && p.id < row.id && p.status == "succeeded")
}

/// One promotion with whether it reuses an earlier evaluation of its run.
async fn with_reuse(conn: &impl sea_orm::ConnectionTrait, row: PromotionRow) -> Result<PromotionInfo, DbErr> {
    let earlier = store::promotions::of_run(conn, row.run_id).await?;
    let reused = reuses(&row, &earlier);
    Ok(info(row, reused))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Promotes `run_id` (reviewer role): see the module documentation.
pub async fn promote(state: &AppState, who: &Principal, run_id: i64, reason: &str) -> Result<PromotionInfo, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return Err(ApiError::InvalidRequest(format!(
            "a promotion needs a reason of 1-{MAX_REASON} characters (--reason TEXT): it is what an auditor reads"
        )));
    }
    let tx = state.db.write.begin().await?;
    let run = super::runs::get(&tx, run_id).await?;
    if run.status != RunStatus::Succeeded.as_str() {
        return Err(ApiError::Conflict(format!(
            "run {run_id} is {}; only a succeeded run can be promoted",
            run.status
        )));
    }
    let (Some(best_epoch), Some(checkpoint)) = (run.best_epoch, store::artifacts::latest(&tx, run_id, "best_checkpoint").await?) else {
        return Err(ApiError::Conflict(format!("run {run_id} has no best checkpoint recorded; it cannot be promoted")));
    };
    let current = store::promotions::current(&tx, run.experiment_id).await?;
    if let Some(c) = &current
        && c.run_id == run_id
    {
        return Err(ApiError::Conflict(format!(
            "run {run_id} is already the promoted model of `{}` (promotion {})",
            run.experiment, c.id
        )));
    }
    let version = store::datasets::version_by_id(&tx, run.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", run.dataset_version_id))?;
    // A model is evaluated on the test split once: a run promoted before keeps its result.
    let evaluated = store::promotions::of_run(&tx, run_id).await?.into_iter().any(|p| p.status == "succeeded");
    let status = if evaluated { EvaluationStatus::Succeeded } else { EvaluationStatus::Queued };
    let now = now_ms();
    let config_hash = sha256_hex(&run.config_json);
    let id = store::promotions::insert(
        &tx,
        NewPromotion {
            experiment_id: run.experiment_id,
            run_id,
            actor: &who.name,
            reason,
            checkpoint_uri: &checkpoint.uri,
            checkpoint_sha256: &checkpoint.sha256,
            best_epoch,
            dataset_version: &version.version,
            config_hash: &config_hash,
            code_version: CODE_VERSION,
            status: status.as_str(),
            now,
        },
    )
    .await?;
    if let Some(old) = &current {
        store::promotions::supersede(&tx, old.id, id, now).await?;
    }
    audit::append(
        &tx,
        Event {
            actor: &who.name,
            action: "promote",
            experiment: Some(&run.experiment),
            run_id: Some(run_id),
            details: json!({
                "promotion": id,
                "run": run.name,
                "reason": reason,
                "checkpoint_sha256": checkpoint.sha256,
                "best_epoch": best_epoch,
                "dataset_version": version.version,
                "config_hash": config_hash,
                "code_version": CODE_VERSION,
                "supersedes": current.as_ref().map(|c| json!({"promotion": c.id, "run_id": c.run_id})),
                "evaluation": if evaluated { "reused: this run was already evaluated on the test split" } else { "queued" },
            }),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(run.id = run_id, promotion = id, by = %who.name, "run promoted");
    let row = store::promotions::get(&state.db.write, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))?;
    Ok(with_reuse(&state.db.write, row).await?)
}

pub async fn list(state: &AppState, experiment: Option<&str>) -> Result<Vec<PromotionInfo>, ApiError> {
    let conn = &state.db.read;
    let experiment_id = match experiment {
        Some(name) => Some(store::experiments::by_name(conn, name).await?.ok_or_else(|| ApiError::not_found("experiment", name))?.id),
        None => None,
    };
    // A run belongs to one experiment, so its earlier promotions are in the same list.
    let rows = store::promotions::list(conn, experiment_id).await?;
    let reused: Vec<bool> = rows.iter().map(|r| reuses(r, &rows)).collect();
    Ok(rows.into_iter().zip(reused).map(|(row, r)| info(row, r)).collect())
}

pub async fn get(state: &AppState, id: i64) -> Result<PromotionInfo, ApiError> {
    let row = store::promotions::get(&state.db.read, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))?;
    Ok(with_reuse(&state.db.read, row).await?)
}

/// The test result of promotion `id`: 404 until its evaluation has succeeded.
pub async fn report(state: &AppState, id: i64) -> Result<TestReport, ApiError> {
    let promotion = get(state, id).await?;
    if promotion.status != EvaluationStatus::Succeeded {
        return Err(ApiError::NotFound {
            what: "test report of promotion",
            id: format!("{id}` (its evaluation is {}; try again when it has succeeded", promotion.status.as_str()),
        });
    }
    let matrix = store::results::matrix(&state.db.read, promotion.run_id, Split::Test.as_str(), Some(promotion.best_epoch))
        .await?
        .ok_or_else(|| ApiError::not_found("test confusion matrix of run", promotion.run_id))?;
    let confusion = ConfusionMatrix::from_parts(
        serde_json::from_str(&matrix.classes_json).map_err(anyhow::Error::from)?,
        serde_json::from_str(&matrix.counts_json).map_err(anyhow::Error::from)?,
    )
    .map_err(|e| anyhow::anyhow!("stored matrix: {e}"))?;
    Ok(TestReport {
        report: confusion.report(),
        by_view: confusion.roll_up(protocol::classes::view_of).report(),
        by_phase: confusion.roll_up(protocol::classes::phase_of).report(),
        confusion,
        promotion,
    })
}

/// The report as CSV: one row per class, then the averages and the roll-ups.
pub fn report_csv(t: &TestReport) -> String {
    let mut out = String::from("section,class,precision,recall,f1,support\n");
    let quote = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() };
    for (section, report) in [("class", &t.report), ("view", &t.by_view), ("phase", &t.by_phase)] {
        for c in &report.per_class {
            out.push_str(&format!("{section},{},{:.4},{:.4},{:.4},{}\n", quote(&c.class), c.precision, c.recall, c.f1, c.support));
        }
    }
    let total: u64 = t.report.per_class.iter().map(|c| c.support).sum();
    out.push_str(&format!("average,macro,{:.4},{:.4},{:.4},{total}\n", t.report.macro_precision, t.report.macro_recall, t.report.macro_f1));
    out.push_str(&format!(
        "average,weighted,{:.4},{:.4},{:.4},{total}\n",
        t.report.weighted_precision, t.report.weighted_recall, t.report.weighted_f1
    ));
    out.push_str(&format!("average,accuracy,,,{:.4},{total}\n", t.report.accuracy));
    out
}

fn ttl_ms(state: &AppState) -> i64 {
    state.config.lease_ttl_secs as i64 * 1000
}

/// Hands the oldest queued evaluation to a worker, or None.
pub async fn lease(state: &AppState, who: &Principal, worker: &str) -> Result<Option<EvaluationLease>, ApiError> {
    reap_expired(state).await?;
    let now = now_ms();
    let lease_id = uuid::Uuid::new_v4().to_string();
    let tx = state.db.write.begin().await?;
    let Some(id) = store::promotions::next_queued(&tx).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    if !store::promotions::claim(&tx, id, &lease_id, worker, now, now + ttl_ms(state)).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let row = store::promotions::get(&tx, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))?;
    let run = super::runs::get(&tx, row.run_id).await?;
    audit::append(
        &tx,
        Event {
            actor: &who.name,
            action: "test_evaluation_started",
            experiment: Some(&row.experiment),
            run_id: Some(row.run_id),
            details: json!({"promotion": id, "worker": worker, "attempt": row.attempt, "dataset_version": row.dataset_version}),
        },
    )
    .await?;
    tx.commit().await?;
    let config: ExperimentSpec = serde_json::from_str(&run.config_json).map_err(anyhow::Error::from)?;
    Ok(Some(EvaluationLease {
        lease_id,
        promotion_id: id,
        run_id: row.run_id,
        run_name: row.run_name,
        experiment: row.experiment,
        attempt: row.attempt as u32,
        heartbeat_seconds: state.config.heartbeat_secs,
        config,
        checkpoint: ArtifactInfo { kind: "best_checkpoint".into(), uri: row.checkpoint_uri, sha256: row.checkpoint_sha256, bytes: 0, created_at: row.created_at },
        dataset_version: row.dataset_version,
    }))
}

/// The running evaluation holding `lease_id` inside a write transaction, or why not.
async fn fenced(state: &AppState, lease_id: &str) -> Result<(sea_orm::DatabaseTransaction, PromotionRow), ApiError> {
    let tx = state.db.write.begin().await?;
    let row = store::promotions::by_lease_for_write(&tx, lease_id).await?;
    let refusal = match &row {
        None => Some(format!("evaluation lease `{lease_id}` does not exist or has ended")),
        Some(p) if p.status != "running" => Some(format!("evaluation lease `{lease_id}` has ended ({})", p.status)),
        Some(p) if p.lease_expires_at.unwrap_or(0) < now_ms() => {
            Some(format!("evaluation lease `{lease_id}` expired; the evaluation was requeued"))
        }
        Some(_) => None,
    };
    match (refusal, row) {
        (None, Some(row)) => Ok((tx, row)),
        (reason, _) => {
            tx.rollback().await?;
            reap_expired(state).await?;
            Err(ApiError::LeaseLost(reason.unwrap_or_default()))
        }
    }
}

pub async fn heartbeat(state: &AppState, lease_id: &str) -> Result<(), ApiError> {
    let (tx, _) = fenced(state, lease_id).await?;
    let now = now_ms();
    store::promotions::extend(&tx, lease_id, now, now + ttl_ms(state)).await?;
    tx.commit().await?;
    Ok(())
}

/// The test items of the evaluation's dataset version: only through a live evaluation lease.
pub async fn items(state: &AppState, lease_id: &str) -> Result<ItemList, ApiError> {
    let (tx, row) = fenced(state, lease_id).await?;
    tx.commit().await?;
    let conn = &state.db.read;
    let version = store::datasets::version_by_hash(conn, &row.dataset_version)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", &row.dataset_version))?;
    super::datasets::item_list(conn, version, &[Split::Test]).await
}

/// Stores the evaluation's result: test metrics (step = the best epoch), per-class rows and
/// the confusion matrix with split `test`, and the audit event.
pub async fn complete(state: &AppState, lease_id: &str, req: EvaluationComplete) -> Result<PromotionInfo, ApiError> {
    let (tx, row) = fenced(state, lease_id).await?;
    let now = now_ms();
    let actor = format!("worker:{}", row.worker.clone().unwrap_or_default());
    match (req.outcome, req.confusion) {
        (Outcome::Succeeded, Some(confusion)) => {
            let matrix = ConfusionMatrix::from_parts(confusion.classes, confusion.counts)
                .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
            if matrix.total() == 0 {
                return Err(ApiError::InvalidRequest("the test confusion matrix is empty".into()));
            }
            let report = matrix.report();
            let mut points = vec![
                ("test_accuracy".to_owned(), report.accuracy),
                ("test_macro_f1".to_owned(), report.macro_f1),
                ("test_weighted_f1".to_owned(), report.weighted_f1),
            ];
            for c in &report.per_class {
                points.push((format!("test_precision/{}", c.class), c.precision));
                points.push((format!("test_recall/{}", c.class), c.recall));
                points.push((format!("test_f1/{}", c.class), c.f1));
            }
            let points: Vec<MetricPoint> =
                points.into_iter().map(|(key, value)| MetricPoint { key, step: row.best_epoch, value }).collect();
            store::metrics::upsert(&tx, row.run_id, &points, now).await?;
            store::results::upsert_epoch(&tx, row.run_id, row.best_epoch, Split::Test.as_str(), &matrix, &report).await?;
            store::promotions::finish(&tx, row.id, "succeeded", None, now).await?;
            audit::append(
                &tx,
                Event {
                    actor: &actor,
                    action: "test_evaluated",
                    experiment: Some(&row.experiment),
                    run_id: Some(row.run_id),
                    details: json!({
                        "promotion": row.id,
                        "checkpoint_sha256": row.checkpoint_sha256,
                        "dataset_version": row.dataset_version,
                        "images": matrix.total(),
                        "skipped": req.skipped,
                        "test_accuracy": report.accuracy,
                        "test_macro_f1": report.macro_f1,
                    }),
                },
            )
            .await?;
        }
        (outcome, _) => {
            let retry = outcome == Outcome::Failed && req.retryable && row.attempt < state.config.max_attempts as i64;
            let error = req.error.unwrap_or_else(|| "the worker reported no result".to_owned());
            let status = if retry { "queued" } else { "failed" };
            store::promotions::finish(&tx, row.id, status, Some(&error), now).await?;
            audit::append(
                &tx,
                Event {
                    actor: &actor,
                    action: if retry { "test_evaluation_retry" } else { "test_evaluation_failed" },
                    experiment: Some(&row.experiment),
                    run_id: Some(row.run_id),
                    details: json!({"promotion": row.id, "attempt": row.attempt, "error": error}),
                },
            )
            .await?;
        }
    }
    tx.commit().await?;
    get(state, row.id).await
}

/// Requeues (or fails, after `max_attempts`) evaluations whose worker stopped heartbeating.
pub async fn reap_expired(state: &AppState) -> Result<usize, DbErr> {
    let now = now_ms();
    let expired = store::promotions::expired(&state.db.write, now).await?;
    for row in &expired {
        let tx = state.db.write.begin().await?;
        let (status, error) = if row.attempt >= state.config.max_attempts as i64 {
            ("failed", Some(format!("evaluation lease expired on attempt {} (worker stopped heartbeating); no attempts left", row.attempt)))
        } else {
            ("queued", None)
        };
        store::promotions::finish(&tx, row.id, status, error.as_deref(), now).await?;
        tx.commit().await?;
        tracing::warn!(promotion = row.id, status, "evaluation lease expired");
    }
    Ok(expired.len())
}

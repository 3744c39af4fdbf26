//! Promotion to the sealed test split.
//!
//! A reviewer promotes one succeeded run of an experiment; that supersedes the previous
//! promotion (kept, with a record) and queues one evaluation of the run's best checkpoint
//! on the test split of the experiment's frozen dataset version: a job of kind `evaluate`.
//! A worker leases it like any job (service::jobs), fetches the test items through that
//! lease -- the only way test items leave the server -- and completes it with a confusion
//! matrix; the server computes the test metrics here. A run evaluated once is never
//! evaluated again: promoting it a second time reuses its result (no new job). Every step
//! is an audit event.

use protocol::api::{ArtifactInfo, Complete, EvaluateWork, MetricPoint, PromotionInfo, TestReport};
use protocol::{AuditAction, JobKind, JobStatus, RunStatus, Split};
use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::service::audit::{self, Event};
use crate::state::AppState;
use crate::store;
use crate::store::jobs::{Job, NewJob};
use crate::store::promotions::{NewPromotion, PromotionRow};

/// The git commit this server was built from (`unknown` outside a git checkout).
pub const CODE_VERSION: &str = env!("COBB_GIT_COMMIT");

pub const MAX_REASON: usize = 2000;

fn info(row: PromotionRow, reused: bool) -> Result<PromotionInfo, DbErr> {
    let status =
        row.status.parse::<JobStatus>().map_err(|e| DbErr::Custom(format!("job of promotion {}: column `status`: {e}", row.id)))?;
    Ok(PromotionInfo {
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
        status,
        job_id: row.job_id,
        attempt: row.attempt,
        error: row.error,
        finished_at: row.finished_at,
        superseded_by: row.superseded_by,
        superseded_at: row.superseded_at,
        reused_evaluation: reused,
        approvals_needed: row.approvals_needed.clamp(1, 5) as u32,
        approvers: serde_json::from_str(&row.approvers_json).unwrap_or_default(),
        awaiting_approval: row.held == 1,
        auto_accept: match &row.auto_accept_json {
            Some(text) => Some(store::decode_json(&format!("promotions row {}", row.id), "auto_accept_json", text)?),
            None => None,
        },
    })
}

/// Whether `row` reuses an earlier promotion's evaluation: it has no evaluation job of its
/// own and an earlier promotion of the same run (among `others`) was evaluated.
fn reuses(row: &PromotionRow, others: &[PromotionRow]) -> bool {
    row.job_id.is_none() && others.iter().any(|p| p.run_id == row.run_id && p.id < row.id && p.status == JobStatus::Succeeded.as_str())
}

/// One promotion with whether it reuses an earlier evaluation of its run.
async fn with_reuse(conn: &impl sea_orm::ConnectionTrait, row: PromotionRow) -> Result<PromotionInfo, DbErr> {
    let earlier = store::promotions::of_run(conn, row.run_id).await?;
    let reused = reuses(&row, &earlier);
    info(row, reused)
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
    // The temperature the test predictions will be rescaled with, fixed now from the run's
    // validation predictions (the test evidence derives the same number from the same data);
    // fitted before the write transaction, which it need not hold.
    let temperature = super::evidence::validation_temperature(state, run_id).await?;
    // The per-class auto-accept thresholds `cobb classify` decides with, fixed now the same way.
    let auto_accept = super::classify::thresholds_for(state, run_id).await?;
    let auto_accept_json = auto_accept.as_ref().map(serde_json::to_string).transpose().map_err(anyhow::Error::from)?;
    let tx = state.db.write.begin().await?;
    let run = super::runs::get(&tx, run_id).await?;
    if run.status != RunStatus::Succeeded.as_str() {
        return Err(ApiError::Conflict(format!("run {run_id} is {}; only a succeeded run can be promoted", run.status)));
    }
    let (Some(best_epoch), Some(checkpoint)) = (run.best_epoch, store::artifacts::latest(&tx, run_id, "best_checkpoint").await?) else {
        return Err(ApiError::Conflict(format!("run {run_id} has no best checkpoint recorded; it cannot be promoted")));
    };
    let current = store::promotions::current(&tx, run.experiment_id).await?;
    if let Some(c) = &current
        && c.run_id == run_id
    {
        return Err(ApiError::Conflict(format!("run {run_id} is already the promoted model of `{}` (promotion {})", run.experiment, c.id)));
    }
    let version = store::datasets::version_by_id(&tx, run.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", run.dataset_version_id))?;
    // A model (its best checkpoint, by sha256) is evaluated on the test split at most once,
    // ever: a model evaluated before keeps its result; one whose evaluation is running waits
    // for it (the test items are already out).
    let earlier = store::promotions::by_checkpoint(&tx, &checkpoint.sha256).await?;
    let evaluated = earlier.iter().any(|p| p.status == JobStatus::Succeeded.as_str());
    if !evaluated && let Some(p) = earlier.iter().find(|p| p.job_id.is_some() && p.status == JobStatus::Running.as_str()) {
        return Err(ApiError::Conflict(format!(
            "run {run_id}'s model is being evaluated on the test split right now (promotion {}); promote it again when that \
             evaluation has finished, and its result will be reused",
            p.id
        )));
    }
    let now = now_ms();
    // The hash of the config the model trained with, serialized as the worker received it.
    let config = super::runs::config_of(&tx, &run, &version.version).await?;
    let rules = store::experiments::rules(&tx, run.experiment_id).await?;
    let criteria_now = rules.criteria_json;
    // A promotion of an experiment that asks for several signatures holds its evaluation until
    // they are given (a model evaluated before needs none: nothing new leaves the server).
    let approvals_needed = rules.approvals.unwrap_or(1).clamp(1, 5);
    let approvals_needed = if evaluated { 1 } else { approvals_needed };
    let config_hash = sha256_hex(&serde_json::to_string(&config).map_err(anyhow::Error::from)?);
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
            now,
            approvals_needed,
            auto_accept_json,
        },
    )
    .await?;
    if !evaluated {
        let job = NewJob {
            kind: JobKind::Evaluate,
            run_id,
            promotion_id: Some(id),
            max_attempts: i64::from(state.config.max_attempts),
            now,
            held: approvals_needed > 1,
        };
        store::jobs::insert(&tx, job).await?;
    }
    if let Some(old) = &current {
        store::promotions::supersede(&tx, old.id, id, now).await?;
        // The superseded model's evaluation, if still queued, will not run: test items leave
        // the server only for the experiment's promoted model.
        if let Some(job) = store::jobs::of_promotion(&tx, old.id).await?
            && store::jobs::cancel_queued_job(&tx, job.id, &format!("superseded by promotion {id} before it started"), now).await? > 0
        {
            audit::append(
                &tx,
                Event {
                    actor: &who.name,
                    action: AuditAction::EvaluationCancel,
                    experiment: Some(&run.experiment),
                    run_id: Some(old.run_id),
                    details: json!({"promotion": old.id, "job": job.id, "reason": format!("superseded by promotion {id}")}),
                },
            )
            .await?;
        }
    }
    audit::append(
        &tx,
        Event {
            actor: &who.name,
            action: AuditAction::PromotionCreate,
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
                // The acceptance criteria the test result will be judged on, fixed from now on.
                "criteria": criteria_now.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()),
                "approvals_needed": approvals_needed,
                "temperature": temperature,
                "auto_accept": auto_accept,
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
    Ok(rows.into_iter().zip(reused).map(|(row, r)| info(row, r)).collect::<Result<_, _>>()?)
}

pub async fn get(state: &AppState, id: i64) -> Result<PromotionInfo, ApiError> {
    let row = store::promotions::get(&state.db.read, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))?;
    Ok(with_reuse(&state.db.read, row).await?)
}

/// The test result of promotion `id`: 404 until its evaluation has succeeded.
pub async fn report(state: &AppState, id: i64) -> Result<TestReport, ApiError> {
    let promotion = get(state, id).await?;
    if promotion.status != JobStatus::Succeeded {
        return Err(ApiError::NotFound {
            what: "test report of promotion",
            id: format!("{id}` (its evaluation is {}; try again when it has succeeded", promotion.status.as_str()),
        });
    }
    let matrix = store::results::matrix(&state.db.read, promotion.run_id, Split::Test.as_str(), Some(promotion.best_epoch))
        .await?
        .ok_or_else(|| ApiError::not_found("test confusion matrix of run", promotion.run_id))?;
    let confusion = matrix.decode(promotion.run_id, Split::Test.as_str())?;
    let report = confusion.report();
    // Intervals and calibration from the evaluation's stored predictions (none from evaluations
    // made before cobb stored them).
    let evidence = ApiError::found(super::evidence::run_evidence(state, promotion.run_id, Split::Test).await)?.map(|e| (*e).clone());
    let criteria = match store::experiments::by_name(&state.db.read, &promotion.experiment).await? {
        Some(e) => match store::experiments::rules(&state.db.read, e.id).await?.criteria_json {
            Some(text) => {
                let criteria: Vec<protocol::evidence::Criterion> =
                    store::decode_json(&format!("experiments row {}", e.id), "criteria_json", &text)?;
                protocol::evidence::judge(&criteria, &report, evidence.as_ref().map(|e| &e.intervals))
            }
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    Ok(TestReport {
        criteria,
        evidence,
        report,
        by_view: confusion.roll_up(protocol::classes::view_of).report(),
        by_phase: confusion.roll_up(protocol::classes::phase_of).report(),
        confusion,
        promotion,
    })
}

/// A CSV cell: quoted when it holds a separator, a quote or a line break, and defused when a
/// spreadsheet would read it as a formula (`=`, `+`, `-`, `@`, tab or carriage return first:
/// a class name such as `=HYPERLINK(...)` is shown as text, prefixed with `'`).
pub fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// The report as CSV: one row per class, then the averages and the roll-ups.
pub fn report_csv(t: &TestReport) -> String {
    let mut out = String::from("section,class,precision,recall,f1,support\n");
    let quote = |s: &str| csv_cell(s);
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

/// The evaluation job's audit event when a worker leases it (inside the lease's transaction).
pub(crate) async fn evaluation_started(conn: &impl ConnectionTrait, who: &Principal, job: &Job, worker: &str) -> Result<(), ApiError> {
    let promotion = promotion_of(conn, job).await?;
    audit::append(
        conn,
        Event {
            actor: &who.name,
            action: AuditAction::EvaluationStart,
            experiment: Some(&promotion.experiment),
            run_id: Some(job.run_id),
            details: json!({"promotion": promotion.id, "job": job.id, "worker": worker, "attempt": job.attempt,
                "dataset_version": promotion.dataset_version}),
        },
    )
    .await?;
    Ok(())
}

async fn promotion_of(conn: &impl ConnectionTrait, job: &Job) -> Result<PromotionRow, ApiError> {
    let id =
        job.promotion_id.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("jobs row {}: an evaluate job without a promotion", job.id)))?;
    store::promotions::get(conn, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))
}

/// What an evaluation lease carries: the promoted checkpoint, whose sha256 the worker checks.
pub(crate) async fn evaluate_work(conn: &impl ConnectionTrait, job: &Job) -> Result<EvaluateWork, ApiError> {
    let row = promotion_of(conn, job).await?;
    Ok(EvaluateWork {
        promotion_id: row.id,
        checkpoint: ArtifactInfo {
            kind: "best_checkpoint".into(),
            uri: row.checkpoint_uri,
            sha256: row.checkpoint_sha256,
            bytes: 0,
            created_at: row.created_at,
        },
    })
}

/// Stores an evaluation's result inside its completion's transaction: on success the test
/// metrics (step = the best epoch), per-class rows and the confusion matrix with split
/// `test`; either way the audit event. `status` is the job's new status.
pub(crate) async fn evaluation_ended(
    conn: &impl ConnectionTrait,
    job: &Job,
    status: JobStatus,
    req: &Complete,
    error: Option<&str>,
    now: i64,
) -> Result<(), ApiError> {
    let row = promotion_of(conn, job).await?;
    let actor = format!("worker:{}", job.worker.clone().unwrap_or_default());
    if status == JobStatus::Succeeded {
        let Some(confusion) = req.confusion.clone() else {
            return Err(ApiError::InvalidRequest(
                "an evaluation completes with the test confusion matrix (`confusion`); without one it cannot succeed".into(),
            ));
        };
        let matrix = super::worker_writes::version_matrix(conn, job.dataset_version_id, confusion).await?;
        if matrix.total() == 0 {
            return Err(ApiError::InvalidRequest("the test confusion matrix is empty".into()));
        }
        let report = matrix.report();
        let points = protocol::keys::report_points(protocol::keys::ReportSplit::Test, &report);
        let points: Vec<MetricPoint> = points.into_iter().map(|(key, value)| MetricPoint { key, step: row.best_epoch, value }).collect();
        store::metrics::upsert(conn, row.run_id, &points, now).await?;
        store::results::upsert_epoch(conn, row.run_id, row.best_epoch, Split::Test.as_str(), &matrix, &report).await?;
        // Each test image's prediction, when the worker sent them: they must make the matrix.
        if !req.predictions.is_empty() {
            let (entries, recomputed) =
                super::evidence::checked(conn, job.dataset_version_id, Split::Test, &matrix.classes, &req.predictions).await?;
            if recomputed != matrix {
                return Err(ApiError::InvalidRequest(
                    "the test predictions do not make the reported test confusion matrix: they must be the same evaluation's".into(),
                ));
            }
            store::predictions::upsert(conn, row.run_id, Split::Test.as_str(), Some(row.best_epoch), &entries, now).await?;
        }
        audit::append(
            conn,
            Event {
                actor: &actor,
                action: AuditAction::EvaluationSucceed,
                experiment: Some(&row.experiment),
                run_id: Some(row.run_id),
                details: json!({
                    "promotion": row.id,
                    "job": job.id,
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
        return Ok(());
    }
    let action = match status {
        JobStatus::Queued => AuditAction::EvaluationRetry,
        JobStatus::Cancelled => AuditAction::EvaluationCancel,
        _ => AuditAction::EvaluationFail,
    };
    audit::append(
        conn,
        Event {
            actor: &actor,
            action,
            experiment: Some(&row.experiment),
            run_id: Some(row.run_id),
            details: json!({"promotion": row.id, "job": job.id, "attempt": job.attempt,
                "error": error.unwrap_or("the worker reported no result")}),
        },
    )
    .await?;
    Ok(())
}

/// The audit event of an evaluation whose worker stopped heartbeating (inside the reaper's
/// transaction): requeued, or failed with no attempts left.
pub(crate) async fn evaluation_expired(
    conn: &impl ConnectionTrait,
    job: &Job,
    worker: &str,
    status: JobStatus,
    error: Option<&str>,
) -> Result<(), DbErr> {
    let Some(id) = job.promotion_id else { return Ok(()) };
    audit::append(
        conn,
        Event {
            actor: "server",
            action: if status == JobStatus::Queued { AuditAction::EvaluationRetry } else { AuditAction::EvaluationFail },
            experiment: Some(&job.experiment),
            run_id: Some(job.run_id),
            details: json!({"promotion": id, "job": job.id, "attempt": job.attempt, "worker": worker,
                "error": error.unwrap_or("the evaluation lease expired; the evaluation was requeued")}),
        },
    )
    .await
}

/// A reviewer's signature on a promotion that needs several: a different token than every
/// earlier signer; the last one needed releases the held test evaluation. Audited.
pub async fn approve(state: &AppState, who: &Principal, id: i64, note: &str) -> Result<PromotionInfo, ApiError> {
    let note = note.trim();
    if note.len() > MAX_REASON {
        return Err(ApiError::InvalidRequest(format!("the note is at most {MAX_REASON} bytes")));
    }
    let tx = state.db.write.begin().await?;
    let row = store::promotions::get(&tx, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))?;
    if row.superseded_by.is_some() {
        return Err(ApiError::Conflict(format!(
            "promotion {id} was superseded by promotion {}; approve that one",
            row.superseded_by.unwrap_or_default()
        )));
    }
    let (Some(job_id), 1) = (row.job_id, row.held) else {
        return Err(ApiError::Conflict(format!(
            "promotion {id} waits for no approval (it needed {}, and its test evaluation is {})",
            row.approvals_needed, row.status
        )));
    };
    let mut approvers: Vec<String> = store::decode_json(&format!("promotions row {id}"), "approvers_json", &row.approvers_json)?;
    if approvers.contains(&who.name) {
        return Err(ApiError::Conflict(format!(
            "`{}` has signed promotion {id} already; it needs {} signature(s) from different reviewers' tokens ({} so far: {})",
            who.name,
            row.approvals_needed,
            approvers.len(),
            approvers.join(", ")
        )));
    }
    approvers.push(who.name.clone());
    store::promotions::set_approvers(&tx, id, &serde_json::to_string(&approvers).map_err(anyhow::Error::from)?).await?;
    let now = now_ms();
    let released = approvers.len() as i64 >= row.approvals_needed && store::jobs::release_hold(&tx, job_id, now).await? > 0;
    audit::append(
        &tx,
        Event {
            actor: &who.name,
            action: AuditAction::PromotionApprove,
            experiment: Some(&row.experiment),
            run_id: Some(row.run_id),
            details: json!({"promotion": id, "note": note, "approvals": approvers.len(), "approvals_needed": row.approvals_needed,
                            "approvers": approvers, "evaluation_released": released, "checkpoint_sha256": row.checkpoint_sha256}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(promotion = id, approver = %who.name, released, "promotion approved");
    get(state, id).await
}

/// The study report of a promotion (protocol::study): the data flow per split and class, the
/// grouping check, the search and its budget, the chosen configuration and its curve, the
/// validation and test results with intervals and calibration, the acceptance criteria, the
/// misclassified test images, the provenance. Everything from stored data.
pub async fn study(state: &AppState, id: i64) -> Result<protocol::study::StudyReport, ApiError> {
    use protocol::study::{EpochPoint, Misclassified, StudyReport};
    let test = report(state, id).await?;
    let promotion = test.promotion.clone();
    let conn = &state.db.read;
    let detail = super::runs::show(state, promotion.run_id, false).await?;
    let dataset = super::datasets::show(state, &detail.dataset, Some(&detail.dataset_version)).await?;
    let version = super::datasets::resolve(conn, &detail.dataset, Some(&detail.dataset_version)).await?;
    // The grouping check: distinct patients per split, and those in more than one.
    let items = store::datasets::items(conn, version.id, &["train", "val", "test"]).await?;
    let mut splits_of: std::collections::HashMap<&str, std::collections::BTreeSet<&str>> = std::collections::HashMap::new();
    for item in &items {
        if let Some(p) = item.patient.as_deref() {
            splits_of.entry(p).or_default().insert(item.split.as_str());
        }
    }
    let mut patients = [0u64; 3];
    for splits in splits_of.values() {
        for (i, split) in ["train", "val", "test"].iter().enumerate() {
            patients[i] += u64::from(splits.contains(split));
        }
    }
    let patients_in_two_splits = splits_of.values().filter(|s| s.len() > 1).count() as u64;
    // The search that chose the run.
    let run = super::runs::get(conn, promotion.run_id).await?;
    let sweep = super::runs::sweep_spec(conn, run.sweep_id).await?;
    let sweep_runs = store::runs::count(conn, &store::runs::Filter { experiment: None, sweep: Some(run.sweep_id), status: None }).await?;
    let (val_configs, max_val_configs) = super::experiments::budget(state, &promotion.experiment).await?;
    // The chosen run's curve.
    let series = super::runs::metrics(state, promotion.run_id, None).await?;
    let value = |key: &str, epoch: i64| {
        series.iter().find(|s| s.key == key).and_then(|s| s.points.iter().find(|p| p.step == epoch)).map(|p| p.value)
    };
    let mut epochs: Vec<i64> =
        series.iter().filter(|s| s.key == protocol::keys::TRAIN_LOSS).flat_map(|s| s.points.iter().map(|p| p.step)).collect();
    epochs.sort_unstable();
    let curve = epochs
        .into_iter()
        .map(|e| EpochPoint {
            epoch: e,
            train_loss: value(protocol::keys::TRAIN_LOSS, e),
            val_loss: value(protocol::keys::VAL_LOSS, e),
            val_macro_f1: value(protocol::keys::VAL_MACRO_F1, e),
        })
        .collect();
    let validation = ApiError::found(super::evidence::run_evidence(state, promotion.run_id, Split::Val).await)?.map(|e| (*e).clone());
    // The test evidence is the test report's.
    let test_evidence = test.evidence.clone();
    // Misclassified test images by confusion cell, the largest cells first.
    let mut misclassified: Vec<Misclassified> = Vec::new();
    if let Some(set) = ApiError::found(super::evidence::predictions(state, promotion.run_id, Split::Test).await)? {
        type Images = Vec<(String, Option<String>)>;
        let mut cells: std::collections::BTreeMap<(u32, u32), Images> = std::collections::BTreeMap::new();
        for p in set.predictions.into_iter().filter(|p| p.truth != p.predicted) {
            cells.entry((p.truth, p.predicted)).or_default().push((p.item, p.patient));
        }
        for ((t, p), items) in cells {
            let name = |i: u32| set.classes.get(i as usize).cloned().unwrap_or_default();
            misclassified.push(Misclassified { truth: name(t), predicted: name(p), items });
        }
        misclassified.sort_by_key(|m| std::cmp::Reverse(m.items.len()));
    }
    Ok(StudyReport {
        description: sweep.description.clone(),
        method: sweep.sweep.as_ref().map_or_else(|| "single run".to_owned(), |s| format!("{:?}", s.method).to_lowercase()),
        search_space: serde_json::to_value(sweep.sweep.as_ref().map(|s| &s.parameters)).map_err(anyhow::Error::from)?,
        select: sweep.select.clone(),
        params: detail.run.params.clone(),
        config: serde_json::to_value(&detail.config).map_err(anyhow::Error::from)?,
        promotion,
        dataset,
        patients,
        patients_in_two_splits,
        sweep_runs: sweep_runs.max(0) as u64,
        val_configs,
        max_val_configs,
        curve,
        validation,
        test,
        test_evidence,
        misclassified,
        burn_version: env!("COBB_BURN_VERSION").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("ap_preop"), "ap_preop");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
    }
}

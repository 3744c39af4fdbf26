//! The promoted model at work: classification batches (issue 15).
//!
//! `POST /classifications` makes a batch for a promotion whose test evaluation succeeded (the
//! experiment's current one unless named) and one job of kind `classify` for it. The job runs
//! where the images are: in the creator's own process (`cobb classify`: the job is held for
//! that token, which leases it itself) or on a worker whose machine sees the path (`cobb
//! classify --on-worker`). Either way it goes through the one lease protocol: heartbeats, the
//! images sent in chunks under the lease (refused once the lease is lost), a completion that
//! closes the batch. The server never reads the path: it stores, per image, the relative path,
//! the file's sha256, the prediction, the confidence and the decision. Reviewers then label
//! the images sent to review; every label is an audit event.

use protocol::classify::{
    AutoAccept, BatchDetail, BatchInfo, BatchItem, ClassCount, ClassifiedUpload, ClassifyRequest, ClassifyWork, ReviewRequest, ReviewResult,
};
use protocol::{AuditAction, Decision, JobKind, JobStatus, Split};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::service::audit::{self, Event};
use crate::service::jobs::Expect;
use crate::state::AppState;
use crate::store;
use crate::store::classify::{BatchRow, NewBatch, NewItem};
use crate::store::jobs::{Job, NewJob};

/// The longest path a batch may name (on the classifying machine).
pub const MAX_PATH: usize = 4096;
/// The most images one upload may carry.
pub const MAX_UPLOAD: usize = 5_000;
/// The most labels one review request may carry.
pub const MAX_REVIEW: usize = 10_000;

/// The auto-accept thresholds of a run about to be promoted: from its stored validation
/// predictions and the spec's `promotion.auto_accept_precision` (None when the run has no
/// stored validation predictions: every image it classifies then goes to review).
pub(crate) async fn thresholds_for(state: &AppState, run_id: i64) -> Result<Option<AutoAccept>, ApiError> {
    let run = super::runs::get(&state.db.read, run_id).await?;
    let spec = super::runs::sweep_spec(&state.db.read, run.sweep_id).await?;
    let target = spec.promotion.as_ref().and_then(|p| p.auto_accept_precision).unwrap_or(protocol::classify::DEFAULT_AUTO_ACCEPT_PRECISION);
    let Some(set) = ApiError::found(super::evidence::predictions(state, run_id, Split::Val).await)? else {
        return Ok(None);
    };
    let triples: Vec<(u32, u32, f64)> = set
        .predictions
        .iter()
        .map(|p| (p.truth, p.predicted, f64::from(p.probabilities.get(p.predicted as usize).copied().unwrap_or(0.0))))
        .collect();
    Ok(Some(protocol::classify::thresholds(&set.classes, &triples, target)))
}

fn decode_auto(row: &store::promotions::PromotionRow) -> Result<Option<AutoAccept>, ApiError> {
    Ok(match &row.auto_accept_json {
        Some(text) => Some(store::decode_json(&format!("promotions row {}", row.id), "auto_accept_json", text)?),
        None => None,
    })
}

/// Thresholds that accept nothing: for a promotion made before cobb fixed thresholds.
fn review_everything(classes: &[String]) -> AutoAccept {
    protocol::classify::thresholds(classes, &[], protocol::classify::DEFAULT_AUTO_ACCEPT_PRECISION)
}

async fn row(conn: &impl ConnectionTrait, id: i64) -> Result<BatchRow, ApiError> {
    store::classify::get(conn, id).await?.ok_or_else(|| ApiError::not_found("classification batch", id))
}

fn info(row: &BatchRow, counts: &[store::classify::CountRow]) -> Result<BatchInfo, ApiError> {
    let status = store::decode_enum::<JobStatus>(&format!("jobs row {}", row.job_id), "status", &row.status)?;
    let sum = |f: &dyn Fn(&store::classify::CountRow) -> bool| counts.iter().filter(|c| f(c)).map(|c| c.n as u64).sum::<u64>();
    Ok(BatchInfo {
        id: row.id,
        experiment: row.experiment.clone(),
        promotion_id: row.promotion_id,
        run_id: row.run_id,
        checkpoint_sha256: row.checkpoint_sha256.clone(),
        job_id: row.job_id,
        actor: row.actor.clone(),
        path: row.path.clone(),
        status,
        worker: row.worker.clone(),
        error: row.error.clone(),
        created_at: row.created_at,
        finished_at: row.finished_at,
        images: sum(&|_| true),
        accepted: sum(&|c| c.decision == Decision::Accept.as_str()),
        review: sum(&|c| c.decision == Decision::Review.as_str()),
        skipped: sum(&|c| c.decision == Decision::Skipped.as_str()),
        reviewed: sum(&|c| c.reviewed == 1),
        images_per_second: row.images_per_second,
    })
}

/// Creates a batch and its job (submitter role): see the module documentation.
pub async fn create(state: &AppState, who: &Principal, req: ClassifyRequest) -> Result<BatchDetail, ApiError> {
    let path = req.path.trim();
    if path.is_empty() || path.len() > MAX_PATH || path.contains('\0') {
        return Err(ApiError::InvalidRequest(format!("`path` must name the folder of images to classify (1-{MAX_PATH} bytes)")));
    }
    if let Some(b) = req.batch
        && !(1..=1024).contains(&b)
    {
        return Err(ApiError::InvalidRequest(format!("--batch {b}: give 1 to 1024 images per forward pass")));
    }
    let conn = &state.db.read;
    let promotion = match (req.promotion, req.experiment.as_deref()) {
        (Some(id), _) => store::promotions::get(conn, id).await?.ok_or_else(|| ApiError::not_found("promotion", id))?,
        (None, Some(name)) => {
            let e = store::experiments::by_name(conn, name).await?.ok_or_else(|| ApiError::not_found("experiment", name))?;
            store::promotions::current(conn, e.id).await?.ok_or_else(|| {
                ApiError::Conflict(format!(
                    "experiment `{name}` has no promoted model yet; promote a run first (`cobb promote RUN --reason ...`)"
                ))
            })?
        }
        (None, None) => return Err(ApiError::InvalidRequest("name the `experiment` (its promoted model) or the `promotion`".into())),
    };
    if let Some(by) = promotion.superseded_by {
        return Err(ApiError::Conflict(format!(
            "promotion {} was superseded by promotion {by}; new images are classified by the experiment's promoted model \
             (`--experiment {}`)",
            promotion.id, promotion.experiment
        )));
    }
    if promotion.status != JobStatus::Succeeded.as_str() {
        return Err(ApiError::Conflict(format!(
            "promotion {}'s test evaluation is {}; a model classifies new images once its test evaluation has succeeded \
             (follow it with `cobb promotions`)",
            promotion.id, promotion.status
        )));
    }
    let run = super::runs::get(conn, promotion.run_id).await?;
    let spec = super::runs::sweep_spec(conn, run.sweep_id).await?;
    let batch_size = i64::from(req.batch.unwrap_or(spec.train.batch_size.clamp(1, 1024)));
    let now = now_ms();
    let tx = state.db.write.begin().await?;
    let job_id = store::jobs::insert(
        &tx,
        NewJob {
            kind: JobKind::Classify,
            run_id: promotion.run_id,
            promotion_id: None,
            max_attempts: i64::from(state.config.max_attempts),
            now,
            held: req.here,
        },
    )
    .await?;
    let id = store::classify::insert(
        &tx,
        NewBatch { experiment_id: promotion.experiment_id, promotion_id: promotion.id, job_id, actor: &who.name, path, batch_size, now },
    )
    .await?;
    audit::append(
        &tx,
        Event {
            actor: &who.name,
            action: AuditAction::ClassifyCreate,
            experiment: Some(&promotion.experiment),
            run_id: Some(promotion.run_id),
            details: json!({"batch": id, "job": job_id, "promotion": promotion.id, "checkpoint_sha256": promotion.checkpoint_sha256,
                "path": path, "runs_on": if req.here { "the creator's process" } else { "a worker" }}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(batch = id, job.id = job_id, promotion = promotion.id, by = %who.name, "classification batch created");
    show(state, id).await
}

pub async fn show(state: &AppState, id: i64) -> Result<BatchDetail, ApiError> {
    let conn = &state.db.read;
    let row = row(conn, id).await?;
    let counts = store::classify::counts(conn, id).await?;
    let classes = super::evidence::version_classes(conn, row.dataset_version_id).await?;
    let promotion =
        store::promotions::get(conn, row.promotion_id).await?.ok_or_else(|| ApiError::not_found("promotion", row.promotion_id))?;
    let mut per_class: Vec<ClassCount> = classes.iter().map(|c| ClassCount { class: c.clone(), ..ClassCount::default() }).collect();
    for c in &counts {
        let Some(slot) = c.predicted.and_then(|p| per_class.get_mut(p as usize)) else { continue };
        let n = c.n as u64;
        match c.decision.as_str() {
            "accept" => slot.accepted += n,
            "review" => slot.review += n,
            _ => {}
        }
        if c.reviewed == 1 {
            slot.reviewed += n;
        }
    }
    Ok(BatchDetail { batch: info(&row, &counts)?, classes, counts: per_class, auto_accept: decode_auto(&promotion)? })
}

pub async fn list(state: &AppState, experiment: Option<&str>, limit: u64) -> Result<Vec<BatchInfo>, ApiError> {
    let conn = &state.db.read;
    let experiment_id = match experiment {
        Some(name) => Some(store::experiments::by_name(conn, name).await?.ok_or_else(|| ApiError::not_found("experiment", name))?.id),
        None => None,
    };
    let rows = store::classify::list(conn, experiment_id, limit.clamp(1, 1000)).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let counts = store::classify::counts_of(conn, &ids).await?;
    rows.iter()
        .map(|r| {
            let mine: Vec<store::classify::CountRow> = counts.iter().filter(|c| c.batch_id == r.id).cloned().collect();
            info(r, &mine)
        })
        .collect()
}

/// The images of a batch (all, or those with one decision), with their reviews.
pub async fn items(state: &AppState, id: i64, decision: Option<Decision>) -> Result<Vec<BatchItem>, ApiError> {
    let conn = &state.db.read;
    let batch = row(conn, id).await?;
    let classes = super::evidence::version_classes(conn, batch.dataset_version_id).await?;
    let rows = store::classify::items(conn, id, decision.map(Decision::as_str)).await?;
    rows.into_iter()
        .map(|r| -> Result<BatchItem, ApiError> {
            Ok(BatchItem {
                decision: store::decode_enum(&format!("classify_items row ({id}, {})", r.path), "decision", &r.decision)?,
                predicted: r.predicted.and_then(|p| classes.get(p as usize).cloned()),
                path: r.path,
                sha256: r.sha256,
                confidence: r.confidence,
                reason: r.reason,
                reviewed_label: r.reviewed_label,
                reviewed_by: r.reviewed_by,
                reviewed_at: r.reviewed_at,
            })
        })
        .collect()
}

/// What a classification lease carries (read after the lease's transaction committed).
pub(crate) async fn work(conn: &impl ConnectionTrait, job: &Job) -> Result<ClassifyWork, ApiError> {
    let batch = store::classify::by_job(conn, job.id).await?.ok_or_else(|| ApiError::not_found("classification batch of job", job.id))?;
    let promotion =
        store::promotions::get(conn, batch.promotion_id).await?.ok_or_else(|| ApiError::not_found("promotion", batch.promotion_id))?;
    let classes = super::evidence::version_classes(conn, job.dataset_version_id).await?;
    let auto_accept = decode_auto(&promotion)?.unwrap_or_else(|| review_everything(&classes));
    Ok(ClassifyWork {
        batch_id: batch.id,
        promotion_id: promotion.id,
        checkpoint: protocol::api::ArtifactInfo {
            kind: "best_checkpoint".into(),
            uri: promotion.checkpoint_uri,
            sha256: promotion.checkpoint_sha256,
            bytes: 0,
            created_at: promotion.created_at,
        },
        path: batch.path,
        classes,
        auto_accept,
        batch: batch.batch_size.clamp(1, 1024) as u32,
    })
}

/// Whether `who` may lease job `job_id` by name: a classification held for its creator.
pub(crate) async fn check_own_job(conn: &impl ConnectionTrait, who: &Principal, job_id: i64) -> Result<(), ApiError> {
    let batch = store::classify::by_job(conn, job_id).await?.ok_or_else(|| ApiError::not_found("classification batch of job", job_id))?;
    if batch.actor != who.name {
        return Err(ApiError::Conflict(format!(
            "job {job_id} (classification batch {}) was created by `{}`; only that token runs it in its own process",
            batch.id, batch.actor
        )));
    }
    if batch.held != 1 {
        return Err(ApiError::Conflict(format!("job {job_id} runs on a worker (`--on-worker`); it cannot be leased by name")));
    }
    if batch.status != JobStatus::Queued.as_str() {
        return Err(ApiError::Conflict(format!(
            "job {job_id} (classification batch {}) is {}; it cannot be leased",
            batch.id, batch.status
        )));
    }
    Ok(())
}

/// Stores classified images sent under the batch's live lease.
pub async fn upload(state: &AppState, who: &Principal, id: i64, req: ClassifiedUpload) -> Result<u64, ApiError> {
    if req.items.len() > MAX_UPLOAD {
        return Err(ApiError::InvalidRequest(format!("{} images in one upload; send at most {MAX_UPLOAD}", req.items.len())));
    }
    let expect = Expect { kind: Some(JobKind::Classify), run: None };
    let (tx, _lease, job) = super::jobs::begin_fenced(state, who, &req.lease_id, expect).await?;
    let batch = store::classify::by_job(&tx, job.id).await?.ok_or_else(|| ApiError::not_found("classification batch of job", job.id))?;
    if batch.id != id {
        return Err(ApiError::LeaseLost(format!("lease `{}` is batch {}'s, not batch {id}'s", req.lease_id, batch.id)));
    }
    let classes = super::evidence::version_classes(&tx, job.dataset_version_id).await?;
    let mut seen = std::collections::HashSet::new();
    for item in &req.items {
        let bad = |why: &str| ApiError::InvalidRequest(format!("image `{}`: {why}", super::bounded_text(&item.path, 200)));
        if item.path.is_empty() || item.path.len() > 1024 || item.path.starts_with('/') || item.path.split('/').any(|p| p == "..") {
            return Err(bad("the path must be relative to the batch's folder, 1-1024 bytes, without `..`"));
        }
        if !seen.insert(item.path.as_str()) {
            return Err(bad("sent twice in one upload"));
        }
        if let Some(sha) = &item.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(bad("sha256 must be 64 hex digits"));
        }
        match (item.decision, item.predicted, item.confidence) {
            (Decision::Skipped, None, None) => {}
            (Decision::Skipped, _, _) => return Err(bad("a skipped file has no prediction")),
            (_, Some(p), Some(c)) if (p as usize) < classes.len() && (0.0..=1.0).contains(&c) => {}
            _ => return Err(bad(&format!("a classified image needs a class index below {} and a confidence in 0..1", classes.len()))),
        }
    }
    let reasons: Vec<String> = req.items.iter().map(|i| super::bounded_text(&i.reason, 1024)).collect();
    let rows: Vec<NewItem> = req
        .items
        .iter()
        .zip(&reasons)
        .map(|(i, reason)| NewItem {
            path: &i.path,
            sha256: i.sha256.as_deref(),
            predicted: i.predicted.map(i64::from),
            confidence: i.confidence,
            decision: i.decision.as_str(),
            reason,
        })
        .collect();
    store::classify::upsert_items(&tx, id, &rows).await?;
    tx.commit().await?;
    Ok(req.items.len() as u64)
}

/// Closes the batch inside its job's completion transaction, with the audit event.
pub(crate) async fn ended(
    conn: &impl ConnectionTrait,
    job: &Job,
    status: JobStatus,
    images_per_second: Option<f64>,
    error: Option<&str>,
    now: i64,
) -> Result<(), ApiError> {
    let batch = store::classify::by_job(conn, job.id).await?.ok_or_else(|| ApiError::not_found("classification batch of job", job.id))?;
    if status == JobStatus::Queued {
        return Ok(());
    }
    let ips = images_per_second.filter(|v| v.is_finite() && *v >= 0.0);
    store::classify::finish(conn, batch.id, ips, now).await?;
    let summary = info(&batch, &store::classify::counts(conn, batch.id).await?)?;
    audit::append(
        conn,
        Event {
            actor: &format!("worker:{}", job.worker.clone().unwrap_or_default()),
            action: AuditAction::ClassifyFinish,
            experiment: Some(&batch.experiment),
            run_id: Some(batch.run_id),
            details: json!({"batch": batch.id, "job": job.id, "status": status.as_str(), "promotion": batch.promotion_id,
                "checkpoint_sha256": batch.checkpoint_sha256, "accepted": summary.accepted, "review": summary.review,
                "skipped": summary.skipped, "images_per_second": ips, "error": error}),
        },
    )
    .await?;
    Ok(())
}

/// Whether a lease-holding caller may download `sha256`: its live classification lease's
/// promoted checkpoint (so `cobb classify` needs no worker token).
pub async fn may_download(state: &AppState, who: &Principal, lease_id: &str, sha256: &str) -> Result<(), ApiError> {
    let expect = Expect { kind: Some(JobKind::Classify), run: None };
    let (tx, _lease, job) = super::jobs::begin_fenced(state, who, lease_id, expect).await?;
    tx.commit().await?;
    let batch =
        store::classify::by_job(&state.db.read, job.id).await?.ok_or_else(|| ApiError::not_found("classification batch", job.id))?;
    if batch.checkpoint_sha256 != sha256 {
        return Err(ApiError::Forbidden { needed: protocol::Role::Worker, have: who.role, name: who.name.clone() });
    }
    Ok(())
}

/// A reviewer's labels (reviewer role): each image must be one the batch classified (not a
/// skipped file) and each label one of the classes; every label is an audit event. A label
/// given again replaces the earlier one (also audited).
pub async fn review(state: &AppState, who: &Principal, id: i64, req: ReviewRequest) -> Result<ReviewResult, ApiError> {
    if req.labels.is_empty() || req.labels.len() > MAX_REVIEW {
        return Err(ApiError::InvalidRequest(format!("give 1-{MAX_REVIEW} labels (PATH=CLASS)")));
    }
    let conn = &state.db.read;
    let batch = row(conn, id).await?;
    let classes = super::evidence::version_classes(conn, batch.dataset_version_id).await?;
    let paths: Vec<&str> = req.labels.iter().map(|l| l.path.as_str()).collect();
    let stored: std::collections::HashMap<String, store::classify::ItemRow> =
        store::classify::items_at(conn, id, &paths).await?.into_iter().map(|r| (r.path.clone(), r)).collect();
    // Everything is checked before anything is stored: a bad line stores nothing.
    for l in &req.labels {
        let Some(item) = stored.get(&l.path) else {
            return Err(ApiError::InvalidRequest(format!(
                "batch {id} has no image `{}`; paths are relative to the batch's folder, as `cobb review {id}` lists them",
                super::bounded_text(&l.path, 200)
            )));
        };
        if item.decision == Decision::Skipped.as_str() {
            return Err(ApiError::InvalidRequest(format!("`{}` was skipped ({}); it has nothing to review", l.path, item.reason)));
        }
        if !classes.contains(&l.label) {
            return Err(ApiError::InvalidRequest(format!("`{}` is not a class; the classes are {}", l.label, classes.join(", "))));
        }
    }
    let now = now_ms();
    let tx = state.db.write.begin().await?;
    let mut corrected = 0u64;
    for l in &req.labels {
        let item = &stored[&l.path];
        let predicted = item.predicted.and_then(|p| classes.get(p as usize)).cloned();
        let correction = predicted.as_deref() != Some(l.label.as_str());
        corrected += u64::from(correction);
        store::classify::set_review(&tx, id, &l.path, &l.label, &who.name, now).await?;
        audit::append(
            &tx,
            Event {
                actor: &who.name,
                action: AuditAction::ReviewLabel,
                experiment: Some(&batch.experiment),
                run_id: Some(batch.run_id),
                details: json!({"batch": id, "path": l.path, "sha256": item.sha256, "predicted": predicted, "label": l.label,
                    "decision": item.decision, "corrected": correction, "replaces": item.reviewed_label}),
            },
        )
        .await?;
    }
    tx.commit().await?;
    let left = store::classify::counts(&state.db.read, id)
        .await?
        .iter()
        .filter(|c| c.decision == Decision::Review.as_str() && c.reviewed == 0)
        .map(|c| c.n as u64)
        .sum();
    tracing::info!(batch = id, by = %who.name, labels = req.labels.len(), corrected, "review labels stored");
    Ok(ReviewResult { reviewed: req.labels.len() as u64, corrected, left_to_review: left })
}

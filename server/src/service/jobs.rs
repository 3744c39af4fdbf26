//! The lease state machine, one for every kind of job: lease -> heartbeat -> (the kind's
//! writes) -> complete | release, and the reaper.
//!
//! A job is `queued`, `running` under exactly one lease, or ended (`succeeded`, `failed`,
//! `cancelled`). A lease is live while it has not ended and has not passed `expires_at`.
//! Every worker write names its lease and is refused (409) unless the lease is live and is
//! still its job's current lease; a write that belongs to another kind of job is refused
//! too (a training lease never receives test items nor writes test results; an evaluation
//! lease never writes training metrics). Expired leases are reaped: the job goes back to
//! the queue (attempt + 1 on the next lease) until its `max_attempts`, then fails with the
//! reason. Every lease is kept: it is the job's attempt history.

use protocol::api::{
    ArtifactInfo, Complete, Heartbeat, HeartbeatAction, HeartbeatReply, ItemList, JobDetail, JobInfo, JobLease, LeaseInfo, LeaseRequest,
    Outcome, Release, TrainWork, Work,
};
use protocol::{JobKind, JobStatus, Split};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, TransactionTrait};

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;
use crate::store;
use crate::store::jobs::{Filter, Job};
use crate::store::leases::LeaseRow;

fn ttl_ms(state: &AppState) -> i64 {
    state.config.lease_ttl_secs as i64 * 1000
}

pub(crate) fn job_info(job: Job) -> JobInfo {
    JobInfo {
        id: job.id,
        kind: job.kind,
        run_id: job.run_id,
        run_name: job.run_name,
        experiment: job.experiment,
        promotion_id: job.promotion_id,
        status: job.status,
        cancel_requested: job.cancel_requested,
        attempt: job.attempt as u32,
        max_attempts: job.max_attempts as u32,
        worker: job.worker,
        error: job.error,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
    }
}

/// A lease for the attempt history; its id only when `reveal` (a worker or admin asks).
pub(crate) fn lease_info(l: store::leases::LeaseWithKind, reveal: bool) -> Result<LeaseInfo, ApiError> {
    let kind = l.kind()?;
    Ok(LeaseInfo {
        id: reveal.then_some(l.id),
        job_id: l.job_id,
        kind,
        worker: l.worker,
        attempt: l.attempt as u32,
        created_at: l.created_at,
        expires_at: l.expires_at,
        ended_at: l.ended_at,
        end_reason: l.end_reason,
    })
}

async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Job, ApiError> {
    store::jobs::get(conn, id).await?.ok_or_else(|| ApiError::not_found("job", id))
}

pub const MAX_PAGE: u64 = 10_000;

pub async fn list(state: &AppState, filter: Filter, limit: u64) -> Result<Vec<JobInfo>, ApiError> {
    let jobs = store::jobs::list(&state.db.read, &filter, limit.clamp(1, MAX_PAGE)).await?;
    Ok(jobs.into_iter().map(job_info).collect())
}

/// One job with every lease it was handed.
pub async fn show(state: &AppState, id: i64, reveal_lease_ids: bool) -> Result<JobDetail, ApiError> {
    let conn = &state.db.read;
    let job = get(conn, id).await?;
    let leases = store::leases::of_job(conn, id).await?.into_iter().map(|l| lease_info(l, reveal_lease_ids)).collect::<Result<_, _>>()?;
    Ok(JobDetail { job: job_info(job), leases })
}

/// Hands the next job (of the kinds the worker takes) to `req.worker`, or None when none
/// is waiting.
pub async fn lease(state: &AppState, principal: &Principal, req: LeaseRequest) -> Result<Option<JobLease>, ApiError> {
    if req.worker.is_empty() || req.worker.len() > 100 {
        return Err(ApiError::InvalidRequest("worker name must be 1-100 characters".to_owned()));
    }
    let mut req = req;
    req.device = req.device.map(|d| super::bounded_text(&d, 200));
    reap_expired(state).await?;
    let now = now_ms();
    let lease_id = uuid::Uuid::new_v4().to_string();
    let expires_at = now + ttl_ms(state);
    // Only workers take jobs from the queue; another token leases by name the classification
    // it created to run in its own process.
    if req.job.is_none() && !principal.role.allows(protocol::Role::Worker) {
        return Err(ApiError::Forbidden { needed: protocol::Role::Worker, have: principal.role, name: principal.name.clone() });
    }
    let tx = state.db.write.begin().await?;
    // That one job; else a queued job (found and claimed in one statement); else the next run
    // of a tpe sweep, suggested now.
    let claimed = match req.job {
        Some(id) => {
            super::classify::check_own_job(&tx, principal, id).await?;
            store::jobs::claim(&tx, id, &lease_id, &req.worker, now).await?
        }
        None => match store::jobs::claim_next(&tx, &req.kinds, &lease_id, &req.worker, now).await? {
            Some(claimed) => Some(claimed),
            None if req.kinds.is_empty() || req.kinds.contains(&JobKind::Train) => match super::tpe::create_next(state, &tx, now).await? {
                Some(id) => store::jobs::claim(&tx, id, &lease_id, &req.worker, now).await?,
                None => None,
            },
            None => None,
        },
    };
    let Some(claimed) = claimed else {
        // Nothing waiting (or, for a job named, taken meanwhile: the guarded update makes that
        // safe).
        store::workers::seen(&tx, &req.worker, req.device.as_deref(), None, now).await?;
        tx.commit().await?;
        return Ok(None);
    };
    let (job_id, attempt, kind) = (claimed.id, claimed.attempt, claimed.kind()?);
    crate::prom::Counters::add(
        match kind {
            JobKind::Train => &state.counters.leases_train,
            JobKind::Evaluate => &state.counters.leases_evaluate,
            JobKind::Classify => &state.counters.leases_classify,
        },
        1,
    );
    store::leases::insert(&tx, &lease_id, job_id, claimed.run_id, &principal.name, &req.worker, attempt, now, expires_at).await?;
    store::workers::seen(&tx, &req.worker, req.device.as_deref(), Some(claimed.run_id), now).await?;
    if kind == JobKind::Evaluate {
        let job = get(&tx, job_id).await?;
        super::promotions::evaluation_started(&tx, principal, &job, &req.worker).await?;
    }
    // A training lease's few reads go on the transaction's connection before it commits (no
    // second connection, and on a remote PostgreSQL a handful of round trips fewer); an
    // evaluation's or classification's item lists are read after, off SQLite's one write
    // connection.
    let run = super::runs::get(&tx, claimed.run_id).await?;
    super::early_stop::remember_sweep(state, run.id, run.sweep_id);
    let version = store::datasets::version_by_id(&tx, run.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", run.dataset_version_id))?;
    let spec = super::runs::sweep_spec_cached(state, &tx, run.sweep_id).await?;
    let config = super::runs::config_from(&spec, &run, &version.version)?;
    let work = if kind == JobKind::Train { Some(Work::Train(train_work(&tx, &run).await?)) } else { None };
    tx.commit().await?;
    tracing::info!(job.id = job_id, job.kind = %kind, run.id = claimed.run_id, lease.id = %lease_id, worker = %req.worker, attempt,
        by = %principal.name, "job leased");

    let conn = &state.db.read;
    let work = match work {
        Some(work) => work,
        None if kind == JobKind::Evaluate => Work::Evaluate(super::promotions::evaluate_work(conn, &get(conn, job_id).await?).await?),
        None => Work::Classify(super::classify::work(conn, &get(conn, job_id).await?).await?),
    };
    Ok(Some(JobLease {
        lease_id,
        job_id,
        run_id: run.id,
        run_name: run.name,
        experiment: run.experiment,
        attempt: attempt as u32,
        expires_at,
        ttl_seconds: state.config.lease_ttl_secs,
        heartbeat_seconds: state.config.heartbeat_secs,
        config,
        dataset: version.dataset,
        dataset_version: version.version,
        work,
    }))
}

async fn train_work(conn: &impl ConnectionTrait, run: &store::runs::RunRow) -> Result<TrainWork, ApiError> {
    let info = |a: store::artifacts::ArtifactRow| ArtifactInfo {
        kind: a.kind,
        uri: a.uri,
        sha256: a.sha256,
        bytes: a.bytes as u64,
        created_at: a.created_at,
    };
    // The newest of each kind, from one read of the run's artifacts (a handful: a newer
    // `last_*` replaces the older one).
    let mut newest: std::collections::HashMap<String, store::artifacts::ArtifactRow> = std::collections::HashMap::new();
    for a in store::artifacts::of_run(conn, run.id).await? {
        newest.insert(a.kind.clone(), a);
    }
    let resume_files: Vec<ArtifactInfo> =
        ["last_checkpoint", "last_optimizer", "last_state"].into_iter().filter_map(|kind| newest.remove(kind).map(info)).collect();
    let resume_from = resume_files.first().filter(|a| a.kind == "last_checkpoint").cloned();
    let params = run.params()?;
    Ok(TrainWork { params, resume_from, resume_files })
}

/// What a write needs of the lease that carries it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    /// The lease's job must be of this kind.
    pub kind: Option<JobKind>,
    /// The lease must be this run's.
    pub run: Option<i64>,
}

impl Expect {
    pub const ANY: Expect = Expect { kind: None, run: None };

    pub fn training_of(run: i64) -> Expect {
        Expect { kind: Some(JobKind::Train), run: Some(run) }
    }
}

/// Why a lease may not write.
enum Refusal {
    Lost(String),
    Expired(LeaseRow),
}

/// The live lease `lease_id` and its job, read inside `conn` (a write transaction, so the
/// answer holds until it commits), or why `who` may not write with it.
async fn fenced(
    conn: &impl ConnectionTrait,
    who: &Principal,
    lease_id: &str,
    expect: Expect,
) -> Result<Result<(LeaseRow, Job), Refusal>, ApiError> {
    // The lease and its job in one read.
    let Some((lease, job)) = store::jobs::lease_with_job(conn, lease_id).await? else {
        return Ok(Err(Refusal::Lost(format!("lease `{lease_id}` does not exist"))));
    };
    // A lease is its token's: another token that learned the id cannot use it.
    if let Some(holder) = &lease.holder
        && *holder != who.name
    {
        return Ok(Err(Refusal::Lost(format!("lease `{lease_id}` was handed to another token, not to `{}`", who.name))));
    }
    if let Some(run_id) = expect.run
        && lease.run_id != run_id
    {
        return Ok(Err(Refusal::Lost(format!("lease `{lease_id}` belongs to run {}, not run {run_id}", lease.run_id))));
    }
    let Some(job_id) = lease.job_id else {
        return Ok(Err(Refusal::Lost(format!("lease `{lease_id}` of run {} ended before the upgrade to jobs", lease.run_id))));
    };
    let job = job.ok_or_else(|| ApiError::not_found("job", job_id))?;
    if let Some(kind) = expect.kind
        && job.kind != kind
    {
        return Ok(Err(Refusal::Lost(format!(
            "lease `{lease_id}` is for a `{}` job (job {}); this write belongs to a `{kind}` job",
            job.kind, job.id
        ))));
    }
    if let Some(ended) = lease.ended_at {
        let reason = lease.end_reason.clone().unwrap_or_else(|| "ended".to_owned());
        return Ok(Err(match reason.as_str() {
            "expired" => Refusal::Expired(lease),
            _ => Refusal::Lost(format!("lease `{lease_id}` of job {job_id} (run {}) has ended ({reason} at {ended} ms)", lease.run_id)),
        }));
    }
    if lease.expires_at < now_ms() {
        return Ok(Err(Refusal::Expired(lease)));
    }
    Ok(Ok((lease, job)))
}

/// Turns a refusal into the error answer, reaping first when the lease has expired so the
/// job is already requeued when the worker hears about it.
async fn refuse(state: &AppState, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Lost(message) => ApiError::LeaseLost(message),
        Refusal::Expired(lease) => {
            if let Err(e) = reap_expired(state).await {
                return e.into();
            }
            ApiError::LeaseExpired(format!(
                "lease `{}` of job {} (run {}) expired: no heartbeat since {} ms (expiry at {} ms); \
                 the job was requeued or failed by the reaper",
                lease.id,
                lease.job_id.unwrap_or_default(),
                lease.run_id,
                lease.heartbeat_at,
                lease.expires_at
            ))
        }
    }
}

/// Opens a write transaction holding the live lease and its job, or answers why it may
/// not write.
pub(crate) async fn begin_fenced(
    state: &AppState,
    who: &Principal,
    lease_id: &str,
    expect: Expect,
) -> Result<(DatabaseTransaction, LeaseRow, Job), ApiError> {
    let tx = state.db.write.begin().await?;
    match fenced(&tx, who, lease_id, expect).await? {
        Ok((lease, job)) => Ok((tx, lease, job)),
        Err(refusal) => {
            tx.rollback().await?;
            Err(refuse(state, refusal).await)
        }
    }
}

/// Extends the lease; the answer says whether to continue or stop (the job was cancelled).
pub async fn heartbeat(state: &AppState, who: &Principal, lease_id: &str, _beat: Heartbeat) -> Result<HeartbeatReply, ApiError> {
    let (tx, lease, job) = begin_fenced(state, who, lease_id, Expect::ANY).await?;
    let now = now_ms();
    let expires_at = now + ttl_ms(state);
    store::leases::extend(&tx, lease_id, now, expires_at).await?;
    store::workers::touch(&tx, &lease.worker, now).await?;
    tx.commit().await?;
    let action = if job.cancel_requested || job.prune_requested { HeartbeatAction::Stop } else { HeartbeatAction::Continue };
    Ok(HeartbeatReply { action, expires_at })
}

/// The items the lease's job works on: train and validation for training, test for a
/// promoted run's evaluation -- the only way test items leave the server.
pub async fn items(state: &AppState, who: &Principal, lease_id: &str) -> Result<ItemList, ApiError> {
    let (tx, _, job) = begin_fenced(state, who, lease_id, Expect::ANY).await?;
    tx.commit().await?;
    let splits: &[Split] = match job.kind {
        JobKind::Train => &[Split::Train, Split::Val],
        JobKind::Evaluate => &[Split::Test],
        JobKind::Classify => {
            return Err(ApiError::Conflict(format!(
                "lease `{lease_id}` is a classification's: it reads the images under its own path, never a dataset's items"
            )));
        }
    };
    let conn = &state.db.read;
    let version = store::datasets::version_by_id(conn, job.dataset_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", job.dataset_version_id))?;
    super::datasets::item_list(conn, version, splits).await
}

/// The most skipped images one completion may list (a test split is far smaller).
pub const MAX_SKIPPED_REPORTED: usize = 100_000;

/// Ends the lease with the worker's outcome. A retryable failure with attempts left
/// queues the job again; a cancel requested meanwhile wins over any outcome.
pub async fn complete(state: &AppState, who: &Principal, lease_id: &str, req: Complete) -> Result<JobInfo, ApiError> {
    if req.confusion.is_some() && req.best_epoch.is_some() {
        return Err(ApiError::InvalidRequest(
            "a completion carries a best epoch (training) or a confusion matrix (evaluation), not both".to_owned(),
        ));
    }
    if req.skipped.len() > MAX_SKIPPED_REPORTED {
        return Err(ApiError::InvalidRequest(format!(
            "{} skipped images in one completion; report at most {MAX_SKIPPED_REPORTED}",
            req.skipped.len()
        )));
    }
    let mut req = req;
    req.error = req.error.map(|e| super::bounded_text(&e, super::MAX_ERROR_BYTES));
    for issue in &mut req.skipped {
        issue.path = super::bounded_text(&issue.path, 1024);
        issue.reason = super::bounded_text(&issue.reason, 1024);
    }
    let (tx, lease, job) = begin_fenced(state, who, lease_id, Expect::ANY).await?;
    let now = now_ms();
    // A classification its creator runs itself is not queued again for nobody to take.
    let retry = req.outcome == Outcome::Failed && req.retryable && job.attempt < job.max_attempts && !job.held_for_creator();
    let status = if job.cancel_requested {
        JobStatus::Cancelled
    } else if job.prune_requested {
        JobStatus::Pruned
    } else if retry {
        JobStatus::Queued
    } else {
        match req.outcome {
            Outcome::Succeeded => JobStatus::Succeeded,
            Outcome::Failed => JobStatus::Failed,
            Outcome::Cancelled => JobStatus::Cancelled,
        }
    };
    let error = match (status, req.outcome, &req.error) {
        (JobStatus::Pruned, _, _) => prune_reason(&tx, job.run_id).await?,
        (_, Outcome::Failed, None) => Some("the worker reported a failure without a reason".to_owned()),
        (_, _, e) => e.clone(),
    };
    match job.kind {
        JobKind::Train => {
            if req.confusion.is_some() || !req.predictions.is_empty() {
                tx.rollback().await?;
                return Err(ApiError::InvalidRequest(
                    "a training job reports its confusion matrices per epoch (POST /runs/{id}/results) and its best \
                     epoch's predictions (POST /runs/{id}/predictions); only an evaluation job completes with them"
                        .to_owned(),
                ));
            }
            // A pruned run keeps its best epoch (and checkpoint): it counts as finished.
            if matches!(status, JobStatus::Succeeded | JobStatus::Pruned) {
                super::constraints::record(state, &tx, job.run_id, job.sweep_id, req.best_epoch).await?;
            }
        }
        JobKind::Evaluate => {
            super::promotions::evaluation_ended(&tx, &job, status, &req, error.as_deref(), now).await?;
        }
        JobKind::Classify => {
            if req.confusion.is_some() || !req.predictions.is_empty() || req.best_epoch.is_some() {
                tx.rollback().await?;
                return Err(ApiError::InvalidRequest(
                    "a classification completes with its outcome and images per second; its images go to \
                     POST /classifications/{id}/items"
                        .to_owned(),
                ));
            }
            super::classify::ended(&tx, &job, status, req.images_per_second, error.as_deref(), now).await?;
        }
    }
    let done = match store::leases::end(&tx, lease_id, "completed", now).await? {
        true => store::jobs::finish_lease_returning(&tx, &job, lease_id, status, error.as_deref(), now).await?,
        false => None,
    };
    // The answer as stored (the update returns it).
    let Some(done) = done else {
        tx.rollback().await?;
        return Err(ApiError::LeaseLost(format!("lease `{lease_id}` ended while completing")));
    };
    store::workers::seen(&tx, &lease.worker, None, None, now).await?;
    tx.commit().await?;
    tracing::info!(job.id, job.kind = %job.kind, run.id = job.run_id, lease.id = %lease_id, %status, "job completed");
    Ok(job_info(done))
}

/// Gives a job back (worker shutting down): it is queued again at once (a training job
/// resumes from its last checkpoint); the attempt is not held against it.
pub async fn release(state: &AppState, who: &Principal, lease_id: &str, req: Release) -> Result<JobInfo, ApiError> {
    let (tx, lease, job) = begin_fenced(state, who, lease_id, Expect::ANY).await?;
    let now = now_ms();
    // A pruned run is not resumed: it ends where it was stopped.
    let status = if job.cancel_requested {
        JobStatus::Cancelled
    } else if job.prune_requested {
        JobStatus::Pruned
    } else {
        JobStatus::Queued
    };
    let error = if status == JobStatus::Pruned { prune_reason(&tx, job.run_id).await? } else { None };
    // The attempt history says why: `released (preempted)`.
    let end_reason = format!("released ({})", super::bounded_text(req.reason.trim(), 100));
    store::leases::end(&tx, lease_id, if req.reason.trim().is_empty() { "released" } else { &end_reason }, now).await?;
    store::jobs::finish_lease(&tx, job.id, lease_id, status, error.as_deref(), now).await?;
    if status == JobStatus::Pruned {
        let run = super::runs::get(&tx, job.run_id).await?;
        super::constraints::record(state, &tx, job.run_id, run.sweep_id, run.best_epoch).await?;
    }
    if status == JobStatus::Queued {
        store::jobs::forgive_attempt(&tx, job.id).await?;
    }
    store::workers::seen(&tx, &lease.worker, None, None, now).await?;
    tx.commit().await?;
    let reason = super::bounded_text(&req.reason, 1024);
    tracing::info!(job.id, run.id = job.run_id, lease.id = %lease_id, %reason, "lease released");
    Ok(job_info(get(&state.db.read, job.id).await?))
}

/// Why a pruned run was stopped (its decision row), as its run error.
async fn prune_reason(conn: &impl sea_orm::ConnectionTrait, run_id: i64) -> Result<Option<String>, DbErr> {
    Ok(store::early_stops::stopping(conn, run_id).await?.map(|d| d.reason()))
}

/// Ends every expired lease: its job is requeued, failed (attempts used up) or cancelled
/// (a cancel was pending). Returns how many leases were reaped.
pub async fn reap_expired(state: &AppState) -> Result<usize, DbErr> {
    let now = now_ms();
    let expired = store::leases::expired(&state.db.read, now).await?;
    let mut reaped = 0;
    for lease in expired {
        let tx = state.db.write.begin().await?;
        if !store::leases::end(&tx, &lease.id, "expired", now).await? {
            tx.rollback().await?;
            continue;
        }
        if let Some(job_id) = lease.job_id
            && let Some(job) = store::jobs::get(&tx, job_id).await?
        {
            // A classification run by its creator's own process is not handed to anyone else:
            // when that process stops, the batch fails (run `cobb classify` again).
            let (status, error) = if job.cancel_requested {
                (JobStatus::Cancelled, None)
            } else if job.held_for_creator() {
                (JobStatus::Failed, Some(format!("`{}` stopped heartbeating while classifying; run `cobb classify` again", lease.worker)))
            } else if job.prune_requested {
                // Never resumed by the reaper: it was stopped on purpose.
                (JobStatus::Pruned, prune_reason(&tx, job.run_id).await?)
            } else if job.attempt >= job.max_attempts {
                (
                    JobStatus::Failed,
                    Some(format!(
                        "lease expired on attempt {} of {} (worker `{}` stopped heartbeating); no attempts left",
                        job.attempt, job.max_attempts, lease.worker
                    )),
                )
            } else {
                (JobStatus::Queued, None)
            };
            store::jobs::finish_lease(&tx, job.id, &lease.id, status, error.as_deref(), now).await?;
            crate::prom::Counters::add(&state.counters.lease_expiries, 1);
            match status {
                JobStatus::Queued => crate::prom::Counters::add(&state.counters.reaped_requeued, 1),
                JobStatus::Failed => crate::prom::Counters::add(&state.counters.reaped_failed, 1),
                _ => {}
            }
            if status == JobStatus::Pruned
                && let Ok(run) = super::runs::get(&tx, job.run_id).await
                && let Err(e) = super::constraints::record(state, &tx, job.run_id, run.sweep_id, run.best_epoch).await
            {
                tracing::warn!(run.id = job.run_id, error = %e, "could not check a pruned run's constraints");
            }
            if job.kind == JobKind::Evaluate {
                super::promotions::evaluation_expired(&tx, &job, &lease.worker, status, error.as_deref()).await?;
            }
            if job.kind == JobKind::Classify
                && let Err(e) = super::classify::ended(&tx, &job, status, None, error.as_deref(), now).await
            {
                tracing::warn!(job.id, error = %e, "could not close an expired classification batch");
            }
            tracing::warn!(job.id, job.kind = %job.kind, run.id = job.run_id, lease.id = %lease.id, worker = %lease.worker, %status,
                "lease expired");
        }
        store::workers::seen(&tx, &lease.worker, None, None, lease.heartbeat_at).await?;
        tx.commit().await?;
        reaped += 1;
    }
    Ok(reaped)
}

/// Runs the reaper every `reap_interval_secs` until the process ends.
pub fn spawn_reaper(state: actix_web::web::Data<AppState>) -> tokio::task::JoinHandle<()> {
    let every = std::time::Duration::from_secs(state.config.reap_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = reap_expired(&state).await {
                tracing::error!(error = %e, "reaper failed; retrying at the next tick");
            }
        }
    })
}

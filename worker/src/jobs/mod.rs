//! The worker loop: lease the next job of any kind the worker takes, run it by its kind
//! (`train`: train.rs, `evaluate`: evaluate.rs,
//! `classify`: classify.rs) with heartbeats beside it, complete it.
//! A heartbeat's "stop" answer (cancelled job) or a lost lease stops the job within one
//! step; a clean shutdown releases the lease, so the job is queued again at once.

use protocol::JobKind;
use protocol::api::{JobLease, Work};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Instrument;

use client::{Client, ClientError};

pub mod classify;
mod context;
pub mod evaluate;
pub mod train;

pub use context::{Progress, Quiet, WorkerConfig};

/// Runs jobs until `shutdown` is set (or the queue is empty with `exit_when_idle`).
pub async fn run(config: WorkerConfig, progress: Arc<dyn Progress>, shutdown: Arc<AtomicBool>) -> Result<(), ClientError> {
    // A worker with no folder to classify under takes no classification jobs.
    let kinds: &[JobKind] =
        if config.classify_roots.as_ref().is_some_and(Vec::is_empty) { &[JobKind::Train, JobKind::Evaluate] } else { &[] };
    run_kinds(config, kinds, progress, shutdown).await
}

/// Like [`run`], taking only jobs of `kinds` (every kind when empty).
pub async fn run_kinds(
    config: WorkerConfig,
    kinds: &[JobKind],
    progress: Arc<dyn Progress>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ClientError> {
    // A server restart must not lose a job: keep retrying for five minutes.
    let client = Client::patient(&config.server, Some(config.token.clone()), std::time::Duration::from_secs(300));
    let device = config.device_name();
    tracing::info!(worker = %config.name, %device, "worker started");
    let mut idle_since = std::time::Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        match client.lease(&config.name, &device, kinds).await? {
            Some(job) => {
                run_job(&client, &config, job, progress.clone(), shutdown.clone()).await;
                idle_since = std::time::Instant::now();
            }
            None if config.exit_when_idle && idle_since.elapsed() >= config.idle_exit_after => break,
            None => tokio::time::sleep(config.idle_poll.min(config.idle_exit_after.max(std::time::Duration::from_millis(100)))).await,
        }
    }
    Ok(())
}

/// Runs one leased job by its kind, to its completion (or release, or lost lease).
pub async fn run_job(client: &Client, config: &WorkerConfig, job: JobLease, progress: Arc<dyn Progress>, shutdown: Arc<AtomicBool>) {
    let span = tracing::info_span!("job", job.id = job.job_id, job.kind = %job.kind(), run.id = job.run_id,
        lease.id = %job.lease_id, attempt = job.attempt);
    match job.work.clone() {
        Work::Train(work) => train::run(client, config, job, work, progress, shutdown).instrument(span).await,
        Work::Evaluate(work) => evaluate::run(client, config, job, work, progress).instrument(span).await,
        Work::Classify(work) => {
            let output = classify::Output::under(&config.work_dir, work.batch_id);
            classify::run(client, config, job, work, progress, output).instrument(span).await;
        }
    }
}

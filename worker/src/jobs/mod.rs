//! The worker loop: lease the next job of any kind the worker takes, run it by its kind
//! (`train`: train.rs, `evaluate`: evaluate.rs) with heartbeats beside it, complete it.
//! A heartbeat's "stop" answer (cancelled job) or a lost lease stops the job within one
//! step; a clean shutdown releases the lease, so the job is queued again at once.

use protocol::JobKind;
use protocol::api::{HeartbeatAction, JobLease, Work};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument;

use crate::client::{Client, ClientError};
use crate::device::DeviceChoice;
use crate::train::EpochReport;

pub mod evaluate;
pub mod train;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub server: String,
    pub token: String,
    pub name: String,
    pub device: DeviceChoice,
    /// Checkpoints and the decoded-image cache.
    pub work_dir: PathBuf,
    /// How long to wait before asking again when nothing is queued.
    pub idle_poll: Duration,
    /// Stop when the queue is empty (scripts, tests) instead of waiting for work.
    pub exit_when_idle: bool,
}

impl WorkerConfig {
    /// The device as the server records it (`cpu`, `cuda:N`).
    pub fn device_name(&self) -> String {
        match self.device {
            DeviceChoice::Cpu => "cpu".to_owned(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// What the worker prints or shows about its jobs.
pub trait Progress: Send + Sync {
    fn started(&self, _job: &JobLease) {}
    /// A training job's epoch.
    fn epoch(&self, _job: &JobLease, _report: &EpochReport) {}
    fn finished(&self, _job: &JobLease, _status: &str, _detail: &str) {}
}

/// Progress written to the log only.
pub struct Quiet;
impl Progress for Quiet {}

pub(crate) fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
}

/// Runs jobs until `shutdown` is set (or the queue is empty with `exit_when_idle`).
pub async fn run(config: WorkerConfig, progress: Arc<dyn Progress>, shutdown: Arc<AtomicBool>) -> Result<(), ClientError> {
    run_kinds(config, &[], progress, shutdown).await
}

/// Like [`run`], taking only jobs of `kinds` (every kind when empty).
pub async fn run_kinds(
    config: WorkerConfig,
    kinds: &[JobKind],
    progress: Arc<dyn Progress>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), ClientError> {
    let client = Client::new(&config.server, &config.token);
    let device = config.device_name();
    tracing::info!(worker = %config.name, %device, "worker started");
    while !shutdown.load(Ordering::Relaxed) {
        match client.lease(&config.name, &device, kinds).await? {
            Some(job) => run_job(&client, &config, job, progress.clone(), shutdown.clone()).await,
            None if config.exit_when_idle => break,
            None => tokio::time::sleep(config.idle_poll).await,
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
    }
}

/// The lease's state as its heartbeats see it.
#[derive(Clone, Default)]
pub(crate) struct LeaseFlags {
    /// Stop within one step: cancelled, lease lost, or shutting down.
    pub stop: Arc<AtomicBool>,
    /// The lease is no longer this worker's: send nothing more for it.
    pub lost: Arc<AtomicBool>,
}

/// Heartbeats every `job.heartbeat_seconds` until aborted; sets `flags.stop` on a "stop"
/// answer or on `shutdown`, and `flags.lost` (with stop) when the server refuses the lease.
pub(crate) fn heartbeats(client: &Client, job: &JobLease, flags: &LeaseFlags, shutdown: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (client, lease_id, flags) = (client.clone(), job.lease_id.clone(), flags.clone());
    let every = Duration::from_secs(job.heartbeat_seconds.max(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if shutdown.load(Ordering::Relaxed) {
                flags.stop.store(true, Ordering::Relaxed);
            }
            match client.heartbeat(&lease_id, None).await {
                Ok(reply) if reply.action == HeartbeatAction::Stop => flags.stop.store(true, Ordering::Relaxed),
                Ok(_) => {}
                Err(ClientError::LeaseLost(reason)) => {
                    tracing::warn!(%reason, "lease lost; stopping");
                    flags.lost.store(true, Ordering::Relaxed);
                    flags.stop.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    })
}

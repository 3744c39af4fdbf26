//! What every kind of job runs with: the worker's configuration, its progress reporting,
//! and the heartbeats that keep a lease alive (and say when to stop).

use protocol::api::{HeartbeatAction, JobLease};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::device::DeviceChoice;
use crate::train::EpochReport;
use client::Client;

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
    /// Stop when the queue is empty (scripts, tests, batch jobs) instead of waiting for work.
    pub exit_when_idle: bool,
    /// With `exit_when_idle`: how long the queue must stay empty before stopping (0: at once).
    pub idle_exit_after: Duration,
    /// The folders whose images this worker may classify (`--classify-root`); a worker with
    /// none takes no classification jobs. None: anywhere (the `cobb classify` process itself).
    pub classify_roots: Option<Vec<PathBuf>>,
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
    /// A classification's progress: files done of all.
    fn classified(&self, _job: &JobLease, _done: u64, _total: u64) {}
}

/// Progress written to the log only.
pub struct Quiet;
impl Progress for Quiet {}

pub(crate) fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
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
                Err(e) if e.is_lease_refusal() => {
                    tracing::warn!(reason = %e, "lease lost; stopping");
                    flags.lost.store(true, Ordering::Relaxed);
                    flags.stop.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    })
}

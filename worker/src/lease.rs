//! The worker loop: lease a run, fetch its train/val items (never test), train on a
//! blocking thread, stream every epoch's metrics and confusion matrix, record checkpoints
//! to the server's artifact store (sha256), complete. Heartbeats run beside training; a "stop" answer
//! (cancelled run) or a lost lease stops the trainer within one step. A clean shutdown
//! releases the lease so the run is requeued at once and resumes from its checkpoint.

use protocol::api::{Complete, EpochResults, Lease, MetricPoint, MetricsBatch, Outcome};
use protocol::api::HeartbeatAction;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::client::{Client, ClientError};
use crate::device::DeviceChoice;
use crate::train::{self, EpochReport, Finish, Reporter, TrainData, TrainError, checkpoint};

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

/// What the worker prints or shows about its runs.
pub trait Progress: Send + Sync {
    fn evaluated(&self, _job: &protocol::api::EvaluationLease, _status: &str, _detail: &str) {}
    fn started(&self, _lease: &Lease) {}
    fn epoch(&self, _lease: &Lease, _report: &EpochReport) {}
    fn finished(&self, _lease: &Lease, _status: &str, _detail: &str) {}
}

/// Progress written to the log only.
pub struct Quiet;
impl Progress for Quiet {}

struct Channel {
    epochs: mpsc::UnboundedSender<EpochReport>,
    stop: Arc<AtomicBool>,
}

impl Reporter for Channel {
    fn epoch(&mut self, report: &EpochReport) {
        let _ = self.epochs.send(report.clone());
    }
    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

pub(crate) fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
}

/// Uploads a checkpoint file to the server's artifact store as an artifact of the lease's
/// run (content-addressed by sha256). A missing file is not an error (nothing to upload).
async fn upload_file(client: &Client, lease: &Lease, kind: &str, path: &Path) -> Result<(), ClientError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    client.upload(lease.run_id, &lease.lease_id, kind, bytes).await.map(|_| ())
}

/// The files of a last checkpoint and their artifact kinds.
const LAST_FILES: [(&str, &str); 3] = [
    ("last_checkpoint", crate::train::checkpoint::LAST_MODEL),
    ("last_optimizer", crate::train::checkpoint::LAST_OPTIMIZER),
    ("last_state", crate::train::checkpoint::LAST_STATE),
];

/// Uploads the epoch's last checkpoint (model, optimiser, loop state), so that any worker
/// on any machine can resume the run from it.
async fn upload_last(client: &Client, lease: &Lease, dir: &Path) -> Result<(), ClientError> {
    for (kind, file) in LAST_FILES {
        upload_file(client, lease, kind, &dir.join(file)).await?;
    }
    Ok(())
}

/// Makes `dir` hold the server's copy of the run's last checkpoint (downloading the files
/// whose content differs): the server's record is what the stored metrics describe.
async fn fetch_last(client: &Client, lease: &Lease, dir: &Path) -> Result<bool, ClientError> {
    if lease.resume_files.len() < LAST_FILES.len() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| ClientError::Refused { status: 0, message: format!("{}: {e}", dir.display()) })?;
    for (kind, file) in LAST_FILES {
        let Some(artifact) = lease.resume_files.iter().find(|a| a.kind == kind) else { return Ok(false) };
        let target = dir.join(file);
        if sha256_of(&target).is_ok_and(|(sha, _)| sha == artifact.sha256) {
            continue;
        }
        let bytes = client.download(&artifact.sha256).await?;
        std::fs::write(&target, bytes).map_err(|e| ClientError::Refused { status: 0, message: format!("{}: {e}", target.display()) })?;
        tracing::info!(kind, sha256 = %artifact.sha256, "checkpoint file downloaded to resume");
    }
    Ok(true)
}

/// Runs until `shutdown` is set (or the queue is empty with `exit_when_idle`).
pub async fn run(config: WorkerConfig, progress: Arc<dyn Progress>, shutdown: Arc<AtomicBool>) -> Result<(), ClientError> {
    let client = Client::new(&config.server, &config.token);
    let device = match config.device {
        DeviceChoice::Cpu => "cpu".to_owned(),
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
    };
    tracing::info!(worker = %config.name, %device, "worker started");
    while !shutdown.load(Ordering::Relaxed) {
        // A promoted model's test evaluation goes before training: it is short and a
        // reviewer is waiting for it.
        if let Some(job) = client.lease_evaluation(&config.name, &device).await? {
            let span = tracing::info_span!("evaluation", run.id = job.run_id, promotion = job.promotion_id);
            crate::evaluate::run(&client, &config, job, progress.clone()).instrument(span).await;
            continue;
        }
        match client.lease(&config.name, &device).await? {
            Some(lease) => {
                let span = tracing::info_span!("lease", run.id = lease.run_id, lease.id = %lease.lease_id, attempt = lease.attempt);
                work(&client, &config, lease, progress.clone(), shutdown.clone()).instrument(span).await
            }
            None if config.exit_when_idle => break,
            None => tokio::time::sleep(config.idle_poll).await,
        }
    }
    Ok(())
}

async fn work(client: &Client, config: &WorkerConfig, lease: Lease, progress: Arc<dyn Progress>, shutdown: Arc<AtomicBool>) {
    progress.started(&lease);
    let items = match client.items(&lease.lease_id).await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "could not fetch the run's items");
            return;
        }
    };
    let data = TrainData::from_items(
        Path::new(&items.root),
        items.classes.clone(),
        &items.items,
        config.work_dir.join("cache"),
        &items.version,
    );
    let ckpt_dir = config.work_dir.join("checkpoints").join(format!("run-{}", lease.run_id));
    let last_dir = checkpoint::Store::new(&ckpt_dir).last_dir();
    let fetched = match fetch_last(client, &lease, &last_dir).await {
        Ok(fetched) => fetched,
        Err(e) => {
            tracing::warn!(error = %e, "could not fetch the run's last checkpoint; releasing the run");
            let _ = client.release(&lease.lease_id, &format!("checkpoint download failed: {e}")).await;
            return;
        }
    };
    let resume = lease.resume_from.is_some() && (fetched || last_dir.exists());

    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = lease.config.clone();
    let device = config.device;
    let trainer_stop = stop.clone();
    let store_dir = ckpt_dir.clone();
    let training = tokio::task::spawn_blocking(move || {
        let store = checkpoint::Store::new(&store_dir);
        let mut reporter = Channel { epochs: tx, stop: trainer_stop };
        train::train_on(device, &spec, &data, &store, resume, &mut reporter)
    });

    // Heartbeats beside training.
    let beat = {
        let (client, lease_id, stop, lost, shutdown) = (client.clone(), lease.lease_id.clone(), stop.clone(), lost.clone(), shutdown.clone());
        let every = Duration::from_secs(lease.heartbeat_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if shutdown.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Relaxed);
                }
                match client.heartbeat(&lease_id, None).await {
                    Ok(reply) if reply.action == HeartbeatAction::Stop => stop.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(ClientError::LeaseLost(reason)) => {
                        tracing::warn!(%reason, "lease lost; stopping");
                        lost.store(true, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        })
    };

    // Stream each epoch as it ends.
    while let Some(report) = rx.recv().await {
        if lost.load(Ordering::Relaxed) {
            continue;
        }
        progress.epoch(&lease, &report);
        for (path, reason) in &report.skipped {
            tracing::warn!(file = %path.display(), %reason, epoch = report.epoch, "image skipped");
        }
        let metrics: Vec<MetricPoint> =
            report.metrics().into_iter().map(|(key, value)| MetricPoint { key, step: report.epoch as i64, value }).collect();
        let batch = MetricsBatch { lease_id: Some(lease.lease_id.clone()), metrics };
        let results = EpochResults { lease_id: lease.lease_id.clone(), epoch: report.epoch as i64, confusion: report.confusion.clone() };
        let sent = match client.metrics(lease.run_id, &batch).await {
            Ok(_) => client.results(lease.run_id, &results).await,
            Err(e) => Err(e),
        };
        // The epoch's checkpoint is on disk before its report: record it, so that another
        // attempt of this run resumes from here if this worker dies.
        let sent = match sent {
            Ok(()) => upload_last(client, &lease, &checkpoint::Store::new(&ckpt_dir).last_dir()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            if matches!(e, ClientError::LeaseLost(_)) {
                lost.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            }
            tracing::warn!(error = %e, "could not report an epoch");
        }
    }
    let outcome = training.await;
    beat.abort();
    if lost.load(Ordering::Relaxed) {
        progress.finished(&lease, "lost", "the lease was lost; nothing more is sent for it");
        return;
    }
    // The best checkpoint in the artifact store (content-addressed by sha256).
    if let Err(e) = upload_file(client, &lease, "best_checkpoint", &checkpoint::Store::new(&ckpt_dir).best_model()).await {
        tracing::warn!(error = %e, "could not record the best checkpoint");
    }
    let complete = match outcome {
        Ok(Ok(result)) => match result.finish {
            Finish::Stopped { .. } if shutdown.load(Ordering::Relaxed) => {
                let _ = client.release(&lease.lease_id, "worker shutting down").await;
                progress.finished(&lease, "released", "worker shutting down; the run is requeued");
                return;
            }
            Finish::Stopped { .. } => Complete { outcome: Outcome::Cancelled, error: None, retryable: false, best_epoch: None },
            Finish::Completed { .. } => Complete {
                outcome: Outcome::Succeeded,
                error: None,
                retryable: false,
                best_epoch: result.best_epoch.map(|e| e as i64),
            },
        },
        Ok(Err(e)) => {
            let retryable = matches!(e, TrainError::Checkpoint(_) | TrainError::Device(_));
            Complete { outcome: Outcome::Failed, error: Some(e.to_string()), retryable, best_epoch: None }
        }
        Err(e) => Complete { outcome: Outcome::Failed, error: Some(format!("the trainer crashed: {e}")), retryable: true, best_epoch: None },
    };
    match client.complete(&lease.lease_id, &complete).await {
        Ok(run) => progress.finished(&lease, run.status.as_str(), run.error.as_deref().unwrap_or("")),
        Err(e) => tracing::warn!(error = %e, "could not complete the run"),
    }
}

//! A training job: fetch the run's train/val items (never test), train on a blocking
//! thread, stream every epoch's metrics and confusion matrix, record checkpoints to the
//! server's artifact store (sha256), complete. A clean shutdown releases the lease so the
//! run is requeued at once and resumes from its checkpoint.

use protocol::api::{Complete, EpochResults, JobLease, MetricPoint, MetricsBatch, Outcome, PredictionsUpload, TrainWork};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

use super::context::{LeaseFlags, Progress, WorkerConfig, heartbeats, sha256_of};
use crate::train::{self, EpochReport, Finish, Reporter, TrainData, TrainError, checkpoint};
use client::{Client, ClientError};

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

/// Uploads a checkpoint file to the server's artifact store as an artifact of the lease's
/// run (content-addressed by sha256). A missing file is not an error (nothing to upload).
async fn upload_file(client: &Client, lease: &JobLease, kind: &str, path: &Path) -> Result<(), ClientError> {
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
async fn upload_last(client: &Client, lease: &JobLease, dir: &Path) -> Result<(), ClientError> {
    for (kind, file) in LAST_FILES {
        upload_file(client, lease, kind, &dir.join(file)).await?;
    }
    Ok(())
}

/// Makes `dir` hold the server's copy of the run's last checkpoint (downloading the files
/// whose content differs): the server's record is what the stored metrics describe.
async fn fetch_last(client: &Client, work: &TrainWork, dir: &Path) -> Result<bool, ClientError> {
    if work.resume_files.len() < LAST_FILES.len() {
        return Ok(false);
    }
    // Errors name the file, not the work dir: a release reason reaches viewers.
    std::fs::create_dir_all(dir).map_err(|source| ClientError::Io { path: "the worker's checkpoint folder".to_owned(), source })?;
    for (kind, file) in LAST_FILES {
        let Some(artifact) = work.resume_files.iter().find(|a| a.kind == kind) else { return Ok(false) };
        let target = dir.join(file);
        if sha256_of(&target).is_ok_and(|(sha, _)| sha == artifact.sha256) {
            continue;
        }
        let bytes = client.download(&artifact.sha256).await?;
        std::fs::write(&target, bytes).map_err(|source| ClientError::Io { path: file.to_owned(), source })?;
        tracing::info!(kind, sha256 = %artifact.sha256, "checkpoint file downloaded to resume");
    }
    Ok(true)
}

pub(crate) async fn run(
    client: &Client,
    config: &WorkerConfig,
    lease: JobLease,
    work: TrainWork,
    progress: Arc<dyn Progress>,
    shutdown: Arc<AtomicBool>,
) {
    progress.started(&lease);
    let items = match client.items(&lease.lease_id).await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "could not fetch the run's items");
            return;
        }
    };
    let data = match TrainData::from_items(
        Path::new(&items.root),
        items.classes.clone(),
        &items.items,
        config.work_dir.join("cache"),
        &items.version,
    ) {
        Ok(data) => data,
        Err(refused) => {
            // A dataset that points outside its root is bad data: not retried.
            let complete = Complete { outcome: Outcome::Failed, error: Some(refused), ..Complete::of(Outcome::Succeeded) };
            match client.complete(&lease.lease_id, &complete).await {
                Ok(run) => progress.finished(&lease, run.status.as_str(), run.error.as_deref().unwrap_or("")),
                Err(e) => tracing::warn!(error = %e, "could not complete the run"),
            }
            return;
        }
    };
    let ckpt_dir = config.work_dir.join("checkpoints").join(format!("run-{}", lease.run_id));
    let last_dir = checkpoint::Store::new(&ckpt_dir).last_dir();
    let fetched = match fetch_last(client, &work, &last_dir).await {
        Ok(fetched) => fetched,
        Err(e) => {
            tracing::warn!(error = %e, "could not fetch the run's last checkpoint; releasing the run");
            let _ = client.release(&lease.lease_id, &format!("checkpoint download failed: {e}")).await;
            return;
        }
    };
    let resume = work.resume_from.is_some() && (fetched || last_dir.exists());

    let flags = LeaseFlags::default();
    let (stop, lost) = (flags.stop.clone(), flags.lost.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = lease.config.clone();
    let device = config.device;
    let trainer_stop = stop.clone();
    let store_dir = ckpt_dir.clone();
    let training = tokio::task::spawn_blocking(move || {
        crate::device::on_compute_pool(move || {
            let store = checkpoint::Store::new(&store_dir);
            let mut reporter = Channel { epochs: tx, stop: trainer_stop };
            train::train_on(device, &spec, &data, &store, resume, &mut reporter)
        })
    });
    let beat = heartbeats(client, &lease, &flags, shutdown.clone());

    // Stream each epoch as it ends.
    while let Some(report) = rx.recv().await {
        if lost.load(Ordering::Relaxed) {
            continue;
        }
        progress.epoch(&lease, &report);
        for (path, reason) in &report.skipped {
            tracing::warn!(item = %path, %reason, epoch = report.epoch, "image skipped");
        }
        let metrics: Vec<MetricPoint> =
            report.metrics().into_iter().map(|(key, value)| MetricPoint { key, step: report.epoch as i64, value }).collect();
        let batch = MetricsBatch { lease_id: Some(lease.lease_id.clone()), metrics };
        let results = EpochResults { lease_id: lease.lease_id.clone(), epoch: report.epoch as i64, confusion: report.confusion.clone() };
        let sent = match client.metrics(lease.run_id, &batch).await {
            Ok(accepted) => {
                // The sweep's early-stop rule pruned the run at this epoch: stop now, not at
                // the next heartbeat.
                if accepted.stop {
                    tracing::info!(run.id = lease.run_id, epoch = report.epoch, "the server stopped the run early");
                    stop.store(true, Ordering::Relaxed);
                }
                client.results(lease.run_id, &results).await
            }
            Err(e) => Err(e),
        };
        // The epoch's checkpoint is on disk before its report: record it, so that another
        // attempt of this run resumes from here if this worker dies.
        let sent = match sent {
            Ok(()) => upload_last(client, &lease, &checkpoint::Store::new(&ckpt_dir).last_dir()).await,
            Err(e) => Err(e),
        };
        // A new best epoch: its validation predictions replace the stored ones.
        let sent = match sent {
            Ok(()) if report.best && !report.predictions.is_empty() => {
                let upload = PredictionsUpload {
                    lease_id: lease.lease_id.clone(),
                    epoch: report.epoch as i64,
                    predictions: report.predictions.clone(),
                };
                client.predictions(lease.run_id, &upload).await
            }
            other => other,
        };
        if let Err(e) = sent {
            if e.is_lease_refusal() {
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
                // Preemption (SIGTERM, SIGUSR1, ctrl-c): the epoch's checkpoint is uploaded;
                // the run goes back to the queue without costing an attempt.
                let _ = client.release(&lease.lease_id, "preempted").await;
                progress.finished(&lease, "released", "preempted; the run is requeued and resumes from its last checkpoint");
                return;
            }
            // Cancelled or pruned (the server knows which): the best epoch so far goes with
            // it, so a pruned run keeps its best checkpoint.
            Finish::Stopped { .. } => Complete {
                outcome: Outcome::Cancelled,
                best_epoch: result.best_epoch.map(|e| e as i64),
                ..Complete::of(Outcome::Succeeded)
            },
            Finish::Completed { .. } => Complete {
                outcome: Outcome::Succeeded,
                best_epoch: result.best_epoch.map(|e| e as i64),
                ..Complete::of(Outcome::Succeeded)
            },
        },
        Ok(Err(e)) => {
            let retryable = matches!(e, TrainError::Checkpoint(_) | TrainError::Device(_));
            Complete { outcome: Outcome::Failed, error: Some(e.to_string()), retryable, ..Complete::of(Outcome::Succeeded) }
        }
        Err(e) => Complete {
            outcome: Outcome::Failed,
            error: Some(format!("the trainer crashed: {e}")),
            retryable: true,
            ..Complete::of(Outcome::Succeeded)
        },
    };
    match client.complete(&lease.lease_id, &complete).await {
        Ok(run) => progress.finished(&lease, run.status.as_str(), run.error.as_deref().unwrap_or("")),
        Err(e) => tracing::warn!(error = %e, "could not complete the run"),
    }
}

//! A promoted run's one evaluation on the sealed test split: verify the best checkpoint's
//! sha256, fetch the test items through the evaluation lease, predict, report the
//! confusion matrix (the server computes the metrics). Heartbeats run beside it.

use protocol::api::{Complete, EvaluateWork, IngestionIssue, JobLease, Outcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::{LeaseFlags, Progress, WorkerConfig, heartbeats, sha256_of};
use crate::train::{self, TrainError};
use client::Client;
use data::cache::ImageCache;
use data::loader::LoaderItem;

fn failed(error: String, retryable: bool) -> Complete {
    Complete {
        outcome: Outcome::Failed,
        error: Some(error),
        retryable,
        best_epoch: None,
        confusion: None,
        skipped: Vec::new(),
        predictions: Vec::new(),
    }
}

pub(crate) async fn run(client: &Client, config: &WorkerConfig, job: JobLease, work: EvaluateWork, progress: Arc<dyn Progress>) {
    progress.started(&job);
    let flags = LeaseFlags::default();
    // An evaluation is short and is not interrupted by a shutdown: it runs to its end.
    let beat = heartbeats(client, &job, &flags, Arc::new(AtomicBool::new(false)));
    let complete = evaluate(client, config, &job, &work).await;
    beat.abort();
    if flags.lost.load(Ordering::Relaxed) {
        progress.finished(&job, "lost", "the evaluation lease was lost; nothing more is sent for it");
        return;
    }
    match client.complete(&job.lease_id, &complete).await {
        Ok(done) => progress.finished(&job, done.status.as_str(), done.error.as_deref().unwrap_or("")),
        Err(e) => tracing::warn!(error = %e, "could not complete the evaluation"),
    }
}

/// The promoted checkpoint as a local file: downloaded from the artifact store (kept by
/// sha256 under the work dir), or a `file://` path recorded by an older worker.
async fn checkpoint_file(client: &Client, config: &WorkerConfig, work: &EvaluateWork) -> Result<PathBuf, String> {
    if let Some(path) = work.checkpoint.uri.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    let sha = &work.checkpoint.sha256;
    let file = config.work_dir.join("blobs").join(format!("{sha}.bpk"));
    if !file.exists() {
        let bytes = client.download(sha).await.map_err(|e| format!("could not download the best checkpoint {sha}: {e}"))?;
        std::fs::create_dir_all(config.work_dir.join("blobs")).map_err(|e| e.to_string())?;
        std::fs::write(&file, bytes).map_err(|e| {
            tracing::warn!(file = %file.display(), error = %e, "could not keep the checkpoint");
            format!("could not keep the best checkpoint {sha} in worker `{}`'s work dir: {e}", config.name)
        })?;
    }
    Ok(file)
}

async fn evaluate(client: &Client, config: &WorkerConfig, job: &JobLease, work: &EvaluateWork) -> Complete {
    let file = match checkpoint_file(client, config, work).await {
        Ok(file) => file,
        Err(e) => return failed(e, true),
    };
    match sha256_of(&file) {
        Ok((sha, _)) if sha == work.checkpoint.sha256 => {}
        Ok((sha, _)) => {
            return failed(
                format!(
                    "the best checkpoint has sha256 {sha} on worker `{}`, not the promoted {}; it was changed after training",
                    config.name, work.checkpoint.sha256
                ),
                false,
            );
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the best checkpoint");
            return failed(format!("cannot read the best checkpoint {} on worker `{}`: {e}", work.checkpoint.sha256, config.name), true);
        }
    }
    let items = match client.items(&job.lease_id).await {
        Ok(items) => items,
        Err(e) => return failed(format!("could not fetch the test items: {e}"), true),
    };
    let root = PathBuf::from(&items.root);
    let mut loader_items: Vec<LoaderItem> = Vec::with_capacity(items.items.len());
    for item in &items.items {
        let Some(label) = items.classes.iter().position(|c| *c == item.label) else { continue };
        match data::resolve_item(&root, &item.path) {
            Ok(path) => loader_items.push(LoaderItem { path, name: item.path.clone(), sha256: item.sha256.clone(), label }),
            // Nothing outside the dataset root is read; a dataset that points there is bad data.
            Err(refused) => return failed(refused, false),
        }
    }
    let (spec, classes, device) = (job.config.clone(), items.classes.clone(), config.device);
    let size = spec.model.resolved_image_size() as usize;
    let cache = ImageCache::new(&config.work_dir.join("cache"), &items.version, size);
    let outcome = tokio::task::spawn_blocking(move || train::evaluate_on(device, &spec, &classes, loader_items, cache, &file)).await;
    match outcome {
        Ok(Ok(result)) => Complete {
            outcome: Outcome::Succeeded,
            error: None,
            retryable: false,
            best_epoch: None,
            confusion: Some(result.confusion),
            skipped: result.skipped.into_iter().map(|(path, reason)| IngestionIssue { path, reason }).collect(),
            predictions: result.predictions,
        },
        Ok(Err(e)) => failed(e.to_string(), matches!(e, TrainError::Device(_))),
        Err(e) => failed(format!("the evaluator crashed: {e}"), true),
    }
}

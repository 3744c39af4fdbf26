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

/// The promoted checkpoint as a local file, its sha256 checked: downloaded from the artifact
/// store (kept by sha256 under the work dir; through `lease` when the caller is not a worker),
/// or a `file://` path recorded by an older worker. Err: what to say, and whether a retry may
/// help (a changed file will not).
pub(crate) async fn verified_checkpoint(
    client: &Client,
    config: &WorkerConfig,
    checkpoint: &protocol::api::ArtifactInfo,
    lease: Option<&str>,
) -> Result<PathBuf, (String, bool)> {
    let sha = &checkpoint.sha256;
    let file = match checkpoint.uri.strip_prefix("file://") {
        Some(path) => PathBuf::from(path),
        None => {
            let file = config.work_dir.join("blobs").join(format!("{sha}.bpk"));
            if !file.exists() {
                let bytes = match lease {
                    Some(lease) => client.download_with_lease(sha, lease).await,
                    None => client.download(sha).await,
                }
                .map_err(|e| {
                    (format!("could not download the promoted checkpoint {sha}: {e}"), !matches!(e, client::ClientError::Corrupt { .. }))
                })?;
                std::fs::create_dir_all(config.work_dir.join("blobs")).map_err(|e| (e.to_string(), true))?;
                std::fs::write(&file, bytes).map_err(|e| {
                    tracing::warn!(file = %file.display(), error = %e, "could not keep the checkpoint");
                    (format!("could not keep the checkpoint {sha} in worker `{}`'s work dir: {e}", config.name), true)
                })?;
            }
            file
        }
    };
    match sha256_of(&file) {
        Ok((actual, _)) if actual == *sha => Ok(file),
        Ok((actual, _)) => Err((
            format!(
                "the promoted checkpoint has sha256 {actual} on worker `{}`, not the promoted {sha}; it was changed after training \
                 and is refused",
                config.name
            ),
            false,
        )),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the checkpoint");
            Err((format!("cannot read the checkpoint {sha} on worker `{}`: {e}", config.name), true))
        }
    }
}

async fn evaluate(client: &Client, config: &WorkerConfig, job: &JobLease, work: &EvaluateWork) -> Complete {
    let file = match verified_checkpoint(client, config, &work.checkpoint, None).await {
        Ok(file) => file,
        Err((e, retryable)) => return Complete::failed(e, retryable),
    };
    let items = match client.items(&job.lease_id).await {
        Ok(items) => items,
        Err(e) => return Complete::failed(format!("could not fetch the test items: {e}"), true),
    };
    let root = PathBuf::from(&items.root);
    let mut loader_items: Vec<LoaderItem> = Vec::with_capacity(items.items.len());
    for item in &items.items {
        let Some(label) = items.classes.iter().position(|c| *c == item.label) else { continue };
        match data::resolve_item(&root, &item.path) {
            Ok(path) => loader_items.push(LoaderItem { path, name: item.path.clone(), sha256: item.sha256.clone(), label }),
            // Nothing outside the dataset root is read; a dataset that points there is bad data.
            Err(refused) => return Complete::failed(refused, false),
        }
    }
    let (spec, classes, device) = (job.config.clone(), items.classes.clone(), config.device);
    let size = spec.model.resolved_image_size() as usize;
    let cache = ImageCache::new(&config.work_dir.join("cache"), &items.version, size);
    let outcome = tokio::task::spawn_blocking(move || {
        crate::device::on_compute_pool(move || train::evaluate_on(device, &spec, &classes, loader_items, cache, &file))
    })
    .await;
    match outcome {
        Ok(Ok(result)) => Complete {
            confusion: Some(result.confusion),
            skipped: result.skipped.into_iter().map(|(path, reason)| IngestionIssue { path, reason }).collect(),
            predictions: result.predictions,
            ..Complete::of(Outcome::Succeeded)
        },
        Ok(Err(e)) => Complete::failed(e.to_string(), matches!(e, TrainError::Device(_))),
        Err(e) => Complete::failed(format!("the evaluator crashed: {e}"), true),
    }
}

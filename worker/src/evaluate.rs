//! A promoted run's one evaluation on the sealed test split: verify the best checkpoint's
//! sha256, fetch the test items through the evaluation lease, predict, report the
//! confusion matrix (the server computes the metrics). Heartbeats run beside it.

use protocol::api::{EvaluationComplete, EvaluationLease, IngestionIssue, Outcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::data::cache::ImageCache;
use crate::data::loader::LoaderItem;
use crate::lease::{Progress, WorkerConfig, sha256_of};
use crate::train::{self, TrainError};

fn failed(error: String, retryable: bool) -> EvaluationComplete {
    EvaluationComplete { outcome: Outcome::Failed, error: Some(error), retryable, confusion: None, skipped: Vec::new() }
}

pub async fn run(client: &Client, config: &WorkerConfig, job: EvaluationLease, progress: Arc<dyn Progress>) {
    let beat = {
        let (client, lease) = (client.clone(), job.lease_id.clone());
        let every = Duration::from_secs(job.heartbeat_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(ClientError::LeaseLost(reason)) = client.evaluation_heartbeat(&lease).await {
                    tracing::warn!(%reason, "evaluation lease lost");
                    break;
                }
            }
        })
    };
    let complete = evaluate(client, config, &job).await;
    beat.abort();
    match client.complete_evaluation(&job.lease_id, &complete).await {
        Ok(p) => progress.evaluated(&job, p.status.as_str(), p.error.as_deref().unwrap_or("")),
        Err(e) => tracing::warn!(error = %e, "could not complete the evaluation"),
    }
}

/// The promoted checkpoint as a local file: downloaded from the artifact store (kept by
/// sha256 under the work dir), or a `file://` path recorded by an older worker.
async fn checkpoint_file(client: &Client, config: &WorkerConfig, job: &EvaluationLease) -> Result<PathBuf, String> {
    if let Some(path) = job.checkpoint.uri.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    let sha = &job.checkpoint.sha256;
    let file = config.work_dir.join("blobs").join(format!("{sha}.bpk"));
    if !file.exists() {
        let bytes = client.download(sha).await.map_err(|e| format!("could not download the best checkpoint {sha}: {e}"))?;
        std::fs::create_dir_all(config.work_dir.join("blobs")).map_err(|e| e.to_string())?;
        std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(file)
}

async fn evaluate(client: &Client, config: &WorkerConfig, job: &EvaluationLease) -> EvaluationComplete {
    let file = match checkpoint_file(client, config, job).await {
        Ok(file) => file,
        Err(e) => return failed(e, true),
    };
    match sha256_of(&file) {
        Ok((sha, _)) if sha == job.checkpoint.sha256 => {}
        Ok((sha, _)) => {
            return failed(
                format!("the best checkpoint {} has sha256 {sha}, not the promoted {}; it was changed after training", file.display(), job.checkpoint.sha256),
                false,
            );
        }
        Err(e) => {
            return failed(format!("cannot read the best checkpoint {} on worker `{}`: {e}", file.display(), config.name), true);
        }
    }
    let items = match client.evaluation_items(&job.lease_id).await {
        Ok(items) => items,
        Err(e) => return failed(format!("could not fetch the test items: {e}"), true),
    };
    let root = PathBuf::from(&items.root);
    let loader_items: Vec<LoaderItem> = items
        .items
        .iter()
        .filter_map(|item| {
            let label = items.classes.iter().position(|c| *c == item.label)?;
            Some(LoaderItem { path: root.join(&item.path), sha256: item.sha256.clone(), label })
        })
        .collect();
    let (spec, classes, device) = (job.config.clone(), items.classes.clone(), config.device);
    let size = spec.model.resolved_image_size() as usize;
    let cache = ImageCache::new(&config.work_dir.join("cache"), &items.version, size);
    let outcome =
        tokio::task::spawn_blocking(move || train::evaluate_on(device, &spec, &classes, loader_items, cache, &file)).await;
    match outcome {
        Ok(Ok(result)) => EvaluationComplete {
            outcome: Outcome::Succeeded,
            error: None,
            retryable: false,
            confusion: Some(result.confusion),
            skipped: result
                .skipped
                .into_iter()
                .map(|(path, reason)| IngestionIssue { path: path.display().to_string(), reason })
                .collect(),
        },
        Ok(Err(e)) => failed(e.to_string(), matches!(e, TrainError::Device(_))),
        Err(e) => failed(format!("the evaluator crashed: {e}"), true),
    }
}

//! A classification batch: check the promoted checkpoint's sha256, classify every file under
//! the batch's folder (crate::classify), decide accept or review per image with the thresholds
//! the promotion fixed, send each chunk of results under the lease (only the path, hash,
//! prediction, confidence and decision leave this machine), and write the local CSV (all ten
//! probabilities) and the review sheet (thumbnails; pixels stay here). Heartbeats run beside.

use protocol::api::{Complete, JobLease, Outcome};
use protocol::classify::{ClassifiedItem, ClassifiedUpload, ClassifyWork, Decision};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::context::{LeaseFlags, Progress, WorkerConfig, heartbeats};
use crate::classify::{FileResult, classify_files, list_files, thumbnail_data_url};
use client::Client;

/// Where the local results go.
#[derive(Debug, Clone)]
pub struct Output {
    /// One row per file: path, sha256, predicted class, confidence, the class probabilities,
    /// decision, reason.
    pub csv: PathBuf,
    /// The self-contained HTML review sheet (a thumbnail per image to review).
    pub sheet: PathBuf,
}

impl Output {
    /// A worker's default: `WORK_DIR/classify/batch-N.csv` and `batch-N-review.html`.
    pub fn under(work_dir: &Path, batch: i64) -> Output {
        let dir = work_dir.join("classify");
        Output { csv: dir.join(format!("batch-{batch}.csv")), sheet: dir.join(format!("batch-{batch}-review.html")) }
    }
}

/// Runs the batch to its end and completes its job.
pub async fn run(client: &Client, config: &WorkerConfig, job: JobLease, work: ClassifyWork, progress: Arc<dyn Progress>, output: Output) {
    progress.started(&job);
    let flags = LeaseFlags::default();
    let beat = heartbeats(client, &job, &flags, Arc::new(AtomicBool::new(false)));
    let complete = classify(client, config, &job, &work, progress.as_ref(), &output, &flags).await;
    beat.abort();
    if flags.lost.load(Ordering::Relaxed) {
        progress.finished(&job, "lost", "the classification lease was lost; nothing more is sent for it");
        return;
    }
    match client.complete(&job.lease_id, &complete).await {
        Ok(done) => progress.finished(&job, done.status.as_str(), done.error.as_deref().unwrap_or("")),
        Err(e) => tracing::warn!(error = %e, "could not complete the classification"),
    }
}

/// The folder, if this worker may read it: under one of its `--classify-root`s.
fn allowed(config: &WorkerConfig, path: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot read `{}` on worker `{}`: {e}", path.display(), config.name))?;
    let Some(roots) = &config.classify_roots else { return Ok(real) };
    if roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|r| real.starts_with(r)) {
        return Ok(real);
    }
    Err(format!(
        "worker `{}` classifies only under {} (its --classify-root); `{}` is not there",
        config.name,
        roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "),
        path.display()
    ))
}

/// CSV header: path, sha256, predicted, confidence, p_<class>..., decision, reason.
fn header(classes: &[String]) -> Vec<String> {
    let mut h: Vec<String> = ["path", "sha256", "predicted", "confidence"].iter().map(|s| (*s).to_owned()).collect();
    h.extend(classes.iter().map(|c| format!("p_{c}")));
    h.extend(["decision".to_owned(), "reason".to_owned()]);
    h
}

/// A cell a spreadsheet will not run as a formula.
fn cell(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() }
}

/// One image to review, for the sheet.
struct ToReview {
    rel: String,
    predicted: String,
    confidence: f64,
    reason: String,
    thumbnail: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn classify(
    client: &Client,
    config: &WorkerConfig,
    job: &JobLease,
    work: &ClassifyWork,
    progress: &dyn Progress,
    output: &Output,
    flags: &LeaseFlags,
) -> Complete {
    let root = match allowed(config, Path::new(&work.path)) {
        Ok(root) => root,
        Err(e) => return Complete::failed(e, false),
    };
    let model_file = match super::evaluate::verified_checkpoint(client, config, &work.checkpoint, Some(&job.lease_id)).await {
        Ok(file) => file,
        Err((e, retryable)) => return Complete::failed(e, retryable),
    };
    let listed = tokio::task::spawn_blocking({
        let root = root.clone();
        move || list_files(&root)
    })
    .await;
    let files = match listed {
        Ok(Ok(files)) => files,
        Ok(Err(e)) => return Complete::failed(e, false),
        Err(e) => return Complete::failed(format!("listing the folder crashed: {e}"), true),
    };
    let total = files.len() as u64;
    if let Some(dir) = output.csv.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Complete::failed(format!("cannot create {}: {e}", dir.display()), false);
    }
    let mut csv = match csv::Writer::from_path(&output.csv) {
        Ok(w) => w,
        Err(e) => return Complete::failed(format!("cannot write {}: {e}", output.csv.display()), false),
    };
    if let Err(e) = csv.write_record(header(&work.classes)) {
        return Complete::failed(format!("cannot write {}: {e}", output.csv.display()), false);
    }

    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<FileResult>>(2);
    let stop = flags.stop.clone();
    let (spec, classes, device, batch) = (job.config.clone(), work.classes.clone(), config.device, work.batch as usize);
    let size = spec.model.resolved_image_size() as usize;
    let runner = tokio::task::spawn_blocking(move || {
        crate::device::on_compute_pool(move || {
            classify_files(device, &spec, &classes, &model_file, files, batch, &mut |results| {
                !stop.load(Ordering::Relaxed) && tx.blocking_send(results).is_ok()
            })
        })
    });
    let mut done = 0u64;
    let mut review: Vec<ToReview> = Vec::new();
    let mut failure: Option<Complete> = None;
    while let Some(results) = rx.recv().await {
        let mut items = Vec::with_capacity(results.len());
        for r in results {
            let item = match &r.outcome {
                Ok(p) => {
                    let confidence = f64::from(p.probabilities[p.class]);
                    let (decision, reason) =
                        protocol::classify::decide(&work.auto_accept, &work.classes, p.class, confidence, p.view.as_deref());
                    if decision == Decision::Review {
                        review.push(ToReview {
                            rel: r.rel.clone(),
                            predicted: work.classes[p.class].clone(),
                            confidence,
                            reason: reason.clone(),
                            thumbnail: thumbnail_data_url(&p.pixels, size),
                        });
                    }
                    ClassifiedItem {
                        path: r.rel.clone(),
                        sha256: r.sha256.clone(),
                        predicted: Some(p.class as u32),
                        confidence: Some(confidence),
                        decision,
                        reason,
                    }
                }
                Err(why) => ClassifiedItem {
                    path: r.rel.clone(),
                    sha256: r.sha256.clone(),
                    predicted: None,
                    confidence: None,
                    decision: Decision::Skipped,
                    reason: why.clone(),
                },
            };
            let mut row = vec![cell(&item.path), item.sha256.clone().unwrap_or_default()];
            match &r.outcome {
                Ok(p) => {
                    row.push(work.classes[p.class].clone());
                    row.push(format!("{:.6}", p.probabilities[p.class]));
                    row.extend(p.probabilities.iter().map(|v| format!("{v:.6}")));
                }
                Err(_) => row.extend(std::iter::repeat_n(String::new(), 2 + work.classes.len())),
            }
            row.push(item.decision.as_str().to_owned());
            row.push(cell(&item.reason));
            if let Err(e) = csv.write_record(&row) {
                failure = Some(Complete::failed(format!("cannot write {}: {e}", output.csv.display()), false));
            }
            items.push(item);
        }
        done += items.len() as u64;
        if failure.is_none()
            && let Err(e) = client.classified(work.batch_id, &ClassifiedUpload { lease_id: job.lease_id.clone(), items }).await
        {
            if e.is_lease_refusal() {
                flags.lost.store(true, Ordering::Relaxed);
            }
            failure = Some(Complete::failed(format!("could not send the classified images: {e}"), true));
        }
        progress.classified(job, done, total);
        if failure.is_some() || flags.stop.load(Ordering::Relaxed) {
            flags.stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    drop(rx);
    let ran = runner.await;
    if let Some(f) = failure {
        return f;
    }
    match ran {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Complete::failed(e.to_string(), matches!(e, crate::train::TrainError::Device(_))),
        Err(e) => return Complete::failed(format!("the classifier crashed: {e}"), true),
    }
    if let Err(e) = csv.flush() {
        return Complete::failed(format!("cannot write {}: {e}", output.csv.display()), false);
    }
    let seconds = started.elapsed().as_secs_f64();
    let images_per_second = (seconds > 0.0).then(|| total as f64 / seconds);
    if let Err(e) = std::fs::write(&output.sheet, sheet(work, &review)) {
        return Complete::failed(format!("cannot write the review sheet {}: {e}", output.sheet.display()), false);
    }
    Complete { images_per_second, ..Complete::of(Outcome::Succeeded) }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The local review sheet: one self-contained HTML file, a thumbnail per image to review.
fn sheet(work: &ClassifyWork, review: &[ToReview]) -> String {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cobb classification batch {id}: images to review</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}.grid{{display:flex;flex-wrap:wrap;gap:12px}}\
         figure{{margin:0;width:180px;font-size:12px}}img{{width:160px;height:160px;image-rendering:pixelated;background:#000}}\
         code{{word-break:break-all}}</style></head><body>\
         <h1>Batch {id}: {n} image(s) to review</h1><p>Model: promotion {p}, checkpoint <code>{sha}</code>. Thumbnails are the \
         model's input (after windowing and resizing); they stay on this machine. Label them with \
         <code>cobb review {id} --set PATH=CLASS</code> or on the batch's dashboard page.</p><div class=\"grid\">",
        id = work.batch_id,
        n = review.len(),
        p = work.promotion_id,
        sha = escape(&work.checkpoint.sha256),
    );
    for r in review {
        let img = r.thumbnail.as_deref().map(|src| format!("<img src=\"{src}\" alt=\"\">")).unwrap_or_default();
        html.push_str(&format!(
            "<figure>{img}<figcaption><code>{}</code><br>{} ({:.3})<br>{}</figcaption></figure>",
            escape(&r.rel),
            escape(&r.predicted),
            r.confidence,
            escape(&r.reason)
        ));
    }
    html.push_str("</div></body></html>\n");
    html
}

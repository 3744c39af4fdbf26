//! `cobb classify` (the promoted model sorts a folder of new images) and `cobb review` (list,
//! label and export a batch's images).

use anyhow::Context;
use clap::Args;
use protocol::api::JobLease;
use protocol::classify::{BatchDetail, BatchItem, ClassifyRequest, ReviewLabel, ReviewRequest, ReviewResult};
use protocol::{Decision, JobStatus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use worker::device::{self, DeviceChoice};
use worker::jobs::{Progress, WorkerConfig};

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The folder of images to classify (DICOM, PNG, JPEG; every file under it is listed).
    pub path: PathBuf,
    /// The experiment whose promoted model classifies.
    #[arg(long, conflicts_with = "promotion", required_unless_present = "promotion")]
    pub experiment: Option<String>,
    /// A promotion by id (it must be its experiment's current one).
    #[arg(long)]
    pub promotion: Option<i64>,
    /// The CSV to write (default: classify-<batch>.csv here); the review sheet is written next
    /// to it (<name>-review.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward pass (default: the run's training batch size).
    #[arg(long)]
    pub batch: Option<u32>,
    /// Queue the batch for a worker whose machine sees PATH (started with --classify-root)
    /// instead of classifying in this process; PATH is then a path on that machine.
    #[arg(long)]
    pub on_worker: bool,
}

/// A progress bar on a terminal (files done), nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn classified(&self, _job: &JobLease, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
            bar.set_position(done);
        }
    }
    fn finished(&self, _job: &JobLease, _status: &str, _detail: &str) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn bar() -> Bar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return Bar(None);
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template("classifying [{bar:30}] {pos}/{len} files {per_sec} eta {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    Bar(Some(bar))
}

/// The CSV and the review sheet of a batch, from `--out` or the default name.
fn outputs(out: Option<&Path>, batch: i64) -> worker::jobs::classify::Output {
    let csv = out.map_or_else(|| PathBuf::from(format!("classify-{batch}.csv")), Path::to_path_buf);
    let stem = csv.file_stem().map_or_else(|| format!("classify-{batch}"), |s| s.to_string_lossy().into_owned());
    let sheet = csv.with_file_name(format!("{stem}-review.html"));
    worker::jobs::classify::Output { csv, sheet }
}

pub async fn classify(args: &ClassifyArgs, client: &Client, data_dir: &Path, json: bool) -> Result<(), Failure> {
    let choice: DeviceChoice = args.device.parse().map_err(Failure::input)?;
    let path = if args.on_worker {
        args.path.clone()
    } else {
        if !args.path.is_dir() {
            return Err(Failure::input(format!("{} is not a folder; give the folder of images to classify", args.path.display())));
        }
        device::probe(choice).map_err(|e| Failure::Runtime(e.into()))?;
        std::fs::canonicalize(&args.path).with_context(|| format!("while reading {}", args.path.display()))?
    };
    let request = ClassifyRequest {
        experiment: args.experiment.clone(),
        promotion: args.promotion,
        path: path.to_string_lossy().into_owned(),
        here: !args.on_worker,
        batch: args.batch,
    };
    let created: BatchDetail = client.post("/classifications", &request).await?;
    let batch = created.batch.id;
    if args.on_worker {
        if json {
            output::json(&created);
        } else {
            println!(
                "batch {batch} queued for a worker started with --classify-root over {} (job {}); follow it with `cobb review {batch}` \
                 or on the experiment's page",
                path.display(),
                created.batch.job_id
            );
        }
        return Ok(());
    }
    let (server, token) = client.worker_login();
    let token = token.ok_or_else(|| Failure::input("classifying needs a token (--token or COBB_TOKEN)"))?;
    let name = format!("classify-{}", std::process::id());
    let worker_client = client::Client::patient(&server, Some(token.clone()), Duration::from_secs(300));
    let config = WorkerConfig {
        server,
        token,
        name: name.clone(),
        device: choice,
        work_dir: data_dir.join("worker"),
        idle_poll: Duration::from_secs(1),
        exit_when_idle: true,
        idle_exit_after: Duration::ZERO,
        classify_roots: None,
    };
    let lease = worker_client
        .lease_job(&name, &config.device_name(), created.batch.job_id)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("job {} of batch {batch} could not be leased", created.batch.job_id)))?;
    let protocol::api::Work::Classify(work) = lease.work.clone() else {
        return Err(Failure::Runtime(anyhow::anyhow!("job {} is not a classification", created.batch.job_id)));
    };
    let out = outputs(args.out.as_deref(), batch);
    if !json {
        eprintln!(
            "batch {batch}: classifying {} with promotion {} (run {}, checkpoint {})",
            path.display(),
            work.promotion_id,
            lease.run_id,
            output::short(&work.checkpoint.sha256)
        );
    }
    worker::jobs::classify::run(&worker_client, &config, lease, work, Arc::new(bar()), out.clone()).await;
    let detail: BatchDetail = client.get(&format!("/classifications/{batch}")).await?;
    if json {
        output::json(&detail);
    } else {
        print_summary(&detail);
    }
    if detail.batch.status != JobStatus::Succeeded {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "classification batch {batch} {}: {}",
            detail.batch.status,
            detail.batch.error.as_deref().unwrap_or("no reason given")
        )));
    }
    if !json {
        println!("wrote {} and the review sheet {}", out.csv.display(), out.sheet.display());
        if detail.batch.review > 0 {
            println!("next: cobb review {batch}   # {} image(s) to review", detail.batch.review);
        }
    }
    Ok(())
}

/// The batch's per-class summary (predicted class x decision) and totals.
pub fn print_summary(d: &BatchDetail) {
    let b = &d.batch;
    println!(
        "\nbatch {} ({}): {} file(s): {} accepted, {} to review, {} skipped{}",
        b.id,
        b.status,
        b.images,
        b.accepted,
        b.review,
        b.skipped,
        b.images_per_second.map(|v| format!("; {v:.1} images/s")).unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = d
        .counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let threshold = d.auto_accept.as_ref().and_then(|a| a.threshold_of(i)).map_or_else(|| "none".to_owned(), output::number);
            vec![c.class.clone(), threshold, c.accepted.to_string(), c.review.to_string(), c.reviewed.to_string()]
        })
        .collect();
    output::table(&["predicted class", "threshold", "accepted", "review", "reviewed"], &rows);
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    pub batch: i64,
    /// Label an image (reviewer role): PATH=CLASS, PATH as listed; a confirmation is the
    /// predicted class itself. Repeatable.
    #[arg(long = "set", value_name = "PATH=CLASS")]
    pub set: Vec<String>,
    /// A CSV of labels with the columns path,label.
    #[arg(long, value_name = "CSV")]
    pub corrections: Option<PathBuf>,
    /// Write the manifest of the batch's accepted and reviewed images (path,label,...) for
    /// `cobb dataset register NAME BATCH_FOLDER --manifest FILE`: the next dataset version.
    #[arg(long, value_name = "CSV")]
    pub export: Option<PathBuf>,
    /// List every image, not only those to review.
    #[arg(long)]
    pub all: bool,
}

fn parse_set(s: &str) -> Result<ReviewLabel, Failure> {
    let (path, label) = s.rsplit_once('=').ok_or_else(|| Failure::input(format!("--set {s}: write PATH=CLASS")))?;
    Ok(ReviewLabel { path: path.trim().to_owned(), label: label.trim().to_owned() })
}

fn read_corrections(file: &Path) -> Result<Vec<ReviewLabel>, Failure> {
    let mut reader = csv::Reader::from_path(file).map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let headers = reader.headers().map_err(|e| Failure::input(format!("{}: {e}", file.display())))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let (Some(p), Some(l)) = (col("path"), col("label")) else {
        return Err(Failure::input(format!("{}: the header must name `path` and `label`", file.display())));
    };
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Failure::input(format!("{}: line {}: {e}", file.display(), i + 2)))?;
        let (Some(path), Some(label)) = (record.get(p), record.get(l)) else {
            return Err(Failure::input(format!("{}: line {}: a path and a label are needed", file.display(), i + 2)));
        };
        out.push(ReviewLabel { path: path.trim().to_owned(), label: label.trim().to_owned() });
    }
    Ok(out)
}

pub async fn review(args: &ReviewArgs, client: &Client, json: bool) -> Result<(), Failure> {
    let batch = args.batch;
    let mut labels: Vec<ReviewLabel> = args.set.iter().map(|s| parse_set(s)).collect::<Result<_, _>>()?;
    if let Some(file) = &args.corrections {
        labels.extend(read_corrections(file)?);
    }
    if !labels.is_empty() {
        let result: ReviewResult = client.post(&format!("/classifications/{batch}/review"), &ReviewRequest { labels }).await?;
        if json {
            output::json(&result);
        } else {
            println!(
                "{} label(s) stored ({} correction(s)); {} image(s) of batch {batch} still to review",
                result.reviewed, result.corrected, result.left_to_review
            );
        }
        return Ok(());
    }
    if let Some(file) = &args.export {
        let items: Vec<BatchItem> = client.get(&format!("/classifications/{batch}/items")).await?;
        let mut writer = csv::Writer::from_path(file).with_context(|| format!("while writing {}", file.display()))?;
        writer.write_record(["path", "label", "sha256", "source"]).context("while writing the manifest")?;
        let (mut written, mut pending) = (0u64, 0u64);
        for item in &items {
            match item.final_label() {
                Some(label) => {
                    let source = if item.reviewed_label.is_some() { "reviewed" } else { "accepted" };
                    writer
                        .write_record([item.path.as_str(), label, item.sha256.as_deref().unwrap_or(""), source])
                        .context("while writing the manifest")?;
                    written += 1;
                }
                None if item.decision == Decision::Review => pending += 1,
                None => {}
            }
        }
        writer.flush().context("while writing the manifest")?;
        if json {
            output::json(&serde_json::json!({"file": file, "images": written, "not_reviewed": pending}));
        } else {
            let detail: BatchDetail = client.get(&format!("/classifications/{batch}")).await?;
            println!("wrote {} with {written} image(s) (accepted and reviewed)", file.display());
            if pending > 0 {
                println!("left out: {pending} image(s) still to review (`cobb review {batch}`)");
            }
            println!("next version: cobb dataset register NAME {} --manifest {}", shell_word(&detail.batch.path), file.display());
        }
        return Ok(());
    }
    let decision = if args.all { "" } else { "?decision=review" };
    let items: Vec<BatchItem> = client.get(&format!("/classifications/{batch}/items{decision}")).await?;
    if json {
        output::json(&items);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.path.clone(),
                i.predicted.clone().unwrap_or_else(|| "-".into()),
                i.confidence.map_or_else(|| "-".into(), output::number),
                i.decision.as_str().to_owned(),
                i.reviewed_label
                    .clone()
                    .map(|l| format!("{l} ({})", i.reviewed_by.clone().unwrap_or_default()))
                    .unwrap_or_else(|| "-".into()),
                i.reason.clone(),
            ]
        })
        .collect();
    output::table(&["path", "predicted", "confidence", "decision", "reviewed", "why"], &rows);
    if !args.all {
        println!("\nlabel with: cobb review {batch} --set PATH=CLASS (or --corrections FILE.csv with path,label)");
    }
    Ok(())
}

/// A path as one shell word (quoted when it needs it).
pub fn shell_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

//! `cobb runs`, `cobb show RUN` and `cobb cancel RUN|sSWEEP`.

use clap::Args;
use protocol::api::{CancelResult, RunDetail, RunInfo, RunList};
use protocol::sweep;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[arg(long)]
    pub experiment: Option<String>,
    /// Sweep id (as printed by submit, with or without the `s`).
    #[arg(long)]
    pub sweep: Option<String>,
    /// queued, running, succeeded, failed, cancelled or pruned.
    #[arg(long)]
    pub status: Option<String>,
    /// `created` (default, newest first) or a metric key such as val_macro_f1; `-KEY`
    /// sorts descending.
    #[arg(long, allow_hyphen_values = true)]
    pub sort: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
}

pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn status_text(run: &RunInfo) -> String {
    if run.cancel_requested && !run.status.is_terminal() { "cancelling".to_owned() } else { run.status.to_string() }
}

pub async fn list(args: &RunsArgs, client: &Client, json: bool) -> Result<(), Failure> {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(e) = &args.experiment {
        query.push(format!("experiment={}", encode(e)));
    }
    if let Some(s) = &args.sweep {
        let id = s.trim_start_matches('s');
        id.parse::<i64>().map_err(|_| Failure::input(format!("--sweep `{s}` is not a sweep id (e.g. s3 or 3)")))?;
        query.push(format!("sweep={id}"));
    }
    if let Some(s) = &args.status {
        query.push(format!("status={}", encode(s)));
    }
    if let Some(s) = &args.sort {
        query.push(format!("sort={}", encode(s)));
    }
    let list: RunList = client.get(&format!("/runs?{}", query.join("&"))).await?;
    if json {
        output::json(&list);
        return Ok(());
    }
    let metric = args.sort.as_deref().map(|s| s.trim_start_matches('-')).filter(|s| *s != "created");
    let mut header = vec!["ID", "NAME", "STATUS", "ATTEMPT", "WORKER", "CREATED", "PARAMS"];
    if let Some(m) = metric {
        header.insert(3, m);
    }
    let rows: Vec<Vec<String>> = list
        .runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.id.to_string(),
                r.name.clone(),
                status_text(r),
                format!("{}/{}", r.attempt, r.max_attempts),
                r.worker.clone().unwrap_or_else(|| "-".to_owned()),
                output::time(r.created_at),
                if r.params.is_empty() { "-".to_owned() } else { sweep::describe(&r.params) },
            ];
            if metric.is_some() {
                row.insert(3, r.sort_value.map(output::number).unwrap_or_else(|| "-".to_owned()));
            }
            row
        })
        .collect();
    output::table(&header, &rows);
    if list.total > list.runs.len() as u64 {
        eprintln!("({} of {} runs; raise --limit to see more)", list.runs.len(), list.total);
    }
    Ok(())
}

pub async fn show(id: i64, client: &Client, json: bool) -> Result<(), Failure> {
    let detail: RunDetail = client.get(&format!("/runs/{id}")).await?;
    if json {
        output::json(&detail);
        return Ok(());
    }
    let r = &detail.run;
    println!("run {} ({})  experiment {}  sweep s{}", r.id, r.name, r.experiment, r.sweep_id);
    println!("status     {}  attempt {}/{}", status_text(r), r.attempt, r.max_attempts);
    println!("dataset    {}@{}", detail.dataset, output::short(&detail.dataset_version));
    println!(
        "model      {} at {} px, lr {}, batch {}, {} epochs",
        detail.config.model.arch,
        detail.config.model.image_size.unwrap_or_default(),
        output::number(detail.config.train.optimizer.lr),
        detail.config.train.batch_size,
        detail.config.train.epochs
    );
    if !r.params.is_empty() {
        println!("params     {}", sweep::describe(&r.params));
    }
    println!("created    {}", output::time(r.created_at));
    if let Some(t) = r.started_at {
        println!("started    {}", output::time(t));
    }
    if let Some(t) = r.finished_at {
        println!("finished   {}", output::time(t));
    }
    if let Some(e) = &r.error {
        println!("error      {e}");
    }
    if !r.constraints_missed.is_empty() {
        println!("misses     {} (ranked below every run that meets the constraints)", r.constraints_missed.join("; "));
    }
    let experiment: protocol::api::ExperimentDetail = client.get(&format!("/experiments/{}", r.experiment)).await?;
    println!(
        "budget     {} configuration(s) of `{}` scored against its validation split{}",
        experiment.summary.val_configs,
        r.experiment,
        experiment.summary.max_val_configs.map(|m| format!(" of {m} allowed")).unwrap_or_default()
    );
    if !detail.latest.is_empty() {
        println!("\nlatest metrics");
        let rows: Vec<Vec<String>> =
            detail.latest.iter().map(|(k, v)| vec![k.clone(), v.step.to_string(), output::number(v.value)]).collect();
        output::table(&["KEY", "EPOCH", "VALUE"], &rows);
    }
    if let Some(results) = &detail.class_results {
        println!("\nper-class validation results, epoch {}", results.epoch);
        let rows: Vec<Vec<String>> = results
            .per_class
            .iter()
            .map(|c| {
                vec![
                    c.class.clone(),
                    format!("{:.3}", c.precision),
                    format!("{:.3}", c.recall),
                    format!("{:.3}", c.f1),
                    c.support.to_string(),
                ]
            })
            .collect();
        output::table(&["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"], &rows);
    }
    for split in ["val", "test"] {
        if let Some(evidence) = client.get_optional::<protocol::api::RunEvidence>(&format!("/runs/{id}/evidence?split={split}")).await? {
            print_evidence(&evidence);
        }
    }
    if !detail.leases.is_empty() {
        println!("\nattempts");
        let rows: Vec<Vec<String>> = detail
            .leases
            .iter()
            .map(|l| {
                vec![
                    l.attempt.to_string(),
                    l.worker.clone(),
                    output::time(l.created_at),
                    l.end_reason.clone().unwrap_or_else(|| "live".to_owned()),
                ]
            })
            .collect();
        output::table(&["ATTEMPT", "WORKER", "LEASED", "ENDED"], &rows);
    }
    if !detail.artifacts.is_empty() {
        println!("\nartifacts");
        let rows: Vec<Vec<String>> = detail
            .artifacts
            .iter()
            .map(|a| vec![a.kind.clone(), output::short(&a.sha256).to_owned(), a.bytes.to_string(), a.uri.clone()])
            .collect();
        output::table(&["KIND", "SHA256", "BYTES", "URI"], &rows);
    }
    Ok(())
}

pub async fn cancel(target: &str, client: &Client, json: bool) -> Result<(), Failure> {
    let (path, what) = if let Some(id) = target.strip_prefix('s').or_else(|| target.strip_prefix("sweep:")) {
        let id: i64 = id.parse().map_err(|_| Failure::input(format!("`{target}` is not a sweep id such as s3")))?;
        (format!("/sweeps/{id}/cancel"), format!("sweep s{id}"))
    } else {
        let id: i64 = target.parse().map_err(|_| Failure::input(format!("`{target}` is neither a run id (12) nor a sweep id (s3)")))?;
        (format!("/runs/{id}/cancel"), format!("run {id}"))
    };
    let result: CancelResult = client.post(&path, &serde_json::json!({})).await?;
    if json {
        output::json(&result);
    } else {
        println!("{what}: {} queued run(s) cancelled, {} running run(s) asked to stop", result.cancelled, result.stopping);
    }
    Ok(())
}

/// A run's metrics on one split with their 95% intervals (patient-level bootstrap).
pub(crate) fn print_evidence(e: &protocol::api::RunEvidence) {
    let i = &e.intervals;
    println!(
        "\n{} with 95% intervals (patient-level bootstrap: {} images, {} patients, {} replicates{})",
        if e.split == protocol::Split::Test { "test" } else { "validation" },
        i.images,
        i.patients,
        i.replicates,
        e.epoch.map(|ep| format!(", epoch {ep}")).unwrap_or_default()
    );
    println!("accuracy   {}", i.accuracy.display());
    println!("macro-F1   {}", i.macro_f1.display());
    let rows: Vec<Vec<String>> = i
        .per_class
        .iter()
        .map(|c| {
            vec![
                c.class.clone(),
                c.precision.display(),
                c.recall.display(),
                c.f1.display(),
                c.support.to_string(),
                if c.wide { "wide: too few images to read closely".to_owned() } else { String::new() },
            ]
        })
        .collect();
    output::table(&["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT", ""], &rows);
    let c = &e.calibration;
    print!("calibration: ECE {:.3}, class-wise ECE {:.3}, Brier {:.3}, NLL {:.3}", c.ece, c.classwise_ece, c.brier, c.nll);
    match (e.temperature, &e.calibrated) {
        (Some(t), Some(after)) => println!(
            "; after temperature scaling (T = {t:.3}, fitted on validation): ECE {:.3}, Brier {:.3}, NLL {:.3}",
            after.ece, after.brier, after.nll
        ),
        _ => println!(),
    }
}

use clap::Args;
use protocol::api::{AuditLog, CancelResult, ExperimentSummary, RunDetail, RunInfo, RunList, WorkerInfo};
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
    /// queued, running, succeeded, failed or cancelled.
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
            .map(|c| vec![c.class.clone(), format!("{:.3}", c.precision), format!("{:.3}", c.recall), format!("{:.3}", c.f1), c.support.to_string()])
            .collect();
        output::table(&["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"], &rows);
    }
    if !detail.leases.is_empty() {
        println!("\nattempts");
        let rows: Vec<Vec<String>> = detail
            .leases
            .iter()
            .map(|l| vec![l.attempt.to_string(), l.worker.clone(), output::time(l.created_at), l.end_reason.clone().unwrap_or_else(|| "live".to_owned())])
            .collect();
        output::table(&["ATTEMPT", "WORKER", "LEASED", "ENDED"], &rows);
    }
    if !detail.artifacts.is_empty() {
        println!("\nartifacts");
        let rows: Vec<Vec<String>> =
            detail.artifacts.iter().map(|a| vec![a.kind.clone(), output::short(&a.sha256).to_owned(), a.bytes.to_string(), a.uri.clone()]).collect();
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
        println!(
            "{what}: {} queued run(s) cancelled, {} running run(s) asked to stop",
            result.cancelled, result.stopping
        );
    }
    Ok(())
}

pub async fn experiments(client: &Client, json: bool) -> Result<(), Failure> {
    let list: Vec<ExperimentSummary> = client.get("/experiments").await?;
    if json {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let counts: Vec<String> = e.runs.0.iter().map(|(s, n)| format!("{n} {s}")).collect();
            vec![e.name.clone(), format!("{}@{}", e.dataset, output::short(&e.dataset_version)), e.sweeps.to_string(), counts.join(", ")]
        })
        .collect();
    output::table(&["EXPERIMENT", "DATASET", "SWEEPS", "RUNS"], &rows);
    Ok(())
}

pub async fn workers(client: &Client, json: bool) -> Result<(), Failure> {
    let list: Vec<WorkerInfo> = client.get("/workers").await?;
    if json {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.device.clone().unwrap_or_else(|| "-".to_owned()),
                output::time(w.last_seen_at),
                w.current_run.map_or_else(|| "idle".to_owned(), |r| format!("run {r}")),
            ]
        })
        .collect();
    output::table(&["WORKER", "DEVICE", "LAST SEEN", "DOING"], &rows);
    Ok(())
}

pub async fn audit(client: &Client, experiment: Option<&str>, verify: bool, json: bool) -> Result<(), Failure> {
    let path = match experiment {
        Some(e) => format!("/audit?experiment={}", encode(e)),
        None => "/audit".to_owned(),
    };
    let log: AuditLog = client.get(&path).await?;
    if json {
        output::json(&log);
    } else {
        let rows: Vec<Vec<String>> = log
            .events
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    output::time(e.at),
                    e.actor.clone(),
                    e.action.clone(),
                    e.experiment.clone().unwrap_or_else(|| "-".to_owned()),
                    e.run_id.map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    output::short(&e.hash).to_owned(),
                ]
            })
            .collect();
        output::table(&["#", "TIME", "ACTOR", "ACTION", "EXPERIMENT", "RUN", "HASH"], &rows);
    }
    if verify {
        if log.chain.ok {
            eprintln!("audit chain verified: {} events, no broken link", log.chain.events);
        } else {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "audit chain broken at event {}: {}",
                log.chain.first_broken.unwrap_or_default(),
                log.chain.reason.clone().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Per-class precision and recall of several runs side by side (validation, each run's best
/// epoch), the best value per class marked with `*`, and roll-ups by view and phase.
pub fn print_class_comparison(details: &[RunDetail]) {
    use protocol::metrics::ConfusionMatrix;
    // Per run: class names and (precision, recall) per class, when the run has results.
    type ClassTable = Option<(Vec<String>, Vec<(f64, f64)>)>;
    let tables: Vec<ClassTable> = details
        .iter()
        .map(|d| {
            d.class_results.as_ref().map(|c| {
                (c.per_class.iter().map(|m| m.class.clone()).collect(), c.per_class.iter().map(|m| (m.precision, m.recall)).collect())
            })
        })
        .collect();
    let Some((classes, _)) = tables.iter().flatten().next().cloned() else {
        println!("(no per-class results yet)");
        return;
    };
    let print = |title: &str, rows: &[String], values: &[Vec<Option<(f64, f64)>>]| {
        println!("\n{title}");
        let mut header = vec!["CLASS".to_owned()];
        header.extend(details.iter().map(|d| format!("run {} P / R", d.run.id)));
        let body: Vec<Vec<String>> = rows
            .iter()
            .enumerate()
            .map(|(i, class)| {
                let best_p = values.iter().filter_map(|v| v[i].map(|x| x.0)).fold(f64::MIN, f64::max);
                let best_r = values.iter().filter_map(|v| v[i].map(|x| x.1)).fold(f64::MIN, f64::max);
                let mut row = vec![class.clone()];
                for v in values {
                    row.push(match v[i] {
                        Some((p, r)) => format!(
                            "{p:.2}{} / {r:.2}{}",
                            if p == best_p && values.len() > 1 { "*" } else { " " },
                            if r == best_r && values.len() > 1 { "*" } else { " " }
                        ),
                        None => "-".to_owned(),
                    });
                }
                row
            })
            .collect();
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        output::table(&refs, &body);
    };
    let per_class: Vec<Vec<Option<(f64, f64)>>> = tables
        .iter()
        .map(|t| classes.iter().map(|c| t.as_ref().and_then(|(names, v)| names.iter().position(|n| n == c).map(|i| v[i]))).collect())
        .collect();
    print("per-class precision / recall (validation, best epoch; * = best of these runs)", &classes, &per_class);
    for (title, group) in [("by view", protocol::classes::view_of as fn(&str) -> Option<&'static str>), ("by phase", protocol::classes::phase_of)] {
        let rolled: Vec<Option<ConfusionMatrix>> =
            details.iter().map(|d| d.class_results.as_ref().map(|c| c.confusion.roll_up(group))).collect();
        let Some(names) = rolled.iter().flatten().next().map(|m| m.classes.clone()) else { continue };
        let values: Vec<Vec<Option<(f64, f64)>>> = rolled
            .iter()
            .map(|m| {
                let report = m.as_ref().map(ConfusionMatrix::report);
                names
                    .iter()
                    .map(|n| report.as_ref().and_then(|r| r.per_class.iter().find(|x| &x.class == n).map(|x| (x.precision, x.recall))))
                    .collect()
            })
            .collect();
        print(&format!("roll-up {title}"), &names, &values);
    }
}

pub async fn compare(ids: &[i64], client: &Client, json: bool) -> Result<(), Failure> {
    if ids.len() < 2 || ids.len() > 20 {
        return Err(Failure::input("compare takes 2 to 20 run ids"));
    }
    let mut details = Vec::with_capacity(ids.len());
    for id in ids {
        details.push(client.get::<RunDetail>(&format!("/runs/{id}")).await?);
    }
    if json {
        output::json(&details);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = details
        .iter()
        .map(|d| {
            let metric = |k: &str| d.latest.get(k).map_or("-".to_owned(), |m| format!("{:.3}", m.value));
            vec![
                d.run.id.to_string(),
                d.run.status.to_string(),
                d.config.model.arch.to_string(),
                metric("val_accuracy"),
                metric("val_macro_f1"),
                if d.run.params.is_empty() { "-".to_owned() } else { sweep::describe(&d.run.params) },
            ]
        })
        .collect();
    output::table(&["RUN", "STATUS", "ARCH", "VAL ACC (last)", "VAL MACRO-F1 (last)", "PARAMS"], &rows);
    print_class_comparison(&details);
    Ok(())
}

use clap::Args;
use protocol::api::{AuditLog, CancelResult, ExperimentSummary, RunDetail, RunInfo, RunList, WorkerInfo};
use protocol::compare::{Cell, Comparison, Row};
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

/// The comparison's tables: per-class precision and recall of each run (validation, best
/// epoch), the best value per row marked with `*`, the difference from the baseline run in
/// brackets, and the roll-ups by view and phase -- the numbers of the compare page.
pub fn print_comparison(c: &Comparison) {
    if c.classes.is_empty() {
        println!("(no per-class results yet)");
        return;
    }
    let mark = |cell: &Cell| match cell.value {
        Some(v) => {
            let delta = match cell.delta {
                Some(d) if d != 0.0 => format!(" ({d:+.2})"),
                _ => String::new(),
            };
            format!("{v:.2}{}{delta}", if cell.best { "*" } else { "" })
        }
        None => "-".to_owned(),
    };
    let print = |title: &str, rows: &[Row], with_train: bool| {
        println!("\n{title}");
        let mut header = vec!["CLASS".to_owned()];
        if with_train {
            header.push("TRAIN".to_owned());
        }
        header.extend(c.runs.iter().map(|r| format!("run {} P / R", r.id)));
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                let few = if row.few_images { " !" } else { "" };
                let mut out = vec![format!("{}{few}", row.class)];
                if with_train {
                    out.push(row.train_images.map_or("-".to_owned(), |n| n.to_string()));
                }
                out.extend(row.precision.iter().zip(&row.recall).map(|(p, r)| format!("{} / {}", mark(p), mark(r))));
                out
            })
            .collect();
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        output::table(&refs, &body);
    };
    print(
        &format!(
            "per-class precision / recall (validation, best epoch; * = best of these runs; (+/-) against run {}; ! = fewer than {} training images)",
            c.baseline, c.few_images_threshold
        ),
        &c.classes,
        true,
    );
    print("roll-up by view", &c.by_view, false);
    print("roll-up by phase", &c.by_phase, false);
}

/// `GET /compare` for `ids` (2-20 runs).
pub async fn comparison(client: &Client, ids: &[i64], baseline: Option<i64>) -> Result<Comparison, Failure> {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let mut path = format!("/compare?runs={}", list.join(","));
    if let Some(b) = baseline {
        path.push_str(&format!("&baseline={b}"));
    }
    client.get(&path).await
}

pub async fn compare(ids: &[i64], client: &Client, json: bool) -> Result<(), Failure> {
    if ids.len() < 2 || ids.len() > protocol::compare::MAX_RUNS {
        return Err(Failure::input(format!("compare takes 2 to {} run ids", protocol::compare::MAX_RUNS)));
    }
    let c = comparison(client, ids, None).await?;
    if json {
        output::json(&c);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = c
        .runs
        .iter()
        .map(|r| {
            let value = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            vec![
                r.id.to_string(),
                r.status.to_string(),
                r.best_epoch.map_or("-".to_owned(), |e| e.to_string()),
                value(r.val_accuracy),
                value(r.val_macro_f1),
                if r.params.is_empty() { "-".to_owned() } else { sweep::describe(&r.params) },
            ]
        })
        .collect();
    output::table(&["RUN", "STATUS", "BEST EPOCH", "VAL ACC", "VAL MACRO-F1", "PARAMS"], &rows);
    print_comparison(&c);
    Ok(())
}

//! `cobb promote RUN --reason TEXT`: promote a run to the sealed test split and wait for
//! its one evaluation; `cobb promotions [--experiment E]`: the promotion history.

use protocol::JobStatus;
use protocol::api::{PromoteRequest, PromotionInfo, TestReport};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

/// Runs the promotion's evaluation in this process (on the CPU, with the data dir's worker
/// cache): for a server with no worker running.
async fn evaluate_here(client: &Client, data_dir: &std::path::Path, promotion: i64) -> Result<(), Failure> {
    let (server, token) = client.worker_login();
    let token = token.ok_or_else(|| Failure::input("evaluating here needs a token with the worker role (or admin)"))?;
    let config = worker::jobs::WorkerConfig {
        server: server.clone(),
        token: token.clone(),
        name: format!("promote-{}", std::process::id()),
        device: worker::device::DeviceChoice::Cpu,
        work_dir: data_dir.join("worker"),
        idle_poll: Duration::from_secs(1),
        exit_when_idle: true,
        idle_exit_after: Duration::ZERO,
        classify_roots: Some(Vec::new()),
    };
    let worker_client = client::Client::patient(&server, Some(token.clone()), Duration::from_secs(300));
    // Evaluation jobs are handed out oldest first; run them until this promotion's is done.
    let kinds = [protocol::JobKind::Evaluate];
    while let Some(job) = worker_client.lease(&config.name, "cpu", &kinds).await.map_err(|e| Failure::Runtime(e.into()))? {
        let protocol::api::Work::Evaluate(work) = &job.work else { break };
        let mine = work.promotion_id == promotion;
        eprintln!("evaluating promotion {} (run {}) on the test split here", work.promotion_id, job.run_id);
        let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        worker::jobs::run_job(&worker_client, &config, job, std::sync::Arc::new(worker::jobs::Quiet), shutdown).await;
        if mine {
            break;
        }
    }
    Ok(())
}

pub async fn promote(
    client: &Client,
    run: i64,
    reason: &str,
    wait_secs: u64,
    here: Option<&std::path::Path>,
    json: bool,
) -> Result<(), Failure> {
    let promotion: PromotionInfo = client.post(&format!("/runs/{run}/promote"), &PromoteRequest { reason: reason.to_owned() }).await?;
    if !json {
        println!(
            "promoted run {} ({}) of `{}` as promotion {}: checkpoint {}, dataset {}, code {}",
            promotion.run_id,
            promotion.run_name,
            promotion.experiment,
            promotion.id,
            output::short(&promotion.checkpoint_sha256),
            output::short(&promotion.dataset_version),
            output::short(&promotion.code_version)
        );
        if promotion.reused_evaluation {
            println!("this run was evaluated on the test split before; its result is reused (a model is evaluated once)");
        }
    }
    if promotion.awaiting_approval {
        if json {
            output::json(&promotion);
        } else {
            println!(
                "promotion {} needs {} signatures before its test evaluation runs ({} so far: {}); another reviewer signs it with \
                 `cobb approve {}`",
                promotion.id,
                promotion.approvals_needed,
                promotion.approvers.len(),
                promotion.approvers.join(", "),
                promotion.id
            );
        }
        return Ok(());
    }
    if let Some(data_dir) = here
        && promotion.status == JobStatus::Queued
    {
        evaluate_here(client, data_dir, promotion.id).await?;
    }
    let started = Instant::now();
    let mut current = promotion;
    while matches!(current.status, JobStatus::Queued | JobStatus::Running) {
        if started.elapsed() > Duration::from_secs(wait_secs) {
            if json {
                output::json(&current);
            } else {
                println!(
                    "the test evaluation is {} after {wait_secs}s; it runs on the next free worker (start one with `cobb worker`, use `cobb up`, \
                     or promote with --evaluate-here to evaluate in this process). Follow it with `cobb promotions` or on the experiment's page.",
                    current.status.as_str()
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        current = client.get(&format!("/promotions/{}", current.id)).await?;
    }
    if current.status == JobStatus::Failed {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the test evaluation of promotion {} failed: {}",
            current.id,
            current.error.unwrap_or_default()
        )));
    }
    let report: TestReport = client.get(&format!("/promotions/{}/report", current.id)).await?;
    if json {
        output::json(&report);
    } else {
        print_report(&report);
    }
    Ok(())
}

pub async fn report(client: &Client, promotion: i64, csv: bool, json: bool) -> Result<(), Failure> {
    if csv {
        print!("{}", client.get_text(&format!("/promotions/{promotion}/report.csv")).await?);
        return Ok(());
    }
    let report: TestReport = client.get(&format!("/promotions/{promotion}/report")).await?;
    if json {
        output::json(&report);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The study report of a promotion: Markdown or HTML (or its JSON with --json).
pub async fn study(client: &Client, promotion: i64, html: bool, json: bool) -> Result<(), Failure> {
    let report: protocol::study::StudyReport = client.get(&format!("/promotions/{promotion}/study")).await?;
    if json {
        output::json(&report);
    } else if html {
        print!("{}", protocol::study::html(&report));
    } else {
        print!("{}", protocol::study::markdown(&report));
    }
    Ok(())
}

/// The source study's table: per class, then averages, then view and phase roll-ups.
pub fn print_report(t: &TestReport) {
    let r = &t.report;
    println!(
        "\ntest split of {} (run {}, best epoch {}): {} images",
        t.promotion.experiment, t.promotion.run_id, t.promotion.best_epoch, r.total
    );
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (section, report) in [("", &t.report), ("view", &t.by_view), ("phase", &t.by_phase)] {
        if !section.is_empty() {
            rows.push(vec![format!("-- by {section}"), String::new(), String::new(), String::new(), String::new()]);
        }
        for c in &report.per_class {
            rows.push(vec![
                c.class.clone(),
                output::number(c.precision),
                output::number(c.recall),
                output::number(c.f1),
                c.support.to_string(),
            ]);
        }
    }
    rows.push(vec![
        "macro avg".into(),
        output::number(r.macro_precision),
        output::number(r.macro_recall),
        output::number(r.macro_f1),
        r.total.to_string(),
    ]);
    rows.push(vec![
        "weighted avg".into(),
        output::number(r.weighted_precision),
        output::number(r.weighted_recall),
        output::number(r.weighted_f1),
        r.total.to_string(),
    ]);
    rows.push(vec!["accuracy".into(), String::new(), String::new(), output::number(r.accuracy), r.total.to_string()]);
    output::table(&["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"], &rows);
    if let Some(evidence) = &t.evidence {
        crate::commands::runs::print_evidence(evidence);
    }
    if !t.criteria.is_empty() {
        let passed = t.criteria.iter().filter(|v| v.passed).count();
        println!("\nacceptance criteria (fixed before the test split was opened): {passed} of {} met", t.criteria.len());
        let rows: Vec<Vec<String>> = t
            .criteria
            .iter()
            .map(|v| {
                vec![
                    if v.passed { "PASS" } else { "FAIL" }.to_owned(),
                    v.criterion.clone(),
                    v.value.map_or_else(|| "-".to_owned(), output::number),
                    v.note.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::table(&["", "CRITERION", "VALUE", ""], &rows);
    }
    if let Some(auto) = &t.promotion.auto_accept {
        print_thresholds(auto);
    }
}

/// The auto-accept thresholds a promotion fixed for `cobb classify`.
pub fn print_thresholds(auto: &protocol::classify::AutoAccept) {
    println!(
        "\nauto-accept thresholds for cobb classify (fixed at promotion from {} validation predictions, target precision {})",
        auto.validation_images, auto.target_precision
    );
    let rows: Vec<Vec<String>> = auto
        .classes
        .iter()
        .map(|c| {
            vec![
                c.class.clone(),
                c.threshold.map_or_else(|| "none: all to review".to_owned(), output::number),
                c.precision().map_or_else(|| "-".to_owned(), output::number),
                format!("{} / {}", c.accepted, c.predicted),
                if c.predicted < protocol::classify::THIN_EVIDENCE { "thin".to_owned() } else { String::new() },
            ]
        })
        .collect();
    output::table(&["CLASS", "THRESHOLD", "VAL PRECISION", "ACCEPTED / PREDICTED", ""], &rows);
}

pub async fn promotions(client: &Client, experiment: Option<&str>, json: bool) -> Result<(), Failure> {
    let path = match experiment {
        Some(e) => format!("/promotions?experiment={}", crate::commands::runs::encode(e)),
        None => "/promotions".to_owned(),
    };
    let list: Vec<PromotionInfo> = client.get(&path).await?;
    if json {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                output::time(p.created_at),
                p.experiment.clone(),
                format!("{} ({})", p.run_id, p.run_name),
                p.actor.clone(),
                p.status.as_str().to_owned(),
                p.superseded_by.map_or_else(|| "current".to_owned(), |s| format!("superseded by {s}")),
                p.reason.clone(),
            ]
        })
        .collect();
    output::table(&["#", "TIME", "EXPERIMENT", "RUN", "BY", "TEST EVAL", "STATE", "REASON"], &rows);
    Ok(())
}

/// `cobb approve ID`: a second reviewer's signature on a promotion that needs it.
pub async fn approve(client: &Client, promotion: i64, note: &str, json: bool) -> Result<(), Failure> {
    let info: PromotionInfo = client.post(&format!("/promotions/{promotion}/approve"), &serde_json::json!({"note": note})).await?;
    if json {
        output::json(&info);
    } else if info.awaiting_approval {
        println!(
            "signed: promotion {} has {} of {} signatures ({}); its test evaluation waits for the rest",
            info.id,
            info.approvers.len(),
            info.approvals_needed,
            info.approvers.join(", ")
        );
    } else {
        println!(
            "signed: promotion {} has all {} signatures ({}); its test evaluation is {} (a worker runs it; `cobb report {}` when done)",
            info.id,
            info.approvals_needed,
            info.approvers.join(", "),
            info.status.as_str(),
            info.id
        );
    }
    Ok(())
}

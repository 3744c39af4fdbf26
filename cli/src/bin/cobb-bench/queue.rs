//! `cobb-bench queue`: lease/heartbeat/complete throughput with many simulated workers, and
//! the time from a run being queued to a worker holding it.

use crate::harness::{Api, fresh_postgres, percentile, seeded_server, submit};
use anyhow::{Result, bail};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub(crate) struct QueueArgs {
    /// Simulated workers, each a loop of lease -> heartbeats -> complete.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    #[arg(long, default_value_t = 640)]
    runs: usize,
    /// Heartbeats per run.
    #[arg(long, default_value_t = 3)]
    heartbeats: usize,
    /// Runs submitted one at a time to idle workers, for the queued-to-leased time.
    #[arg(long, default_value_t = 40)]
    latency_runs: usize,
    /// How often an idle simulated worker asks for work in the latency phase (ms).
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    #[arg(long, env = "COBB_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// The sweep the runs come from: `random` (expanded at submission) or `tpe-asha` (each
    /// run suggested by TPE when a worker asks, each epoch report judged by ASHA).
    #[arg(long, default_value = "random", value_parser = ["random", "tpe", "tpe-asha"])]
    sweep: String,
    /// Each simulated run reports one epoch's metrics before completing (always with
    /// tpe-asha, whose decisions need them).
    #[arg(long)]
    report_epoch: bool,
}

/// One simulated worker: lease, `heartbeats` heartbeats, complete, until the queue is
/// empty (or, with `until`, until the flag is set). Returns (lease, heartbeat, complete)
/// latencies in ms.
pub(crate) async fn simulated_worker(
    api: Api,
    name: String,
    heartbeats: usize,
    poll: Option<Duration>,
    until: Arc<std::sync::atomic::AtomicBool>,
    report_epoch: bool,
) -> Result<[Vec<f64>; 3]> {
    let mut times: [Vec<f64>; 3] = Default::default();
    loop {
        let start = Instant::now();
        let lease = api.post("/leases", &json!({"worker": name})).await?;
        times[0].push(start.elapsed().as_secs_f64() * 1000.0);
        let Some(lease) = lease else {
            match poll {
                Some(every) if !until.load(std::sync::atomic::Ordering::Relaxed) => {
                    tokio::time::sleep(every).await;
                    continue;
                }
                _ => return Ok(times),
            }
        };
        let id = lease["lease_id"].as_str().unwrap_or_default().to_owned();
        for _ in 0..heartbeats {
            let start = Instant::now();
            api.post(&format!("/leases/{id}/heartbeat"), &json!({})).await?;
            times[1].push(start.elapsed().as_secs_f64() * 1000.0);
        }
        // One epoch's report (the objective a function of the learning rate); a run the
        // sweep's early-stop rule prunes completes as stopped, as a real worker does.
        let mut outcome = "succeeded";
        if report_epoch {
            let run = lease["run_id"].as_i64().unwrap_or_default();
            let lr = lease["params"]["train.optimizer.lr"].as_f64().unwrap_or(1e-3);
            let value = 1.0 - (lr.log10() + 2.5).powi(2) / 10.0;
            let batch = json!({"lease_id": id, "metrics": [{"key": "val_macro_f1", "step": 0, "value": value}]});
            let answer = api.post(&format!("/runs/{run}/metrics"), &batch).await?;
            if answer.as_ref().and_then(|a| a["stop"].as_bool()) == Some(true) {
                outcome = "cancelled";
            }
        }
        let start = Instant::now();
        api.post(&format!("/leases/{id}/complete"), &json!({"outcome": outcome, "best_epoch": 0})).await?;
        times[2].push(start.elapsed().as_secs_f64() * 1000.0);
    }
}

pub(crate) async fn queue_bench(args: &QueueArgs) -> Result<()> {
    println!(
        "queue: {} simulated workers over {} runs of a {} sweep (lease, {} heartbeats, {}complete); then {} runs submitted one by one to idle workers polling every {} ms",
        args.workers,
        args.runs,
        args.sweep,
        args.heartbeats,
        if args.report_epoch || args.sweep == "tpe-asha" { "one epoch's metrics, " } else { "" },
        args.latency_runs,
        args.poll_ms
    );
    let mut backends: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    if let Some(url) = &args.postgres_url {
        backends.push(("postgres", Some(fresh_postgres(url)?)));
    }
    for (label, url) in backends {
        let (_server, admin, worker) = seeded_server(url.as_deref()).await?;
        let report = args.report_epoch || args.sweep == "tpe-asha";
        if args.sweep.starts_with("tpe") {
            let early_stop =
                if args.sweep == "tpe-asha" { "  early_stop: {method: asha, min_epochs: 1, reduction_factor: 3}\n" } else { "" };
            let yaml = format!(
                "name: queue\ndataset: {{name: bench}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
                 train: {{epochs: 50, batch_size: 8, seed: 1, optimizer: {{name: adamw, lr: 0.001}}}}\n\
                 sweep:\n  method: tpe\n  max_runs: {}\n{early_stop}  \
                 parameters:\n    train.optimizer.lr: {{distribution: log_uniform, min: 0.0001, max: 0.1}}\n",
                args.runs
            );
            admin.post("/experiments", &json!({"yaml": yaml})).await?;
        } else {
            submit(&admin, "queue", args.runs).await?;
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.workers)
            .map(|w| tokio::spawn(simulated_worker(worker.clone(), format!("sim-{w}"), args.heartbeats, None, done.clone(), report)))
            .collect();
        let mut all: [Vec<f64>; 3] = Default::default();
        for t in tasks {
            for (acc, part) in all.iter_mut().zip(t.await??) {
                acc.extend(part);
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let requests: usize = all.iter().map(Vec::len).sum();
        for v in all.iter_mut() {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{label:8} {} runs in {wall:.1} s: {:.0} runs/s, {:.0} requests/s; lease p50 {:.1} ms p99 {:.1} ms, heartbeat p50 {:.1} ms p99 {:.1} ms, complete p50 {:.1} ms p99 {:.1} ms",
            args.runs,
            args.runs as f64 / wall,
            requests as f64 / wall,
            percentile(&all[0], 50.0),
            percentile(&all[0], 99.0),
            percentile(&all[1], 50.0),
            percentile(&all[1], 99.0),
            percentile(&all[2], 50.0),
            percentile(&all[2], 99.0)
        );

        // Queued-to-leased: idle workers polling, runs arriving one at a time.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pollers: Vec<_> = (0..args.workers)
            .map(|w| {
                tokio::spawn(simulated_worker(
                    worker.clone(),
                    format!("idle-{w}"),
                    0,
                    Some(Duration::from_millis(args.poll_ms)),
                    stop.clone(),
                    false,
                ))
            })
            .collect();
        let mut waits = Vec::new();
        for i in 0..args.latency_runs {
            admin
                .post(
                    "/experiments",
                    &json!({"yaml": format!(
                "name: arrive{i}\ndataset: {{name: bench}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
                 train: {{epochs: 1, batch_size: 8, seed: 1, optimizer: {{name: adamw, lr: 0.001}}}}\n")}),
                )
                .await?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let runs = admin.get(&format!("/runs?experiment=arrive{i}")).await?;
                let run = &runs["runs"][0];
                if let (Some(created), Some(leased)) = (run["created_at"].as_i64(), run["started_at"].as_i64()) {
                    waits.push((leased - created) as f64);
                    break;
                }
                if Instant::now() > deadline {
                    bail!("run arrive{i} was not leased within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for p in pollers {
            p.await??;
        }
        waits.sort_by(f64::total_cmp);
        println!(
            "{label:8} queued -> leased with {} idle workers polling every {} ms: p50 {:.0} ms, p99 {:.0} ms (server clock)",
            args.workers,
            args.poll_ms,
            percentile(&waits, 50.0),
            percentile(&waits, 99.0)
        );
    }
    Ok(())
}

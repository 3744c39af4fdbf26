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
        let start = Instant::now();
        api.post(&format!("/leases/{id}/complete"), &json!({"outcome": "succeeded"})).await?;
        times[2].push(start.elapsed().as_secs_f64() * 1000.0);
    }
}

pub(crate) async fn queue_bench(args: &QueueArgs) -> Result<()> {
    println!(
        "queue: {} simulated workers over {} runs (lease, {} heartbeats, complete); then {} runs submitted one by one to idle workers polling every {} ms",
        args.workers, args.runs, args.heartbeats, args.latency_runs, args.poll_ms
    );
    let mut backends: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    if let Some(url) = &args.postgres_url {
        backends.push(("postgres", Some(fresh_postgres(url)?)));
    }
    for (label, url) in backends {
        let (_server, admin, worker) = seeded_server(url.as_deref()).await?;
        submit(&admin, "queue", args.runs).await?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.workers)
            .map(|w| tokio::spawn(simulated_worker(worker.clone(), format!("sim-{w}"), args.heartbeats, None, done.clone())))
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

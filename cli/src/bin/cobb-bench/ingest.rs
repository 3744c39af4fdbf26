//! `cobb-bench server`: metric ingestion and run listing against a `cobb server` process
//! (the MLflow peer's workload), with the server's memory.

use crate::harness::{fresh_postgres, metric_keys, percentile, seeded_server, submit, train_like_workers};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Runs per ingest phase.
    #[arg(long, default_value_t = 16)]
    runs: usize,
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Metric keys per epoch.
    #[arg(long, default_value_t = 25)]
    keys: usize,
    /// Comma-separated client concurrencies.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    search_runs: usize,
    #[arg(long, default_value_t = 3)]
    search_epochs: usize,
    #[arg(long, default_value_t = 10)]
    search_queries: usize,
    /// A PostgreSQL server to bench too (a database `cobb_bench` is created there afresh).
    #[arg(long, env = "COBB_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Only PostgreSQL (skip SQLite).
    #[arg(long)]
    postgres_only: bool,
    /// Write all results here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) async fn bench_backend(args: &Args, label: &str, database_url: Option<&str>) -> Result<Value> {
    let (server, admin, worker) = seeded_server(database_url).await?;
    let keys = metric_keys(args.keys);
    let (idle_rss, _) = server.memory_kib();
    let mut phases = Vec::new();

    // Warm-up: a few runs so connections and caches are hot.
    submit(&admin, "warmup", 4).await?;
    train_like_workers(&worker, 4, 3, &keys).await?;

    for &c in &args.concurrency {
        submit(&admin, &format!("ingest-c{c}"), args.runs).await?;
        let start = Instant::now();
        let all = train_like_workers(&worker, c, args.epochs, &keys).await?;
        let wall = start.elapsed().as_secs_f64();
        let latencies = &all.metrics;
        let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len().max(1) as f64;
        let metrics = (args.runs * args.epochs * args.keys) as f64;
        let (rss, _) = server.memory_kib();
        let row = json!({"phase": "ingest", "concurrency": c, "metrics": metrics, "seconds": wall,
            "metrics_per_second": metrics / wall, "requests_per_second": latencies.len() as f64 / wall,
            "p50_ms": percentile(latencies, 50.0), "p99_ms": percentile(latencies, 99.0), "mean_ms": mean(latencies),
            "lease_p50_ms": percentile(&all.leases, 50.0), "lease_mean_ms": mean(&all.leases),
            "complete_p50_ms": percentile(&all.completions, 50.0), "complete_mean_ms": mean(&all.completions),
            "server_rss_kib": rss});
        println!(
            "{label:8} ingest C={c:<2} {:>9.0} metrics/s  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  mean {:>6.2} ms  \
             lease p50 {:.2} ms  complete p50 {:.2} ms  server RSS {:>6.1} MB",
            metrics / wall,
            latencies.len() as f64 / wall,
            percentile(latencies, 50.0),
            percentile(latencies, 99.0),
            mean(latencies),
            percentile(&all.leases, 50.0),
            percentile(&all.completions, 50.0),
            rss as f64 / 1024.0
        );
        phases.push(row);
    }

    submit(&admin, "search", args.search_runs).await?;
    train_like_workers(&worker, 8, args.search_epochs, &keys).await?;
    let queries = [
        "/runs?experiment=search&sort=val_macro_f1&limit=1000",
        "/runs?experiment=search&sort=-val_loss&status=succeeded&limit=1000",
        "/runs?sort=val_recall/ap_preop&limit=1000",
    ];
    let mut latencies = Vec::new();
    for _ in 0..args.search_queries {
        for q in queries {
            let start = Instant::now();
            let list = admin.get(q).await?;
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            if list["runs"].as_array().map_or(0, Vec::len) < 1000.min(args.search_runs) {
                bail!("{q} returned fewer runs than expected");
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let (rss, peak) = server.memory_kib();
    println!(
        "{label:8} list 1,000 runs sorted by a metric: p50 {:.1} ms  p99 {:.1} ms  server RSS {:.1} MB (idle at start {:.1} MB, peak {:.1} MB)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        rss as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    phases.push(json!({"phase": "search", "runs": args.search_runs, "queries": latencies.len(),
        "p50_ms": percentile(&latencies, 50.0), "p99_ms": percentile(&latencies, 99.0)}));
    Ok(json!({"backend": label, "phases": phases, "server_rss_idle_kib": idle_rss, "server_rss_end_kib": rss,
        "server_peak_kib": peak}))
}

pub(crate) async fn server_bench(args: Args) -> Result<()> {
    println!(
        "workload: {} runs x {} epochs x {} keys per ingest phase (one request per epoch), concurrency {:?}; search over {} runs",
        args.runs, args.epochs, args.keys, args.concurrency, args.search_runs
    );
    let mut results = Vec::new();
    if !args.postgres_only {
        results.push(bench_backend(&args, "sqlite", None).await?);
    }
    if let Some(url) = &args.postgres_url {
        let fresh = fresh_postgres(url)?;
        results.push(bench_backend(&args, "postgres", Some(&fresh)).await?);
    } else {
        eprintln!("(PostgreSQL skipped: pass --postgres-url or COBB_BENCH_POSTGRES_URL)");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("while writing {}", Path::new(path).display()))?;
    }
    Ok(())
}

//! `cobb-bench pages`: dashboard page times (the sweep page at 1,000 runs, the compare page
//! at 20 runs x 10 classes x 50 epochs).

use crate::harness::{fresh_postgres, metric_keys, percentile, seeded_server, submit, train_like_workers_with};
use anyhow::{Result, bail};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct PagesArgs {
    #[arg(long, default_value_t = 1000)]
    sweep_runs: usize,
    #[arg(long, default_value_t = 20)]
    compare_runs: usize,
    #[arg(long, default_value_t = 50)]
    compare_epochs: usize,
    /// Page loads measured per page.
    #[arg(long, default_value_t = 40)]
    loads: usize,
    #[arg(long, env = "COBB_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
}

pub(crate) async fn pages_bench(args: &PagesArgs) -> Result<()> {
    println!(
        "dashboard pages: sweep page over {} runs (3 epochs each, 10 classes); compare page of {} runs x 10 classes x {} epochs; {} loads each, one at a time",
        args.sweep_runs, args.compare_runs, args.compare_epochs, args.loads
    );
    let mut backends: Vec<(&str, Option<String>)> = vec![("sqlite", None)];
    if let Some(url) = &args.postgres_url {
        backends.push(("postgres", Some(fresh_postgres(url)?)));
    }
    for (label, url) in backends {
        let (server, admin, worker) = seeded_server(url.as_deref()).await?;
        // The pages are HTML, not the API: timed with a plain HTTP client.
        let http = reqwest::Client::new();
        let keys = metric_keys(35);
        let seeding = Instant::now();
        submit(&admin, "pages", args.sweep_runs).await?;
        train_like_workers_with(&worker, 8, 3, &keys, true).await?;
        submit(&admin, "compare", args.compare_runs).await?;
        train_like_workers_with(&worker, 8, args.compare_epochs, &keys, true).await?;
        let seeded = seeding.elapsed().as_secs_f64();
        let sweep = admin.get("/experiments/pages").await?["sweeps"][0]["id"].as_i64().unwrap_or(1);
        let compare = admin.get("/runs?experiment=compare&limit=100").await?;
        let ids: Vec<String> = compare["runs"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x["id"].as_i64()).map(|i| i.to_string()).collect())
            .unwrap_or_default();
        let root = server.url.trim_end_matches("/api/v1").to_owned();
        for (page, path) in [("sweep", format!("/ui/sweeps/{sweep}")), ("compare", format!("/ui/compare?runs={}", ids.join(",")))] {
            let mut times = Vec::new();
            let mut bytes = 0;
            for i in 0..args.loads + 3 {
                let start = Instant::now();
                let response = http.get(format!("{root}{path}")).bearer_auth(&server.token).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                if !status.is_success() {
                    bail!("{path}: {status}");
                }
                if i >= 3 {
                    times.push(start.elapsed().as_secs_f64() * 1000.0);
                }
                bytes = body.len();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{label:8} {page:8} p50 {:>7.1} ms  p99 {:>7.1} ms  ({} KB of HTML; seeding took {seeded:.0} s)",
                percentile(&times, 50.0),
                percentile(&times, 99.0),
                bytes / 1024
            );
        }
    }
    Ok(())
}

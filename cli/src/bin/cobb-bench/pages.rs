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
    /// Validation images per run of the compare page with stored predictions.
    #[arg(long, default_value_t = 1000)]
    val_images: usize,
}

/// A dataset with `val_images` validation images (2 per patient) and `runs` one-epoch runs
/// that each report their epoch's confusion matrix and predictions as a worker does (a
/// different random 85-95% right per run). Returns the run ids.
async fn seed_predictions(
    admin: &crate::harness::Api,
    worker: &crate::harness::Api,
    runs: usize,
    val_images: usize,
) -> Result<Vec<String>> {
    use serde_json::{Value, json};
    let classes: Vec<&str> = protocol::classes::SCOLIOSIS_CLASSES.to_vec();
    let items: Vec<Value> = (0..val_images + 20)
        .map(|i| {
            let split = if i < val_images { "val" } else { "train" };
            json!({"path": format!("e{i}.png"), "sha256": format!("{:064x}", i + 1_000_000), "bytes": 1, "label": classes[i % 10],
                   "patient": format!("patient{}", i / 2), "split": split})
        })
        .collect();
    admin
        .post(
            "/datasets",
            &json!({"name": "bench-evidence", "root": "/bench", "split": "98/2/0", "seed": 0, "group_by": "patient",
            "classes": classes, "items": items}),
        )
        .await?;
    let yaml = format!(
        "name: evidence\ndataset: {{name: bench-evidence}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train: {{epochs: 1, batch_size: 8, seed: 1, optimizer: {{name: adamw, lr: 0.001}}}}\n\
         sweep:\n  method: random\n  max_runs: {runs}\n  parameters:\n    train.optimizer.lr: {{distribution: log_uniform, min: 0.0001, max: 0.1}}\n"
    );
    admin.post("/experiments", &json!({"yaml": yaml})).await?;
    let mut rng = protocol::rng::SplitMix64::new(5);
    let mut ids = Vec::new();
    while let Some(lease) = worker.post("/leases", &json!({"worker": "bench-evidence"})).await? {
        let run = lease["run_id"].as_i64().unwrap_or_default();
        let lease_id = lease["lease_id"].as_str().unwrap_or_default().to_owned();
        let skill = rng.range(0.85, 0.95);
        let mut counts = vec![vec![0u64; 10]; 10];
        let predictions: Vec<Value> = (0..val_images)
            .map(|i| {
                let truth = i % 10;
                let predicted = if rng.chance(skill) { truth } else { (truth + 1 + rng.below(9)) % 10 };
                counts[truth][predicted] += 1;
                let mut probabilities = vec![0.02f32; 10];
                probabilities[predicted] = 0.82;
                json!({"item": format!("e{i}.png"), "predicted": predicted, "probabilities": probabilities})
            })
            .collect();
        worker
            .post(
                &format!("/runs/{run}/results"),
                &json!({"lease_id": lease_id, "epoch": 0, "confusion": {"classes": classes, "counts": counts}}),
            )
            .await?;
        worker.post(&format!("/runs/{run}/predictions"), &json!({"lease_id": lease_id, "epoch": 0, "predictions": predictions})).await?;
        worker.post(&format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded", "best_epoch": 0})).await?;
        ids.push(run.to_string());
    }
    if ids.is_empty() {
        bail!("no run of the evidence experiment was leased");
    }
    Ok(ids)
}

pub(crate) async fn pages_bench(args: &PagesArgs) -> Result<()> {
    println!(
        "dashboard pages: sweep page over {} runs (3 epochs each, 10 classes); compare page of {} runs x 10 classes x {} epochs; \
         compare and run pages with stored predictions ({} runs x {} validation images); {} loads each, one at a time",
        args.sweep_runs, args.compare_runs, args.compare_epochs, args.compare_runs, args.val_images, args.loads
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
        let evidence_ids = seed_predictions(&admin, &worker, args.compare_runs, args.val_images).await?;
        let root = server.url.trim_end_matches("/api/v1").to_owned();
        for (page, path) in [
            ("sweep", format!("/ui/sweeps/{sweep}")),
            ("compare", format!("/ui/compare?runs={}", ids.join(","))),
            ("compare+evidence", format!("/ui/compare?runs={}", evidence_ids.join(","))),
            ("run+evidence", format!("/ui/runs/{}", evidence_ids[0])),
        ] {
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

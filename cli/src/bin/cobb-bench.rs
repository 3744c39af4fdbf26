//! cobb-bench: the MLflow peer's workload (bench/peers/mlflow_ingest.py) replayed
//! against cobb's own endpoints, on SQLite and PostgreSQL, with the server as a separate
//! `cobb server` process so its memory is measured alone.
//!
//!   ingest: R runs x E epochs x K metric keys, one request per epoch of one run,
//!           at each concurrency C (lease -> E metric batches -> complete per run)
//!   search: S runs with a few epochs each, then GET /runs sorted by a metric (1,000 rows)
//!   memory: the server's RSS after each phase and its peak (VmHWM)
//!
//!   cargo build --release -p cobb && target/release/cobb-bench server [--postgres-url URL]
//!
//! `cobb-bench data` measures the data side: phantom generation, decode + resize of large
//! 16-bit DICOM and PNG radiographs, and the training loader (cold and warm cache).

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "cobb's benchmarks (not tests): the server and the data pipeline")]
enum Bench {
    /// Metric ingestion and run listing against a `cobb server` process.
    Server(Args),
    /// Phantoms, decoding and the loader.
    Data(DataArgs),
    /// Training and evaluation images/s on synthetic batches (each model in its own
    /// process, so peak memory is per model).
    Train(TrainBenchArgs),
    /// Forward + backward time of the layer operations cobb runs its own way on flex
    /// (BatchNorm, SiLU, depthwise and 1x1 convolutions), against Burn's.
    Ops {
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    /// The queue: lease/heartbeat/complete throughput with many simulated workers, and the
    /// time from a run being queued to a worker holding it.
    Queue(QueueArgs),
    /// Dashboard page times: the sweep page at 1,000 runs and the compare page at 20 runs x
    /// 10 classes x 50 epochs, on SQLite (and PostgreSQL with --postgres-url).
    Pages(PagesArgs),
    #[command(hide = true)]
    TrainOne {
        arch: String,
        size: usize,
        batch: usize,
        warmup: usize,
        steps: usize,
        eval_steps: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = f64::INFINITY)]
        max_seconds: f64,
    },
    /// The torchvision parity check (worker/tests/fixtures/parity) on a device: prints the
    /// largest |cobb - torchvision| logit difference.
    Parity {
        #[arg(long, default_value = "worker/tests/fixtures/parity")]
        fixture: std::path::PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Debug, clap::Args)]
struct TrainBenchArgs {
    /// arch@size, comma-separated.
    #[arg(long, default_value = "simple_cnn@128,resnet18@128,efficientnet_b0@128", value_delimiter = ',')]
    configs: Vec<String>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 6)]
    steps: usize,
    #[arg(long, default_value_t = 6)]
    eval_steps: usize,
    /// cpu or cuda:N (a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Stop the timed training steps of a model after this many seconds.
    #[arg(long, default_value_t = f64::INFINITY)]
    max_seconds: f64,
}

#[derive(Debug, clap::Args)]
struct QueueArgs {
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

#[derive(Debug, clap::Args)]
struct PagesArgs {
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

#[derive(Debug, clap::Args)]
struct DataArgs {
    /// Phantoms rendered per measurement.
    #[arg(long, default_value_t = 200)]
    phantoms: usize,
    /// Decodes per measurement of the large images.
    #[arg(long, default_value_t = 24)]
    decodes: usize,
}

#[derive(Debug, clap::Args)]
struct Args {
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

fn metric_keys(k: usize) -> Vec<String> {
    let base = ["train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr"];
    let mut keys: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
    for c in protocol::classes::SCOLIOSIS_CLASSES {
        keys.push(format!("val_precision/{c}"));
        keys.push(format!("val_recall/{c}"));
    }
    keys.truncate(k);
    while keys.len() < k {
        keys.push(format!("extra_{}", keys.len()));
    }
    keys
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct ServerProcess {
    child: Child,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn cobb_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("cobb");
    if !path.exists() {
        bail!("{} is missing: build it with `cargo build --release -p cobb`", path.display());
    }
    Ok(path)
}

fn start_server(database_url: Option<&str>) -> Result<ServerProcess> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut command = Command::new(cobb_binary()?);
    command
        .args(["server", "--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("COBB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let child = command.spawn().context("while starting cobb server")?;
    let token_path = dir.path().join("admin.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !token_path.exists() {
        if Instant::now() > deadline {
            bail!("cobb server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_owned();
    Ok(ServerProcess { child, url: format!("http://127.0.0.1:{port}/api/v1"), token, _dir: dir })
}

fn fresh_postgres(url: &str) -> Result<String> {
    for sql in ["DROP DATABASE IF EXISTS cobb_bench", "CREATE DATABASE cobb_bench"] {
        let status = Command::new("psql").arg(url).args(["-q", "-c", sql]).status().context("while running psql")?;
        if !status.success() {
            bail!("psql failed on `{sql}`");
        }
    }
    let (head, query) = url.split_once('?').map_or((url.to_owned(), String::new()), |(h, q)| (h.to_owned(), format!("?{q}")));
    let base = head.rsplit_once('/').map_or(head.clone(), |(h, _)| h.to_owned());
    Ok(format!("{base}/cobb_bench{query}"))
}

/// The API as the benchmarks drive it: JSON values through cobb's one client.
#[derive(Clone)]
struct Api {
    client: client::Client,
}

impl Api {
    fn new(server: &str, token: String) -> Self {
        Self { client: client::Client::new(server, Some(token)) }
    }

    /// POST; None for 204 (nothing to lease).
    async fn post(&self, path: &str, body: &Value) -> Result<Option<Value>> {
        Ok(self.client.post_maybe(path, body).await?)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.client.get(path).await?)
    }
}

async fn setup(api: &Api) -> Result<()> {
    let classes: Vec<&str> = protocol::classes::SCOLIOSIS_CLASSES.to_vec();
    let items: Vec<Value> = (0..100)
        .map(|i| {
            let split = ["train", "train", "train", "val", "test"][i % 5];
            json!({"path": format!("{i}.png"), "sha256": format!("{i:064x}"), "bytes": 1, "label": classes[i % 10],
                   "split": split})
        })
        .collect();
    api.post(
        "/datasets",
        &json!({"name": "bench", "root": "/bench", "split": "70/15/15", "seed": 0, "group_by": "none",
                "classes": classes, "items": items}),
    )
    .await?;
    Ok(())
}

async fn submit(api: &Api, name: &str, runs: usize) -> Result<()> {
    let yaml = format!(
        "name: {name}\ndataset: {{name: bench}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train: {{epochs: 50, batch_size: 8, seed: 1, optimizer: {{name: adamw, lr: 0.001}}}}\n\
         sweep:\n  method: random\n  max_runs: {runs}\n  parameters:\n    train.optimizer.lr: {{distribution: log_uniform, min: 0.0001, max: 0.1}}\n"
    );
    api.post("/experiments", &json!({"yaml": yaml})).await?;
    Ok(())
}

/// Leases runs until none is left; logs `epochs` epochs of `keys` for each. Returns the
/// latency of every metrics request, in milliseconds.
async fn train_like_workers(api: &Api, concurrency: usize, epochs: usize, keys: &[String]) -> Result<Vec<f64>> {
    train_like_workers_with(api, concurrency, epochs, keys, false).await
}

/// A 10-class confusion matrix that varies with the run and the epoch.
fn fake_confusion(run: i64, epoch: usize) -> Value {
    let classes = protocol::classes::SCOLIOSIS_CLASSES;
    let counts: Vec<Vec<u64>> = (0..10)
        .map(|t| {
            (0..10)
                .map(|p| {
                    if t == p {
                        8 + ((run as usize + epoch + t) % 5) as u64
                    } else {
                        u64::from((run as usize * 7 + t * 3 + p + epoch).is_multiple_of(4))
                    }
                })
                .collect()
        })
        .collect();
    json!({"classes": classes, "counts": counts})
}

/// Like [`train_like_workers`]; with `results`, each epoch's confusion matrix is sent too
/// (per-class rows, as real workers do).
async fn train_like_workers_with(api: &Api, concurrency: usize, epochs: usize, keys: &[String], results: bool) -> Result<Vec<f64>> {
    let keys = Arc::new(keys.to_vec());
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let api = api.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(lease) = api.post("/leases", &json!({"worker": format!("bench-{w}")})).await? {
                let run = lease["run_id"].as_i64().unwrap_or_default();
                let lease_id = lease["lease_id"].as_str().unwrap_or_default().to_owned();
                for epoch in 0..epochs {
                    let metrics: Vec<Value> = keys
                        .iter()
                        .enumerate()
                        .map(|(k, key)| json!({"key": key, "step": epoch, "value": (run as f64 * 0.37 + k as f64 * 0.11 + epoch as f64 * 0.013).fract()}))
                        .collect();
                    let body = json!({"lease_id": lease_id, "metrics": metrics});
                    let start = Instant::now();
                    api.post(&format!("/runs/{run}/metrics"), &body).await?;
                    latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                    if results {
                        let body = json!({"lease_id": lease_id, "epoch": epoch, "confusion": fake_confusion(run, epoch)});
                        api.post(&format!("/runs/{run}/results"), &body).await?;
                    }
                }
                api.post(&format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded", "best_epoch": epochs - 1}))
                    .await?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// A fresh `cobb server` with the bench dataset registered: the server, an admin client and
/// a worker-role client.
async fn seeded_server(database_url: Option<&str>) -> Result<(ServerProcess, Api, Api)> {
    let server = start_server(database_url)?;
    let root = server.url.trim_end_matches("/api/v1");
    let admin = Api::new(root, server.token.clone());
    setup(&admin).await?;
    let token = admin.post("/tokens", &json!({"name": "bench-worker", "role": "worker"})).await?;
    let worker = Api::new(root, token.and_then(|t| t["token"].as_str().map(str::to_owned)).unwrap_or_default());
    Ok((server, admin, worker))
}

async fn bench_backend(args: &Args, label: &str, database_url: Option<&str>) -> Result<Value> {
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
        let mut latencies = train_like_workers(&worker, c, args.epochs, &keys).await?;
        let wall = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let metrics = (args.runs * args.epochs * args.keys) as f64;
        let (rss, _) = server.memory_kib();
        let row = json!({"phase": "ingest", "concurrency": c, "metrics": metrics, "seconds": wall,
            "metrics_per_second": metrics / wall, "requests_per_second": latencies.len() as f64 / wall,
            "p50_ms": percentile(&latencies, 50.0), "p99_ms": percentile(&latencies, 99.0), "server_rss_kib": rss});
        println!(
            "{label:8} ingest C={c:<2} {:>9.0} metrics/s  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server RSS {:>6.1} MB",
            metrics / wall,
            latencies.len() as f64 / wall,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
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

#[tokio::main]
async fn main() -> Result<()> {
    match Bench::parse() {
        Bench::Server(args) => server_bench(args).await,
        Bench::Data(args) => data_bench(&args),
        Bench::Train(args) => train_bench(&args),
        Bench::Ops { repeats } => {
            println!("layer operations on flex, forward + backward, median of {repeats} (ms, less the identity's time)");
            for t in worker::train::bench::ops(repeats) {
                println!(
                    "{:<34} {:>18}  Burn {:>7.1}  cobb {:>7.1}  ({:.1}x)",
                    t.op,
                    format!("{:?}", t.shape),
                    t.burn_ms,
                    t.cobb_ms,
                    t.burn_ms / t.cobb_ms.max(1e-3)
                );
            }
            Ok(())
        }
        Bench::Pages(args) => pages_bench(&args).await,
        Bench::Queue(args) => queue_bench(&args).await,
        Bench::Parity { fixture, device } => {
            let choice: worker::device::DeviceChoice = device.parse().map_err(anyhow::Error::msg)?;
            let diff = worker::train::bench::parity(choice, &fixture).map_err(anyhow::Error::msg)?;
            println!(
                "parity on {device}: max |cobb - torchvision| logit difference {diff:.2e} ({})",
                if diff < 1e-4 { "ok, < 1e-4" } else { "FAILED, >= 1e-4" }
            );
            if diff >= 1e-4 {
                bail!("parity check failed");
            }
            Ok(())
        }
        Bench::TrainOne { arch, size, batch, warmup, steps, eval_steps, device, max_seconds } => {
            let arch: protocol::spec::Arch = serde_json::from_value(json!(arch)).context("unknown architecture")?;
            let choice = device.parse().map_err(anyhow::Error::msg)?;
            let work = worker::train::bench::Workload { arch, size, batch, warmup, train_steps: steps, eval_steps, max_seconds };
            let t = worker::train::bench::measure(choice, work)?;
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let peak_kib: u64 = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut value = serde_json::to_value(&t)?;
            value["peak_rss_kib"] = json!(peak_kib);
            println!("{value}");
            Ok(())
        }
    }
}

/// One simulated worker: lease, `heartbeats` heartbeats, complete, until the queue is
/// empty (or, with `until`, until the flag is set). Returns (lease, heartbeat, complete)
/// latencies in ms.
async fn simulated_worker(
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

async fn queue_bench(args: &QueueArgs) -> Result<()> {
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

async fn pages_bench(args: &PagesArgs) -> Result<()> {
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

fn train_bench(args: &TrainBenchArgs) -> Result<()> {
    let backend = if args.device == "cpu" { "flex on the CPU".to_owned() } else { format!("CUDA ({})", args.device) };
    println!("training benchmark: batch {}, 1-channel random images, 10 classes, AdamW; Burn 0.22 {backend}", args.batch);
    for config in &args.configs {
        let (arch, size) = config.split_once('@').context("configs look like arch@size")?;
        let output = Command::new(std::env::current_exe()?)
            .args([
                "train-one",
                arch,
                size,
                &args.batch.to_string(),
                &args.warmup.to_string(),
                &args.steps.to_string(),
                &args.eval_steps.to_string(),
            ])
            .args(["--device", &args.device, "--max-seconds", &args.max_seconds.to_string()])
            .output()?;
        if !output.status.success() {
            bail!("{config}: {}", String::from_utf8_lossy(&output.stderr));
        }
        let t: Value = serde_json::from_slice(&output.stdout)?;
        let peak_mb = t["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0;
        println!(
            "{config:<22} train {:>7.1} img/s ({:>7.0} ms/step)  eval {:>7.1} img/s  peak RSS {:>6.0} MB",
            t["train_images_per_second"].as_f64().unwrap_or(0.0),
            t["train_step_ms"].as_f64().unwrap_or(0.0),
            t["eval_images_per_second"].as_f64().unwrap_or(0.0),
            peak_mb
        );
    }
    Ok(())
}

fn rate(n: usize, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs `f(i)` for i in 0..n on `threads` threads; returns images per second.
fn parallel(n: usize, threads: usize, f: impl Fn(usize) + Sync) -> f64 {
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i);
                }
            });
        }
    });
    rate(n, start)
}

fn data_bench(args: &DataArgs) -> Result<()> {
    use data::phantoms::{self, render};
    use data::{cache::ImageCache, decode, loader};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir()?;
    println!("data benchmarks on {threads} threads (release build expected)");

    // 1. Phantoms at 256 px: rendering alone on one core, then generation with PNG files on all.
    let patient = render::Patient::random(&mut protocol::rng::SplitMix64::new(1));
    let phases =
        [render::Phase::Preop, render::Phase::PreopBrace, render::Phase::Fusion, render::Phase::GrowingRods, render::Phase::Tether];
    let one = parallel(args.phantoms, 1, |i| {
        let shot =
            render::Shot { view: if i % 2 == 0 { render::View::Ap } else { render::View::Lat }, phase: phases[i % 5], seed: i as u64 };
        std::hint::black_box(render::render(&patient, &shot, 256));
    });
    let options = phantoms::Options {
        count: args.phantoms * 2,
        size: 256,
        seed: 1,
        format: phantoms::Format::Png,
        balance: phantoms::Balance::Uniform,
    };
    let start = Instant::now();
    phantoms::generate(&dir.path().join("ph"), &options)?;
    let all = rate(options.count, start);
    println!("phantoms 256 px: render {one:.0} images/s on 1 thread; render + PNG files {all:.0} images/s on {threads} threads");

    // 2. Decode + resize to 256 px of a 2048 x 2048 16-bit DICOM and PNG.
    let big = dir.path().join("big");
    let big_options =
        phantoms::Options { count: 10, size: 2048, seed: 2, format: phantoms::Format::Dicom, balance: phantoms::Balance::Uniform };
    phantoms::generate(&big, &big_options)?;
    let dicom = std::fs::read_to_string(big.join("manifest.csv"))?
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').next())
        .map(|p| big.join(p))
        .context("no phantom DICOM")?;
    let (img, _) = decode::decode_file(&dicom)?;
    let png = dir.path().join("big16.png");
    let data: Vec<u16> = img.pixels.iter().map(|v| (v * 65535.0) as u16).collect();
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2048, 2048, data).context("png size")?.save(&png)?;
    for (label, path) in [("DICOM 16-bit 2048x2048", &dicom), ("PNG 16-bit 2048x2048", &png)] {
        let work = |_: usize| {
            let (img, _) = decode::decode_file(path).expect("decodes");
            std::hint::black_box(decode::fit_square(&img, 256));
        };
        let single = parallel(args.decodes, 1, work);
        let multi = parallel(args.decodes, threads, work);
        println!("decode + resize to 256 px, {label}: {single:.1} images/s on 1 thread, {multi:.1} on {threads}");
    }

    // 3. The loader: 128 px batches of 16 with augmentation, cold cache then warm.
    let manifest = std::fs::read_to_string(dir.path().join("ph/manifest.csv"))?;
    let items: Vec<loader::LoaderItem> = manifest
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|rel| {
            let path = dir.path().join("ph").join(rel);
            let sha256 = data::manifest::hash_file(&path).map(|h| h.0).unwrap_or_default();
            loader::LoaderItem { path, sha256, label: 0 }
        })
        .collect();
    let items = Arc::new(items);
    let cache = Arc::new(ImageCache::new(&dir.path().join("cache"), "bench", 128));
    let config = loader::LoaderConfig {
        batch_size: 16,
        seed: 1,
        shuffle: true,
        augment: Some(protocol::spec::AugmentSpec {
            rotate_deg: 5.0,
            scale: [0.95, 1.05],
            translate: 0.03,
            brightness: 0.1,
            contrast: 0.1,
            noise: 0.02,
            gamma: 0.1,
            hflip: false,
        }),
        threads,
        prefetch: 2,
    };
    for (label, epoch) in [("cold cache (decode + resize + augment)", 0), ("warm cache (augment)", 1)] {
        let start = Instant::now();
        let mut n = 0;
        for batch in loader::Batches::new(items.clone(), cache.clone(), config.clone(), epoch) {
            n += batch?.len();
        }
        println!("loader, 128 px batches of 16, {label}: {:.0} images/s on {threads} threads", rate(n, start));
    }
    Ok(())
}

async fn server_bench(args: Args) -> Result<()> {
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

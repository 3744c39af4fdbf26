//! What the benchmarks share: a `cobb server` process per run, the API driven through
//! cobb's one client, workers simulated by the request, percentiles.

use anyhow::{Context, Result, bail};
use protocol::api::{Complete, MetricPoint, MetricsBatch, Outcome};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn metric_keys(k: usize) -> Vec<String> {
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

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) url: String,
    pub(crate) token: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    pub(crate) fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

pub(crate) fn cobb_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("cobb");
    if !path.exists() {
        bail!("{} is missing: build it with `cargo build --release -p cobb`", path.display());
    }
    Ok(path)
}

pub(crate) fn start_server(database_url: Option<&str>) -> Result<ServerProcess> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut command = Command::new(cobb_binary()?);
    command
        .args(["server", "--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        // The server's log filter: COBB_BENCH_SERVER_LOG (e.g.
        // `warn,server::service::group_commit=trace` for the size of each commit group).
        .env("COBB_LOG", std::env::var("COBB_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()))
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

pub(crate) fn fresh_postgres(url: &str) -> Result<String> {
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

/// The API as the benchmarks drive it: JSON values through cobb's one client (and, for the
/// worker's own requests, that client's typed calls, as `cobb worker` makes them).
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) client: client::Client,
}

impl Api {
    pub(crate) fn new(server: &str, token: String) -> Self {
        Self { client: client::Client::new(server, Some(token)) }
    }

    /// POST; None for 204 (nothing to lease).
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Option<Value>> {
        Ok(self.client.post_maybe(path, body).await?)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.client.get(path).await?)
    }
}

pub(crate) async fn setup(api: &Api) -> Result<()> {
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

pub(crate) async fn submit(api: &Api, name: &str, runs: usize) -> Result<()> {
    let yaml = format!(
        "name: {name}\ndataset: {{name: bench}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train: {{epochs: 50, batch_size: 8, seed: 1, optimizer: {{name: adamw, lr: 0.001}}}}\n\
         sweep:\n  method: random\n  max_runs: {runs}\n  parameters:\n    train.optimizer.lr: {{distribution: log_uniform, min: 0.0001, max: 0.1}}\n"
    );
    api.post("/experiments", &json!({"yaml": yaml})).await?;
    Ok(())
}

/// The latency of each request of a load run, in milliseconds, by kind.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    pub metrics: Vec<f64>,
    /// `POST /leases` that handed out a run (the last, empty one of each worker is left out).
    pub leases: Vec<f64>,
    pub completions: Vec<f64>,
}

/// Leases runs until none is left; logs `epochs` epochs of `keys` for each.
pub(crate) async fn train_like_workers(api: &Api, concurrency: usize, epochs: usize, keys: &[String]) -> Result<Latencies> {
    train_like_workers_with(api, concurrency, epochs, keys, false).await
}

/// A 10-class confusion matrix that varies with the run and the epoch.
pub(crate) fn fake_confusion(run: i64, epoch: usize) -> Value {
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
pub(crate) async fn train_like_workers_with(
    api: &Api,
    concurrency: usize,
    epochs: usize,
    keys: &[String],
    results: bool,
) -> Result<Latencies> {
    let keys = Arc::new(keys.to_vec());
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let api = api.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let ms = |start: Instant| start.elapsed().as_secs_f64() * 1000.0;
            let worker = format!("bench-{w}");
            loop {
                // The requests `cobb worker` makes, through the same typed calls.
                let start = Instant::now();
                let Some(lease) = api.client.lease(&worker, "bench", &[]).await? else {
                    break;
                };
                latencies.leases.push(ms(start));
                let (run, lease_id) = (lease.run_id, lease.lease_id);
                for epoch in 0..epochs {
                    let metrics: Vec<MetricPoint> = keys
                        .iter()
                        .enumerate()
                        .map(|(k, key)| MetricPoint {
                            key: key.clone(),
                            step: epoch as i64,
                            value: (run as f64 * 0.37 + k as f64 * 0.11 + epoch as f64 * 0.013).fract(),
                        })
                        .collect();
                    let batch = MetricsBatch { lease_id: Some(lease_id.clone()), metrics };
                    let start = Instant::now();
                    api.client.metrics(run, &batch).await?;
                    latencies.metrics.push(ms(start));
                    if results {
                        let body = json!({"lease_id": lease_id, "epoch": epoch, "confusion": fake_confusion(run, epoch)});
                        api.post(&format!("/runs/{run}/results"), &body).await?;
                    }
                }
                let start = Instant::now();
                let done = Complete { best_epoch: Some(epochs as i64 - 1), ..Complete::of(Outcome::Succeeded) };
                api.client.complete(&lease_id, &done).await?;
                latencies.completions.push(ms(start));
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        let one = task.await??;
        all.metrics.extend(one.metrics);
        all.leases.extend(one.leases);
        all.completions.extend(one.completions);
    }
    for list in [&mut all.metrics, &mut all.leases, &mut all.completions] {
        list.sort_by(f64::total_cmp);
    }
    Ok(all)
}

/// A fresh `cobb server` with the bench dataset registered: the server, an admin client and
/// a worker-role client.
pub(crate) async fn seeded_server(database_url: Option<&str>) -> Result<(ServerProcess, Api, Api)> {
    let server = start_server(database_url)?;
    let root = server.url.trim_end_matches("/api/v1");
    let admin = Api::new(root, server.token.clone());
    setup(&admin).await?;
    let token = admin.post("/tokens", &json!({"name": "bench-worker", "role": "worker"})).await?;
    let worker = Api::new(root, token.and_then(|t| t["token"].as_str().map(str::to_owned)).unwrap_or_default());
    Ok((server, admin, worker))
}

pub(crate) fn rate(n: usize, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs `f(i)` for i in 0..n on `threads` threads; returns images per second.
pub(crate) fn parallel(n: usize, threads: usize, f: impl Fn(usize) + Sync) -> f64 {
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

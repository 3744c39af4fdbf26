//! A real server and a real worker: runs are leased, trained, streamed and completed;
//! a cancelled run stops its worker.

use protocol::api::{GroupBy, RegisterDataset, RunDetail, RunList};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use worker::device::DeviceChoice;
use worker::jobs::{self, Quiet, WorkerConfig};

struct Server {
    url: String,
    token: String,
    api: client::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_on(None).await
    }

    /// On SQLite, or on the PostgreSQL database at `database_url`.
    async fn start_on(database_url: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let config = server::ServerConfig {
            bind: "127.0.0.1:0".to_owned(),
            data_dir: dir.path().join("server"),
            heartbeat_secs: 1,
            database_url,
            ..server::ServerConfig::default()
        };
        let app = server::Application::build(config).await.expect("server");
        let url = format!("http://127.0.0.1:{}", app.port());
        let token = app.admin_token.clone().expect("admin token");
        tokio::spawn(app.run_until_stopped());
        let api = client::Client::new(&url, Some(token.clone()));
        Self { url, token, api, _dir: dir }
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> serde_json::Value {
        let answer: Option<serde_json::Value> = self.api.post_maybe(path, body).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        answer.unwrap_or(serde_json::Value::Null)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.api.get(path).await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Phantoms registered the way the CLI registers them.
    async fn register_phantoms(&self, root: &std::path::Path) {
        self.register_phantoms_with(root, "ph", 0).await;
    }

    /// Phantoms as dataset `name`, with `corrupt` of its training images replaced (after the
    /// split, before registration, hashes updated) by bytes that are no image: files that
    /// are in the version but cannot be decoded.
    async fn register_phantoms_with(&self, root: &std::path::Path, name: &str, corrupt: usize) {
        let options = data::phantoms::Options {
            count: 100,
            size: 48,
            seed: 2,
            format: data::phantoms::Format::Png,
            balance: data::phantoms::Balance::Uniform,
        };
        data::phantoms::generate(root, &options).expect("phantoms");
        let classes: Vec<String> = protocol::classes::SCOLIOSIS_CLASSES.iter().map(|c| (*c).to_owned()).collect();
        let scan =
            data::manifest::ScanOptions { classes: classes.clone(), key: data::pseudonym::PseudonymKey::from_bytes([1; 32]), decode: true };
        let scanned = data::manifest::read_manifest(root, &root.join("manifest.csv"), &scan).expect("scan");
        let mut items = data::split::freeze(scanned.items, [70, 15, 15], 0, true);
        for item in items.iter_mut().filter(|i| i.split == protocol::Split::Train).take(corrupt) {
            let bytes = format!("not an image: {}", item.path).into_bytes();
            std::fs::write(root.join(&item.path), &bytes).expect("corrupt");
            item.sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            item.bytes = bytes.len() as u64;
        }
        let request = RegisterDataset {
            name: name.to_owned(),
            root: root.display().to_string(),
            split: "70/15/15".to_owned(),
            seed: 0,
            group_by: GroupBy::Patient,
            classes,
            items,
            report: vec![],
            pseudonym_key: None,
        };
        self.post("/datasets", &request).await;
    }

    fn worker(&self, dir: &std::path::Path, exit_when_idle: bool) -> WorkerConfig {
        WorkerConfig {
            server: self.url.clone(),
            token: self.token.clone(),
            name: "test-worker".to_owned(),
            device: DeviceChoice::Cpu,
            work_dir: dir.to_path_buf(),
            idle_poll: Duration::from_millis(200),
            exit_when_idle,
            idle_exit_after: Duration::ZERO,
            classify_roots: Some(Vec::new()),
        }
    }
}

fn spec(name: &str, epochs: u32, sweep: &str) -> String {
    format!(
        "name: {name}\ndataset: {{name: ph}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train:\n  epochs: {epochs}\n  batch_size: 8\n  seed: 1\n  optimizer: {{name: adamw, lr: 0.003}}\n{sweep}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trains_queued_runs_and_streams_every_epoch() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    server.register_phantoms(&dir.path().join("ph")).await;
    let sweep = "sweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {values: [0.003, 0.001]}\n";
    server.post("/experiments", &json!({"yaml": spec("e2e", 2, sweep)})).await;

    let shutdown = Arc::new(AtomicBool::new(false));
    jobs::run(server.worker(&dir.path().join("w"), true), Arc::new(Quiet), shutdown).await.expect("worker");

    let list: RunList = server.get("/runs?experiment=e2e&sort=val_macro_f1").await;
    assert_eq!(list.total, 2);
    for run in &list.runs {
        assert_eq!(run.status, protocol::RunStatus::Succeeded, "{:?}", run.error);
        assert!(run.sort_value.is_some(), "val_macro_f1 stored");
        let detail: RunDetail = server.get(&format!("/runs/{}", run.id)).await;
        assert_eq!(detail.latest["val_accuracy"].step, 1, "two epochs, steps 0 and 1");
        let classes = detail.class_results.expect("per-class rows");
        assert_eq!(classes.per_class.len(), 10);
        assert_eq!(classes.confusion.total(), classes.per_class.iter().map(|c| c.support).sum::<u64>());
        let kinds: Vec<&str> = detail.artifacts.iter().map(|a| a.kind.as_str()).collect();
        assert!(kinds.contains(&"best_checkpoint") && kinds.contains(&"last_checkpoint"), "{kinds:?}");
        let series: Vec<protocol::api::MetricSeries> = server.get(&format!("/runs/{}/metrics?key=train_loss", run.id)).await;
        assert_eq!(series[0].points.len(), 2, "one point per epoch, no duplicates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_run_stops_its_worker() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    server.register_phantoms(&dir.path().join("ph")).await;
    server.post("/experiments", &json!({"yaml": spec("long", 200, "")})).await;

    let shutdown = Arc::new(AtomicBool::new(false));
    let config = server.worker(&dir.path().join("w"), true);
    let worker = tokio::spawn(jobs::run(config, Arc::new(Quiet), shutdown));
    // Wait until the run is training.
    let mut id = 0;
    for _ in 0..100 {
        let list: RunList = server.get("/runs?experiment=long&status=running").await;
        if let Some(run) = list.runs.first() {
            id = run.id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(id > 0, "the run started");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled_at = std::time::Instant::now();
    server.post(&format!("/runs/{id}/cancel"), &json!({})).await;
    tokio::time::timeout(Duration::from_secs(30), worker).await.expect("the worker stops").expect("joined").expect("ok");
    let detail: RunDetail = server.get(&format!("/runs/{id}")).await;
    assert_eq!(detail.run.status, protocol::RunStatus::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_secs(10), "stopped within seconds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_twelve_runs_and_each_succeeds_once() {
    three_workers_share_twelve_runs(Server::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_twelve_runs_on_postgres() {
    if let Some(url) = server::db::fresh_test_database().await {
        three_workers_share_twelve_runs(Server::start_on(Some(url)).await).await;
    }
}

async fn three_workers_share_twelve_runs(server: Server) {
    let dir = tempfile::tempdir().expect("tmp");
    server.register_phantoms(&dir.path().join("ph")).await;
    let lrs: Vec<String> = (1..=12).map(|i| format!("{}", i as f64 * 0.0005)).collect();
    let sweep = format!("sweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {{values: [{}]}}\n", lrs.join(", "));
    server.post("/experiments", &json!({"yaml": spec("fleet", 1, &sweep)})).await;

    let workers: Vec<_> = (0..3)
        .map(|i| {
            let mut config = server.worker(&dir.path().join(format!("w{i}")), true);
            config.name = format!("fleet-{i}");
            tokio::spawn(jobs::run(config, Arc::new(Quiet), Arc::new(AtomicBool::new(false))))
        })
        .collect();
    for w in workers {
        w.await.expect("joined").expect("worker ok");
    }
    let list: RunList = server.get("/runs?experiment=fleet&limit=100").await;
    assert_eq!(list.total, 12);
    let mut by_worker = std::collections::BTreeMap::new();
    for run in &list.runs {
        assert_eq!(run.status, protocol::RunStatus::Succeeded, "{:?}", run.error);
        assert_eq!(run.attempt, 1, "run {} was leased once", run.id);
        *by_worker.entry(run.worker.clone().unwrap_or_default()).or_insert(0) += 1;
        let detail: RunDetail = server.get(&format!("/runs/{}", run.id)).await;
        assert_eq!(detail.leases.len(), 1);
    }
    assert!(by_worker.len() >= 2, "the work was shared: {by_worker:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_corrupted_after_registration_fails_the_run_naming_it() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("ph");
    server.register_phantoms(&root).await;
    // Damage one registered image on disk.
    let manifest = std::fs::read_to_string(root.join("manifest.csv")).expect("manifest");
    let victim = manifest.lines().nth(1).and_then(|l| l.split(',').next()).expect("a file").to_owned();
    std::fs::write(root.join(&victim), b"\x89PNG truncated garbage").expect("corrupt");
    server.post("/experiments", &json!({"yaml": spec("damaged", 2, "")})).await;

    jobs::run(server.worker(&dir.path().join("w"), true), Arc::new(Quiet), Arc::new(AtomicBool::new(false))).await.expect("worker");
    let list: RunList = server.get("/runs?experiment=damaged").await;
    let run = &list.runs[0];
    assert_eq!(run.status, protocol::RunStatus::Failed);
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains(&victim) && error.contains("changed since the dataset version was registered"), "{error}");
    assert_eq!(run.attempt, 1, "a data error is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_images_are_skipped_and_reported_up_to_a_threshold() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    server.register_phantoms_with(&dir.path().join("one"), "one-bad", 1).await;
    server.register_phantoms_with(&dir.path().join("many"), "many-bad", 12).await;
    for (name, dataset) in [("few", "one-bad"), ("lots", "many-bad")] {
        let yaml = spec(name, 1, "").replace("dataset: {name: ph}", &format!("dataset: {{name: {dataset}}}"));
        server.post("/experiments", &json!({"yaml": yaml})).await;
    }
    jobs::run(server.worker(&dir.path().join("w"), true), Arc::new(Quiet), Arc::new(AtomicBool::new(false))).await.expect("worker");

    let few: RunList = server.get("/runs?experiment=few").await;
    let detail: RunDetail = server.get(&format!("/runs/{}", few.runs[0].id)).await;
    assert_eq!(detail.run.status, protocol::RunStatus::Succeeded, "{:?}", detail.run.error);
    let skipped = detail.latest.get("skipped_images").map(|m| m.value);
    assert_eq!(skipped, Some(1.0), "the bad training image is reported");

    let lots: RunList = server.get("/runs?experiment=lots").await;
    let run = &lots.runs[0];
    assert_eq!(run.status, protocol::RunStatus::Failed);
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("could not be read") && error.contains("not an image") && error.contains(".png"), "{error}");
    assert_eq!(run.attempt, 1, "bad data is not retried");
}

//! `spawn_app`: a real server on port 0 over a fresh database (a SQLite file in a temp
//! dir, or a new PostgreSQL database when COBB_TEST_POSTGRES_URL is set).

use protocol::api::{DatasetItem, GroupBy, RegisterDataset};
use protocol::{ErrorBody, Split};
use reqwest::{Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use server::{Application, ServerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub base: String,
    /// The database the server uses (for tests that play an attacker with database access).
    pub database_url: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub backend: Backend,
    _dir: tempfile::TempDir,
}

/// A fresh PostgreSQL database on the server named by COBB_TEST_POSTGRES_URL.
async fn fresh_postgres_database() -> Option<String> {
    server::db::fresh_test_database().await
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig { bind: "127.0.0.1:0".to_owned(), data_dir: dir.path().to_path_buf(), ..ServerConfig::default() };
    if backend == Backend::Postgres {
        config.database_url = Some(fresh_postgres_database().await?);
    }
    tweak(&mut config);
    let database_url = config.database_url();
    let app = Application::build(config).await.expect("server starts");
    let port = app.port();
    let admin = app.admin_token.clone().expect("first start creates an admin token");
    let on_disk = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin.token written");
    assert_eq!(on_disk.trim(), admin);
    tokio::spawn(app.run_until_stopped());
    Some(TestApp { base: format!("http://127.0.0.1:{port}/api/v1"), database_url, admin, http: reqwest::Client::new(), backend, _dir: dir })
}

impl TestApp {
    /// Starts a second server on this one's database and data dir, with nothing in memory
    /// from the first (as a restarted server starts); returns its API base URL. Point `base`
    /// at it to carry on there.
    pub async fn second_server(&self) -> String {
        let config = ServerConfig {
            bind: "127.0.0.1:0".to_owned(),
            data_dir: self._dir.path().to_path_buf(),
            database_url: Some(self.database_url.clone()),
            ..ServerConfig::default()
        };
        let app = Application::build(config).await.expect("a second server starts");
        let port = app.port();
        tokio::spawn(app.run_until_stopped());
        format!("http://127.0.0.1:{port}/api/v1")
    }

    /// The server's data dir (its artifact store is `artifacts/` under it).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn get(&self, token: &str, path: &str) -> Response {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.expect("request")
    }

    pub async fn post(&self, token: &str, path: &str, body: &impl Serialize) -> Response {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(token).json(body).send().await.expect("request")
    }

    /// GET that must succeed, decoded.
    pub async fn read<T: DeserializeOwned>(&self, token: &str, path: &str) -> T {
        ok(self.get(token, path).await).await
    }

    /// POST that must succeed, decoded.
    pub async fn write<T: DeserializeOwned>(&self, token: &str, path: &str, body: &impl Serialize) -> T {
        ok(self.post(token, path, body).await).await
    }

    pub async fn token(&self, name: &str, role: &str) -> String {
        let created: Value = self.write(&self.admin, "/tokens", &serde_json::json!({"name": name, "role": role})).await;
        created["token"].as_str().expect("token").to_owned()
    }

    /// Registers a dataset of `per_class` fake items for each of `classes`.
    pub async fn register_dataset(&self, name: &str, classes: &[&str], per_class: usize) -> Value {
        let mut items = Vec::new();
        for class in classes {
            for i in 0..per_class {
                let split = match i % 10 {
                    0..=6 => Split::Train,
                    7 | 8 => Split::Val,
                    _ => Split::Test,
                };
                items.push(DatasetItem {
                    path: format!("{class}/{i:04}.png"),
                    sha256: format!("{:064x}", (class.len() * 100_000 + i) as u128 * 7919),
                    bytes: 1000 + i as u64,
                    label: (*class).to_owned(),
                    patient: Some(format!("p{}", i / 2)),
                    split,
                    view: None,
                    acquired_at: None,
                });
            }
        }
        let req = RegisterDataset {
            name: name.to_owned(),
            root: "/data/x".to_owned(),
            split: "70/20/10".to_owned(),
            seed: 1,
            group_by: GroupBy::Patient,
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            items,
            report: vec![],
            pseudonym_key: None,
        };
        self.write(&self.admin, "/datasets", &req).await
    }

    pub async fn submit(&self, yaml: &str) -> Response {
        self.post(&self.admin, "/experiments", &serde_json::json!({"yaml": yaml, "file": "exp.yaml"})).await
    }

    pub async fn run_count(&self) -> u64 {
        let list: Value = self.read(&self.admin, "/runs").await;
        list["total"].as_u64().expect("total")
    }
}

pub async fn ok<T: DeserializeOwned>(response: Response) -> T {
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(status.is_success(), "expected success, got {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("undecodable body ({e}): {text}"))
}

/// Asserts an error status and returns its body.
pub async fn fails(response: Response, status: StatusCode, code: &str) -> ErrorBody {
    let got = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"));
    assert_eq!(body.code, code, "{text}");
    body
}

pub fn spec(name: &str, dataset: &str, sweep: &str) -> String {
    format!(
        "name: {name}\ndataset: {{name: {dataset}}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train:\n  epochs: 2\n  batch_size: 4\n  seed: 1\n  optimizer: {{name: adamw, lr: 0.001}}\n{sweep}"
    )
}

pub const GRID_2X2: &str = "sweep:\n  method: grid\n  parameters:\n    model.arch: {values: [simple_cnn, resnet18]}\n    train.optimizer.lr: {values: [0.01, 0.001]}\n";

pub const CLASSES: [&str; 3] = ["ap_preop", "ap_postop_fusion", "lat_preop"];

/// Runs each listed test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await {
                        super::$name(app).await
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await {
                        super::$name(app).await
                    }
                }
            )*
        }
    };
}

/// Like `on_both_databases!`, with a config tweak.
#[macro_export]
macro_rules! on_both_databases_with {
    ($tweak:expr; $($name:ident),* $(,)?) => {
        mod sqlite_tweaked {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::spawn_app_with($crate::helpers::Backend::Sqlite, $tweak).await {
                        super::$name(app).await
                    }
                }
            )*
        }
        mod postgres_tweaked {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::spawn_app_with($crate::helpers::Backend::Postgres, $tweak).await {
                        super::$name(app).await
                    }
                }
            )*
        }
    };
}

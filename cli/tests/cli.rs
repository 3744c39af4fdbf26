//! The `cobb` binary as users run it: real processes, a real server, exit codes.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const COBB: &str = env!("CARGO_BIN_EXE_cobb");

fn experiments() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments"))
}

/// Runs cobb in `dir` as one site: its pseudonym key is `dir/site.key` (made when missing).
fn cobb(dir: &Path, server: &str, args: &[&str]) -> Output {
    let key = dir.join("site.key");
    data::pseudonym::PseudonymKey::load_or_create(&key).expect("site key");
    cobb_with_key(dir, server, &key, args)
}

fn cobb_with_key(dir: &Path, server: &str, key: &Path, args: &[&str]) -> Output {
    Command::new(COBB)
        .args(args)
        .current_dir(dir)
        .env("COBB_SERVER", server)
        .env("COBB_PSEUDONYM_KEY_FILE", key)
        .env_remove("COBB_TOKEN")
        .output()
        .expect("cobb runs")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `cobb server` in `dir`, on a free port; waits until it answers.
fn start_server(dir: &Path) -> (Server, String) {
    start_server_with(dir, &[])
}

/// `cobb server` on a free port with extra arguments.
fn start_server_with(dir: &Path, extra: &[&str]) -> (Server, String) {
    let port = free_port();
    let child = Command::new(COBB)
        .args(["server", "--bind", &format!("127.0.0.1:{port}")])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let server = Server(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, url)
}

#[test]
fn phantoms_register_with_no_patient_in_two_splits() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = cobb(dir.path(), "http://127.0.0.1:9", &["phantoms", "--out", "ph", "--count", "200", "--size", "64", "--seed", "4"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("wrote 200 phantoms"), "{stdout}");
    let (_server, url) = start_server(dir.path());
    // Pseudonyms need the site's key; without one the registration stops and says how to make it.
    let missing = dir.path().join("keys").join("pseudonym.key");
    let out = cobb_with_key(dir.path(), &url, &missing, &["dataset", "register", "phantoms", "ph"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("cobb dataset key init"), "{stderr}");
    let out = cobb_with_key(dir.path(), &url, &missing, &["dataset", "key", "init", "--json"]);
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(!cobb_with_key(dir.path(), &url, &missing, &["dataset", "key", "init"]).status.success(), "a key is never replaced");
    let out = cobb_with_key(dir.path(), &url, &missing, &["dataset", "register", "phantoms", "ph", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(info["pseudonym_key"], made["id"], "the version records the key's id");
    assert!(!stdout.contains(&std::fs::read_to_string(&missing).expect("key").trim().to_owned()), "never the key");
    assert_eq!(info["items"], 200);
    assert!(info["report"].as_array().expect("report").is_empty(), "{stdout}");
    let counts = info["counts"].as_array().expect("counts");
    assert_eq!(counts.len(), 10);
    assert!(counts.iter().all(|c| c["train"].as_u64() > Some(10) && c["val"].as_u64() > Some(0)), "{stdout}");
    // Same content, same version.
    let again = cobb_with_key(dir.path(), &url, &missing, &["dataset", "register", "phantoms", "ph", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["version"], info["version"]);
    assert_eq!(again["created"], false);
    // Another key gives other pseudonyms: a new version of the dataset with it is refused.
    let out = cobb(dir.path(), &url, &["dataset", "register", "phantoms", "ph", "--seed", "9"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("registered with the pseudonym key"), "{stderr}");
    // No patient in two splits, checked on the stored items.
    let out = cobb(dir.path(), &url, &["dataset", "show", "phantoms", "--items", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let audit: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(audit["patients_in_several_splits"].as_array().map(Vec::len), Some(0));
    let items = audit["items"].as_array().expect("items");
    assert_eq!(items.len(), 200);
    let mut per_patient: std::collections::BTreeMap<String, usize> = Default::default();
    for item in items {
        let patient = item["patient"].as_str().expect("hashed patient id").to_owned();
        assert!(!patient.starts_with("PH"), "raw phantom patient ids never reach the server");
        *per_patient.entry(patient).or_default() += 1;
    }
    assert!(per_patient.values().any(|n| *n > 1), "patients have several images, so grouping matters");
}

/// `cobb models | head -1`: the reader goes away before cobb is done writing; cobb must end
/// quietly (the default SIGPIPE action, as `ls | head -1`), not panic on the failed write.
#[test]
fn a_closed_pipe_ends_cobb_quietly() {
    let mut child = Command::new(COBB).args(["models"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cobb runs");
    // Close the reading end at once: cobb's first write finds no reader.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("cobb ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

/// Waits up to 60 s for `path` to exist.
fn appears(path: &Path) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn cobb_toml_sets_the_data_dir_and_a_flag_overrides_it() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("cobb.toml"), "data_dir = \"from-toml\"\nbind = \"127.0.0.1:0\"\n").expect("toml");
    // cobb.toml's data_dir, not the flag's default, when no flag is given.
    let server = Server(
        Command::new(COBB).arg("server").current_dir(dir.path()).env_remove("COBB_DATA_DIR").stderr(Stdio::null()).spawn().expect("server"),
    );
    assert!(appears(&dir.path().join("from-toml/admin.token")), "the server used cobb.toml's data_dir");
    assert!(!dir.path().join("cobb-data").exists());
    drop(server);
    // A flag beats the file.
    let server = Server(
        Command::new(COBB)
            .args(["server", "--data-dir", "from-flag"])
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .expect("server"),
    );
    assert!(appears(&dir.path().join("from-flag/admin.token")), "--data-dir overrides cobb.toml");
    drop(server);
    // An unknown key is an error that names it.
    std::fs::write(dir.path().join("cobb.toml"), "data_dri = \"x\"\n").expect("toml");
    let out = Command::new(COBB).arg("server").current_dir(dir.path()).output().expect("server");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(text(&out).1.contains("data_dri"), "{}", text(&out).1);
}

#[test]
fn the_server_logs_every_refused_request_with_its_status_and_latency() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let server = Server(
        Command::new(COBB)
            .args(["server", "--bind", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .env_remove("COBB_LOG")
            .env_remove("RUST_LOG")
            .stderr(log)
            .spawn()
            .expect("server"),
    );
    assert!(appears(&dir.path().join("cobb-data/admin.token")));
    let url = format!("http://127.0.0.1:{port}");
    let out = Command::new(COBB).args(["runs", "--token", "cobb_wrong"]).env("COBB_SERVER", &url).output().expect("runs");
    assert!(!out.status.success(), "a wrong token is refused");
    drop(server);
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("log");
    let line = log.lines().find(|l| l.contains("request refused")).unwrap_or_else(|| panic!("no refused request in:\n{log}"));
    assert!(line.contains("status=401") && line.contains("ms=") && line.contains("GET") && line.contains("/api/v1/runs"), "{line}");
}

#[test]
fn dry_run_prints_the_expanded_runs_without_a_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = cobb(dir.path(), "http://127.0.0.1:9", &["submit", "--dry-run", &experiments().join("demo.yaml").display().to_string()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("demo expands to 4 run(s)"), "{stdout}");
    assert!(stdout.contains("model.arch=resnet18 train.optimizer.lr=0.001"), "{stdout}");
    // The TPE + ASHA example explains what happens after submission.
    let out =
        cobb(dir.path(), "http://127.0.0.1:9", &["submit", "--dry-run", &experiments().join("scoliosis-tpe.yaml").display().to_string()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("tpe: 39 more run(s) suggested one at a time") && stdout.contains("the first 10 seeded random draws"),
        "{stdout}"
    );
    assert!(stdout.contains("rungs after epochs 2, 6, 18 of 54"), "{stdout}");
    assert!(stdout.contains("at most 60 distinct configurations"), "{stdout}");
}

#[test]
fn an_invalid_spec_exits_2_naming_file_line_column_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let source = std::fs::read_to_string(experiments().join("smoke.yaml")).expect("smoke.yaml");
    std::fs::write(dir.path().join("bad.yaml"), source.replace("batch_size: 8", "batch_size: -8")).expect("write");
    let out = cobb(dir.path(), "http://127.0.0.1:9", &["submit", "--dry-run", "bad.yaml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: bad.yaml:11:15:"), "{stderr}");
    assert!(first.contains("train.batch_size"), "{stderr}");
}

#[test]
fn an_unreachable_server_exits_1_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = cobb(dir.path(), "http://127.0.0.1:9", &["runs"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cobb server"), "{stderr}");
}

#[test]
fn register_submit_and_list_against_a_real_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, url) = start_server(dir.path());
    // A manifest with patient ids over a few files.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("img")).expect("mkdir");
    let mut csv = String::from("path,label,patient_id\n");
    for (i, label) in ["ap_preop", "lat_preop", "ap_postop_fusion"].iter().cycle().take(30).enumerate() {
        let rel = format!("img/{i}.png");
        let img = image::GrayImage::from_fn(32, 32, |x, y| image::Luma([((x * 7 + y * 3 + i as u32 * 11) % 256) as u8]));
        img.save(data.join(&rel)).expect("png");
        csv.push_str(&format!("{rel},{label},P{}\n", i / 3));
    }
    csv.push_str("img/missing.png,ap_preop,P99\n");
    std::fs::write(data.join("img/broken.png"), b"not really a png").expect("write");
    csv.push_str("img/broken.png,lat_preop,P98\n");
    std::fs::write(data.join("manifest.csv"), csv).expect("csv");

    let out = cobb(dir.path(), &url, &["dataset", "register", "phantoms", "data", "--manifest", "data/manifest.csv", "--seed", "3"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("registered phantoms@v1"), "{stdout}");
    assert!(stderr.contains("img/missing.png: missing"), "{stderr}");
    assert!(stderr.contains("img/broken.png: not an image"), "{stderr}");

    let again = cobb(dir.path(), &url, &["dataset", "register", "phantoms", "data", "--manifest", "data/manifest.csv", "--seed", "3"]);
    assert!(text(&again).0.contains("already registered"), "same content, same version");

    let demo = experiments().join("demo.yaml").display().to_string();
    let out = cobb(dir.path(), &url, &["submit", &demo]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("queued 4 run(s) of `demo`"), "{stdout}");
    assert!(stdout.contains("early stop: asha on val_macro_f1"), "the submission explains its early stopping: {stdout}");
    let out = cobb(dir.path(), &url, &["show", "1"]);
    assert!(text(&out).0.contains("budget     0 configuration(s) of `demo` scored"), "{}", text(&out).0);

    let out = cobb(dir.path(), &url, &["runs", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["total"], 4);
    assert!(list["runs"].as_array().expect("runs").iter().all(|r| r["status"] == "queued"));

    let out = cobb(dir.path(), &url, &["cancel", "s1"]);
    assert!(out.status.success());
    let out = cobb(dir.path(), &url, &["runs", "--status", "cancelled", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["total"], 4);

    // Tokens: a viewer may read but not submit (exit 2, the server's reason).
    let out = cobb(dir.path(), &url, &["token", "create", "--role", "viewer", "--name", "ann"]);
    let token = text(&out).0.trim().to_owned();
    assert!(token.starts_with("cobb_"), "{:?}", text(&out));
    let out = Command::new(COBB)
        .args(["submit", &demo])
        .current_dir(dir.path())
        .env("COBB_SERVER", &url)
        .env("COBB_TOKEN", &token)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("needs the submitter role"), "{}", text(&out).1);

    // Listing and revoking tokens: the revoked one stops working at once.
    let out = cobb(dir.path(), &url, &["token", "create", "--role", "viewer", "--name", "temp", "--expires-in", "1d"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let list = text(&cobb(dir.path(), &url, &["token", "list"])).0;
    assert!(list.contains("ann") && list.contains("temp") && list.contains("valid until"), "{list}");
    assert!(!list.contains(&token), "the list never shows a token");
    let out = cobb(dir.path(), &url, &["token", "revoke", "ann"]);
    assert!(out.status.success() && text(&out).0.contains("revoked viewer token `ann`"), "{:?}", text(&out));
    let out = Command::new(COBB)
        .args(["runs"])
        .current_dir(dir.path())
        .env("COBB_SERVER", &url)
        .env("COBB_TOKEN", &token)
        .output()
        .expect("runs");
    assert!(!out.status.success() && text(&out).1.contains("revoked"), "{}", text(&out).1);
}

#[test]
fn the_demo_trains_its_sweep_and_prints_the_leaderboard() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(COBB)
        .args(["demo", "--exit-when-done", "--images", "120", "--data-dir", "dd"])
        .current_dir(dir.path())
        .output()
        .expect("demo runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("leaderboard"), "{stdout}");
    // Every run ends succeeded or pruned by the demo's ASHA rule (which runs it prunes depends
    // on which reaches a rung first); a pruned run says where and why.
    let status_is = |status: &str| stdout.lines().filter(|l| l.split_whitespace().nth(1) == Some(status)).count();
    let (succeeded, pruned) = (status_is("succeeded"), status_is("pruned"));
    assert!(succeeded >= 1 && succeeded + pruned == 4, "every demo run ends:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("pruned by asha after epoch").count(), pruned, "{stdout}");
    assert!(stdout.contains("per-class precision / recall"), "{stdout}");
    assert!(stdout.contains("lat_postop_tether"), "{stdout}");
    assert!(stdout.contains("dashboard: http://127.0.0.1:") && stdout.contains("/ui"), "{stdout}");
    // The loop closes: the best run is promoted (its test report printed) and sorts a fresh
    // export of phantoms made with another seed.
    assert!(stdout.contains("test split of demo") && stdout.contains("macro avg"), "{stdout}");
    assert!(stdout.contains("batch 1 (succeeded): 200 file(s)") && stdout.contains("predicted class"), "{stdout}");
    assert!(stdout.contains("against the phantoms' true labels: accuracy"), "{stdout}");
    assert!(dir.path().join("dd/incoming-classified.csv").exists() && dir.path().join("dd/incoming-classified-review.html").exists());
    // The metrics are stored as data: the CLI reads them back from the server's database.
    assert!(dir.path().join("dd/cobb.db").exists());
    assert!(dir.path().join("dd/worker/checkpoints").exists());
}

/// `cobb server` with short leases, for the crash tests.
fn start_server_with_short_leases(dir: &Path) -> (Server, String) {
    start_server_with_short_leases_and(dir, &[])
}

fn start_server_with_short_leases_and(dir: &Path, extra: &[&str]) -> (Server, String) {
    start_server_with_short_leases_and_env(dir, extra, &[])
}

fn start_server_with_short_leases_and_env(dir: &Path, extra: &[&str], env: &[(String, String)]) -> (Server, String) {
    let port = free_port();
    let child = Command::new(COBB)
        .args(["server", "--bind", &format!("127.0.0.1:{port}")])
        .args(extra)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("COBB_LEASE_TTL_SECS", "3")
        .env("COBB_HEARTBEAT_SECS", "1")
        .env("COBB_REAP_INTERVAL_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

/// `count` phantoms of `size` px in `dir/ph`, registered as dataset `phantoms`.
fn registered_phantoms(dir: &Path, url: &str, count: usize, size: usize) {
    let out = cobb(dir, url, &["phantoms", "--out", "ph", "--count", &count.to_string(), "--size", &size.to_string()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(cobb(dir, url, &["dataset", "register", "phantoms", "ph"]).status.success());
}

/// Phantoms registered and one 30-epoch run of experiment `name` queued (for the tests that
/// stop a worker in the middle of it).
fn a_long_run_queued(dir: &Path, url: &str, name: &str) {
    registered_phantoms(dir, url, 150, 48);
    let spec = format!(
        "name: {name}\ndataset: {{name: phantoms}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train:\n  epochs: 30\n  batch_size: 16\n  seed: 1\n  optimizer: {{name: adamw, lr: 0.003}}\n"
    );
    std::fs::write(dir.join(format!("{name}.yaml")), spec).expect("spec");
    assert!(cobb(dir, url, &["submit", &format!("{name}.yaml")]).status.success());
}

/// `cobb worker ARGS` against `url` with the server's admin token, stderr captured.
fn spawn_worker(dir: &Path, url: &str, args: &[&str]) -> Child {
    let token = std::fs::read_to_string(dir.join("cobb-data/admin.token")).expect("token");
    Command::new(COBB)
        .arg("worker")
        .args(args)
        .current_dir(dir)
        .env("COBB_SERVER", url)
        .env("COBB_TOKEN", token.trim())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts")
}

fn run_json(dir: &Path, url: &str, id: i64) -> serde_json::Value {
    let out = cobb(dir, url, &["show", &id.to_string(), "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The S3-compatible server `.ci/run` starts (scripts/s3_test_server.py: moto with its
/// authentication on), from COBB_TEST_S3_*; None (with a notice) when unset, a failure when
/// COBB_REQUIRE_S3=1.
struct S3 {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

impl S3 {
    fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(format!("COBB_TEST_S3_{name}")).ok();
        let Some(endpoint) = var("ENDPOINT") else {
            assert!(
                std::env::var("COBB_REQUIRE_S3").as_deref() != Ok("1"),
                "COBB_REQUIRE_S3=1 but COBB_TEST_S3_ENDPOINT is not set: the S3 suite must run"
            );
            eprintln!("notice: S3 suite skipped; start scripts/s3_test_server.py and export what it writes to run it");
            return None;
        };
        let need = |name: &str| var(name).unwrap_or_else(|| panic!("COBB_TEST_S3_{name} is not set"));
        Some(Self {
            endpoint,
            region: need("REGION"),
            bucket: need("BUCKET"),
            key_id: need("ACCESS_KEY_ID"),
            secret: need("SECRET_ACCESS_KEY"),
        })
    }

    /// The `AWS_*` variables a cobb server reads, with `secret` as the secret key.
    fn server_env(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_ACCESS_KEY_ID", self.key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The object names under `prefix` in the bucket, read with the S3 API itself.
    fn list(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .build()
            .expect("an S3 client");
        let listed = tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(store.list(Some(&object_store::path::Path::from(prefix))).try_collect::<Vec<_>>())
            .expect("list the bucket");
        listed.into_iter().map(|o| o.location.to_string()).collect()
    }
}

/// `cobb server` with `env` that must refuse to start: its exit status and stderr.
fn a_server_that_will_not_start(dir: &Path, extra: &[&str], env: &[(String, String)]) -> (Option<i32>, String) {
    let mut child = Command::new(COBB)
        .args(["server", "--bind", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started (or hung) with a store it cannot use");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Wrong credentials and a missing bucket stop the server at start with what to do, before any
/// worker spends hours on a run whose checkpoint could not be stored.
#[test]
fn a_bad_s3_store_stops_the_server_at_start_with_what_to_do() {
    let Some(s3) = S3::from_env() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let artifacts = format!("s3://{}/start-check", s3.bucket);
    let (code, stderr) = a_server_that_will_not_start(dir.path(), &["--artifacts", &artifacts], &s3.server_env("not-the-secret"));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("refused cobb's credentials") && stderr.contains("AWS_SECRET_ACCESS_KEY"), "{stderr}");
    let (code, stderr) = a_server_that_will_not_start(dir.path(), &["--artifacts", "s3://no-such-bucket/cobb"], &s3.server_env(&s3.secret));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("does not exist") && stderr.contains("aws s3 mb"), "{stderr}");
    // The right settings start it.
    let (_server, url) = start_server_with_short_leases_and_env(dir.path(), &["--artifacts", &artifacts], &s3.server_env(&s3.secret));
    assert!(reqwest::blocking::get(format!("{url}/api/v1/health")).expect("health").status().is_success());
}

#[test]
fn a_run_survives_its_worker_being_killed() {
    a_run_survives_a_kill_and_its_checkpoint_serves_the_evaluation(&[], &[], None);
}

/// The same through a real S3-compatible server: the first worker's checkpoints go to the
/// bucket, a second worker on another data dir resumes from them after kill -9, and a third
/// evaluates the promoted run from them; nothing lands in the server's data dir.
#[test]
fn checkpoints_go_through_s3_to_resume_and_to_evaluate() {
    let Some(s3) = S3::from_env() else { return };
    let prefix = format!("cobb-{}", std::process::id());
    let artifacts = format!("s3://{}/{prefix}", s3.bucket);
    a_run_survives_a_kill_and_its_checkpoint_serves_the_evaluation(
        &["--artifacts", &artifacts],
        &s3.server_env(&s3.secret),
        Some((&s3, &prefix)),
    );
}

fn a_run_survives_a_kill_and_its_checkpoint_serves_the_evaluation(extra: &[&str], env: &[(String, String)], s3: Option<(&S3, &str)>) {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, url) = start_server_with_short_leases_and_env(dir.path(), extra, env);
    a_long_run_queued(dir.path(), &url, "crash");

    // Each worker has its own data dir, as on two machines: the second one resumes from the
    // checkpoint the first uploaded to the server's artifact store.
    let worker =
        |name: &str| spawn_worker(dir.path(), &url, &["--name", name, "--exit-when-idle", "--data-dir", &format!("machine-{name}")]);
    let mut first = worker("doomed");
    // Kill -9 once a few epochs are stored.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = run_json(dir.path(), &url, 1);
        if run["latest"]["train_loss"]["step"].as_i64().unwrap_or(-1) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the first worker made no progress: {run}");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    // The lease expires (3 s without heartbeats) and the reaper requeues the run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while run_json(dir.path(), &url, 1)["run"]["status"] != "queued" {
        assert!(Instant::now() < deadline, "the run was not requeued");
        std::thread::sleep(Duration::from_millis(200));
    }

    let second = worker("rescuer").wait_with_output().expect("second worker");
    let log = String::from_utf8_lossy(&second.stderr).into_owned();
    let run = run_json(dir.path(), &url, 1);
    assert_eq!(run["run"]["status"], "succeeded", "{run}\n{log}");
    assert_eq!(run["run"]["attempt"], 2, "{run}");
    let reasons: Vec<&str> = run["leases"].as_array().expect("leases").iter().filter_map(|l| l["end_reason"].as_str()).collect();
    assert_eq!(reasons, ["expired", "completed"], "{run}");
    assert!(log.contains("started (attempt 2)"), "{log}");
    assert!(log.contains("checkpoint file downloaded to resume"), "the rescuer fetched the checkpoint: {log}");
    assert!(!log.contains("epoch 1/30"), "the second attempt resumed from the checkpoint instead of starting over:\n{log}");
    // One stored value per epoch, no duplicates from the two attempts.
    let out = Command::new(COBB).args(["show", "1", "--json"]).current_dir(dir.path()).env("COBB_SERVER", &url).output().expect("show");
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(detail["latest"]["train_loss"]["step"], 29);
    let token = std::fs::read_to_string(dir.path().join("cobb-data/admin.token")).expect("token");
    let series: serde_json::Value = tokio::runtime::Runtime::new().expect("rt").block_on(async {
        reqwest::Client::new()
            .get(format!("{url}/api/v1/runs/1/metrics?key=train_loss"))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    });
    let steps: Vec<i64> = series[0]["points"].as_array().expect("points").iter().filter_map(|p| p["step"].as_i64()).collect();
    assert_eq!(steps, (0..30).collect::<Vec<i64>>(), "every epoch exactly once");
    let Some((s3, prefix)) = s3 else { return };

    // The checkpoints are objects in the bucket, content-addressed; none in the data dir.
    let objects = s3.list(prefix);
    let checkpoints: Vec<&str> = detail["artifacts"].as_array().expect("artifacts").iter().filter_map(|a| a["sha256"].as_str()).collect();
    assert!(!checkpoints.is_empty(), "{detail}");
    for sha in &checkpoints {
        assert!(objects.iter().any(|o| o.ends_with(sha)), "{sha} is not in the bucket: {objects:?}");
    }
    assert!(!objects.iter().any(|o| o.contains("staging/") || o.contains("cobb-probe/")), "leftovers: {objects:?}");
    assert!(!dir.path().join("cobb-data/artifacts").exists(), "artifacts were written to the server's disk");

    // A third machine evaluates the promoted run from the stored checkpoint.
    let out = cobb(dir.path(), &url, &["promote", "1", "--reason", "survived a kill", "--wait-secs", "1"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let evaluator = worker("evaluator").wait_with_output().expect("evaluator");
    let log = String::from_utf8_lossy(&evaluator.stderr).into_owned();
    assert!(evaluator.status.success(), "{log}");
    let out = cobb(dir.path(), &url, &["report", "1"]);
    assert!(out.status.success() && text(&out).0.contains("macro avg"), "{:?}\n{log}", text(&out));
}

#[test]
fn workers_ride_out_a_server_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let serve = || {
        let child = Command::new(COBB)
            .args(["server", "--bind", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Server(child)
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut server = serve();
    registered_phantoms(dir.path(), &url, 150, 48);
    let spec = "name: restart\ndataset: {name: phantoms}\nmodel: {arch: simple_cnn, image_size: 32}\n\
                train:\n  epochs: 20\n  batch_size: 16\n  seed: 1\n  optimizer: {name: adamw, lr: 0.003}\n";
    std::fs::write(dir.path().join("restart.yaml"), spec).expect("spec");
    assert!(cobb(dir.path(), &url, &["submit", "restart.yaml"]).status.success());
    let worker = Command::new(COBB)
        .args(["worker", "--name", "steady", "--exit-when-idle"])
        .current_dir(dir.path())
        .env("COBB_SERVER", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_json(dir.path(), &url, 1)["latest"]["train_loss"]["step"].as_i64().unwrap_or(-1) < 1 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down for two seconds, then back on the same port and database.
    let _ = server.0.kill();
    let _ = server.0.wait();
    std::thread::sleep(Duration::from_secs(2));
    server = serve();
    let output = worker.wait_with_output().expect("worker exits when the queue is empty");
    let run = run_json(dir.path(), &url, 1);
    assert_eq!(run["run"]["status"], "succeeded", "{run}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(run["run"]["attempt"], 1, "the same lease carried the run through the restart");
    assert_eq!(run["latest"]["train_loss"]["step"], 19);
    drop(server);
}

#[test]
fn a_promoted_run_gets_one_test_report_and_an_audited_trail() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, url) = start_server(dir.path());
    registered_phantoms(dir.path(), &url, 120, 40);
    let spec = "name: promo\ndataset: {name: phantoms}\nmodel: {arch: simple_cnn, image_size: 32}\n\
                train:\n  epochs: 2\n  batch_size: 16\n  seed: 1\n  optimizer: {name: adamw, lr: 0.003}\n\
                sweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {values: [0.003, 0.001]}\n\
                promotion:\n  criteria: [{metric: test_accuracy, min: 0.0}, {metric: test_macro_f1, min: 0.999, on: lower_bound}]\n";
    std::fs::write(dir.path().join("promo.yaml"), spec).expect("spec");
    assert!(cobb(dir.path(), &url, &["submit", "promo.yaml"]).status.success());
    let trained = Command::new(COBB)
        .args(["worker", "--name", "trainer", "--exit-when-idle"])
        .current_dir(dir.path())
        .env("COBB_SERVER", &url)
        .output()
        .expect("worker");
    assert!(trained.status.success());
    assert_eq!(run_json(dir.path(), &url, 1)["run"]["status"], "succeeded");

    // Without a worker the evaluation waits, and the CLI says what to do.
    let out = cobb(dir.path(), &url, &["promote", "1", "--reason", "best val macro-F1", "--wait-secs", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("is queued") && stdout.contains("cobb worker"), "{stdout}");

    // A worker evaluates it once; the report is the source study's table.
    let evaluated = Command::new(COBB)
        .args(["worker", "--name", "evaluator", "--exit-when-idle"])
        .current_dir(dir.path())
        .env("COBB_SERVER", &url)
        .output()
        .expect("worker");
    assert!(evaluated.status.success(), "{}", String::from_utf8_lossy(&evaluated.stderr));
    let out = cobb(dir.path(), &url, &["report", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "test split of promo",
        "lat_postop_tether",
        "macro avg",
        "weighted avg",
        "accuracy",
        "-- by view",
        "-- by phase",
        "acceptance criteria (fixed before the test split was opened): 1 of 2 met",
        "PASS  test_accuracy >= 0",
        "FAIL  test_macro_f1 >= 0.999 (lower 95% bound)",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    // The study report: every section, the criteria, the grouping check, placeholders.
    let study = cobb(dir.path(), &url, &["report", "1", "--format", "md"]);
    let (md, err) = text(&study);
    assert!(study.status.success(), "{err}");
    for needle in [
        "# Study report: promo (promotion 1, run 1)",
        "## 2. Data and its flow per split",
        "**0 patient(s) appear in more than one split**",
        "configuration(s)** against its frozen validation split",
        "## 4. Results with 95% intervals",
        "### Sealed test split",
        "Calibration: ECE",
        "| FAIL | `test_macro_f1 >= 0.999 (lower 95% bound)`",
        "## 6. Failure analysis",
        "best checkpoint sha256",
        "(the server's build; Burn 0.22.1 in its workspace)",
        "[TO BE WRITTEN BY THE AUTHORS]",
        "CLAIM",
        "TRIPOD+AI",
    ] {
        assert!(md.contains(needle), "`{needle}` missing from the study report:\n{md}");
    }
    let html = text(&cobb(dir.path(), &url, &["report", "1", "--format", "html"])).0;
    assert!(html.starts_with("<!doctype html>") && html.contains("<h2>4. Results with 95% intervals"), "{html}");
    let csv = text(&cobb(dir.path(), &url, &["report", "1", "--csv"])).0;
    assert!(csv.starts_with("section,class,precision,recall,f1,support"), "{csv}");
    let detail = run_json(dir.path(), &url, 1);
    assert!(detail["latest"]["test_accuracy"]["value"].is_number(), "{detail}");

    // The worker stored its best epoch's validation predictions and the evaluation's test
    // predictions; the tables recomputed from them are the stored ones, and the CLI shows the
    // intervals and the paired comparison.
    let token = std::fs::read_to_string(dir.path().join("cobb-data/admin.token")).expect("token");
    let get = |path: &str| -> serde_json::Value {
        reqwest::blocking::Client::new()
            .get(format!("{url}/api/v1{path}"))
            .bearer_auth(token.trim())
            .send()
            .expect("get")
            .json()
            .expect("json")
    };
    let test_report = get("/promotions/1/report");
    for (split, stored) in [("val", &detail["class_results"]["per_class"]), ("test", &test_report["report"]["per_class"])] {
        let evidence = get(&format!("/runs/1/evidence?split={split}"));
        assert!(evidence["intervals"]["images"].as_u64().is_some_and(|n| n > 0), "{split}: {evidence}");
        assert_eq!(&evidence["recomputed"]["per_class"], stored, "{split}: recomputed from predictions vs stored");
    }
    let shown = text(&cobb(dir.path(), &url, &["show", "1"])).0;
    assert!(shown.contains("validation with 95% intervals") && shown.contains("test with 95% intervals"), "{shown}");
    assert!(shown.contains("macro-F1   ") && shown.contains(" ["), "{shown}");
    let compared = text(&cobb(dir.path(), &url, &["compare", "1", "2"])).0;
    assert!(compared.contains("macro-F1 difference") && compared.contains("McNemar (exact)"), "{compared}");
    assert!(compared.contains("VAL MACRO-F1 [95%]") && compared.matches(" [0.").count() >= 2, "each run's interval: {compared}");
    let reported = text(&cobb(dir.path(), &url, &["report", "1"])).0;
    assert!(reported.contains("test with 95% intervals") && reported.contains("calibration: ECE"), "{reported}");

    // With no worker around, --evaluate-here evaluates in the CLI's own process.
    let out = cobb(dir.path(), &url, &["promote", "2", "--reason", "fewer lateral errors", "--evaluate-here"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("macro avg") && stdout.contains("test split of promo (run 2"), "{stdout}");
    let history = text(&cobb(dir.path(), &url, &["promotions"])).0;
    assert!(history.contains("superseded by 2") && history.contains("current"), "{history}");

    let out = cobb(dir.path(), &url, &["audit", "--verify"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for action in ["promotion.create", "evaluation.start", "evaluation.succeed"] {
        assert!(stdout.contains(action), "{stdout}");
    }
    assert!(stderr.contains("audit chain verified"), "{stderr}");
    // The head hash anchors the chain: checked later, it proves nothing up to it was re-chained.
    let head = stderr.split("head hash ").nth(1).and_then(|r| r.split_whitespace().next()).expect("head hash").to_owned();
    assert_eq!(head.len(), 64, "{stderr}");
    let out = cobb(dir.path(), &url, &["audit", "--anchor", &head]);
    assert!(out.status.success() && text(&out).1.contains("anchor"), "{:?}", text(&out));
    let out = cobb(dir.path(), &url, &["audit", "--anchor", &"0".repeat(64)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not in the chain"), "{}", text(&out).1);
}

/// Preemption is not failure: SIGTERM (Kubernetes eviction, Slurm's time limit) makes a worker
/// give its run back and exit 75; the run is requeued without spending an attempt, and the
/// attempt history says `released (preempted)`. `--exit-when-idle --idle-secs` exits 0.
#[cfg(unix)]
#[test]
fn a_preempted_worker_gives_its_run_back_and_exits_75() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, url) = start_server_with_short_leases(dir.path());
    a_long_run_queued(dir.path(), &url, "preempt");
    let worker = |extra: &[&str]| spawn_worker(dir.path(), &url, &[&["--name", "node-1"], extra].concat());
    let child = worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_json(dir.path(), &url, 1)["latest"]["train_loss"]["step"].as_i64().unwrap_or(-1) < 1 {
        assert!(Instant::now() < deadline, "the worker made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("worker exits");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{log}");
    let run = run_json(dir.path(), &url, 1);
    assert_eq!(run["run"]["status"], "queued", "{run}");
    assert_eq!(run["run"]["attempt"], 0, "a preemption costs no attempt: {run}");
    let reasons: Vec<&str> = run["leases"].as_array().expect("leases").iter().filter_map(|l| l["end_reason"].as_str()).collect();
    assert_eq!(reasons, ["released (preempted)"], "{run}");
    // With nothing left to do, --exit-when-idle --idle-secs 1 waits about a second, then exits 0.
    assert!(cobb(dir.path(), &url, &["cancel", "1"]).status.success());
    let started = Instant::now();
    let idle = worker(&["--exit-when-idle", "--idle-secs", "1"]).wait_with_output().expect("idle worker");
    assert_eq!(idle.status.code(), Some(0), "{}", String::from_utf8_lossy(&idle.stderr));
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited for the idle time");
}

/// Backups: a copy of a running server's database taken while a worker writes to it restores
/// into a fresh data dir, where a server starts and the audit chain verifies (issue 16).
#[test]
fn a_backup_taken_during_ingestion_restores_and_its_audit_chain_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_server, url) = start_server(dir.path());
    a_long_run_queued(dir.path(), &url, "backed");
    let mut worker = spawn_worker(dir.path(), &url, &["--name", "busy", "--exit-when-idle"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_json(dir.path(), &url, 1)["latest"]["train_loss"]["step"].as_i64().unwrap_or(-1) < 1 {
        assert!(Instant::now() < deadline, "no ingestion to back up during");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = cobb(dir.path(), &url, &["backup", "--out", "b.db"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("its audit chain verifies") && stdout.contains("cobb audit --anchor"), "{stdout}");
    let _ = worker.kill();
    let _ = worker.wait();
    let out = cobb(dir.path(), &url, &["restore", "b.db", "--data-dir", "restored"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let again = cobb(dir.path(), &url, &["restore", "b.db", "--data-dir", "restored"]);
    assert_eq!(again.status.code(), Some(2), "nothing already stored is overwritten");
    // A server on the restored copy: the same tokens, runs and a verified chain.
    let (_restored, restored_url) = start_server_with(dir.path(), &["--data-dir", "restored"]);
    let token = std::fs::read_to_string(dir.path().join("cobb-data/admin.token")).expect("token");
    let run = |args: &[&str]| {
        Command::new(COBB)
            .args(args)
            .current_dir(dir.path())
            .env("COBB_SERVER", &restored_url)
            .env("COBB_TOKEN", token.trim())
            .output()
            .expect("cobb")
    };
    let audit = run(&["audit", "--verify"]);
    assert!(audit.status.success(), "{:?}", text(&audit));
    let runs: serde_json::Value = serde_json::from_slice(&run(&["runs", "--json"]).stdout).expect("json");
    assert_eq!(runs["total"], 1);
}

/// Two `cobb server` processes on one PostgreSQL database (and one artifact store), a worker on
/// each and a third given both; one server is killed with kill -9 in the middle of the sweep
/// and the sweep finishes through the other (the third worker moves over): no run held by two
/// live leases at once, no epoch's metrics lost (issue 16).
#[test]
fn two_servers_on_one_postgresql_finish_a_sweep_when_one_is_killed() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let Some(database) = runtime.block_on(server::db::fresh_test_database()) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let shared = ["--database-url", database.as_str(), "--artifacts", "shared-artifacts"];
    let (mut first, url_a) = start_server_with_short_leases_and(dir.path(), &[&shared[..], &["--data-dir", "a"]].concat());
    let token = std::fs::read_to_string(dir.path().join("a/admin.token")).expect("the first server's admin token");
    let (_second, url_b) = start_server_with_short_leases_and(dir.path(), &[&shared[..], &["--data-dir", "b"]].concat());
    let as_admin = |url: &str, args: &[&str]| {
        Command::new(COBB)
            .args(args)
            .current_dir(dir.path())
            .env("COBB_SERVER", url)
            .env("COBB_TOKEN", token.trim())
            .output()
            .expect("cobb")
    };
    assert!(as_admin(&url_a, &["phantoms", "--out", "ph", "--count", "150", "--size", "48"]).status.success());
    let key = dir.path().join("site.key");
    data::pseudonym::PseudonymKey::load_or_create(&key).expect("key");
    let key = key.display().to_string();
    assert!(as_admin(&url_a, &["dataset", "register", "phantoms", "ph", "--key-file", &key]).status.success());
    let spec = "name: pair\ndataset: {name: phantoms}\nmodel: {arch: simple_cnn, image_size: 32}\n\
                train:\n  epochs: 6\n  batch_size: 16\n  seed: 1\n  optimizer: {name: adamw, lr: 0.003}\n\
                sweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {values: [0.01, 0.005, 0.003, 0.002, 0.001, 0.0005]}\n";
    std::fs::write(dir.path().join("pair.yaml"), spec).expect("spec");
    assert!(as_admin(&url_b, &["submit", "pair.yaml"]).status.success());
    let worker = |name: &str, url: &str| {
        Command::new(COBB)
            .args(["worker", "--name", name, "--data-dir", &format!("machine-{name}")])
            .current_dir(dir.path())
            .env("COBB_SERVER", url)
            .env("COBB_TOKEN", token.trim())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log"))
            .spawn()
            .expect("worker")
    };
    // A third worker is given both servers: it uses the first and moves to the second when the
    // first stops answering.
    let (mut on_a, mut on_b, mut on_both) =
        (worker("on-a", &url_a), worker("on-b", &url_b), worker("on-both", &format!("{url_a},{url_b}")));
    let runs = |url: &str| -> serde_json::Value { serde_json::from_slice(&as_admin(url, &["runs", "--json"]).stdout).unwrap_or_default() };
    let done =
        |list: &serde_json::Value, status: &str| list["runs"].as_array().map_or(0, |r| r.iter().filter(|r| r["status"] == status).count());
    // kill -9 the first server once the sweep is under way on both and the first server's worker
    // holds a run (between two runs it would hold no lease that could expire).
    let deadline = Instant::now() + Duration::from_secs(180);
    let on_a_holds_a_run = |list: &serde_json::Value| {
        list["runs"].as_array().is_some_and(|r| r.iter().any(|r| r["status"] == "running" && r["worker"] == "on-a"))
    };
    loop {
        let list = runs(&url_b);
        if done(&list, "succeeded") >= 1 && on_a_holds_a_run(&list) {
            break;
        }
        assert!(Instant::now() < deadline, "no run finished while the first server's worker held one: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    first.0.kill().expect("kill -9 the first server");
    let _ = first.0.wait();
    let killed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    while done(&runs(&url_b), "succeeded") < 6 {
        assert!(Instant::now() < deadline, "the sweep did not finish through the second server: {}", runs(&url_b));
        std::thread::sleep(Duration::from_millis(300));
    }
    for worker in [&mut on_a, &mut on_b, &mut on_both] {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let (mut workers, mut expired, mut both_after_kill) = (std::collections::BTreeSet::new(), 0, 0);
    for id in 1..=6 {
        let run: serde_json::Value =
            serde_json::from_slice(&as_admin(&url_b, &["show", &id.to_string(), "--json"]).stdout).expect("the run");
        for lease in run["leases"].as_array().into_iter().flatten() {
            workers.insert(lease["worker"].as_str().unwrap_or_default().to_owned());
            expired += usize::from(lease["end_reason"] == "expired");
            both_after_kill += usize::from(
                lease["worker"] == "on-both" && lease["end_reason"] == "completed" && lease["ended_at"].as_i64().unwrap_or(0) > killed_at,
            );
        }
        // Leases of one run never overlap: each ended before the next began.
        let leases = run["leases"].as_array().expect("leases");
        for pair in leases.windows(2) {
            let ended = pair[0]["ended_at"].as_i64().expect("an earlier lease ended");
            assert!(ended <= pair[1]["created_at"].as_i64().expect("created"), "run {id} held twice: {run}");
        }
        // Every epoch's metrics are there, once.
        let series = runtime.block_on(async {
            reqwest::Client::new()
                .get(format!("{url_b}/api/v1/runs/{id}/metrics?key=train_loss"))
                .bearer_auth(token.trim())
                .send()
                .await
                .expect("get")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        });
        let steps: Vec<i64> = series[0]["points"].as_array().expect("points").iter().map(|p| p["step"].as_i64().expect("step")).collect();
        assert_eq!(steps, (0..6).collect::<Vec<i64>>(), "run {id}");
    }
    assert!(workers.contains("on-a") && workers.contains("on-b"), "both servers handed out runs: {workers:?}");
    assert!(expired >= 1, "the killed server's run was taken over after its lease expired");
    let log = std::fs::read_to_string(dir.path().join("on-both.log")).unwrap_or_default();
    assert!(log.contains("trying the next one"), "the worker given both servers did not move to the second:\n{log}");
    assert!(both_after_kill >= 1, "the worker given both servers finished no run through the second: {workers:?}\n{log}");
}

/// A blocking GET of the API with the server's admin token (what the CLI does not print).
fn api_get(dir: &Path, url: &str, path: &str) -> serde_json::Value {
    let token = std::fs::read_to_string(dir.join("cobb-data/admin.token")).expect("token");
    reqwest::blocking::Client::new()
        .get(format!("{url}/api/v1{path}"))
        .bearer_auth(token.trim())
        .send()
        .and_then(reqwest::blocking::Response::json)
        .expect("api answers")
}

#[test]
fn the_promoted_model_sorts_a_new_export_and_its_review_becomes_the_next_version() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (_server, url) = start_server(d);
    registered_phantoms(d, &url, 500, 48);
    let spec = "name: sort\ndataset: {name: phantoms}\nmodel: {arch: simple_cnn, image_size: 48}\n\
                train:\n  epochs: 12\n  batch_size: 16\n  seed: 1\n  optimizer: {name: adamw, lr: 0.003}\n\
                promotion: {auto_accept_precision: 0.9}\n";
    std::fs::write(d.join("sort.yaml"), spec).expect("spec");
    assert!(cobb(d, &url, &["submit", "sort.yaml"]).status.success());
    let trained = Command::new(COBB).args(["worker", "--exit-when-idle"]).current_dir(d).env("COBB_SERVER", &url).output().expect("worker");
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let out = cobb(d, &url, &["promote", "1", "--reason", "the only run", "--evaluate-here"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // The report shows the thresholds the promotion fixed for the target precision.
    assert!(stdout.contains("auto-accept thresholds for cobb classify") && stdout.contains("target precision 0.9"), "{stdout}");

    // A fresh export: phantoms of another seed, the true labels set aside, plus files that
    // cannot be classified.
    let out = cobb(d, &url, &["phantoms", "--out", "new", "--count", "300", "--size", "48", "--seed", "99"]);
    assert!(out.status.success(), "{:?}", text(&out));
    std::fs::rename(d.join("new/manifest.csv"), d.join("truth.csv")).expect("truth aside");
    let some_png = std::fs::read_dir(d.join("new/ap_preop")).expect("dir").next().expect("a file").expect("entry").path();
    let bytes = std::fs::read(&some_png).expect("png");
    std::fs::write(d.join("new/truncated.png"), &bytes[..bytes.len() / 2]).expect("truncated");
    std::fs::write(d.join("new/corrupt.dcm"), [vec![0u8; 128], b"DICM".to_vec(), vec![0xFF; 64]].concat()).expect("corrupt");
    std::fs::write(d.join("new/notes.txt"), "export notes\n").expect("notes");

    let out = cobb(d, &url, &["classify", "new", "--experiment", "sort", "--out", "sorted.csv"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("batch 1 (succeeded): 303 file(s)") && stdout.contains("images/s"), "{stdout}");
    assert!(stdout.contains("predicted class") && stdout.contains("lat_postop_tether"), "{stdout}");
    assert!(d.join("sorted-review.html").exists());

    // The CSV: every file, the skipped ones with their reason; accuracy near validation's.
    let truth: std::collections::HashMap<String, String> = std::fs::read_to_string(d.join("truth.csv"))
        .expect("truth")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(',').map(|(p, rest)| (p.to_owned(), rest.split(',').next().unwrap_or("").to_owned())))
        .collect();
    let csv = std::fs::read_to_string(d.join("sorted.csv")).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(header[..4], ["path", "sha256", "predicted", "confidence"]);
    assert_eq!(header.len(), 4 + 10 + 2, "{header:?}");
    let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(str::to_owned).collect()).collect();
    assert_eq!(rows.len(), 303);
    for name in ["truncated.png", "corrupt.dcm", "notes.txt"] {
        let row = rows.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("{name} listed"));
        assert_eq!(row[14], "skipped", "{row:?}");
        assert!(!row[15].is_empty(), "{name} has its reason");
    }
    let classified: Vec<&Vec<String>> = rows.iter().filter(|r| r[14] != "skipped").collect();
    assert_eq!(classified.len(), 300);
    let right = classified.iter().filter(|r| truth.get(&r[0]) == Some(&r[2])).count();
    let accuracy = right as f64 / 300.0;
    let val: serde_json::Value = api_get(d, &url, "/runs/1/evidence?split=val");
    let val_accuracy = val["recomputed"]["accuracy"].as_f64().expect("validation accuracy");
    eprintln!("accuracy on the new export {accuracy:.3}, on validation {val_accuracy:.3}");
    assert!(val_accuracy > 0.5, "the model learned something: validation accuracy {val_accuracy:.3}");
    assert!((accuracy - val_accuracy).abs() <= 0.05, "new export {accuracy:.3}, validation {val_accuracy:.3}");

    // A viewer cannot review; a reviewer corrects a label and confirms another.
    let viewer = cobb(d, &url, &["token", "create", "--role", "viewer", "--name", "v", "--json"]);
    let viewer: serde_json::Value = serde_json::from_slice(&viewer.stdout).expect("token json");
    let as_viewer = Command::new(COBB)
        .args(["review", "1", "--set", &format!("{}=lat_preop", classified[0][0])])
        .current_dir(d)
        .env("COBB_SERVER", &url)
        .env("COBB_TOKEN", viewer["token"].as_str().expect("token"))
        .output()
        .expect("review");
    assert!(!as_viewer.status.success());
    assert!(String::from_utf8_lossy(&as_viewer.stderr).contains("reviewer"), "{:?}", text(&as_viewer));
    let (first, second) = (&classified[0][0], &classified[1][0]);
    let corrected = if classified[0][2] == "lat_preop" { "ap_preop" } else { "lat_preop" };
    std::fs::write(d.join("fix.csv"), format!("path,label\n{second},{}\n", classified[1][2])).expect("corrections");
    let out = cobb(d, &url, &["review", "1", "--set", &format!("{first}={corrected}")]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = cobb(d, &url, &["review", "1", "--corrections", "fix.csv"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let listed = text(&cobb(d, &url, &["review", "1", "--all"])).0;
    assert!(listed.contains(&format!("{corrected} (admin")) || listed.contains(corrected), "{listed}");

    // The export registers as the next version of the dataset, with the corrected label.
    let out = cobb(d, &url, &["review", "1", "--export", "next.csv"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("cobb dataset register NAME"), "{stdout}");
    let manifest = std::fs::read_to_string(d.join("next.csv")).expect("manifest");
    assert!(manifest.contains(&format!("{first},{corrected},")), "{manifest}");
    assert!(!manifest.contains("notes.txt"));
    let out = cobb(d, &url, &["dataset", "register", "phantoms", "new", "--manifest", "next.csv", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let version: serde_json::Value = serde_json::from_str(&stdout).expect("version json");
    assert_eq!(version["number"], 2, "{version}");
    let items = api_get(d, &url, "/datasets/phantoms/items?version=v2");
    let items = items["items"].as_array().expect("items").clone();
    let item = items.iter().find(|i| i["path"] == first.as_str()).expect("the corrected image");
    assert_eq!(item["label"], corrected);

    // A checkpoint changed on disk after promotion is refused, before any image is read.
    let blobs = d.join("cobb-data/worker/blobs");
    let blob = std::fs::read_dir(&blobs).expect("blobs").next().expect("the cached checkpoint").expect("entry").path();
    let mut tampered = std::fs::read(&blob).expect("checkpoint");
    let last = tampered.len() - 1;
    tampered[last] ^= 0xFF;
    std::fs::write(&blob, tampered).expect("tamper");
    let out = cobb(d, &url, &["classify", "new", "--experiment", "sort", "--out", "again.csv"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("refused") && stderr.contains("sha256"), "{stderr}");
    let batch = api_get(d, &url, "/classifications/2");
    assert_eq!(batch["batch"]["status"], "failed");
    assert_eq!(batch["batch"]["images"], 0, "nothing was classified with it");
}

#[test]
fn a_worker_classifies_only_under_its_classify_root() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let (_server, url) = start_server(d);
    registered_phantoms(d, &url, 120, 40);
    let spec = "name: fleet\ndataset: {name: phantoms}\nmodel: {arch: simple_cnn, image_size: 32}\n\
                train:\n  epochs: 1\n  batch_size: 16\n  seed: 1\n  optimizer: {name: adamw, lr: 0.003}\n";
    std::fs::write(d.join("fleet.yaml"), spec).expect("spec");
    assert!(cobb(d, &url, &["submit", "fleet.yaml"]).status.success());
    let out = Command::new(COBB).args(["worker", "--exit-when-idle"]).current_dir(d).env("COBB_SERVER", &url).output().expect("worker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cobb(d, &url, &["promote", "1", "--reason", "r", "--evaluate-here"]).status.success());
    std::fs::create_dir_all(d.join("exports/a")).expect("exports");
    std::fs::create_dir_all(d.join("elsewhere")).expect("elsewhere");
    for (i, entry) in std::fs::read_dir(d.join("ph/lat_preop")).expect("phantoms").take(5).enumerate() {
        let from = entry.expect("entry").path();
        std::fs::copy(&from, d.join(format!("exports/a/{i}.png"))).expect("copy");
        std::fs::copy(&from, d.join(format!("elsewhere/{i}.png"))).expect("copy");
    }
    let exports = d.join("exports").canonicalize().expect("path");
    let elsewhere = d.join("elsewhere").canonicalize().expect("path");
    // Queued for a worker: a worker without --classify-root leaves it alone.
    for path in [&exports, &elsewhere] {
        let out = cobb(d, &url, &["classify", path.to_str().expect("utf-8"), "--experiment", "fleet", "--on-worker"]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let out = Command::new(COBB).args(["worker", "--exit-when-idle"]).current_dir(d).env("COBB_SERVER", &url).output().expect("worker");
    assert!(out.status.success());
    assert_eq!(api_get(d, &url, "/classifications/1")["batch"]["status"], "queued");
    // A worker with a root classifies under it and refuses the other folder.
    let out = Command::new(COBB)
        .args(["worker", "--exit-when-idle", "--name", "pacs-1", "--classify-root", exports.to_str().expect("utf-8")])
        .current_dir(d)
        .env("COBB_SERVER", &url)
        .output()
        .expect("worker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inside = api_get(d, &url, "/classifications/1");
    assert_eq!(inside["batch"]["status"], "succeeded", "{inside}");
    assert_eq!((inside["batch"]["images"].as_u64(), inside["batch"]["worker"].as_str()), (Some(5), Some("pacs-1")));
    assert!(d.join("cobb-data/worker/classify/batch-1.csv").exists() && d.join("cobb-data/worker/classify/batch-1-review.html").exists());
    let outside = api_get(d, &url, "/classifications/2");
    assert_eq!(outside["batch"]["status"], "failed", "{outside}");
    assert!(outside["batch"]["error"].as_str().unwrap_or_default().contains("--classify-root"), "{outside}");
    assert_eq!(outside["batch"]["images"], 0);
}

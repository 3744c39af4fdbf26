//! Regression tests for the hardening issue: each failed before its fix.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, CLASSES, GRID_2X2, TestApp, fails, ok, spawn_app, spec};
use crate::promotions::finish_a_run;

crate::on_both_databases!(
    a_worker_can_store_only_matrices_over_the_versions_classes,
    a_huge_or_deeply_nested_spec_is_refused_before_parsing,
    a_model_is_evaluated_on_the_test_split_at_most_once,
    a_revoked_token_stops_working_at_once,
    an_expired_token_stops_working,
    dashboards_send_security_headers_and_redirect_safely,
    a_lease_is_its_tokens_and_viewers_never_see_lease_ids,
    item_paths_that_leave_the_dataset_root_are_refused,
    an_upload_on_a_made_up_lease_is_refused_before_its_body_is_read,
    logins_from_other_sites_are_refused_and_guessing_slows_down,
    a_sweep_stores_its_spec_once_and_free_text_is_bounded,
    an_upload_streams_to_the_store_as_it_arrives,
    the_api_serves_no_pseudonym_secret_and_versions_keep_one_key,
    a_large_registration_does_not_hold_the_write_connection,
    a_workers_free_text_is_bounded,
);

async fn a_worker_can_store_only_matrices_over_the_versions_classes(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let lease: Value = ok(app.post(&app.admin, "/leases", &json!({"worker": "w"})).await).await;
    let (id, run) = (lease["lease_id"].as_str().expect("lease"), lease["run_id"].as_i64().expect("run"));
    // 1,000 classes (a 2 MB body) made the next view of the run page abort the server.
    let names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let bomb = json!({"lease_id": id, "epoch": 0, "confusion": {"classes": names, "counts": vec![vec![0u64; 1000]; 1000]}});
    let body = fails(app.post(&app.admin, &format!("/runs/{run}/results"), &bomb).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(body.message.contains("dataset version's 3 classes"), "{}", body.message);
    let renamed =
        json!({"lease_id": id, "epoch": 0, "confusion": {"classes": ["a", "b", "c"], "counts": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}});
    fails(app.post(&app.admin, &format!("/runs/{run}/results"), &renamed).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    // A made-up lease is refused as such, whatever the matrix.
    let stranger = json!({"lease_id": "made-up", "epoch": 0, "confusion": {"classes": names, "counts": vec![vec![0u64; 1000]; 1000]}});
    fails(app.post(&app.admin, &format!("/runs/{run}/results"), &stranger).await, StatusCode::CONFLICT, "lease_lost").await;
    let overflow =
        json!({"lease_id": id, "epoch": 0, "confusion": {"classes": CLASSES, "counts": [[u64::MAX, 1, 0], [0, 0, 0], [0, 0, 0]]}});
    fails(app.post(&app.admin, &format!("/runs/{run}/results"), &overflow).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let fine = json!({"lease_id": id, "epoch": 0, "confusion": {"classes": CLASSES, "counts": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}});
    assert_eq!(app.post(&app.admin, &format!("/runs/{run}/results"), &fine).await.status(), StatusCode::NO_CONTENT);
    // A metric at step i64::MAX made the sweep page answer 500 forever.
    let far = json!({"lease_id": id, "metrics": [{"key": "val_loss", "step": i64::MAX, "value": 1.0}]});
    fails(app.post(&app.admin, &format!("/runs/{run}/metrics"), &far).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    assert_eq!(detail["class_results"]["per_class"].as_array().map(Vec::len), Some(3));
}

async fn a_huge_or_deeply_nested_spec_is_refused_before_parsing(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let started = std::time::Instant::now();
    let deep = format!("name: e\ndescription: {}{}\n", "[".repeat(80_000), "]".repeat(80_000));
    let body = fails(app.post(&app.admin, "/experiments", &json!({"yaml": deep})).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    assert!(body.message.contains("nest deeper"), "{}", body.message);
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "refused without parsing: {:?}", started.elapsed());
    let long = spec("e", "d", "").replace("name: e\n", &format!("name: e\ndescription: {}\n", "x".repeat(300 * 1024)));
    let body = fails(app.post(&app.admin, "/experiments", &json!({"yaml": long})).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    assert!(body.message.contains("at most 256 KB"), "{}", body.message);
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
}

/// The run ids of every evaluation job a worker can lease now (each left running).
async fn lease_all_evaluations(app: &TestApp, worker: &str) -> Vec<i64> {
    let mut runs = Vec::new();
    loop {
        let response = app.post(worker, "/leases", &json!({"worker": "w9", "kinds": ["evaluate"]})).await;
        if response.status() == StatusCode::NO_CONTENT {
            return runs;
        }
        let job: Value = ok(response).await;
        runs.push(job["run_id"].as_i64().expect("run"));
    }
}

async fn a_model_is_evaluated_on_the_test_split_at_most_once(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("w", "worker").await;
    let (a, b) = (finish_a_run(&app, &worker).await, finish_a_run(&app, &worker).await);
    let why = json!({"reason": "r"});
    // Promote a, then b (a's queued evaluation is cancelled), then a again.
    ok::<Value>(app.post(&app.admin, &format!("/runs/{a}/promote"), &why).await).await;
    ok::<Value>(app.post(&app.admin, &format!("/runs/{b}/promote"), &why).await).await;
    let again: Value = ok(app.post(&app.admin, &format!("/runs/{a}/promote"), &why).await).await;
    assert_eq!(again["status"], "queued");
    assert_eq!(lease_all_evaluations(&app, &worker).await, vec![a], "run a's model is handed out once, b's not at all");
    // While a's evaluation runs, promoting b then a again waits for it instead of a second one.
    ok::<Value>(app.post(&app.admin, &format!("/runs/{b}/promote"), &why).await).await;
    let body = fails(app.post(&app.admin, &format!("/runs/{a}/promote"), &why).await, StatusCode::CONFLICT, "conflict").await;
    assert!(body.message.contains("being evaluated"), "{}", body.message);
    assert_eq!(lease_all_evaluations(&app, &worker).await, vec![b]);
    let log: Value = app.read(&app.admin, "/audit?experiment=e").await;
    let cancels = log["events"].as_array().expect("events").iter().filter(|e| e["action"] == "evaluation.cancel").count();
    assert_eq!(cancels, 2, "each superseded queued evaluation is cancelled, with an audit event");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_its_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite app");
    let db = app.database_url.trim_start_matches("sqlite://").split('?').next().expect("path").to_owned();
    let db = std::path::Path::new(&db);
    let dir = db.parent().expect("data dir");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "data dir");
    assert_eq!(mode(&dir.join("admin.token")), 0o600, "admin.token");
    assert_eq!(mode(db), 0o600, "cobb.db");
}

async fn a_revoked_token_stops_working_at_once(app: TestApp) {
    let second: Value = ok(app.post(&app.admin, "/tokens", &json!({"name": "ops", "role": "admin"})).await).await;
    let ops = second["token"].as_str().expect("token").to_owned();
    let viewer = app.token("v", "viewer").await;
    // Used once (and so cached) before it is revoked.
    let me: Value = app.read(&ops, "/whoami").await;
    assert_eq!(me["name"], "ops");
    fails(app.get(&viewer, "/tokens").await, StatusCode::FORBIDDEN, "forbidden").await;
    let listed: Vec<Value> = app.read(&app.admin, "/tokens").await;
    assert!(listed.iter().all(|t| t.get("token").is_none() && t.get("token_hash").is_none()), "never the token or its hash");
    let revoked: Value = app
        .http
        .delete(format!("{}/tokens/ops", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .expect("delete")
        .json()
        .await
        .expect("json");
    assert!(revoked["revoked_at"].is_i64(), "{revoked}");
    // The revoked admin token can neither read nor make a new admin token.
    fails(app.get(&ops, "/whoami").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    fails(app.post(&ops, "/tokens", &json!({"name": "backdoor", "role": "admin"})).await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let again = app.http.delete(format!("{}/tokens/ops", app.base)).bearer_auth(&app.admin).send().await.expect("delete");
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let log: Value = app.read(&app.admin, "/audit").await;
    assert!(log["events"].as_array().expect("events").iter().any(|e| e["action"] == "token.revoke" && e["details"]["name"] == "ops"));
}

async fn an_expired_token_stops_working(app: TestApp) {
    let made: Value = ok(app.post(&app.admin, "/tokens", &json!({"name": "brief", "role": "viewer", "expires_in_secs": 1})).await).await;
    assert!(made["expires_at"].is_i64(), "{made}");
    let brief = made["token"].as_str().expect("token").to_owned();
    let _: Value = app.read(&brief, "/whoami").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200) + server::state::TOKEN_CACHE_TTL).await;
    fails(app.get(&brief, "/whoami").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn dashboards_send_security_headers_and_redirect_safely(app: TestApp) {
    let root = app.base.trim_end_matches("/api/v1").to_owned();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    // What the README and the demo print.
    for path in ["/ui", "/ui/"] {
        let r = http.get(format!("{root}{path}")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()["location"], "/ui/experiments", "{path}");
    }
    let r = http.get(format!("{root}/ui/login")).send().await.expect("get");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let csp = r.headers()["content-security-policy"].to_str().expect("csp").to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let api = http.get(format!("{}/health", app.base)).send().await.expect("get");
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");
    // CR/LF in `next` gave a 500 after storing a session; now it falls back to a safe page.
    let form = [("token", app.admin.as_str()), ("next", "/ui/audit\r\nSet-Cookie: evil=1")];
    let r = http.post(format!("{root}/ui/login")).form(&form).send().await.expect("login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/ui/experiments");
    let cookie = r.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // Behind a TLS proxy (docs/security.md) the session cookie is never sent over plain HTTP.
    let form = [("token", app.admin.as_str()), ("next", "/ui/audit")];
    let r = http.post(format!("{root}/ui/login")).header("X-Forwarded-Proto", "https").form(&form).send().await.expect("login");
    let cookie = r.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

async fn a_lease_is_its_tokens_and_viewers_never_see_lease_ids(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let (mine, other, viewer) = (app.token("w1", "worker").await, app.token("w2", "worker").await, app.token("v", "viewer").await);
    let lease: Value = ok(app.post(&mine, "/leases", &json!({"worker": "box-1"})).await).await;
    let (id, run) = (lease["lease_id"].as_str().expect("lease").to_owned(), lease["run_id"].as_i64().expect("run"));
    // Another worker token that learned the id can do nothing with it.
    let batch = json!({"lease_id": id, "metrics": [{"key": "val_loss", "step": 0, "value": 1.0}]});
    fails(app.post(&other, &format!("/runs/{run}/metrics"), &batch).await, StatusCode::CONFLICT, "lease_lost").await;
    fails(app.post(&other, &format!("/leases/{id}/heartbeat"), &json!({})).await, StatusCode::CONFLICT, "lease_lost").await;
    fails(app.get(&other, &format!("/leases/{id}/items")).await, StatusCode::CONFLICT, "lease_lost").await;
    let done = json!({"outcome": "succeeded", "best_epoch": 0});
    fails(app.post(&other, &format!("/leases/{id}/complete"), &done).await, StatusCode::CONFLICT, "lease_lost").await;
    // Its holder goes on.
    let accepted: Value = app.write(&mine, &format!("/runs/{run}/metrics"), &batch).await;
    assert_eq!(accepted["accepted"], 1);
    // Viewers see the attempt history without lease ids; workers and admins see them.
    let seen: Value = app.read(&viewer, &format!("/runs/{run}")).await;
    assert!(seen["leases"][0].get("id").is_none(), "{}", seen["leases"]);
    assert_eq!(seen["leases"][0]["worker"], "box-1");
    let admin: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    assert_eq!(admin["leases"][0]["id"], id.as_str());
    let page = crate::helpers::ok::<Value>(app.get(&viewer, &format!("/jobs?run={run}")).await).await;
    let job = page[0]["id"].as_i64().expect("job");
    let history: Value = app.read(&viewer, &format!("/jobs/{job}")).await;
    assert!(history["leases"][0].get("id").is_none(), "{history}");
    let _: Value = app.write(&mine, &format!("/leases/{id}/complete"), &done).await;
}

async fn item_paths_that_leave_the_dataset_root_are_refused(app: TestApp) {
    for path in ["../../etc/passwd", "/etc/passwd", "a/../../b.png", "C:\\x.png", "a//b.png"] {
        let item = json!({"path": path, "sha256": "ab".repeat(32), "bytes": 1, "label": CLASSES[0], "split": "train"});
        let request = json!({"name": "evil", "root": "/data", "split": "70/15/15", "seed": 0, "group_by": "none",
            "classes": CLASSES, "items": [item], "report": []});
        let body = fails(app.post(&app.admin, "/datasets", &request).await, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(body.message.contains("leaves the dataset root"), "{path}: {}", body.message);
    }
    let datasets: Vec<Value> = app.read(&app.admin, "/datasets").await;
    assert!(datasets.is_empty(), "nothing was registered");
}

async fn an_upload_on_a_made_up_lease_is_refused_before_its_body_is_read(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let worker = app.token("w", "worker").await;
    // Announce 1 GiB, send 64 KiB, and wait for the answer: the server must not wait for
    // (or hold) the rest before refusing the lease.
    let address = app.base.trim_start_matches("http://").split('/').next().expect("host:port").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "PUT /api/v1/runs/1/blobs?lease_id=made-up&kind=last_checkpoint HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {worker}\r\nContent-Length: 1073741824\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(&vec![0u8; 64 * 1024]).await.expect("some body");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("answered without the rest of the body")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 409"), "{text}");
    assert!(text.contains("lease_lost"), "{text}");
}

async fn logins_from_other_sites_are_refused_and_guessing_slows_down(app: TestApp) {
    let root = app.base.trim_end_matches("/api/v1").to_owned();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let login = |origin: &str, token: &str| {
        let form = [("token", token.to_owned()), ("next", "/ui/audit".to_owned())];
        http.post(format!("{root}/ui/login")).header("Origin", origin.to_owned()).form(&form).send()
    };
    // Login CSRF: a form posted from another site does not log the browser in.
    let r = login("http://evil.example", &app.admin).await.expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    let r = login(&root, &app.admin).await.expect("post");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // Guessing tokens: the first failures answer at once, later ones more and more slowly.
    for _ in 0..5 {
        assert_eq!(login(&root, "cobb_guess").await.expect("post").status(), StatusCode::UNAUTHORIZED);
    }
    let started = std::time::Instant::now();
    assert_eq!(login(&root, "cobb_guess").await.expect("post").status(), StatusCode::UNAUTHORIZED);
    assert!(started.elapsed() >= std::time::Duration::from_millis(700), "the sixth failure waits: {:?}", started.elapsed());
}

/// The bytes the database holds, as the database counts them.
async fn database_bytes(app: &TestApp) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let db = sea_orm::Database::connect(&app.database_url).await.expect("connect");
    let sql = match app.backend {
        Backend::Sqlite => "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()",
        Backend::Postgres => "SELECT pg_database_size(current_database()) AS n",
    };
    let row = db.query_one(Statement::from_string(db.get_database_backend(), sql)).await.expect("size").expect("row");
    let n: i64 = row.try_get("", "n").expect("n");
    db.close().await.expect("close");
    n
}

async fn a_sweep_stores_its_spec_once_and_free_text_is_bounded(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    // A 9 KB description is refused (they were unbounded).
    let long = spec("e", "d", "").replace("name: e\n", &format!("name: e\ndescription: {}\n", "x".repeat(9 * 1024)));
    let body = fails(app.post(&app.admin, "/experiments", &json!({"yaml": long})).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    assert!(body.message.contains("at most 8 KB"), "{}", body.message);
    // Every run stored a full copy of the spec: 400 runs x an 8 KB description was 3.2 MB.
    let sweep = "sweep:\n  method: random\n  max_runs: 400\n  parameters:\n    train.optimizer.lr: {distribution: log_uniform, min: 0.0001, max: 0.1}\n";
    let described = spec("e", "d", sweep).replace("name: e\n", &format!("name: e\ndescription: {}\n", "y".repeat(8 * 1024 - 16)));
    let before = database_bytes(&app).await;
    let submitted: Value = ok(app.submit(&described).await).await;
    let grown = database_bytes(&app).await - before;
    assert_eq!(submitted["runs"].as_array().map(Vec::len), Some(400));
    assert!(grown < 1_500_000, "a 400-run sweep grew the database by {grown} bytes");
    // Each run's config is still whole: the spec with the run's params set.
    let run = submitted["runs"][7]["run_id"].as_i64().expect("run");
    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    let config = &detail["config"];
    assert_eq!(config["description"].as_str().map(str::len), Some(8 * 1024 - 16));
    assert_eq!(config["train"]["optimizer"]["lr"], submitted["runs"][7]["params"]["train.optimizer.lr"]);
    assert!(config["dataset"]["version"].as_str().is_some_and(|v| v.len() == 64), "{config}");
    assert!(config.get("sweep").is_none_or(Value::is_null), "{config}");
    // A worker leases the run with the same config.
    let lease: Value = ok(app.post(&app.admin, "/leases", &json!({"worker": "w"})).await).await;
    let leased: Value = app.read(&app.admin, &format!("/runs/{}", lease["run_id"])).await;
    assert_eq!(lease["config"], leased["config"], "the lease carries the derived config");
}

/// Bytes staged in the local artifact store by uploads still in flight.
fn staged_bytes(app: &TestApp) -> u64 {
    let dir = app.data_dir().join("artifacts").join("staging");
    std::fs::read_dir(dir).map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

async fn an_upload_streams_to_the_store_as_it_arrives(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let worker = app.token("w", "worker").await;
    let lease: Value = ok(app.post(&worker, "/leases", &json!({"worker": "w"})).await).await;
    let (id, run) = (lease["lease_id"].as_str().expect("lease"), lease["run_id"].as_i64().expect("run"));
    // Announce 32 MB and send half: the first parts must reach the store before the rest
    // arrives (the whole body was buffered in memory first).
    let total = 32usize << 20;
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let address = app.base.trim_start_matches("http://").split('/').next().expect("host:port").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "PUT /api/v1/runs/{run}/blobs?lease_id={id}&kind=last_checkpoint HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {worker}\r\nContent-Length: {total}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(&body[..total / 2]).await.expect("half the body");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while staged_bytes(&app) < 5 << 20 {
        assert!(std::time::Instant::now() < deadline, "nothing reached the store while the upload was in flight");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    socket.write_all(&body[total / 2..]).await.expect("the rest");
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), socket.read(&mut buf)).await.expect("answered").expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
    assert!(text.contains(&sha), "stored under its sha256: {text}");
    assert_eq!(staged_bytes(&app), 0, "nothing left staged");
    let stored = app.data_dir().join("artifacts").join("sha256").join(&sha[..2]).join(&sha);
    assert_eq!(std::fs::metadata(stored).expect("stored blob").len(), total as u64);
}

async fn the_api_serves_no_pseudonym_secret_and_versions_keep_one_key(app: TestApp) {
    // The unkeyed salt was served to every submitter: whoever had it reversed small ids.
    let answer = app.get(&app.admin, "/datasets/salt").await;
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let first: Value = register_with_key(&app, "d", 1, Some("k1")).await;
    assert_eq!(first["pseudonym_key"], "k1");
    // A new version with the same key is fine; with another key (or none) it is refused.
    register_with_key(&app, "d", 2, Some("k1")).await;
    let other = raw_register(&app, "d", 3, Some("k2")).await;
    let body = fails(other, StatusCode::CONFLICT, "conflict").await;
    assert!(body.message.contains("registered with the pseudonym key k1"), "{}", body.message);
    fails(raw_register(&app, "d", 3, None).await, StatusCode::CONFLICT, "conflict").await;
    let shown: Value = app.read(&app.admin, "/datasets/d").await;
    assert_eq!(shown["number"], 2, "the refused registrations left nothing behind");
}

fn registration(name: &str, seed: u64, key: Option<&str>) -> protocol::api::RegisterDataset {
    let items = (0..12)
        .map(|i| protocol::api::DatasetItem {
            path: format!("{}/{i}.png", CLASSES[i % 3]),
            sha256: format!("{:064x}", i as u64 + seed * 100),
            bytes: 10,
            label: CLASSES[i % 3].to_owned(),
            patient: Some(format!("{:032x}", i / 2)),
            split: if i < 8 { protocol::Split::Train } else { protocol::Split::Val },
            view: None,
            acquired_at: None,
        })
        .collect();
    protocol::api::RegisterDataset {
        name: name.to_owned(),
        root: "/data/x".to_owned(),
        split: "70/20/10".to_owned(),
        seed,
        group_by: protocol::api::GroupBy::Patient,
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        items,
        report: vec![],
        pseudonym_key: key.map(str::to_owned),
    }
}

async fn raw_register(app: &TestApp, name: &str, seed: u64, key: Option<&str>) -> reqwest::Response {
    app.post(&app.admin, "/datasets", &registration(name, seed, key)).await
}

async fn register_with_key(app: &TestApp, name: &str, seed: u64, key: Option<&str>) -> Value {
    ok(raw_register(app, name, seed, key).await).await
}

async fn a_large_registration_does_not_hold_the_write_connection(app: TestApp) {
    // 250,000 items in one transaction held SQLite's one write connection for 17 s: every
    // heartbeat waited. Writes made meanwhile must wait for one batch at most.
    let mut big = registration("big", 1, Some("k"));
    big.items = (0..60_000)
        .map(|i| protocol::api::DatasetItem {
            path: format!("{}/{i}.png", CLASSES[i % 3]),
            sha256: format!("{i:064x}"),
            bytes: 10,
            label: CLASSES[i % 3].to_owned(),
            patient: Some(format!("{:032x}", i / 2)),
            split: if i % 10 < 7 { protocol::Split::Train } else { protocol::Split::Val },
            view: None,
            acquired_at: None,
        })
        .collect();
    let started = std::time::Instant::now();
    let registering = {
        let (http, url, token) = (app.http.clone(), format!("{}/datasets", app.base), app.admin.clone());
        tokio::spawn(async move { http.post(url).bearer_auth(token).json(&big).send().await.expect("register") })
    };
    let mut slowest = std::time::Duration::ZERO;
    let mut writes = 0;
    while !registering.is_finished() {
        let write = std::time::Instant::now();
        let made = app.post(&app.admin, "/tokens", &json!({"name": format!("t{writes}"), "role": "viewer"})).await;
        assert_eq!(made.status(), StatusCode::CREATED);
        slowest = slowest.max(write.elapsed());
        writes += 1;
    }
    let took = started.elapsed();
    let answer = registering.await.expect("joined");
    assert_eq!(answer.status(), StatusCode::CREATED);
    let info: Value = answer.json().await.expect("json");
    assert_eq!(info["items"], 60_000);
    assert!(writes > 1 && slowest < took / 2, "{writes} writes during a {took:?} registration; the slowest took {slowest:?}");
}

async fn a_workers_free_text_is_bounded(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    // A spec's file name is stored with its sweep: bounded like the rest.
    let named = json!({"yaml": spec("e", "d", ""), "file": "x".repeat(300)});
    fails(app.post(&app.admin, "/experiments", &named).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let lease: Value = ok(app.post(&app.admin, "/leases", &json!({"worker": "w", "device": "d".repeat(10_000)})).await).await;
    let (id, run) = (lease["lease_id"].as_str().expect("lease"), lease["run_id"].as_i64().expect("run"));
    // A 1 MB error was stored whole and shown on every page of the run.
    let failed = json!({"outcome": "failed", "retryable": false, "error": format!("boom {}", "e".repeat(1 << 20))});
    let job: Value = ok(app.post(&app.admin, &format!("/leases/{id}/complete"), &failed).await).await;
    assert_eq!(job["status"], "failed");
    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    let error = detail["run"]["error"].as_str().expect("error");
    assert!(error.starts_with("boom ") && error.len() < 4200 && error.contains("[cut: 1048581 bytes in all]"), "{}", error.len());
    let workers: Value = app.read(&app.admin, "/workers").await;
    assert!(workers.to_string().len() < 2000, "the device name is bounded");
}

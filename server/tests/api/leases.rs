//! The worker protocol, driven exactly as a worker drives it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;

use crate::helpers::{CLASSES, GRID_2X2, TestApp, fails, ok, spec};

crate::on_both_databases!(
    a_worker_leases_reports_and_completes_a_run,
    metrics_are_idempotent_per_run_key_and_step,
    a_runs_latest_points_are_each_keys_own_last_step,
    training_leases_never_see_the_test_split,
    writes_without_a_live_lease_are_refused,
    cancelling_a_running_run_tells_its_worker_to_stop,
    cancelling_a_sweep_stops_queued_and_running_runs,
    runs_sort_by_a_metric,
    sixteen_concurrent_leasers_never_share_a_run,
    concurrent_metric_batches_are_stored_once_each_and_a_lost_lease_among_them_is_refused,
    a_failed_run_is_retried_only_when_retryable,
    a_released_run_is_requeued_at_once,
    sweep_parallel_limits_concurrent_runs,
    checkpoint_files_are_stored_by_content_behind_the_lease,
);

/// PostgreSQL only: metric batches go through connections each server thread keeps (not the
/// pool); a worker's batches reuse them, and one PostgreSQL closes under the server costs no
/// batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_writes_keep_their_connections_and_survive_losing_one() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some(app) = crate::helpers::spawn_app(crate::helpers::Backend::Postgres).await else { return };
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("gpu-box", "worker").await;
    let lease = lease(&app, &worker, "gpu-box-0").await.expect("a queued run");
    let (lease_id, run) = (lease["lease_id"].as_str().expect("lease id").to_owned(), lease["run_id"].as_i64().expect("run id"));
    let path = format!("/runs/{run}/metrics");
    let batch = |epoch: i64| {
        json!({"lease_id": lease_id, "metrics": [
            {"key": "train_loss", "step": epoch, "value": 1.0 / (epoch as f64 + 1.0)},
            {"key": "val_macro_f1", "step": epoch, "value": 0.01 * epoch as f64},
        ]})
    };
    let db = sea_orm::Database::connect(&app.database_url).await.expect("connect");
    let hot_sessions = || async {
        let sql = format!(
            "SELECT COUNT(*)::bigint AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = '{}'",
            server::store::hot::APPLICATION_NAME
        );
        let row = db.query_one(Statement::from_string(db.get_database_backend(), sql)).await.expect("count").expect("a row");
        row.try_get::<i64>("", "n").expect("n")
    };
    for epoch in 0..20 {
        let accepted: Value = ok(app.post(&worker, &path, &batch(epoch)).await).await;
        assert_eq!(accepted["accepted"], 2);
    }
    // One worker sending one batch at a time: its batches found an idle connection of the
    // thread that took them, so the server opened a few at most (never one per batch).
    let open = hot_sessions().await;
    assert!((1..=8).contains(&open), "{open} metric-write connections after 20 batches");
    let root = app.base.trim_end_matches("/api/v1");
    let scrape = app.http.get(format!("{root}/metrics")).bearer_auth(&app.admin).send().await.expect("scrape");
    let scraped = scrape.text().await.expect("metrics text");
    let line = format!("cobb_db_pool_connections{{pool=\"metric_writes\",state=\"idle\"}} {open}");
    assert!(scraped.contains(&line), "{line} in\n{scraped}");

    // PostgreSQL ends them (an administrator, a failover): the next batches are stored anyway.
    let kill = format!(
        "SELECT COUNT(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = '{}'",
        server::store::hot::APPLICATION_NAME
    );
    let killed = db.query_one(Statement::from_string(db.get_database_backend(), kill)).await.expect("terminate").expect("a row");
    assert!(killed.try_get::<i64>("", "n").expect("n") >= 1);
    for epoch in 20..25 {
        let accepted: Value = ok(app.post(&worker, &path, &batch(epoch)).await).await;
        assert_eq!(accepted["accepted"], 2);
    }
    let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run}/metrics?key=val_macro_f1")).await;
    let points = series[0]["points"].as_array().expect("points");
    assert_eq!(points.len(), 25, "every batch stored once: {series:?}");
    assert!(points.iter().enumerate().all(|(step, p)| p["step"] == step as i64), "{series:?}");
    assert!(hot_sessions().await >= 1, "new metric-write connections were opened after the old ones ended");
}

async fn lease(app: &TestApp, token: &str, worker: &str) -> Option<Value> {
    let response = app.post(token, "/leases", &json!({"worker": worker, "device": "cpu"})).await;
    if response.status() == StatusCode::NO_CONTENT {
        return None;
    }
    Some(ok(response).await)
}

fn confusion(counts: Vec<Vec<u64>>) -> Value {
    json!({"classes": CLASSES, "counts": counts})
}

async fn a_worker_leases_reports_and_completes_a_run(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("gpu-box", "worker").await;

    let lease = lease(&app, &worker, "gpu-box-0").await.expect("a queued run");
    let lease_id = lease["lease_id"].as_str().expect("lease id");
    let run = lease["run_id"].as_i64().expect("run id");
    assert_eq!(lease["attempt"], 1);
    assert_eq!(lease["config"]["model"]["arch"], "simple_cnn");
    assert!(lease["resume_from"].is_null());

    let beat: Value = app.write(&worker, &format!("/leases/{lease_id}/heartbeat"), &json!({"epoch": 0})).await;
    assert_eq!(beat["action"], "continue");

    for epoch in 0..2 {
        let batch = json!({"lease_id": lease_id, "metrics": [
            {"key": "train_loss", "step": epoch, "value": 1.0 / (epoch as f64 + 1.0)},
            {"key": "val_macro_f1", "step": epoch, "value": 0.5 + 0.1 * epoch as f64},
        ]});
        let accepted: Value = app.write(&worker, &format!("/runs/{run}/metrics"), &batch).await;
        assert_eq!(accepted["accepted"], 2);
        let results = json!({"lease_id": lease_id, "epoch": epoch,
            "confusion": confusion(vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 4]])});
        let response = app.post(&worker, &format!("/runs/{run}/results"), &results).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let artifact = json!({"lease_id": lease_id, "kind": "best_checkpoint", "uri": "file:///a/b.mpk",
        "sha256": "ab".repeat(32), "bytes": 1234});
    assert_eq!(app.post(&worker, &format!("/runs/{run}/artifacts"), &artifact).await.status(), StatusCode::NO_CONTENT);

    let done: Value = app.write(&worker, &format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded", "best_epoch": 1})).await;
    assert_eq!(done["status"], "succeeded");

    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    assert_eq!(detail["run"]["best_epoch"], 1);
    assert_eq!(detail["latest"]["val_macro_f1"]["value"], 0.6);
    let per_class = detail["class_results"]["per_class"].as_array().expect("per-class rows");
    assert_eq!(per_class.len(), 3);
    assert_eq!(per_class[1]["class"], "ap_postop_fusion");
    assert_eq!(per_class[1]["precision"], 0.75);
    assert_eq!(per_class[1]["recall"], 0.5);
    assert_eq!(per_class[1]["support"], 6);
    assert_eq!(detail["artifacts"][0]["kind"], "best_checkpoint");
    assert_eq!(detail["leases"][0]["end_reason"], "completed");
    let workers: Vec<Value> = app.read(&app.admin, "/workers").await;
    assert_eq!(workers[0]["name"], "gpu-box-0");
    assert!(workers[0]["current_run"].is_null());

    // The completed lease can do nothing more.
    let late = json!({"lease_id": lease_id, "metrics": [{"key": "val_loss", "step": 5, "value": 1.0}]});
    fails(app.post(&worker, &format!("/runs/{run}/metrics"), &late).await, StatusCode::CONFLICT, "lease_lost").await;
    fails(app.post(&worker, &format!("/leases/{lease_id}/heartbeat"), &json!({})).await, StatusCode::CONFLICT, "lease_lost").await;
}

async fn metrics_are_idempotent_per_run_key_and_step(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let lease = lease(&app, &app.admin, "w").await.expect("run");
    let run = lease["run_id"].as_i64().expect("id");
    let lease_id = lease["lease_id"].as_str().expect("lease");
    let batch = json!({"metrics": [
        {"key": "val_loss", "step": 0, "value": 0.9},
        {"key": "val_loss", "step": 1, "value": 0.7},
        {"key": "val_loss", "step": 1, "value": 0.6},
    ]});
    for _ in 0..3 {
        let response = app
            .http
            .post(format!("{}/runs/{run}/metrics", app.base))
            .bearer_auth(&app.admin)
            .header("Cobb-Lease", lease_id)
            .json(&batch)
            .send()
            .await
            .expect("request");
        ok::<Value>(response).await;
    }
    let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run}/metrics?key=val_loss")).await;
    let points = series[0]["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "one row per (run, key, step)");
    assert_eq!(points[1]["value"], 0.6, "the last value sent for a step wins");
    // A batch mixing a stored step (a new value) and a new one: both land, nothing is lost.
    let mixed = json!({"lease_id": lease_id, "metrics": [
        {"key": "val_loss", "step": 1, "value": 0.5},
        {"key": "val_loss", "step": 2, "value": 0.4},
    ]});
    let accepted: Value = app.write(&app.admin, &format!("/runs/{run}/metrics"), &mixed).await;
    assert_eq!(accepted["accepted"], 2);
    let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run}/metrics?key=val_loss")).await;
    let values: Vec<&Value> = series[0]["points"].as_array().expect("points").iter().map(|p| &p["value"]).collect();
    assert_eq!(values, [&json!(0.9), &json!(0.5), &json!(0.4)], "the stored step overwritten, the new one added");
}

/// Keys reported at different steps (every epoch, every other epoch, once): a run's latest
/// points are each key's own last step, whatever order the metrics' primary key has (m018).
async fn a_runs_latest_points_are_each_keys_own_last_step(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let lease = lease(&app, &app.admin, "w").await.expect("run");
    let run = lease["run_id"].as_i64().expect("id");
    let lease_id = lease["lease_id"].as_str().expect("lease");
    for step in 0..4_i64 {
        let mut metrics = vec![json!({"key": "train_loss", "step": step, "value": 4.0 - step as f64})];
        if step % 2 == 0 {
            metrics.push(json!({"key": "val_macro_f1", "step": step, "value": 0.5 + 0.125 * step as f64}));
        }
        if step == 0 {
            metrics.push(json!({"key": "lr", "step": 0, "value": 0.001}));
        }
        let accepted: Value =
            app.write(&app.admin, &format!("/runs/{run}/metrics"), &json!({"lease_id": lease_id, "metrics": metrics})).await;
        assert_eq!(accepted["accepted"].as_u64(), Some(metrics.len() as u64));
    }
    // Step 2 of one key sent again with a new value, after later steps of the others.
    let again = json!({"lease_id": lease_id, "metrics": [{"key": "val_macro_f1", "step": 2, "value": 0.875}]});
    let _: Value = app.write(&app.admin, &format!("/runs/{run}/metrics"), &again).await;

    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    let latest = detail["latest"].as_object().expect("latest");
    assert_eq!(latest.len(), 3, "one latest point per key: {latest:?}");
    assert_eq!((&latest["train_loss"]["step"], &latest["train_loss"]["value"]), (&json!(3), &json!(1.0)));
    assert_eq!((&latest["val_macro_f1"]["step"], &latest["val_macro_f1"]["value"]), (&json!(2), &json!(0.875)));
    assert_eq!((&latest["lr"]["step"], &latest["lr"]["value"]), (&json!(0), &json!(0.001)));
    let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run}/metrics?key=val_macro_f1")).await;
    let steps: Vec<&Value> = series[0]["points"].as_array().expect("points").iter().map(|p| &p["step"]).collect();
    assert_eq!(steps, [&json!(0), &json!(2)], "one key's series in step order");
}

async fn training_leases_never_see_the_test_split(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let lease = lease(&app, &app.admin, "w").await.expect("run");
    let items: Value = app.read(&app.admin, &format!("/leases/{}/items", lease["lease_id"].as_str().expect("id"))).await;
    let items = items["items"].as_array().expect("items");
    assert_eq!(items.len(), 27, "7 train + 2 val of each of 3 classes");
    assert!(items.iter().all(|i| i["split"] != "test"));
}

async fn writes_without_a_live_lease_are_refused(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let a = lease(&app, &app.admin, "w1").await.expect("run");
    let b = lease(&app, &app.admin, "w2").await.expect("run");
    let run_a = a["run_id"].as_i64().expect("id");
    let point = json!([{"key": "val_loss", "step": 0, "value": 1.0}]);
    fails(
        app.post(&app.admin, &format!("/runs/{run_a}/metrics"), &json!({"metrics": point})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let wrong = json!({"lease_id": b["lease_id"], "metrics": point});
    fails(app.post(&app.admin, &format!("/runs/{run_a}/metrics"), &wrong).await, StatusCode::CONFLICT, "lease_lost").await;
    let made_up = json!({"lease_id": "not-a-lease", "metrics": point});
    fails(app.post(&app.admin, &format!("/runs/{run_a}/metrics"), &made_up).await, StatusCode::CONFLICT, "lease_lost").await;
    let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run_a}/metrics")).await;
    assert!(series.is_empty(), "nothing was stored");
}

async fn cancelling_a_running_run_tells_its_worker_to_stop(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let lease = lease(&app, &app.admin, "w").await.expect("run");
    let (run, lease_id) = (lease["run_id"].as_i64().expect("id"), lease["lease_id"].as_str().expect("lease"));
    let cancel: Value = app.write(&app.admin, &format!("/runs/{run}/cancel"), &json!({})).await;
    assert_eq!(cancel["stopping"], 1);
    let beat: Value = app.write(&app.admin, &format!("/leases/{lease_id}/heartbeat"), &json!({})).await;
    assert_eq!(beat["action"], "stop");
    let done: Value = app.write(&app.admin, &format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded"})).await;
    assert_eq!(done["status"], "cancelled", "a cancel wins over a late success");
    fails(app.post(&app.admin, &format!("/runs/{run}/cancel"), &json!({})).await, StatusCode::CONFLICT, "conflict").await;
}

async fn cancelling_a_sweep_stops_queued_and_running_runs(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let submitted: Value = ok(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let sweep = submitted["sweep_id"].as_i64().expect("sweep");
    let running = lease(&app, &app.admin, "w").await.expect("run");
    let cancel: Value = app.write(&app.admin, &format!("/sweeps/{sweep}/cancel"), &json!({})).await;
    assert_eq!((cancel["cancelled"].as_u64(), cancel["stopping"].as_u64()), (Some(3), Some(1)));
    assert!(lease(&app, &app.admin, "w2").await.is_none(), "cancelled runs never start");
    let lease_id = running["lease_id"].as_str().expect("lease");
    let done: Value = app.write(&app.admin, &format!("/leases/{lease_id}/complete"), &json!({"outcome": "cancelled"})).await;
    assert_eq!(done["status"], "cancelled");
    let info: Value = app.read(&app.admin, &format!("/sweeps/{sweep}")).await;
    assert_eq!(info["runs"]["cancelled"], 4);
}

async fn runs_sort_by_a_metric(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let scores = [0.3, 0.9, 0.6];
    for score in scores {
        let lease = lease(&app, &app.admin, "w").await.expect("run");
        let run = lease["run_id"].as_i64().expect("id");
        let batch = json!({"lease_id": lease["lease_id"], "metrics": [
            {"key": "val_macro_f1", "step": 0, "value": score},
            {"key": "val_macro_f1", "step": 1, "value": score / 2.0},
        ]});
        ok::<Value>(app.post(&app.admin, &format!("/runs/{run}/metrics"), &batch).await).await;
        let complete = json!({"outcome": "succeeded", "best_epoch": 0});
        ok::<Value>(app.post(&app.admin, &format!("/leases/{}/complete", lease["lease_id"].as_str().expect("l")), &complete).await).await;
    }
    let list: Value = app.read(&app.admin, "/runs?sort=val_macro_f1").await;
    let values: Vec<Option<f64>> = list["runs"].as_array().expect("runs").iter().map(|r| r["sort_value"].as_f64()).collect();
    assert_eq!(values, vec![Some(0.9), Some(0.6), Some(0.3), None], "best epoch values, descending, runs without it last");
    let ascending: Value = app.read(&app.admin, "/runs?sort=val_macro_f1&order=asc&limit=2").await;
    assert_eq!(ascending["runs"][0]["sort_value"], 0.3);
    assert_eq!(ascending["runs"].as_array().expect("runs").len(), 2);
    assert_eq!(ascending["total"], 4);
}

async fn sixteen_concurrent_leasers_never_share_a_run(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let sweep = "sweep:\n  method: random\n  max_runs: 200\n  parameters:\n    train.optimizer.lr: {distribution: log_uniform, min: 0.0001, max: 0.1}\n";
    ok::<Value>(app.submit(&spec("many", "d", sweep)).await).await;
    let worker = app.token("fleet", "worker").await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let app = app.clone();
        let worker = worker.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(lease) = lease(&app, &worker, &format!("w{w}")).await {
                let id = lease["lease_id"].as_str().expect("lease").to_owned();
                mine.push(lease["run_id"].as_i64().expect("run"));
                let done: Value = app.write(&worker, &format!("/leases/{id}/complete"), &json!({"outcome": "succeeded"})).await;
                assert_eq!(done["status"], "succeeded");
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("leaser"));
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "every run leased");
    assert_eq!(unique.len(), 200, "no run leased twice");
    let succeeded: Value = app.read(&app.admin, "/runs?status=succeeded&limit=1").await;
    assert_eq!(succeeded["total"], 200);
}

/// Metric batches from many workers at once (on SQLite they are committed in groups, on
/// PostgreSQL each is one statement over arrays): every point of a live lease is stored once,
/// and the batches of an ended lease, sent among them, are refused and store nothing.
async fn concurrent_metric_batches_are_stored_once_each_and_a_lost_lease_among_them_is_refused(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let sweep = "sweep:\n  method: random\n  max_runs: 9\n  parameters:\n    train.optimizer.lr: {distribution: log_uniform, min: 0.0001, max: 0.1}\n";
    ok::<Value>(app.submit(&spec("busy", "d", sweep)).await).await;
    let worker = app.token("fleet", "worker").await;
    let mut leases = Vec::new();
    for w in 0..9 {
        leases.push(lease(&app, &worker, &format!("w{w}")).await.expect("a run"));
    }
    // The last lease ends before its worker reports anything.
    let ended = leases[8]["lease_id"].as_str().expect("lease").to_owned();
    let _: Value = app.write(&worker, &format!("/leases/{ended}/release"), &json!({"reason": "test"})).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for (w, lease) in leases.iter().enumerate() {
        let (app, worker) = (app.clone(), worker.clone());
        let (run, id) = (lease["run_id"].as_i64().expect("run"), lease["lease_id"].as_str().expect("lease").to_owned());
        tasks.push(tokio::spawn(async move {
            for epoch in 0..30 {
                let metrics: Vec<Value> = (0..25)
                    .map(|k| json!({"key": format!("val_k{k}"), "step": epoch, "value": (w * 1000 + epoch * 25 + k) as f64}))
                    .collect();
                let response = app.post(&worker, &format!("/runs/{run}/metrics"), &json!({"lease_id": id, "metrics": metrics})).await;
                if w == 8 {
                    fails(response, StatusCode::CONFLICT, "lease_lost").await;
                } else {
                    assert_eq!(ok::<Value>(response).await["accepted"], 25);
                }
            }
            run
        }));
    }
    for (w, task) in tasks.into_iter().enumerate() {
        let run = task.await.expect("worker");
        let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run}/metrics")).await;
        if w == 8 {
            assert!(series.is_empty(), "the ended lease stored {series:?}");
            continue;
        }
        assert_eq!(series.len(), 25, "run {run}");
        for s in &series {
            let k: usize = s["key"].as_str().expect("key")["val_k".len()..].parse().expect("k");
            let values: Vec<f64> = s["points"].as_array().expect("points").iter().map(|p| p["value"].as_f64().expect("value")).collect();
            let expected: Vec<f64> = (0..30).map(|epoch| (w * 1000 + epoch * 25 + k) as f64).collect();
            assert_eq!(values, expected, "run {run} key val_k{k}: each epoch once, its own value");
        }
    }
}

async fn a_failed_run_is_retried_only_when_retryable(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let first = lease(&app, &app.admin, "w").await.expect("run");
    let infra = json!({"outcome": "failed", "error": "CUDA device lost", "retryable": true});
    let after: Value = app.write(&app.admin, &format!("/leases/{}/complete", first["lease_id"].as_str().expect("l")), &infra).await;
    assert_eq!(after["status"], "queued");
    let second = lease(&app, &app.admin, "w").await.expect("requeued");
    assert_eq!(second["attempt"], 2);
    let nan = json!({"outcome": "failed", "error": "loss became NaN at epoch 3", "retryable": false});
    let after: Value = app.write(&app.admin, &format!("/leases/{}/complete", second["lease_id"].as_str().expect("l")), &nan).await;
    assert_eq!(after["status"], "failed");
    assert_eq!(after["error"], "loss became NaN at epoch 3");
    assert!(lease(&app, &app.admin, "w").await.is_none());
}

async fn a_released_run_is_requeued_at_once(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let first = lease(&app, &app.admin, "w").await.expect("run");
    let id = first["lease_id"].as_str().expect("l");
    let run = first["run_id"].as_i64().expect("run");
    let checkpoint = json!({"lease_id": id, "kind": "last_checkpoint", "uri": "file:///c/1", "sha256": "cd".repeat(32), "bytes": 9});
    assert_eq!(app.post(&app.admin, &format!("/runs/{run}/artifacts"), &checkpoint).await.status(), StatusCode::NO_CONTENT);
    let released: Value = app.write(&app.admin, &format!("/leases/{id}/release"), &json!({"reason": "SIGTERM"})).await;
    assert_eq!(released["status"], "queued");
    let again = lease(&app, &app.admin, "w2").await.expect("requeued");
    assert_eq!(again["run_id"], run);
    assert_eq!(again["attempt"], 1, "a release is not held against the run");
    assert_eq!(again["resume_from"]["uri"], "file:///c/1");
}

async fn sweep_parallel_limits_concurrent_runs(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let sweep = GRID_2X2.replace("method: grid", "method: grid\n  parallel: 1");
    ok::<Value>(app.submit(&spec("e", "d", &sweep)).await).await;
    let first = lease(&app, &app.admin, "w1").await.expect("run");
    assert!(lease(&app, &app.admin, "w2").await.is_none(), "parallel: 1 holds the rest back");
    let id = first["lease_id"].as_str().expect("l");
    ok::<Value>(app.post(&app.admin, &format!("/leases/{id}/complete"), &json!({"outcome": "succeeded"})).await).await;
    assert!(lease(&app, &app.admin, "w2").await.is_some());
}

mod expiry {
    use super::*;

    crate::on_both_databases_with!(
        |c: &mut server::ServerConfig| { c.lease_ttl_secs = 1; c.max_attempts = 2; c.reap_interval_secs = 3600; };
        an_expired_lease_is_refused_and_its_run_requeued_then_failed
    );

    async fn an_expired_lease_is_refused_and_its_run_requeued_then_failed(app: TestApp) {
        app.register_dataset("d", &CLASSES, 10).await;
        ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
        let first = lease(&app, &app.admin, "doomed").await.expect("run");
        let run = first["run_id"].as_i64().expect("run");
        let id = first["lease_id"].as_str().expect("l").to_owned();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

        let body =
            fails(app.post(&app.admin, &format!("/leases/{id}/heartbeat"), &json!({})).await, StatusCode::CONFLICT, "lease_expired").await;
        assert!(body.message.contains("expired"), "{}", body.message);
        let metrics = json!({"lease_id": id, "metrics": [{"key": "val_loss", "step": 0, "value": 1.0}]});
        fails(app.post(&app.admin, &format!("/runs/{run}/metrics"), &metrics).await, StatusCode::CONFLICT, "lease_expired").await;
        let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
        assert_eq!(detail["run"]["status"], "queued", "requeued by the reaper");
        assert_eq!(detail["leases"][0]["end_reason"], "expired");

        let second = lease(&app, &app.admin, "rescuer").await.expect("requeued run");
        assert_eq!(second["run_id"], run);
        assert_eq!(second["attempt"], 2);
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(lease(&app, &app.admin, "third").await.is_none(), "no attempts left");
        let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
        assert_eq!(detail["run"]["status"], "failed");
        let error = detail["run"]["error"].as_str().expect("reason");
        assert!(error.contains("attempt 2 of 2") && error.contains("rescuer"), "{error}");
        let series: Vec<Value> = app.read(&app.admin, &format!("/runs/{run}/metrics")).await;
        assert!(series.is_empty(), "writes on the lost lease stored nothing");
    }
}

async fn checkpoint_files_are_stored_by_content_behind_the_lease(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "")).await).await;
    let worker = app.token("w", "worker").await;
    let viewer = app.token("v", "viewer").await;
    let lease = lease(&app, &worker, "w1").await.expect("a run");
    let (lease_id, run) = (lease["lease_id"].as_str().expect("lease"), lease["run_id"].as_i64().expect("run"));
    let put = |kind: &str, lease: &str, body: &'static [u8]| {
        app.http.put(format!("{}/runs/{run}/blobs?lease_id={lease}&kind={kind}", app.base)).bearer_auth(&worker).body(body).send()
    };
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));

    let first: Value = ok(put("last_checkpoint", lease_id, b"epoch-0 weights").await.expect("put")).await;
    assert_eq!(first["sha256"], sha(b"epoch-0 weights"));
    assert_eq!(first["uri"], format!("cas:sha256:{}", sha(b"epoch-0 weights")));
    let get = |sha: String, token: String| app.http.get(format!("{}/blobs/{sha}", app.base)).bearer_auth(token).send();
    let body = get(sha(b"epoch-0 weights"), worker.clone()).await.expect("get");
    assert_eq!(body.status(), StatusCode::OK);
    assert_eq!(body.bytes().await.expect("bytes").as_ref(), b"epoch-0 weights");
    assert_eq!(get(sha(b"epoch-0 weights"), viewer.clone()).await.expect("get").status(), StatusCode::FORBIDDEN);

    // A newer last checkpoint replaces the older one, whose blob goes.
    let _: Value = ok(put("last_checkpoint", lease_id, b"epoch-1 weights").await.expect("put")).await;
    assert_eq!(get(sha(b"epoch-0 weights"), worker.clone()).await.expect("get").status(), StatusCode::NOT_FOUND);
    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    let kinds: Vec<&str> = detail["artifacts"].as_array().expect("artifacts").iter().filter_map(|a| a["kind"].as_str()).collect();
    assert_eq!(kinds, ["last_checkpoint"]);
    // Nothing is stored for a lease that is not live, and the run's next lease lists the files.
    let refused = put("last_checkpoint", "not-a-lease", b"stray").await.expect("put");
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(get(sha(b"stray"), worker.clone()).await.expect("get").status(), StatusCode::NOT_FOUND);
    let _: Value = app.write(&worker, &format!("/leases/{lease_id}/release"), &json!({"reason": "moving machines"})).await;
    let again = self::lease(&app, &worker, "w2").await.expect("the run again");
    assert_eq!(again["resume_files"][0]["sha256"], sha(b"epoch-1 weights"));
}

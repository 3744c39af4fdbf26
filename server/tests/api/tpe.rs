//! TPE sweeps (issue 13): runs are created when workers ask, capped by max_runs, enqueued
//! configurations first, reproducible from the same seed and history, different for two
//! workers asking at once; and the validation budget.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, CLASSES, TestApp, fails, ok, spawn_app, spec};

crate::on_both_databases!(
    a_tpe_sweep_creates_its_runs_as_workers_ask,
    the_same_seed_and_history_give_the_same_suggestions,
    the_validation_budget_counts_configurations_and_refuses_more,
    constraints_rank_runs_that_miss_them_last,
);

const TPE: &str = "sweep:\n  method: tpe\n  max_runs: 6\n  startup_runs: 2\n  seed: 11\n  \
    enqueue: [{train.optimizer.lr: 0.001}]\n  parameters:\n    \
    train.optimizer.lr: {distribution: log_uniform, min: 0.00001, max: 0.1}\n    \
    model.dropout: {distribution: uniform, min: 0.0, max: 0.5}\n    \
    model.arch: {values: [simple_cnn, resnet18]}\n";

async fn lease(app: &TestApp) -> Option<Value> {
    let response = app.post(&app.admin, "/leases", &json!({"worker": "w"})).await;
    if response.status() == StatusCode::NO_CONTENT {
        return None;
    }
    Some(ok(response).await)
}

/// A made-up objective of a run's params (best near lr 1e-3, no dropout, resnet18).
fn objective(params: &Value) -> f64 {
    let lr = params["train.optimizer.lr"].as_f64().expect("lr").log10() + 3.0;
    let dropout = params["model.dropout"].as_f64().unwrap_or(0.0);
    let arch = if params["model.arch"] == "resnet18" { 0.0 } else { 0.2 };
    0.9 - 0.05 * lr * lr - 0.3 * dropout - arch
}

/// Reports one epoch with the objective and completes the run.
async fn finish(app: &TestApp, lease: &Value) -> Value {
    let (id, run) = (lease["lease_id"].as_str().expect("lease"), lease["run_id"].as_i64().expect("run"));
    let params = &lease["params"];
    let batch = json!({"lease_id": id, "metrics": [{"key": "val_macro_f1", "step": 0, "value": objective(params)}]});
    let _: Value = ok(app.post(&app.admin, &format!("/runs/{run}/metrics"), &batch).await).await;
    let _: Value =
        ok(app.post(&app.admin, &format!("/leases/{id}/complete"), &json!({"outcome": "succeeded", "best_epoch": 0})).await).await;
    params.clone()
}

async fn a_tpe_sweep_creates_its_runs_as_workers_ask(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let submitted: Value = ok(app.submit(&spec("e", "d", TPE)).await).await;
    // Only the enqueued configuration exists at submission, completed with the spec's values.
    let runs = submitted["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["params"]["train.optimizer.lr"], 0.001);
    assert_eq!(runs[0]["params"]["model.arch"], "simple_cnn", "left out: the spec's own value");
    let first = lease(&app).await.expect("the enqueued run");
    assert_eq!(first["run_id"], runs[0]["run_id"]);
    // Two workers asking at once get two new, different configurations.
    let (a, b) = tokio::join!(lease(&app), lease(&app));
    let (a, b) = (a.expect("a suggestion"), b.expect("another"));
    assert_ne!(a["run_id"], b["run_id"]);
    assert_ne!(a["params"], b["params"], "constant liar and per-run seeds: not the same configuration twice");
    for l in [&first, &a, &b] {
        let lr = l["params"]["train.optimizer.lr"].as_f64().expect("lr");
        assert!((1e-5..=0.1).contains(&lr), "{l}");
        assert_eq!(l["config"]["train"]["optimizer"]["lr"], l["params"]["train.optimizer.lr"], "the config carries the params");
        finish(&app, l).await;
    }
    // The rest: TPE now (3 finished > 2 start-up runs), up to max_runs in all.
    for _ in 0..3 {
        let next = lease(&app).await.expect("a tpe suggestion");
        finish(&app, &next).await;
    }
    assert!(lease(&app).await.is_none(), "max_runs reached: nothing more to lease");
    let detail: Value = app.read(&app.admin, "/experiments/e").await;
    assert_eq!(detail["sweeps"][0]["method"], "tpe");
    assert_eq!(detail["sweeps"][0]["max_runs"], 6);
    // The detail reads back as its type (its summary's count and its list of sweeps used to
    // share the key `sweeps`).
    let typed: protocol::api::ExperimentDetail = app.read(&app.admin, "/experiments/e").await;
    assert_eq!((typed.summary.sweep_count, typed.sweeps.len()), (1, 1));
    assert_eq!(detail["val_configs"], 6, "six configurations scored against the validation split");
    // A cancelled tpe sweep suggests no more runs.
    let again: Value = ok(app.submit(&spec("e", "d", TPE)).await).await;
    let sweep = again["sweep_id"].as_i64().expect("sweep");
    let _: Value = ok(app.post(&app.admin, &format!("/sweeps/{sweep}/cancel"), &json!({})).await).await;
    assert!(lease(&app).await.is_none(), "cancelled: no suggestion");
}

async fn the_same_seed_and_history_give_the_same_suggestions(app: TestApp) {
    let Some(other) = spawn_app(if app.backend == Backend::Sqlite { Backend::Sqlite } else { Backend::Postgres }).await else { return };
    let mut seen = Vec::new();
    for server in [&app, &other] {
        server.register_dataset("d", &CLASSES, 10).await;
        let _: Value = ok(server.submit(&spec("e", "d", TPE)).await).await;
        let mut params = Vec::new();
        for _ in 0..5 {
            let l = lease(server).await.expect("a run");
            params.push(finish(server, &l).await);
        }
        seen.push(params);
    }
    assert_eq!(seen[0], seen[1], "two servers, same seed, same history in the same order");
    assert_ne!(seen[0][3], seen[0][4]);
}

async fn the_validation_budget_counts_configurations_and_refuses_more(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let grid =
        |lrs: &str| format!("max_val_configs: 3\nsweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {{values: [{lrs}]}}\n");
    // Four configurations against a budget of three: refused whole, nothing queued.
    let body = fails(app.submit(&spec("e", "d", &grid("0.1, 0.01, 0.001, 0.0001"))).await, StatusCode::CONFLICT, "conflict").await;
    assert!(body.message.contains("allows 3 configurations") && body.message.contains("fools itself"), "{}", body.message);
    assert_eq!(app.run_count().await, 0);
    let _: Value = ok(app.submit(&spec("e", "d", &grid("0.1, 0.01"))).await).await;
    // The same two again are not new configurations; a third one fits, a fourth does not.
    let _: Value = ok(app.submit(&spec("e", "d", &grid("0.1, 0.01"))).await).await;
    fails(app.submit(&spec("e", "d", &grid("0.001, 0.0001"))).await, StatusCode::CONFLICT, "conflict").await;
    let _: Value = ok(app.submit(&spec("e", "d", &grid("0.001"))).await).await;
    // The budget is never raised; it may be lowered.
    let raised = spec("e", "d", &grid("0.1")).replace("max_val_configs: 3", "max_val_configs: 10");
    let body = fails(app.submit(&raised).await, StatusCode::CONFLICT, "conflict").await;
    assert!(body.message.contains("never raised"), "{}", body.message);
    // Scored configurations are counted once a run reports a validation metric.
    let l = lease(&app).await.expect("run");
    let batch = json!({"lease_id": l["lease_id"], "metrics": [{"key": "val_macro_f1", "step": 0, "value": 0.5}]});
    let _: Value = ok(app.post(&app.admin, &format!("/runs/{}/metrics", l["run_id"]), &batch).await).await;
    let detail: Value = app.read(&app.admin, "/experiments/e").await;
    assert_eq!((detail["val_configs"].as_u64(), detail["max_val_configs"].as_u64()), (Some(1), Some(3)));
}

async fn constraints_rank_runs_that_miss_them_last(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let sweep = "select:\n  metric: val_macro_f1\n  constraints: [{metric: val_recall/ap_preop, min: 0.8}]\n\
                 sweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {values: [0.1, 0.01, 0.001]}\n";
    let _: Value = ok(app.submit(&spec("e", "d", sweep)).await).await;
    // The best macro-F1 misses the weak class's recall; the other two meet it.
    for (f1, recall) in [(0.9, 0.5), (0.7, 0.9), (0.8, 0.85)] {
        let l = lease(&app).await.expect("run");
        let batch = json!({"lease_id": l["lease_id"], "metrics": [
            {"key": "val_macro_f1", "step": 0, "value": f1}, {"key": "val_recall/ap_preop", "step": 0, "value": recall}]});
        let _: Value = ok(app.post(&app.admin, &format!("/runs/{}/metrics", l["run_id"]), &batch).await).await;
        let done = json!({"outcome": "succeeded", "best_epoch": 0});
        let _: Value = ok(app.post(&app.admin, &format!("/leases/{}/complete", l["lease_id"].as_str().expect("id")), &done).await).await;
    }
    let list: Value = app.read(&app.admin, "/runs?sweep=1&sort=val_macro_f1").await;
    let order: Vec<i64> = list["runs"].as_array().expect("runs").iter().map(|r| r["id"].as_i64().expect("id")).collect();
    assert_eq!(order, vec![3, 2, 1], "feasible runs by macro-F1, then the one that misses a constraint");
    let missed = &list["runs"][2]["constraints_missed"];
    assert_eq!(missed, &json!(["val_recall/ap_preop 0.500 < 0.8"]));
    assert!(list["runs"][0].get("constraints_missed").is_none(), "a run that meets them lists none");
    // The sweep page ranks the same way and says what is missed.
    let root = app.base.trim_end_matches("/api/v1");
    let page = app.http.get(format!("{root}/ui/sweeps/1")).bearer_auth(&app.admin).send().await.expect("page").text().await.expect("html");
    assert!(page.contains("misses: val_recall&#x2f;ap_preop 0.500 &lt; 0.8"), "{page}");
    let (third, first) = (page.find("e-s1-2").expect("run 3"), page.find("e-s1-0").expect("run 1"));
    assert!(third < first, "the infeasible run is listed last");
}

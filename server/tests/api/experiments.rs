use serde_json::Value;

use crate::helpers::{CLASSES, GRID_2X2, TestApp, ok, spec};

crate::on_both_databases!(
    a_submitted_sweep_is_queued_and_listed,
    dry_run_expands_without_storing,
    runs_filter_by_experiment_sweep_and_status,
);

async fn a_submitted_sweep_is_queued_and_listed(app: TestApp) {
    let dataset = app.register_dataset("d", &CLASSES, 10).await;
    let result: Value = ok(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    assert_eq!(result["runs"].as_array().expect("runs").len(), 4);
    assert_eq!(result["dataset_version"], dataset["version"]);
    let list: Value = app.read(&app.admin, "/runs?experiment=e&sort=created").await;
    assert_eq!(list["total"], 4);
    let runs = list["runs"].as_array().expect("runs");
    assert!(runs.iter().all(|r| r["status"] == "queued" && r["attempt"] == 0));
    assert_eq!(runs[1]["params"]["model.arch"], "simple_cnn");
    assert_eq!(runs[1]["params"]["train.optimizer.lr"], 0.001);
    let id = runs[2]["id"].as_i64().expect("id");
    let detail: Value = app.read(&app.admin, &format!("/runs/{id}")).await;
    assert_eq!(detail["config"]["model"]["arch"], "resnet18");
    assert_eq!(detail["config"]["dataset"]["version"], dataset["version"], "the run names its frozen version");
    assert!(detail["config"].get("sweep").is_none());
    let experiments: Vec<Value> = app.read(&app.admin, "/experiments").await;
    assert_eq!(experiments[0]["runs"]["queued"], 4);
    let shown: Value = app.read(&app.admin, "/experiments/e").await;
    assert!(shown["spec_yaml"].as_str().expect("yaml").contains("model.arch"));
}

async fn dry_run_expands_without_storing(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let body = serde_json::json!({"yaml": spec("e", "d", GRID_2X2), "dry_run": true});
    let result: Value = app.write(&app.admin, "/experiments", &body).await;
    assert_eq!(result["dry_run"], true);
    assert_eq!(result["runs"].as_array().expect("runs").len(), 4);
    assert_eq!(app.run_count().await, 0);
    let experiments: Vec<Value> = app.read(&app.admin, "/experiments").await;
    assert!(experiments.is_empty());
}

async fn runs_filter_by_experiment_sweep_and_status(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let a: Value = ok(app.submit(&spec("a", "d", GRID_2X2)).await).await;
    ok::<Value>(app.submit(&spec("b", "d", "")).await).await;
    let sweep = a["sweep_id"].as_i64().expect("sweep");
    let first = a["runs"][0]["run_id"].as_i64().expect("id");
    ok::<Value>(app.post(&app.admin, &format!("/runs/{first}/cancel"), &serde_json::json!({})).await).await;
    let by_experiment: Value = app.read(&app.admin, "/runs?experiment=b").await;
    assert_eq!(by_experiment["total"], 1);
    let by_sweep: Value = app.read(&app.admin, &format!("/runs?sweep={sweep}&status=queued")).await;
    assert_eq!(by_sweep["total"], 3);
    let cancelled: Value = app.read(&app.admin, "/runs?status=cancelled").await;
    assert_eq!(cancelled["runs"][0]["id"], first);
}

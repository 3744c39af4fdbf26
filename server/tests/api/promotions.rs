//! Promotion to the sealed test split: who may promote what, the one evaluation through
//! its own lease (the only path for test items), supersession, reuse, and the audit trail.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, GRID_2X2, TestApp, fails, ok, spec};

crate::on_both_databases!(a_promoted_run_is_evaluated_once_on_the_sealed_test_split);

/// Leases the next run and completes it as succeeded with a best checkpoint; returns its id.
pub(crate) async fn finish_a_run(app: &TestApp, worker: &str) -> i64 {
    let lease: Value = ok(app.post(worker, "/leases", &json!({"worker": "w1", "kinds": ["train"]})).await).await;
    let (lease_id, run) = (lease["lease_id"].as_str().expect("lease").to_owned(), lease["run_id"].as_i64().expect("run"));
    let batch = json!({"lease_id": lease_id, "metrics": [{"key": "val_macro_f1", "step": 1, "value": 0.7}]});
    let _: Value = app.write(worker, &format!("/runs/{run}/metrics"), &batch).await;
    let results = json!({"lease_id": lease_id, "epoch": 1, "confusion": {"classes": CLASSES, "counts": [[2, 0, 0], [0, 2, 0], [0, 1, 1]]}});
    assert_eq!(app.post(worker, &format!("/runs/{run}/results"), &results).await.status(), StatusCode::NO_CONTENT);
    let artifact = json!({"lease_id": lease_id, "kind": "best_checkpoint", "uri": format!("file:///ckpt/{run}/model.mpk"),
        "sha256": format!("{run:064x}"), "bytes": 10});
    assert_eq!(app.post(worker, &format!("/runs/{run}/artifacts"), &artifact).await.status(), StatusCode::NO_CONTENT);
    let done: Value = app.write(worker, &format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded", "best_epoch": 1})).await;
    assert_eq!(done["status"], "succeeded");
    run
}

async fn evaluation_lease(app: &TestApp, worker: &str) -> Option<Value> {
    let response = app.post(worker, "/leases", &json!({"worker": "w1", "kinds": ["evaluate"]})).await;
    if response.status() == StatusCode::NO_CONTENT {
        return None;
    }
    Some(ok(response).await)
}

async fn has_test_metrics(app: &TestApp, run: i64) -> bool {
    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    detail["latest"].as_object().expect("latest").keys().any(|k| k.starts_with("test_"))
}

async fn a_promoted_run_is_evaluated_once_on_the_sealed_test_split(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("w", "worker").await;
    let reviewer = app.token("dr-reviewer", "reviewer").await;
    let submitter = app.token("s", "submitter").await;
    let why = json!({"reason": "best macro-F1 on the frozen validation split"});

    let a = finish_a_run(&app, &worker).await;
    fails(app.post(&submitter, &format!("/runs/{a}/promote"), &why).await, StatusCode::FORBIDDEN, "forbidden").await;
    fails(app.post(&reviewer, &format!("/runs/{a}/promote"), &json!({"reason": "  "})).await, StatusCode::BAD_REQUEST, "invalid_request")
        .await;
    let queued: Value = ok(app.get(&app.admin, "/runs?status=queued").await).await;
    let queued_run = queued["runs"][0]["id"].as_i64().expect("a queued run");
    fails(app.post(&reviewer, &format!("/runs/{queued_run}/promote"), &why).await, StatusCode::CONFLICT, "conflict").await;
    assert!(evaluation_lease(&app, &worker).await.is_none(), "nothing promoted yet");

    let first: Value = ok(app.post(&reviewer, &format!("/runs/{a}/promote"), &why).await).await;
    assert_eq!(first["status"], "queued");
    assert_eq!(first["actor"], "dr-reviewer");
    assert_eq!(first["checkpoint_sha256"], format!("{a:064x}"));
    fails(app.post(&reviewer, &format!("/runs/{a}/promote"), &why).await, StatusCode::CONFLICT, "conflict").await;
    fails(app.get(&app.admin, &format!("/promotions/{}/report", first["id"])).await, StatusCode::NOT_FOUND, "not_found").await;

    // A training lease cannot reach the test items or write test metrics.
    let training: Value = ok(app.post(&worker, "/leases", &json!({"worker": "w2", "kinds": ["train"]})).await).await;
    assert_eq!(training["kind"], "train");
    let training_lease = training["lease_id"].as_str().expect("lease");
    let train_items: Value = app.read(&worker, &format!("/leases/{training_lease}/items")).await;
    let train_items = train_items["items"].as_array().expect("items");
    assert!(!train_items.is_empty() && train_items.iter().all(|i| i["split"] != "test"), "{train_items:?}");
    let sneaky_result = json!({"outcome": "succeeded", "confusion": {"classes": CLASSES, "counts": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}});
    fails(
        app.post(&worker, &format!("/leases/{training_lease}/complete"), &sneaky_result).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let sneaky = json!({"lease_id": training_lease, "metrics": [{"key": "test_accuracy", "step": 0, "value": 1.0}]});
    fails(app.post(&worker, &format!("/runs/{}/metrics", training["run_id"]), &sneaky).await, StatusCode::BAD_REQUEST, "invalid_request")
        .await;
    fails(app.get(&reviewer, "/leases/x/items").await, StatusCode::FORBIDDEN, "forbidden").await;

    // The evaluation lease: test items only.
    let job = evaluation_lease(&app, &worker).await.expect("the evaluation is queued");
    assert_eq!(job["kind"], "evaluate");
    assert_eq!(job["run_id"], a);
    assert_eq!(job["promotion_id"], first["id"]);
    assert_eq!(job["checkpoint"]["sha256"], format!("{a:064x}"));
    let eval_lease = job["lease_id"].as_str().expect("lease").to_owned();
    // An evaluation lease writes nothing but its completion: no training metrics or results.
    let stray = json!({"lease_id": eval_lease, "metrics": [{"key": "val_macro_f1", "step": 9, "value": 1.0}]});
    fails(app.post(&worker, &format!("/runs/{a}/metrics"), &stray).await, StatusCode::CONFLICT, "lease_lost").await;
    let items: Value = app.read(&worker, &format!("/leases/{eval_lease}/items")).await;
    let items = items["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["split"] == "test"), "{items:?}");
    assert!(evaluation_lease(&app, &worker).await.is_none(), "one evaluation, one worker");
    let beat: Value = app.write(&worker, &format!("/leases/{eval_lease}/heartbeat"), &json!({})).await;
    assert_eq!(beat["action"], "continue");

    let result = json!({"outcome": "succeeded", "confusion": {"classes": CLASSES, "counts": [[1, 0, 0], [0, 1, 0], [0, 1, 0]]}});
    let done: Value = app.write(&worker, &format!("/leases/{eval_lease}/complete"), &result).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["kind"], "evaluate");
    fails(app.post(&worker, &format!("/leases/{eval_lease}/complete"), &result).await, StatusCode::CONFLICT, "lease_lost").await;
    // The evaluation's attempt history is the job's leases, as for training.
    let history: Value = app.read(&app.admin, &format!("/jobs/{}", done["id"])).await;
    assert_eq!(history["job"]["promotion_id"], first["id"]);
    assert_eq!(history["leases"].as_array().expect("leases").len(), 1);
    assert_eq!(history["leases"][0]["end_reason"], "completed");
    assert!(evaluation_lease(&app, &worker).await.is_none(), "evaluated once");

    let report: Value = app.read(&app.admin, &format!("/promotions/{}/report", first["id"])).await;
    let accuracy = report["report"]["accuracy"].as_f64().expect("accuracy");
    assert!((accuracy - 2.0 / 3.0).abs() < 1e-9, "{accuracy}");
    assert_eq!(report["report"]["per_class"][1]["precision"], 0.5);
    assert_eq!(report["by_view"]["per_class"][0]["class"], "ap");
    let csv = app.get(&app.admin, &format!("/promotions/{}/report.csv", first["id"])).await.text().await.expect("csv");
    assert!(csv.starts_with("section,class,precision,recall,f1,support\n"), "{csv}");
    assert!(csv.contains("class,ap_postop_fusion,0.5000,1.0000,0.6667,1"), "{csv}");
    assert!(csv.contains("average,accuracy,,,0.6667,3"), "{csv}");

    // Test metrics exist for the promoted run only.
    assert!(has_test_metrics(&app, a).await);
    assert!(!has_test_metrics(&app, training["run_id"].as_i64().expect("run")).await);

    // Promoting another run supersedes the first; promoting the first again reuses its result.
    let complete = json!({"outcome": "succeeded", "best_epoch": 0});
    let artifact =
        json!({"lease_id": training_lease, "kind": "best_checkpoint", "uri": "file:///b.mpk", "sha256": "cd".repeat(32), "bytes": 1});
    assert_eq!(app.post(&worker, &format!("/runs/{}/artifacts", training["run_id"]), &artifact).await.status(), StatusCode::NO_CONTENT);
    let _: Value = app.write(&worker, &format!("/leases/{training_lease}/complete"), &complete).await;
    let b = training["run_id"].as_i64().expect("run");
    let second: Value = ok(app.post(&reviewer, &format!("/runs/{b}/promote"), &json!({"reason": "fewer lateral errors"})).await).await;
    let old: Value = app.read(&app.admin, &format!("/promotions/{}", first["id"])).await;
    assert_eq!(old["superseded_by"], second["id"]);
    let third: Value = ok(app.post(&reviewer, &format!("/runs/{a}/promote"), &json!({"reason": "back to the first model"})).await).await;
    assert_eq!(third["status"], "succeeded");
    assert_eq!(third["reused_evaluation"], true);
    let listed: Vec<Value> = app.read(&app.admin, "/promotions?experiment=e").await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed.iter().filter(|p| p["superseded_by"].is_null()).count(), 1, "one promoted model at a time");

    // The audit trail holds every step, with the facts an auditor needs, and verifies.
    let log: Value = app.read(&app.admin, "/audit?experiment=e").await;
    assert_eq!(log["chain"]["ok"], true);
    let events = log["events"].as_array().expect("events");
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["promotion.create", "evaluation.start", "evaluation.succeed"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    let promote = events.iter().find(|e| e["action"] == "promotion.create").expect("promote event");
    assert_eq!(promote["actor"], "dr-reviewer");
    for key in ["checkpoint_sha256", "dataset_version", "config_hash", "code_version", "reason"] {
        assert!(promote["details"][key].is_string(), "{key} missing: {promote}");
    }
}

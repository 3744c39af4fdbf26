//! Bad input gets a clear error and nothing already stored changes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, GRID_2X2, TestApp, fails, spec};

crate::on_both_databases!(
    malformed_yaml_is_400_with_position,
    wrong_type_is_400_with_key_path,
    unknown_key_is_400_with_suggestion,
    empty_sweep_is_400,
    range_with_min_above_max_is_400,
    unregistered_dataset_is_422,
    unknown_run_is_404,
    bad_json_is_400,
    invalid_dataset_manifest_is_400,
    a_corrupt_stored_row_is_an_error_not_an_empty_value,
);

/// Registers a dataset and one experiment, so every test checks that a bad request
/// leaves earlier data alone.
async fn seeded(app: &TestApp) -> u64 {
    app.register_dataset("d", &CLASSES, 10).await;
    crate::helpers::ok::<Value>(app.submit(&spec("keep", "d", GRID_2X2)).await).await;
    app.run_count().await
}

async fn unchanged(app: &TestApp, before: u64) {
    assert_eq!(app.run_count().await, before, "a rejected request must not change stored runs");
    let experiments: Vec<Value> = app.read(&app.admin, "/experiments").await;
    assert_eq!(experiments.len(), 1);
}

async fn malformed_yaml_is_400_with_position(app: TestApp) {
    let before = seeded(&app).await;
    let body = fails(app.submit("name: x\ndataset: {name: d\nmodel: [\n").await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    let details = body.details.expect("details");
    assert_eq!(details["file"], "exp.yaml");
    assert!(details["line"].as_u64().expect("line") >= 2);
    unchanged(&app, before).await;
}

async fn wrong_type_is_400_with_key_path(app: TestApp) {
    let before = seeded(&app).await;
    let yaml = spec("bad", "d", "").replace("epochs: 2", "epochs: two");
    let body = fails(app.submit(&yaml).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    let details = body.details.expect("details");
    assert_eq!(details["path"], "train.epochs");
    assert_eq!(details["line"], 5);
    unchanged(&app, before).await;
}

async fn unknown_key_is_400_with_suggestion(app: TestApp) {
    let before = seeded(&app).await;
    let yaml = spec("bad", "d", "").replace("batch_size", "batchsize");
    let body = fails(app.submit(&yaml).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    let details = body.details.expect("details");
    assert_eq!(details["hint"], "did you mean `batch_size`?");
    unchanged(&app, before).await;
}

async fn empty_sweep_is_400(app: TestApp) {
    let before = seeded(&app).await;
    let yaml = spec("bad", "d", "sweep:\n  method: grid\n  parameters: {}\n");
    let body = fails(app.submit(&yaml).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    assert!(body.message.contains("no parameters"), "{}", body.message);
    unchanged(&app, before).await;
}

async fn range_with_min_above_max_is_400(app: TestApp) {
    let before = seeded(&app).await;
    let yaml = spec(
        "bad",
        "d",
        "sweep:\n  method: random\n  max_runs: 4\n  parameters:\n    train.optimizer.lr: {distribution: log_uniform, min: 0.1, max: 0.01}\n",
    );
    let body = fails(app.submit(&yaml).await, StatusCode::BAD_REQUEST, "invalid_spec").await;
    assert_eq!(body.details.expect("details")["path"], "sweep.parameters.train.optimizer.lr");
    unchanged(&app, before).await;
}

async fn unregistered_dataset_is_422(app: TestApp) {
    let before = seeded(&app).await;
    let body = fails(app.submit(&spec("other", "nope", "")).await, StatusCode::UNPROCESSABLE_ENTITY, "dataset_not_found").await;
    assert!(body.hint.is_some_and(|h| h.contains("cobb dataset register nope")));
    unchanged(&app, before).await;
}

async fn unknown_run_is_404(app: TestApp) {
    let before = seeded(&app).await;
    let body = fails(app.get(&app.admin, "/runs/999999").await, StatusCode::NOT_FOUND, "not_found").await;
    assert!(body.message.contains("999999"));
    fails(app.post(&app.admin, "/runs/999999/cancel", &json!({})).await, StatusCode::NOT_FOUND, "not_found").await;
    fails(app.get(&app.admin, "/experiments/nope").await, StatusCode::NOT_FOUND, "not_found").await;
    fails(app.get(&app.admin, "/datasets/nope").await, StatusCode::NOT_FOUND, "not_found").await;
    unchanged(&app, before).await;
}

async fn bad_json_is_400(app: TestApp) {
    let before = seeded(&app).await;
    let response = app
        .http
        .post(format!("{}/experiments", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{\"yaml\": ")
        .send()
        .await
        .expect("request");
    fails(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    unchanged(&app, before).await;
}

async fn invalid_dataset_manifest_is_400(app: TestApp) {
    let before = seeded(&app).await;
    let body = json!({"name": "d2", "root": "/x", "split": "70/15/15", "seed": 1, "group_by": "patient",
        "classes": ["a"], "items": [{"path": "a.png", "sha256": "00", "bytes": 1, "label": "a", "split": "train"}]});
    fails(app.post(&app.admin, "/datasets", &body).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let body = json!({"name": "d2", "root": "/x", "split": "80/15/15", "seed": 1, "group_by": "patient",
        "classes": ["a"], "items": []});
    let err = fails(app.post(&app.admin, "/datasets", &body).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(err.message.contains("70/15/15"), "{}", err.message);
    let datasets: Vec<Value> = app.read(&app.admin, "/datasets").await;
    assert_eq!(datasets.len(), 1, "the rejected dataset was not created");
    unchanged(&app, before).await;
}

mod limits {
    use super::*;

    crate::on_both_databases_with!(|c: &mut server::ServerConfig| c.max_body_bytes = 64 * 1024; oversized_body_is_413);

    async fn oversized_body_is_413(app: TestApp) {
        let before = seeded(&app).await;
        let huge = format!("{}# {}\n", spec("big", "d", ""), "x".repeat(100 * 1024));
        let body = fails(app.submit(&huge).await, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
        assert!(body.message.contains("65536"), "{}", body.message);
        unchanged(&app, before).await;
    }
}

/// A row damaged in the database (here a run's parameters and a job's status) is an error
/// (500, logged with the row and column), never shown as "no parameters" or a made-up status;
/// the runs around it still read.
async fn a_corrupt_stored_row_is_an_error_not_an_empty_value(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let submitted: Value = crate::helpers::ok(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let first = submitted["runs"][0]["run_id"].as_i64().expect("run id");
    let second = submitted["runs"][1]["run_id"].as_i64().expect("run id");
    let db = sea_orm::Database::connect(&app.database_url).await.expect("connect");
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!("UPDATE runs SET params_json = '{{not json' WHERE id = {first}")).await.expect("damage");
    fails(app.get(&app.admin, &format!("/runs/{first}")).await, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    let fine: Value = app.read(&app.admin, &format!("/runs/{second}")).await;
    assert_eq!(fine["run"]["id"], second);
    db.execute_unprepared(&format!("UPDATE jobs SET status = 'exploded' WHERE run_id = {second}")).await.expect("damage");
    fails(app.get(&app.admin, &format!("/runs/{second}")).await, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
}

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, GRID_2X2, TestApp, fails, spec};

crate::on_both_databases!(
    no_token_is_401,
    unknown_token_is_401,
    a_role_below_the_need_is_403,
    the_worker_role_is_separate,
    health_needs_no_token,
    token_names_are_unique,
);

async fn no_token_is_401(app: TestApp) {
    let response = app.http.get(format!("{}/runs", app.base)).send().await.expect("request");
    let body = fails(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(body.hint.is_some_and(|h| h.contains("--token")));
}

async fn unknown_token_is_401(app: TestApp) {
    fails(app.get("cobb_not_a_token", "/runs").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn a_role_below_the_need_is_403(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let viewer = app.token("alice", "viewer").await;
    let body =
        fails(app.post(&viewer, "/experiments", &json!({"yaml": spec("e", "d", GRID_2X2)})).await, StatusCode::FORBIDDEN, "forbidden")
            .await;
    assert!(body.message.contains("submitter"), "{}", body.message);
    assert_eq!(app.run_count().await, 0, "nothing stored");
    let submitter = app.token("bob", "submitter").await;
    fails(app.post(&submitter, "/tokens", &json!({"name": "x", "role": "admin"})).await, StatusCode::FORBIDDEN, "forbidden").await;
    // Viewers read.
    let list: Value = app.read(&viewer, "/runs").await;
    assert_eq!(list["total"], 0);
}

async fn the_worker_role_is_separate(app: TestApp) {
    let worker = app.token("w1", "worker").await;
    let reviewer = app.token("rev", "reviewer").await;
    fails(app.get(&worker, "/experiments").await, StatusCode::FORBIDDEN, "forbidden").await;
    fails(app.post(&reviewer, "/leases", &json!({"worker": "x"})).await, StatusCode::FORBIDDEN, "forbidden").await;
    let response = app.post(&worker, "/leases", &json!({"worker": "w1"})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "nothing queued yet");
}

async fn health_needs_no_token(app: TestApp) {
    let health: Value = crate::helpers::ok(app.http.get(format!("{}/health", app.base)).send().await.expect("request")).await;
    assert_eq!(health["status"], "ok");
    let expected = match app.backend {
        crate::helpers::Backend::Sqlite => "sqlite",
        crate::helpers::Backend::Postgres => "postgres",
    };
    assert_eq!(health["database"], expected);
}

async fn token_names_are_unique(app: TestApp) {
    app.token("carol", "viewer").await;
    fails(app.post(&app.admin, "/tokens", &json!({"name": "carol", "role": "admin"})).await, StatusCode::CONFLICT, "conflict").await;
    let who: Value = app.read(&app.admin, "/whoami").await;
    assert_eq!(who["role"], "admin");
}

mod audit {
    use super::*;

    crate::on_both_databases!(the_audit_chain_verifies_and_catches_a_tampered_event);

    async fn the_audit_chain_verifies_and_catches_a_tampered_event(app: TestApp) {
        app.register_dataset("d", &CLASSES, 10).await;
        crate::helpers::ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
        app.token("ann", "viewer").await;
        let log: Value = app.read(&app.admin, "/audit").await;
        assert_eq!(log["chain"]["ok"], true, "{log}");
        let actions: Vec<&str> = log["events"].as_array().expect("events").iter().filter_map(|e| e["action"].as_str()).collect();
        assert_eq!(actions, ["token.create", "dataset.register", "experiment.submit", "token.create"]);
        let only: Value = app.read(&app.admin, "/audit?experiment=e").await;
        assert_eq!(only["events"].as_array().map(Vec::len), Some(1));

        // Someone with database access rewrites who submitted the experiment.
        let db = sea_orm::Database::connect(&app.database_url).await.expect("connect");
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("UPDATE audit_events SET actor = 'mallory' WHERE action = 'experiment.submit'").await.expect("tamper");
        let log: Value = app.read(&app.admin, "/audit").await;
        assert_eq!(log["chain"]["ok"], false);
        assert_eq!(log["chain"]["first_broken"], 3);
        assert!(log["chain"]["reason"].as_str().expect("reason").contains("changed after it was written"));

        // Removing an event breaks the link after it.
        db.execute_unprepared("DELETE FROM audit_events WHERE action = 'experiment.submit'").await.expect("delete");
        let log: Value = app.read(&app.admin, "/audit").await;
        assert_eq!(log["chain"]["first_broken"], 4);
    }
}

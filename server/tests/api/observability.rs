//! Operations (issue 16): `/metrics` (Prometheus text exposition), scraped as Prometheus
//! would, and backups.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, GRID_2X2, TestApp, ok, spec};

crate::on_both_databases!(
    prometheus_scrapes_the_queue_the_counters_and_request_latencies,
    a_backup_is_a_sqlite_copy_or_says_to_use_pg_dump
);

async fn a_backup_is_a_sqlite_copy_or_says_to_use_pg_dump(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let viewer = app.token("v", "viewer").await;
    crate::helpers::fails(app.post(&viewer, "/backup", &json!({})).await, StatusCode::FORBIDDEN, "forbidden").await;
    let answer = app.post(&app.admin, "/backup", &json!({})).await;
    match app.backend {
        crate::helpers::Backend::Sqlite => {
            assert_eq!(answer.status(), StatusCode::OK);
            let bytes = answer.bytes().await.expect("body");
            assert!(bytes.starts_with(b"SQLite format 3\0"), "a SQLite database");
            // The staged copy goes once the stream has ended (just after the last byte).
            let staged = || {
                std::fs::read_dir(app.data_dir())
                    .expect("dir")
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".backup-"))
                    .count()
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while staged() > 0 {
                assert!(std::time::Instant::now() < deadline, "the staged copy is gone once sent");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        crate::helpers::Backend::Postgres => {
            let body = crate::helpers::fails(answer, StatusCode::CONFLICT, "conflict").await;
            assert!(body.message.contains("pg_dump"), "{}", body.message);
        }
    }
}

async fn prometheus_scrapes_the_queue_the_counters_and_request_latencies(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let _: Value = ok(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("w", "worker").await;
    let lease: Value = ok(app.post(&worker, "/leases", &json!({"worker": "w"})).await).await;
    let batch = json!({"lease_id": lease["lease_id"], "metrics": [
        {"key": "train_loss", "step": 0, "value": 1.0}, {"key": "val_loss", "step": 0, "value": 1.1},
        {"key": "val_macro_f1", "step": 0, "value": 0.3}]});
    let _: Value = ok(app.post(&worker, &format!("/runs/{}/metrics", lease["run_id"]), &batch).await).await;
    let root = app.base.trim_end_matches("/api/v1");
    let anonymous = app.http.get(format!("{root}/metrics")).send().await.expect("scrape");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "a scrape needs a token (viewer)");
    let viewer = app.token("prometheus", "viewer").await;
    let response = app.http.get(format!("{root}/metrics")).bearer_auth(&viewer).send().await.expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().expect("type").starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.expect("text");
    for needle in [
        "cobb_jobs{experiment=\"e\",kind=\"train\",status=\"queued\"} 3",
        "cobb_jobs{experiment=\"e\",kind=\"train\",status=\"running\"} 1",
        "cobb_leases_total{kind=\"train\"} 1",
        "cobb_metric_points_total 3",
        "cobb_lease_expiries_total 0",
        "# TYPE cobb_http_request_duration_seconds histogram",
        "cobb_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/leases\"} 1",
        "cobb_db_pool_connections{pool=\"write\",state=\"idle\"}",
    ] {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
    // Every line is a comment or `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("a sample");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(name.starts_with("cobb_") && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()), "{line}");
        assert_eq!(name.matches('{').count(), name.matches('}').count(), "{line}");
    }
}

//! `/metrics` (Prometheus text exposition), scraped as Prometheus would (issue 16).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, GRID_2X2, TestApp, ok, spec};

crate::on_both_databases!(prometheus_scrapes_the_queue_the_counters_and_request_latencies);

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

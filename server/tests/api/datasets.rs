use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{CLASSES, TestApp, fails, spec};

crate::on_both_databases!(
    registering_the_same_content_returns_the_same_version,
    a_dataset_version_reports_counts_per_class_and_split,
    an_experiment_stays_on_its_frozen_version,
);

async fn registering_the_same_content_returns_the_same_version(app: TestApp) {
    let first = app.register_dataset("d", &CLASSES, 10).await;
    assert_eq!(first["created"], true);
    assert_eq!(first["version"].as_str().expect("version").len(), 64);
    let again = app.register_dataset("d", &CLASSES, 10).await;
    assert_eq!(again["created"], false);
    assert_eq!(again["version"], first["version"]);
    assert_eq!(again["number"], 1);
    let more = app.register_dataset("d", &CLASSES, 11).await;
    assert_ne!(more["version"], first["version"]);
    assert_eq!(more["number"], 2);
}

async fn a_dataset_version_reports_counts_per_class_and_split(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let info: Value = app.read(&app.admin, "/datasets/d").await;
    assert_eq!(info["items"], 30);
    let counts = info["counts"].as_array().expect("counts");
    assert_eq!(counts.len(), 3);
    assert_eq!(counts[0]["label"], "ap_preop", "classes keep their registered order");
    assert_eq!((counts[0]["train"].as_u64(), counts[0]["val"].as_u64(), counts[0]["test"].as_u64()), (Some(7), Some(2), Some(1)));
    let version = info["version"].as_str().expect("version");
    let by_prefix: Value = app.read(&app.admin, &format!("/datasets/d?version={}", &version[..10])).await;
    assert_eq!(by_prefix["version"], version);
    let by_number: Value = app.read(&app.admin, "/datasets/d?version=v1").await;
    assert_eq!(by_number["version"], version);
}

async fn an_experiment_stays_on_its_frozen_version(app: TestApp) {
    let v1 = app.register_dataset("d", &CLASSES, 10).await;
    crate::helpers::ok::<Value>(app.submit(&spec("study", "d", "")).await).await;
    app.register_dataset("d", &CLASSES, 12).await;
    // Without a pinned version the spec now resolves to v2: refused, nothing queued.
    let body = fails(app.submit(&spec("study", "d", "")).await, StatusCode::CONFLICT, "conflict").await;
    assert!(body.message.contains("frozen"), "{}", body.message);
    assert_eq!(app.run_count().await, 1);
    // Pinning the original version adds a sweep to the same experiment.
    let v1_hash = v1["version"].as_str().expect("hash");
    let pinned = spec("study", "d", "").replace("{name: d}", &format!("{{name: d, version: {}}}", &v1_hash[..12]));
    let result: Value = crate::helpers::ok(app.submit(&pinned).await).await;
    assert_eq!(result["dataset_version"], v1_hash);
    let detail: Value = app.read(&app.admin, "/experiments/study").await;
    assert_eq!(detail["sweeps"].as_array().expect("sweeps").len(), 2);
}

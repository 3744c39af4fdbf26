//! Classification batches: thresholds fixed at promotion from the validation predictions, the
//! batch's job run by its creator or by a worker through the one lease protocol (fenced
//! uploads), checked uploads, and reviews by reviewers only, each an audit event.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, TestApp, fails, ok, spec};

crate::on_both_databases!(a_promoted_model_classifies_under_its_lease_and_reviewers_label);

/// Trains run 1 (a lease completed by hand) with validation predictions that make its
/// confusion matrix; returns its id.
async fn a_run_with_validation_predictions(app: &TestApp, worker: &str) -> i64 {
    let lease: Value = ok(app.post(worker, "/leases", &json!({"worker": "w1", "kinds": ["train"]})).await).await;
    let (lease_id, run) = (lease["lease_id"].as_str().expect("lease").to_owned(), lease["run_id"].as_i64().expect("run"));
    let results = json!({"lease_id": lease_id, "epoch": 1, "confusion": {"classes": CLASSES, "counts": [[2, 0, 0], [0, 2, 0], [0, 1, 1]]}});
    assert_eq!(app.post(worker, &format!("/runs/{run}/results"), &results).await.status(), StatusCode::NO_CONTENT);
    // Class 1 (ap_postop_fusion): right at 0.95, wrong at 0.7 (a lat_preop), right at 0.6.
    let p =
        |item: &str, predicted: u32, probabilities: [f32; 3]| json!({"item": item, "predicted": predicted, "probabilities": probabilities});
    let predictions = json!({"lease_id": lease_id, "epoch": 1, "predictions": [
        p("ap_preop/0007.png", 0, [0.9, 0.05, 0.05]),
        p("ap_preop/0008.png", 0, [0.8, 0.1, 0.1]),
        p("ap_postop_fusion/0007.png", 1, [0.025, 0.95, 0.025]),
        p("ap_postop_fusion/0008.png", 1, [0.2, 0.6, 0.2]),
        p("lat_preop/0007.png", 1, [0.1, 0.7, 0.2]),
        p("lat_preop/0008.png", 2, [0.05, 0.05, 0.9]),
    ]});
    assert!(app.post(worker, &format!("/runs/{run}/predictions"), &predictions).await.status().is_success());
    let artifact = json!({"lease_id": lease_id, "kind": "best_checkpoint", "uri": format!("file:///ckpt/{run}/model.bpk"),
        "sha256": format!("{run:064x}"), "bytes": 10});
    assert_eq!(app.post(worker, &format!("/runs/{run}/artifacts"), &artifact).await.status(), StatusCode::NO_CONTENT);
    let done: Value = app.write(worker, &format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded", "best_epoch": 1})).await;
    assert_eq!(done["status"], "succeeded");
    run
}

async fn a_promoted_model_classifies_under_its_lease_and_reviewers_label(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    ok::<Value>(app.submit(&spec("e", "d", "promotion: {auto_accept_precision: 0.99}\n")).await).await;
    let worker = app.token("w", "worker").await;
    let reviewer = app.token("rev", "reviewer").await;
    let submitter = app.token("sub", "submitter").await;
    let other = app.token("sub2", "submitter").await;
    let viewer = app.token("view", "viewer").await;
    let run = a_run_with_validation_predictions(&app, &worker).await;

    // No promoted model yet: nothing to classify with.
    let here = json!({"experiment": "e", "path": "/exports/2026-12", "here": true});
    fails(app.post(&submitter, "/classifications", &here).await, StatusCode::CONFLICT, "conflict").await;

    // The thresholds are fixed at promotion from the validation predictions.
    let promotion: Value = app.write(&reviewer, &format!("/runs/{run}/promote"), &json!({"reason": "best"})).await;
    let auto = &promotion["auto_accept"];
    assert_eq!(auto["target_precision"], 0.99);
    assert_eq!(auto["validation_images"], 6);
    let threshold = |c: usize| auto["classes"][c]["threshold"].as_f64();
    assert!((threshold(0).expect("ap_preop") - 0.8).abs() < 1e-6, "{auto}");
    assert!((threshold(1).expect("ap_postop_fusion") - 0.95).abs() < 1e-6, "{auto}");
    assert_eq!((auto["classes"][1]["accepted"].as_u64(), auto["classes"][1]["predicted"].as_u64()), (Some(1), Some(3)));
    assert!((threshold(2).expect("lat_preop") - 0.9).abs() < 1e-6, "{auto}");
    // Until the test evaluation has succeeded the model classifies nothing.
    fails(app.post(&submitter, "/classifications", &here).await, StatusCode::CONFLICT, "conflict").await;
    let eval: Value = ok(app.post(&worker, "/leases", &json!({"worker": "w1", "kinds": ["evaluate"]})).await).await;
    let eval_lease = eval["lease_id"].as_str().expect("lease");
    let result = json!({"outcome": "succeeded", "confusion": {"classes": CLASSES, "counts": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}});
    let _: Value = app.write(&worker, &format!("/leases/{eval_lease}/complete"), &result).await;

    // A viewer may not classify; a submitter makes a batch held for its own process.
    fails(app.post(&viewer, "/classifications", &here).await, StatusCode::FORBIDDEN, "forbidden").await;
    let batch: Value = app.write(&submitter, "/classifications", &here).await;
    let (id, job) = (batch["batch"]["id"].as_i64().expect("id"), batch["batch"]["job_id"].as_i64().expect("job"));
    assert_eq!(batch["batch"]["status"], "queued");
    assert_eq!(batch["classes"].as_array().map(Vec::len), Some(3));
    // Workers never get it from the queue; another token cannot lease it by name, nor can a
    // submitter take jobs from the queue.
    let none = app.post(&worker, "/leases", &json!({"worker": "w1", "kinds": ["classify"]})).await;
    assert_eq!(none.status(), StatusCode::NO_CONTENT);
    fails(app.post(&other, "/leases", &json!({"worker": "x", "job": job})).await, StatusCode::CONFLICT, "conflict").await;
    fails(app.post(&submitter, "/leases", &json!({"worker": "x"})).await, StatusCode::FORBIDDEN, "forbidden").await;
    let lease: Value = ok(app.post(&submitter, "/leases", &json!({"worker": "cli", "device": "cpu", "job": job})).await).await;
    assert_eq!(lease["kind"], "classify");
    assert_eq!(lease["batch_id"], id);
    assert_eq!(lease["path"], "/exports/2026-12");
    assert_eq!(lease["checkpoint"]["sha256"], format!("{run:064x}"));
    assert!((lease["auto_accept"]["classes"][1]["threshold"].as_f64().expect("threshold") - 0.95).abs() < 1e-6);
    let lease_id = lease["lease_id"].as_str().expect("lease").to_owned();
    // A classification reads no dataset items.
    fails(app.get(&submitter, &format!("/leases/{lease_id}/items")).await, StatusCode::FORBIDDEN, "forbidden").await;

    // Uploads are checked before anything is stored.
    let upload = |items: Value| json!({"lease_id": lease_id, "items": items});
    let good = json!([
        {"path": "a/1.dcm", "sha256": "ab".repeat(32), "predicted": 0, "confidence": 0.97, "decision": "accept", "reason": "ok"},
        {"path": "a/2.dcm", "sha256": "cd".repeat(32), "predicted": 1, "confidence": 0.62, "decision": "review", "reason": "low"},
        {"path": "b/3.png", "sha256": "ef".repeat(32), "predicted": 2, "confidence": 0.91, "decision": "accept", "reason": "ok"},
        {"path": "notes.txt", "sha256": "01".repeat(32), "decision": "skipped", "reason": "not an image: neither DICOM, PNG nor JPEG"}
    ]);
    for bad in [
        json!([{"path": "x.png", "predicted": 3, "confidence": 0.5, "decision": "accept", "reason": ""}]),
        json!([{"path": "../x.png", "predicted": 0, "confidence": 0.5, "decision": "accept", "reason": ""}]),
        json!([{"path": "x.png", "predicted": 0, "confidence": 0.5, "decision": "skipped", "reason": ""}]),
        json!([{"path": "x.png", "sha256": "nothex", "predicted": 0, "confidence": 0.5, "decision": "review", "reason": ""}]),
    ] {
        fails(
            app.post(&submitter, &format!("/classifications/{id}/items"), &upload(bad)).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let stored: Value = app.write(&submitter, &format!("/classifications/{id}/items"), &upload(good.clone())).await;
    assert_eq!(stored["stored"], 4);
    // Another token cannot write with the lease, nor to another batch.
    fails(app.post(&other, &format!("/classifications/{id}/items"), &upload(good.clone())).await, StatusCode::CONFLICT, "lease_lost").await;
    let done: Value =
        app.write(&submitter, &format!("/leases/{lease_id}/complete"), &json!({"outcome": "succeeded", "images_per_second": 42.5})).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["kind"], "classify");
    // The lease has ended: anything it sends now is refused.
    fails(app.post(&submitter, &format!("/classifications/{id}/items"), &upload(good)).await, StatusCode::CONFLICT, "lease_lost").await;

    let detail: Value = app.read(&viewer, &format!("/classifications/{id}")).await;
    let b = &detail["batch"];
    assert_eq!((b["status"].as_str(), b["images"].as_u64(), b["accepted"].as_u64()), (Some("succeeded"), Some(4), Some(2)));
    assert_eq!((b["review"].as_u64(), b["skipped"].as_u64(), b["images_per_second"].as_f64()), (Some(1), Some(1), Some(42.5)));
    assert_eq!(detail["counts"][1], json!({"class": "ap_postop_fusion", "accepted": 0, "review": 1, "reviewed": 0}));
    let listed: Value = app.read(&viewer, "/classifications?experiment=e").await;
    assert_eq!(listed[0]["id"], id);

    // Reviews: reviewers only, checked whole, each label an audit event.
    let label = |path: &str, label: &str| json!({"labels": [{"path": path, "label": label}]});
    fails(
        app.post(&viewer, &format!("/classifications/{id}/review"), &label("a/2.dcm", "lat_preop")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    fails(
        app.post(&submitter, &format!("/classifications/{id}/review"), &label("a/2.dcm", "lat_preop")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for bad in [label("a/9.dcm", "lat_preop"), label("a/2.dcm", "cat"), label("notes.txt", "lat_preop")] {
        fails(app.post(&reviewer, &format!("/classifications/{id}/review"), &bad).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let two = json!({"labels": [{"path": "a/2.dcm", "label": "lat_preop"}, {"path": "b/3.png", "label": "lat_preop"}]});
    let reviewed: Value = app.write(&reviewer, &format!("/classifications/{id}/review"), &two).await;
    assert_eq!(reviewed, json!({"reviewed": 2, "corrected": 1, "left_to_review": 0}));
    let items: Value = app.read(&viewer, &format!("/classifications/{id}/items?decision=review")).await;
    assert_eq!(items[0]["path"], "a/2.dcm");
    assert_eq!((items[0]["predicted"].as_str(), items[0]["reviewed_label"].as_str()), (Some("ap_postop_fusion"), Some("lat_preop")));
    assert_eq!(items[0]["reviewed_by"], "rev");
    let audit: Value = app.read(&app.admin, "/audit?experiment=e").await;
    let actions: Vec<&str> = audit["events"].as_array().expect("events").iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "review.label").count(), 2, "{actions:?}");
    assert!(actions.contains(&"classify.create") && actions.contains(&"classify.finish"), "{actions:?}");

    // A batch for a worker: handed out by the queue to a worker that takes classifications.
    let queued: Value = app.write(&submitter, "/classifications", &json!({"experiment": "e", "path": "/mnt/pacs"})).await;
    let taken: Value = ok(app.post(&worker, "/leases", &json!({"worker": "gpu-1", "kinds": ["classify"]})).await).await;
    assert_eq!(taken["batch_id"], queued["batch"]["id"]);
    let failed: Value = app
        .write(
            &worker,
            &format!("/leases/{}/complete", taken["lease_id"].as_str().expect("lease")),
            &json!({"outcome": "failed",
            "error": "worker `gpu-1` classifies only under /data (its --classify-root)"}),
        )
        .await;
    assert_eq!(failed["status"], "failed");
    let detail: Value = app.read(&viewer, &format!("/classifications/{}", queued["batch"]["id"])).await;
    assert!(detail["batch"]["error"].as_str().unwrap_or_default().contains("--classify-root"), "{detail}");

    // The pages: the experiment lists its batches, the batch page its review list; a reviewer
    // labels through the page's form, which needs the session's CSRF token.
    let mut browser = crate::ui::Browser::new(&app);
    browser.login(&reviewer).await;
    let page = browser.page("/ui/experiments/e").await;
    assert!(page.contains(&format!("/ui/classifications/{id}")), "{page}");
    let page = browser.page(&format!("/ui/classifications/{id}")).await;
    // (minijinja escapes `/` as `&#x2f;`; a browser reads it back.)
    assert!(page.contains("a&#x2f;2.dcm") && page.contains("notes.txt") && page.contains("lat_preop (by rev)"), "{page}");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("the review form").to_owned();
    let path = format!("/ui/classifications/{id}/review");
    let refused = browser.post(&path, &[("csrf", "forged"), ("label:a/2.dcm", "ap_preop")]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let stored = browser.post(&path, &[("csrf", csrf.as_str()), ("label:a/2.dcm", "ap_preop"), ("label:b/3.png", "")]).await;
    assert_eq!(stored.status(), StatusCode::SEE_OTHER);
    let items: Value = app.read(&viewer, &format!("/classifications/{id}/items?decision=review")).await;
    assert_eq!(items[0]["reviewed_label"], "ap_preop");
    let mut as_viewer = crate::ui::Browser::new(&app);
    as_viewer.login(&viewer).await;
    let page = as_viewer.page(&format!("/ui/classifications/{id}")).await;
    assert!(!page.contains("<select name=\"label:"), "a viewer gets no review form");
    let page = browser.page(&format!("/ui/promotions/{}", promotion["id"])).await;
    assert!(page.contains("Auto-accept thresholds") && page.contains("1 / 3"), "{page}");
}

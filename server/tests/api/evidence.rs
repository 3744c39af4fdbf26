//! Stored predictions and the evidence drawn from them (issue 14), as a worker sends them.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, GRID_2X2, TestApp, fails, ok, spec};

crate::on_both_databases!(
    predictions_are_stored_checked_and_make_the_stored_table,
    predictions_that_do_not_fit_are_refused_and_nothing_is_lost,
    two_runs_are_compared_on_the_same_patients,
    acceptance_criteria_are_fixed_before_the_test_split_is_opened_and_judged_on_it,
    a_promotion_that_needs_two_signatures_waits_for_a_second_reviewer,
);

/// The validation items of the helper's dataset (20 per class: 4 in val per class).
fn val_items() -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        for i in [7, 8, 17, 18] {
            out.push((format!("{class}/{i:04}.png"), c));
        }
    }
    out
}

/// Predictions that get item `k` wrong when `wrong(k)`, with their confusion matrix.
fn predictions(wrong: impl Fn(usize) -> bool) -> (Vec<Value>, Vec<Vec<u64>>) {
    let mut counts = vec![vec![0u64; 3]; 3];
    let mut out = Vec::new();
    for (k, (item, truth)) in val_items().into_iter().enumerate() {
        let predicted = if wrong(k) { (truth + 1) % 3 } else { truth };
        counts[truth][predicted] += 1;
        let mut probabilities = vec![0.1f32; 3];
        probabilities[predicted] = 0.8;
        out.push(json!({"item": item, "predicted": predicted, "probabilities": probabilities}));
    }
    (out, counts)
}

async fn leased_run(app: &TestApp, worker: &str) -> (i64, String) {
    let lease: Value = ok(app.post(worker, "/leases", &json!({"worker": "w", "device": "cpu"})).await).await;
    (lease["run_id"].as_i64().expect("run"), lease["lease_id"].as_str().expect("lease").to_owned())
}

async fn report_epoch(
    app: &TestApp,
    worker: &str,
    run: i64,
    lease: &str,
    epoch: i64,
    counts: &[Vec<u64>],
    preds: &[Value],
) -> reqwest::Response {
    let results = json!({"lease_id": lease, "epoch": epoch, "confusion": {"classes": CLASSES, "counts": counts}});
    assert_eq!(app.post(worker, &format!("/runs/{run}/results"), &results).await.status(), StatusCode::NO_CONTENT);
    app.post(worker, &format!("/runs/{run}/predictions"), &json!({"lease_id": lease, "epoch": epoch, "predictions": preds})).await
}

async fn predictions_are_stored_checked_and_make_the_stored_table(app: TestApp) {
    app.register_dataset("d", &CLASSES, 20).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("box", "worker").await;
    let (run, lease) = leased_run(&app, &worker).await;
    let (preds, counts) = predictions(|k| k % 4 == 1);
    assert_eq!(report_epoch(&app, &worker, run, &lease, 0, &counts, &preds).await.status(), StatusCode::NO_CONTENT);
    let done: Value = app.write(&worker, &format!("/leases/{lease}/complete"), &json!({"outcome": "succeeded", "best_epoch": 0})).await;
    assert_eq!(done["status"], "succeeded");

    // Given back with the item's hashed patient and truth; no pixels, no raw id.
    let set: Value = app.read(&app.admin, &format!("/runs/{run}/predictions")).await;
    assert_eq!(set["epoch"], 0);
    let stored = set["predictions"].as_array().expect("predictions");
    assert_eq!(stored.len(), 12);
    assert!(stored.iter().all(|p| p["patient"].as_str().is_some_and(|h| h.starts_with('p'))), "{set}");
    // The per-class table recomputed from the predictions is the stored one, number for number.
    let evidence: Value = app.read(&app.admin, &format!("/runs/{run}/evidence")).await;
    let detail: Value = app.read(&app.admin, &format!("/runs/{run}")).await;
    let table = detail["class_results"]["per_class"].as_array().expect("stored table");
    for (stored, recomputed) in table.iter().zip(evidence["recomputed"]["per_class"].as_array().expect("recomputed")) {
        for key in ["class", "precision", "recall", "f1", "support"] {
            assert_eq!(stored[key], recomputed[key], "{key}: {stored} vs {recomputed}");
        }
    }
    // Intervals bracket their estimates; 12 images from 4 patients give wide ones, flagged.
    let intervals = &evidence["intervals"];
    assert_eq!(intervals["images"], 12);
    assert_eq!(intervals["patients"], 4);
    assert_eq!(intervals["replicates"], 2000);
    let accuracy = &intervals["accuracy"];
    assert_eq!(accuracy["estimate"], 0.75);
    assert!(accuracy["low"].as_f64() <= Some(0.75) && accuracy["high"].as_f64() >= Some(0.75), "{accuracy}");
    assert!(intervals["per_class"].as_array().expect("classes").iter().any(|c| c["wide"] == true), "{intervals}");
    // The same answer twice (seeded; cached).
    let again: Value = app.read(&app.admin, &format!("/runs/{run}/evidence")).await;
    assert_eq!(again["intervals"], evidence["intervals"]);
}

async fn predictions_that_do_not_fit_are_refused_and_nothing_is_lost(app: TestApp) {
    app.register_dataset("d", &CLASSES, 20).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("box", "worker").await;
    let (run, lease) = leased_run(&app, &worker).await;
    let (good, counts) = predictions(|_| false);
    assert_eq!(report_epoch(&app, &worker, run, &lease, 0, &counts, &good).await.status(), StatusCode::NO_CONTENT);
    let post = |preds: Value, epoch: i64| {
        let (app, worker, lease) = (&app, &worker, &lease);
        async move {
            app.post(worker, &format!("/runs/{run}/predictions"), &json!({"lease_id": lease, "epoch": epoch, "predictions": preds})).await
        }
    };
    // Not the model the matrix counted.
    let (other, _) = predictions(|k| k == 0);
    fails(post(json!(other), 0).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    // An epoch with no stored results.
    fails(post(json!(good), 5).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    // A test item among validation predictions; an unknown item; a duplicate; bad probabilities.
    let mut test_item = good.clone();
    test_item[0]["item"] = json!("ap_preop/0009.png");
    fails(post(json!(test_item), 0).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let mut unknown = good.clone();
    unknown[0]["item"] = json!("../../etc/passwd");
    fails(post(json!(unknown), 0).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let mut twice = good.clone();
    twice[1] = twice[0].clone();
    fails(post(json!(twice), 0).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let mut bad = good.clone();
    bad[0]["probabilities"] = json!([0.9, 0.9, 0.1]);
    fails(post(json!(bad), 0).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    // The stored set is the good one, untouched by every refusal.
    let set: Value = app.read(&app.admin, &format!("/runs/{run}/predictions")).await;
    assert!(set["predictions"].as_array().expect("stored").iter().all(|p| p["truth"] == p["predicted"]), "{set}");
    // Another worker's token, or an ended lease, is refused as every worker write is.
    let stranger = app.token("stranger", "worker").await;
    let foreign =
        app.post(&stranger, &format!("/runs/{run}/predictions"), &json!({"lease_id": lease, "epoch": 0, "predictions": good})).await;
    fails(foreign, StatusCode::CONFLICT, "lease_lost").await;
    let _: Value = app.write(&worker, &format!("/leases/{lease}/complete"), &json!({"outcome": "succeeded", "best_epoch": 0})).await;
    fails(post(json!(good), 0).await, StatusCode::CONFLICT, "lease_lost").await;
    // A training completion cannot carry predictions.
    let (run2, lease2) = leased_run(&app, &worker).await;
    let complete = json!({"outcome": "succeeded", "best_epoch": 0, "predictions": good});
    fails(app.post(&worker, &format!("/leases/{lease2}/complete"), &complete).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let missing = app.get(&app.admin, &format!("/runs/{run2}/evidence")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

async fn two_runs_are_compared_on_the_same_patients(app: TestApp) {
    app.register_dataset("d", &CLASSES, 20).await;
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let worker = app.token("box", "worker").await;
    // A is right everywhere; B misses every ap_postop_fusion image (items 4..8).
    let (a, lease_a) = leased_run(&app, &worker).await;
    let (pa, ca) = predictions(|_| false);
    assert_eq!(report_epoch(&app, &worker, a, &lease_a, 0, &ca, &pa).await.status(), StatusCode::NO_CONTENT);
    let (b, lease_b) = leased_run(&app, &worker).await;
    let (pb, cb) = predictions(|k| (4..8).contains(&k));
    assert_eq!(report_epoch(&app, &worker, b, &lease_b, 0, &cb, &pb).await.status(), StatusCode::NO_CONTENT);
    let versus: Value = app.read(&app.admin, &format!("/runs/{a}/versus/{b}")).await;
    let c = &versus["comparison"];
    assert_eq!(c["mcnemar"]["only_a_right"], 4);
    assert_eq!(c["mcnemar"]["only_b_right"], 0);
    // 2 * (1/2)^4 = 0.125: four discordant images are not enough to tell the runs apart.
    assert!((c["mcnemar"]["p_value"].as_f64().expect("p") - 0.125).abs() < 1e-12, "{c}");
    let fusion = c["recall"].as_array().expect("recall").iter().find(|d| d["metric"] == "recall/ap_postop_fusion").expect("class");
    assert_eq!(fusion["difference"]["estimate"], 1.0);
    // B predicts lat_preop for the missed fusion images: lat_preop's precision drops, paired.
    let precision = c["precision"].as_array().expect("precision");
    assert_eq!(precision.len(), 3);
    let lat = precision.iter().find(|d| d["metric"] == "precision/lat_preop").expect("class");
    assert!(lat["difference"]["estimate"].as_f64().is_some_and(|d| d > 0.0), "{lat}");
    let same = c["recall"].as_array().expect("recall").iter().find(|d| d["metric"] == "recall/ap_preop").expect("class");
    assert_eq!(same["distinguishable"], false);
    assert_eq!(same["difference"]["estimate"], 0.0);
    let reversed: Value = app.read(&app.admin, &format!("/runs/{b}/versus/{a}")).await;
    assert_eq!(
        reversed["comparison"]["macro_f1"]["difference"]["estimate"].as_f64(),
        c["macro_f1"]["difference"]["estimate"].as_f64().map(|d| -d)
    );
}

async fn acceptance_criteria_are_fixed_before_the_test_split_is_opened_and_judged_on_it(app: TestApp) {
    app.register_dataset("d", &CLASSES, 20).await;
    let with = |criteria: &str| format!("{}promotion:\n  criteria: {criteria}\n", spec("e", "d", GRID_2X2));
    // A class the dataset does not have is refused at submission.
    let unknown = app.submit(&with("[{metric: test_recall/lat_postop_tether, min: 0.9}]")).await;
    fails(unknown, StatusCode::BAD_REQUEST, "invalid_request").await;
    ok::<Value>(app.submit(&with("[{metric: test_accuracy, min: 0.9}]")).await).await;
    // Before any promotion they may change, and the change is audited with what it replaced.
    let criteria =
        "[{metric: test_accuracy, min: 0.5}, {metric: 'test_recall/*', min: 0.5}, {metric: test_macro_f1, min: 0.3, on: lower_bound}]";
    ok::<Value>(app.submit(&with(criteria)).await).await;
    let audit: Value = app.read(&app.admin, "/audit?experiment=e").await;
    let replaced = audit["events"].as_array().expect("events").iter().find(|e| !e["details"]["criteria_replaced"].is_null()).cloned();
    assert_eq!(replaced.expect("an audited change")["details"]["criteria_replaced"]["criteria"][0]["min"], 0.9);

    // Train a run (validation predictions too), promote it, evaluate it with test predictions.
    let worker = app.token("box", "worker").await;
    let (run, lease) = leased_run(&app, &worker).await;
    let (preds, counts) = predictions(|_| false);
    assert_eq!(report_epoch(&app, &worker, run, &lease, 0, &counts, &preds).await.status(), StatusCode::NO_CONTENT);
    let artifact =
        json!({"lease_id": lease, "kind": "best_checkpoint", "uri": "file:///ckpt", "sha256": format!("{run:064x}"), "bytes": 10});
    assert_eq!(app.post(&worker, &format!("/runs/{run}/artifacts"), &artifact).await.status(), StatusCode::NO_CONTENT);
    let _: Value = app.write(&worker, &format!("/leases/{lease}/complete"), &json!({"outcome": "succeeded", "best_epoch": 0})).await;
    let promotion: Value = ok(app.post(&app.admin, &format!("/runs/{run}/promote"), &json!({"reason": "best"})).await).await;
    let events: Value = app.read(&app.admin, "/audit?experiment=e").await;
    let created = events["events"].as_array().expect("events").iter().find(|e| e["action"] == "promotion.create").cloned().expect("event");
    assert_eq!(created["details"]["criteria"].as_array().map(Vec::len), Some(3), "the criteria are in the promotion's record");
    let job: Value = ok(app.post(&worker, "/leases", &json!({"worker": "w", "kinds": ["evaluate"]})).await).await;
    let eval = job["lease_id"].as_str().expect("lease").to_owned();
    // Test items 9 and 19 of each class; one ap_postop_fusion image is missed.
    let mut test_counts = vec![vec![0u64; 3]; 3];
    let mut test_preds = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        for i in [9, 19] {
            let predicted = if c == 1 && i == 19 { 2 } else { c };
            test_counts[c][predicted] += 1;
            let mut probabilities = vec![0.1f32; 3];
            probabilities[predicted] = 0.8;
            test_preds.push(json!({"item": format!("{class}/{i:04}.png"), "predicted": predicted, "probabilities": probabilities}));
        }
    }
    // Predictions that do not make the reported matrix are refused, and nothing is stored.
    let mut wrong = test_counts.clone();
    wrong[0][0] -= 1;
    wrong[0][1] += 1;
    let bad = json!({"outcome": "succeeded", "confusion": {"classes": CLASSES, "counts": wrong}, "predictions": test_preds});
    fails(app.post(&worker, &format!("/leases/{eval}/complete"), &bad).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let result = json!({"outcome": "succeeded", "confusion": {"classes": CLASSES, "counts": test_counts}, "predictions": test_preds});
    let _: Value = app.write(&worker, &format!("/leases/{eval}/complete"), &result).await;

    let id = promotion["id"].as_i64().expect("promotion");
    let report: Value = app.read(&app.admin, &format!("/promotions/{id}/report")).await;
    let verdicts: Vec<(String, bool)> = report["criteria"]
        .as_array()
        .expect("criteria judged")
        .iter()
        .map(|v| (v["criterion"].as_str().expect("criterion").to_owned(), v["passed"].as_bool().expect("passed")))
        .collect();
    assert_eq!(verdicts.len(), 5, "{verdicts:?}");
    assert_eq!(verdicts[0], ("test_accuracy >= 0.5".to_owned(), true));
    assert_eq!(verdicts[2], ("test_recall/ap_postop_fusion >= 0.5".to_owned(), true));
    let lower = &report["criteria"][4];
    assert_eq!(lower["criterion"], "test_macro_f1 >= 0.3 (lower 95% bound)");
    let evidence: Value = app.read(&app.admin, &format!("/runs/{run}/evidence?split=test")).await;
    assert_eq!(lower["value"], evidence["intervals"]["macro_f1"]["low"]);
    assert!(evidence["temperature"].is_number(), "fitted on the validation predictions: {evidence}");
    assert_eq!(created["details"]["temperature"], evidence["temperature"], "fixed at promotion, the number the report uses");

    // Once promoted, the criteria are frozen; leaving `promotion:` out keeps them.
    let changed = app.submit(&with("[{metric: test_accuracy, min: 0.1}]")).await;
    fails(changed, StatusCode::CONFLICT, "conflict").await;
    let audit: Value = app.read(&app.admin, "/audit?experiment=e").await;
    let refused = audit["events"].as_array().expect("events").iter().find(|e| e["action"] == "experiment.rules_refused").cloned();
    let refused = refused.expect("the refused attempt is in the audit chain");
    assert_eq!(refused["details"]["asked"]["criteria"][0]["min"], 0.1);
    assert_eq!(audit["chain"]["ok"], true);
    ok::<Value>(app.submit(&spec("e", "d", GRID_2X2)).await).await;
    let again: Value = app.read(&app.admin, &format!("/promotions/{id}/report")).await;
    assert_eq!(again["criteria"], report["criteria"]);
}

async fn a_promotion_that_needs_two_signatures_waits_for_a_second_reviewer(app: TestApp) {
    app.register_dataset("d", &CLASSES, 20).await;
    let yaml = format!("{}promotion:\n  approvals: 2\n", spec("e", "d", GRID_2X2));
    ok::<Value>(app.submit(&yaml).await).await;
    let worker = app.token("box", "worker").await;
    let run = crate::promotions::finish_a_run(&app, &worker).await;
    let (first, second) = (app.token("dr-a", "reviewer").await, app.token("dr-b", "reviewer").await);
    let promotion: Value = ok(app.post(&first, &format!("/runs/{run}/promote"), &json!({"reason": "best"})).await).await;
    let id = promotion["id"].as_i64().expect("id");
    assert_eq!(promotion["awaiting_approval"], true, "{promotion}");
    assert_eq!(promotion["approvals_needed"], 2);
    assert_eq!(promotion["approvers"], json!(["dr-a"]));
    // Held: no worker gets the evaluation, so no test item leaves the server.
    let none = app.post(&worker, "/leases", &json!({"worker": "w", "kinds": ["evaluate"]})).await;
    assert_eq!(none.status(), StatusCode::NO_CONTENT);
    // The promoter cannot sign twice; a submitter cannot sign at all.
    fails(app.post(&first, &format!("/promotions/{id}/approve"), &json!({})).await, StatusCode::CONFLICT, "conflict").await;
    let submitter = app.token("someone", "submitter").await;
    fails(app.post(&submitter, &format!("/promotions/{id}/approve"), &json!({})).await, StatusCode::FORBIDDEN, "forbidden").await;
    // A second reviewer's signature releases the evaluation.
    let signed: Value = ok(app.post(&second, &format!("/promotions/{id}/approve"), &json!({"note": "checked the split"})).await).await;
    assert_eq!(signed["awaiting_approval"], false, "{signed}");
    assert_eq!(signed["approvers"], json!(["dr-a", "dr-b"]));
    let job: Value = ok(app.post(&worker, "/leases", &json!({"worker": "w", "kinds": ["evaluate"]})).await).await;
    assert_eq!(job["kind"], "evaluate");
    fails(app.post(&second, &format!("/promotions/{id}/approve"), &json!({})).await, StatusCode::CONFLICT, "conflict").await;
    // Both signatures are in the audit chain.
    let audit: Value = app.read(&app.admin, "/audit?experiment=e").await;
    let events = audit["events"].as_array().expect("events");
    assert!(events.iter().any(|e| e["action"] == "promotion.create" && e["actor"] == "dr-a" && e["details"]["approvals_needed"] == 2));
    let approve = events.iter().find(|e| e["action"] == "promotion.approve").expect("approve event");
    assert_eq!(approve["actor"], "dr-b");
    assert_eq!(approve["details"]["evaluation_released"], true);
    assert_eq!(audit["chain"]["ok"], true);
    // The rule is frozen like the criteria.
    fails(app.submit(&spec("e", "d", &format!("{GRID_2X2}promotion:\n  approvals: 1\n"))).await, StatusCode::CONFLICT, "conflict").await;
}

//! Early stopping decided by the server (issue 13): ASHA and median decisions on hand-made
//! metric histories, the same decisions from a second server with nothing in memory, pruned
//! runs that keep what they earned and are never resumed, and cancels that still work.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, TestApp, fails, ok, spec};

crate::on_both_databases!(
    asha_keeps_the_top_fraction_at_each_rung_across_a_restart,
    the_median_rule_stops_runs_below_the_median,
    a_pruned_run_is_never_resumed_and_cancel_still_works,
);

const FOUR_LRS: &str = "  parameters:\n    train.optimizer.lr: {values: [0.1, 0.01, 0.001, 0.0001]}\n";

/// A four-run sweep of 10 epochs with `early_stop`, submitted; the four runs leased.
async fn four_leased_runs(app: &TestApp, early_stop: &str) -> Vec<(String, i64)> {
    app.register_dataset("d", &CLASSES, 10).await;
    let sweep = format!("sweep:\n  method: grid\n  early_stop: {early_stop}\n{FOUR_LRS}");
    let yaml = spec("e", "d", &sweep).replace("  epochs: 2\n", "  epochs: 10\n");
    ok::<Value>(app.submit(&yaml).await).await;
    let mut leases = Vec::new();
    for _ in 0..4 {
        let lease: Value = ok(app.post(&app.admin, "/leases", &json!({"worker": "w"})).await).await;
        leases.push((lease["lease_id"].as_str().expect("lease").to_owned(), lease["run_id"].as_i64().expect("run")));
    }
    leases
}

/// Reports one epoch's validation macro-F1 (0-based `step`); returns the server's stop answer.
async fn report(app: &TestApp, (lease, run): &(String, i64), step: i64, value: f64) -> bool {
    let batch = json!({"lease_id": lease, "metrics": [
        {"key": "val_macro_f1", "step": step, "value": value}, {"key": "val_loss", "step": step, "value": 1.0 - value}]});
    let accepted: Value = ok(app.post(&app.admin, &format!("/runs/{run}/metrics"), &batch).await).await;
    accepted["stop"].as_bool().expect("stop")
}

async fn heartbeat(app: &TestApp, (lease, _): &(String, i64)) -> String {
    let reply: Value = ok(app.post(&app.admin, &format!("/leases/{lease}/heartbeat"), &json!({})).await).await;
    reply["action"].as_str().expect("action").to_owned()
}

async fn run(app: &TestApp, id: i64) -> Value {
    app.read::<Value>(&app.admin, &format!("/runs/{id}")).await["run"].clone()
}

async fn asha_keeps_the_top_fraction_at_each_rung_across_a_restart(app: TestApp) {
    // Rungs after epochs 1, 2, 4 and 8 of 10; the top half continues.
    let runs = four_leased_runs(&app, "{method: asha, min_epochs: 1, reduction_factor: 2}").await;
    let (a, b, c, d) = (&runs[0], &runs[1], &runs[2], &runs[3]);
    assert!(!report(&app, a, 0, 0.50).await, "the first run at a rung continues");
    assert!(report(&app, b, 0, 0.40).await, "second of two at the rung, and worse: pruned");
    assert_eq!(heartbeat(&app, b).await, "stop");
    assert_eq!(heartbeat(&app, a).await, "continue");
    // Between two epochs nothing is decided (epoch 3 is no rung).
    assert!(!report(&app, a, 1, 0.55).await);
    assert!(!report(&app, a, 2, 0.20).await);

    // The rest goes through a second server with nothing in memory: same rules, same state.
    let mut app = app;
    app.base = app.second_server().await;
    // c at rung 1 with [0.5, 0.4]: three values, the top one (0.6 itself) continues.
    assert!(!report(&app, c, 0, 0.60).await);
    // d with [0.5, 0.4, 0.6]: four values, the top two (0.6, 0.55) continue.
    assert!(!report(&app, d, 0, 0.55).await);
    // A resent epoch gets the answer already given, whatever happened since.
    assert!(!report(&app, a, 0, 0.10).await);
    // Rung 2 ranks each run's best value so far: a's best up to epoch 2 is 0.55 (not 0.20).
    assert!(!report(&app, c, 1, 0.30).await, "c's best so far, 0.60, beats a's 0.55");
    assert!(report(&app, d, 1, 0.50).await, "d's best so far, 0.55, is not the top one of [0.55, 0.60, 0.55]");

    // The pruned run completes as the worker does when told to stop: it ends `pruned`, with
    // its best epoch, and says where and why it stopped.
    let done: Value =
        ok(app.post(&app.admin, &format!("/leases/{}/complete", b.0), &json!({"outcome": "cancelled", "best_epoch": 0})).await).await;
    assert_eq!(done["status"], "pruned");
    let pruned = run(&app, b.1).await;
    assert_eq!(pruned["status"], "pruned");
    let error = pruned["error"].as_str().expect("reason");
    assert!(error.contains("pruned by asha after epoch 1") && error.contains("0.4000"), "{error}");
    let detail: Value = app.read(&app.admin, &format!("/runs/{}", b.1)).await;
    assert_eq!(detail["latest"]["val_macro_f1"]["value"], 0.40, "its metrics stay");
    // Every prune is an audit event.
    let audit: Value = app.read(&app.admin, "/audit").await;
    let events = audit["events"].as_array().expect("events");
    assert_eq!(events.iter().filter(|e| e["action"] == "run.prune").count(), 2, "{audit}");
}

async fn the_median_rule_stops_runs_below_the_median(app: TestApp) {
    let runs = four_leased_runs(&app, "{method: median, min_epochs: 2, min_runs: 2}").await;
    // Epoch 1 (one completed epoch) is before min_epochs: no decision, however bad.
    assert!(!report(&app, &runs[0], 0, 0.10).await);
    assert!(!report(&app, &runs[0], 1, 0.50).await, "no other run has reached epoch 2");
    assert!(!report(&app, &runs[1], 0, 0.60).await);
    assert!(!report(&app, &runs[1], 1, 0.70).await, "one other run only (min_runs: 2)");
    assert!(!report(&app, &runs[2], 1, 0.65).await, "0.65 against the median of [0.5, 0.7], 0.6");
    assert!(report(&app, &runs[3], 1, 0.55).await, "0.55 against the median of [0.5, 0.7, 0.65], 0.65");
    // Later epochs are decided too, on each run's best value so far.
    assert!(!report(&app, &runs[0], 2, 0.40).await, "at epoch 3 no other run is there yet to compare with");
    let detail = run(&app, runs[3].1).await;
    assert_eq!(detail["status"], "running", "it stops when its worker acknowledges");
}

async fn a_pruned_run_is_never_resumed_and_cancel_still_works(app: TestApp) {
    let runs = four_leased_runs(&app, "{method: asha, min_epochs: 1, reduction_factor: 2}").await;
    assert!(!report(&app, &runs[0], 0, 0.9).await);
    assert!(report(&app, &runs[1], 0, 0.1).await);
    // Its worker gives the lease back (shutting down) instead of completing: not requeued.
    let released: Value = ok(app.post(&app.admin, &format!("/leases/{}/release", runs[1].0), &json!({"reason": "bye"})).await).await;
    assert_eq!(released["status"], "pruned");
    // Cancelling the sweep stops the others and leaves the pruned run as it is.
    let sweep = run(&app, runs[0].1).await["sweep_id"].as_i64().expect("sweep");
    let _: Value = ok(app.post(&app.admin, &format!("/sweeps/{sweep}/cancel"), &json!({})).await).await;
    assert_eq!(heartbeat(&app, &runs[0]).await, "stop");
    assert_eq!(run(&app, runs[1].1).await["status"], "pruned");
    let done: Value = ok(app.post(&app.admin, &format!("/leases/{}/complete", runs[0].0), &json!({"outcome": "cancelled"})).await).await;
    assert_eq!(done["status"], "cancelled");
    // Nothing is left to lease: neither the pruned run nor the cancelled ones come back.
    let none = app.post(&app.admin, "/leases", &json!({"worker": "w"})).await;
    assert_eq!(none.status(), StatusCode::NO_CONTENT);
    // A pruned run's metrics can no longer be written: its lease has ended.
    let late = json!({"lease_id": runs[1].0, "metrics": [{"key": "val_macro_f1", "step": 1, "value": 1.0}]});
    fails(app.post(&app.admin, &format!("/runs/{}/metrics", runs[1].1), &late).await, StatusCode::CONFLICT, "lease_lost").await;
}

mod expiry {
    use super::*;

    crate::on_both_databases_with!(
        |c: &mut server::ServerConfig| { c.lease_ttl_secs = 1; c.reap_interval_secs = 3600; };
        the_reaper_ends_a_pruned_run_and_never_resumes_it
    );

    async fn the_reaper_ends_a_pruned_run_and_never_resumes_it(app: TestApp) {
        let runs = four_leased_runs(&app, "{method: asha, min_epochs: 1, reduction_factor: 2}").await;
        assert!(!report(&app, &runs[0], 0, 0.9).await);
        assert!(report(&app, &runs[1], 0, 0.1).await);
        // Every worker dies: the leases expire.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let mut leased = Vec::new();
        while let Some(l) = {
            let r = app.post(&app.admin, "/leases", &json!({"worker": "w2"})).await;
            if r.status() == StatusCode::NO_CONTENT { None } else { Some(ok::<Value>(r).await) }
        } {
            leased.push(l["run_id"].as_i64().expect("run"));
        }
        leased.sort_unstable();
        let mut expected = vec![runs[0].1, runs[2].1, runs[3].1];
        expected.sort_unstable();
        assert_eq!(leased, expected, "the others are requeued and leased again; the pruned one is not");
        let pruned = run(&app, runs[1].1).await;
        assert_eq!(pruned["status"], "pruned");
        assert!(pruned["error"].as_str().is_some_and(|e| e.contains("pruned by asha after epoch 1")), "{pruned}");
    }
}

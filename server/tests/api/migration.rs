//! A data dir written by the schema before jobs (m001-m003: training state in `runs`, the
//! evaluation job inside `promotions`) opens after the m004 migration with everything
//! readable: runs with their attempts, leases and errors, a promotion with its evaluation
//! and test report, a live training lease that still works, and new promotions after it.

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::helpers::{CLASSES, TestApp, fails, ok, spec};

crate::on_both_databases_with!(
    |c: &mut server::ServerConfig| crate::migration::write_old_schema(c);
    a_database_written_before_jobs_reads_back_after_the_migration
);

/// Creates the database at `config`'s URL with migrations m001-m003 only and fills it
/// through the old schema's columns, as cobb before the jobs table wrote it.
pub fn write_old_schema(config: &mut server::ServerConfig) {
    let url = config.database_url();
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async move {
            let conn = sea_orm::Database::connect(url.as_str()).await.expect("connect");
            <migrations::Migrator as migrations::MigratorTrait>::up(&conn, Some(3)).await.expect("m001-m003");
            let parsed = protocol::plan::parse(&spec("e", "d", ""), "e.yaml").expect("spec").spec;
            let config_json = serde_json::to_string(&parsed).expect("json").replace('\'', "''");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
            let live = now + 600_000;
            let classes = serde_json::to_string(&CLASSES).expect("classes");
            let statements = [
                format!("INSERT INTO datasets (id, name, created_at) VALUES (1, 'd', {now})"),
                format!(
                    "INSERT INTO dataset_versions (id, dataset_id, version, number, root, split, seed, group_by, classes_json, \
                     report_json, item_count, created_at, created_by) VALUES (1, 1, '{v}', 1, '/data', '70/15/15', 0, 'patient', \
                     '{classes}', '{{}}', 3, {now}, 'admin')",
                    v = "ab".repeat(32)
                ),
                format!(
                    "INSERT INTO dataset_items (version_id, path, sha256, bytes, label, patient, split) VALUES \
                     (1, 'a.png', '{a}', 1, 'ap_preop', 'p1', 'train'), (1, 'b.png', '{b}', 1, 'lat_preop', 'p2', 'val'), \
                     (1, 'c.png', '{c}', 1, 'ap_preop', 'p3', 'test')",
                    a = "01".repeat(32),
                    b = "02".repeat(32),
                    c = "03".repeat(32)
                ),
                format!(
                    "INSERT INTO experiments (id, name, description, dataset_version_id, spec_yaml, spec_json, created_at, created_by) \
                     VALUES (1, 'e', '', 1, 'name: e', '{config_json}', {now}, 'admin')"
                ),
                format!(
                    "INSERT INTO sweeps (id, experiment_id, method, spec_yaml, spec_json, created_at, created_by) \
                     VALUES (1, 1, 'single', 'name: e', '{config_json}', {now}, 'admin')"
                ),
                // Run 1 succeeded on its second attempt; run 2 is running under a live lease;
                // run 3 failed; run 4 waits in the queue.
                format!(
                    "INSERT INTO runs (id, experiment_id, sweep_id, idx, name, status, cancel_requested, attempt, max_attempts, \
                     params_json, config_json, current_lease_id, worker, error, best_epoch, created_at, started_at, finished_at, updated_at) VALUES \
                     (1, 1, 1, 0, 'e-0', 'succeeded', 0, 2, 3, '{{}}', '{config_json}', NULL, 'gpu-a', NULL, 1, {now}, {now}, {now}, {now}), \
                     (2, 1, 1, 1, 'e-1', 'running', 0, 1, 3, '{{}}', '{config_json}', 'lease-2', 'gpu-b', NULL, NULL, {now}, {now}, NULL, {now}), \
                     (3, 1, 1, 2, 'e-2', 'failed', 0, 1, 3, '{{}}', '{config_json}', NULL, 'gpu-a', 'loss became NaN at epoch 3', NULL, {now}, {now}, {now}, {now}), \
                     (4, 1, 1, 3, 'e-3', 'queued', 0, 0, 3, '{{}}', '{config_json}', NULL, NULL, NULL, NULL, {now}, NULL, NULL, {now})"
                ),
                format!(
                    "INSERT INTO leases (id, run_id, worker, attempt, created_at, heartbeat_at, expires_at, ended_at, end_reason) VALUES \
                     ('lease-1a', 1, 'gpu-z', 1, {now}, {now}, {now}, {now}, 'expired'), \
                     ('lease-1b', 1, 'gpu-a', 2, {now}, {now}, {now}, {now}, 'completed'), \
                     ('lease-2', 2, 'gpu-b', 1, {now}, {now}, {live}, NULL, NULL), \
                     ('lease-3', 3, 'gpu-a', 1, {now}, {now}, {now}, {now}, 'completed')"
                ),
                format!(
                    "INSERT INTO metrics (run_id, key, step, value, recorded_at) VALUES (1, 'val_macro_f1', 1, 0.8, {now}), \
                     (1, 'test_accuracy', 1, 0.5, {now})"
                ),
                format!(
                    "INSERT INTO artifacts (id, run_id, lease_id, kind, uri, sha256, bytes, created_at) VALUES \
                     (1, 1, 'lease-1b', 'best_checkpoint', 'file:///c/1.bpk', '{s}', 10, {now})",
                    s = "cd".repeat(32)
                ),
                format!(
                    "INSERT INTO confusion_matrices (run_id, epoch, split, classes_json, counts_json) VALUES \
                     (1, 1, 'test', '{classes}', '[[1,0,0],[0,0,1],[0,0,0]]')"
                ),
                format!(
                    "INSERT INTO promotions (id, experiment_id, run_id, actor, reason, created_at, checkpoint_uri, checkpoint_sha256, \
                     best_epoch, dataset_version, config_hash, code_version, status, attempt, lease_id, worker, lease_expires_at, error, \
                     started_at, finished_at) VALUES (1, 1, 1, 'dr-reviewer', 'best on validation', {now}, 'file:///c/1.bpk', '{s}', 1, \
                     '{v}', 'cfg', 'code', 'succeeded', 1, NULL, 'gpu-a', NULL, NULL, {now}, {now})",
                    s = "cd".repeat(32),
                    v = "ab".repeat(32)
                ),
            ];
            for sql in statements {
                conn.execute_unprepared(&sql).await.unwrap_or_else(|e| panic!("{e}: {sql}"));
            }
            // PostgreSQL's sequences follow explicit ids only when told.
            if conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
                for table in ["datasets", "dataset_versions", "experiments", "sweeps", "runs", "artifacts", "promotions"] {
                    conn.execute_unprepared(&format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
                    ))
                    .await
                    .expect("setval");
                }
            }
            conn.close().await.expect("close");
        })
    });
}

async fn a_database_written_before_jobs_reads_back_after_the_migration(app: TestApp) {
    // Runs: status, attempts, worker, error and attempt history survive.
    let one: Value = app.read(&app.admin, "/runs/1").await;
    assert_eq!(one["run"]["status"], "succeeded");
    assert_eq!(one["run"]["attempt"], 2);
    assert_eq!(one["run"]["worker"], "gpu-a");
    assert_eq!(one["run"]["best_epoch"], 1);
    let reasons: Vec<&str> = one["leases"].as_array().expect("leases").iter().filter_map(|l| l["end_reason"].as_str()).collect();
    assert_eq!(reasons, ["expired", "completed"]);
    assert!(one["leases"].as_array().expect("leases").iter().all(|l| l["kind"] == "train"));
    let three: Value = app.read(&app.admin, "/runs/3").await;
    assert_eq!(three["run"]["status"], "failed");
    assert_eq!(three["run"]["error"], "loss became NaN at epoch 3");
    let queued: Value = app.read(&app.admin, "/runs?status=queued").await;
    assert_eq!(queued["total"], 1);
    assert_eq!(queued["runs"][0]["id"], 4);

    // The promotion keeps its evaluation, now a job, and its test report.
    let promotion: Value = app.read(&app.admin, "/promotions/1").await;
    assert_eq!(promotion["status"], "succeeded");
    assert_eq!(promotion["attempt"], 1);
    assert_eq!(promotion["reused_evaluation"], false);
    assert!(promotion["job_id"].is_i64(), "{promotion}");
    let report: Value = app.read(&app.admin, "/promotions/1/report").await;
    assert_eq!(report["report"]["per_class"][0]["recall"], 1.0);
    let evaluations: Vec<Value> = app.read(&app.admin, "/jobs?kind=evaluate").await;
    assert_eq!(evaluations.len(), 1);
    assert_eq!(evaluations[0]["promotion_id"], 1);

    // The lease that was live before the upgrade is still the running run's.
    let beat: Value = app.write(&app.admin, "/leases/lease-2/heartbeat", &json!({})).await;
    assert_eq!(beat["action"], "continue");
    fails(app.post(&app.admin, "/leases/lease-1b/heartbeat", &json!({})).await, StatusCode::CONFLICT, "lease_lost").await;

    // New work goes on: the queued run trains, is promoted, and gets a new promotion id.
    let lease: Value = ok(app.post(&app.admin, "/leases", &json!({"worker": "w", "kinds": ["train"]})).await).await;
    assert_eq!(lease["run_id"], 4);
    let id = lease["lease_id"].as_str().expect("lease");
    let artifact = json!({"lease_id": id, "kind": "best_checkpoint", "uri": "file:///c/4.bpk", "sha256": "ef".repeat(32), "bytes": 1});
    assert_eq!(app.post(&app.admin, "/runs/4/artifacts", &artifact).await.status(), StatusCode::NO_CONTENT);
    let _: Value = app.write(&app.admin, &format!("/leases/{id}/complete"), &json!({"outcome": "succeeded", "best_epoch": 0})).await;
    let second: Value = ok(app.post(&app.admin, "/runs/4/promote", &json!({"reason": "after the upgrade"})).await).await;
    assert_eq!(second["id"], 2);
    assert_eq!(second["status"], "queued");
    let first: Value = app.read(&app.admin, "/promotions/1").await;
    assert_eq!(first["superseded_by"], 2);
}

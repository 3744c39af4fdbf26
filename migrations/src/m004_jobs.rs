//! One job queue for every kind of work a worker does.
//!
//! Before this migration a run was its own training job (status, attempts, lease and worker
//! in `runs`) and a promotion was its own test-evaluation job (the same columns again in
//! `promotions`, with no attempt history). Now both are rows of `jobs` with a `kind`
//! (`train`, `evaluate`; `classify` next); `leases` is the attempt history of every job
//! (`job_id`), and one fence, one reaper and one heartbeat serve them all.
//!
//! What moves where:
//! - every run gets its one `train` job, carrying the run's status, attempts, cancel flag,
//!   current lease, worker, error and start/finish times; those columns leave `runs` (a
//!   run's status is its training job's status);
//! - every promotion whose model was evaluated by it (it leased an evaluation, or one is
//!   still waiting) gets its `evaluate` job; a promotion that reused an earlier evaluation of
//!   the same run has none. The job columns leave `promotions` (rebuilt, as SQLite cannot
//!   drop the UNIQUE `lease_id` column in place);
//! - existing training leases are tied to their run's job; a running evaluation's lease
//!   becomes a lease row, so the worker holding it can still complete it after the upgrade.
//!   Evaluation attempts that ended before the upgrade have no lease rows (they were never
//!   recorded).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m004_jobs"
    }
}

const UP: &str = r#"
CREATE TABLE promotions_v2 (
    id {ID},
    experiment_id BIGINT NOT NULL REFERENCES experiments(id),
    run_id BIGINT NOT NULL REFERENCES runs(id),
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    checkpoint_uri TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    best_epoch BIGINT NOT NULL,
    dataset_version TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    code_version TEXT NOT NULL,
    superseded_by BIGINT,
    superseded_at BIGINT
);
INSERT INTO promotions_v2 (id, experiment_id, run_id, actor, reason, created_at, checkpoint_uri, checkpoint_sha256,
    best_epoch, dataset_version, config_hash, code_version, superseded_by, superseded_at)
SELECT id, experiment_id, run_id, actor, reason, created_at, checkpoint_uri, checkpoint_sha256,
    best_epoch, dataset_version, config_hash, code_version, superseded_by, superseded_at FROM promotions;

CREATE TABLE jobs (
    id {ID},
    kind TEXT NOT NULL,
    run_id BIGINT NOT NULL REFERENCES runs(id),
    promotion_id BIGINT REFERENCES promotions_v2(id),
    priority BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    attempt BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    lease_id TEXT,
    worker TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_queue ON jobs (status, priority DESC, id);
CREATE INDEX jobs_by_run ON jobs (run_id, kind);
CREATE UNIQUE INDEX jobs_one_train_per_run ON jobs (run_id) WHERE kind = 'train';
CREATE UNIQUE INDEX jobs_one_per_promotion ON jobs (promotion_id) WHERE promotion_id IS NOT NULL;
CREATE UNIQUE INDEX jobs_by_lease ON jobs (lease_id) WHERE lease_id IS NOT NULL;

INSERT INTO jobs (kind, run_id, priority, status, cancel_requested, attempt, max_attempts, lease_id, worker, error,
    created_at, started_at, finished_at, updated_at)
SELECT 'train', id, 0, status, cancel_requested, attempt, max_attempts, current_lease_id, worker, error,
    created_at, started_at, finished_at, updated_at FROM runs ORDER BY id;

INSERT INTO jobs (kind, run_id, promotion_id, priority, status, attempt, max_attempts, lease_id, worker, error,
    created_at, started_at, finished_at, updated_at)
SELECT 'evaluate', p.run_id, p.id, 10, p.status, p.attempt, (SELECT j.max_attempts FROM jobs j WHERE j.run_id = p.run_id AND j.kind = 'train'),
    p.lease_id, p.worker, p.error, p.created_at, p.started_at, p.finished_at, COALESCE(p.finished_at, p.started_at, p.created_at)
FROM promotions p WHERE p.attempt > 0 OR p.status <> 'succeeded' ORDER BY p.id;

ALTER TABLE leases ADD COLUMN job_id BIGINT REFERENCES jobs(id);
UPDATE leases SET job_id = (SELECT j.id FROM jobs j WHERE j.run_id = leases.run_id AND j.kind = 'train');
INSERT INTO leases (id, run_id, job_id, worker, attempt, created_at, heartbeat_at, expires_at)
SELECT p.lease_id, p.run_id, j.id, COALESCE(p.worker, ''), p.attempt, COALESCE(p.started_at, p.created_at),
    COALESCE(p.started_at, p.created_at), p.lease_expires_at
FROM promotions p JOIN jobs j ON j.promotion_id = p.id
WHERE p.status = 'running' AND p.lease_id IS NOT NULL AND p.lease_expires_at IS NOT NULL;
CREATE INDEX leases_by_job ON leases (job_id);

DROP TABLE promotions;
ALTER TABLE promotions_v2 RENAME TO promotions;
CREATE INDEX promotions_by_experiment ON promotions (experiment_id, id);
CREATE INDEX promotions_by_run ON promotions (run_id, id);
CREATE INDEX promotions_by_checkpoint ON promotions (checkpoint_sha256);

DROP INDEX runs_queue;
DROP INDEX runs_by_experiment;
DROP INDEX runs_by_sweep;
ALTER TABLE runs DROP COLUMN status;
ALTER TABLE runs DROP COLUMN cancel_requested;
ALTER TABLE runs DROP COLUMN attempt;
ALTER TABLE runs DROP COLUMN max_attempts;
ALTER TABLE runs DROP COLUMN current_lease_id;
ALTER TABLE runs DROP COLUMN worker;
ALTER TABLE runs DROP COLUMN error;
ALTER TABLE runs DROP COLUMN started_at;
ALTER TABLE runs DROP COLUMN finished_at;
CREATE INDEX runs_by_experiment ON runs (experiment_id, id);
CREATE INDEX runs_by_sweep ON runs (sweep_id, id)
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_ddl(manager, UP).await?;
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            // The copied ids were written explicitly, so the new table's sequence must move
            // past them (SQLite's AUTOINCREMENT follows the largest id by itself).
            manager
                .get_connection()
                .execute_unprepared(
                    "SELECT setval(pg_get_serial_sequence('promotions', 'id'), COALESCE((SELECT MAX(id) FROM promotions), 0) + 1, false)",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("m004_jobs cannot be undone in place: restore the database backup taken before the upgrade".to_owned()))
    }
}

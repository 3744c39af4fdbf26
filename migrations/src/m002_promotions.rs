//! Promotions: the one model per experiment that is evaluated on the sealed test split.
//! A promotion carries its own evaluation job (status, lease, attempts), so the test
//! split leaves the server only through a promotion's evaluation lease.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m002_promotions");

const UP: &str = r#"
CREATE TABLE promotions (
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
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    lease_id TEXT UNIQUE,
    worker TEXT,
    lease_expires_at BIGINT,
    error TEXT,
    started_at BIGINT,
    finished_at BIGINT,
    superseded_by BIGINT,
    superseded_at BIGINT
);
CREATE INDEX promotions_by_experiment ON promotions (experiment_id, id);
CREATE INDEX promotions_queue ON promotions (status, id)
"#;

const DOWN: &str = "DROP TABLE promotions";

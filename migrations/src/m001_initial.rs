use sea_orm_migration::prelude::*;

crate::ddl_migration!("m001_initial");

/// Times are BIGINT milliseconds since the Unix epoch (UTC); flags are BIGINT 0/1, so the
/// same queries read the same types on both databases.
const UP: &str = r#"
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id {ID},
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE datasets (
    id {ID},
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE dataset_versions (
    id {ID},
    dataset_id BIGINT NOT NULL REFERENCES datasets(id),
    version TEXT NOT NULL UNIQUE,
    number BIGINT NOT NULL,
    root TEXT NOT NULL,
    split TEXT NOT NULL,
    seed BIGINT NOT NULL,
    group_by TEXT NOT NULL,
    classes_json TEXT NOT NULL,
    report_json TEXT NOT NULL,
    item_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (dataset_id, number)
);

CREATE TABLE dataset_items (
    id {ID},
    version_id BIGINT NOT NULL REFERENCES dataset_versions(id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    label TEXT NOT NULL,
    patient TEXT,
    split TEXT NOT NULL,
    view TEXT,
    acquired_at TEXT,
    UNIQUE (version_id, path)
);
CREATE INDEX dataset_items_by_split ON dataset_items (version_id, split);

CREATE TABLE experiments (
    id {ID},
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    dataset_version_id BIGINT NOT NULL REFERENCES dataset_versions(id),
    spec_yaml TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE sweeps (
    id {ID},
    experiment_id BIGINT NOT NULL REFERENCES experiments(id),
    method TEXT NOT NULL,
    file TEXT,
    spec_yaml TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    parallel BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE runs (
    id {ID},
    experiment_id BIGINT NOT NULL REFERENCES experiments(id),
    sweep_id BIGINT NOT NULL REFERENCES sweeps(id),
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    attempt BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    params_json TEXT NOT NULL,
    config_json TEXT NOT NULL,
    current_lease_id TEXT,
    worker TEXT,
    error TEXT,
    best_epoch BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX runs_queue ON runs (status, id);
CREATE INDEX runs_by_experiment ON runs (experiment_id, status);
CREATE INDEX runs_by_sweep ON runs (sweep_id, status);

CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES runs(id),
    worker TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT
);
CREATE INDEX leases_open ON leases (ended_at, expires_at);
CREATE INDEX leases_by_run ON leases (run_id);

CREATE TABLE metrics (
    run_id BIGINT NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    step BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, key, step)
);
CREATE INDEX metrics_by_key ON metrics (key, run_id, step);

CREATE TABLE class_results (
    run_id BIGINT NOT NULL REFERENCES runs(id),
    epoch BIGINT NOT NULL,
    split TEXT NOT NULL,
    class TEXT NOT NULL,
    precision DOUBLE PRECISION NOT NULL,
    recall DOUBLE PRECISION NOT NULL,
    f1 DOUBLE PRECISION NOT NULL,
    support BIGINT NOT NULL,
    PRIMARY KEY (run_id, epoch, split, class)
);

CREATE TABLE confusion_matrices (
    run_id BIGINT NOT NULL REFERENCES runs(id),
    epoch BIGINT NOT NULL,
    split TEXT NOT NULL,
    classes_json TEXT NOT NULL,
    counts_json TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch, split)
);

CREATE TABLE artifacts (
    id {ID},
    run_id BIGINT NOT NULL REFERENCES runs(id),
    lease_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX artifacts_by_run ON artifacts (run_id, kind);

CREATE TABLE audit_events (
    id {ID},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    experiment TEXT,
    run_id BIGINT,
    details_json TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
);

CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    device TEXT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    current_run_id BIGINT
)
"#;

const DOWN: &str = r#"
DROP TABLE workers; DROP TABLE audit_events; DROP TABLE artifacts;
DROP TABLE confusion_matrices; DROP TABLE class_results; DROP TABLE metrics;
DROP TABLE leases; DROP TABLE runs; DROP TABLE sweeps; DROP TABLE experiments;
DROP TABLE dataset_items; DROP TABLE dataset_versions; DROP TABLE datasets;
DROP TABLE api_tokens; DROP TABLE settings
"#;

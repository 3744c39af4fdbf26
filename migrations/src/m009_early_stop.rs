//! Early stopping decided by the server (issue 13): a training job can be asked to stop
//! because its sweep's rule pruned it (`prune_requested`, beside `cancel_requested`), and
//! every decision is a row with the values it was made from, so a restarted server (or a
//! second one) decides the same way.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m009_early_stop");

/// `epochs`: completed epochs at the decision (the metric step is `epochs - 1`).
const UP: &str = "
ALTER TABLE jobs ADD COLUMN prune_requested BIGINT NOT NULL DEFAULT 0;
CREATE TABLE early_stops (
    run_id BIGINT NOT NULL REFERENCES runs(id),
    epochs BIGINT NOT NULL,
    sweep_id BIGINT NOT NULL REFERENCES sweeps(id),
    method TEXT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    threshold DOUBLE PRECISION,
    compared BIGINT NOT NULL,
    stop BIGINT NOT NULL,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, epochs)
);
CREATE INDEX early_stops_by_rung ON early_stops (sweep_id, epochs)
";

const DOWN: &str = "
DROP TABLE early_stops;
ALTER TABLE jobs DROP COLUMN prune_requested
";

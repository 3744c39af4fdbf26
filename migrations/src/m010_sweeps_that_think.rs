//! TPE sweeps and the validation budget (issue 13).
//!
//! - `sweeps.max_runs`: how many runs a sweep may have in all (a TPE sweep creates its runs
//!   one at a time, when a worker asks for work); `sweeps.cancelled_at`: a cancelled sweep
//!   creates no more runs. Sweeps from before have their run count as their cap.
//! - `runs.config_hash`: sha256 of the run's resolved config without its name and
//!   description: two runs with the same hash are the same configuration. Runs from before
//!   have none and each counts as a configuration of its own.
//! - `experiments.max_val_configs`: how many configurations may be scored against the
//!   experiment's frozen validation split (none: no limit).

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m010_sweeps_that_think");

const UP: &str = "
ALTER TABLE sweeps ADD COLUMN max_runs BIGINT;
ALTER TABLE sweeps ADD COLUMN cancelled_at BIGINT;
UPDATE sweeps SET max_runs = (SELECT COUNT(*) FROM runs WHERE runs.sweep_id = sweeps.id);
ALTER TABLE runs ADD COLUMN config_hash TEXT;
CREATE INDEX runs_by_config ON runs (experiment_id, config_hash);
ALTER TABLE experiments ADD COLUMN max_val_configs BIGINT
";

const DOWN: &str = "
ALTER TABLE experiments DROP COLUMN max_val_configs;
DROP INDEX runs_by_config;
ALTER TABLE runs DROP COLUMN config_hash;
ALTER TABLE sweeps DROP COLUMN cancelled_at;
ALTER TABLE sweeps DROP COLUMN max_runs
";

//! A run's objective (the best value of its `select.metric` over its epochs), stored when its
//! training ends, so a TPE suggestion reads its sweep's history without a subquery per run.
//! Runs from before have none; it is computed from their metrics when needed.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m012_objective");

const UP: &str = "ALTER TABLE runs ADD COLUMN objective DOUBLE PRECISION";

const DOWN: &str = "ALTER TABLE runs DROP COLUMN objective";

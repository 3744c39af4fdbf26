//! Constraints that protect the weak classes (issue 13): when a run's training ends, whether
//! it meets its sweep's `select.constraints` at its best epoch (`feasible`) and, if not, which
//! it misses (`violations`, a JSON list of sentences). Runs from before: unknown (NULL), ranked
//! as feasible.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m011_constraints");

const UP: &str = "
ALTER TABLE runs ADD COLUMN feasible BIGINT;
ALTER TABLE runs ADD COLUMN violations TEXT
";

const DOWN: &str = "
ALTER TABLE runs DROP COLUMN violations;
ALTER TABLE runs DROP COLUMN feasible
";

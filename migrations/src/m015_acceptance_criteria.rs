//! An experiment's promotion rules (issue 14): its pre-registered acceptance criteria
//! (`promotion.criteria`, JSON; NULL when none were given) and how many reviewers must sign a
//! promotion before its test evaluation may run (`promotion.approvals`; NULL: one). Set by a
//! submission, changeable (audited) until a run of the experiment is promoted, frozen after.
//! A promotion records the approvals it needs and who gave them; its evaluation job is held
//! (not leased) until they are all given.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m015_acceptance_criteria");

const UP: &str = "
ALTER TABLE experiments ADD COLUMN criteria_json TEXT;
ALTER TABLE experiments ADD COLUMN approvals BIGINT;
ALTER TABLE promotions ADD COLUMN approvals_needed BIGINT NOT NULL DEFAULT 1;
ALTER TABLE promotions ADD COLUMN approvers_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN held BIGINT NOT NULL DEFAULT 0
";

const DOWN: &str = "
ALTER TABLE jobs DROP COLUMN held;
ALTER TABLE promotions DROP COLUMN approvers_json;
ALTER TABLE promotions DROP COLUMN approvals_needed;
ALTER TABLE experiments DROP COLUMN approvals;
ALTER TABLE experiments DROP COLUMN criteria_json
";

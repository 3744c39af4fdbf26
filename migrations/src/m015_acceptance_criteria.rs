//! An experiment's pre-registered acceptance criteria (`promotion.criteria` in its spec, issue
//! 14), as JSON; NULL when none were given. Set by a submission, changeable (audited) until a
//! run of the experiment is promoted, frozen after.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m015_acceptance_criteria");

const UP: &str = "ALTER TABLE experiments ADD COLUMN criteria_json TEXT";

const DOWN: &str = "ALTER TABLE experiments DROP COLUMN criteria_json";

//! A run no longer stores a full copy of its spec: its sweep stores the spec once and the run
//! the params it sets; the run's config is derived from the two, exactly as it was expanded
//! at submission (issue 17: a 100 KB description times 10,000 runs took 1.2 GB). Runs from
//! before lose only their copy; their configs derive to the same specs.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m007_spec_once");

const UP: &str = "ALTER TABLE runs DROP COLUMN config_json";

const DOWN: &str = "ALTER TABLE runs ADD COLUMN config_json TEXT NOT NULL DEFAULT '{}'";

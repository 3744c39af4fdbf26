//! On PostgreSQL, the metrics' primary key is ordered `(run_id, step, key)` instead of
//! `(run_id, key, step)`. A worker reports an epoch as one batch: every key at one step. Ordered
//! by key first, those 25 points went to 25 places in the run's part of the index (a descent
//! from the root and a leaf page each, once a run's points filled a few pages); ordered by step
//! first, they are neighbours at the index's right edge, where PostgreSQL appends without a
//! descent while the run is the newest (its "fastpath" for rightmost inserts). The statement of
//! an epoch report took about a quarter less time (docs/benchmarks.md, issue 16).
//!
//! Every read of metrics names its run, so reads still use the index: by `(run_id, step)` they
//! are as direct as before, by `(run_id, key)` they scan the run's points and keep the key's
//! (a run has thousands of points, not millions). SQLite keeps `(run_id, key, step)`: reordering
//! means rebuilding the table there, and its epoch reports are one local B-tree page write
//! either way.
//!
//! The constraint is the same set of columns, so `ON CONFLICT (run_id, key, step)` still names
//! it (PostgreSQL matches a conflict target to a unique index by its columns, in any order).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m018_metrics_by_step"
    }
}

async fn primary_key(manager: &SchemaManager<'_>, columns: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "ALTER TABLE metrics DROP CONSTRAINT metrics_pkey, ADD CONSTRAINT metrics_pkey PRIMARY KEY ({columns})"
            ))
            .await?;
    }
    Ok(())
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        primary_key(manager, "run_id, step, key").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        primary_key(manager, "run_id, key, step").await
    }
}

//! Metrics keep one index, their primary key `(run_id, key, step)`. The second index,
//! `metrics_by_key (key, run_id, step)`, served no query: every read of metrics names its run
//! (a run's series, a run's value at its best epoch, a sweep's runs joined on `run_id`), which
//! the primary key answers as well. It cost every metric write a second index entry, and
//! because it is ordered by key first, an epoch's 25 points landed on 25 different leaf pages:
//! most of the pages each ingestion commit wrote (docs/benchmarks.md, issue 16).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m017_metrics_one_index"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS metrics_by_key").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("CREATE INDEX IF NOT EXISTS metrics_by_key ON metrics (key, run_id, step)").await?;
        Ok(())
    }
}

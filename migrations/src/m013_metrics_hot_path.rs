//! The metric write path on PostgreSQL without a foreign-key check per point. `metrics.run_id`
//! referenced `runs(id)`, so every stored point ran a referential-integrity query and locked its
//! run's row (`FOR KEY SHARE`): 25 checks per epoch report, a quarter of the statement's time.
//! The reference holds without it: a metric is only ever written by a statement fenced by a
//! live lease of that run (store::metrics), and runs are never deleted. SQLite keeps the
//! reference (its check is one index probe, and dropping it would mean rebuilding the table).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m013_metrics_hot_path"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            manager.get_connection().execute_unprepared("ALTER TABLE metrics DROP CONSTRAINT IF EXISTS metrics_run_id_fkey").await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE metrics ADD CONSTRAINT metrics_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(id)")
                .await?;
        }
        Ok(())
    }
}

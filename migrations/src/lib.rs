//! cobb's schema. One portable DDL per migration: plain SQL that SQLite and PostgreSQL
//! both accept, with the id column written per backend.

pub use sea_orm_migration::prelude::*;

/// A migration that runs the DDL constants `UP` and `DOWN` of its module.
macro_rules! ddl_migration {
    ($name:literal) => {
        pub struct Migration;

        impl MigrationName for Migration {
            fn name(&self) -> &str {
                $name
            }
        }

        #[sea_orm_migration::async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                crate::run_ddl(manager, UP).await
            }

            async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                crate::run_ddl(manager, DOWN).await
            }
        }
    };
}
pub(crate) use ddl_migration;

mod m001_initial;
mod m002_promotions;
mod m003_sessions;
mod m004_jobs;
mod m005_token_expiry;
mod m006_lease_holder;
mod m007_spec_once;
mod m008_keyed_pseudonyms;
mod m009_early_stop;
mod m010_sweeps_that_think;
mod m011_constraints;
mod m012_objective;
mod m013_metrics_hot_path;
mod m014_predictions;
mod m015_acceptance_criteria;
mod m016_classify;
mod m017_metrics_one_index;
mod m018_metrics_by_step;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m001_initial::Migration),
            Box::new(m002_promotions::Migration),
            Box::new(m003_sessions::Migration),
            Box::new(m004_jobs::Migration),
            Box::new(m005_token_expiry::Migration),
            Box::new(m006_lease_holder::Migration),
            Box::new(m007_spec_once::Migration),
            Box::new(m008_keyed_pseudonyms::Migration),
            Box::new(m009_early_stop::Migration),
            Box::new(m010_sweeps_that_think::Migration),
            Box::new(m011_constraints::Migration),
            Box::new(m012_objective::Migration),
            Box::new(m013_metrics_hot_path::Migration),
            Box::new(m014_predictions::Migration),
            Box::new(m015_acceptance_criteria::Migration),
            Box::new(m016_classify::Migration),
            Box::new(m017_metrics_one_index::Migration),
            Box::new(m018_metrics_by_step::Migration),
        ]
    }
}

/// Runs `ddl` statement by statement, replacing `{ID}` with the backend's
/// auto-incrementing 64-bit primary key.
pub(crate) async fn run_ddl(manager: &SchemaManager<'_>, ddl: &str) -> Result<(), DbErr> {
    let id = match manager.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => "BIGSERIAL PRIMARY KEY",
        _ => "INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    let connection = manager.get_connection();
    for statement in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        connection.execute_unprepared(&statement.replace("{ID}", id)).await?;
    }
    Ok(())
}

//! Connections. SQLite gets a read pool and a single-connection write pool, so every
//! write transaction holds the database's one write lock from its first statement (the
//! effect of BEGIN IMMEDIATE, without busy retries); PostgreSQL gets one pool for both.

use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};
use std::time::Duration;

#[derive(Clone)]
pub struct Db {
    pub read: DatabaseConnection,
    pub write: DatabaseConnection,
    pub backend: DbBackend,
}

fn options(url: &str, max: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
        });
    options
}

/// Connects and brings the schema up to date.
pub async fn connect(url: &str) -> Result<Db, DbErr> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = Database::connect(options(url, 16)).await?;
        Migrator::up(&pool, None).await?;
        return Ok(Db { read: pool.clone(), write: pool, backend: DbBackend::Postgres });
    }
    if !url.starts_with("sqlite:") {
        return Err(DbErr::Custom(format!(
            "unsupported database URL `{}`: use sqlite://PATH or postgres://USER@HOST/DB",
            url.split('@').next_back().unwrap_or(url)
        )));
    }
    let write = Database::connect(options(url, 1)).await?;
    Migrator::up(&write, None).await?;
    let read = Database::connect(options(url, 4)).await?;
    Ok(Db { read, write, backend: DbBackend::Sqlite })
}

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
    // No ping before each use of a pooled connection: on the metric hot path it was a round
    // trip (PostgreSQL) or a hop to SQLite's thread per request. A connection PostgreSQL
    // dropped fails its next statement instead: that request answers 500 (workers
    // retry), and idle connections are closed after ten minutes.
    options.test_before_acquire(false).idle_timeout(Duration::from_secs(600));
    options.max_connections(max).min_connections(1).acquire_timeout(Duration::from_secs(30)).sqlx_logging(false).map_sqlx_sqlite_opts(
        |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
        },
    );
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

/// For test suites: a fresh PostgreSQL database on the server named by
/// COBB_TEST_POSTGRES_URL, or None (with a notice) when it is unset. With
/// COBB_REQUIRE_POSTGRES=1 an unset URL is a failure: the PostgreSQL suite must run.
pub async fn fresh_test_database() -> Option<String> {
    let Ok(url) = std::env::var("COBB_TEST_POSTGRES_URL") else {
        if std::env::var("COBB_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!("COBB_REQUIRE_POSTGRES=1 but COBB_TEST_POSTGRES_URL is not set: the PostgreSQL suite must run");
        }
        eprintln!("notice: PostgreSQL suite skipped; set COBB_TEST_POSTGRES_URL=postgres://USER@HOST/DB to run it");
        return None;
    };
    use sea_orm::{ConnectionTrait, Database};
    let admin = Database::connect(&url).await.expect("connect to COBB_TEST_POSTGRES_URL");
    let (host, pid) = (test_host_tag(), std::process::id());
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        drop_finished_test_databases(&admin, &host).await;
    }
    let name = format!("cobb_test_{host}_{pid}_{}", uuid::Uuid::new_v4().simple());
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    admin.close().await.ok();
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h.to_owned(), format!("?{q}")),
        None => (url.clone(), String::new()),
    };
    let without_db = head.rsplit_once('/').map(|(h, _)| h.to_owned()).unwrap_or(head);
    Some(format!("{without_db}/{name}{query}"))
}

/// This machine in test database names: 8 hex digits of its host name's hash, so test suites
/// on several machines can share one PostgreSQL server and each clears up only its own.
fn test_host_tag() -> String {
    use sha2::Digest;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(host.trim().as_bytes())[..4])
}

/// Drops the test databases that earlier test processes on this machine left behind (named
/// `cobb_test_<host>_<pid>_<uuid>`, their process gone), and those named before the process
/// was part of the name (`cobb_test_<uuid>`). A test database lives as long as its test
/// process; nothing else drops it, and on a kept CI machine they piled up (hundreds, gigabytes).
async fn drop_finished_test_databases(admin: &DatabaseConnection, host: &str) {
    use sea_orm::{ConnectionTrait, Statement};
    let Ok(rows) = admin
        .query_all(Statement::from_string(DbBackend::Postgres, "SELECT datname FROM pg_database WHERE datname LIKE 'cobb\\_test\\_%'"))
        .await
    else {
        return;
    };
    // Whether a process is alive is read from /proc; elsewhere only the old names are dropped.
    let procfs = std::path::Path::new("/proc/self").exists();
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else { continue };
        let parts: Vec<&str> = name.trim_start_matches("cobb_test_").split('_').collect();
        let finished = match parts.as_slice() {
            [_uuid] => true,
            [tag, pid, _uuid] => {
                procfs && *tag == host && pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            }
            _ => false,
        };
        if finished {
            // WITH (FORCE) ends sessions a killed test's server left open.
            if let Err(e) = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await {
                eprintln!("notice: could not drop the old test database {name}: {e}");
            }
        }
    }
}

/// Open and idle connections of each pool, for `/metrics`.
pub fn pool_counts(db: &Db) -> crate::prom::PoolCounts {
    let mut out = Vec::new();
    for (name, conn) in [("read", &db.read), ("write", &db.write)] {
        match db.backend {
            DbBackend::Postgres => {
                let pool = conn.get_postgres_connection_pool();
                out.push((name, pool.size(), pool.num_idle()));
            }
            _ => {
                let pool = conn.get_sqlite_connection_pool();
                out.push((name, pool.size(), pool.num_idle()));
            }
        }
    }
    out
}

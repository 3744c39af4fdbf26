use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult};

use super::{Id, all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct LeaseRow {
    pub id: String,
    pub run_id: i64,
    pub worker: String,
    pub attempt: i64,
    pub created_at: i64,
    pub heartbeat_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

/// The oldest queued run whose sweep has room under its `parallel` limit. On
/// PostgreSQL the row is locked and other leasers skip it (`FOR UPDATE SKIP LOCKED`);
/// on SQLite the caller's transaction already holds the single write connection.
pub async fn next_queued(conn: &impl ConnectionTrait) -> Result<Option<i64>, DbErr> {
    let lock = match conn.get_database_backend() {
        DbBackend::Postgres => "FOR UPDATE OF r SKIP LOCKED",
        _ => "",
    };
    let sql = format!(
        "SELECT r.id FROM runs r JOIN sweeps s ON s.id = r.sweep_id \
         WHERE r.status = 'queued' AND (s.parallel IS NULL OR \
           (SELECT COUNT(*) FROM runs x WHERE x.sweep_id = r.sweep_id AND x.status = 'running') < s.parallel) \
         ORDER BY r.id LIMIT 1 {lock}"
    );
    Ok(one::<Id>(conn, &sql, vec![]).await?.map(|r| r.id))
}

#[derive(Debug, FromQueryResult)]
pub struct Claimed {
    pub attempt: i64,
}

/// Moves a queued run to running under `lease_id`; None if someone else got it first.
pub async fn claim(
    conn: &impl ConnectionTrait,
    run_id: i64,
    lease_id: &str,
    worker: &str,
    now: i64,
) -> Result<Option<i64>, DbErr> {
    let claimed = one::<Claimed>(
        conn,
        "UPDATE runs SET status = 'running', attempt = attempt + 1, current_lease_id = $1, worker = $2, \
         started_at = COALESCE(started_at, $3), updated_at = $3 \
         WHERE id = $4 AND status = 'queued' RETURNING attempt",
        values![lease_id, worker, now, run_id],
    )
    .await?;
    Ok(claimed.map(|c| c.attempt))
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &impl ConnectionTrait,
    id: &str,
    run_id: i64,
    worker: &str,
    attempt: i64,
    now: i64,
    expires_at: i64,
) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO leases (id, run_id, worker, attempt, created_at, heartbeat_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $5, $6)",
        values![id, run_id, worker, attempt, now, expires_at],
    )
    .await?;
    Ok(())
}

pub async fn get(conn: &impl ConnectionTrait, id: &str) -> Result<Option<LeaseRow>, DbErr> {
    one(conn, "SELECT * FROM leases WHERE id = $1", values![id]).await
}

/// Like [`get`], inside a write transaction: on PostgreSQL the row is share-locked, so the
/// lease cannot end (reaper, completion) before the transaction's write commits. SQLite's
/// single write connection gives the same guarantee.
pub async fn get_for_write(conn: &impl ConnectionTrait, id: &str) -> Result<Option<LeaseRow>, DbErr> {
    let lock = match conn.get_database_backend() {
        DbBackend::Postgres => " FOR SHARE",
        _ => "",
    };
    one(conn, &format!("SELECT * FROM leases WHERE id = $1{lock}"), values![id]).await
}

pub async fn of_run(conn: &impl ConnectionTrait, run_id: i64) -> Result<Vec<LeaseRow>, DbErr> {
    all(conn, "SELECT * FROM leases WHERE run_id = $1 ORDER BY created_at", values![run_id]).await
}

/// Extends an open, unexpired lease; returns false if it is no longer live.
pub async fn extend(conn: &impl ConnectionTrait, id: &str, now: i64, expires_at: i64) -> Result<bool, DbErr> {
    let n = exec(
        conn,
        "UPDATE leases SET heartbeat_at = $1, expires_at = $2 WHERE id = $3 AND ended_at IS NULL AND expires_at >= $1",
        values![now, expires_at, id],
    )
    .await?;
    Ok(n == 1)
}

/// Ends an open lease; returns false if it had already ended.
pub async fn end(conn: &impl ConnectionTrait, id: &str, reason: &str, now: i64) -> Result<bool, DbErr> {
    let n = exec(
        conn,
        "UPDATE leases SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL",
        values![now, reason, id],
    )
    .await?;
    Ok(n == 1)
}

pub async fn expired(conn: &impl ConnectionTrait, now: i64) -> Result<Vec<LeaseRow>, DbErr> {
    all(conn, "SELECT * FROM leases WHERE ended_at IS NULL AND expires_at < $1 ORDER BY expires_at", values![now]).await
}

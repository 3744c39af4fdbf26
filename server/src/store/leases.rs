use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, exec, one, values};

/// The columns of a [`LeaseRow`], as a query over `leases l` names them.
pub(super) const COLUMNS: &str = "l.id, l.run_id, l.job_id, l.holder, l.worker, l.attempt, l.created_at, l.heartbeat_at, \
    l.expires_at, l.ended_at, l.end_reason";

#[derive(Debug, Clone, FromQueryResult)]
pub struct LeaseRow {
    pub id: String,
    pub run_id: i64,
    /// None only for leases that ended before jobs existed (migration m004).
    pub job_id: Option<i64>,
    /// The name of the token that took the lease (None for leases from before m006).
    pub holder: Option<String>,
    pub worker: String,
    pub attempt: i64,
    pub created_at: i64,
    pub heartbeat_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &impl ConnectionTrait,
    id: &str,
    job_id: i64,
    run_id: i64,
    holder: &str,
    worker: &str,
    attempt: i64,
    now: i64,
    expires_at: i64,
) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO leases (id, job_id, run_id, holder, worker, attempt, created_at, heartbeat_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        values![id, job_id, run_id, holder, worker, attempt, now, expires_at],
    )
    .await?;
    Ok(())
}

pub async fn get(conn: &impl ConnectionTrait, id: &str) -> Result<Option<LeaseRow>, DbErr> {
    one(conn, "SELECT * FROM leases WHERE id = $1", values![id]).await
}

/// Every lease of the run's jobs (training and evaluation), oldest first.
pub async fn of_run(conn: &impl ConnectionTrait, run_id: i64) -> Result<Vec<LeaseWithKind>, DbErr> {
    all(
        conn,
        "SELECT l.id, l.job_id, j.kind, l.worker, l.attempt, l.created_at, l.expires_at, l.ended_at, l.end_reason \
         FROM leases l LEFT JOIN jobs j ON j.id = l.job_id WHERE l.run_id = $1 ORDER BY l.created_at, l.id",
        values![run_id],
    )
    .await
}

/// Every lease of one job, oldest first.
pub async fn of_job(conn: &impl ConnectionTrait, job_id: i64) -> Result<Vec<LeaseWithKind>, DbErr> {
    all(
        conn,
        "SELECT l.id, l.job_id, j.kind, l.worker, l.attempt, l.created_at, l.expires_at, l.ended_at, l.end_reason \
         FROM leases l JOIN jobs j ON j.id = l.job_id WHERE l.job_id = $1 ORDER BY l.created_at, l.id",
        values![job_id],
    )
    .await
}

impl LeaseWithKind {
    /// Its job's kind (None for leases that ended before jobs existed).
    pub fn kind(&self) -> Result<Option<protocol::JobKind>, DbErr> {
        self.kind.as_deref().map(|k| super::decode_enum(&format!("leases row `{}`", self.id), "job kind", k)).transpose()
    }
}

/// A lease for the attempt history, with its job's kind.
#[derive(Debug, Clone, FromQueryResult)]
pub struct LeaseWithKind {
    pub id: String,
    pub job_id: Option<i64>,
    pub kind: Option<String>,
    pub worker: String,
    pub attempt: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
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
    let n =
        exec(conn, "UPDATE leases SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL", values![now, reason, id]).await?;
    Ok(n == 1)
}

pub async fn expired(conn: &impl ConnectionTrait, now: i64) -> Result<Vec<LeaseRow>, DbErr> {
    all(conn, "SELECT * FROM leases WHERE ended_at IS NULL AND expires_at < $1 ORDER BY expires_at", values![now]).await
}

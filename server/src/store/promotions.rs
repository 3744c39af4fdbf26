//! Promotions and their test-evaluation jobs.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult};

use super::{Id, all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct PromotionRow {
    pub id: i64,
    pub experiment_id: i64,
    pub experiment: String,
    pub run_id: i64,
    pub run_name: String,
    pub actor: String,
    pub reason: String,
    pub created_at: i64,
    pub checkpoint_uri: String,
    pub checkpoint_sha256: String,
    pub best_epoch: i64,
    pub dataset_version: String,
    pub config_hash: String,
    pub code_version: String,
    pub status: String,
    pub attempt: i64,
    pub lease_id: Option<String>,
    pub worker: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub superseded_by: Option<i64>,
    pub superseded_at: Option<i64>,
}

const COLUMNS: &str = "p.id, p.experiment_id, e.name AS experiment, p.run_id, r.name AS run_name, p.actor, p.reason, \
    p.created_at, p.checkpoint_uri, p.checkpoint_sha256, p.best_epoch, p.dataset_version, p.config_hash, p.code_version, \
    p.status, p.attempt, p.lease_id, p.worker, p.lease_expires_at, p.error, p.started_at, p.finished_at, \
    p.superseded_by, p.superseded_at";
const FROM: &str = "FROM promotions p JOIN experiments e ON e.id = p.experiment_id JOIN runs r ON r.id = p.run_id";

pub struct NewPromotion<'a> {
    pub experiment_id: i64,
    pub run_id: i64,
    pub actor: &'a str,
    pub reason: &'a str,
    pub checkpoint_uri: &'a str,
    pub checkpoint_sha256: &'a str,
    pub best_epoch: i64,
    pub dataset_version: &'a str,
    pub config_hash: &'a str,
    pub code_version: &'a str,
    pub status: &'a str,
    pub now: i64,
}

pub async fn insert(conn: &impl ConnectionTrait, p: NewPromotion<'_>) -> Result<i64, DbErr> {
    let finished = (p.status == "succeeded").then_some(p.now);
    one::<Id>(
        conn,
        "INSERT INTO promotions (experiment_id, run_id, actor, reason, created_at, checkpoint_uri, checkpoint_sha256, \
         best_epoch, dataset_version, config_hash, code_version, status, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        values![
            p.experiment_id,
            p.run_id,
            p.actor,
            p.reason,
            p.now,
            p.checkpoint_uri,
            p.checkpoint_sha256,
            p.best_epoch,
            p.dataset_version,
            p.config_hash,
            p.code_version,
            p.status,
            finished
        ],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Option<PromotionRow>, DbErr> {
    one(conn, &format!("SELECT {COLUMNS} {FROM} WHERE p.id = $1"), values![id]).await
}

/// The experiment's promoted model (the promotion nothing has superseded).
pub async fn current(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<Option<PromotionRow>, DbErr> {
    one(
        conn,
        &format!("SELECT {COLUMNS} {FROM} WHERE p.experiment_id = $1 AND p.superseded_by IS NULL ORDER BY p.id DESC LIMIT 1"),
        values![experiment_id],
    )
    .await
}

/// Every promotion, newest first; of one experiment when `experiment_id` is given.
pub async fn list(conn: &impl ConnectionTrait, experiment_id: Option<i64>) -> Result<Vec<PromotionRow>, DbErr> {
    match experiment_id {
        Some(id) => all(conn, &format!("SELECT {COLUMNS} {FROM} WHERE p.experiment_id = $1 ORDER BY p.id DESC"), values![id]).await,
        None => all(conn, &format!("SELECT {COLUMNS} {FROM} ORDER BY p.id DESC"), vec![]).await,
    }
}

/// Promotions of one run, oldest first.
pub async fn of_run(conn: &impl ConnectionTrait, run_id: i64) -> Result<Vec<PromotionRow>, DbErr> {
    all(conn, &format!("SELECT {COLUMNS} {FROM} WHERE p.run_id = $1 ORDER BY p.id"), values![run_id]).await
}

pub async fn supersede(conn: &impl ConnectionTrait, old: i64, new: i64, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        "UPDATE promotions SET superseded_by = $1, superseded_at = $2 WHERE id = $3 AND superseded_by IS NULL",
        values![new, now, old],
    )
    .await
}

/// The oldest queued evaluation, locked on PostgreSQL (others skip it).
pub async fn next_queued(conn: &impl ConnectionTrait) -> Result<Option<i64>, DbErr> {
    let lock = match conn.get_database_backend() {
        DbBackend::Postgres => "FOR UPDATE SKIP LOCKED",
        _ => "",
    };
    Ok(one::<Id>(conn, &format!("SELECT id FROM promotions WHERE status = 'queued' ORDER BY id LIMIT 1 {lock}"), vec![])
        .await?
        .map(|r| r.id))
}

/// Queued -> running under `lease_id`; false when someone else got it first.
pub async fn claim(conn: &impl ConnectionTrait, id: i64, lease_id: &str, worker: &str, now: i64, expires_at: i64) -> Result<bool, DbErr> {
    Ok(exec(
        conn,
        "UPDATE promotions SET status = 'running', attempt = attempt + 1, lease_id = $1, worker = $2, \
         lease_expires_at = $3, started_at = COALESCE(started_at, $4) WHERE id = $5 AND status = 'queued'",
        values![lease_id, worker, expires_at, now, id],
    )
    .await?
        == 1)
}

/// The promotion holding `lease_id`, locked for the caller's transaction on PostgreSQL.
pub async fn by_lease_for_write(conn: &impl ConnectionTrait, lease_id: &str) -> Result<Option<PromotionRow>, DbErr> {
    let lock = match conn.get_database_backend() {
        DbBackend::Postgres => "FOR UPDATE OF p",
        _ => "",
    };
    one(conn, &format!("SELECT {COLUMNS} {FROM} WHERE p.lease_id = $1 {lock}"), values![lease_id]).await
}

/// Extends a running evaluation's lease; false when it is not running under that lease.
pub async fn extend(conn: &impl ConnectionTrait, lease_id: &str, now: i64, expires_at: i64) -> Result<bool, DbErr> {
    Ok(exec(
        conn,
        "UPDATE promotions SET lease_expires_at = $1 WHERE lease_id = $2 AND status = 'running' AND lease_expires_at >= $3",
        values![expires_at, lease_id, now],
    )
    .await?
        == 1)
}

/// Ends the evaluation: `queued` again (lease cleared) for a retry, or `succeeded`/`failed`.
pub async fn finish(conn: &impl ConnectionTrait, id: i64, status: &str, error: Option<&str>, now: i64) -> Result<(), DbErr> {
    let done = (status != "queued").then_some(now);
    exec(
        conn,
        "UPDATE promotions SET status = $1, error = $2, finished_at = $3, lease_id = NULL, lease_expires_at = NULL WHERE id = $4",
        values![status, error, done, id],
    )
    .await?;
    Ok(())
}

/// Running evaluations whose lease has expired.
pub async fn expired(conn: &impl ConnectionTrait, now: i64) -> Result<Vec<PromotionRow>, DbErr> {
    all(conn, &format!("SELECT {COLUMNS} {FROM} WHERE p.status = 'running' AND p.lease_expires_at < $1"), values![now]).await
}

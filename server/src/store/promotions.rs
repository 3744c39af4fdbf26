//! Promotions. A promotion's test evaluation is a job of kind `evaluate` (store::jobs);
//! its status, attempts and error are read from that job here.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

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
    /// The evaluation job's status; `succeeded` for a promotion that reuses an earlier
    /// evaluation (it has no job).
    pub status: String,
    pub job_id: Option<i64>,
    pub attempt: i64,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub superseded_by: Option<i64>,
    pub superseded_at: Option<i64>,
    pub approvals_needed: i64,
    pub approvers_json: String,
    /// 1 while its evaluation job waits for approvals.
    pub held: i64,
    /// The per-class auto-accept thresholds fixed at promotion (protocol::classify::AutoAccept).
    pub auto_accept_json: Option<String>,
}

const COLUMNS: &str = "p.id, p.experiment_id, e.name AS experiment, p.run_id, r.name AS run_name, p.actor, p.reason, \
    p.created_at, p.checkpoint_uri, p.checkpoint_sha256, p.best_epoch, p.dataset_version, p.config_hash, p.code_version, \
    COALESCE(j.status, 'succeeded') AS status, j.id AS job_id, COALESCE(j.attempt, 0) AS attempt, j.worker, j.error, \
    j.started_at, COALESCE(j.finished_at, p.created_at) AS finished_at, p.superseded_by, p.superseded_at, \
    p.approvals_needed, p.approvers_json, COALESCE(j.held, 0) AS held, p.auto_accept_json";
const FROM: &str = "FROM promotions p JOIN experiments e ON e.id = p.experiment_id JOIN runs r ON r.id = p.run_id \
    LEFT JOIN jobs j ON j.promotion_id = p.id";

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
    pub now: i64,
    pub approvals_needed: i64,
    pub auto_accept_json: Option<String>,
}

pub async fn insert(conn: &impl ConnectionTrait, p: NewPromotion<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO promotions (experiment_id, run_id, actor, reason, created_at, checkpoint_uri, checkpoint_sha256, \
         best_epoch, dataset_version, config_hash, code_version, approvals_needed, approvers_json, auto_accept_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
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
            p.approvals_needed,
            serde_json::json!([p.actor]).to_string(),
            p.auto_accept_json
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

/// Promotions of the model with this best-checkpoint sha256 (any run), oldest first.
pub async fn by_checkpoint(conn: &impl ConnectionTrait, sha256: &str) -> Result<Vec<PromotionRow>, DbErr> {
    all(conn, &format!("SELECT {COLUMNS} {FROM} WHERE p.checkpoint_sha256 = $1 ORDER BY p.id"), values![sha256]).await
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

/// Records who has signed the promotion (JSON list of token names, the promoter first).
pub async fn set_approvers(conn: &impl ConnectionTrait, id: i64, approvers_json: &str) -> Result<(), DbErr> {
    exec(conn, "UPDATE promotions SET approvers_json = $1 WHERE id = $2", values![approvers_json, id]).await?;
    Ok(())
}

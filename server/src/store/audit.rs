use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub experiment: Option<String>,
    pub run_id: Option<i64>,
    pub details_json: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(FromQueryResult)]
struct Hash {
    hash: String,
}

pub async fn last_hash(conn: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
    Ok(one::<Hash>(conn, "SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1", vec![]).await?.map(|h| h.hash))
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &impl ConnectionTrait,
    at: i64,
    actor: &str,
    action: &str,
    experiment: Option<&str>,
    run_id: Option<i64>,
    details_json: &str,
    prev_hash: &str,
    hash: &str,
) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO audit_events (at, actor, action, experiment, run_id, details_json, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        values![at, actor, action, experiment.map(str::to_owned), run_id, details_json, prev_hash, hash],
    )
    .await?;
    Ok(())
}

pub async fn list(conn: &impl ConnectionTrait) -> Result<Vec<AuditRow>, DbErr> {
    all(conn, "SELECT * FROM audit_events ORDER BY id", vec![]).await
}

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, exec, one, values};

#[derive(Debug, FromQueryResult)]
pub struct ArtifactRow {
    pub kind: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
    pub created_at: i64,
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &impl ConnectionTrait,
    run_id: i64,
    lease_id: &str,
    kind: &str,
    uri: &str,
    sha256: &str,
    bytes: i64,
    now: i64,
) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO artifacts (run_id, lease_id, kind, uri, sha256, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        values![run_id, lease_id, kind, uri, sha256, bytes, now],
    )
    .await?;
    Ok(())
}

pub async fn of_run(conn: &impl ConnectionTrait, run_id: i64) -> Result<Vec<ArtifactRow>, DbErr> {
    all(conn, "SELECT kind, uri, sha256, bytes, created_at FROM artifacts WHERE run_id = $1 ORDER BY id", values![run_id])
        .await
}

/// The newest checkpoint of a run (what a resumed attempt starts from).
pub async fn latest_checkpoint(conn: &impl ConnectionTrait, run_id: i64) -> Result<Option<ArtifactRow>, DbErr> {
    one(
        conn,
        "SELECT kind, uri, sha256, bytes, created_at FROM artifacts WHERE run_id = $1 AND kind = 'last_checkpoint' \
         ORDER BY id DESC LIMIT 1",
        values![run_id],
    )
    .await
}

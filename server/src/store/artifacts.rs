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
    all(conn, "SELECT kind, uri, sha256, bytes, created_at FROM artifacts WHERE run_id = $1 ORDER BY id", values![run_id]).await
}

/// The newest artifact of `kind` of a run (`last_checkpoint` is what a resumed attempt
/// starts from, `best_checkpoint` what a promotion evaluates).
pub async fn latest(conn: &impl ConnectionTrait, run_id: i64, kind: &str) -> Result<Option<ArtifactRow>, DbErr> {
    one(
        conn,
        "SELECT kind, uri, sha256, bytes, created_at FROM artifacts WHERE run_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
        values![run_id, kind],
    )
    .await
}

#[derive(Debug, FromQueryResult)]
struct Sha {
    sha256: String,
}

/// Removes the run's older artifacts of `kind` (a newer one was just recorded) and returns
/// their sha256s.
pub async fn delete_older(conn: &impl ConnectionTrait, run_id: i64, kind: &str) -> Result<Vec<String>, DbErr> {
    let rows: Vec<Sha> = all(
        conn,
        "DELETE FROM artifacts WHERE run_id = $1 AND kind = $2 AND id < (SELECT MAX(id) FROM artifacts WHERE run_id = $1 AND kind = $2) \
         RETURNING sha256",
        values![run_id, kind],
    )
    .await?;
    Ok(rows.into_iter().map(|r| r.sha256).collect())
}

/// Whether any artifact or promotion still names `sha256`.
pub async fn referenced(conn: &impl ConnectionTrait, sha256: &str) -> Result<bool, DbErr> {
    let n = one::<super::Count>(
        conn,
        "SELECT (SELECT COUNT(*) FROM artifacts WHERE sha256 = $1) + (SELECT COUNT(*) FROM promotions WHERE checkpoint_sha256 = $1) AS n",
        values![sha256],
    )
    .await?;
    Ok(n.is_some_and(|c| c.n > 0))
}

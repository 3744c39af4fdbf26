//! Dashboard sessions.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{exec, one, values};
use crate::principal::Principal;

pub async fn insert(
    conn: &impl ConnectionTrait,
    id_hash: &str,
    token_hash: &str,
    csrf: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO sessions (id_hash, token_hash, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        values![id_hash, token_hash, csrf, now, expires_at],
    )
    .await?;
    // Old sessions go when new ones come.
    exec(conn, "DELETE FROM sessions WHERE expires_at < $1", values![now]).await?;
    Ok(())
}

#[derive(FromQueryResult)]
struct SessionRow {
    name: String,
    role: String,
    csrf: String,
}

/// The principal and CSRF token of a live session whose token is not revoked.
pub async fn find(conn: &impl ConnectionTrait, id_hash: &str, now: i64) -> Result<Option<(Principal, String)>, DbErr> {
    let row = one::<SessionRow>(
        conn,
        "SELECT t.name, t.role, s.csrf FROM sessions s JOIN api_tokens t ON t.token_hash = s.token_hash \
         WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)",
        values![id_hash, now],
    )
    .await?;
    Ok(row.and_then(|r| r.role.parse().ok().map(|role| (Principal { name: r.name, role }, r.csrf))))
}

pub async fn delete(conn: &impl ConnectionTrait, id_hash: &str) -> Result<(), DbErr> {
    exec(conn, "DELETE FROM sessions WHERE id_hash = $1", values![id_hash]).await?;
    Ok(())
}

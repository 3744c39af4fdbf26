use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{Count, all, exec, one, values};
use crate::principal::Principal;

#[derive(FromQueryResult)]
struct TokenRow {
    name: String,
    role: String,
}

pub async fn count(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    Ok(one::<Count>(conn, "SELECT COUNT(*) AS n FROM api_tokens", vec![]).await?.map_or(0, |c| c.n))
}

pub async fn name_taken(conn: &impl ConnectionTrait, name: &str) -> Result<bool, DbErr> {
    let n = one::<Count>(conn, "SELECT COUNT(*) AS n FROM api_tokens WHERE name = $1", values![name]).await?;
    Ok(n.is_some_and(|c| c.n > 0))
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &impl ConnectionTrait,
    name: &str,
    role: &str,
    hash: &str,
    created_by: &str,
    now: i64,
    expires_at: Option<i64>,
) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        values![name, role, hash, now, created_by, expires_at],
    )
    .await?;
    Ok(())
}

/// The principal of a token that is neither revoked nor expired at `now`.
pub async fn find_by_hash(conn: &impl ConnectionTrait, hash: &str, now: i64) -> Result<Option<Principal>, DbErr> {
    let row = one::<TokenRow>(
        conn,
        "SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        values![hash, now],
    )
    .await?;
    row.map(|r| Ok(Principal { role: super::decode_enum(&format!("api_tokens row `{}`", r.name), "role", &r.role)?, name: r.name }))
        .transpose()
}

/// A token as an admin sees it: never its hash.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ListedToken {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub token_hash: String,
}

impl ListedToken {
    pub fn role(&self) -> Result<protocol::Role, DbErr> {
        super::decode_enum(&format!("api_tokens row {}", self.id), "role", &self.role)
    }
}

pub async fn list(conn: &impl ConnectionTrait) -> Result<Vec<ListedToken>, DbErr> {
    all(conn, "SELECT id, name, role, created_at, created_by, revoked_at, expires_at, token_hash FROM api_tokens ORDER BY id", vec![]).await
}

/// The token named `name`, or with id `name` when it is a number.
pub async fn find(conn: &impl ConnectionTrait, name_or_id: &str) -> Result<Option<ListedToken>, DbErr> {
    let columns = "SELECT id, name, role, created_at, created_by, revoked_at, expires_at, token_hash FROM api_tokens";
    match name_or_id.parse::<i64>() {
        Ok(id) => one(conn, &format!("{columns} WHERE id = $1 OR name = $2"), values![id, name_or_id]).await,
        Err(_) => one(conn, &format!("{columns} WHERE name = $1"), values![name_or_id]).await,
    }
}

/// Revokes a token that is not revoked yet; returns whether it changed.
pub async fn revoke(conn: &impl ConnectionTrait, id: i64, now: i64) -> Result<bool, DbErr> {
    Ok(exec(conn, "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", values![now, id]).await? == 1)
}

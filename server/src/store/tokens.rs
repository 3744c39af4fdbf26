use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{Count, exec, one, values};
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

pub async fn insert(conn: &impl ConnectionTrait, name: &str, role: &str, hash: &str, created_by: &str, now: i64) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
        values![name, role, hash, now, created_by],
    )
    .await?;
    Ok(())
}

pub async fn find_by_hash(conn: &impl ConnectionTrait, hash: &str) -> Result<Option<Principal>, DbErr> {
    let row =
        one::<TokenRow>(conn, "SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", values![hash]).await?;
    Ok(row.and_then(|r| r.role.parse().ok().map(|role| Principal { name: r.name, role })))
}

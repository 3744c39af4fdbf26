use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{exec, one, values};

#[derive(FromQueryResult)]
struct Setting {
    value: String,
}

pub async fn get(conn: &impl ConnectionTrait, key: &str) -> Result<Option<String>, DbErr> {
    Ok(one::<Setting>(conn, "SELECT value FROM settings WHERE key = $1", values![key]).await?.map(|s| s.value))
}

/// Stores `value` unless the key already has one; returns the stored value.
pub async fn get_or_insert(conn: &impl ConnectionTrait, key: &str, value: &str) -> Result<String, DbErr> {
    exec(conn, "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", values![key, value]).await?;
    Ok(get(conn, key).await?.unwrap_or_else(|| value.to_owned()))
}

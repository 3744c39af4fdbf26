use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, exec, values};

#[derive(Debug, FromQueryResult)]
pub struct WorkerRow {
    pub name: String,
    pub device: Option<String>,
    pub last_seen_at: i64,
    pub current_run_id: Option<i64>,
}

/// Records that a worker was seen, and the run it is on (None when idle).
pub async fn seen(conn: &impl ConnectionTrait, name: &str, device: Option<&str>, current_run: Option<i64>, now: i64) -> Result<(), DbErr> {
    exec(
        conn,
        "INSERT INTO workers (name, device, first_seen_at, last_seen_at, current_run_id) VALUES ($1, $2, $3, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET device = COALESCE(excluded.device, workers.device), \
         last_seen_at = excluded.last_seen_at, current_run_id = excluded.current_run_id",
        values![name, device.map(str::to_owned), now, current_run],
    )
    .await?;
    Ok(())
}

pub async fn touch(conn: &impl ConnectionTrait, name: &str, now: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE workers SET last_seen_at = $1 WHERE name = $2", values![now, name]).await?;
    Ok(())
}

pub async fn list(conn: &impl ConnectionTrait) -> Result<Vec<WorkerRow>, DbErr> {
    all(conn, "SELECT name, device, last_seen_at, current_run_id FROM workers ORDER BY name", vec![]).await
}

//! Stored predictions: one row per (run, split), the body a compact JSON array (migration
//! m014). The items' labels and patients are read from `dataset_items`.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, exec, one, values};

#[derive(Debug, FromQueryResult)]
pub struct PredictionRow {
    pub epoch: Option<i64>,
    pub body: String,
    pub recorded_at: i64,
}

/// One stored prediction: the item's row id, the predicted class, the probabilities.
pub type Entry = (i64, u32, Vec<f64>);

impl PredictionRow {
    pub fn decode(&self, run_id: i64, split: &str) -> Result<Vec<Entry>, DbErr> {
        super::decode_json(&format!("predictions row (run {run_id}, {split})"), "body", &self.body)
    }
}

/// An item of a dataset version as the predictions need it.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ItemKey {
    pub id: i64,
    pub path: String,
    pub label: String,
    pub patient: Option<String>,
}

/// The items of `version_id` on `split`, by path.
pub async fn items(conn: &impl ConnectionTrait, version_id: i64, split: &str) -> Result<Vec<ItemKey>, DbErr> {
    all(
        conn,
        "SELECT id, path, label, patient FROM dataset_items WHERE version_id = $1 AND split = $2 ORDER BY path",
        values![version_id, split],
    )
    .await
}

/// Stores (or replaces) the predictions of `run_id` on `split`.
pub async fn upsert(
    conn: &impl ConnectionTrait,
    run_id: i64,
    split: &str,
    epoch: Option<i64>,
    entries: &[Entry],
    now: i64,
) -> Result<(), DbErr> {
    let body = serde_json::to_string(entries).map_err(|e| DbErr::Custom(format!("predictions of run {run_id}: {e}")))?;
    exec(
        conn,
        "INSERT INTO predictions (run_id, split, epoch, images, body, recorded_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (run_id, split) DO UPDATE SET epoch = excluded.epoch, images = excluded.images, body = excluded.body, \
         recorded_at = excluded.recorded_at",
        values![run_id, split, epoch, entries.len() as i64, body, now],
    )
    .await?;
    Ok(())
}

pub async fn get(conn: &impl ConnectionTrait, run_id: i64, split: &str) -> Result<Option<PredictionRow>, DbErr> {
    one(conn, "SELECT epoch, body, recorded_at FROM predictions WHERE run_id = $1 AND split = $2", values![run_id, split]).await
}

/// When the predictions of `run_id` on `split` were stored (their version), without the body.
pub async fn stamp(conn: &impl ConnectionTrait, run_id: i64, split: &str) -> Result<Option<i64>, DbErr> {
    #[derive(FromQueryResult)]
    struct Stamp {
        recorded_at: i64,
    }
    let row: Option<Stamp> =
        one(conn, "SELECT recorded_at FROM predictions WHERE run_id = $1 AND split = $2", values![run_id, split]).await?;
    Ok(row.map(|r| r.recorded_at))
}

//! Classification batches and their images (migration m016).

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};

use super::{Id, all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct BatchRow {
    pub id: i64,
    pub experiment_id: i64,
    pub experiment: String,
    /// The experiment's frozen dataset version (whose classes the model predicts).
    pub dataset_version_id: i64,
    pub promotion_id: i64,
    pub run_id: i64,
    pub checkpoint_sha256: String,
    pub job_id: i64,
    pub actor: String,
    pub path: String,
    pub batch_size: i64,
    pub images_per_second: Option<f64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub status: String,
    pub worker: Option<String>,
    pub error: Option<String>,
    /// 1 while the job waits for its creator's own process (`cobb classify` without a worker).
    pub held: i64,
}

const COLUMNS: &str = "b.id, b.experiment_id, e.name AS experiment, e.dataset_version_id, b.promotion_id, p.run_id, p.checkpoint_sha256, b.job_id, \
    b.actor, b.path, b.batch_size, b.images_per_second, b.created_at, b.finished_at, j.status, j.worker, j.error, j.held";
const FROM: &str = "FROM classify_batches b JOIN experiments e ON e.id = b.experiment_id \
    JOIN promotions p ON p.id = b.promotion_id JOIN jobs j ON j.id = b.job_id";

pub struct NewBatch<'a> {
    pub experiment_id: i64,
    pub promotion_id: i64,
    pub job_id: i64,
    pub actor: &'a str,
    pub path: &'a str,
    pub batch_size: i64,
    pub now: i64,
}

pub async fn insert(conn: &impl ConnectionTrait, b: NewBatch<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO classify_batches (experiment_id, promotion_id, job_id, actor, path, batch_size, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        values![b.experiment_id, b.promotion_id, b.job_id, b.actor, b.path, b.batch_size, b.now],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Option<BatchRow>, DbErr> {
    one(conn, &format!("SELECT {COLUMNS} {FROM} WHERE b.id = $1"), values![id]).await
}

pub async fn by_job(conn: &impl ConnectionTrait, job_id: i64) -> Result<Option<BatchRow>, DbErr> {
    one(conn, &format!("SELECT {COLUMNS} {FROM} WHERE b.job_id = $1"), values![job_id]).await
}

/// Batches, newest first; of one experiment when given.
pub async fn list(conn: &impl ConnectionTrait, experiment_id: Option<i64>, limit: u64) -> Result<Vec<BatchRow>, DbErr> {
    match experiment_id {
        Some(id) => {
            all(conn, &format!("SELECT {COLUMNS} {FROM} WHERE b.experiment_id = $1 ORDER BY b.id DESC LIMIT $2"), values![id, limit as i64])
                .await
        }
        None => all(conn, &format!("SELECT {COLUMNS} {FROM} ORDER BY b.id DESC LIMIT $1"), values![limit as i64]).await,
    }
}

pub async fn finish(conn: &impl ConnectionTrait, id: i64, images_per_second: Option<f64>, now: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE classify_batches SET images_per_second = $1, finished_at = $2 WHERE id = $3", values![images_per_second, now, id])
        .await?;
    Ok(())
}

/// One image row to store.
pub struct NewItem<'a> {
    pub path: &'a str,
    pub sha256: Option<&'a str>,
    pub predicted: Option<i64>,
    pub confidence: Option<f64>,
    pub decision: &'a str,
    pub reason: &'a str,
}

const ITEM_COLUMNS: usize = 7;
const ITEMS_PER_STATEMENT: usize = 500;

/// Stores images of a batch; an image sent again (a retried job) replaces its row, review
/// included, since it may be a different file under the same path.
pub async fn upsert_items(conn: &impl ConnectionTrait, batch_id: i64, items: &[NewItem<'_>]) -> Result<(), DbErr> {
    for chunk in items.chunks(ITEMS_PER_STATEMENT) {
        let mut marks = Vec::with_capacity(chunk.len());
        let mut vals: Vec<Value> = Vec::with_capacity(chunk.len() * ITEM_COLUMNS);
        for (i, item) in chunk.iter().enumerate() {
            let base = i * ITEM_COLUMNS;
            marks.push(format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                base + 1,
                base + 2,
                base + 3,
                base + 4,
                base + 5,
                base + 6,
                base + 7
            ));
            vals.extend(values![
                batch_id,
                item.path,
                item.sha256.map(str::to_owned),
                item.predicted,
                item.confidence,
                item.decision,
                item.reason
            ]);
        }
        exec(
            conn,
            &format!(
                "INSERT INTO classify_items (batch_id, path, sha256, predicted, confidence, decision, reason) VALUES {} \
                 ON CONFLICT (batch_id, path) DO UPDATE SET sha256 = excluded.sha256, predicted = excluded.predicted, \
                 confidence = excluded.confidence, decision = excluded.decision, reason = excluded.reason, \
                 reviewed_label = NULL, reviewed_by = NULL, reviewed_at = NULL",
                marks.join(", ")
            ),
            vals,
        )
        .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct ItemRow {
    pub path: String,
    pub sha256: Option<String>,
    pub predicted: Option<i64>,
    pub confidence: Option<f64>,
    pub decision: String,
    pub reason: String,
    pub reviewed_label: Option<String>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
}

const ITEM_ROW: &str = "path, sha256, predicted, confidence, decision, reason, reviewed_label, reviewed_by, reviewed_at";

/// The images of a batch by path; only those with `decision` when given.
pub async fn items(conn: &impl ConnectionTrait, batch_id: i64, decision: Option<&str>) -> Result<Vec<ItemRow>, DbErr> {
    match decision {
        Some(d) => {
            all(
                conn,
                &format!("SELECT {ITEM_ROW} FROM classify_items WHERE batch_id = $1 AND decision = $2 ORDER BY path"),
                values![batch_id, d],
            )
            .await
        }
        None => all(conn, &format!("SELECT {ITEM_ROW} FROM classify_items WHERE batch_id = $1 ORDER BY path"), values![batch_id]).await,
    }
}

/// The images of a batch at `paths` (those that exist).
pub async fn items_at(conn: &impl ConnectionTrait, batch_id: i64, paths: &[&str]) -> Result<Vec<ItemRow>, DbErr> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(ITEMS_PER_STATEMENT) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let mut vals = values![batch_id];
        vals.extend(chunk.iter().map(|p| Value::from(*p)));
        let sql = format!("SELECT {ITEM_ROW} FROM classify_items WHERE batch_id = $1 AND path IN ({})", marks.join(", "));
        out.extend(all::<ItemRow>(conn, &sql, vals).await?);
    }
    Ok(out)
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct CountRow {
    pub batch_id: i64,
    pub predicted: Option<i64>,
    pub decision: String,
    pub reviewed: i64,
    pub n: i64,
}

/// Images per (predicted class, decision, reviewed or not): the batch's summary in one query.
pub async fn counts(conn: &impl ConnectionTrait, batch_id: i64) -> Result<Vec<CountRow>, DbErr> {
    counts_of(conn, &[batch_id]).await
}

/// The counts of several batches in one query (a page of batches), each row naming its batch.
pub async fn counts_of(conn: &impl ConnectionTrait, batch_ids: &[i64]) -> Result<Vec<CountRow>, DbErr> {
    if batch_ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=batch_ids.len()).map(|i| format!("${i}")).collect();
    let reviewed = "CASE WHEN reviewed_label IS NULL THEN 0 ELSE 1 END";
    all(
        conn,
        &format!(
            "SELECT batch_id, predicted, decision, CAST({reviewed} AS BIGINT) AS reviewed, COUNT(*) AS n FROM classify_items \
             WHERE batch_id IN ({}) GROUP BY batch_id, predicted, decision, {reviewed}",
            marks.join(", ")
        ),
        batch_ids.iter().map(|id| Value::from(*id)).collect(),
    )
    .await
}

/// Records a reviewer's label for one image; 0 when the batch has no such image.
pub async fn set_review(conn: &impl ConnectionTrait, batch_id: i64, path: &str, label: &str, by: &str, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        "UPDATE classify_items SET reviewed_label = $1, reviewed_by = $2, reviewed_at = $3 WHERE batch_id = $4 AND path = $5 \
         AND decision <> 'skipped'",
        values![label, by, now, batch_id, path],
    )
    .await
}

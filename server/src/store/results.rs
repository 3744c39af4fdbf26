use protocol::metrics::{ClassificationReport, ConfusionMatrix};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};

use super::{all, exec, one, placeholders, values};

#[derive(Debug, FromQueryResult)]
pub struct ClassRow {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: i64,
}

#[derive(Debug, FromQueryResult)]
pub struct MatrixRow {
    pub epoch: i64,
    pub classes_json: String,
    pub counts_json: String,
}

impl MatrixRow {
    /// The stored matrix of `run_id` on `split`; a corrupt row is an error naming it.
    pub fn decode(&self, run_id: i64, split: &str) -> Result<ConfusionMatrix, DbErr> {
        super::decode_matrix(
            &format!("confusion_matrices row (run {run_id}, epoch {}, {split})", self.epoch),
            &self.classes_json,
            &self.counts_json,
        )
    }
}

/// Stores one epoch's per-class rows and confusion matrix (replacing a resent epoch).
pub async fn upsert_epoch(
    conn: &impl ConnectionTrait,
    run_id: i64,
    epoch: i64,
    split: &str,
    matrix: &ConfusionMatrix,
    report: &ClassificationReport,
) -> Result<(), DbErr> {
    exec(conn, "DELETE FROM class_results WHERE run_id = $1 AND epoch = $2 AND split = $3", values![run_id, epoch, split]).await?;
    if !report.per_class.is_empty() {
        const WIDTH: usize = 8;
        let mut vals: Vec<Value> = Vec::with_capacity(report.per_class.len() * WIDTH);
        for c in &report.per_class {
            vals.extend(values![run_id, epoch, split, c.class.clone(), c.precision, c.recall, c.f1, c.support as i64]);
        }
        let sql = format!(
            "INSERT INTO class_results (run_id, epoch, split, class, precision, recall, f1, support) VALUES {}",
            placeholders(report.per_class.len(), WIDTH)
        );
        exec(conn, &sql, vals).await?;
    }
    let classes = serde_json::to_string(&matrix.classes).unwrap_or_default();
    let counts = serde_json::to_string(&matrix.counts).unwrap_or_default();
    exec(
        conn,
        "INSERT INTO confusion_matrices (run_id, epoch, split, classes_json, counts_json) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (run_id, epoch, split) DO UPDATE SET classes_json = excluded.classes_json, counts_json = excluded.counts_json",
        values![run_id, epoch, split, classes, counts],
    )
    .await?;
    Ok(())
}

/// The confusion matrix of `epoch`, or of the last epoch when `epoch` is None.
pub async fn matrix(conn: &impl ConnectionTrait, run_id: i64, split: &str, epoch: Option<i64>) -> Result<Option<MatrixRow>, DbErr> {
    match epoch {
        Some(epoch) => {
            one(
                conn,
                "SELECT epoch, classes_json, counts_json FROM confusion_matrices WHERE run_id = $1 AND split = $2 AND epoch = $3",
                values![run_id, split, epoch],
            )
            .await
        }
        None => {
            one(
                conn,
                "SELECT epoch, classes_json, counts_json FROM confusion_matrices WHERE run_id = $1 AND split = $2 \
             ORDER BY epoch DESC LIMIT 1",
                values![run_id, split],
            )
            .await
        }
    }
}

pub async fn classes(conn: &impl ConnectionTrait, run_id: i64, split: &str, epoch: i64) -> Result<Vec<ClassRow>, DbErr> {
    all(
        conn,
        "SELECT class, precision, recall, f1, support FROM class_results WHERE run_id = $1 AND split = $2 AND epoch = $3",
        values![run_id, split, epoch],
    )
    .await
}

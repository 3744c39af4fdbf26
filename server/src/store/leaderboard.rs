//! The sweep leaderboard's per-run numbers at each run's best epoch, in three queries for
//! the whole sweep (not per run), so 1,000 runs are one page.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, values};

#[derive(Debug, FromQueryResult)]
pub struct RunMetric {
    pub run_id: i64,
    pub key: String,
    pub value: f64,
}

/// `val_accuracy` and `val_macro_f1` of every run of the sweep at its best epoch.
pub async fn best_metrics(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Vec<RunMetric>, DbErr> {
    all(
        conn,
        "SELECT m.run_id, m.key, m.value FROM metrics m JOIN runs r ON r.id = m.run_id AND m.step = r.best_epoch \
         WHERE r.sweep_id = $1 AND m.key IN ('val_accuracy', 'val_macro_f1')",
        values![sweep_id],
    )
    .await
}

#[derive(Debug, FromQueryResult)]
pub struct RunClassRecall {
    pub run_id: i64,
    pub class: String,
    pub recall: f64,
}

/// Per-class validation recall of every run of the sweep at its best epoch.
pub async fn best_recalls(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Vec<RunClassRecall>, DbErr> {
    all(
        conn,
        "SELECT c.run_id, c.class, c.recall FROM class_results c JOIN runs r ON r.id = c.run_id AND c.epoch = r.best_epoch \
         WHERE r.sweep_id = $1 AND c.split = 'val'",
        values![sweep_id],
    )
    .await
}

#[derive(Debug, FromQueryResult)]
pub struct RunEpochs {
    pub run_id: i64,
    pub epochs: i64,
}

/// Epochs reported per run (the highest `train_loss` step + 1).
pub async fn epochs(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Vec<RunEpochs>, DbErr> {
    all(
        conn,
        "SELECT m.run_id, MAX(m.step) + 1 AS epochs FROM metrics m JOIN runs r ON r.id = m.run_id \
         WHERE r.sweep_id = $1 AND m.key = 'train_loss' GROUP BY m.run_id",
        values![sweep_id],
    )
    .await
}

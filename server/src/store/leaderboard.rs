//! The sweep leaderboard's per-run numbers at each run's best epoch, in three queries for
//! the whole sweep (not per run), so 1,000 runs are one page.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Value};

use super::{all, values};

#[derive(Debug, FromQueryResult)]
pub struct LeaderRun {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub params_json: String,
    pub error: Option<String>,
    pub best_epoch: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub feasible: Option<i64>,
    pub violations: Option<String>,
}

impl LeaderRun {
    pub fn params(&self) -> Result<protocol::spec::Params, DbErr> {
        super::decode_json(&format!("runs row {}", self.id), "params_json", &self.params_json)
    }

    /// The constraints it missed, in words (empty when it met them or is not done).
    pub fn violations(&self) -> Result<Vec<String>, DbErr> {
        match &self.violations {
            Some(text) => super::decode_json(&format!("runs row {}", self.id), "violations", text),
            None => Ok(Vec::new()),
        }
    }
}

/// The sweep's runs (of one status, if given), without their configs.
pub async fn runs(conn: &impl ConnectionTrait, sweep_id: i64, status: Option<&str>) -> Result<Vec<LeaderRun>, DbErr> {
    let columns = "SELECT r.id, r.name, j.status, r.params_json, j.error, r.best_epoch, j.started_at, j.finished_at, \
        r.feasible, r.violations \
        FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' WHERE r.sweep_id = $1";
    match status {
        Some(s) => all(conn, &format!("{columns} AND j.status = $2 ORDER BY r.id"), values![sweep_id, s]).await,
        None => all(conn, &format!("{columns} ORDER BY r.id"), values![sweep_id]).await,
    }
}

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

/// The lowest per-class validation recall of every run of the sweep at its best epoch, and
/// its class (one row per run, picked in SQL).
pub async fn worst_recalls(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Vec<RunClassRecall>, DbErr> {
    let from = "FROM class_results c JOIN runs r ON r.id = c.run_id AND c.epoch = r.best_epoch WHERE r.sweep_id = $1 AND c.split = 'val'";
    let sql = match conn.get_database_backend() {
        DbBackend::Postgres => {
            format!("SELECT DISTINCT ON (c.run_id) c.run_id, c.class, c.recall {from} ORDER BY c.run_id, c.recall, c.class")
        }
        // SQLite takes the bare columns from the row that holds the MIN.
        _ => format!("SELECT c.run_id, c.class, MIN(c.recall) AS recall {from} GROUP BY c.run_id"),
    };
    all(conn, &sql, values![sweep_id]).await
}

#[derive(Debug, FromQueryResult)]
pub struct ClassRow {
    pub run_id: i64,
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: i64,
}

fn id_list(ids: &[i64]) -> (String, Vec<Value>) {
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    (marks.join(", "), ids.iter().map(|&i| Value::from(i)).collect())
}

/// Per-class validation rows of the given runs at their best epochs, in one query.
pub async fn best_class_rows(conn: &impl ConnectionTrait, run_ids: &[i64]) -> Result<Vec<ClassRow>, DbErr> {
    let (marks, vals) = id_list(run_ids);
    all(
        conn,
        &format!(
            "SELECT c.run_id, c.class, c.precision, c.recall, c.f1, c.support FROM class_results c \
             JOIN runs r ON r.id = c.run_id AND c.epoch = r.best_epoch WHERE c.split = 'val' AND c.run_id IN ({marks})"
        ),
        vals,
    )
    .await
}

#[derive(Debug, FromQueryResult)]
pub struct MatrixRow {
    pub run_id: i64,
    pub classes_json: String,
    pub counts_json: String,
}

impl MatrixRow {
    pub fn decode(&self) -> Result<protocol::metrics::ConfusionMatrix, DbErr> {
        super::decode_matrix(
            &format!("confusion_matrices row (run {}, best epoch, val)", self.run_id),
            &self.classes_json,
            &self.counts_json,
        )
    }
}

/// Validation confusion matrices of the given runs at their best epochs, in one query.
pub async fn best_matrices(conn: &impl ConnectionTrait, run_ids: &[i64]) -> Result<Vec<MatrixRow>, DbErr> {
    let (marks, vals) = id_list(run_ids);
    all(
        conn,
        &format!(
            "SELECT m.run_id, m.classes_json, m.counts_json FROM confusion_matrices m \
             JOIN runs r ON r.id = m.run_id AND m.epoch = r.best_epoch WHERE m.split = 'val' AND m.run_id IN ({marks})"
        ),
        vals,
    )
    .await
}

#[derive(Debug, FromQueryResult)]
pub struct BriefRun {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub params_json: String,
    pub best_epoch: Option<i64>,
    pub dataset_version_id: i64,
}

impl BriefRun {
    pub fn status(&self) -> Result<protocol::RunStatus, DbErr> {
        super::decode_enum(&format!("runs row {}", self.id), "status", &self.status)
    }

    pub fn params(&self) -> Result<protocol::spec::Params, DbErr> {
        super::decode_json(&format!("runs row {}", self.id), "params_json", &self.params_json)
    }
}

/// Names, statuses, parameters, best epochs and dataset versions of the given runs.
pub async fn brief(conn: &impl ConnectionTrait, run_ids: &[i64]) -> Result<Vec<BriefRun>, DbErr> {
    let (marks, vals) = id_list(run_ids);
    all(
        conn,
        &format!(
            "SELECT r.id, r.name, j.status, r.params_json, r.best_epoch, e.dataset_version_id FROM runs r \
             JOIN experiments e ON e.id = r.experiment_id JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' \
             WHERE r.id IN ({marks})"
        ),
        vals,
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

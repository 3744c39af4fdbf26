use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};

use super::{Count, Id, all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub experiment_id: i64,
    pub experiment: String,
    pub sweep_id: i64,
    pub idx: i64,
    pub status: String,
    pub cancel_requested: i64,
    pub attempt: i64,
    pub max_attempts: i64,
    pub params_json: String,
    pub config_json: String,
    pub current_lease_id: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub best_epoch: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub dataset_version_id: i64,
    pub sort_value: Option<f64>,
}

const RUN_COLUMNS: &str = "r.id, r.name, r.experiment_id, e.name AS experiment, r.sweep_id, r.idx, r.status, \
    r.cancel_requested, r.attempt, r.max_attempts, r.params_json, r.config_json, r.current_lease_id, r.worker, \
    r.error, r.best_epoch, r.created_at, r.started_at, r.finished_at, e.dataset_version_id";

pub struct NewRun<'a> {
    pub experiment_id: i64,
    pub sweep_id: i64,
    pub idx: i64,
    pub name: &'a str,
    pub max_attempts: i64,
    pub params_json: &'a str,
    pub config_json: &'a str,
    pub now: i64,
}

pub async fn insert(conn: &impl ConnectionTrait, r: NewRun<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO runs (experiment_id, sweep_id, idx, name, status, max_attempts, params_json, config_json, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $8) RETURNING id",
        values![r.experiment_id, r.sweep_id, r.idx, r.name, r.max_attempts, r.params_json, r.config_json, r.now],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Option<RunRow>, DbErr> {
    one(
        conn,
        &format!("SELECT {RUN_COLUMNS}, NULL AS sort_value FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1"),
        values![id],
    )
    .await
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub experiment: Option<String>,
    pub sweep: Option<i64>,
    pub status: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Sort {
    /// Newest first, or oldest first.
    Created { descending: bool },
    /// By a metric's value at the run's best epoch (else its last step); runs without
    /// the metric come last.
    Metric { key: String, descending: bool },
}

fn where_clause(filter: &Filter, vals: &mut Vec<Value>) -> String {
    let mut conditions = Vec::new();
    if let Some(experiment) = &filter.experiment {
        vals.push(experiment.clone().into());
        conditions.push(format!("e.name = ${}", vals.len()));
    }
    if let Some(sweep) = filter.sweep {
        vals.push(sweep.into());
        conditions.push(format!("r.sweep_id = ${}", vals.len()));
    }
    if let Some(status) = &filter.status {
        vals.push(status.clone().into());
        conditions.push(format!("r.status = ${}", vals.len()));
    }
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

pub async fn list(
    conn: &impl ConnectionTrait,
    filter: &Filter,
    sort: &Sort,
    limit: u64,
    offset: u64,
) -> Result<Vec<RunRow>, DbErr> {
    let mut vals = Vec::new();
    let (select, join, order) = match sort {
        Sort::Created { descending } => {
            let dir = if *descending { "DESC" } else { "ASC" };
            ("NULL AS sort_value".to_owned(), String::new(), format!("r.id {dir}"))
        }
        Sort::Metric { key, descending } => {
            vals.push(key.clone().into());
            let dir = if *descending { "DESC" } else { "ASC" };
            (
                "m.value AS sort_value".to_owned(),
                "LEFT JOIN metrics m ON m.run_id = r.id AND m.key = $1 AND m.step = COALESCE(r.best_epoch, \
                 (SELECT MAX(m2.step) FROM metrics m2 WHERE m2.run_id = r.id AND m2.key = $1))"
                    .to_owned(),
                format!("CASE WHEN m.value IS NULL THEN 1 ELSE 0 END, m.value {dir}, r.id ASC"),
            )
        }
    };
    let condition = where_clause(filter, &mut vals);
    vals.push((limit as i64).into());
    let limit_mark = vals.len();
    vals.push((offset as i64).into());
    let offset_mark = vals.len();
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {select} FROM runs r JOIN experiments e ON e.id = r.experiment_id {join} {condition} \
         ORDER BY {order} LIMIT ${limit_mark} OFFSET ${offset_mark}"
    );
    all(conn, &sql, vals).await
}

pub async fn count(conn: &impl ConnectionTrait, filter: &Filter) -> Result<i64, DbErr> {
    let mut vals = Vec::new();
    let condition = where_clause(filter, &mut vals);
    let sql = format!("SELECT COUNT(*) AS n FROM runs r JOIN experiments e ON e.id = r.experiment_id {condition}");
    Ok(one::<Count>(conn, &sql, vals).await?.map_or(0, |c| c.n))
}

/// Cancels queued runs at once (by run id or by sweep id); returns how many changed.
pub async fn cancel_queued(conn: &impl ConnectionTrait, column: RunScope, id: i64, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        &format!(
            "UPDATE runs SET status = 'cancelled', finished_at = $1, updated_at = $1 \
             WHERE {} = $2 AND status = 'queued'",
            column.column()
        ),
        values![now, id],
    )
    .await
}

/// Asks the workers of running runs to stop; they end as cancelled when the worker
/// acknowledges or its lease expires.
pub async fn request_cancel(conn: &impl ConnectionTrait, column: RunScope, id: i64, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        &format!(
            "UPDATE runs SET cancel_requested = 1, updated_at = $1 WHERE {} = $2 AND status = 'running'",
            column.column()
        ),
        values![now, id],
    )
    .await
}

#[derive(Debug, Clone, Copy)]
pub enum RunScope {
    Run,
    Sweep,
}

impl RunScope {
    fn column(self) -> &'static str {
        match self {
            RunScope::Run => "id",
            RunScope::Sweep => "sweep_id",
        }
    }
}

/// Ends a run's current lease in the run row: a new status, the lease cleared.
/// Only applies while `lease_id` is still the run's lease (the fence).
#[allow(clippy::too_many_arguments)]
pub async fn finish_lease(
    conn: &impl ConnectionTrait,
    run_id: i64,
    lease_id: &str,
    status: &str,
    error: Option<String>,
    best_epoch: Option<i64>,
    finished: bool,
    now: i64,
) -> Result<u64, DbErr> {
    let finished_at: Option<i64> = finished.then_some(now);
    exec(
        conn,
        "UPDATE runs SET status = $1, error = COALESCE($2, error), best_epoch = COALESCE($3, best_epoch), \
         finished_at = $4, current_lease_id = NULL, updated_at = $5 \
         WHERE id = $6 AND current_lease_id = $7",
        values![status, error, best_epoch, finished_at, now, run_id, lease_id],
    )
    .await
}

/// A released lease does not count as an attempt.
pub async fn forgive_attempt(conn: &impl ConnectionTrait, run_id: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE runs SET attempt = attempt - 1 WHERE id = $1 AND attempt > 0", values![run_id]).await?;
    Ok(())
}

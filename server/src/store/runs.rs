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
    pub current_lease_id: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub best_epoch: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub dataset_version_id: i64,
    /// Whether it met its sweep's constraints when its training ended (None: not known yet).
    pub feasible: Option<i64>,
    /// The constraints it missed, as a JSON list of sentences.
    pub violations: Option<String>,
    pub sort_value: Option<f64>,
}

/// A run's status, attempts, worker and times are its training job's. Its config is not a
/// column: it is derived from its sweep's spec and its params (`service::runs::config_of`).
const RUN_COLUMNS: &str = "r.id, r.name, r.experiment_id, e.name AS experiment, r.sweep_id, r.idx, j.status, \
    j.cancel_requested, j.attempt, j.max_attempts, r.params_json, j.lease_id AS current_lease_id, j.worker, \
    j.error, r.best_epoch, r.created_at, j.started_at, j.finished_at, e.dataset_version_id, r.feasible, r.violations";
const RUN_FROM: &str = "FROM runs r JOIN experiments e ON e.id = r.experiment_id JOIN jobs j ON j.run_id = r.id AND j.kind = 'train'";

pub use super::jobs::RunScope;

impl RunRow {
    fn what(&self) -> String {
        format!("runs row {}", self.id)
    }

    pub fn status(&self) -> Result<protocol::RunStatus, DbErr> {
        super::decode_enum(&self.what(), "status", &self.status)
    }

    pub fn cancel_requested(&self) -> Result<bool, DbErr> {
        super::decode_flag(&self.what(), "cancel_requested", self.cancel_requested)
    }

    pub fn params(&self) -> Result<protocol::spec::Params, DbErr> {
        super::decode_json(&self.what(), "params_json", &self.params_json)
    }

    pub fn violations(&self) -> Result<Vec<String>, DbErr> {
        match &self.violations {
            Some(text) => super::decode_json(&self.what(), "violations", text),
            None => Ok(Vec::new()),
        }
    }
}

pub struct NewRun<'a> {
    pub experiment_id: i64,
    pub sweep_id: i64,
    pub idx: i64,
    pub name: &'a str,
    pub max_attempts: i64,
    pub params_json: &'a str,
    pub config_hash: &'a str,
    pub now: i64,
}

/// A run with its queued training job (call inside a transaction).
pub async fn insert(conn: &impl ConnectionTrait, r: NewRun<'_>) -> Result<i64, DbErr> {
    let id = one::<Id>(
        conn,
        "INSERT INTO runs (experiment_id, sweep_id, idx, name, params_json, config_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
        values![r.experiment_id, r.sweep_id, r.idx, r.name, r.params_json, r.config_hash, r.now],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)?;
    let job = super::jobs::NewJob {
        kind: protocol::JobKind::Train,
        run_id: id,
        promotion_id: None,
        max_attempts: r.max_attempts,
        now: r.now,
        held: false,
    };
    super::jobs::insert(conn, job).await?;
    Ok(id)
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Option<RunRow>, DbErr> {
    one(conn, &format!("SELECT {RUN_COLUMNS}, NULL AS sort_value {RUN_FROM} WHERE r.id = $1"), values![id]).await
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
        conditions.push(format!("j.status = ${}", vals.len()));
    }
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

pub async fn list(conn: &impl ConnectionTrait, filter: &Filter, sort: &Sort, limit: u64, offset: u64) -> Result<Vec<RunRow>, DbErr> {
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
                // Runs that miss a constraint rank below every run that meets them all.
                format!("CASE WHEN r.feasible = 0 THEN 1 ELSE 0 END, CASE WHEN m.value IS NULL THEN 1 ELSE 0 END, m.value {dir}, r.id ASC"),
            )
        }
    };
    let condition = where_clause(filter, &mut vals);
    vals.push((limit as i64).into());
    let limit_mark = vals.len();
    vals.push((offset as i64).into());
    let offset_mark = vals.len();
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {select} {RUN_FROM} {join} {condition} \
         ORDER BY {order} LIMIT ${limit_mark} OFFSET ${offset_mark}"
    );
    all(conn, &sql, vals).await
}

pub async fn count(conn: &impl ConnectionTrait, filter: &Filter) -> Result<i64, DbErr> {
    let mut vals = Vec::new();
    let condition = where_clause(filter, &mut vals);
    let sql = format!("SELECT COUNT(*) AS n {RUN_FROM} {condition}");
    Ok(one::<Count>(conn, &sql, vals).await?.map_or(0, |c| c.n))
}

/// Records the run's best epoch (set when its training job completes).
/// Records, when a run's training ends, its best epoch (when `best_epoch` is given; else the
/// stored one stays), whether it met its sweep's constraints and its objective (the best value
/// of its selection metric), in one statement.
pub async fn set_outcome(
    conn: &impl ConnectionTrait,
    run_id: i64,
    best_epoch: Option<i64>,
    feasible: bool,
    violations: &str,
    objective: Option<f64>,
    now: i64,
) -> Result<(), DbErr> {
    exec(
        conn,
        "UPDATE runs SET best_epoch = COALESCE($1, best_epoch), feasible = $2, violations = $3, objective = $4, updated_at = $5 \
         WHERE id = $6",
        values![best_epoch, i64::from(feasible), violations, objective, now, run_id],
    )
    .await?;
    Ok(())
}

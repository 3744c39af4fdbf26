use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{Id, all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct ExperimentRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub dataset_version_id: i64,
    pub dataset: String,
    pub dataset_version: String,
    pub spec_yaml: String,
    pub created_at: i64,
    pub created_by: String,
    pub max_val_configs: Option<i64>,
}

const EXPERIMENT_COLUMNS: &str = "e.id, e.name, e.description, e.dataset_version_id, d.name AS dataset, \
    v.version AS dataset_version, e.spec_yaml, e.created_at, e.created_by, e.max_val_configs \
    FROM experiments e JOIN dataset_versions v ON v.id = e.dataset_version_id JOIN datasets d ON d.id = v.dataset_id";

#[derive(Debug, Clone, FromQueryResult)]
pub struct SweepRow {
    pub id: i64,
    pub experiment: String,
    pub method: String,
    pub file: Option<String>,
    pub spec_yaml: String,
    pub created_at: i64,
    pub created_by: String,
    pub max_runs: Option<i64>,
    pub cancelled_at: Option<i64>,
}

#[derive(Debug, FromQueryResult)]
pub struct StatusCountRow {
    pub owner: i64,
    pub status: String,
    pub n: i64,
}

pub async fn by_name(conn: &impl ConnectionTrait, name: &str) -> Result<Option<ExperimentRow>, DbErr> {
    one(conn, &format!("SELECT {EXPERIMENT_COLUMNS} WHERE e.name = $1"), values![name]).await
}

pub async fn list(conn: &impl ConnectionTrait) -> Result<Vec<ExperimentRow>, DbErr> {
    all(conn, &format!("SELECT {EXPERIMENT_COLUMNS} ORDER BY e.id DESC"), vec![]).await
}

pub struct NewExperiment<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub dataset_version_id: i64,
    pub spec_yaml: &'a str,
    pub spec_json: &'a str,
    pub created_at: i64,
    pub created_by: &'a str,
    pub max_val_configs: Option<i64>,
}

pub async fn insert(conn: &impl ConnectionTrait, e: NewExperiment<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO experiments (name, description, dataset_version_id, spec_yaml, spec_json, created_at, created_by, max_val_configs) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        values![e.name, e.description, e.dataset_version_id, e.spec_yaml, e.spec_json, e.created_at, e.created_by, e.max_val_configs],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

pub struct NewSweep<'a> {
    pub experiment_id: i64,
    pub method: &'a str,
    pub file: Option<&'a str>,
    pub spec_yaml: &'a str,
    pub spec_json: &'a str,
    pub parallel: Option<i64>,
    pub max_runs: i64,
    pub created_at: i64,
    pub created_by: &'a str,
}

pub async fn insert_sweep(conn: &impl ConnectionTrait, s: NewSweep<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO sweeps (experiment_id, method, file, spec_yaml, spec_json, parallel, created_at, created_by, max_runs) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        values![
            s.experiment_id,
            s.method,
            s.file.map(str::to_owned),
            s.spec_yaml,
            s.spec_json,
            s.parallel,
            s.created_at,
            s.created_by,
            s.max_runs
        ],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

const SWEEP_COLUMNS: &str = "s.id, e.name AS experiment, s.method, s.file, s.spec_yaml, s.created_at, s.created_by, \
    s.max_runs, s.cancelled_at \
    FROM sweeps s JOIN experiments e ON e.id = s.experiment_id";

pub async fn sweep(conn: &impl ConnectionTrait, id: i64) -> Result<Option<SweepRow>, DbErr> {
    one(conn, &format!("SELECT {SWEEP_COLUMNS} WHERE s.id = $1"), values![id]).await
}

pub async fn sweeps_of(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<Vec<SweepRow>, DbErr> {
    all(conn, &format!("SELECT {SWEEP_COLUMNS} WHERE s.experiment_id = $1 ORDER BY s.id"), values![experiment_id]).await
}

/// Run counts by status, grouped by experiment.
pub async fn run_counts_by_experiment(conn: &impl ConnectionTrait) -> Result<Vec<StatusCountRow>, DbErr> {
    all(
        conn,
        "SELECT r.experiment_id AS owner, j.status, COUNT(*) AS n FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' \
         GROUP BY r.experiment_id, j.status",
        vec![],
    )
    .await
}

/// Run counts by status, grouped by sweep, for one experiment.
pub async fn run_counts_by_sweep(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<Vec<StatusCountRow>, DbErr> {
    all(
        conn,
        "SELECT r.sweep_id AS owner, j.status, COUNT(*) AS n FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' \
         WHERE r.experiment_id = $1 GROUP BY r.sweep_id, j.status",
        values![experiment_id],
    )
    .await
}

pub async fn sweep_count(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<i64, DbErr> {
    Ok(one::<super::Count>(conn, "SELECT COUNT(*) AS n FROM sweeps WHERE experiment_id = $1", values![experiment_id])
        .await?
        .map_or(0, |c| c.n))
}

/// The spec a sweep was submitted with (JSON), which its runs' configs derive from.
pub async fn sweep_spec_json(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Option<String>, DbErr> {
    #[derive(FromQueryResult)]
    struct Spec {
        spec_json: String,
    }
    Ok(one::<Spec>(conn, "SELECT spec_json FROM sweeps WHERE id = $1", values![sweep_id]).await?.map(|s| s.spec_json))
}

/// Lowers an experiment's validation budget (it is never raised).
pub async fn set_max_val_configs(conn: &impl ConnectionTrait, experiment_id: i64, max: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE experiments SET max_val_configs = $1 WHERE id = $2", values![max, experiment_id]).await?;
    Ok(())
}

/// A cancelled sweep creates no more runs (tpe).
pub async fn cancel_sweep(conn: &impl ConnectionTrait, sweep_id: i64, now: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE sweeps SET cancelled_at = COALESCE(cancelled_at, $1) WHERE id = $2", values![now, sweep_id]).await?;
    Ok(())
}

/// A configuration's identity: its hash, or, for a run from before hashes, the run itself.
const CONFIG: &str = "COALESCE(r.config_hash, 'run-' || CAST(r.id AS TEXT))";
/// The run has been scored against the validation split (it reported a val_* metric).
const SCORED: &str = "EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = r.id AND m.key LIKE 'val%')";

/// What [`val_configs`] counts configurations by.
#[derive(Debug, Clone, Copy)]
pub enum ConfigsBy {
    Sweep,
    Experiment,
}

/// Distinct configurations scored against the validation split, as (sweep or experiment id,
/// count), of one experiment or of all.
pub async fn val_configs(conn: &impl ConnectionTrait, by: ConfigsBy, experiment_id: Option<i64>) -> Result<Vec<(i64, i64)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        owner: i64,
        n: i64,
    }
    let owner = match by {
        ConfigsBy::Sweep => "r.sweep_id",
        ConfigsBy::Experiment => "r.experiment_id",
    };
    let (filter, vals) = match experiment_id {
        Some(id) => ("r.experiment_id = $1 AND", values![id]),
        None => ("", vec![]),
    };
    Ok(all::<Row>(
        conn,
        &format!("SELECT {owner} AS owner, COUNT(DISTINCT {CONFIG}) AS n FROM runs r WHERE {filter} {SCORED} GROUP BY {owner}"),
        vals,
    )
    .await?
    .into_iter()
    .map(|r| (r.owner, r.n))
    .collect())
}

/// The configurations that count against an experiment's budget: scored, or still to be
/// scored (queued or running).
pub async fn budgeted_configs(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<Vec<String>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        config: String,
    }
    Ok(all::<Row>(
        conn,
        &format!(
            "SELECT DISTINCT {CONFIG} AS config FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' \
             WHERE r.experiment_id = $1 AND ({SCORED} OR j.status IN ('queued', 'running'))"
        ),
        values![experiment_id],
    )
    .await?
    .into_iter()
    .map(|r| r.config)
    .collect())
}

/// Runs the experiment's live tpe sweeps may still create.
pub async fn tpe_runs_to_come(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<i64, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        n: Option<i64>,
    }
    Ok(one::<Row>(
        conn,
        "SELECT SUM(s.max_runs - (SELECT COUNT(*) FROM runs r WHERE r.sweep_id = s.id)) AS n FROM sweeps s \
         WHERE s.experiment_id = $1 AND s.method = 'tpe' AND s.cancelled_at IS NULL",
        values![experiment_id],
    )
    .await?
    .and_then(|r| r.n)
    .unwrap_or(0))
}

/// Live tpe sweeps that may create a run now: not cancelled, fewer runs than `max_runs`, and
/// fewer running than `parallel`; oldest first.
pub async fn tpe_sweeps_with_room(conn: &impl ConnectionTrait) -> Result<Vec<i64>, DbErr> {
    Ok(all::<Id>(
        conn,
        "SELECT s.id FROM sweeps s WHERE s.method = 'tpe' AND s.cancelled_at IS NULL \
           AND (SELECT COUNT(*) FROM runs r WHERE r.sweep_id = s.id) < s.max_runs \
           AND (s.parallel IS NULL OR (SELECT COUNT(*) FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' \
                WHERE r.sweep_id = s.id AND j.status = 'running') < s.parallel) \
         ORDER BY s.id",
        vec![],
    )
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect())
}

/// What a tpe sweep needs to create its next run: its spec, cap, limits and counts (read
/// after the caller has locked the sweep's row, where the database has row locks).
#[derive(Debug, FromQueryResult)]
pub struct TpeSweep {
    pub id: i64,
    pub experiment_id: i64,
    pub experiment: String,
    pub dataset_version: String,
    pub spec_json: String,
    pub max_runs: Option<i64>,
    pub parallel: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub created: i64,
    pub running: i64,
}

pub async fn tpe_sweep(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Option<TpeSweep>, DbErr> {
    one(
        conn,
        "SELECT s.id, s.experiment_id, e.name AS experiment, v.version AS dataset_version, s.spec_json, s.max_runs, s.parallel, \
           s.cancelled_at, (SELECT COUNT(*) FROM runs r WHERE r.sweep_id = s.id) AS created, \
           CASE WHEN s.parallel IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' \
            WHERE r.sweep_id = s.id AND j.status = 'running') END AS running \
         FROM sweeps s JOIN experiments e ON e.id = s.experiment_id JOIN dataset_versions v ON v.id = e.dataset_version_id \
         WHERE s.id = $1",
        values![sweep_id],
    )
    .await
}

/// What a sweep lock serialises: two kinds of decision that never wait for each other.
#[derive(Debug, Clone, Copy)]
pub enum SweepLock {
    /// Creating the sweep's next TPE run.
    Suggest,
    /// Early-stop decisions on its runs' epochs.
    EarlyStop,
}

/// Holds a lock on one kind of decision about a sweep until the transaction ends
/// (PostgreSQL: a transaction-level advisory lock, so suggestions and early-stop decisions
/// do not queue behind each other; SQLite's one writer serialises everything anyway).
pub async fn lock_sweep(conn: &impl ConnectionTrait, sweep_id: i64, what: SweepLock) -> Result<(), DbErr> {
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        let key = sweep_id.wrapping_mul(2) + matches!(what, SweepLock::EarlyStop) as i64;
        // A cobb-specific class id (the two-int form keeps other users' advisory keys apart).
        exec(conn, "SELECT pg_advisory_xact_lock(7213, CAST(($1 % 2147483647) AS INTEGER))", values![key]).await?;
    }
    Ok(())
}

/// Every run of a sweep in run order, with its status and its best value of `key`.
#[derive(Debug, FromQueryResult)]
pub struct HistoryRow {
    pub id: i64,
    pub params_json: String,
    pub status: String,
    pub value: Option<f64>,
    pub feasible: Option<i64>,
}

pub async fn history(conn: &impl ConnectionTrait, sweep_id: i64, key: &str, maximize: bool) -> Result<Vec<HistoryRow>, DbErr> {
    let agg = if maximize { "MAX" } else { "MIN" };
    all(
        conn,
        &format!(
            "SELECT r.id, r.params_json, j.status, r.feasible, CASE WHEN r.objective IS NOT NULL THEN r.objective \
               WHEN j.status IN ('succeeded', 'pruned') THEN (SELECT {agg}(m.value) FROM metrics m WHERE m.run_id = r.id AND m.key = $2) \
             END AS value \
             FROM runs r JOIN jobs j ON j.run_id = r.id AND j.kind = 'train' WHERE r.sweep_id = $1 ORDER BY r.id"
        ),
        values![sweep_id, key],
    )
    .await
}

/// An experiment's promotion rules as stored: its acceptance criteria (JSON; None: none) and
/// the signatures a promotion needs (None: one).
#[derive(Debug, Default, FromQueryResult)]
pub struct Rules {
    pub criteria_json: Option<String>,
    pub approvals: Option<i64>,
}

pub async fn rules(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<Rules, DbErr> {
    let row: Option<Rules> = one(conn, "SELECT criteria_json, approvals FROM experiments WHERE id = $1", values![experiment_id]).await?;
    Ok(row.unwrap_or_default())
}

pub async fn set_criteria(conn: &impl ConnectionTrait, experiment_id: i64, criteria_json: &str) -> Result<(), DbErr> {
    exec(conn, "UPDATE experiments SET criteria_json = $1 WHERE id = $2", values![criteria_json, experiment_id]).await?;
    Ok(())
}

/// How many promotions the experiment's runs have had (any status).
pub async fn promotions(conn: &impl ConnectionTrait, experiment_id: i64) -> Result<i64, DbErr> {
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let row: Option<Count> = one(
        conn,
        "SELECT COUNT(*) AS n FROM promotions p JOIN runs r ON r.id = p.run_id WHERE r.experiment_id = $1",
        values![experiment_id],
    )
    .await?;
    Ok(row.map_or(0, |r| r.n))
}

pub async fn set_approvals(conn: &impl ConnectionTrait, experiment_id: i64, approvals: Option<i64>) -> Result<(), DbErr> {
    exec(conn, "UPDATE experiments SET approvals = $1 WHERE id = $2", values![approvals, experiment_id]).await?;
    Ok(())
}

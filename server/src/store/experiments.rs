use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{Id, all, one, values};

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
}

const EXPERIMENT_COLUMNS: &str = "e.id, e.name, e.description, e.dataset_version_id, d.name AS dataset, \
    v.version AS dataset_version, e.spec_yaml, e.created_at, e.created_by \
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
}

pub async fn insert(conn: &impl ConnectionTrait, e: NewExperiment<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO experiments (name, description, dataset_version_id, spec_yaml, spec_json, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        values![e.name, e.description, e.dataset_version_id, e.spec_yaml, e.spec_json, e.created_at, e.created_by],
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
    pub created_at: i64,
    pub created_by: &'a str,
}

pub async fn insert_sweep(conn: &impl ConnectionTrait, s: NewSweep<'_>) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO sweeps (experiment_id, method, file, spec_yaml, spec_json, parallel, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        values![s.experiment_id, s.method, s.file.map(str::to_owned), s.spec_yaml, s.spec_json, s.parallel, s.created_at, s.created_by],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

const SWEEP_COLUMNS: &str = "s.id, e.name AS experiment, s.method, s.file, s.spec_yaml, s.created_at, s.created_by \
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

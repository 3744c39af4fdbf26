//! The job queue: one row per unit of work a worker leases (`train` a run, `evaluate` a
//! promoted run on the test split). A run's status is its training job's status.

use protocol::{JobKind, JobStatus};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Value};

use super::{Id, all, exec, one, values};

/// A job row as stored (text columns undecoded); [`Job`] is what callers use.
#[derive(Debug, Clone, FromQueryResult)]
struct JobRow {
    id: i64,
    kind: String,
    run_id: i64,
    run_name: String,
    experiment: String,
    sweep_id: i64,
    dataset_version_id: i64,
    promotion_id: Option<i64>,
    priority: i64,
    status: String,
    cancel_requested: i64,
    prune_requested: i64,
    held: i64,
    attempt: i64,
    max_attempts: i64,
    lease_id: Option<String>,
    worker: Option<String>,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

/// A job, decoded: a stored kind or status the code does not know is an error naming the
/// job, never a silent default.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub run_id: i64,
    pub run_name: String,
    pub experiment: String,
    /// The run's sweep (a run never changes sweeps).
    pub sweep_id: i64,
    pub dataset_version_id: i64,
    pub promotion_id: Option<i64>,
    pub priority: i64,
    pub status: JobStatus,
    pub cancel_requested: bool,
    /// Its sweep's early-stop rule pruned the run: stop, and end as `pruned`.
    pub prune_requested: bool,
    /// Not handed out by the queue: an evaluation awaiting signatures, or a classification held
    /// for the token that created it (which leases it by name and is the only one to run it).
    pub held: bool,
    pub attempt: i64,
    pub max_attempts: i64,
    pub lease_id: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl Job {
    /// A classification its creator runs in its own process (`cobb classify`): never requeued
    /// for someone else when that process fails or stops.
    pub fn held_for_creator(&self) -> bool {
        self.kind == JobKind::Classify && self.held
    }
}

impl TryFrom<JobRow> for Job {
    type Error = DbErr;

    fn try_from(row: JobRow) -> Result<Self, DbErr> {
        let what = format!("jobs row {}", row.id);
        Ok(Job {
            kind: super::decode_enum(&what, "kind", &row.kind)?,
            status: super::decode_enum(&what, "status", &row.status)?,
            cancel_requested: super::decode_flag(&what, "cancel_requested", row.cancel_requested)?,
            prune_requested: super::decode_flag(&what, "prune_requested", row.prune_requested)?,
            held: super::decode_flag(&what, "held", row.held)?,
            id: row.id,
            run_id: row.run_id,
            run_name: row.run_name,
            experiment: row.experiment,
            sweep_id: row.sweep_id,
            dataset_version_id: row.dataset_version_id,
            promotion_id: row.promotion_id,
            priority: row.priority,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            lease_id: row.lease_id,
            worker: row.worker,
            error: row.error,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

const COLUMNS: &str = "j.id, j.kind, j.run_id, r.name AS run_name, e.name AS experiment, r.sweep_id, e.dataset_version_id, \
    j.promotion_id, j.priority, j.status, j.cancel_requested, j.prune_requested, j.held, j.attempt, j.max_attempts, j.lease_id, j.worker, j.error, \
    j.created_at, j.started_at, j.finished_at";
const FROM: &str = "FROM jobs j JOIN runs r ON r.id = j.run_id JOIN experiments e ON e.id = r.experiment_id";

/// `columns` (a list such as [`COLUMNS`]), each named with `prefix` in front (`j.kind AS
/// j_kind`), to read two tables' rows side by side in one statement.
fn prefixed_columns(columns: &str, prefix: &str) -> String {
    columns
        .split(',')
        .map(str::trim)
        .map(|column| match column.split_once(" AS ") {
            Some((expr, name)) => format!("{expr} AS {prefix}{name}"),
            None => format!("{column} AS {prefix}{}", column.rsplit('.').next().unwrap_or(column)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A lease and its job in one read (the fence of every worker write), the lease row locked
/// against being ended until the transaction ends (PostgreSQL; SQLite has one writer). None
/// when no lease has that id; the job is None when the lease has none (it ended before jobs
/// existed) or its row is gone.
pub async fn lease_with_job(conn: &impl ConnectionTrait, lease_id: &str) -> Result<Option<(super::leases::LeaseRow, Option<Job>)>, DbErr> {
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        let sql = |lock: &str| {
            format!(
                "SELECT {}, {} \
                 FROM leases l LEFT JOIN jobs j ON j.id = l.job_id LEFT JOIN runs r ON r.id = j.run_id \
                   LEFT JOIN experiments e ON e.id = r.experiment_id \
                 WHERE l.id = $1{lock}",
                prefixed_columns(super::leases::COLUMNS, "l_"),
                prefixed_columns(COLUMNS, "j_")
            )
        };
        [sql(" FOR SHARE OF l"), sql("")]
    });
    let sql = &SQL[usize::from(conn.get_database_backend() != DbBackend::Postgres)];
    let Some(row) = conn.query_one(super::statement(conn, sql, values![lease_id])).await? else {
        return Ok(None);
    };
    let lease = super::leases::LeaseRow::from_query_result(&row, "l_")?;
    let job = match row.try_get::<Option<i64>>("j_", "id")? {
        Some(_) => Some(Job::try_from(JobRow::from_query_result(&row, "j_")?)?),
        None => None,
    };
    Ok(Some((lease, job)))
}

async fn fetch_one(conn: &impl ConnectionTrait, condition: &str, vals: Vec<Value>) -> Result<Option<Job>, DbErr> {
    one::<JobRow>(conn, &format!("SELECT {COLUMNS} {FROM} WHERE {condition}"), vals).await?.map(Job::try_from).transpose()
}

async fn fetch_all(conn: &impl ConnectionTrait, rest: &str, vals: Vec<Value>) -> Result<Vec<Job>, DbErr> {
    all::<JobRow>(conn, &format!("SELECT {COLUMNS} {FROM} {rest}"), vals).await?.into_iter().map(Job::try_from).collect()
}

/// Evaluations go before training: they are short and a reviewer is waiting.
pub fn priority(kind: JobKind) -> i64 {
    match kind {
        JobKind::Evaluate => 10,
        // A person waits for a classification too, but a test evaluation goes first.
        JobKind::Classify => 5,
        JobKind::Train => 0,
    }
}

pub struct NewJob {
    pub kind: JobKind,
    pub run_id: i64,
    pub promotion_id: Option<i64>,
    pub max_attempts: i64,
    pub now: i64,
    /// Queued but not handed out until released (an evaluation awaiting approvals).
    pub held: bool,
}

/// A queued job.
pub async fn insert(conn: &impl ConnectionTrait, job: NewJob) -> Result<i64, DbErr> {
    one::<Id>(
        conn,
        "INSERT INTO jobs (kind, run_id, promotion_id, priority, status, max_attempts, created_at, updated_at, held) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING id",
        values![
            job.kind.as_str(),
            job.run_id,
            job.promotion_id,
            priority(job.kind),
            JobStatus::Queued.as_str(),
            job.max_attempts,
            job.now,
            i64::from(job.held)
        ],
    )
    .await?
    .map(|r| r.id)
    .ok_or(DbErr::RecordNotInserted)
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Option<Job>, DbErr> {
    fetch_one(conn, "j.id = $1", values![id]).await
}

/// The promotion's evaluation job (None when the promotion reuses an earlier evaluation).
pub async fn of_promotion(conn: &impl ConnectionTrait, promotion_id: i64) -> Result<Option<Job>, DbErr> {
    fetch_one(conn, "j.promotion_id = $1", values![promotion_id]).await
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub run: Option<i64>,
    pub kind: Option<JobKind>,
    pub status: Option<JobStatus>,
}

/// Jobs matching `filter`, newest first.
pub async fn list(conn: &impl ConnectionTrait, filter: &Filter, limit: u64) -> Result<Vec<Job>, DbErr> {
    let mut vals: Vec<Value> = Vec::new();
    let mut conditions = Vec::new();
    if let Some(run) = filter.run {
        vals.push(run.into());
        conditions.push(format!("j.run_id = ${}", vals.len()));
    }
    if let Some(kind) = filter.kind {
        vals.push(kind.as_str().into());
        conditions.push(format!("j.kind = ${}", vals.len()));
    }
    if let Some(status) = filter.status {
        vals.push(status.as_str().into());
        conditions.push(format!("j.status = ${}", vals.len()));
    }
    let condition = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    vals.push((limit as i64).into());
    fetch_all(conn, &format!("{condition} ORDER BY j.id DESC LIMIT ${}", vals.len()), vals).await
}

/// The next job to hand out among `kinds` (all kinds when empty): highest priority, then
/// oldest; a training job only while its sweep has room under its `parallel` limit. On
/// PostgreSQL the row is locked and other leasers skip it (`FOR UPDATE SKIP LOCKED`); on
/// SQLite the caller's transaction already holds the single write connection. A query for
/// [`claim_next`].
fn next_queued_sql(backend: DbBackend, kinds: &[JobKind]) -> String {
    let lock = match backend {
        DbBackend::Postgres => "FOR UPDATE OF j SKIP LOCKED",
        _ => "",
    };
    // No parameters: the statuses and kinds are the enums' own names, written into the text
    // (one text per set of kinds). PostgreSQL then plans the prepared statement once per
    // connection instead of at every bind, which for this three-table query with a subquery
    // was most of a lease's time.
    let kind_filter = if kinds.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
        format!("AND j.kind IN ({})", names.join(", "))
    };
    let (queued, running) = (JobStatus::Queued.as_str(), JobStatus::Running.as_str());
    format!(
        "SELECT j.id FROM jobs j JOIN runs r ON r.id = j.run_id JOIN sweeps s ON s.id = r.sweep_id \
         WHERE j.status = '{queued}' AND j.held = 0 {kind_filter} AND (j.kind <> 'train' OR s.parallel IS NULL OR \
           (SELECT COUNT(*) FROM jobs x JOIN runs xr ON xr.id = x.run_id \
            WHERE xr.sweep_id = r.sweep_id AND x.kind = 'train' AND x.status = '{running}') < s.parallel) \
         ORDER BY j.priority DESC, j.id LIMIT 1 {lock}"
    )
}

/// What a claim returns: enough to write the lease without reading the job again inside
/// the write transaction (on SQLite every statement there holds the one write lock).
#[derive(Debug, FromQueryResult)]
pub struct Claimed {
    pub id: i64,
    pub attempt: i64,
    pub run_id: i64,
    kind: String,
}

impl Claimed {
    pub fn kind(&self) -> Result<JobKind, DbErr> {
        super::decode_enum(&format!("jobs row {}", self.id), "kind", &self.kind)
    }
}

/// Moves a queued job to running under `lease_id`; its new attempt number, run and kind,
/// or None if someone else got it first.
pub async fn claim(conn: &impl ConnectionTrait, id: i64, lease_id: &str, worker: &str, now: i64) -> Result<Option<Claimed>, DbErr> {
    let mut vals = claim_values(lease_id, worker, now);
    vals.push(id.into());
    one::<Claimed>(conn, &format!("{CLAIM} WHERE status = $5 AND id = $6 {CLAIMED}"), vals).await
}

/// Finds the next job ([`next_queued_sql`]) and [`claim`]s it in one statement (one round trip
/// of a lease), or None when none is waiting.
pub async fn claim_next(
    conn: &impl ConnectionTrait,
    kinds: &[JobKind],
    lease_id: &str,
    worker: &str,
    now: i64,
) -> Result<Option<Claimed>, DbErr> {
    let next = next_queued_sql(conn.get_database_backend(), kinds);
    one::<Claimed>(conn, &format!("{CLAIM} WHERE status = $5 AND id = ({next}) {CLAIMED}"), claim_values(lease_id, worker, now)).await
}

const CLAIM: &str = "UPDATE jobs SET status = $1, attempt = attempt + 1, lease_id = $2, worker = $3, \
    started_at = COALESCE(started_at, $4), updated_at = $4";
const CLAIMED: &str = "RETURNING id, attempt, run_id, kind";

fn claim_values(lease_id: &str, worker: &str, now: i64) -> Vec<Value> {
    values![JobStatus::Running.as_str(), lease_id, worker, now, JobStatus::Queued.as_str()]
}

/// Ends the job's current lease in the job row: its new status (queued again, or an end
/// status with the finish time), the error if any, the lease cleared. Applies only while
/// `lease_id` is still the job's lease (the fence); returns the rows changed (0 or 1).
pub async fn finish_lease(
    conn: &impl ConnectionTrait,
    id: i64,
    lease_id: &str,
    status: JobStatus,
    error: Option<&str>,
    now: i64,
) -> Result<u64, DbErr> {
    exec(conn, FINISH_LEASE, finish_values(id, lease_id, status, error, now)).await
}

/// [`finish_lease`] of `job`, answering the job as it now stands (no second read): the job
/// row's own columns as the update left them, its run's and experiment's from `job` (they
/// never change). None when `lease_id` was no longer the job's lease.
pub async fn finish_lease_returning(
    conn: &impl ConnectionTrait,
    job: &Job,
    lease_id: &str,
    status: JobStatus,
    error: Option<&str>,
    now: i64,
) -> Result<Option<Job>, DbErr> {
    // The jobs table's own columns as a JobRow; the run's and experiment's (not in the table)
    // are blanks here, filled from `job` below.
    let sql = format!(
        "{FINISH_LEASE} RETURNING id, kind, run_id, CAST('' AS TEXT) AS run_name, CAST('' AS TEXT) AS experiment, \
         CAST(0 AS BIGINT) AS sweep_id, CAST(0 AS BIGINT) AS dataset_version_id, promotion_id, priority, status, \
         cancel_requested, prune_requested, held, attempt, max_attempts, lease_id, worker, error, created_at, started_at, finished_at"
    );
    let Some(row) = one::<JobRow>(conn, &sql, finish_values(job.id, lease_id, status, error, now)).await? else {
        return Ok(None);
    };
    let done = Job::try_from(row)?;
    Ok(Some(Job {
        run_name: job.run_name.clone(),
        experiment: job.experiment.clone(),
        sweep_id: job.sweep_id,
        dataset_version_id: job.dataset_version_id,
        ..done
    }))
}

const FINISH_LEASE: &str = "UPDATE jobs SET status = $1, error = COALESCE($2, error), finished_at = $3, lease_id = NULL, updated_at = $4 \
    WHERE id = $5 AND lease_id = $6";

fn finish_values(id: i64, lease_id: &str, status: JobStatus, error: Option<&str>, now: i64) -> Vec<Value> {
    let finished_at: Option<i64> = (status != JobStatus::Queued).then_some(now);
    values![status.as_str(), error, finished_at, now, id, lease_id]
}

/// Cancels one job if it is still queued (nobody has it); returns the rows changed.
pub async fn cancel_queued_job(conn: &impl ConnectionTrait, id: i64, reason: &str, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        "UPDATE jobs SET status = $1, error = $2, finished_at = $3, updated_at = $3 WHERE id = $4 AND status = $5",
        values![JobStatus::Cancelled.as_str(), reason, now, id, JobStatus::Queued.as_str()],
    )
    .await
}

/// A released lease does not count as an attempt.
pub async fn forgive_attempt(conn: &impl ConnectionTrait, id: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE jobs SET attempt = attempt - 1 WHERE id = $1 AND attempt > 0", values![id]).await?;
    Ok(())
}

/// Which training jobs a cancel reaches: one run's, or every run's of a sweep.
#[derive(Debug, Clone, Copy)]
pub enum RunScope {
    Run,
    Sweep,
}

impl RunScope {
    fn runs(self) -> &'static str {
        match self {
            RunScope::Run => "SELECT id FROM runs WHERE id = $3",
            RunScope::Sweep => "SELECT id FROM runs WHERE sweep_id = $3",
        }
    }
}

/// Cancels the queued training jobs in scope at once; returns how many changed.
pub async fn cancel_queued(conn: &impl ConnectionTrait, scope: RunScope, id: i64, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        &format!(
            "UPDATE jobs SET status = $1, finished_at = $2, updated_at = $2 \
             WHERE kind = 'train' AND status = $4 AND run_id IN ({})",
            scope.runs()
        ),
        values![JobStatus::Cancelled.as_str(), now, id, JobStatus::Queued.as_str()],
    )
    .await
}

/// Asks the workers of running training jobs in scope to stop; they end as cancelled
/// when the worker acknowledges or its lease expires.
pub async fn request_cancel(conn: &impl ConnectionTrait, scope: RunScope, id: i64, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        &format!(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $1 \
             WHERE kind = 'train' AND status = $2 AND run_id IN ({})",
            scope.runs()
        ),
        values![now, JobStatus::Running.as_str(), id],
    )
    .await
}

/// Asks the worker of a run's running training job to stop because its sweep's early-stop
/// rule pruned it; returns the rows changed.
pub async fn request_prune(conn: &impl ConnectionTrait, run_id: i64, now: i64) -> Result<u64, DbErr> {
    exec(
        conn,
        "UPDATE jobs SET prune_requested = 1, updated_at = $1 WHERE kind = 'train' AND run_id = $2 AND status = $3",
        values![now, run_id, JobStatus::Running.as_str()],
    )
    .await
}

/// The id of a run's training job.
pub async fn of_run_training(conn: &impl ConnectionTrait, run_id: i64) -> Result<Option<i64>, DbErr> {
    Ok(one::<Id>(conn, "SELECT id FROM jobs WHERE run_id = $1 AND kind = 'train'", values![run_id]).await?.map(|r| r.id))
}

/// Jobs queued or running, by experiment, kind and status (the `/metrics` queue gauges).
pub async fn queue_counts(conn: &impl ConnectionTrait) -> Result<Vec<(String, String, String, i64)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        experiment: String,
        kind: String,
        status: String,
        n: i64,
    }
    Ok(all::<Row>(
        conn,
        "SELECT e.name AS experiment, j.kind, j.status, COUNT(*) AS n FROM jobs j JOIN runs r ON r.id = j.run_id \
         JOIN experiments e ON e.id = r.experiment_id WHERE j.status IN ('queued', 'running') \
         GROUP BY e.name, j.kind, j.status ORDER BY e.name, j.kind, j.status",
        vec![],
    )
    .await?
    .into_iter()
    .map(|r| (r.experiment, r.kind, r.status, r.n))
    .collect())
}

/// Lets a held job be handed out (its approvals are all given).
pub async fn release_hold(conn: &impl ConnectionTrait, job_id: i64, now: i64) -> Result<u64, DbErr> {
    exec(conn, "UPDATE jobs SET held = 0, updated_at = $1 WHERE id = $2 AND held = 1", values![now, job_id]).await
}

use protocol::api::MetricPoint;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};

use super::{all, exec, one, placeholders, values};

#[derive(Debug, FromQueryResult)]
pub struct MetricRow {
    pub key: String,
    pub step: i64,
    pub value: f64,
}

/// Inserts or overwrites (run, key, step) points: sending a batch twice stores it once.
/// `points` must not repeat a (key, step) pair.
pub async fn upsert(conn: &impl ConnectionTrait, run_id: i64, points: &[MetricPoint], now: i64) -> Result<(), DbErr> {
    const WIDTH: usize = 5;
    for chunk in points.chunks(1000) {
        let sql = format!(
            "INSERT INTO metrics (run_id, key, step, value, recorded_at) VALUES {} \
             ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, recorded_at = excluded.recorded_at",
            placeholders(chunk.len(), WIDTH)
        );
        let mut vals: Vec<Value> = Vec::with_capacity(chunk.len() * WIDTH);
        for p in chunk {
            vals.extend(values![run_id, p.key.clone(), p.step, p.value, now]);
        }
        exec(conn, &sql, vals).await?;
    }
    Ok(())
}

/// The fence of a metric write: a live training lease `lease` of run `run` at `now`, taken by
/// `holder` (SQL placeholders), share-locked on PostgreSQL so it cannot end under the write.
fn fence(lease: &str, run: &str, now: &str, holder: &str, postgres: bool) -> String {
    format!(
        "EXISTS (SELECT 1 FROM leases l JOIN jobs j ON j.id = l.job_id AND j.kind = 'train' \
           WHERE l.id = {lease} AND l.run_id = {run} AND l.ended_at IS NULL AND l.expires_at >= {now} \
             AND (l.holder IS NULL OR l.holder = {holder}){})",
        if postgres { " FOR SHARE OF l" } else { "" }
    )
}

/// Upserts up to 1,000 points in one statement that writes only while `lease_id` is a live
/// lease of `run_id`: the fence check and the write are one atomic step. Returns the rows
/// written; 0 means the lease was not live (the caller finds out why).
pub async fn upsert_fenced(
    conn: &impl ConnectionTrait,
    run_id: i64,
    lease_id: &str,
    holder: &str,
    points: &[MetricPoint],
    now: i64,
) -> Result<u64, DbErr> {
    const WIDTH: usize = 5;
    let postgres = conn.get_database_backend() == sea_orm::DbBackend::Postgres;
    let n = points.len() * WIDTH;
    let sql = format!(
        "INSERT INTO metrics (run_id, key, step, value, recorded_at) SELECT * FROM (VALUES {}) AS v WHERE {} \
         ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, recorded_at = excluded.recorded_at",
        placeholders(points.len(), WIDTH),
        fence(&format!("${}", n + 1), &format!("${}", n + 2), &format!("${}", n + 3), &format!("${}", n + 4), postgres)
    );
    let mut vals: Vec<Value> = Vec::with_capacity(n + 4);
    for p in points {
        vals.extend(values![run_id, p.key.clone(), p.step, p.value, now]);
    }
    vals.extend(values![lease_id, run_id, now, holder]);
    exec(conn, &sql, vals).await
}

/// PostgreSQL's [`upsert_fenced`] on one connection (see store::hot): the points travel as three arrays unpacked by `UNNEST`, so
/// the statement has seven parameters whatever the batch size, is prepared once per
/// connection, and binds three values instead of five per point.
///
/// It first tries a plain `INSERT`: new points are the rule (one epoch's report), and a plain
/// insert skips what `ON CONFLICT DO UPDATE` costs each row on PostgreSQL (a probe of the
/// primary key before a speculative insertion, and a second WAL record to confirm it). A batch
/// that repeats a stored (key, step), such as a resend after a lost answer or an epoch trained
/// again after a resume, fails that insert with a unique violation as a whole (nothing of it is
/// stored) and is then written by the upsert, so sending a batch twice still stores it once.
/// After an error, `store::hot::connection_lost` tells whether the connection may be used again.
pub async fn upsert_fenced_pg(
    conn: &mut sea_orm::sqlx::PgConnection,
    run_id: i64,
    lease_id: &str,
    holder: &str,
    points: &[MetricPoint],
    now: i64,
) -> Result<u64, sea_orm::sqlx::Error> {
    // One statement text for each of the two forms (each prepared once per connection).
    fn statement(on_conflict: &str) -> String {
        format!(
            "INSERT INTO metrics (run_id, key, step, value, recorded_at) \
             SELECT $1, u.key, u.step, u.value, $2 FROM UNNEST($3::text[], $4::bigint[], $5::float8[]) AS u(key, step, value) \
             WHERE {}{on_conflict}",
            fence("$6", "$1", "$2", "$7", true)
        )
    }
    static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| statement(""));
    static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        statement(" ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, recorded_at = excluded.recorded_at")
    });
    let keys: Vec<&str> = points.iter().map(|p| p.key.as_str()).collect();
    let steps: Vec<i64> = points.iter().map(|p| p.step).collect();
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let query = |sql: &'static str| {
        sea_orm::sqlx::query(sql).bind(run_id).bind(now).bind(&keys).bind(&steps).bind(&values).bind(lease_id).bind(holder)
    };
    let done = match query(INSERT.as_str()).execute(&mut *conn).await {
        Err(sea_orm::sqlx::Error::Database(e)) if e.is_unique_violation() => query(UPSERT.as_str()).execute(&mut *conn).await,
        other => other,
    };
    Ok(done?.rows_affected())
}

/// The last step of every key of a run: one pass over the run's points for each key's last
/// step, then one primary-key lookup per key (whichever order the primary key has, see
/// migrations m018).
pub async fn latest(conn: &impl ConnectionTrait, run_id: i64) -> Result<Vec<MetricRow>, DbErr> {
    all(
        conn,
        "SELECT m.key, m.step, m.value FROM (SELECT key, MAX(step) AS step FROM metrics WHERE run_id = $1 GROUP BY key) last \
         JOIN metrics m ON m.run_id = $1 AND m.key = last.key AND m.step = last.step ORDER BY m.key",
        values![run_id],
    )
    .await
}

/// Every point of a run, optionally of one key, by key and step.
pub async fn series(conn: &impl ConnectionTrait, run_id: i64, key: Option<&str>) -> Result<Vec<MetricRow>, DbErr> {
    match key {
        Some(key) => {
            all(conn, "SELECT key, step, value FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step", values![run_id, key]).await
        }
        None => all(conn, "SELECT key, step, value FROM metrics WHERE run_id = $1 ORDER BY key, step", values![run_id]).await,
    }
}

/// A run's value of `key` at `step`, or at its last step when `step` is None.
pub async fn value_at(conn: &impl ConnectionTrait, run_id: i64, key: &str, step: Option<i64>) -> Result<Option<f64>, DbErr> {
    #[derive(FromQueryResult)]
    struct V {
        value: f64,
    }
    let row = match step {
        Some(step) => {
            one::<V>(conn, "SELECT value FROM metrics WHERE run_id = $1 AND key = $2 AND step = $3", values![run_id, key, step]).await?
        }
        None => {
            one::<V>(conn, "SELECT value FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step DESC LIMIT 1", values![run_id, key])
                .await?
        }
    };
    Ok(row.map(|v| v.value))
}

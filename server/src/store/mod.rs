//! One function per query. Every function takes `&impl ConnectionTrait`, so callers
//! choose the read pool, the write pool or a transaction. SQL is written once for both
//! databases: `$N` placeholders, BIGINT times and flags, `ON CONFLICT` upserts.

pub mod artifacts;
pub mod audit;
pub mod classify;
pub mod datasets;
pub mod early_stops;
pub mod experiments;
pub mod hot;
pub mod jobs;
pub mod leaderboard;
pub mod leases;
pub mod metrics;
pub mod predictions;
pub mod promotions;
pub mod results;
pub mod runs;
pub mod sessions;
pub mod tokens;
pub mod workers;

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Statement, Value};

pub(crate) fn statement(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(conn.get_database_backend(), sql, values)
}

pub(crate) async fn all<T: FromQueryResult>(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<Vec<T>, DbErr> {
    T::find_by_statement(statement(conn, sql, values)).all(conn).await
}

pub(crate) async fn one<T: FromQueryResult>(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<Option<T>, DbErr> {
    T::find_by_statement(statement(conn, sql, values)).one(conn).await
}

/// Runs a statement and returns the number of rows it changed.
pub(crate) async fn exec(conn: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    Ok(conn.execute(statement(conn, sql, values)).await?.rows_affected())
}

/// Decodes a JSON column; a corrupt value is an error naming the row and column, never a
/// silent default.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(row: &str, column: &str, text: &str) -> Result<T, DbErr> {
    serde_json::from_str(text).map_err(|e| DbErr::Custom(format!("{row}: column `{column}`: {e}")))
}

/// Decodes a text column holding one of an enum's names (`protocol`'s string enums).
pub(crate) fn decode_enum<T: std::str::FromStr<Err = String>>(row: &str, column: &str, text: &str) -> Result<T, DbErr> {
    text.parse().map_err(|e: String| DbErr::Custom(format!("{row}: column `{column}`: {e}")))
}

/// Decodes a BIGINT 0/1 flag.
pub(crate) fn decode_flag(row: &str, column: &str, value: i64) -> Result<bool, DbErr> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(DbErr::Custom(format!("{row}: column `{column}`: {n} is not a flag (0 or 1)"))),
    }
}

/// Decodes a stored confusion matrix (`classes_json`, `counts_json`); a corrupt one is an
/// error naming its row (`what`), never an empty matrix.
pub(crate) fn decode_matrix(what: &str, classes_json: &str, counts_json: &str) -> Result<protocol::metrics::ConfusionMatrix, DbErr> {
    let corrupt = |column: &str, e: String| DbErr::Custom(format!("{what}: column `{column}`: {e}"));
    let classes: Vec<String> = serde_json::from_str(classes_json).map_err(|e| corrupt("classes_json", e.to_string()))?;
    let counts: Vec<Vec<u64>> = serde_json::from_str(counts_json).map_err(|e| corrupt("counts_json", e.to_string()))?;
    protocol::metrics::ConfusionMatrix::from_parts(classes, counts).map_err(|e| corrupt("counts_json", e.to_string()))
}

#[derive(Debug, FromQueryResult)]
pub(crate) struct Id {
    pub id: i64,
}

#[derive(Debug, FromQueryResult)]
pub(crate) struct Count {
    pub n: i64,
}

/// `$1, $2, ...` groups for a multi-row INSERT of `rows` rows of `width` values.
pub(crate) fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

macro_rules! values {
    ($($v:expr),* $(,)?) => { vec![$(sea_orm::Value::from($v)),*] };
}
pub(crate) use values;

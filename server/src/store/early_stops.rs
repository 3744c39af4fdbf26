//! Early-stop decisions: one row per (run, completed epochs) where the sweep's rule was
//! applied, with the values it was decided from (migration m009).

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{all, exec, one, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct DecisionRow {
    pub run_id: i64,
    pub epochs: i64,
    pub sweep_id: i64,
    pub method: String,
    pub metric: String,
    pub value: f64,
    pub threshold: Option<f64>,
    pub compared: i64,
    pub stop: i64,
    pub decided_at: i64,
}

impl DecisionRow {
    pub fn stop(&self) -> Result<bool, DbErr> {
        super::decode_flag(&format!("early_stops row ({}, {})", self.run_id, self.epochs), "stop", self.stop)
    }

    /// Why the run was stopped, in a sentence (its run error once it has ended).
    pub fn reason(&self) -> String {
        let cut = self.threshold.map_or_else(String::new, |t| format!(", the cut was {t:.4}"));
        match self.method.as_str() {
            "asha" => format!(
                "pruned by asha after epoch {}: {} {:.4} was not in the top fraction of the {} runs at that rung{cut}",
                self.epochs, self.metric, self.value, self.compared
            ),
            _ => format!(
                "pruned by the median rule after epoch {}: {} {:.4} was worse than the median of the other {} runs{cut}",
                self.epochs,
                self.metric,
                self.value,
                self.compared - 1
            ),
        }
    }
}

const COLUMNS: &str = "run_id, epochs, sweep_id, method, metric, value, threshold, compared, stop, decided_at";

pub async fn get(conn: &impl ConnectionTrait, run_id: i64, epochs: i64) -> Result<Option<DecisionRow>, DbErr> {
    one(conn, &format!("SELECT {COLUMNS} FROM early_stops WHERE run_id = $1 AND epochs = $2"), values![run_id, epochs]).await
}

/// The decision that stopped a run, if one did.
pub async fn stopping(conn: &impl ConnectionTrait, run_id: i64) -> Result<Option<DecisionRow>, DbErr> {
    one(conn, &format!("SELECT {COLUMNS} FROM early_stops WHERE run_id = $1 AND stop = 1 ORDER BY epochs LIMIT 1"), values![run_id]).await
}

/// Every decision of a sweep, by run and epoch.
pub async fn of_sweep(conn: &impl ConnectionTrait, sweep_id: i64) -> Result<Vec<DecisionRow>, DbErr> {
    all(conn, &format!("SELECT {COLUMNS} FROM early_stops WHERE sweep_id = $1 ORDER BY run_id, epochs"), values![sweep_id]).await
}

/// The values recorded at one rung of a sweep by runs other than `run_id`.
pub async fn values_at(conn: &impl ConnectionTrait, sweep_id: i64, epochs: i64, run_id: i64) -> Result<Vec<f64>, DbErr> {
    #[derive(FromQueryResult)]
    struct V {
        value: f64,
    }
    Ok(all::<V>(
        conn,
        "SELECT value FROM early_stops WHERE sweep_id = $1 AND epochs = $2 AND run_id <> $3 ORDER BY run_id",
        values![sweep_id, epochs, run_id],
    )
    .await?
    .into_iter()
    .map(|v| v.value)
    .collect())
}

pub async fn insert(conn: &impl ConnectionTrait, row: &DecisionRow) -> Result<(), DbErr> {
    exec(
        conn,
        &format!("INSERT INTO early_stops ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
        values![
            row.run_id,
            row.epochs,
            row.sweep_id,
            row.method.clone(),
            row.metric.clone(),
            row.value,
            row.threshold,
            row.compared,
            row.stop,
            row.decided_at
        ],
    )
    .await?;
    Ok(())
}

/// One run's best value of `key` over steps 0..=`step` (largest or smallest).
pub async fn best_up_to(conn: &impl ConnectionTrait, run_id: i64, key: &str, step: i64, maximize: bool) -> Result<Option<f64>, DbErr> {
    #[derive(FromQueryResult)]
    struct V {
        v: Option<f64>,
    }
    let agg = if maximize { "MAX" } else { "MIN" };
    Ok(one::<V>(
        conn,
        &format!("SELECT {agg}(value) AS v FROM metrics WHERE run_id = $1 AND key = $2 AND step <= $3"),
        values![run_id, key, step],
    )
    .await?
    .and_then(|v| v.v))
}

/// The other runs of a sweep that have reached `step`: each one's best value of `key` up to it.
pub async fn others_best_up_to(
    conn: &impl ConnectionTrait,
    sweep_id: i64,
    run_id: i64,
    key: &str,
    step: i64,
    maximize: bool,
) -> Result<Vec<f64>, DbErr> {
    #[derive(FromQueryResult)]
    struct V {
        v: f64,
    }
    let agg = if maximize { "MAX" } else { "MIN" };
    Ok(all::<V>(
        conn,
        &format!(
            "SELECT {agg}(m.value) AS v FROM metrics m JOIN runs r ON r.id = m.run_id \
             WHERE r.sweep_id = $1 AND m.run_id <> $2 AND m.key = $3 AND m.step <= $4 \
               AND EXISTS (SELECT 1 FROM metrics x WHERE x.run_id = m.run_id AND x.key = $3 AND x.step = $4) \
             GROUP BY m.run_id ORDER BY m.run_id"
        ),
        values![sweep_id, run_id, key, step],
    )
    .await?
    .into_iter()
    .map(|v| v.v)
    .collect())
}

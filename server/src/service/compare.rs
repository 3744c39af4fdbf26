//! The per-class comparison of 2-20 runs (`GET /api/v1/compare`, the compare page and
//! `cobb compare`): the runs' best-epoch validation rows and matrices read in three queries
//! whatever their number (side by side), then `protocol::compare::compare`.

use protocol::compare::{Comparison, MAX_RUNS, RunResults};
use protocol::metrics::{ClassMetrics, ConfusionMatrix};
use std::collections::{BTreeMap, BTreeSet};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store;

/// `runs=1&runs=2` or `runs=1,2`, and `baseline=`, from a query string.
pub fn parse_query(query: &str) -> Result<(Vec<i64>, Option<i64>), ApiError> {
    let mut runs = Vec::new();
    let mut baseline = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("runs", v)) => {
                for x in v.split([',', '+']).map(str::trim).filter(|x| !x.is_empty()) {
                    runs.push(x.parse::<i64>().map_err(|_| ApiError::InvalidRequest(format!("`{x}` in runs= is not a run id")))?);
                }
            }
            Some(("baseline", v)) => {
                baseline = Some(v.parse().map_err(|_| ApiError::InvalidRequest(format!("baseline `{v}` is not a run id")))?)
            }
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    runs.retain(|r| seen.insert(*r));
    Ok((runs, baseline))
}

pub async fn compare(state: &AppState, ids: &[i64], baseline: Option<i64>) -> Result<Comparison, ApiError> {
    if !(2..=MAX_RUNS).contains(&ids.len()) {
        return Err(ApiError::InvalidRequest(format!(
            "compare 2 to {MAX_RUNS} runs (got {}): tick them on a sweep page, or runs=1,2",
            ids.len()
        )));
    }
    let conn = &state.db.read;
    // Three independent reads, side by side on the read pool.
    let (class_rows, matrix_rows, brief) = tokio::join!(
        store::leaderboard::best_class_rows(conn, ids),
        store::leaderboard::best_matrices(conn, ids),
        store::leaderboard::brief(conn, ids),
    );
    let mut rows: BTreeMap<i64, Vec<ClassMetrics>> = BTreeMap::new();
    for r in class_rows? {
        rows.entry(r.run_id).or_default().push(ClassMetrics {
            class: r.class,
            precision: r.precision,
            recall: r.recall,
            f1: r.f1,
            support: r.support as u64,
        });
    }
    let mut matrices: BTreeMap<i64, ConfusionMatrix> = BTreeMap::new();
    for m in matrix_rows? {
        matrices.insert(m.run_id, m.decode()?);
    }
    let mut brief: BTreeMap<i64, store::leaderboard::BriefRun> = brief?.into_iter().map(|b| (b.id, b)).collect();
    let mut runs = Vec::with_capacity(ids.len());
    for id in ids {
        let b = brief.remove(id).ok_or_else(|| ApiError::not_found("run", id))?;
        let (status, params) = (b.status()?, b.params()?);
        runs.push((
            b.dataset_version_id,
            RunResults {
                id: b.id,
                name: b.name,
                status,
                best_epoch: b.best_epoch,
                params,
                per_class: rows.remove(id).unwrap_or_default(),
                confusion: matrices.remove(id),
            },
        ));
    }
    // Training images per class of the first run's dataset version.
    let version_id = runs[0].0;
    let version =
        store::datasets::version_by_id(conn, version_id).await?.ok_or_else(|| ApiError::not_found("dataset version", version_id))?;
    let dataset = super::datasets::info(conn, version, false).await?;
    let train_images: BTreeMap<String, u64> = dataset.counts.iter().map(|c| (c.label.clone(), c.train)).collect();
    let runs: Vec<RunResults> = runs.into_iter().map(|(_, r)| r).collect();
    Ok(protocol::compare::compare(&runs, baseline, &train_images))
}

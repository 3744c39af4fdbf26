//! The rules: validation, transactions, the job/lease state machine (jobs). Routes call one
//! function here; functions here call `store`.

pub mod audit;
pub mod compare;
pub mod datasets;
pub mod experiments;
pub mod jobs;
pub mod promotions;
pub mod runs;
pub mod tokens;
pub mod worker_writes;

use protocol::RunStatus;
use protocol::api::StatusCounts;

use crate::store::experiments::StatusCountRow;

/// Folds `(owner, status, n)` rows into per-owner counts.
pub(crate) fn counts_for(rows: &[StatusCountRow], owner: i64) -> StatusCounts {
    let mut counts = StatusCounts::default();
    for row in rows.iter().filter(|r| r.owner == owner) {
        if let Ok(status) = row.status.parse::<RunStatus>() {
            counts.0.insert(status, row.n as u64);
        }
    }
    counts
}

//! The rules: validation, transactions, the job/lease state machine (jobs). Routes call one
//! function here; functions here call `store`.

pub mod audit;
pub mod backup;
pub mod classify;
pub mod compare;
pub mod constraints;
pub mod datasets;
pub mod early_stop;
pub mod evidence;
pub mod experiments;
pub mod group_commit;
pub mod jobs;
pub mod promotions;
pub mod runs;
pub mod tokens;
pub mod tpe;
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

/// Free text a worker sends (an error, a device name) cut to `max` bytes at a character
/// boundary, marked as cut: the run must still end when its error is long, and a page must
/// not carry megabytes of it.
pub(crate) fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut: {} bytes in all]", &text[..end], text.len())
}

/// The longest run error kept (the first lines of a failure are what say what to do).
pub const MAX_ERROR_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_text_cuts_at_a_character_boundary() {
        assert_eq!(super::bounded_text("short", 10), "short");
        let cut = super::bounded_text(&"é".repeat(10), 5);
        assert!(cut.starts_with("éé [cut: 20 bytes"), "{cut}");
    }
}

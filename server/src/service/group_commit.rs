//! Group commit of metric batches on SQLite. SQLite has one writer; a batch written alone is
//! one transaction, with its own lock, B-tree page writes and WAL frames. Batches that arrive
//! while one is being written wait in a queue and are then written together, each by its own
//! fenced statement, in one transaction: the pages they share are written once. Every caller
//! is answered only after the commit of the transaction that holds its batch, so a 200 still
//! means committed. A group that fails as a whole is answered `Retry` for each batch, and each
//! caller then writes its batch alone (and gets its own error if there is one).
//!
//! PostgreSQL does not use this: its commits already share WAL flushes between concurrent
//! transactions, and each batch there is one statement over arrays (store::metrics).

use protocol::api::MetricPoint;
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::store;

/// The most batches written in one transaction.
const MAX_GROUP: usize = 64;

/// What became of one batch.
#[derive(Debug)]
pub enum Written {
    /// Committed: the rows written (0: the lease was not live, nothing was written).
    Rows(u64),
    /// Its group could not be written; write it alone.
    Retry,
}

struct Pending {
    run_id: i64,
    lease_id: String,
    holder: String,
    points: Arc<Vec<MetricPoint>>,
    now: i64,
    reply: oneshot::Sender<Written>,
}

/// Batches waiting to be written, and the right to write them. No task of its own: the
/// request that takes the writer's lock writes what is waiting (its own batch included), so
/// a batch that arrives alone costs no extra hand-over between threads.
pub struct GroupCommit {
    write: DatabaseConnection,
    waiting: std::sync::Mutex<Vec<Pending>>,
    writer: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Group commit on `write` (SQLite's one write connection).
    pub fn new(write: DatabaseConnection) -> Self {
        Self { write, waiting: std::sync::Mutex::new(Vec::new()), writer: tokio::sync::Mutex::new(()) }
    }

    /// Writes `points` of `run_id` fenced by `lease_id`, with the batches waiting beside it.
    pub async fn write(&self, run_id: i64, lease_id: &str, holder: &str, points: Arc<Vec<MetricPoint>>, now: i64) -> Written {
        let (reply, mut answer) = oneshot::channel();
        let pending = Pending { run_id, lease_id: lease_id.to_owned(), holder: holder.to_owned(), points, now, reply };
        match self.waiting.lock() {
            Ok(mut waiting) => waiting.push(pending),
            Err(_) => return Written::Retry,
        }
        loop {
            tokio::select! {
                biased;
                written = &mut answer => return written.unwrap_or(Written::Retry),
                _writer = self.writer.lock() => {
                    // Whoever holds the lock writes everything waiting, up to a group's size;
                    // the batch of each caller was queued before it asked for the lock, so it
                    // is written by this holder or an earlier one.
                    let mut group = match self.waiting.lock() {
                        Ok(mut waiting) => {
                            let n = waiting.len().min(MAX_GROUP);
                            waiting.drain(..n).collect::<Vec<_>>()
                        }
                        Err(_) => return Written::Retry,
                    };
                    if !group.is_empty() {
                        write_group(&self.write, &mut group).await;
                    }
                }
            }
        }
    }
}

async fn write_group(write: &DatabaseConnection, group: &mut Vec<Pending>) {
    tracing::trace!(batches = group.len(), "group commit");
    let outcome: Result<Vec<u64>, sea_orm::DbErr> = async {
        if let [one] = group.as_slice() {
            // Alone: one statement in its own implicit transaction.
            return Ok(vec![store::metrics::upsert_fenced(write, one.run_id, &one.lease_id, &one.holder, &one.points, one.now).await?]);
        }
        let tx = write.begin().await?;
        let mut rows = Vec::with_capacity(group.len());
        for p in group.iter() {
            rows.push(store::metrics::upsert_fenced(&tx, p.run_id, &p.lease_id, &p.holder, &p.points, p.now).await?);
        }
        tx.commit().await?;
        Ok(rows)
    }
    .await;
    match outcome {
        Ok(rows) => {
            for (p, rows) in group.drain(..).zip(rows) {
                let _ = p.reply.send(Written::Rows(rows));
            }
        }
        Err(e) => {
            tracing::warn!(batches = group.len(), error = %e, "a group of metric batches failed; each is written alone");
            for p in group.drain(..) {
                let _ = p.reply.send(Written::Retry);
            }
        }
    }
}

//! The append-only audit log. Each event's hash covers its content and the previous
//! event's hash, so changing or removing a stored event breaks the chain after it.

use sea_orm::{ConnectionTrait, DbErr};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::store;

/// The chain's first `prev_hash`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub struct Event<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub experiment: Option<&'a str>,
    pub run_id: Option<i64>,
    pub details: Value,
}

/// The hash of an event given the previous event's hash.
pub fn event_hash(
    prev_hash: &str,
    at: i64,
    actor: &str,
    action: &str,
    experiment: Option<&str>,
    run_id: Option<i64>,
    details_json: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash,
        &at.to_string(),
        actor,
        action,
        experiment.unwrap_or(""),
        &run_id.map(|r| r.to_string()).unwrap_or_default(),
        details_json,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends an event. Call inside the transaction of the change it records; on SQLite
/// and PostgreSQL alike, writes are serialised on the write connection or the
/// unique hash, so two events never claim the same predecessor.
pub async fn append(conn: &impl ConnectionTrait, event: Event<'_>) -> Result<(), DbErr> {
    let prev = store::audit::last_hash(conn).await?.unwrap_or_else(|| GENESIS.to_owned());
    let at = now_ms();
    let details = event.details.to_string();
    let hash = event_hash(&prev, at, event.actor, event.action, event.experiment, event.run_id, &details);
    store::audit::insert(conn, at, event.actor, event.action, event.experiment, event.run_id, &details, &prev, &hash)
        .await
}

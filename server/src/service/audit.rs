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
    pub action: protocol::AuditAction,
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
    let action = event.action.as_str();
    let hash = event_hash(&prev, at, event.actor, action, event.experiment, event.run_id, &details);
    store::audit::insert(conn, at, event.actor, action, event.experiment, event.run_id, &details, &prev, &hash).await
}

/// Recomputes the chain over every event, oldest first, and reports the first broken link.
pub fn verify(rows: &[crate::store::audit::AuditRow]) -> protocol::api::ChainCheck {
    let mut prev = GENESIS.to_owned();
    for row in rows {
        let reason = if row.prev_hash != prev {
            Some(format!(
                "event {} does not follow event before it (its prev_hash is not that event's hash): an event was removed, inserted or changed",
                row.id
            ))
        } else if event_hash(&row.prev_hash, row.at, &row.actor, &row.action, row.experiment.as_deref(), row.run_id, &row.details_json)
            != row.hash
        {
            Some(format!("event {} was changed after it was written (its content no longer matches its hash)", row.id))
        } else {
            None
        };
        if let Some(reason) = reason {
            return protocol::api::ChainCheck { ok: false, events: rows.len() as u64, first_broken: Some(row.id), reason: Some(reason) };
        }
        prev = row.hash.clone();
    }
    protocol::api::ChainCheck { ok: true, events: rows.len() as u64, first_broken: None, reason: None }
}

/// The audit log (optionally of one experiment) with the verification of the whole chain.
pub async fn log(state: &crate::state::AppState, experiment: Option<&str>) -> Result<protocol::api::AuditLog, crate::error::ApiError> {
    let rows = crate::store::audit::list(&state.db.read).await?;
    let chain = verify(&rows);
    let events = rows
        .into_iter()
        .filter(|r| experiment.is_none() || r.experiment.as_deref() == experiment)
        .map(|r| protocol::api::AuditEvent {
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            experiment: r.experiment,
            run_id: r.run_id,
            // Stored text that is not JSON is shown as it is: the chain check says whether it was changed.
            details: serde_json::from_str(&r.details_json).unwrap_or_else(|_| serde_json::Value::String(r.details_json.clone())),
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
        .collect();
    Ok(protocol::api::AuditLog { events, chain })
}

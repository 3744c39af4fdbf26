//! `cobb audit [--experiment E] [--verify] [--anchor HASH]`: the hash-chained audit log.
//!
//! The chain is unkeyed: someone who can write to the database could rewrite an event and
//! recompute every hash after it. An anchor closes that: `--verify` prints the head hash;
//! kept outside the database (with each backup, in a ticket), it is later checked with
//! `--anchor HASH`, which fails if the chain no longer holds that event.

use protocol::api::AuditLog;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

pub async fn audit(client: &Client, experiment: Option<&str>, verify: bool, anchor: Option<&str>, json: bool) -> Result<(), Failure> {
    let path = match experiment {
        Some(e) => format!("/audit?experiment={}", super::runs::encode(e)),
        None => "/audit".to_owned(),
    };
    let log: AuditLog = client.get(&path).await?;
    if json {
        output::json(&log);
    } else {
        let rows: Vec<Vec<String>> = log
            .events
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    output::time(e.at),
                    e.actor.clone(),
                    e.action.clone(),
                    e.experiment.clone().unwrap_or_else(|| "-".to_owned()),
                    e.run_id.map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    output::short(&e.hash).to_owned(),
                ]
            })
            .collect();
        output::table(&["#", "TIME", "ACTOR", "ACTION", "EXPERIMENT", "RUN", "HASH"], &rows);
    }
    if verify {
        if log.chain.ok {
            // The head and the anchor are read from the whole chain, not the filtered list.
            let all: AuditLog = if experiment.is_some() { client.get("/audit").await? } else { log };
            let head = all.events.iter().max_by_key(|e| e.id).map_or("-", |e| e.hash.as_str()).to_owned();
            if let Some(anchor) = anchor
                && !all.events.iter().any(|e| e.hash == anchor)
            {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "audit anchor {anchor} is not in the chain: the log was rewritten and re-chained since that hash was taken"
                )));
            }
            eprintln!(
                "audit chain verified: {} events, no broken link{}; head hash {head} (keep it outside the database and check it later with `cobb audit --anchor HASH`)",
                all.chain.events,
                anchor.map(|a| format!(", anchor {} found", output::short(a))).unwrap_or_default()
            );
        } else {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "audit chain broken at event {}: {}",
                log.chain.first_broken.unwrap_or_default(),
                log.chain.reason.clone().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

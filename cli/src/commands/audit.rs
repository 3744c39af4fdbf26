//! `cobb audit [--experiment E] [--verify]`: the hash-chained audit log.

use protocol::api::AuditLog;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

pub async fn audit(client: &Client, experiment: Option<&str>, verify: bool, json: bool) -> Result<(), Failure> {
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
            eprintln!("audit chain verified: {} events, no broken link", log.chain.events);
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

//! `cobb experiments` and `cobb workers`: what the server holds, one line each.

use protocol::api::{ExperimentSummary, WorkerInfo};

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

pub async fn experiments(client: &Client, json: bool) -> Result<(), Failure> {
    let list: Vec<ExperimentSummary> = client.get("/experiments").await?;
    if json {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let counts: Vec<String> = e.runs.0.iter().map(|(s, n)| format!("{n} {s}")).collect();
            vec![
                e.name.clone(),
                format!("{}@{}", e.dataset, output::short(&e.dataset_version)),
                e.sweep_count.to_string(),
                counts.join(", "),
            ]
        })
        .collect();
    output::table(&["EXPERIMENT", "DATASET", "SWEEPS", "RUNS"], &rows);
    Ok(())
}

pub async fn workers(client: &Client, json: bool) -> Result<(), Failure> {
    let list: Vec<WorkerInfo> = client.get("/workers").await?;
    if json {
        output::json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.device.clone().unwrap_or_else(|| "-".to_owned()),
                output::time(w.last_seen_at),
                w.current_run.map_or_else(|| "idle".to_owned(), |r| format!("run {r}")),
            ]
        })
        .collect();
    output::table(&["WORKER", "DEVICE", "LAST SEEN", "DOING"], &rows);
    Ok(())
}

use anyhow::Context;
use clap::Args;
use protocol::api::{SubmitExperiment, SubmitResult};
use protocol::plan;
use protocol::sweep;
use std::path::PathBuf;

use crate::client::Client;
use crate::failure::Failure;
use crate::output;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The experiment spec (YAML).
    pub file: PathBuf,
    /// Validate and print the runs it expands to; queue nothing (works without a server).
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: &SubmitArgs, client: &Client, json: bool) -> Result<(), Failure> {
    let name = args.file.display().to_string();
    let yaml = std::fs::read_to_string(&args.file).with_context(|| format!("while reading {name}")).map_err(Failure::Input)?;
    // Validate here first: errors name file, line and column without a round trip.
    let plan = plan::parse(&yaml, &name).map_err(Failure::input)?;
    if args.dry_run {
        let (parsed, runs) = (&plan.spec, &plan.runs);
        if json {
            output::json(&runs);
            return Ok(());
        }
        println!(
            "{} expands to {} run(s) on dataset `{}`{} (dry run: nothing queued)",
            parsed.name,
            runs.len(),
            parsed.dataset.name,
            parsed.dataset.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default()
        );
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    r.index.to_string(),
                    r.config.model.arch.to_string(),
                    r.config.model.image_size.unwrap_or_default().to_string(),
                    output::number(r.config.train.optimizer.lr),
                    r.config.train.batch_size.to_string(),
                    r.config.train.epochs.to_string(),
                    if r.params.is_empty() { "-".to_owned() } else { sweep::describe(&r.params) },
                ]
            })
            .collect();
        output::table(&["#", "ARCH", "SIZE", "LR", "BATCH", "EPOCHS", "PARAMS"], &rows);
        explain(parsed);
        return Ok(());
    }
    let request = SubmitExperiment { yaml, file: Some(name), dry_run: false };
    let result: SubmitResult = client.post("/experiments", &request).await?;
    if json {
        output::json(&result);
        return Ok(());
    }
    println!(
        "queued {} run(s) of `{}` (sweep s{}) on dataset {}@{}",
        result.runs.len(),
        result.experiment,
        result.sweep_id.unwrap_or_default(),
        result.dataset,
        output::short(&result.dataset_version)
    );
    let rows: Vec<Vec<String>> = result
        .runs
        .iter()
        .map(|r| {
            vec![
                r.run_id.map(|i| i.to_string()).unwrap_or_default(),
                r.name.clone(),
                if r.params.is_empty() { "-".to_owned() } else { sweep::describe(&r.params) },
            ]
        })
        .collect();
    output::table(&["RUN", "NAME", "PARAMS"], &rows);
    explain(&plan.spec);
    Ok(())
}

/// What the sweep will do beyond the runs listed: tpe suggestions, early stopping, the budget.
fn explain(spec: &protocol::ExperimentSpec) {
    if let Some(s) = spec.sweep.as_ref().filter(|s| s.method == sweep::Method::Tpe) {
        let max = s.max_runs.unwrap_or(0);
        let queued = s.enqueue.as_ref().map_or(0, Vec::len) as u32;
        println!(
            "tpe: {} more run(s) suggested one at a time as workers ask (up to {max} in all): the first {} seeded random \
             draws, then multivariate TPE on {} ({}), each suggestion conditioned on every finished run and on the running ones",
            max.saturating_sub(queued),
            s.startup_runs().min(max),
            spec.select.metric,
            match spec.select.goal {
                protocol::spec::Goal::Maximize => "higher is better",
                protocol::spec::Goal::Minimize => "lower is better",
            }
        );
    }
    if let Some(early) = spec.sweep.as_ref().and_then(|s| s.early_stop.as_ref()) {
        println!("{}", early.describe(&spec.select.metric, spec.select.goal, spec.train.epochs));
    }
    if let Some(max) = spec.max_val_configs {
        println!(
            "validation budget: at most {max} distinct configurations scored against the experiment's frozen validation split, \
             all sweeps together (max_val_configs); the server refuses a submission that would exceed it"
        );
    }
}

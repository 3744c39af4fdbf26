//! Submitting experiment specs: validate, pin the frozen dataset version, expand the
//! sweep and queue its runs, all in one transaction.

use protocol::api::{ExperimentDetail, ExperimentSummary, PlannedRunInfo, SubmitExperiment, SubmitResult, SweepInfo};
use protocol::plan;
use protocol::sweep::Method;
use sea_orm::TransactionTrait;
use serde_json::json;
use std::collections::BTreeMap;

use super::counts_for;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::experiments::{ConfigsBy, ExperimentRow, NewExperiment, NewSweep, SweepRow};
use crate::store::runs::NewRun;

fn run_name(experiment: &str, sweep_id: Option<i64>, index: u32) -> String {
    match sweep_id {
        Some(id) => format!("{experiment}-s{id}-{index}"),
        None => format!("{experiment}-{index}"),
    }
}

pub async fn submit(state: &AppState, actor: &str, req: SubmitExperiment) -> Result<SubmitResult, ApiError> {
    if req.file.as_ref().is_some_and(|f| f.len() > 255 || f.chars().any(char::is_control)) {
        return Err(ApiError::InvalidRequest("the spec's file name is at most 255 characters, without control characters".to_owned()));
    }
    let file = req.file.clone().unwrap_or_else(|| "experiment.yaml".to_owned());
    // Parsing is CPU work (bounded by plan::MAX_SPEC_BYTES and MAX_FLOW_DEPTH): off the
    // request threads.
    let (yaml, name) = (req.yaml.clone(), file.clone());
    let parsed = tokio::task::spawn_blocking(move || plan::parse(&yaml, &name))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the spec parser crashed: {e}")))?;
    let plan::Plan { spec: parsed, runs: planned } = parsed.map_err(|e| ApiError::InvalidSpec(Box::new(e)))?;

    let tx = state.db.write.begin().await?;
    let version = super::datasets::resolve(&tx, &parsed.dataset.name, parsed.dataset.version.as_deref()).await?;
    let existing = store::experiments::by_name(&tx, &parsed.name).await?;
    if let Some(e) = &existing
        && e.dataset_version_id != version.id
    {
        return Err(ApiError::Conflict(format!(
            "experiment `{}` is frozen on dataset version {} of `{}`, but this spec resolves to {}; \
                 set dataset.version: {} to add runs to it, or give the spec a new name to study the new version",
            e.name,
            &e.dataset_version[..12],
            e.dataset,
            &version.version[..12],
            &e.dataset_version[..12]
        )));
    }
    let method = match parsed.sweep.as_ref().map(|s| s.method) {
        Some(Method::Grid) => "grid",
        Some(Method::Random) => "random",
        Some(Method::Tpe) => "tpe",
        None => "single",
    };
    // Every planned run's configuration, as its worker will receive it (lineage: the exact
    // frozen version), and its identity for the validation budget.
    let mut hashes = Vec::with_capacity(planned.len());
    for run in &planned {
        let mut config = run.config.clone();
        config.dataset.version = Some(version.version.clone());
        hashes.push(super::runs::config_hash(&config));
    }
    // A tpe sweep suggests the rest of its runs later: each counts as a configuration to come.
    let max_runs = match parsed.sweep.as_ref() {
        Some(s) if s.method == Method::Tpe => i64::from(s.max_runs.unwrap_or(0)),
        _ => planned.len() as i64,
    };
    let budget = check_budget(&tx, existing.as_ref(), &parsed, &hashes, max_runs - planned.len() as i64).await?;
    let criteria = match check_criteria(&tx, existing.as_ref(), &parsed, &version).await {
        Ok(criteria) => criteria,
        Err(RulesRefusal::Frozen(message)) => {
            // An attempt to change the rules after the test split was opened is refused, and
            // the attempt itself goes into the audit chain.
            tx.rollback().await?;
            if !req.dry_run {
                let audit = state.db.write.begin().await?;
                super::audit::append(
                    &audit,
                    super::audit::Event {
                        actor,
                        action: protocol::AuditAction::ExperimentRulesRefused,
                        experiment: Some(&parsed.name),
                        run_id: None,
                        details: json!({"asked": parsed.promotion, "file": req.file, "why": message}),
                    },
                )
                .await?;
                audit.commit().await?;
            }
            return Err(ApiError::Conflict(message));
        }
        Err(RulesRefusal::Other(e)) => return Err(e),
    };
    if req.dry_run {
        tx.rollback().await?;
        return Ok(SubmitResult {
            experiment: parsed.name.clone(),
            dataset: version.dataset.clone(),
            dataset_version: version.version.clone(),
            sweep_id: None,
            dry_run: true,
            runs: planned
                .iter()
                .map(|r| PlannedRunInfo {
                    index: r.index,
                    name: run_name(&parsed.name, None, r.index),
                    params: r.params.clone(),
                    run_id: None,
                })
                .collect(),
        });
    }

    let now = now_ms();
    let spec_json = serde_json::to_string(&parsed).map_err(anyhow::Error::from)?;
    let experiment_id = match &existing {
        Some(e) => e.id,
        None => {
            store::experiments::insert(
                &tx,
                NewExperiment {
                    name: &parsed.name,
                    description: &parsed.description,
                    dataset_version_id: version.id,
                    spec_yaml: &req.yaml,
                    spec_json: &spec_json,
                    created_at: now,
                    created_by: actor,
                    max_val_configs: budget,
                },
            )
            .await?
        }
    };
    if let Some(e) = &existing
        && budget != e.max_val_configs
        && let Some(lowered) = budget
    {
        store::experiments::set_max_val_configs(&tx, e.id, lowered).await?;
    }
    if let Some(change) = &criteria {
        store::experiments::set_criteria(&tx, experiment_id, &change.json).await?;
        store::experiments::set_approvals(&tx, experiment_id, change.approvals.map(i64::from)).await?;
    }
    let sweep_id = store::experiments::insert_sweep(
        &tx,
        NewSweep {
            experiment_id,
            method,
            file: req.file.as_deref(),
            spec_yaml: &req.yaml,
            spec_json: &spec_json,
            parallel: parsed.sweep.as_ref().and_then(|s| s.parallel).map(i64::from),
            max_runs,
            created_at: now,
            created_by: actor,
        },
    )
    .await?;
    // The spec is stored once, with the sweep; a run stores only the params it sets, and its
    // config is derived from the two (service::runs::config_of).
    let mut runs = Vec::with_capacity(planned.len());
    for (run, config_hash) in planned.into_iter().zip(&hashes) {
        let name = run_name(&parsed.name, Some(sweep_id), run.index);
        let params_json = serde_json::to_string(&run.params).map_err(anyhow::Error::from)?;
        let id = store::runs::insert(
            &tx,
            NewRun {
                experiment_id,
                sweep_id,
                idx: i64::from(run.index),
                name: &name,
                max_attempts: i64::from(state.config.max_attempts),
                params_json: &params_json,
                config_hash,
                now,
            },
        )
        .await?;
        runs.push(PlannedRunInfo { index: run.index, name, params: run.params, run_id: Some(id) });
    }
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action: protocol::AuditAction::ExperimentSubmit,
            experiment: Some(&parsed.name),
            run_id: None,
            details: json!({"sweep_id": sweep_id, "runs": runs.len(), "max_runs": max_runs, "file": req.file,
                            "dataset_version": version.version, "method": method, "max_val_configs": budget,
                            "criteria": criteria.as_ref().map(|c| &c.criteria),
                            "approvals": criteria.as_ref().and_then(|c| c.approvals),
                            "criteria_replaced": criteria.as_ref().and_then(|c| c.replaced.as_ref())}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(experiment = %parsed.name, sweep.id = sweep_id, runs = runs.len(), "experiment submitted");
    Ok(SubmitResult {
        experiment: parsed.name,
        dataset: version.dataset,
        dataset_version: version.version,
        sweep_id: Some(sweep_id),
        dry_run: false,
        runs,
    })
}

/// Why a submission's promotion rules were refused: frozen ones (audited), or anything else.
enum RulesRefusal {
    Frozen(String),
    Other(ApiError),
}

impl<E: Into<ApiError>> From<E> for RulesRefusal {
    fn from(e: E) -> Self {
        RulesRefusal::Other(e.into())
    }
}

/// The promotion rules (acceptance criteria, approvals) a submission sets or replaces.
struct CriteriaChange {
    criteria: Vec<protocol::evidence::Criterion>,
    approvals: Option<u32>,
    json: String,
    /// The criteria they replace (audited), when there were others.
    replaced: Option<serde_json::Value>,
}

/// The acceptance criteria this submission sets (None: it leaves them as they are), or the
/// refusal: they must name the dataset's classes, and they are frozen once a run of the
/// experiment has been promoted (the test split has been opened against them).
async fn check_criteria(
    conn: &impl sea_orm::ConnectionTrait,
    existing: Option<&ExperimentRow>,
    spec: &protocol::ExperimentSpec,
    version: &store::datasets::VersionRow,
) -> Result<Option<CriteriaChange>, RulesRefusal> {
    let Some(rules) = spec.promotion.as_ref() else { return Ok(None) };
    let (asked, approvals) = (rules.criteria.clone(), rules.approvals.filter(|n| *n > 1));
    let classes = version.classes()?;
    for c in &asked {
        c.classes(&classes).map_err(|e| RulesRefusal::Other(ApiError::InvalidRequest(e)))?;
    }
    let json = serde_json::to_string(&asked).map_err(anyhow::Error::from)?;
    let Some(e) = existing else { return Ok(Some(CriteriaChange { criteria: asked, approvals, json, replaced: None })) };
    let rules = store::experiments::rules(conn, e.id).await?;
    let stored = rules.criteria_json;
    let held: Vec<protocol::evidence::Criterion> = match &stored {
        Some(text) => store::decode_json(&format!("experiments row {}", e.id), "criteria_json", text)?,
        None => Vec::new(),
    };
    let held_approvals = rules.approvals.map(|n| n as u32).filter(|n| *n > 1);
    if held == asked && held_approvals == approvals {
        return Ok(None);
    }
    if store::experiments::promotions(conn, e.id).await? > 0 {
        return Err(RulesRefusal::Frozen(format!(
            "experiment `{}`'s promotion rules (acceptance criteria and approvals) were fixed before its test split was opened \
             and a run has been promoted under them; they cannot change now (criteria: {}; approvals: {}). Submit without \
             `promotion:` (the rules stay), or start a new experiment",
            e.name,
            if held.is_empty() { "none".to_owned() } else { held.iter().map(|c| c.describe()).collect::<Vec<_>>().join("; ") },
            held_approvals.unwrap_or(1)
        )));
    }
    let replaced = Some(serde_json::json!({"criteria": held, "approvals": held_approvals.unwrap_or(1)}));
    Ok(Some(CriteriaChange { criteria: asked, approvals, json, replaced }))
}

/// The experiment's validation budget after this submission (None: no limit), or the
/// refusal: a budget is never raised, and a submission that would score more configurations
/// against the frozen validation split than it allows is refused whole.
async fn check_budget(
    conn: &impl sea_orm::ConnectionTrait,
    existing: Option<&ExperimentRow>,
    spec: &protocol::ExperimentSpec,
    hashes: &[String],
    to_come: i64,
) -> Result<Option<i64>, ApiError> {
    let asked = spec.max_val_configs.map(i64::from);
    let budget = match (existing.and_then(|e| e.max_val_configs), asked) {
        (Some(held), Some(asked)) if asked > held => {
            return Err(ApiError::Conflict(format!(
                "experiment `{}` allows {held} configurations against its validation split (max_val_configs); a budget can be \
                 lowered but never raised once the study has started: raising it after seeing results is the over-tuning it exists \
                 to prevent. Start a new experiment (and a new dataset version) to search further",
                spec.name
            )));
        }
        (held, asked) => asked.or(held),
    };
    let Some(max) = budget else { return Ok(None) };
    let counted: std::collections::BTreeSet<String> = match existing {
        Some(e) => store::experiments::budgeted_configs(conn, e.id).await?.into_iter().collect(),
        None => Default::default(),
    };
    let earlier_to_come = match existing {
        Some(e) => store::experiments::tpe_runs_to_come(conn, e.id).await?,
        None => 0,
    };
    let new: std::collections::BTreeSet<&String> = hashes.iter().filter(|h| !counted.contains(*h)).collect();
    let total = counted.len() as i64 + earlier_to_come + new.len() as i64 + to_come.max(0);
    if total > max {
        return Err(ApiError::Conflict(format!(
            "experiment `{}` allows {max} configurations scored against its frozen validation split (max_val_configs); {} \
             are scored or queued{}, and this submission adds {}: {total} in all. Every configuration scored against one \
             validation split makes its best score more optimistic (over-tuning to one split is how a study fools itself): \
             submit fewer runs, or stop here and promote",
            spec.name,
            counted.len(),
            if earlier_to_come > 0 { format!(" ({earlier_to_come} more to come from running tpe sweeps)") } else { String::new() },
            new.len() as i64 + to_come.max(0)
        )));
    }
    Ok(Some(max))
}

fn summary(row: &ExperimentRow, counts: protocol::api::StatusCounts, sweeps: i64, val_configs: i64) -> ExperimentSummary {
    ExperimentSummary {
        val_configs: val_configs as u64,
        max_val_configs: row.max_val_configs.map(|m| m as u64),
        name: row.name.clone(),
        description: row.description.clone(),
        dataset: row.dataset.clone(),
        dataset_version: row.dataset_version.clone(),
        created_at: row.created_at,
        created_by: row.created_by.clone(),
        sweep_count: sweeps as u64,
        runs: counts,
    }
}

pub async fn list(state: &AppState) -> Result<Vec<ExperimentSummary>, ApiError> {
    let conn = &state.db.read;
    let counts = store::experiments::run_counts_by_experiment(conn).await?;
    let scored: BTreeMap<i64, i64> = store::experiments::val_configs(conn, ConfigsBy::Experiment, None).await?.into_iter().collect();
    let mut out = Vec::new();
    for row in store::experiments::list(conn).await? {
        let sweeps = store::experiments::sweep_count(conn, row.id).await?;
        out.push(summary(&row, counts_for(&counts, row.id), sweeps, scored.get(&row.id).copied().unwrap_or(0)));
    }
    Ok(out)
}

fn sweep_info(row: SweepRow, counts: protocol::api::StatusCounts, val_configs: i64) -> SweepInfo {
    SweepInfo {
        max_runs: row.max_runs.map(|m| m as u64),
        cancelled: row.cancelled_at.is_some(),
        val_configs: val_configs as u64,
        id: row.id,
        experiment: row.experiment,
        method: row.method,
        file: row.file,
        spec_yaml: row.spec_yaml,
        created_at: row.created_at,
        created_by: row.created_by,
        runs: counts,
    }
}

pub async fn show(state: &AppState, name: &str) -> Result<ExperimentDetail, ApiError> {
    let conn = &state.db.read;
    let row = store::experiments::by_name(conn, name).await?.ok_or_else(|| ApiError::not_found("experiment", name))?;
    let all_counts = store::experiments::run_counts_by_experiment(conn).await?;
    let sweep_counts = store::experiments::run_counts_by_sweep(conn, row.id).await?;
    let scored: BTreeMap<i64, i64> = store::experiments::val_configs(conn, ConfigsBy::Sweep, Some(row.id)).await?.into_iter().collect();
    let total = scored_configs(conn, row.id).await?;
    let sweeps: Vec<SweepInfo> = store::experiments::sweeps_of(conn, row.id)
        .await?
        .into_iter()
        .map(|s| {
            let counts = counts_for(&sweep_counts, s.id);
            let n = scored.get(&s.id).copied().unwrap_or(0);
            sweep_info(s, counts, n)
        })
        .collect();
    Ok(ExperimentDetail {
        summary: summary(&row, counts_for(&all_counts, row.id), sweeps.len() as i64, total),
        spec_yaml: row.spec_yaml.clone(),
        sweeps,
    })
}

pub async fn sweep(state: &AppState, id: i64) -> Result<SweepInfo, ApiError> {
    let conn = &state.db.read;
    let row = store::experiments::sweep(conn, id).await?.ok_or_else(|| ApiError::not_found("sweep", id))?;
    let experiment =
        store::experiments::by_name(conn, &row.experiment).await?.ok_or_else(|| ApiError::not_found("experiment", &row.experiment))?;
    let counts = store::experiments::run_counts_by_sweep(conn, experiment.id).await?;
    let scored = store::experiments::val_configs(conn, ConfigsBy::Sweep, Some(experiment.id))
        .await?
        .into_iter()
        .find(|(s, _)| *s == id)
        .map_or(0, |(_, n)| n);
    Ok(sweep_info(row, counts_for(&counts, id), scored))
}

/// Distinct configurations of one experiment scored against its validation split.
async fn scored_configs(conn: &impl sea_orm::ConnectionTrait, experiment_id: i64) -> Result<i64, ApiError> {
    let counts = store::experiments::val_configs(conn, ConfigsBy::Experiment, Some(experiment_id)).await?;
    Ok(counts.first().map_or(0, |(_, n)| *n))
}

/// An experiment's validation budget: configurations scored, and its cap if any.
pub async fn budget(state: &AppState, name: &str) -> Result<(u64, Option<u64>), ApiError> {
    let conn = &state.db.read;
    let row = store::experiments::by_name(conn, name).await?.ok_or_else(|| ApiError::not_found("experiment", name))?;
    Ok((scored_configs(conn, row.id).await? as u64, row.max_val_configs.map(|m| m as u64)))
}

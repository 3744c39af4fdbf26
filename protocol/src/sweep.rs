//! Sweeps: `grid` (cartesian product of `values`) and `random` (seeded draws), expanded
//! deterministically into resolved runs. Parameters are dotted paths into the spec
//! (`train.optimizer.lr`), checked against the keys a spec really has.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::issue::{Issue, closest};
use crate::rng::SplitMix64;

/// Sweep parameters keyed by dotted path (used in run listings).
pub type Params = BTreeMap<String, Value>;

/// Runs one sweep may expand to; a larger grid needs `max_runs` to cap it explicitly.
pub const MAX_SWEEP_RUNS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Grid,
    Random,
    /// Multivariate TPE (`tpe`): runs are suggested one at a time, when a worker asks for
    /// work, from every earlier run of the sweep.
    Tpe,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    pub method: Method,
    /// Grid: keep the first `max_runs` combinations. Random: how many runs to draw
    /// (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u32>,
    /// How many runs of this sweep may train at once (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    /// Seed of the random draws (`train.seed` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Sorted by path, which fixes the expansion order.
    pub parameters: BTreeMap<String, ParamSpec>,
    /// Stop runs early at epoch boundaries (decided by the server; `early_stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<crate::early_stop::EarlyStopSpec>,
    /// tpe: how many seeded random runs before the model takes over (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_runs: Option<u32>,
    /// Configurations to run first, in order (a known good one from an earlier study), by
    /// dotted path; a parameter an entry leaves out takes the spec's own value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueue: Option<Vec<Params>>,
}

/// The default number of random start-up runs of a TPE sweep (Optuna's default).
pub const DEFAULT_STARTUP_RUNS: u32 = 10;

impl SweepSpec {
    pub fn startup_runs(&self) -> u32 {
        self.startup_runs.unwrap_or(DEFAULT_STARTUP_RUNS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    LogUniform,
    IntUniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Every leaf (and array) key of a spec that a sweep may vary.
/// `dataset.version` is absent on purpose: every run of an experiment trains on the same
/// frozen dataset version.
pub const SWEEPABLE_PATHS: [&str; 29] = [
    "model.arch",
    "model.image_size",
    "model.pretrained",
    "model.dropout",
    "train.epochs",
    "train.batch_size",
    "train.seed",
    "train.optimizer.name",
    "train.optimizer.lr",
    "train.optimizer.weight_decay",
    "train.optimizer.momentum",
    "train.schedule.name",
    "train.schedule.warmup_epochs",
    "train.schedule.step_epochs",
    "train.schedule.gamma",
    "train.loss.class_weights",
    "train.loss.label_smoothing",
    "train.augment.rotate_deg",
    "train.augment.scale",
    "train.augment.translate",
    "train.augment.brightness",
    "train.augment.contrast",
    "train.augment.noise",
    "train.augment.gamma",
    "train.augment.hflip",
    "train.early_stopping.metric",
    "train.early_stopping.patience",
    "select.metric",
    "select.goal",
];

fn param_path(path: &str, field: &str) -> String {
    format!("sweep.parameters.{path}.{field}")
}

/// Structural checks of a sweep; value checks happen on each expanded run.
pub fn validate(sweep: &SweepSpec) -> Vec<Issue> {
    let mut issues = Vec::new();
    if sweep.parameters.is_empty() {
        issues.push(Issue::new("sweep.parameters", "the sweep has no parameters; add at least one or remove `sweep`"));
    }
    if sweep.max_runs == Some(0) {
        issues.push(Issue::new("sweep.max_runs", "must be at least 1"));
    }
    if sweep.parallel == Some(0) {
        issues.push(Issue::new("sweep.parallel", "must be at least 1"));
    }
    if let Some(early) = &sweep.early_stop {
        issues.extend(early.validate());
    }
    if sweep.method == Method::Random && sweep.max_runs.is_none() {
        issues.push(Issue::new("sweep.max_runs", "a random sweep needs max_runs (how many runs to draw)"));
    }
    if sweep.method == Method::Tpe && sweep.max_runs.is_none() {
        issues.push(Issue::new("sweep.max_runs", "a tpe sweep needs max_runs (how many runs it may suggest in all)"));
    }
    if sweep.method != Method::Tpe && sweep.startup_runs.is_some() {
        issues.push(Issue::new("sweep.startup_runs", "applies to method: tpe only"));
    }
    for (i, entry) in sweep.enqueue.iter().flatten().enumerate() {
        for path in entry.keys() {
            if !sweep.parameters.contains_key(path) {
                issues.push(Issue::new(
                    format!("sweep.enqueue.{i}"),
                    format!("`{path}` is not one of the sweep's parameters; an enqueued configuration sets sweep parameters only"),
                ));
            }
        }
    }
    if let (Some(max), Some(enqueue)) = (sweep.max_runs, &sweep.enqueue)
        && sweep.method == Method::Tpe
        && enqueue.len() > max as usize
    {
        issues.push(Issue::new("sweep.enqueue", format!("{} configurations enqueued, more than max_runs ({max})", enqueue.len())));
    }
    for (path, param) in &sweep.parameters {
        let here = format!("sweep.parameters.{path}");
        if !SWEEPABLE_PATHS.contains(&path.as_str()) {
            let mut message = format!("`{path}` is not a key of the experiment spec");
            if let Some(c) = closest(path, &SWEEPABLE_PATHS) {
                message.push_str(&format!("; did you mean `{c}`?"));
            }
            issues.push(Issue::new(here, message));
            continue;
        }
        match (&param.values, param.distribution) {
            (Some(_), Some(_)) => issues.push(Issue::new(here, "give either `values` or `distribution`, not both")),
            (None, None) => issues.push(Issue::new(here, "needs `values: [...]` or `distribution` with `min` and `max`")),
            (Some(values), None) => {
                if values.is_empty() {
                    issues.push(Issue::new(param_path(path, "values"), "is empty; list at least one value"));
                }
                if param.min.is_some() || param.max.is_some() {
                    issues.push(Issue::new(here, "`min`/`max` go with `distribution`, not with `values`"));
                }
            }
            (None, Some(distribution)) => {
                if sweep.method == Method::Grid {
                    issues.push(Issue::new(
                        param_path(path, "distribution"),
                        "a grid sweep needs `values`; use method: random to draw from a distribution",
                    ));
                }
                match (param.min, param.max) {
                    (Some(min), Some(max)) => {
                        if !(min.is_finite() && max.is_finite()) || min > max {
                            issues.push(Issue::new(here.clone(), format!("min ({min}) must not exceed max ({max})")));
                        } else if distribution == Distribution::LogUniform && min <= 0.0 {
                            issues.push(Issue::new(param_path(path, "min"), format!("log_uniform needs min > 0, got {min}")));
                        } else if distribution == Distribution::IntUniform && (min.fract() != 0.0 || max.fract() != 0.0) {
                            issues.push(Issue::new(here.clone(), "int_uniform needs whole-number min and max"));
                        }
                    }
                    _ => issues.push(Issue::new(here, "a distribution needs both `min` and `max`")),
                }
            }
        }
    }
    issues
}

/// Four significant digits: sampled learning rates read as 0.0003162, not 0.000316227766.
pub(crate) fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    format!("{x:.3e}").parse().unwrap_or(x)
}

pub(crate) fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
}

fn draw(param: &ParamSpec, rng: &mut SplitMix64) -> Value {
    if let Some(values) = &param.values {
        let i = (rng.next_f64() * values.len() as f64) as usize;
        return values[i.min(values.len() - 1)].clone();
    }
    let (min, max) = (param.min.unwrap_or(0.0), param.max.unwrap_or(0.0));
    let u = rng.next_f64();
    match param.distribution {
        Some(Distribution::LogUniform) => number(round_sig((min.ln() + u * (max.ln() - min.ln())).exp())),
        Some(Distribution::IntUniform) => {
            let span = (max - min + 1.0).floor();
            Value::from((min + (u * span).floor()).min(max) as i64)
        }
        _ => number(round_sig(min + u * (max - min))),
    }
}

/// Writes `value` at a dotted path of a JSON object, creating absent parents.
pub(crate) fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map.entry(part.to_owned()).or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// The parameter combinations of a sweep, before they are applied.
pub(crate) fn combinations(sweep: &SweepSpec, default_seed: u64) -> Vec<Params> {
    match sweep.method {
        Method::Grid => {
            let mut out: Vec<Params> = vec![Params::new()];
            for (path, param) in &sweep.parameters {
                let values = param.values.clone().unwrap_or_default();
                out = out
                    .into_iter()
                    .flat_map(|combo| {
                        values.iter().map(move |v| {
                            let mut c = combo.clone();
                            c.insert(path.clone(), v.clone());
                            c
                        })
                    })
                    .take(MAX_SWEEP_RUNS + 1)
                    .collect();
            }
            if let Some(max) = sweep.max_runs {
                out.truncate(max as usize);
            }
            out
        }
        Method::Random => {
            let mut rng = SplitMix64::new(sweep.seed.unwrap_or(default_seed));
            let n = sweep.max_runs.unwrap_or(1) as usize;
            (0..n.min(MAX_SWEEP_RUNS + 1))
                .map(|_| sweep.parameters.iter().map(|(p, spec)| (p.clone(), draw(spec, &mut rng))).collect())
                .collect()
        }
        // Suggested one at a time by the server (`tpe::suggest`), none at submission.
        Method::Tpe => Vec::new(),
    }
}

/// `model.arch=resnet18 train.optimizer.lr=0.001`
pub fn describe(params: &Params) -> String {
    params
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

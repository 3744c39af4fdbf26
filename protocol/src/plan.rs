//! Parse, don't validate: a spec's source becomes a [`Plan`] -- the spec with every check
//! passed and the runs its sweep expands to -- or the first problem, positioned in the
//! source. The server, the CLI and the tests parse once and use the plan.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::issue::Issue;
use crate::spec::{self, ExperimentSpec, SpecError};
use crate::sweep::{MAX_SWEEP_RUNS, Method, Params, combinations, describe, set_path, validate};

/// One run of an expanded spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// 0-based position in the sweep.
    pub index: u32,
    /// The values this run sets, by dotted path (empty without a sweep).
    pub params: Params,
    /// The complete spec this run trains with (no sweep, defaults resolved).
    pub config: ExperimentSpec,
}

/// A spec that passed every check, with the runs it asks for (one without a sweep).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub spec: ExperimentSpec,
    pub runs: Vec<PlannedRun>,
}

/// The largest spec accepted: a spec is a few KB; this bounds the parser's work.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// The deepest nesting of flow collections (`[...]`, `{...}`) accepted. YAML parsing time
/// grows with the square of that depth; a real spec nests two or three levels.
pub const MAX_FLOW_DEPTH: usize = 32;

/// Refuses, before any parsing, a source too large or nested too deep to be a spec.
fn bounded(source: &str, file: &str) -> Result<(), SpecError> {
    let error =
        |line: usize, message: String| SpecError { file: file.to_owned(), line, column: 0, path: String::new(), message, hint: None };
    if source.len() > MAX_SPEC_BYTES {
        return Err(error(0, format!("the spec is {} KB; a spec is at most {} KB", source.len() / 1024, MAX_SPEC_BYTES / 1024)));
    }
    // Brackets inside quoted scalars do not count; a quote opens a scalar only where one can
    // start (after a space, `:`, `,`, `[`, `{` or at a line's start), so an apostrophe in
    // plain text cannot hide what follows it.
    let (mut depth, mut line, mut quote, mut prev) = (0usize, 1usize, None::<char>, '\n');
    for c in source.chars() {
        let starts_scalar = matches!(prev, '\n' | ' ' | '\t' | ':' | ',' | '[' | '{');
        prev = c;
        match (quote, c) {
            (_, '\n') => line += 1,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if starts_scalar => quote = Some(c),
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(error(line, format!("flow collections (`[`, `{{`) nest deeper than {MAX_FLOW_DEPTH} levels")));
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses, checks and expands a spec. `file` names the source in error messages.
pub fn parse(source: &str, file: &str) -> Result<Plan, SpecError> {
    bounded(source, file)?;
    let spec = spec::deserialize(source, file)?;
    if let Some(issue) = spec::validate(&spec).into_iter().next() {
        return Err(spec::position(source, file, issue));
    }
    match expand(&spec) {
        Ok(runs) => Ok(Plan { spec, runs }),
        Err(issues) => {
            let issue = issues.into_iter().next().unwrap_or_else(|| Issue::new("sweep", "the sweep expands to no runs"));
            Err(spec::position(source, file, issue))
        }
    }
}

/// Expands a spec into the runs it asks for: one without a sweep, else one per
/// combination. Each resolved run is validated like a spec of its own; a bad value is
/// reported at the sweep parameter that produced it.
fn expand(spec: &ExperimentSpec) -> Result<Vec<PlannedRun>, Vec<Issue>> {
    let base = spec::resolved(spec);
    let Some(sweep) = &spec.sweep else {
        return Ok(vec![PlannedRun { index: 0, params: Params::new(), config: base }]);
    };
    let structural = validate(sweep);
    if !structural.is_empty() {
        return Err(structural);
    }
    let mut combos = enqueued(spec);
    combos.extend(combinations(sweep, spec.train.seed));
    if sweep.method == Method::Tpe {
        check_space(spec)?;
    }
    if combos.len() > MAX_SWEEP_RUNS {
        return Err(vec![Issue::new("sweep", format!("expands to more than {MAX_SWEEP_RUNS} runs; set sweep.max_runs to cap it"))]);
    }
    let mut runs = Vec::with_capacity(combos.len());
    for (index, params) in combos.into_iter().enumerate() {
        let config = config_for(spec, &params).map_err(|issue| {
            let path = if issue.path.is_empty() {
                blame(&params)
            } else if params.contains_key(&issue.path) {
                format!("sweep.parameters.{}", issue.path)
            } else {
                issue.path.clone()
            };
            vec![Issue::new(path, format!("run {index} ({}): {}", describe(&params), issue.message))]
        })?;
        runs.push(PlannedRun { index: index as u32, params, config });
    }
    Ok(runs)
}

/// The sweep's enqueued configurations, each completed with the spec's own value of every
/// parameter it leaves out, where the spec has one (a parameter neither sets is left to the
/// spec's default, and TPE does not learn from that run).
fn enqueued(spec: &ExperimentSpec) -> Vec<Params> {
    let Some(sweep) = &spec.sweep else { return Vec::new() };
    let base = serde_json::to_value(spec).unwrap_or(Value::Null);
    sweep
        .enqueue
        .iter()
        .flatten()
        .map(|entry| {
            let mut params = entry.clone();
            for path in sweep.parameters.keys() {
                let own = path.split('.').try_fold(&base, |node, part| node.get(part)).filter(|v| !v.is_null());
                if let (false, Some(value)) = (params.contains_key(path), own) {
                    params.insert(path.clone(), value.clone());
                }
            }
            params
        })
        .collect()
}

/// A TPE sweep's runs are suggested later, one at a time: check now that every value its
/// space can produce makes a valid spec (each parameter at each of its values, or at both
/// ends of its range), so a suggestion never fails.
fn check_space(spec: &ExperimentSpec) -> Result<(), Vec<Issue>> {
    let Some(sweep) = &spec.sweep else { return Ok(()) };
    for (path, dim) in &crate::tpe::Space::of(sweep).0 {
        let values: Vec<Value> = match dim {
            crate::tpe::Dim::Categorical(values) => values.clone(),
            crate::tpe::Dim::Float { low, high, .. } => vec![Value::from(*low), Value::from(*high)],
            crate::tpe::Dim::Int { low, high } => vec![Value::from(*low), Value::from(*high)],
        };
        for value in values {
            let params: Params = [(path.clone(), value.clone())].into_iter().collect();
            config_for(spec, &params).map_err(|issue| {
                vec![Issue::new(format!("sweep.parameters.{path}"), format!("the value {value} gives an invalid run: {}", issue.message))]
            })?;
        }
    }
    Ok(())
}

/// The complete spec one run of `spec`'s sweep trains with: the spec without its sweep,
/// `params` set at their dotted paths, defaults resolved. The server stores a sweep's spec
/// once and each run's params only; this derives a run's config from them, exactly as
/// [`parse`] did when the run was planned. An issue with an empty path is a value that does
/// not fit its field.
pub fn config_for(spec: &ExperimentSpec, params: &Params) -> Result<ExperimentSpec, Issue> {
    let mut json = serde_json::to_value(spec).map_err(|e| Issue::new("", e.to_string()))?;
    if let Value::Object(map) = &mut json {
        map.remove("sweep");
    }
    for (path, value) in params {
        set_path(&mut json, path, value.clone());
    }
    let config: ExperimentSpec = serde_json::from_value(json).map_err(|e| Issue::new("", e.to_string()))?;
    if let Some(issue) = spec::validate(&config).into_iter().next() {
        return Err(issue);
    }
    Ok(spec::resolved(&config))
}

fn blame(params: &Params) -> String {
    match params.keys().next() {
        Some(first) if params.len() == 1 => format!("sweep.parameters.{first}"),
        _ => "sweep.parameters".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_and_huge_specs_are_refused_before_parsing() {
        let deep = format!("name: x\ndescription: it's {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let started = std::time::Instant::now();
        let e = parse(&deep, "deep.yaml").expect_err("refused");
        assert!(e.message.contains("nest deeper"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_millis(200), "refused without parsing");
        let quoted = format!("name: x\ndescription: \"{}\"\n", "[".repeat(100));
        assert!(!parse(&quoted, "q.yaml").expect_err("not a full spec").message.contains("nest deeper"), "brackets in quotes do not count");
        let huge = format!("name: x\ndescription: {}\n", "a".repeat(MAX_SPEC_BYTES));
        assert!(parse(&huge, "huge.yaml").expect_err("refused").message.contains("at most 256 KB"));
    }
}

//! Early stopping decided by the server at epoch boundaries (`sweep.early_stop`).
//!
//! Two rules, both as Optuna defines them so results compare:
//! - `asha` (asynchronous successive halving, the stopping variant of Li et al. 2020, as
//!   Optuna's `SuccessiveHalvingPruner`): rungs at `min_epochs * reduction_factor^k` completed
//!   epochs (before the last epoch). When a run reaches a rung, its best value so far is
//!   recorded there and compared with every value recorded at that rung before it (its
//!   competitors, itself included): it continues only if it is in the top
//!   `len / reduction_factor` of them (the top 1 while fewer than `reduction_factor` have
//!   arrived, so the first run at a rung always continues).
//! - `median` (Optuna's `MedianPruner`): after `min_epochs` completed epochs, a run whose best
//!   value so far is worse than the median of the other runs' best values up to the same epoch
//!   stops, once at least `min_runs` other runs have reached that epoch.
//!
//! The decision for one (run, epoch) is made once, when the worker reports that epoch, and
//! stored with the values it was made from: a restarted server, or a worker that resends the
//! epoch, gets the same answer.

use serde::{Deserialize, Serialize};

use crate::issue::Issue;
use crate::spec::Goal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStopMethod {
    Asha,
    Median,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopSpec {
    pub method: EarlyStopMethod,
    /// The epoch metric compared (default: `select.metric`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Completed epochs before the first decision (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_epochs: Option<u32>,
    /// asha: keep the top 1/reduction_factor at each rung (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduction_factor: Option<u32>,
    /// median: how many other runs must have reached the epoch before a run is stopped
    /// (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_runs: Option<u32>,
}

impl EarlyStopSpec {
    pub fn min_epochs(&self) -> u32 {
        self.min_epochs.unwrap_or(1)
    }

    pub fn reduction_factor(&self) -> u32 {
        self.reduction_factor.unwrap_or(3)
    }

    pub fn min_runs(&self) -> u32 {
        self.min_runs.unwrap_or(3)
    }

    /// The metric compared: `metric`, else the spec's selection metric.
    pub fn metric<'a>(&'a self, select_metric: &'a str) -> &'a str {
        self.metric.as_deref().unwrap_or(select_metric)
    }

    /// Whether larger values are better: the selection goal for the selection metric; for
    /// another metric, smaller is better for losses and larger for everything else.
    pub fn goal(&self, select_metric: &str, select_goal: Goal) -> Goal {
        let metric = self.metric(select_metric);
        if metric == select_metric {
            select_goal
        } else if metric.ends_with("loss") {
            Goal::Minimize
        } else {
            Goal::Maximize
        }
    }

    /// The completed-epoch counts at which a decision is made, for a run of `epochs` epochs
    /// (never at the last epoch: a run that got there has finished anyway).
    pub fn decision_epochs(&self, epochs: u32) -> Vec<u32> {
        let first = self.min_epochs().max(1);
        match self.method {
            EarlyStopMethod::Median => (first..epochs).collect(),
            EarlyStopMethod::Asha => {
                let factor = self.reduction_factor().max(2) as u64;
                let mut rungs = Vec::new();
                let mut rung = first as u64;
                while rung < epochs as u64 {
                    rungs.push(rung as u32);
                    rung *= factor;
                }
                rungs
            }
        }
    }

    /// One line for `cobb submit --dry-run` and the docs.
    pub fn describe(&self, select_metric: &str, select_goal: Goal, epochs: u32) -> String {
        let metric = self.metric(select_metric);
        let better = match self.goal(select_metric, select_goal) {
            Goal::Maximize => "higher",
            Goal::Minimize => "lower",
        };
        let at: Vec<String> = self.decision_epochs(epochs).iter().map(u32::to_string).collect();
        let at = if at.is_empty() { "never (the runs are too short)".to_owned() } else { format!("after epochs {}", at.join(", ")) };
        match self.method {
            EarlyStopMethod::Asha => format!(
                "early stop: asha on {metric} ({better} is better), rungs {at} of {epochs}; at each rung a run continues only \
                 in the top 1/{} of the runs that reached it",
                self.reduction_factor()
            ),
            EarlyStopMethod::Median => format!(
                "early stop: median on {metric} ({better} is better), decided {at} of {epochs}; a run below the median of \
                 the other runs at the same epoch stops (once {} others got there)",
                self.min_runs()
            ),
        }
    }

    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.min_epochs == Some(0) {
            issues.push(Issue::new("sweep.early_stop.min_epochs", "must be at least 1"));
        }
        if self.reduction_factor.is_some_and(|f| f < 2) {
            issues.push(Issue::new("sweep.early_stop.reduction_factor", "must be at least 2"));
        }
        if self.method == EarlyStopMethod::Median && self.reduction_factor.is_some() {
            issues.push(Issue::new("sweep.early_stop.reduction_factor", "applies to method: asha; remove it for median"));
        }
        if self.method == EarlyStopMethod::Asha && self.min_runs.is_some() {
            issues.push(Issue::new("sweep.early_stop.min_runs", "applies to method: median; remove it for asha"));
        }
        if let Some(metric) = &self.metric
            && !(metric.starts_with("val_") || metric.starts_with("train_"))
        {
            issues.push(Issue::new(
                "sweep.early_stop.metric",
                format!("`{metric}` is not an epoch metric; use a val_* or train_* key such as val_macro_f1 or val_recall/<class>"),
            ));
        }
        issues
    }
}

fn better(a: f64, b: f64, goal: Goal) -> bool {
    match goal {
        Goal::Maximize => a > b,
        Goal::Minimize => a < b,
    }
}

/// The best of `values` for `goal` (None when empty).
pub fn best_of(values: impl IntoIterator<Item = f64>, goal: Goal) -> Option<f64> {
    values.into_iter().fold(None, |best, v| match best {
        Some(b) if !better(v, b, goal) => Some(b),
        _ => Some(v),
    })
}

/// What was decided for one run at one epoch, with what it was decided from.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub stop: bool,
    /// The value a run had to reach (or beat) to continue, when there was a comparison.
    pub threshold: Option<f64>,
    /// How many values took part (the run's own included).
    pub compared: usize,
}

/// ASHA at one rung: `value` is the run's best so far; `earlier` the values recorded at this
/// rung by the runs that reached it before (in any order).
pub fn asha(value: f64, earlier: &[f64], reduction_factor: u32, goal: Goal) -> Decision {
    let mut all: Vec<f64> = earlier.to_vec();
    all.push(value);
    // Best first.
    all.sort_by(|a, b| match goal {
        Goal::Maximize => b.total_cmp(a),
        Goal::Minimize => a.total_cmp(b),
    });
    let keep = (all.len() / reduction_factor.max(2) as usize).max(1);
    let threshold = all[keep - 1];
    let stop = better(threshold, value, goal);
    Decision { stop, threshold: Some(threshold), compared: all.len() }
}

/// The median rule: `value` is the run's best so far; `others` the other runs' best values up
/// to the same epoch.
pub fn median(value: f64, others: &[f64], min_runs: u32, goal: Goal) -> Decision {
    if others.len() < min_runs as usize || others.is_empty() {
        return Decision { stop: false, threshold: None, compared: others.len() + 1 };
    }
    let mut sorted = others.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mid = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Decision { stop: better(mid, value, goal), threshold: Some(mid), compared: n + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: EarlyStopMethod) -> EarlyStopSpec {
        EarlyStopSpec { method, metric: None, min_epochs: Some(2), reduction_factor: None, min_runs: None }
    }

    #[test]
    fn asha_rungs_and_the_top_fraction() {
        let s = spec(EarlyStopMethod::Asha);
        assert_eq!(s.decision_epochs(20), vec![2, 6, 18]);
        assert_eq!(s.decision_epochs(18), vec![2, 6]);
        assert_eq!(s.decision_epochs(2), Vec::<u32>::new());
        // The first run at a rung always continues; the second only if it is the better.
        assert!(!asha(0.5, &[], 3, Goal::Maximize).stop);
        assert!(asha(0.4, &[0.5], 3, Goal::Maximize).stop);
        assert!(!asha(0.6, &[0.5], 3, Goal::Maximize).stop);
        // Six at the rung: the top two continue (ties with the threshold continue).
        let earlier = [0.9, 0.8, 0.7, 0.6, 0.5];
        assert!(!asha(0.8, &earlier, 3, Goal::Maximize).stop);
        assert!(asha(0.75, &earlier, 3, Goal::Maximize).stop);
        let d = asha(0.85, &earlier, 3, Goal::Maximize);
        assert_eq!((d.stop, d.threshold, d.compared), (false, Some(0.85), 6));
        // Losses: lower is better.
        assert!(!asha(0.1, &[0.2, 0.3], 3, Goal::Minimize).stop);
        assert!(asha(0.3, &[0.2, 0.1], 3, Goal::Minimize).stop);
    }

    #[test]
    fn median_needs_enough_others_and_compares_with_their_median() {
        assert!(!median(0.1, &[0.5, 0.6], 3, Goal::Maximize).stop, "too few others");
        let d = median(0.4, &[0.3, 0.5, 0.6, 0.7], 3, Goal::Maximize);
        assert_eq!((d.stop, d.threshold), (true, Some(0.55)));
        assert!(!median(0.55, &[0.3, 0.5, 0.6, 0.7], 3, Goal::Maximize).stop, "at the median continues");
        assert!(median(0.9, &[0.3, 0.5, 0.6], 3, Goal::Minimize).stop);
        assert_eq!(spec(EarlyStopMethod::Median).decision_epochs(5), vec![2, 3, 4]);
    }

    #[test]
    fn goals_follow_the_selection_or_the_metric_name() {
        let mut s = spec(EarlyStopMethod::Asha);
        assert_eq!(s.goal("val_macro_f1", Goal::Maximize), Goal::Maximize);
        s.metric = Some("val_loss".to_owned());
        assert_eq!(s.goal("val_macro_f1", Goal::Maximize), Goal::Minimize);
        s.metric = Some("test_accuracy".to_owned());
        assert_eq!(s.validate().len(), 1);
        assert_eq!(best_of([0.3, 0.7, 0.5], Goal::Maximize), Some(0.7));
        assert_eq!(best_of([0.3, 0.7, 0.5], Goal::Minimize), Some(0.3));
    }
}

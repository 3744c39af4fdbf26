//! Which hyperparameters matter: PED-ANOVA (Watanabe, Bansal and Hutter, IJCAI 2023), as
//! Optuna's `PedAnovaImportanceEvaluator` computes it.
//!
//! For each parameter, the importance is the Pearson divergence between the parameter's
//! distribution among the top 10% of the finished runs and among all of them:
//! `sum_x p_all(x) (p_top(x) / p_all(x) - 1)^2`. A parameter whose good runs look like all
//! runs does not matter; one whose good runs sit in a corner does. Numeric parameters are
//! estimated with a Gaussian kernel density (Scott's bandwidth, in log space for
//! `log_uniform`) on 50 grid points; categorical ones by counts with one pseudo-count each.
//! Importances are normalised to sum to 1.
//!
//! Why PED-ANOVA and not fANOVA: it needs no random forest, is linear in the number of runs
//! (a page can compute it on every view), and is meant for the small, local question a tuning
//! study asks ("what do the good runs have in common?"); fANOVA explains the global variance
//! of a forest fitted to the whole space.

use crate::spec::Goal;
use crate::tpe::{Dim, Observation, Space};

const GRID: usize = 50;
/// The top fraction of finished runs compared with all of them.
pub const TOP_QUANTILE: f64 = 0.1;
/// Fewer finished runs than this and importances mean nothing.
pub const MIN_RUNS: usize = 6;

/// Each parameter's share of importance, in the space's order (empty with fewer than
/// [`MIN_RUNS`] finished runs). Infeasible runs count as finished but never as top.
pub fn ped_anova(space: &Space, history: &[Observation], goal: Goal) -> Vec<(String, f64)> {
    let mut finished: Vec<&Observation> = history.iter().filter(|o| o.value.is_some()).collect();
    if finished.len() < MIN_RUNS {
        return Vec::new();
    }
    finished.sort_by(|a, b| {
        let (va, vb) = (a.value.unwrap_or(f64::NAN), b.value.unwrap_or(f64::NAN));
        let by_value = match goal {
            Goal::Maximize => vb.total_cmp(&va),
            Goal::Minimize => va.total_cmp(&vb),
        };
        b.feasible.cmp(&a.feasible).then(by_value)
    });
    let n_top = ((TOP_QUANTILE * finished.len() as f64).ceil() as usize).max(2);
    let raw: Vec<(String, f64)> = space
        .0
        .iter()
        .map(|(path, dim)| {
            let column = |runs: &[&Observation]| -> Vec<f64> { runs.iter().filter_map(|o| encode(dim, o.params.get(path)?)).collect() };
            let (all, top) = (column(&finished), column(&finished[..n_top]));
            (path.clone(), divergence(dim, &top, &all))
        })
        .collect();
    let total: f64 = raw.iter().map(|(_, v)| v).sum();
    raw.into_iter().map(|(p, v)| (p, if total > 0.0 { v / total } else { 0.0 })).collect()
}

fn encode(dim: &Dim, value: &serde_json::Value) -> Option<f64> {
    match dim {
        Dim::Categorical(values) => values.iter().position(|v| v == value).map(|i| i as f64),
        Dim::Float { log: true, .. } => value.as_f64().filter(|x| *x > 0.0).map(f64::ln),
        _ => value.as_f64(),
    }
}

/// Pearson divergence of the top runs' distribution from all runs' on one parameter.
fn divergence(dim: &Dim, top: &[f64], all: &[f64]) -> f64 {
    if top.is_empty() || all.is_empty() {
        return 0.0;
    }
    let (p_top, p_all) = match dim {
        Dim::Categorical(values) => (counts(values.len(), top), counts(values.len(), all)),
        Dim::Float { low, high, log } => {
            let (lo, hi) = if *log { (low.ln(), high.ln()) } else { (*low, *high) };
            (density(lo, hi, top), density(lo, hi, all))
        }
        Dim::Int { low, high } => (density(*low as f64, *high as f64, top), density(*low as f64, *high as f64, all)),
    };
    p_top.iter().zip(&p_all).map(|(t, a)| if *a > 0.0 { t * t / a } else { 0.0 }).sum::<f64>() - 1.0
}

fn counts(k: usize, xs: &[f64]) -> Vec<f64> {
    let mut c = vec![1.0; k];
    for &x in xs {
        c[(x as usize).min(k - 1)] += 1.0;
    }
    let total: f64 = c.iter().sum();
    c.into_iter().map(|v| v / total).collect()
}

/// A Gaussian kernel density on GRID points of [lo, hi], normalised to sum to 1.
fn density(lo: f64, hi: f64, xs: &[f64]) -> Vec<f64> {
    let range = (hi - lo).max(1e-12);
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let bandwidth = (1.06 * sd * n.powf(-0.2)).max(range / GRID as f64);
    let grid: Vec<f64> = (0..GRID).map(|i| lo + range * (i as f64 + 0.5) / GRID as f64).collect();
    let p: Vec<f64> = grid.iter().map(|g| xs.iter().map(|x| (-0.5 * ((g - x) / bandwidth).powi(2)).exp()).sum::<f64>()).collect();
    let total: f64 = p.iter().sum();
    p.into_iter().map(|v| v / total.max(1e-300)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_parameter_the_objective_depends_on_matters_most() {
        let space = Space(vec![
            ("train.optimizer.lr".to_owned(), Dim::Float { low: 1e-5, high: 1e-1, log: true }),
            ("model.dropout".to_owned(), Dim::Float { low: 0.0, high: 0.5, log: false }),
            ("model.arch".to_owned(), Dim::Categorical(vec![json!("a"), json!("b")])),
        ]);
        let mut rng = crate::rng::SplitMix64::new(3);
        let history: Vec<Observation> = (0..60)
            .map(|_| {
                let lr = (rng.range(1e-5f64.ln(), 1e-1f64.ln())).exp();
                let dropout = rng.range(0.0, 0.5);
                let arch = if rng.chance(0.5) { "a" } else { "b" };
                // Only the learning rate matters.
                let value = -(lr.log10() + 3.0).powi(2);
                let params = [
                    ("train.optimizer.lr".to_owned(), json!(lr)),
                    ("model.dropout".to_owned(), json!(dropout)),
                    ("model.arch".to_owned(), json!(arch)),
                ]
                .into_iter()
                .collect();
                Observation { params, value: Some(value), feasible: true }
            })
            .collect();
        let importance = ped_anova(&space, &history, Goal::Maximize);
        assert_eq!(importance.len(), 3);
        assert!((importance.iter().map(|(_, v)| v).sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(importance[0].1 > 0.6, "{importance:?}");
        assert!(ped_anova(&space, &history[..4], Goal::Maximize).is_empty(), "too few runs");
    }
}

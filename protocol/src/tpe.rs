//! The tree-structured Parzen estimator behind `method: tpe`: multivariate, as Optuna's
//! `TPESampler(multivariate=True, constant_liar=True)`, written for cobb so that a suggestion
//! depends only on the sweep's seed, the run's index and the history handed in (which the
//! server reads from its database; nothing is kept in memory between suggestions).
//!
//! - The first `startup` runs (default 10) are seeded random draws, as `method: random`.
//! - Then the finished runs are ranked (feasible before infeasible, then by the objective) and
//!   split: the best `gamma(n) = min(ceil(0.1 n), 25)` are "good", the rest "bad"; runs still
//!   running count as bad with the worst value (the constant liar: idle workers asking at once
//!   are steered away from what is already being tried).
//! - Each group becomes a Parzen estimator over all parameters jointly: one kernel per run
//!   (a truncated normal per numeric parameter, in log space for `log_uniform`, with Optuna's
//!   bandwidth `0.2 (high - low) n^(-1/(d+4))`, at least `(high - low) / min(100, n + 1)`; a
//!   categorical kernel with weight 1 on the run's value plus 1/k on every value) plus one
//!   prior kernel (wide normal, uniform categorical), equally weighted.
//! - 24 candidates are drawn from the good estimator; the one with the largest
//!   `log l(x) - log g(x)` is suggested.

use serde_json::Value;

use crate::rng::SplitMix64;
use crate::spec::Goal;
use crate::sweep::{Distribution, Params, SweepSpec};

/// One dimension of the search space.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Categorical(Vec<Value>),
    Float { low: f64, high: f64, log: bool },
    Int { low: i64, high: i64 },
}

impl Dim {
    /// The kernel-space interval (log for log floats; integers widened by a half on each side).
    fn bounds(&self) -> (f64, f64) {
        match self {
            Dim::Float { low, high, log: true } => (low.ln(), high.ln()),
            Dim::Float { low, high, .. } => (*low, *high),
            Dim::Int { low, high } => (*low as f64 - 0.5, *high as f64 + 0.5),
            Dim::Categorical(values) => (0.0, values.len() as f64),
        }
    }

    /// A parameter value in kernel space (the index for a categorical); None when it does not
    /// belong to the dimension (an enqueued value outside it, say).
    fn encode(&self, value: &Value) -> Option<f64> {
        match self {
            Dim::Categorical(values) => values.iter().position(|v| v == value).map(|i| i as f64),
            Dim::Float { log, .. } => {
                let x = value.as_f64()?;
                if *log { (x > 0.0).then(|| x.ln()) } else { Some(x) }
            }
            Dim::Int { .. } => value.as_f64(),
        }
    }

    fn decode(&self, x: f64) -> Value {
        match self {
            Dim::Categorical(values) => values[(x as usize).min(values.len() - 1)].clone(),
            Dim::Float { low, high, log } => {
                let v = if *log { x.exp() } else { x };
                crate::sweep::number(crate::sweep::round_sig(v.clamp(*low, *high)))
            }
            Dim::Int { low, high } => Value::from((x.round() as i64).clamp(*low, *high)),
        }
    }
}

/// The search space of a sweep: its parameters by dotted path, in path order.
#[derive(Debug, Clone, PartialEq)]
pub struct Space(pub Vec<(String, Dim)>);

impl Space {
    pub fn of(sweep: &SweepSpec) -> Self {
        Space(
            sweep
                .parameters
                .iter()
                .map(|(path, p)| {
                    let dim = match (&p.values, p.distribution) {
                        (Some(values), _) => Dim::Categorical(values.clone()),
                        (None, Some(Distribution::IntUniform)) => {
                            Dim::Int { low: p.min.unwrap_or(0.0) as i64, high: p.max.unwrap_or(0.0) as i64 }
                        }
                        (None, d) => {
                            Dim::Float { low: p.min.unwrap_or(0.0), high: p.max.unwrap_or(0.0), log: d == Some(Distribution::LogUniform) }
                        }
                    };
                    (path.clone(), dim)
                })
                .collect(),
        )
    }
}

/// A run of the sweep as the sampler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub params: Params,
    /// The objective at the run's best epoch; None while it runs (or is queued).
    pub value: Option<f64>,
    /// Whether it meets the experiment's constraints (running runs: true).
    pub feasible: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub seed: u64,
    pub startup: usize,
    pub candidates: usize,
    pub goal: Goal,
}

const PRIOR_WEIGHT: f64 = 1.0;
const SIGMA0: f64 = 0.2;

/// The parameters of run number `index` of the sweep, given every earlier run (in run order).
pub fn suggest(space: &Space, history: &[Observation], index: u64, settings: &Settings) -> Params {
    let mut rng = SplitMix64::new(settings.seed).fork(index.wrapping_add(0x7E5E_0000_0000));
    let finished: Vec<&Observation> = history.iter().filter(|o| o.value.is_some()).collect();
    if finished.len() < settings.startup || space.0.is_empty() {
        return random(space, &mut rng);
    }
    // Rank: feasible first, then the objective (best first); ties keep run order.
    let mut ranked: Vec<&Observation> = finished.clone();
    ranked.sort_by(|a, b| {
        let (va, vb) = (a.value.unwrap_or(f64::NAN), b.value.unwrap_or(f64::NAN));
        let by_value = match settings.goal {
            Goal::Maximize => vb.total_cmp(&va),
            Goal::Minimize => va.total_cmp(&vb),
        };
        b.feasible.cmp(&a.feasible).then(by_value)
    });
    let n = history.len();
    let n_good = ((0.1 * n as f64).ceil() as usize).clamp(1, 25).min(ranked.len());
    let good: Vec<Vec<f64>> = ranked[..n_good].iter().filter_map(|o| encode(space, &o.params)).collect();
    // The rest of the finished runs, and the running ones with the worst value (the liar).
    let mut bad: Vec<Vec<f64>> = ranked[n_good..].iter().filter_map(|o| encode(space, &o.params)).collect();
    bad.extend(history.iter().filter(|o| o.value.is_none()).filter_map(|o| encode(space, &o.params)));
    if good.is_empty() {
        return random(space, &mut rng);
    }
    let l = Parzen::new(space, &good);
    let g = Parzen::new(space, &bad);
    let mut best: Option<(f64, Vec<f64>)> = None;
    for _ in 0..settings.candidates.max(1) {
        let x = l.sample(space, &mut rng);
        let score = l.log_density(&x) - g.log_density(&x);
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, x));
        }
    }
    let x = best.map(|b| b.1).unwrap_or_default();
    space.0.iter().zip(&x).map(|((path, dim), v)| (path.clone(), dim.decode(*v))).collect()
}

/// A seeded random draw of every parameter (the start-up runs).
fn random(space: &Space, rng: &mut SplitMix64) -> Params {
    space
        .0
        .iter()
        .map(|(path, dim)| {
            let (lo, hi) = dim.bounds();
            let x = match dim {
                Dim::Categorical(values) => rng.below(values.len()) as f64,
                _ => rng.range(lo, hi),
            };
            (path.clone(), dim.decode(x))
        })
        .collect()
}

fn encode(space: &Space, params: &Params) -> Option<Vec<f64>> {
    space.0.iter().map(|(path, dim)| params.get(path).and_then(|v| dim.encode(v))).collect()
}

/// One Parzen estimator: kernels centred on observations, plus the prior.
struct Parzen {
    /// Per component, per dimension: (mu, sigma) for numeric dims, or the category weights.
    components: Vec<Vec<Kernel>>,
}

enum Kernel {
    /// `log_norm`: the log of the density's constant, truncation to the range included
    /// (computed once: it does not depend on the point).
    Normal { mu: f64, sigma: f64, log_norm: f64 },
    /// Probabilities and their logs.
    Categorical(Vec<f64>, Vec<f64>),
}

impl Kernel {
    fn normal(dim: &Dim, mu: f64, sigma: f64) -> Kernel {
        let (lo, hi) = dim.bounds();
        let mass = (normal_cdf((hi - mu) / sigma) - normal_cdf((lo - mu) / sigma)).max(1e-300);
        Kernel::Normal { mu, sigma, log_norm: -(sigma * std::f64::consts::TAU.sqrt()).ln() - mass.ln() }
    }

    fn categorical(w: Vec<f64>) -> Kernel {
        let logs = w.iter().map(|p| p.max(1e-300).ln()).collect();
        Kernel::Categorical(w, logs)
    }
}

impl Parzen {
    fn new(space: &Space, points: &[Vec<f64>]) -> Self {
        let n = points.len().max(1) as f64;
        let d = space.0.len() as f64;
        let mut components = Vec::with_capacity(points.len() + 1);
        for p in points {
            components.push(
                space
                    .0
                    .iter()
                    .zip(p)
                    .map(|((_, dim), &x)| match dim {
                        Dim::Categorical(values) => {
                            let k = values.len();
                            let mut w = vec![PRIOR_WEIGHT / k as f64; k];
                            w[(x as usize).min(k - 1)] += 1.0;
                            let total: f64 = w.iter().sum();
                            Kernel::categorical(w.into_iter().map(|v| v / total).collect())
                        }
                        _ => {
                            let (lo, hi) = dim.bounds();
                            let range = hi - lo;
                            let sigma = (SIGMA0 * range * n.powf(-1.0 / (d + 4.0))).clamp(range / (n + 1.0).min(100.0), range);
                            Kernel::normal(dim, x, sigma.max(1e-12))
                        }
                    })
                    .collect(),
            );
        }
        // The prior: wide and uninformed.
        components.push(
            space
                .0
                .iter()
                .map(|(_, dim)| match dim {
                    Dim::Categorical(values) => Kernel::categorical(vec![1.0 / values.len() as f64; values.len()]),
                    _ => {
                        let (lo, hi) = dim.bounds();
                        Kernel::normal(dim, (lo + hi) / 2.0, (hi - lo).max(1e-12))
                    }
                })
                .collect(),
        );
        Parzen { components }
    }

    fn sample(&self, space: &Space, rng: &mut SplitMix64) -> Vec<f64> {
        let component = &self.components[rng.below(self.components.len())];
        space
            .0
            .iter()
            .zip(component)
            .map(|((_, dim), kernel)| match kernel {
                Kernel::Categorical(w, _) => {
                    let mut u = rng.next_f64();
                    for (i, p) in w.iter().enumerate() {
                        if u < *p {
                            return i as f64;
                        }
                        u -= p;
                    }
                    (w.len() - 1) as f64
                }
                Kernel::Normal { mu, sigma, .. } => {
                    let (lo, hi) = dim.bounds();
                    for _ in 0..100 {
                        let x = mu + sigma * rng.normal();
                        if (lo..=hi).contains(&x) {
                            return x;
                        }
                    }
                    mu.clamp(lo, hi)
                }
            })
            .collect()
    }

    fn log_density(&self, x: &[f64]) -> f64 {
        let logs: Vec<f64> = self
            .components
            .iter()
            .map(|component| {
                component
                    .iter()
                    .zip(x)
                    .map(|(kernel, &v)| match kernel {
                        Kernel::Categorical(_, logs) => logs[(v as usize).min(logs.len() - 1)],
                        Kernel::Normal { mu, sigma, log_norm } => {
                            let z = (v - mu) / sigma;
                            log_norm - 0.5 * z * z
                        }
                    })
                    .sum::<f64>()
            })
            .collect();
        // log of the equally weighted mixture, computed stably.
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max + (logs.iter().map(|l| (l - max).exp()).sum::<f64>() / logs.len() as f64).ln()
    }
}

/// The standard normal CDF through erfc (W. J. Cody's rational approximation as in Numerical
/// Recipes' `erfcc`: relative error below 1.2e-7 everywhere, enough for kernel masses).
fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn space() -> Space {
        Space(vec![
            ("model.arch".to_owned(), Dim::Categorical(vec![json!("a"), json!("b"), json!("c")])),
            ("train.optimizer.lr".to_owned(), Dim::Float { low: 1e-5, high: 1e-1, log: true }),
            ("train.batch_size".to_owned(), Dim::Int { low: 4, high: 64 }),
        ])
    }

    fn settings() -> Settings {
        Settings { seed: 7, startup: 5, candidates: 24, goal: Goal::Maximize }
    }

    /// A made-up objective: best at arch b, lr 1e-3, batch 16.
    fn objective(p: &Params) -> f64 {
        let arch = if p["model.arch"] == json!("b") { 0.0 } else { 0.3 };
        let lr = p["train.optimizer.lr"].as_f64().expect("lr").log10() + 3.0;
        let batch = (p["train.batch_size"].as_f64().expect("batch") - 16.0) / 32.0;
        1.0 - arch - 0.1 * lr * lr - batch * batch
    }

    fn run(settings: &Settings, budget: u64) -> (Vec<Observation>, f64) {
        let s = space();
        let mut history = Vec::new();
        for i in 0..budget {
            let params = suggest(&s, &history, i, settings);
            let value = objective(&params);
            history.push(Observation { params, value: Some(value), feasible: true });
        }
        let best = history.iter().filter_map(|o| o.value).fold(f64::NEG_INFINITY, f64::max);
        (history, best)
    }

    #[test]
    fn the_same_seed_and_history_give_the_same_suggestion() {
        let (history, _) = run(&settings(), 12);
        let s = space();
        assert_eq!(suggest(&s, &history, 12, &settings()), suggest(&s, &history, 12, &settings()));
        let other = Settings { seed: 8, ..settings() };
        assert_ne!(suggest(&s, &history, 12, &settings()), suggest(&s, &history, 12, &other));
        // Every suggestion lies in the space.
        for o in &history {
            let lr = o.params["train.optimizer.lr"].as_f64().expect("lr");
            let batch = o.params["train.batch_size"].as_i64().expect("batch");
            assert!((1e-5..=1e-1).contains(&lr) && (4..=64).contains(&batch), "{:?}", o.params);
        }
    }

    #[test]
    fn tpe_beats_random_search_on_a_smooth_objective() {
        // Median over seeds of the best value after 40 runs: TPE (5 random start-up runs)
        // against 40 random runs.
        let mut tpe = Vec::new();
        let mut random = Vec::new();
        for seed in 0..15 {
            tpe.push(run(&Settings { seed, ..settings() }, 40).1);
            random.push(run(&Settings { seed, startup: 1000, ..settings() }, 40).1);
        }
        tpe.sort_by(f64::total_cmp);
        random.sort_by(f64::total_cmp);
        assert!(tpe[7] > random[7] + 0.01, "median best: tpe {} vs random {}", tpe[7], random[7]);
    }

    #[test]
    fn running_runs_steer_the_next_suggestion_away() {
        let (mut history, _) = run(&settings(), 10);
        let s = space();
        let alone = suggest(&s, &history, 10, &settings());
        let without_liar = suggest(&s, &history, 11, &settings());
        history.push(Observation { params: alone.clone(), value: None, feasible: true });
        let next = suggest(&s, &history, 11, &settings());
        assert_ne!(next, without_liar, "the running run changed what is suggested next");
        assert_ne!(alone, next, "a second idle worker gets another configuration");
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975_002_1).abs() < 1e-6);
        assert!((normal_cdf(-3.0) - 0.001_349_9).abs() < 1e-6);
    }
}

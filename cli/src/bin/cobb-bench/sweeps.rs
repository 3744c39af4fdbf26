//! `cobb-bench sweeps`: sampler quality and early-stopping savings on a deterministic
//! training-curve simulator, the same one `scripts/optuna_peer.py` runs for Optuna.
//!
//! The simulator: a function of learning rate, weight decay, batch size, dropout and
//! architecture (the best learning rate depends on the architecture, so the parameters
//! interact) giving a final validation score, and a per-epoch curve that rises towards it,
//! slower the further the learning rate is from its best, with noise from SplitMix64 keyed by
//! (seed, trial, epoch). Regret: the best possible final score minus the true final score of
//! the best configuration a sampler found.

use clap::Args;
use protocol::early_stop;
use protocol::rng::SplitMix64;
use protocol::spec::Goal;
use protocol::tpe::{self, Dim, Observation, Settings, Space};
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct SweepsArgs {
    /// Seeds per budget.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Runs per study.
    #[arg(long, value_delimiter = ',', default_values_t = [30, 60])]
    budgets: Vec<usize>,
    /// Configurations in the early-stopping comparison.
    #[arg(long, default_value_t = 30)]
    asha_configs: usize,
    /// Write every study's result as JSON lines here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub const EPOCHS: usize = 20;
const ARCHS: [&str; 3] = ["efficientnet_b0", "efficientnet_b3", "efficientnet_b6"];

pub fn space() -> Space {
    Space(vec![
        ("model.arch".to_owned(), Dim::Categorical(ARCHS.iter().map(|a| json!(a)).collect())),
        ("model.dropout".to_owned(), Dim::Float { low: 0.0, high: 0.5, log: false }),
        ("train.batch_size".to_owned(), Dim::Int { low: 4, high: 64 }),
        ("train.optimizer.lr".to_owned(), Dim::Float { low: 1e-5, high: 1e-1, log: true }),
        ("train.optimizer.weight_decay".to_owned(), Dim::Float { low: 1e-6, high: 1e-2, log: true }),
    ])
}

fn arch_terms(arch: &str) -> (f64, f64) {
    match arch {
        "efficientnet_b0" => (0.0, -3.0),
        "efficientnet_b3" => (0.03, -3.3),
        _ => (0.05, -3.6),
    }
}

/// The true final validation score of a configuration.
pub fn final_score(p: &Value) -> f64 {
    let (base, best_lr) = arch_terms(p["model.arch"].as_str().unwrap_or(""));
    let lr = p["train.optimizer.lr"].as_f64().unwrap_or(1e-3).log10();
    let wd = p["train.optimizer.weight_decay"].as_f64().unwrap_or(1e-4).log10();
    let batch = p["train.batch_size"].as_f64().unwrap_or(16.0).log2();
    let dropout = p["model.dropout"].as_f64().unwrap_or(0.2);
    let q =
        base - 0.04 * (lr - best_lr).powi(2) - 0.01 * (wd + 4.0).powi(2) - 0.005 * (batch - 4.0).powi(2) - 0.1 * (dropout - 0.2).powi(2);
    0.55 + 0.4 * q.exp()
}

/// The best possible final score (b6 at its best learning rate, weight decay 1e-4, batch 16,
/// dropout 0.2).
pub fn optimum() -> f64 {
    0.55 + 0.4 * 0.05f64.exp()
}

/// The observed validation score after epoch `epoch` (0-based) of trial `trial`.
pub fn curve(p: &Value, seed: u64, trial: u64, epoch: usize) -> f64 {
    let (_, best_lr) = arch_terms(p["model.arch"].as_str().unwrap_or(""));
    let lr = p["train.optimizer.lr"].as_f64().unwrap_or(1e-3).log10();
    let tau = 2.0 + 3.0 * (lr - best_lr).abs();
    let noise = SplitMix64::new(seed.wrapping_mul(1_000_003).wrapping_add(trial)).fork(epoch as u64).next_f64() - 0.5;
    final_score(p) * (1.0 - (-((epoch + 1) as f64) / tau).exp()) + 0.02 * noise
}

/// The observed objective of a full run: its best epoch's score.
fn observed(p: &Value, seed: u64, trial: u64) -> f64 {
    (0..EPOCHS).map(|e| curve(p, seed, trial, e)).fold(f64::NEG_INFINITY, f64::max)
}

/// One sequential study of `budget` runs; returns its regret.
fn study(seed: u64, budget: usize, startup: usize) -> f64 {
    let s = space();
    let settings = Settings { seed, startup, candidates: 24, goal: Goal::Maximize };
    let mut history: Vec<Observation> = Vec::new();
    let mut best_true = f64::NEG_INFINITY;
    for i in 0..budget {
        let params = tpe::suggest(&s, &history, i as u64, &settings);
        let p = Value::Object(params.clone().into_iter().collect());
        best_true = best_true.max(final_score(&p));
        history.push(Observation { params, value: Some(observed(&p, seed, i as u64)), feasible: true });
    }
    optimum() - best_true
}

/// Random configurations run one after another, with or without ASHA (min_epochs 2,
/// reduction factor 3: rungs after epochs 2, 6 and 18 of 20). Returns (epochs consumed, the
/// true final score of the best configuration that ran to the end).
fn asha_study(seed: u64, configs: usize, asha: bool) -> (usize, f64) {
    let s = space();
    let settings = Settings { seed, startup: usize::MAX, candidates: 1, goal: Goal::Maximize };
    let rule = early_stop::EarlyStopSpec {
        method: early_stop::EarlyStopMethod::Asha,
        metric: None,
        min_epochs: Some(2),
        reduction_factor: Some(3),
        min_runs: None,
    };
    let rungs = rule.decision_epochs(EPOCHS as u32);
    let mut recorded: Vec<Vec<f64>> = vec![Vec::new(); rungs.len()];
    let (mut epochs, mut best) = (0, f64::NEG_INFINITY);
    for i in 0..configs {
        let params = tpe::suggest(&s, &[], i as u64, &settings);
        let p = Value::Object(params.into_iter().collect());
        let mut so_far = f64::NEG_INFINITY;
        let mut stopped = false;
        for e in 0..EPOCHS {
            epochs += 1;
            so_far = so_far.max(curve(&p, seed, i as u64, e));
            if let Some(r) = rungs.iter().position(|&r| r as usize == e + 1).filter(|_| asha) {
                let decision = early_stop::asha(so_far, &recorded[r], 3, Goal::Maximize);
                recorded[r].push(so_far);
                if decision.stop {
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            best = best.max(final_score(&p));
        }
    }
    (epochs, best)
}

/// Quartiles by linear interpolation between order statistics (Python's
/// `statistics.quantiles(method="inclusive")`, which the peer script uses).
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let h = (v.len() - 1) as f64 * q;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        v[lo] + (h - lo as f64) * (v[hi] - v[lo])
    };
    (at(0.25), at(0.5), at(0.75))
}

pub fn sweeps_bench(args: &SweepsArgs) -> anyhow::Result<()> {
    let check = json!({"model.arch": "efficientnet_b3", "model.dropout": 0.1, "train.batch_size": 32,
                       "train.optimizer.lr": 0.001, "train.optimizer.weight_decay": 0.0001});
    println!(
        "simulator check: final {:.6}, epoch 3 of trial 7 seed 5 {:.6} (optuna_peer.py prints the same)",
        final_score(&check),
        curve(&check, 5, 7, 3)
    );
    let mut lines = Vec::new();
    for &budget in &args.budgets {
        for (name, startup) in [("random", usize::MAX), ("cobb-tpe", 10)] {
            let regrets: Vec<f64> = (0..args.seeds).map(|seed| study(seed, budget, startup)).collect();
            for (seed, r) in regrets.iter().enumerate() {
                lines.push(json!({"sampler": name, "budget": budget, "seed": seed, "regret": r}));
            }
            let (q1, med, q3) = quartiles(regrets);
            println!("{name:<9} {budget:>3} runs: regret median {med:.4} (quartiles {q1:.4}-{q3:.4}) over {} seeds", args.seeds);
        }
    }
    let mut full = Vec::new();
    let mut pruned = Vec::new();
    for seed in 0..args.seeds {
        let (e_full, b_full) = asha_study(seed, args.asha_configs, false);
        let (e_asha, b_asha) = asha_study(seed, args.asha_configs, true);
        lines.push(json!({"asha": false, "seed": seed, "epochs": e_full, "best": b_full}));
        lines.push(json!({"asha": true, "seed": seed, "epochs": e_asha, "best": b_asha}));
        full.push((e_full as f64, b_full));
        pruned.push((e_asha as f64, b_asha));
    }
    let ratio: Vec<f64> = full.iter().zip(&pruned).map(|(f, p)| f.0 / p.0).collect();
    let loss: Vec<f64> = full.iter().zip(&pruned).map(|(f, p)| (f.1 - p.1) / f.1 * 100.0).collect();
    let (r1, rm, r3) = quartiles(ratio);
    let (l1, lm, l3) = quartiles(loss);
    println!(
        "asha (min_epochs 2, reduction_factor 3) on {} random configurations x {EPOCHS} epochs: {rm:.2}x fewer epochs \
         (quartiles {r1:.2}-{r3:.2}); best true score {lm:.2}% below the full sweep's (quartiles {l1:.2}-{l3:.2})",
        args.asha_configs
    );
    if let Some(path) = &args.json {
        let text: Vec<String> = lines.iter().map(Value::to_string).collect();
        std::fs::write(path, text.join("\n") + "\n")?;
    }
    Ok(())
}

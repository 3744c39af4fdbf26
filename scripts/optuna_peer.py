#!/usr/bin/env python3
"""The peer of `cobb-bench sweeps`: Optuna's TPE (multivariate, 10 random start-up trials) on
the same training-curve simulator, the same seeds and budgets, sequential trials.

    ~/.cache/cobb-peers/bin/pip install optuna
    ~/.cache/cobb-peers/bin/python scripts/optuna_peer.py [--seeds 20] [--budgets 30,60] [--json FILE]

The simulator is cli/src/bin/cobb-bench/sweeps.rs line for line (SplitMix64 noise included);
both print a check value first, which must agree.
"""
import argparse
import json
import math
import statistics

import optuna

M = (1 << 64) - 1
EPOCHS = 20
ARCHS = ["efficientnet_b0", "efficientnet_b3", "efficientnet_b6"]


class SplitMix64:
    def __init__(self, seed):
        self.x = seed & M

    def next_u64(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & M
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def fork(self, label):
        child = SplitMix64(self.x ^ ((label * 0xD6E8FEB86659FD93) & M))
        child.next_u64()
        return child


def arch_terms(arch):
    return {"efficientnet_b0": (0.0, -3.0), "efficientnet_b3": (0.03, -3.3)}.get(arch, (0.05, -3.6))


def final_score(p):
    base, best_lr = arch_terms(p["model.arch"])
    lr = math.log10(p["train.optimizer.lr"])
    wd = math.log10(p["train.optimizer.weight_decay"])
    batch = math.log2(p["train.batch_size"])
    dropout = p["model.dropout"]
    q = base - 0.04 * (lr - best_lr) ** 2 - 0.01 * (wd + 4.0) ** 2 - 0.005 * (batch - 4.0) ** 2 - 0.1 * (dropout - 0.2) ** 2
    return 0.55 + 0.4 * math.exp(q)


def optimum():
    return 0.55 + 0.4 * math.exp(0.05)


def curve(p, seed, trial, epoch):
    _, best_lr = arch_terms(p["model.arch"])
    tau = 2.0 + 3.0 * abs(math.log10(p["train.optimizer.lr"]) - best_lr)
    noise = SplitMix64((seed * 1_000_003 + trial) & M).fork(epoch).next_f64() - 0.5
    return final_score(p) * (1.0 - math.exp(-(epoch + 1) / tau)) + 0.02 * noise


def study(seed, budget):
    best_true = [-math.inf]

    def objective(trial):
        p = {
            "model.arch": trial.suggest_categorical("model.arch", ARCHS),
            "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
            "train.batch_size": trial.suggest_int("train.batch_size", 4, 64),
            "train.optimizer.lr": trial.suggest_float("train.optimizer.lr", 1e-5, 1e-1, log=True),
            "train.optimizer.weight_decay": trial.suggest_float("train.optimizer.weight_decay", 1e-6, 1e-2, log=True),
        }
        best_true[0] = max(best_true[0], final_score(p))
        return max(curve(p, seed, trial.number, e) for e in range(EPOCHS))

    sampler = optuna.samplers.TPESampler(multivariate=True, n_startup_trials=10, seed=seed)
    s = optuna.create_study(direction="maximize", sampler=sampler)
    s.optimize(objective, n_trials=budget)
    return optimum() - best_true[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budgets", default="30,60")
    ap.add_argument("--json")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check = {"model.arch": "efficientnet_b3", "model.dropout": 0.1, "train.batch_size": 32,
             "train.optimizer.lr": 0.001, "train.optimizer.weight_decay": 0.0001}
    print(f"simulator check: final {final_score(check):.6f}, epoch 3 of trial 7 seed 5 {curve(check, 5, 7, 3):.6f}")
    lines = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        regrets = [study(seed, budget) for seed in range(args.seeds)]
        lines += [{"sampler": "optuna-tpe", "budget": budget, "seed": s, "regret": r} for s, r in enumerate(regrets)]
        q = statistics.quantiles(regrets, n=4, method="inclusive")
        print(f"optuna-tpe {budget:>3} runs: regret median {statistics.median(regrets):.4f} "
              f"(quartiles {q[0]:.4f}-{q[2]:.4f}) over {args.seeds} seeds (optuna {optuna.__version__})")
    if args.json:
        with open(args.json, "w") as f:
            f.write("\n".join(json.dumps(l) for l in lines) + "\n")


if __name__ == "__main__":
    main()

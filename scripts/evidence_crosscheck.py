#!/usr/bin/env python3
"""Cross-checks cobb's evidence (protocol/src/evidence.rs) against reference implementations.

    target/release/cobb-bench evidence --out /tmp/evidence-case.json
    python scripts/evidence_crosscheck.py /tmp/evidence-case.json

Needs numpy, scipy and scikit-learn (pip install numpy scipy scikit-learn). Not part of the
test suite: the suite has known-answer tests; this checks a realistic case (1,166 test images
of about 580 patients, 10 classes) against independent code:

- point estimates: scikit-learn's precision_recall_fscore_support / accuracy_score / f1_score
  (zero_division=0) must equal cobb's exactly (1e-12);
- the patient-level bootstrap: numpy's own cluster bootstrap (its own RNG, R replicates, the
  same percentile rule) must give the same 95% interval ends within Monte Carlo error. With
  R = 20,000 replicates on both sides, the standard error of a 2.5th/97.5th percentile of a
  proportion over ~580 patients is about 0.002-0.004; the tolerance is 0.01 (and 0.02 for
  per-class metrics of the rarest classes, whose replicate distributions are lumpy);
- McNemar's exact p-value: scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue (1e-9);
- ECE / class-wise ECE / Brier / NLL: plain numpy implementations of the same definitions
  (1e-9), Brier also against scikit-learn's one-vs-rest brier_score_loss summed over classes;
- temperature scaling: scipy.optimize.minimize_scalar on the same NLL (1e-3 relative).
Exit status 1 when anything disagrees.
"""

import json
import sys

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, precision_recall_fscore_support


def metrics(truth, pred, n):
    labels = [c for c in range(n) if (truth == c).any() or (pred == c).any()]
    p, r, f, _ = precision_recall_fscore_support(truth, pred, labels=list(range(n)), zero_division=0)
    macro = f1_score(truth, pred, labels=labels, average="macro", zero_division=0) if labels else 0.0
    return accuracy_score(truth, pred), macro, p, r, f


def flat(truth, pred, n):
    """The same metrics from a confusion matrix, fast (for the bootstrap)."""
    m = np.zeros((n, n))
    np.add.at(m, (truth, pred), 1)
    tp = np.diag(m)
    support, predicted = m.sum(1), m.sum(0)
    p = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    r = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros(n), where=(p + r) > 0)
    present = (support > 0) | (predicted > 0)
    macro = f[present].mean() if present.any() else 0.0
    return tp.sum() / m.sum(), macro, p, r, f


def cluster_bootstrap(patient, truth, pred, n, replicates, seed=0):
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(patient == p) for p in np.unique(patient)]
    out = {"accuracy": [], "macro_f1": [], "precision": [], "recall": [], "f1": []}
    for _ in range(replicates):
        drawn = rng.integers(0, len(groups), len(groups))
        idx = np.concatenate([groups[g] for g in drawn])
        a, m, p, r, f = flat(truth[idx], pred[idx], n)
        for k, v in (("accuracy", a), ("macro_f1", m), ("precision", p), ("recall", r), ("f1", f)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


def interval(values):
    return np.quantile(values, 0.025), np.quantile(values, 0.975)  # numpy's default: linear


def ece(conf, correct, bins=10):
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return total


def main():
    case = json.load(open(sys.argv[1]))
    n = len(case["classes"])
    patient, truth = np.array(case["patient"]), np.array(case["truth"])
    pred_a, pred_b, probs = np.array(case["pred_a"]), np.array(case["pred_b"]), np.array(case["probs"])
    cobb = case["cobb"]
    replicates = case["replicates"]
    failures = []

    def check(what, ours, theirs, tol):
        ok = abs(ours - theirs) <= tol
        print(f"{'ok ' if ok else 'BAD'} {what:52s} cobb {ours:.6f}  reference {theirs:.6f}  (tolerance {tol})")
        if not ok:
            failures.append(what)

    acc, macro, p, r, f = metrics(truth, pred_a, n)
    iv = cobb["intervals"]
    check("accuracy (scikit-learn)", iv["accuracy"]["estimate"], acc, 1e-12)
    check("macro-F1 (scikit-learn)", iv["macro_f1"]["estimate"], macro, 1e-12)
    for c in range(n):
        for name, ref in (("precision", p[c]), ("recall", r[c]), ("f1", f[c])):
            check(f"{name} of {case['classes'][c]} (scikit-learn)", iv["per_class"][c][name]["estimate"], ref, 1e-12)

    print(f"\nnumpy cluster bootstrap, {replicates} replicates over {len(np.unique(patient))} patients ...")
    boot = cluster_bootstrap(patient, truth, pred_a, n, replicates)
    for key in ("accuracy", "macro_f1"):
        lo, hi = interval(boot[key])
        check(f"{key} 2.5th percentile", iv[key]["low"], lo, 0.01)
        check(f"{key} 97.5th percentile", iv[key]["high"], hi, 0.01)
    for c in range(n):
        support = int((truth == c).sum())
        tol = 0.01 if support >= 80 else 0.02
        for name in ("precision", "recall", "f1"):
            lo, hi = interval(boot[name][:, c])
            check(f"{name} of {case['classes'][c]} (n={support}) 2.5th", iv["per_class"][c][name]["low"], lo, tol)
            check(f"{name} of {case['classes'][c]} (n={support}) 97.5th", iv["per_class"][c][name]["high"], hi, tol)

    cmp = cobb["comparison"]
    b = int(((pred_a == truth) & (pred_b != truth)).sum())
    c_ = int(((pred_b == truth) & (pred_a != truth)).sum())
    check("McNemar only A right", cmp["mcnemar"]["only_a_right"], b, 0)
    check("McNemar only B right", cmp["mcnemar"]["only_b_right"], c_, 0)
    check("McNemar exact p (scipy binomtest)", cmp["mcnemar"]["p_value"], stats.binomtest(min(b, c_), b + c_, 0.5).pvalue, 1e-9)
    # The paired difference needs the same draws for both runs.
    rng = np.random.default_rng(2)
    groups = [np.flatnonzero(patient == q) for q in np.unique(patient)]
    diffs = []
    for _ in range(replicates):
        idx = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        diffs.append(flat(truth[idx], pred_a[idx], n)[1] - flat(truth[idx], pred_b[idx], n)[1])
    lo, hi = interval(np.array(diffs))
    check("paired macro-F1 difference 2.5th", cmp["macro_f1"]["difference"]["low"], lo, 0.01)
    check("paired macro-F1 difference 97.5th", cmp["macro_f1"]["difference"]["high"], hi, 0.01)

    cal = cobb["calibration"]
    conf, top = probs.max(1), probs.argmax(1)
    check("ECE (top label, 10 bins)", cal["ece"], ece(conf, (top == truth).astype(float)), 1e-9)
    classwise = np.mean([ece(probs[:, k], (truth == k).astype(float)) for k in range(n)])
    check("class-wise ECE", cal["classwise_ece"], classwise, 1e-9)
    onehot = np.eye(n)[truth]
    check("Brier (numpy)", cal["brier"], ((probs - onehot) ** 2).sum(1).mean(), 1e-9)
    check("Brier (scikit-learn, summed one-vs-rest)", cal["brier"], sum(brier_score_loss(onehot[:, k], probs[:, k]) for k in range(n)), 1e-9)
    check("NLL", cal["nll"], -np.log(np.maximum(probs[np.arange(len(truth)), truth], 1e-7)).mean(), 1e-9)

    logp = np.log(np.maximum(probs, 1e-7))

    def nll(log_t):
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        q = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return -np.log(np.maximum(q[np.arange(len(truth)), truth], 1e-7)).mean()

    t_ref = float(np.exp(optimize.minimize_scalar(nll, bounds=(-np.log(20), np.log(20)), method="bounded", options={"xatol": 1e-8}).x))
    check("temperature (scipy minimize_scalar)", cobb["temperature"] / t_ref, 1.0, 1e-3)

    print(f"\n{'all agree' if not failures else f'{len(failures)} disagreement(s): ' + ', '.join(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

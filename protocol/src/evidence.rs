//! Evidence from stored predictions, for a reviewer: confidence intervals that respect
//! patients, paired comparisons of two runs on the same patients, McNemar's exact test.
//!
//! One patient contributes several images (AP and lateral, before and after surgery), and
//! those images are not independent, so every resample draws **patients** with replacement
//! and takes all of a drawn patient's images (a cluster bootstrap). An image without a patient
//! id counts as its own patient. Intervals are percentile intervals (the 2.5th and 97.5th
//! percentiles of the replicates, linear interpolation between order statistics as numpy's
//! default): BCa would need a jackknife over ~600 patients per metric and corrects a bias the
//! percentile interval barely shows for proportions away from 0 and 1; docs/evidence.md says
//! more. The metrics of each replicate follow protocol::metrics exactly (scikit-learn's
//! `zero_division=0`, macro averages over the classes present in the replicate).
//!
//! Everything is seeded (protocol::rng): the same predictions, replicates and seed give the
//! same intervals in every cobb version.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::rng::SplitMix64;

/// The default number of bootstrap replicates.
pub const DEFAULT_REPLICATES: u32 = 2000;
/// The default seed of the bootstrap (any fixed number: intervals must be reproducible).
pub const DEFAULT_SEED: u64 = 20_261_202;
/// A class whose recall interval is wider than this is flagged as too uncertain to read.
pub const WIDE_INTERVAL: f64 = 0.3;
/// A class with fewer images than this is flagged too: a bootstrap over 3 images can give a
/// zero-width interval (every resample right), which says nothing.
pub const MIN_SUPPORT: u64 = 10;

/// One scored image: its patient (hashed id; None counts as its own patient), true class and
/// predicted class (indices into the class list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored<'a> {
    pub patient: Option<&'a str>,
    pub truth: usize,
    pub predicted: usize,
}

/// A point estimate and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn width(&self) -> f64 {
        self.high - self.low
    }

    /// `0.93 [0.88-0.97]`.
    pub fn display(&self) -> String {
        format!("{:.3} [{:.3}-{:.3}]", self.estimate, self.low, self.high)
    }

    /// Whether the interval of a difference excludes 0.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassIntervals {
    pub class: String,
    pub support: u64,
    pub precision: Interval,
    pub recall: Interval,
    pub f1: Interval,
    /// The recall interval is wider than [`WIDE_INTERVAL`], or the class has fewer than
    /// [`MIN_SUPPORT`] images: too few images (or patients) of this class to read its numbers
    /// as more than a rough range.
    pub wide: bool,
}

/// Intervals of one run's metrics on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    pub accuracy: Interval,
    pub macro_f1: Interval,
    pub per_class: Vec<ClassIntervals>,
    pub images: u64,
    pub patients: u64,
    pub replicates: u32,
    pub seed: u64,
}

/// The metrics of one confusion matrix held flat (`counts[truth * n + predicted]`), as
/// protocol::metrics computes them.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatReport {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
}

/// protocol::metrics's report of a flat `n x n` matrix, without allocating class names.
pub fn flat_report(counts: &[u64], n: usize) -> FlatReport {
    let (mut precision, mut recall, mut f1) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (mut total, mut correct, mut macro_sum, mut present) = (0u64, 0u64, 0.0, 0usize);
    for c in 0..n {
        let tp = counts[c * n + c];
        let support: u64 = counts[c * n..(c + 1) * n].iter().sum();
        let predicted: u64 = (0..n).map(|t| counts[t * n + c]).sum();
        total += support;
        correct += tp;
        precision[c] = ratio(tp, predicted);
        recall[c] = ratio(tp, support);
        f1[c] = if precision[c] + recall[c] == 0.0 { 0.0 } else { 2.0 * precision[c] * recall[c] / (precision[c] + recall[c]) };
        if support > 0 || predicted > 0 {
            macro_sum += f1[c];
            present += 1;
        }
    }
    FlatReport {
        accuracy: ratio(correct, total),
        macro_f1: if present == 0 { 0.0 } else { macro_sum / present as f64 },
        precision,
        recall,
        f1,
    }
}

/// The `q`-quantile (0..=1) of sorted values, interpolating linearly between order
/// statistics (numpy's default, Hyndman and Fan type 7).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Images grouped by patient, each patient's images as sparse cells of one or two matrices.
struct Clusters {
    /// Per patient: (cell, count) of run A and, for a paired comparison, of run B.
    a: Vec<Vec<(usize, u64)>>,
    b: Vec<Vec<(usize, u64)>>,
    images: u64,
}

fn sparse(cells: &[usize]) -> Vec<(usize, u64)> {
    let mut counted: Vec<(usize, u64)> = Vec::new();
    for &cell in cells {
        match counted.iter_mut().find(|(c, _)| *c == cell) {
            Some((_, n)) => *n += 1,
            None => counted.push((cell, 1)),
        }
    }
    counted
}

/// Groups `(patient, cell of A, cell of B)`; images without a patient are their own group.
fn clusters<'a>(rows: impl Iterator<Item = (Option<&'a str>, usize, Option<usize>)>) -> Clusters {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let (mut a, mut b): (Vec<Vec<usize>>, Vec<Vec<usize>>) = (Vec::new(), Vec::new());
    let mut images = 0;
    for (patient, cell_a, cell_b) in rows {
        images += 1;
        let group = match patient {
            Some(p) => *index.entry(p).or_insert_with(|| {
                a.push(Vec::new());
                b.push(Vec::new());
                a.len() - 1
            }),
            None => {
                a.push(Vec::new());
                b.push(Vec::new());
                a.len() - 1
            }
        };
        a[group].push(cell_a);
        if let Some(cell) = cell_b {
            b[group].push(cell);
        }
    }
    Clusters { a: a.iter().map(|c| sparse(c)).collect(), b: b.iter().map(|c| sparse(c)).collect(), images }
}

/// Draws `replicates` patient resamples and hands each one's matrices (A, and B when paired)
/// to `each`.
fn resample(clusters: &Clusters, n: usize, replicates: u32, seed: u64, mut each: impl FnMut(&[u64], &[u64])) {
    let patients = clusters.a.len();
    let mut rng = SplitMix64::new(seed);
    let (mut a, mut b) = (vec![0u64; n * n], vec![0u64; n * n]);
    for _ in 0..replicates {
        a.iter_mut().for_each(|c| *c = 0);
        b.iter_mut().for_each(|c| *c = 0);
        for _ in 0..patients {
            let p = rng.below(patients);
            for &(cell, count) in &clusters.a[p] {
                a[cell] += count;
            }
            for &(cell, count) in &clusters.b[p] {
                b[cell] += count;
            }
        }
        each(&a, &b);
    }
}

fn interval(estimate: f64, mut values: Vec<f64>) -> Interval {
    values.sort_by(f64::total_cmp);
    Interval { estimate, low: quantile(&values, 0.025), high: quantile(&values, 0.975) }
}

/// Percentile intervals of accuracy, macro-F1 and each class's precision, recall and F1 from
/// a patient-level bootstrap of `items`.
pub fn bootstrap(classes: &[String], items: &[Scored], replicates: u32, seed: u64) -> Intervals {
    let n = classes.len();
    let cell = |s: &Scored| s.truth.min(n.saturating_sub(1)) * n + s.predicted.min(n.saturating_sub(1));
    let clusters = clusters(items.iter().map(|s| (s.patient, cell(s), None)));
    let mut observed = vec![0u64; n * n];
    for s in items {
        observed[cell(s)] += 1;
    }
    let point = flat_report(&observed, n);
    let (mut accuracy, mut macro_f1) = (Vec::new(), Vec::new());
    let (mut precision, mut recall, mut f1) = (vec![Vec::new(); n], vec![Vec::new(); n], vec![Vec::new(); n]);
    resample(&clusters, n, replicates, seed, |a, _| {
        let r = flat_report(a, n);
        accuracy.push(r.accuracy);
        macro_f1.push(r.macro_f1);
        for c in 0..n {
            precision[c].push(r.precision[c]);
            recall[c].push(r.recall[c]);
            f1[c].push(r.f1[c]);
        }
    });
    let per_class = (0..n)
        .map(|c| {
            let recall = interval(point.recall[c], std::mem::take(&mut recall[c]));
            let support: u64 = observed[c * n..(c + 1) * n].iter().sum();
            ClassIntervals {
                class: classes[c].clone(),
                support,
                precision: interval(point.precision[c], std::mem::take(&mut precision[c])),
                f1: interval(point.f1[c], std::mem::take(&mut f1[c])),
                wide: recall.width() > WIDE_INTERVAL || support < MIN_SUPPORT,
                recall,
            }
        })
        .collect();
    Intervals {
        accuracy: interval(point.accuracy, accuracy),
        macro_f1: interval(point.macro_f1, macro_f1),
        per_class,
        images: clusters.images,
        patients: clusters.a.len() as u64,
        replicates,
        seed,
    }
}

/// One image scored by two runs (the same validation image, so the same patient and truth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired<'a> {
    pub patient: Option<&'a str>,
    pub truth: usize,
    pub predicted_a: usize,
    pub predicted_b: usize,
}

/// A difference A - B with its interval and whether it is told apart from noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub metric: String,
    pub difference: Interval,
    /// The 95% interval of the difference excludes 0.
    pub distinguishable: bool,
}

/// McNemar's exact test on correctness: how many images only A got right, only B, and the
/// two-sided p-value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    pub only_a_right: u64,
    pub only_b_right: u64,
    pub p_value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub macro_f1: Difference,
    /// Each class's recall difference.
    pub recall: Vec<Difference>,
    /// Each class's precision difference.
    #[serde(default)]
    pub precision: Vec<Difference>,
    pub mcnemar: McNemar,
    pub images: u64,
    pub patients: u64,
    pub replicates: u32,
    pub seed: u64,
}

/// Paired patient-level bootstrap of A - B in macro-F1 and each class's recall (both runs
/// scored on the same resampled patients), and McNemar's exact test.
pub fn compare(classes: &[String], items: &[Paired], replicates: u32, seed: u64) -> Comparison {
    let n = classes.len();
    let at = |t: usize, p: usize| t.min(n.saturating_sub(1)) * n + p.min(n.saturating_sub(1));
    let clusters = clusters(items.iter().map(|s| (s.patient, at(s.truth, s.predicted_a), Some(at(s.truth, s.predicted_b)))));
    let (mut a, mut b) = (vec![0u64; n * n], vec![0u64; n * n]);
    for s in items {
        a[at(s.truth, s.predicted_a)] += 1;
        b[at(s.truth, s.predicted_b)] += 1;
    }
    let (ra, rb) = (flat_report(&a, n), flat_report(&b, n));
    let mut macro_f1 = Vec::new();
    let (mut recall, mut precision) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    resample(&clusters, n, replicates, seed, |a, b| {
        let (ra, rb) = (flat_report(a, n), flat_report(b, n));
        macro_f1.push(ra.macro_f1 - rb.macro_f1);
        for (c, values) in recall.iter_mut().enumerate() {
            values.push(ra.recall[c] - rb.recall[c]);
        }
        for (c, values) in precision.iter_mut().enumerate() {
            values.push(ra.precision[c] - rb.precision[c]);
        }
    });
    let difference = |metric: String, estimate: f64, values: Vec<f64>| {
        let difference = interval(estimate, values);
        Difference { metric, distinguishable: difference.excludes_zero(), difference }
    };
    let only_a_right = items.iter().filter(|s| s.predicted_a == s.truth && s.predicted_b != s.truth).count() as u64;
    let only_b_right = items.iter().filter(|s| s.predicted_b == s.truth && s.predicted_a != s.truth).count() as u64;
    Comparison {
        macro_f1: difference("macro_f1".to_owned(), ra.macro_f1 - rb.macro_f1, macro_f1),
        recall: (0..n)
            .map(|c| difference(format!("recall/{}", classes[c]), ra.recall[c] - rb.recall[c], std::mem::take(&mut recall[c])))
            .collect(),
        precision: (0..n)
            .map(|c| difference(format!("precision/{}", classes[c]), ra.precision[c] - rb.precision[c], std::mem::take(&mut precision[c])))
            .collect(),
        mcnemar: McNemar { only_a_right, only_b_right, p_value: mcnemar_exact(only_a_right, only_b_right) },
        images: clusters.images,
        patients: clusters.a.len() as u64,
        replicates,
        seed,
    }
}

/// McNemar's exact (binomial) two-sided p-value for `b` and `c` discordant pairs:
/// `min(1, 2 * P(X <= min(b, c)))` with `X ~ Binomial(b + c, 1/2)`; 1 when there are none.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // log C(n, i) - n log 2, summed over i = 0..=k in log space (n may be thousands).
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_choose - ln2n);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Bins of the reliability diagram and of the expected calibration error.
pub const CALIBRATION_BINS: usize = 10;

/// One bin of the reliability diagram (top-label confidence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// The bin's lower edge (the bin is [lower, lower + 0.1), the last one closed).
    pub lower: f64,
    pub images: u64,
    /// Mean top-label confidence of the images in the bin.
    pub confidence: f64,
    /// Share of them predicted right.
    pub accuracy: f64,
}

/// How well a run's probabilities match its frequencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error of the top label (10 equal-width bins, weighted by images).
    pub ece: f64,
    /// Class-wise ECE: for each class, the ECE of its probability against "is this class",
    /// averaged over the classes.
    pub classwise_ece: f64,
    /// Multiclass Brier score: the mean over images of sum_k (p_k - [truth = k])^2 (0 best, 2 worst).
    pub brier: f64,
    /// Mean negative log-likelihood of the true class (probabilities floored at 1e-7).
    pub nll: f64,
    pub bins: Vec<ReliabilityBin>,
}

fn bin_of(p: f64) -> usize {
    ((p * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1)
}

/// Calibration of `probabilities` (one row per image, rows summing to 1) against `truth`.
pub fn calibration(probabilities: &[Vec<f64>], truth: &[usize]) -> Calibration {
    let n = probabilities.len().min(truth.len());
    let classes = probabilities.first().map_or(0, Vec::len);
    let (mut brier, mut nll) = (0.0, 0.0);
    // Top label: (count, confidence sum, right) per bin.
    let mut top = vec![(0u64, 0.0f64, 0u64); CALIBRATION_BINS];
    // Class-wise: per class and bin, (count, probability sum, positives).
    let mut per_class = vec![vec![(0u64, 0.0f64, 0u64); CALIBRATION_BINS]; classes];
    for (row, &t) in probabilities.iter().zip(truth).take(n) {
        let (predicted, confidence) =
            row.iter().copied().enumerate().fold((0, f64::NEG_INFINITY), |best, (k, p)| if p > best.1 { (k, p) } else { best });
        let bin = &mut top[bin_of(confidence)];
        bin.0 += 1;
        bin.1 += confidence;
        bin.2 += u64::from(predicted == t);
        for (k, &p) in row.iter().enumerate() {
            let y = if k == t { 1.0 } else { 0.0 };
            brier += (p - y) * (p - y);
            let bin = &mut per_class[k][bin_of(p)];
            bin.0 += 1;
            bin.1 += p;
            bin.2 += u64::from(k == t);
        }
        nll -= row.get(t).copied().unwrap_or(0.0).max(1e-7).ln();
    }
    let ece_of = |bins: &[(u64, f64, u64)]| -> f64 {
        if n == 0 {
            return 0.0;
        }
        bins.iter()
            .filter(|b| b.0 > 0)
            .map(|&(count, sum, right)| (count as f64 / n as f64) * (right as f64 / count as f64 - sum / count as f64).abs())
            .sum()
    };
    let classwise_ece = if classes == 0 { 0.0 } else { per_class.iter().map(|b| ece_of(b)).sum::<f64>() / classes as f64 };
    Calibration {
        ece: ece_of(&top),
        classwise_ece,
        brier: if n == 0 { 0.0 } else { brier / n as f64 },
        nll: if n == 0 { 0.0 } else { nll / n as f64 },
        bins: top
            .iter()
            .enumerate()
            .map(|(b, &(count, sum, right))| ReliabilityBin {
                lower: b as f64 / CALIBRATION_BINS as f64,
                images: count,
                confidence: if count == 0 { 0.0 } else { sum / count as f64 },
                accuracy: if count == 0 { 0.0 } else { right as f64 / count as f64 },
            })
            .collect(),
    }
}

/// `probabilities` rescaled by temperature `t`: softmax(log p / t) (log p stands for the
/// logits, which it equals up to a constant per image; p floored at 1e-7).
pub fn with_temperature(probabilities: &[Vec<f64>], t: f64) -> Vec<Vec<f64>> {
    probabilities
        .iter()
        .map(|row| {
            let logits: Vec<f64> = row.iter().map(|p| p.max(1e-7).ln() / t).collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = exp.iter().sum();
            exp.into_iter().map(|e| e / sum).collect()
        })
        .collect()
}

/// The temperature that minimises the negative log-likelihood of `truth` (temperature
/// scaling, Guo et al. 2017), found by golden-section search over log t in [1/20, 20].
pub fn fit_temperature(probabilities: &[Vec<f64>], truth: &[usize]) -> f64 {
    let nll = |log_t: f64| calibration(&with_temperature(probabilities, log_t.exp()), truth).nll;
    let (mut lo, mut hi) = (-(20f64.ln()), 20f64.ln());
    let golden = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (hi - golden * (hi - lo), lo + golden * (hi - lo));
    let (mut f1, mut f2) = (nll(x1), nll(x2));
    for _ in 0..60 {
        if f1 <= f2 {
            hi = x2;
            (x2, f2) = (x1, f1);
            x1 = hi - golden * (hi - lo);
            f1 = nll(x1);
        } else {
            lo = x1;
            (x1, f1) = (x2, f2);
            x2 = lo + golden * (hi - lo);
            f2 = nll(x2);
        }
    }
    ((lo + hi) / 2.0).exp()
}

/// Which value of a test metric a criterion is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The point estimate.
    #[default]
    Estimate,
    /// The lower end of its 95% patient-level interval: the criterion holds with confidence.
    LowerBound,
}

/// A pre-registered acceptance criterion: `{metric: test_macro_f1, min: 0.95}`,
/// `{metric: "test_recall/*", min: 0.90, on: lower_bound}` (`*`: every class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    pub metric: String,
    pub min: f64,
    #[serde(default)]
    pub on: Bound,
}

/// The measures a criterion may name: overall, and per class.
const OVERALL: [&str; 3] = ["accuracy", "macro_f1", "weighted_f1"];
const PER_CLASS: [&str; 3] = ["precision", "recall", "f1"];

impl Criterion {
    /// The criterion's measure and class (None: an overall metric; `*`: every class).
    fn parts(&self) -> Option<(&str, Option<&str>)> {
        let rest = self.metric.strip_prefix(crate::keys::TEST_PREFIX)?;
        match rest.split_once('/') {
            Some((measure, class)) if PER_CLASS.contains(&measure) && !class.is_empty() => Some((measure, Some(class))),
            None if OVERALL.contains(&rest) => Some((rest, None)),
            _ => None,
        }
    }

    /// Whether the criterion can be judged (a test metric cobb reports, a bound in 0..=1).
    pub fn check(&self) -> Result<(), String> {
        let Some((measure, _)) = self.parts() else {
            return Err(format!(
                "`{}`: a criterion names a test metric: test_accuracy, test_macro_f1, test_weighted_f1, or \
                 test_precision|recall|f1/CLASS (`*` for every class)",
                self.metric
            ));
        };
        if !(0.0..=1.0).contains(&self.min) {
            return Err(format!("`{}`: min {} is outside 0..=1", self.metric, self.min));
        }
        if self.on == Bound::LowerBound && measure == "weighted_f1" {
            return Err("test_weighted_f1 has no interval; judge it on its estimate".to_owned());
        }
        Ok(())
    }

    /// `test_macro_f1 >= 0.95` (`(lower bound)` when judged on the interval).
    pub fn describe(&self) -> String {
        format!("{} >= {}{}", self.metric, self.min, if self.on == Bound::LowerBound { " (lower 95% bound)" } else { "" })
    }

    /// The classes a criterion names, among `classes` (an unknown class: an error).
    pub fn classes<'a>(&self, classes: &'a [String]) -> Result<Vec<&'a str>, String> {
        match self.parts() {
            Some((_, Some("*"))) => Ok(classes.iter().map(String::as_str).collect()),
            Some((_, Some(class))) => classes
                .iter()
                .find(|c| *c == class)
                .map(|c| vec![c.as_str()])
                .ok_or_else(|| format!("`{}`: the dataset has no class `{class}` (its classes: {})", self.metric, classes.join(", "))),
            _ => Ok(Vec::new()),
        }
    }
}

/// One criterion judged on a test report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// What was required, for one metric (a `*` criterion gives one verdict per class).
    pub criterion: String,
    /// The value judged (the estimate or the interval's lower end); None when unavailable.
    pub value: Option<f64>,
    pub passed: bool,
    /// Why it failed when there was nothing to judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Judges `criteria` on the test `report` and, for lower bounds, its `intervals`.
pub fn judge(criteria: &[Criterion], report: &crate::metrics::ClassificationReport, intervals: Option<&Intervals>) -> Vec<Verdict> {
    let classes: Vec<String> = report.per_class.iter().map(|c| c.class.clone()).collect();
    let mut out = Vec::new();
    for c in criteria {
        let Some((measure, class)) = c.parts() else {
            out.push(Verdict { criterion: c.describe(), value: None, passed: false, note: Some("not a test metric".to_owned()) });
            continue;
        };
        let pick = |i: &Interval| if c.on == Bound::LowerBound { i.low } else { i.estimate };
        let mut push = |metric: String, estimate: Option<f64>, interval: Option<Interval>| {
            let value = match c.on {
                Bound::Estimate => estimate,
                Bound::LowerBound => interval.map(|i| pick(&i)),
            };
            let note = value.is_none().then(|| {
                if c.on == Bound::LowerBound {
                    "no interval: the evaluation stored no test predictions".to_owned()
                } else {
                    "no such value".to_owned()
                }
            });
            let criterion = Criterion { metric, min: c.min, on: c.on }.describe();
            out.push(Verdict { criterion, passed: value.is_some_and(|v| v >= c.min), value, note });
        };
        match class {
            None => {
                let (estimate, interval) = match measure {
                    "accuracy" => (report.accuracy, intervals.map(|i| i.accuracy)),
                    "macro_f1" => (report.macro_f1, intervals.map(|i| i.macro_f1)),
                    _ => (report.weighted_f1, None),
                };
                push(c.metric.clone(), Some(estimate), interval);
            }
            Some(_) => match c.classes(&classes) {
                Ok(names) => {
                    for name in names {
                        let row = report.per_class.iter().find(|m| m.class == name);
                        let ci = intervals.and_then(|i| i.per_class.iter().find(|m| m.class == name));
                        let (estimate, interval) = match measure {
                            "precision" => (row.map(|r| r.precision), ci.map(|c| c.precision)),
                            "recall" => (row.map(|r| r.recall), ci.map(|c| c.recall)),
                            _ => (row.map(|r| r.f1), ci.map(|c| c.f1)),
                        };
                        push(format!("test_{measure}/{name}"), estimate, interval);
                    }
                }
                Err(note) => out.push(Verdict { criterion: c.describe(), value: None, passed: false, note: Some(note) }),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ConfusionMatrix;

    fn classes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn the_flat_report_is_protocol_metrics_report() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..200 {
            let n = 1 + rng.below(6);
            let counts: Vec<u64> = (0..n * n).map(|_| if rng.chance(0.3) { 0 } else { rng.below(9) as u64 }).collect();
            let matrix = ConfusionMatrix::from_parts(classes(n), counts.chunks(n).map(<[u64]>::to_vec).collect()).expect("matrix");
            let (flat, report) = (flat_report(&counts, n), matrix.report());
            assert_eq!(flat.accuracy, report.accuracy);
            assert!((flat.macro_f1 - report.macro_f1).abs() < 1e-12, "{counts:?}");
            for (c, m) in report.per_class.iter().enumerate() {
                assert_eq!((flat.precision[c], flat.recall[c], flat.f1[c]), (m.precision, m.recall, m.f1));
            }
        }
    }

    #[test]
    fn quantiles_interpolate_as_numpy_does() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!((quantile(&v, 0.5) - 2.5).abs() < 1e-12);
        // numpy.quantile([1, 2, 3, 4], 0.025) = 1.075
        assert!((quantile(&v, 0.025) - 1.075).abs() < 1e-12);
    }

    /// Three patients small enough to enumerate every resample (3^3 equally likely ordered
    /// draws): the bootstrap's accuracy distribution matches the exact one.
    #[test]
    fn the_bootstrap_matches_the_exact_resampling_distribution() {
        // Patient p0: 2 images, both right; p1: 1 right, 1 wrong; p2: 1 image, wrong.
        let items = [
            Scored { patient: Some("p0"), truth: 0, predicted: 0 },
            Scored { patient: Some("p0"), truth: 1, predicted: 1 },
            Scored { patient: Some("p1"), truth: 0, predicted: 0 },
            Scored { patient: Some("p1"), truth: 1, predicted: 0 },
            Scored { patient: Some("p2"), truth: 1, predicted: 0 },
        ];
        let per_patient = [(2.0, 2.0), (1.0, 2.0), (0.0, 1.0)]; // (right, images)
        let mut exact: Vec<f64> = Vec::new();
        for i in 0..3 {
            for j in 0..3 {
                for k in 0..3 {
                    let (r, n) = [i, j, k].iter().fold((0.0, 0.0), |(r, n), &p| (r + per_patient[p].0, n + per_patient[p].1));
                    exact.push(r / n);
                }
            }
        }
        exact.sort_by(f64::total_cmp);
        let got = bootstrap(&classes(2), &items, 200_000, 3);
        assert_eq!(got.patients, 3);
        assert_eq!(got.accuracy.estimate, 3.0 / 5.0);
        // The exact distribution's mean and the probability of each distinct value.
        let distinct: Vec<f64> = {
            let mut d = exact.clone();
            d.dedup_by(|a, b| (*a - *b).abs() < 1e-12);
            d
        };
        let mut replicates = Vec::new();
        resample(&clusters(items.iter().map(|s| (s.patient, s.truth * 2 + s.predicted, None))), 2, 200_000, 3, |a, _| {
            replicates.push(flat_report(a, 2).accuracy)
        });
        for value in distinct {
            let p_exact = exact.iter().filter(|v| (**v - value).abs() < 1e-12).count() as f64 / 27.0;
            let p_boot = replicates.iter().filter(|v| (**v - value).abs() < 1e-12).count() as f64 / replicates.len() as f64;
            // 200,000 draws: the standard error of a frequency is at most 0.0011.
            assert!((p_exact - p_boot).abs() < 0.005, "P(accuracy = {value}) exact {p_exact} bootstrap {p_boot}");
        }
        // And the interval's ends are the exact distribution's 2.5th and 97.5th percentiles
        // (the smallest value whose cumulative probability reaches them).
        let percentile = |q: f64| exact[((q * 27.0).ceil() as usize).max(1) - 1];
        assert_eq!(got.accuracy.low, percentile(0.025), "{:?}", got.accuracy);
        assert_eq!(got.accuracy.high, percentile(0.975), "{:?}", got.accuracy);
    }

    #[test]
    fn resampling_patients_widens_the_interval_over_resampling_images() {
        // 40 patients with 4 images each, all right or all wrong per patient: images are not
        // independent, and the patient bootstrap's interval must be wider than the images'.
        let names: Vec<String> = (0..40).map(|p| format!("p{p}")).collect();
        let mut by_patient = Vec::new();
        let mut by_image = Vec::new();
        for (p, name) in names.iter().enumerate() {
            for _ in 0..4 {
                let predicted = usize::from(p % 3 == 0);
                by_patient.push(Scored { patient: Some(name), truth: 0, predicted });
                by_image.push(Scored { patient: None, truth: 0, predicted });
            }
        }
        let patients = bootstrap(&classes(2), &by_patient, 4000, 1);
        let images = bootstrap(&classes(2), &by_image, 4000, 1);
        assert_eq!((patients.patients, images.patients), (40, 160));
        assert!(patients.accuracy.width() > 1.6 * images.accuracy.width(), "{:?} vs {:?}", patients.accuracy, images.accuracy);
    }

    #[test]
    fn the_same_seed_gives_the_same_intervals() {
        let items: Vec<Scored> = (0..50).map(|i| Scored { patient: None, truth: i % 3, predicted: (i * 7) % 3 }).collect();
        assert_eq!(bootstrap(&classes(3), &items, 500, 9), bootstrap(&classes(3), &items, 500, 9));
        assert_ne!(bootstrap(&classes(3), &items, 500, 9), bootstrap(&classes(3), &items, 500, 10));
    }

    #[test]
    fn calibration_matches_hand_computed_ece_and_brier() {
        // Four images, two classes. Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right).
        let probabilities = vec![vec![0.9, 0.1], vec![0.9, 0.1], vec![0.4, 0.6], vec![0.4, 0.6]];
        let truth = [0, 1, 1, 1];
        let c = calibration(&probabilities, &truth);
        // Top-label bins: [0.9, 1.0): 2 images, confidence 0.9, accuracy 0.5 -> |0.5 - 0.9| = 0.4;
        // [0.6, 0.7): 2 images, confidence 0.6, accuracy 1 -> 0.4. ECE = 0.5 * 0.4 + 0.5 * 0.4.
        assert!((c.ece - 0.4).abs() < 1e-12, "{c:?}");
        // Brier: (0.1^2 + 0.1^2) + (0.9^2 + 0.9^2) + 2 * (0.4^2 + 0.4^2), over 4 images.
        let brier = (0.02 + 1.62 + 2.0 * 0.32) / 4.0;
        assert!((c.brier - brier).abs() < 1e-12, "{c:?}");
        // NLL: -(ln 0.9 + ln 0.1 + 2 ln 0.6) / 4.
        let nll = -(0.9f64.ln() + 0.1f64.ln() + 2.0 * 0.6f64.ln()) / 4.0;
        assert!((c.nll - nll).abs() < 1e-12);
        // Class-wise: class 0's probabilities 0.9, 0.9 (one positive) and 0.4, 0.4 (none):
        // 0.5 * |0.5 - 0.9| + 0.5 * |0 - 0.4| = 0.4; class 1 mirrors it: 0.4.
        assert!((c.classwise_ece - 0.4).abs() < 1e-12, "{c:?}");
        assert_eq!(c.bins.iter().map(|b| b.images).sum::<u64>(), 4);
        // Perfectly calibrated one-hot predictions that are right: 0 everywhere.
        let perfect = calibration(&[vec![1.0, 0.0], vec![0.0, 1.0]], &[0, 1]);
        assert_eq!((perfect.ece, perfect.classwise_ece, perfect.brier), (0.0, 0.0, 0.0));
    }

    #[test]
    fn temperature_scaling_undoes_overconfidence() {
        // Probabilities made over-confident by temperature 1/3 from calibrated ones: the fitted
        // temperature brings NLL and ECE down.
        let mut rng = SplitMix64::new(11);
        let (mut probabilities, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..2000 {
            let p = rng.range(0.5, 0.95);
            let right = rng.chance(p);
            truth.push(if right { 0 } else { 1 });
            probabilities.push(vec![p, 1.0 - p]);
        }
        let sharp = with_temperature(&probabilities, 1.0 / 3.0);
        let t = fit_temperature(&sharp, &truth);
        assert!((t - 3.0).abs() < 0.6, "fitted temperature {t}");
        let (before, after) = (calibration(&sharp, &truth), calibration(&with_temperature(&sharp, t), &truth));
        assert!(after.nll < before.nll && after.ece < before.ece / 2.0, "{before:?} -> {after:?}");
    }

    #[test]
    fn criteria_are_judged_on_estimates_and_lower_bounds_and_expand_over_classes() {
        let matrix = ConfusionMatrix::from_parts(classes(2), vec![vec![9, 1], vec![2, 8]]).expect("matrix");
        let report = matrix.report();
        let parse = |yaml: &str| -> Vec<Criterion> { serde_norway::from_str(yaml).expect("criteria") };
        let criteria = parse(
            "[{metric: test_accuracy, min: 0.85}, {metric: 'test_recall/*', min: 0.85}, \
              {metric: test_macro_f1, min: 0.8, on: lower_bound}, {metric: test_f1/c9, min: 0.5}]",
        );
        for c in &criteria[..3] {
            assert_eq!(c.check(), Ok(()));
        }
        let items: Vec<Scored> =
            (0..20).map(|i| Scored { patient: None, truth: usize::from(i >= 10), predicted: usize::from((9..=17).contains(&i)) }).collect();
        let intervals = bootstrap(&classes(2), &items, 2000, 3);
        assert_eq!(intervals.accuracy.estimate, report.accuracy);
        let verdicts = judge(&criteria, &report, Some(&intervals));
        let summary: Vec<(&str, bool)> = verdicts.iter().map(|v| (v.criterion.as_str(), v.passed)).collect();
        assert_eq!(
            summary,
            [
                ("test_accuracy >= 0.85", true),
                ("test_recall/c0 >= 0.85", true),
                ("test_recall/c1 >= 0.85", false),
                ("test_macro_f1 >= 0.8 (lower 95% bound)", false),
                ("test_f1/c9 >= 0.5", false),
            ]
        );
        assert_eq!(verdicts[3].value, Some(intervals.macro_f1.low));
        assert!(verdicts[4].note.as_deref().is_some_and(|n| n.contains("no class `c9`")));
        // Without stored test predictions a lower bound cannot be judged: it fails, saying why.
        let without = judge(&criteria[2..3], &report, None);
        assert!(!without[0].passed && without[0].note.as_deref().is_some_and(|n| n.contains("no test predictions")));
        // What a spec may not say.
        for bad in [
            "[{metric: val_macro_f1, min: 0.9}]",
            "[{metric: test_auc, min: 0.9}]",
            "[{metric: test_accuracy, min: 1.5}]",
            "[{metric: test_weighted_f1, min: 0.5, on: lower_bound}]",
        ] {
            assert!(parse(bad)[0].check().is_err(), "{bad}");
        }
    }

    #[test]
    fn mcnemar_matches_hand_computed_binomial_tails() {
        // b = 1, c = 5: 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64.
        assert!((mcnemar_exact(1, 5) - 14.0 / 64.0).abs() < 1e-12);
        // b = 0, c = 10: 2 / 1024.
        assert!((mcnemar_exact(0, 10) - 2.0 / 1024.0).abs() < 1e-15);
        // b = c: capped at 1.
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b = 3, c = 12: 2 * (1 + 15 + 105 + 455) / 32768.
        assert!((mcnemar_exact(3, 12) - 2.0 * 576.0 / 32768.0).abs() < 1e-12);
        // Large n stays finite: b = 900, c = 1100.
        let p = mcnemar_exact(900, 1100);
        assert!(p > 0.0 && p < 1e-5, "{p}");
    }

    #[test]
    fn a_run_better_on_the_same_patients_is_told_apart_and_an_equal_one_is_not() {
        let names: Vec<String> = (0..60).map(|p| format!("p{p}")).collect();
        let mut better = Vec::new();
        let mut same = Vec::new();
        for (p, name) in names.iter().enumerate() {
            for image in 0..2 {
                let truth = (p + image) % 2;
                // A is right everywhere; B misses class 1 on two patients in three.
                let b_wrong = truth == 1 && p % 3 != 0;
                better.push(Paired { patient: Some(name), truth, predicted_a: truth, predicted_b: if b_wrong { 0 } else { truth } });
                // Equal runs: the same predictions, half of them wrong.
                let pred = if p % 2 == 0 { truth } else { 1 - truth };
                same.push(Paired { patient: Some(name), truth, predicted_a: pred, predicted_b: pred });
            }
        }
        let c = compare(&classes(2), &better, 2000, 5);
        assert!(c.macro_f1.distinguishable && c.macro_f1.difference.estimate > 0.0, "{c:?}");
        assert!(c.recall[1].distinguishable && !c.recall[0].distinguishable, "{c:?}");
        assert_eq!((c.mcnemar.only_a_right, c.mcnemar.only_b_right), (40, 0));
        assert!(c.mcnemar.p_value < 1e-9);
        let s = compare(&classes(2), &same, 2000, 5);
        assert!(!s.macro_f1.distinguishable, "{s:?}");
        assert_eq!(s.macro_f1.difference, Interval { estimate: 0.0, low: 0.0, high: 0.0 });
        assert_eq!(s.mcnemar.p_value, 1.0);
    }
}

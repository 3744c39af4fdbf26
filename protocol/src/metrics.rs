//! Metric math, written once: confusion matrix -> per-class precision, recall, F1 and
//! support, accuracy, macro and weighted averages.
//!
//! Zero-division rules (the same as scikit-learn's `zero_division=0`):
//! - precision of a class that was never predicted is 0;
//! - recall of a class with no true examples is 0;
//! - F1 is 0 when precision + recall is 0;
//! - accuracy of an empty matrix is 0.
//!
//! Macro averages are taken over the classes that occur in the truth or in the
//! predictions (a class absent from both says nothing about the model and is left out,
//! as scikit-learn does when `labels` is not given). Weighted averages weight each class
//! by its support.

use serde::{Deserialize, Serialize};

/// Counts indexed `[true class][predicted class]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of true examples of this class.
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub per_class: Vec<ClassMetrics>,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    #[error("confusion matrix has {rows} rows but {classes} classes")]
    RowCount { rows: usize, classes: usize },
    #[error("row {row} of the confusion matrix has {len} entries, expected {classes}")]
    RowLength { row: usize, len: usize, classes: usize },
    #[error("class index {index} is out of range for {classes} classes")]
    ClassIndex { index: usize, classes: usize },
    #[error("class `{0}` appears twice in the confusion matrix")]
    DuplicateClass(String),
    #[error("the confusion matrix's counts add up to more than 2^53 (they would not be exact)")]
    Overflow,
}

/// The largest total a matrix may hold: every count stays exact as an f64.
const MAX_TOTAL: u64 = 1 << 53;

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
}

fn harmonic(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) }
}

impl ConfusionMatrix {
    /// An all-zero matrix over `classes`.
    pub fn new(classes: Vec<String>) -> Self {
        let n = classes.len();
        Self { classes, counts: vec![vec![0; n]; n] }
    }

    /// A matrix from stored parts, checked to be square and to match the class list.
    pub fn from_parts(classes: Vec<String>, counts: Vec<Vec<u64>>) -> Result<Self, MatrixError> {
        if counts.len() != classes.len() {
            return Err(MatrixError::RowCount { rows: counts.len(), classes: classes.len() });
        }
        if let Some((row, r)) = counts.iter().enumerate().find(|(_, r)| r.len() != classes.len()) {
            return Err(MatrixError::RowLength { row, len: r.len(), classes: classes.len() });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(c) = classes.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(MatrixError::DuplicateClass(c.clone()));
        }
        let total = counts.iter().flatten().try_fold(0u64, |sum, &n| sum.checked_add(n));
        if total.is_none_or(|t| t > MAX_TOTAL) {
            return Err(MatrixError::Overflow);
        }
        Ok(Self { classes, counts })
    }

    /// Counts one example of true class `truth` predicted as `predicted`.
    pub fn record(&mut self, truth: usize, predicted: usize) -> Result<(), MatrixError> {
        let classes = self.classes.len();
        for index in [truth, predicted] {
            if index >= classes {
                return Err(MatrixError::ClassIndex { index, classes });
            }
        }
        self.counts[truth][predicted] += 1;
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    fn support(&self, class: usize) -> u64 {
        self.counts[class].iter().sum()
    }

    fn predicted(&self, class: usize) -> u64 {
        self.counts.iter().map(|row| row[class]).sum()
    }

    pub fn report(&self) -> ClassificationReport {
        let n = self.classes.len();
        let total = self.total();
        let correct: u64 = (0..n).map(|i| self.counts[i][i]).sum();
        let per_class: Vec<ClassMetrics> = (0..n)
            .map(|i| {
                let precision = ratio(self.counts[i][i], self.predicted(i));
                let recall = ratio(self.counts[i][i], self.support(i));
                ClassMetrics {
                    class: self.classes[i].clone(),
                    precision,
                    recall,
                    f1: harmonic(precision, recall),
                    support: self.support(i),
                }
            })
            .collect();

        let present: Vec<&ClassMetrics> =
            per_class.iter().enumerate().filter(|(i, m)| m.support > 0 || self.predicted(*i) > 0).map(|(_, m)| m).collect();
        let macro_of = |f: fn(&ClassMetrics) -> f64| {
            if present.is_empty() { 0.0 } else { present.iter().map(|m| f(m)).sum::<f64>() / present.len() as f64 }
        };
        let weighted_of = |f: fn(&ClassMetrics) -> f64| {
            if total == 0 { 0.0 } else { per_class.iter().map(|m| f(m) * m.support as f64).sum::<f64>() / total as f64 }
        };

        ClassificationReport {
            accuracy: ratio(correct, total),
            macro_precision: macro_of(|m| m.precision),
            macro_recall: macro_of(|m| m.recall),
            macro_f1: macro_of(|m| m.f1),
            weighted_precision: weighted_of(|m| m.precision),
            weighted_recall: weighted_of(|m| m.recall),
            weighted_f1: weighted_of(|m| m.f1),
            total,
            per_class,
        }
    }

    /// Collapses classes into groups (e.g. view or phase). Classes that `group_of` maps
    /// to `None` are left out. Groups keep the order of their first class.
    pub fn roll_up(&self, group_of: impl Fn(&str) -> Option<&'static str>) -> ConfusionMatrix {
        let mut groups: Vec<&'static str> = Vec::new();
        let index: Vec<Option<usize>> = self
            .classes
            .iter()
            .map(|c| {
                group_of(c).map(|g| match groups.iter().position(|x| *x == g) {
                    Some(i) => i,
                    None => {
                        groups.push(g);
                        groups.len() - 1
                    }
                })
            })
            .collect();
        let mut out = ConfusionMatrix::new(groups.iter().map(|g| (*g).to_owned()).collect());
        for (t, row) in self.counts.iter().enumerate() {
            for (p, count) in row.iter().enumerate() {
                if let (Some(gt), Some(gp)) = (index[t], index[p]) {
                    out.counts[gt][gp] += count;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn three_class_report_matches_hand_computation() {
        // truth \ predicted: a b c
        // a: 5 1 0   support 6
        // b: 2 3 1   support 6
        // c: 0 0 4   support 4
        let m = ConfusionMatrix::from_parts(classes(&["a", "b", "c"]), vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 4]]).expect("square");
        let r = m.report();
        assert_eq!(r.total, 16);
        assert!(close(r.accuracy, 12.0 / 16.0));
        // a: P = 5/7, R = 5/6
        let a = &r.per_class[0];
        assert!(close(a.precision, 5.0 / 7.0));
        assert!(close(a.recall, 5.0 / 6.0));
        assert!(close(a.f1, 2.0 * (5.0 / 7.0) * (5.0 / 6.0) / (5.0 / 7.0 + 5.0 / 6.0)));
        // b: P = 3/4, R = 3/6
        let b = &r.per_class[1];
        assert!(close(b.precision, 0.75) && close(b.recall, 0.5) && close(b.f1, 0.6));
        // c: P = 4/5, R = 1
        let c = &r.per_class[2];
        assert!(close(c.precision, 0.8) && close(c.recall, 1.0));
        assert!(close(c.f1, 2.0 * 0.8 / 1.8));
        assert_eq!((a.support, b.support, c.support), (6, 6, 4));
        let macro_f1 = (a.f1 + b.f1 + c.f1) / 3.0;
        assert!(close(r.macro_f1, macro_f1));
        let weighted_f1 = (a.f1 * 6.0 + b.f1 * 6.0 + c.f1 * 4.0) / 16.0;
        assert!(close(r.weighted_f1, weighted_f1));
        assert!(close(r.weighted_recall, r.accuracy), "weighted recall equals accuracy");
    }

    #[test]
    fn never_predicted_class_has_zero_precision_and_f1() {
        // b is never predicted; everything is called a.
        let m = ConfusionMatrix::from_parts(classes(&["a", "b"]), vec![vec![3, 0], vec![2, 0]]).expect("square");
        let r = m.report();
        assert!(close(r.per_class[1].precision, 0.0));
        assert!(close(r.per_class[1].recall, 0.0));
        assert!(close(r.per_class[1].f1, 0.0));
        assert!(close(r.per_class[0].precision, 0.6));
        assert!(close(r.macro_precision, 0.3));
    }

    #[test]
    fn class_absent_from_truth_and_predictions_is_left_out_of_macro() {
        let m = ConfusionMatrix::from_parts(classes(&["a", "b", "c"]), vec![vec![2, 0, 0], vec![0, 2, 0], vec![0, 0, 0]]).expect("square");
        let r = m.report();
        assert!(close(r.macro_f1, 1.0));
        assert_eq!(r.per_class[2].support, 0);
        assert!(close(r.per_class[2].recall, 0.0));
    }

    #[test]
    fn predicted_but_absent_class_counts_in_macro_with_zero() {
        // c has no true examples but is predicted once: its precision and recall are 0.
        let m = ConfusionMatrix::from_parts(classes(&["a", "b", "c"]), vec![vec![1, 0, 1], vec![0, 2, 0], vec![0, 0, 0]]).expect("square");
        let r = m.report();
        let a_f1 = 2.0 * 1.0 * 0.5 / 1.5;
        assert!(close(r.macro_f1, (a_f1 + 1.0 + 0.0) / 3.0));
    }

    #[test]
    fn empty_matrix_reports_zeros() {
        let r = ConfusionMatrix::new(classes(&["a", "b"])).report();
        assert_eq!(r.total, 0);
        assert!(close(r.accuracy, 0.0) && close(r.macro_f1, 0.0) && close(r.weighted_f1, 0.0));
    }

    #[test]
    fn record_rejects_out_of_range_classes() {
        let mut m = ConfusionMatrix::new(classes(&["a", "b"]));
        m.record(0, 1).expect("in range");
        assert_eq!(m.counts[0][1], 1);
        assert_eq!(m.record(2, 0), Err(MatrixError::ClassIndex { index: 2, classes: 2 }));
    }

    #[test]
    fn malformed_parts_are_rejected() {
        let err = ConfusionMatrix::from_parts(classes(&["a", "b"]), vec![vec![1, 2]]);
        assert_eq!(err, Err(MatrixError::RowCount { rows: 1, classes: 2 }));
        let err = ConfusionMatrix::from_parts(classes(&["a", "b"]), vec![vec![1, 2], vec![3]]);
        assert_eq!(err, Err(MatrixError::RowLength { row: 1, len: 1, classes: 2 }));
    }

    #[test]
    fn roll_up_by_view_sums_blocks() {
        let m = ConfusionMatrix::from_parts(
            classes(&["ap_preop", "ap_postop_fusion", "lat_preop"]),
            vec![vec![4, 1, 1], vec![0, 3, 0], vec![2, 0, 5]],
        )
        .expect("square");
        let v = m.roll_up(crate::classes::view_of);
        assert_eq!(v.classes, classes(&["ap", "lat"]));
        assert_eq!(v.counts, vec![vec![8, 1], vec![2, 5]]);
    }
}

//! Metric key names, in one place. A run reports, every epoch, the scalar keys below and, per
//! class, `val_precision/<class>`, `val_recall/<class>`, `val_f1/<class>`. A promoted run's
//! test evaluation gets the same report with the `test_` prefix, written by the server only.

use crate::metrics::ClassificationReport;

pub const TRAIN_LOSS: &str = "train_loss";
pub const VAL_LOSS: &str = "val_loss";
pub const VAL_ACCURACY: &str = "val_accuracy";
pub const VAL_MACRO_F1: &str = "val_macro_f1";
pub const VAL_WEIGHTED_F1: &str = "val_weighted_f1";
pub const LR: &str = "lr";
pub const IMAGES_PER_SECOND: &str = "images_per_second";
/// Images of the epoch that could not be decoded (reported, not part of the contract's list).
pub const SKIPPED_IMAGES: &str = "skipped_images";

/// Per-epoch keys that do not name a class.
pub const EPOCH_METRICS: [&str; 7] = [TRAIN_LOSS, VAL_LOSS, VAL_ACCURACY, VAL_MACRO_F1, VAL_WEIGHTED_F1, LR, IMAGES_PER_SECOND];

/// The per-class measures, as they appear in keys (`val_recall/<class>`).
pub const CLASS_MEASURES: [&str; 3] = ["precision", "recall", "f1"];

/// Keys with this prefix come from a promoted run's test evaluation and nowhere else.
pub const TEST_PREFIX: &str = "test_";

/// Which split a report's keys describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportSplit {
    Val,
    Test,
}

impl ReportSplit {
    fn prefix(self) -> &'static str {
        match self {
            ReportSplit::Val => "val_",
            ReportSplit::Test => TEST_PREFIX,
        }
    }
}

/// `val_<measure>/<class>` or `test_<measure>/<class>`.
pub fn class_key(split: ReportSplit, measure: &str, class: &str) -> String {
    format!("{}{measure}/{class}", split.prefix())
}

/// The keys and values of a classification report: accuracy, macro-F1, weighted-F1 and
/// each class's precision, recall and F1, prefixed by the split.
pub fn report_points(split: ReportSplit, report: &ClassificationReport) -> Vec<(String, f64)> {
    let p = split.prefix();
    let mut out = vec![
        (format!("{p}accuracy"), report.accuracy),
        (format!("{p}macro_f1"), report.macro_f1),
        (format!("{p}weighted_f1"), report.weighted_f1),
    ];
    for c in &report.per_class {
        out.push((class_key(split, "precision", &c.class), c.precision));
        out.push((class_key(split, "recall", &c.class), c.recall));
        out.push((class_key(split, "f1", &c.class), c.f1));
    }
    out
}

/// Whether `key` is a metric a run reports every epoch (including per-class keys such as
/// `val_recall/lat_preop`).
pub fn is_epoch_metric(key: &str) -> bool {
    if EPOCH_METRICS.contains(&key) {
        return true;
    }
    match key.split_once('/') {
        Some((prefix, class)) => prefix.strip_prefix("val_").is_some_and(|m| CLASS_MEASURES.contains(&m)) && !class.is_empty(),
        None => false,
    }
}

/// Whether `key` is written only by the server, from a test evaluation.
pub fn is_test_metric(key: &str) -> bool {
    key.starts_with(TEST_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ConfusionMatrix;

    #[test]
    fn every_validation_report_key_is_an_epoch_metric_and_no_test_key_is() {
        let m = ConfusionMatrix::from_parts(vec!["a".into(), "b".into()], vec![vec![2, 1], vec![0, 3]]).expect("matrix");
        let report = m.report();
        for (key, _) in report_points(ReportSplit::Val, &report) {
            assert!(is_epoch_metric(&key), "{key}");
            assert!(!is_test_metric(&key), "{key}");
        }
        for (key, _) in report_points(ReportSplit::Test, &report) {
            assert!(!is_epoch_metric(&key), "{key}");
            assert!(is_test_metric(&key), "{key}");
        }
        assert_eq!(report_points(ReportSplit::Val, &report).len(), 3 + 3 * 2);
        assert!(!is_epoch_metric("val_sharpness/a"));
        assert!(!is_epoch_metric("val_recall/"));
    }
}

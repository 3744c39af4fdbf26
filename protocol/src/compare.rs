//! The per-class comparison of several runs, computed once: the compare page, `cobb compare`
//! and `GET /api/v1/compare` all show what [`compare`] returns.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::metrics::{ClassMetrics, ConfusionMatrix};
use crate::spec::Params;
use crate::status::RunStatus;

/// Classes with fewer training images than this are flagged.
pub const FEW_TRAINING_IMAGES: u64 = 100;

/// The most runs one comparison takes.
pub const MAX_RUNS: usize = 20;

/// What the comparison needs of one run: its validation results at its best epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub id: i64,
    pub name: String,
    pub status: RunStatus,
    pub best_epoch: Option<i64>,
    pub params: Params,
    /// Per-class rows of the best epoch (in any order).
    pub per_class: Vec<ClassMetrics>,
    /// The best epoch's validation confusion matrix.
    pub confusion: Option<ConfusionMatrix>,
}

/// One number of one run, with whether it is the best of the runs compared and its
/// difference from the baseline run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub value: Option<f64>,
    pub best: bool,
    pub delta: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComparedRun {
    pub id: i64,
    pub name: String,
    pub status: RunStatus,
    pub best_epoch: Option<i64>,
    pub params: Params,
    /// Validation accuracy and macro-F1 at the best epoch (from its confusion matrix).
    pub val_accuracy: Option<f64>,
    pub val_macro_f1: Option<f64>,
}

/// One class (or roll-up group): a cell per run for precision and for recall, in run order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub class: String,
    /// Training images of the class in the dataset version (classes only, not groups).
    pub train_images: Option<u64>,
    /// Fewer than [`FEW_TRAINING_IMAGES`] training images.
    pub few_images: bool,
    pub precision: Vec<Cell>,
    pub recall: Vec<Cell>,
}

/// The confusion matrix of run `b` minus run `a` (rows true, columns predicted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixDiff {
    pub a: i64,
    pub b: i64,
    pub classes: Vec<String>,
    pub counts: Vec<Vec<i64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub runs: Vec<ComparedRun>,
    /// The run the deltas are taken against.
    pub baseline: i64,
    pub few_images_threshold: u64,
    pub classes: Vec<Row>,
    pub by_view: Vec<Row>,
    pub by_phase: Vec<Row>,
    /// The first two runs' matrices, when both exist over the same classes.
    pub matrix_diff: Option<MatrixDiff>,
}

fn cells(values: &[Option<f64>], baseline: Option<f64>) -> Vec<Cell> {
    let best = values.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
    values.iter().map(|v| Cell { value: *v, best: v.is_some_and(|x| x == best), delta: v.zip(baseline).map(|(x, b)| x - b) }).collect()
}

/// Rows for `names`, each run's (precision, recall) looked up by `lookup`.
fn rows(
    names: &[String],
    runs: usize,
    base: usize,
    lookup: impl Fn(usize, &str) -> Option<(f64, f64)>,
    train_images: Option<&BTreeMap<String, u64>>,
) -> Vec<Row> {
    names
        .iter()
        .map(|name| {
            let pr: Vec<Option<(f64, f64)>> = (0..runs).map(|i| lookup(i, name)).collect();
            let precision: Vec<Option<f64>> = pr.iter().map(|x| x.map(|x| x.0)).collect();
            let recall: Vec<Option<f64>> = pr.iter().map(|x| x.map(|x| x.1)).collect();
            let train = train_images.map(|t| t.get(name).copied().unwrap_or(0));
            Row {
                class: name.clone(),
                train_images: train,
                few_images: train.is_some_and(|n| n < FEW_TRAINING_IMAGES),
                precision: cells(&precision, precision[base]),
                recall: cells(&recall, recall[base]),
            }
        })
        .collect()
}

/// Compares `runs` (in the order given) against `baseline` (the first run when None or not
/// among them). `train_images` counts the training images per class of the runs' dataset
/// version. Classes are those of the first run that has a confusion matrix, in its order.
pub fn compare(runs: &[RunResults], baseline: Option<i64>, train_images: &BTreeMap<String, u64>) -> Comparison {
    let base = baseline.and_then(|b| runs.iter().position(|r| r.id == b)).unwrap_or(0);
    let classes: Vec<String> = runs.iter().find_map(|r| r.confusion.as_ref().map(|c| c.classes.clone())).unwrap_or_default();
    let class_rows = rows(
        &classes,
        runs.len(),
        base,
        |i, class| runs[i].per_class.iter().find(|m| m.class == class).map(|m| (m.precision, m.recall)),
        Some(train_images),
    );
    let roll_up = |group: fn(&str) -> Option<&'static str>| {
        let reports: Vec<Option<Vec<ClassMetrics>>> =
            runs.iter().map(|r| r.confusion.as_ref().map(|c| c.roll_up(group).report().per_class)).collect();
        let names: Vec<String> = reports.iter().flatten().next().map(|g| g.iter().map(|m| m.class.clone()).collect()).unwrap_or_default();
        rows(
            &names,
            runs.len(),
            base,
            |i, name| reports[i].as_ref().and_then(|g| g.iter().find(|m| m.class == name)).map(|m| (m.precision, m.recall)),
            None,
        )
    };
    let matrix_diff = match (runs.first().and_then(|r| r.confusion.as_ref()), runs.get(1).and_then(|r| r.confusion.as_ref())) {
        (Some(a), Some(b)) if a.classes == b.classes => Some(MatrixDiff {
            a: runs[0].id,
            b: runs[1].id,
            classes: a.classes.clone(),
            counts: a
                .counts
                .iter()
                .zip(&b.counts)
                .map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| *y as i64 - *x as i64).collect())
                .collect(),
        }),
        _ => None,
    };
    Comparison {
        runs: runs
            .iter()
            .map(|r| {
                let report = r.confusion.as_ref().map(ConfusionMatrix::report);
                ComparedRun {
                    id: r.id,
                    name: r.name.clone(),
                    status: r.status,
                    best_epoch: r.best_epoch,
                    params: r.params.clone(),
                    val_accuracy: report.as_ref().map(|x| x.accuracy),
                    val_macro_f1: report.as_ref().map(|x| x.macro_f1),
                }
            })
            .collect(),
        baseline: runs.get(base).map_or(0, |r| r.id),
        few_images_threshold: FEW_TRAINING_IMAGES,
        classes: class_rows,
        by_view: roll_up(crate::classes::view_of),
        by_phase: roll_up(crate::classes::phase_of),
        matrix_diff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, counts: Vec<Vec<u64>>) -> RunResults {
        let classes = vec!["ap_preop".to_owned(), "ap_postop_fusion".to_owned(), "lat_preop".to_owned()];
        let confusion = ConfusionMatrix::from_parts(classes, counts).expect("matrix");
        let mut per_class = confusion.report().per_class;
        per_class.reverse(); // rows come in any order
        RunResults {
            id,
            name: format!("r{id}"),
            status: RunStatus::Succeeded,
            best_epoch: Some(1),
            params: Params::new(),
            per_class,
            confusion: Some(confusion),
        }
    }

    #[test]
    fn best_values_deltas_roll_ups_and_the_matrix_difference() {
        let a = run(1, vec![vec![2, 0, 0], vec![1, 1, 0], vec![0, 0, 2]]);
        let b = run(2, vec![vec![2, 0, 0], vec![0, 2, 0], vec![0, 1, 1]]);
        let train: BTreeMap<String, u64> = [("ap_preop".to_owned(), 150), ("ap_postop_fusion".to_owned(), 40)].into();
        let c = compare(&[a, b], Some(1), &train);
        assert_eq!(c.baseline, 1);
        assert_eq!(c.classes.iter().map(|r| r.class.as_str()).collect::<Vec<_>>(), ["ap_preop", "ap_postop_fusion", "lat_preop"]);
        let fusion = &c.classes[1];
        assert_eq!(fusion.recall[0].value, Some(0.5));
        assert_eq!(fusion.recall[1].value, Some(1.0));
        assert!(fusion.recall[1].best && !fusion.recall[0].best);
        assert_eq!(fusion.recall[1].delta, Some(0.5));
        assert_eq!(fusion.recall[0].delta, Some(0.0));
        assert!(fusion.few_images && !c.classes[0].few_images);
        assert_eq!(c.classes[2].train_images, Some(0));
        assert_eq!(c.by_view.iter().map(|r| r.class.as_str()).collect::<Vec<_>>(), ["ap", "lat"]);
        let diff = c.matrix_diff.expect("same classes");
        assert_eq!(diff.counts[1], vec![-1, 1, 0]);
        assert_eq!(c.runs[1].val_accuracy, Some(5.0 / 6.0));
    }

    #[test]
    fn an_unknown_baseline_falls_back_to_the_first_run() {
        let c = compare(
            &[run(3, vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 0, 1]]), run(4, vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 0, 1]])],
            Some(99),
            &BTreeMap::new(),
        );
        assert_eq!(c.baseline, 3);
    }
}

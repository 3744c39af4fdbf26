//! Training on CPU with tiny models and images: learning, determinism, resume, cancel.

use data::manifest::{self, ScanOptions};
use data::split;
use protocol::spec::{self, ExperimentSpec};
use std::path::Path;
use worker::device::DeviceChoice;
use worker::train::{self, EpochReport, Finish, Reporter, TrainData, checkpoint};

fn spec(extra: &str) -> ExperimentSpec {
    let yaml = format!(
        "name: t\ndataset: {{name: d}}\nmodel: {{arch: simple_cnn, image_size: 48, dropout: 0.1}}\n\
         train:\n  epochs: 4\n  batch_size: 16\n  seed: 3\n  optimizer: {{name: adamw, lr: 0.003, weight_decay: 0.0001}}\n\
         \x20 schedule: {{name: cosine, warmup_epochs: 1}}\n  loss: {{class_weights: balanced, label_smoothing: 0.05}}\n\
         \x20 augment: {{rotate_deg: 3, noise: 0.01}}\n{extra}"
    );
    spec::resolved(&protocol::plan::parse(&yaml, "t.yaml").expect("valid spec").spec)
}

/// Phantoms split the way `cobb dataset register` splits them.
fn phantom_data(dir: &Path, count: usize) -> TrainData {
    let options = data::phantoms::Options {
        count,
        size: 64,
        seed: 11,
        format: data::phantoms::Format::Png,
        balance: data::phantoms::Balance::Uniform,
    };
    let root = dir.join("ph");
    data::phantoms::generate(&root, &options).expect("phantoms");
    let classes: Vec<String> = protocol::classes::SCOLIOSIS_CLASSES.iter().map(|c| (*c).to_owned()).collect();
    let scan = ScanOptions { classes: classes.clone(), key: data::pseudonym::PseudonymKey::from_bytes([1; 32]), decode: false };
    let scanned = manifest::read_manifest(&root, &root.join("manifest.csv"), &scan).expect("manifest");
    let items = split::freeze(scanned.items, [70, 15, 15], 0, true);

    TrainData::from_items(&root, classes, &items, dir.join("cache"), "v").expect("items under the root")
}

#[derive(Default)]
struct Log {
    epochs: Vec<EpochReport>,
    stop_after_steps: Option<usize>,
    steps: usize,
}

impl Reporter for Log {
    fn step(&mut self, _: usize, _: usize, _: usize, _: f64) {
        self.steps += 1;
    }
    fn epoch(&mut self, report: &EpochReport) {
        self.epochs.push(report.clone());
    }
    fn should_stop(&mut self) -> bool {
        self.stop_after_steps.is_some_and(|n| self.steps >= n)
    }
}

fn run(spec: &ExperimentSpec, data: &TrainData, dir: &Path, resume: bool, log: &mut Log) -> train::Outcome {
    let store = checkpoint::Store::new(dir);
    train::train_on(DeviceChoice::Cpu, spec, data, &store, resume, log).expect("training runs")
}

fn losses(log: &Log) -> Vec<(f64, f64)> {
    log.epochs.iter().map(|e| (e.train_loss, e.val_loss)).collect()
}

#[test]
fn simple_cnn_learns_phantoms_and_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = phantom_data(dir.path(), 400);
    let spec = spec("");

    // Uninterrupted run.
    let mut full = Log::default();
    let outcome = run(&spec, &data, &dir.path().join("full"), false, &mut full);
    assert_eq!(outcome.finish, Finish::Completed { epochs: 4, early_stopped: false });
    let last = full.epochs.last().expect("epochs");
    // Chance macro-F1 for 10 balanced classes is about 0.1; 0.3 after four short epochs
    // means the model reads anatomy and hardware, not noise.
    assert!(last.report.macro_f1 > 0.3, "macro-F1 {}", last.report.macro_f1);
    assert!(last.train_loss < full.epochs[0].train_loss);
    assert_eq!(last.report.per_class.len(), 10);
    assert!(dir.path().join("full/best/model.bpk").exists());

    // The same seed gives the same run.
    let mut again = Log::default();
    run(&spec, &data, &dir.path().join("again"), false, &mut again);
    assert_eq!(losses(&full), losses(&again), "fixed seed, same losses");

    // Stop after epoch 2 (the fifth step of epoch 2 asks to stop), then resume.
    let steps_per_epoch = data.train.len().div_ceil(16);
    let mut first = Log { stop_after_steps: Some(2 * steps_per_epoch + 5), ..Log::default() };
    let stopped = run(&spec, &data, &dir.path().join("resumed"), false, &mut first);
    assert_eq!(stopped.finish, Finish::Stopped { epoch: 2 }, "cancellation stops within one step");
    assert_eq!(first.epochs.len(), 2);
    let mut second = Log::default();
    let resumed = run(&spec, &data, &dir.path().join("resumed"), true, &mut second);
    assert_eq!(second.epochs.first().map(|e| e.epoch), Some(2), "resumes at the first unfinished epoch");
    assert_eq!(resumed.history.len(), 4);
    let combined: Vec<(f64, f64)> = resumed.history.iter().map(|e| (e.train_loss, e.val_loss)).collect();
    assert_eq!(combined, losses(&full), "a resumed run reaches the uninterrupted run's metrics");
    assert_eq!(resumed.best_epoch, outcome.best_epoch);
}

#[test]
fn early_stopping_ends_a_run_that_stops_improving() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = phantom_data(dir.path(), 120);
    // A learning rate of zero never improves the validation loss after the first epoch.
    let spec = spec("").clone();
    let mut spec = spec;
    spec.train.optimizer.lr = 1e-12;
    spec.train.epochs = 6;
    spec.train.early_stopping = Some(protocol::spec::EarlyStoppingSpec { metric: "val_macro_f1".to_owned(), patience: 2 });
    let mut log = Log::default();
    let outcome = run(&spec, &data, dir.path(), false, &mut log);
    match outcome.finish {
        Finish::Completed { early_stopped: true, epochs } => assert!(epochs < 6, "{epochs}"),
        other => panic!("expected early stopping, got {other:?}"),
    }
}

/// Two trainings in one process (`cobb demo`'s two workers) each draw only their own
/// randomness: initial weights under the backend's lock, dropout from the run's own
/// generator. Side by side, each gives what it gives alone.
#[test]
fn runs_side_by_side_each_give_what_they_give_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = phantom_data(dir.path(), 160);
    let mut a = spec("");
    a.train.epochs = 2;
    let mut b = a.clone();
    b.train.seed = 5;
    b.model.dropout = Some(0.3);

    let mut alone_a = Log::default();
    run(&a, &data, &dir.path().join("a1"), false, &mut alone_a);
    let mut alone_b = Log::default();
    run(&b, &data, &dir.path().join("b1"), false, &mut alone_b);
    assert_ne!(losses(&alone_a), losses(&alone_b), "two seeds, two runs");

    let (side_a, side_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            let mut log = Log::default();
            run(&a, &data, &dir.path().join("a2"), false, &mut log);
            log
        });
        let tb = s.spawn(|| {
            let mut log = Log::default();
            run(&b, &data, &dir.path().join("b2"), false, &mut log);
            log
        });
        (ta.join().expect("run a"), tb.join().expect("run b"))
    });
    assert_eq!(losses(&side_a), losses(&alone_a), "run a beside run b");
    assert_eq!(losses(&side_b), losses(&alone_b), "run b beside run a");
}

//! The experiment spec as users meet it: files in, runs or positioned errors out.

use protocol::plan;
use protocol::spec::{Arch, SpecError};
use protocol::sweep;

const VALID: &str = "\
name: t
dataset: {name: d}
model:
  arch: simple_cnn
  image_size: 32
train:
  epochs: 2
  batch_size: 4
  seed: 1
  optimizer: {name: adamw, lr: 0.001}
";

fn with_sweep(sweep: &str) -> String {
    format!("{VALID}sweep:\n{sweep}")
}

fn error(source: &str) -> SpecError {
    plan::parse(source, "exp.yaml").expect_err("the spec should be rejected")
}

#[test]
fn every_checked_in_experiment_parses_and_expands() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("experiments/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let parsed = plan::parse(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        let runs = parsed.runs.clone();
        assert!(!runs.is_empty());
        seen += 1;
    }
    assert!(seen >= 3, "smoke, demo and scoliosis-efficientnet are checked in");
}

#[test]
fn the_study_sweep_covers_b0_b3_b6_at_native_resolution() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments/scoliosis-efficientnet.yaml");
    let parsed = plan::parse(&std::fs::read_to_string(dir).expect("file"), "s.yaml").expect("valid");
    let runs = parsed.runs.clone();
    assert_eq!(runs.len(), 18);
    let b6 = runs.iter().find(|r| r.config.model.arch == Arch::EfficientnetB6).expect("b6");
    assert_eq!(b6.config.model.image_size, Some(528));
    let b0 = runs.iter().find(|r| r.config.model.arch == Arch::EfficientnetB0).expect("b0");
    assert_eq!(b0.config.model.image_size, Some(224));
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let e = error("name: t\ndataset: {name: d\nmodel: x\n");
    assert_eq!(e.file, "exp.yaml");
    assert!(e.line >= 2, "{e}");
    assert!(e.to_string().starts_with("exp.yaml:"), "{e}");
}

#[test]
fn unknown_key_is_rejected_with_a_suggestion_and_its_path() {
    let source = VALID.replace("lr: 0.001", "lrr: 0.001");
    let e = error(&source);
    assert!(e.message.contains("unknown field `lrr`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `lr`?"));
    assert!(e.path.starts_with("train.optimizer"), "{e}");
    assert_eq!(e.line, 10, "{e}");
}

#[test]
fn unknown_architecture_suggests_the_closest() {
    let e = error(&VALID.replace("simple_cnn", "resnet19"));
    assert_eq!(e.path, "model.arch");
    assert!(e.hint.as_deref().is_some_and(|h| h.contains("resnet18")), "{e}");
}

#[test]
fn wrong_type_names_the_key_path_and_line() {
    let e = error(&VALID.replace("epochs: 2", "epochs: many"));
    assert_eq!(e.path, "train.epochs");
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.contains("invalid type"), "{e}");
}

#[test]
fn missing_required_key_is_named() {
    let e = error(&VALID.replace("  seed: 1\n", ""));
    assert!(e.message.contains("missing field `seed`"), "{e}");
}

#[test]
fn semantic_errors_point_at_their_key() {
    let e = error(&VALID.replace("lr: 0.001", "lr: -1"));
    assert_eq!(e.path, "train.optimizer.lr");
    assert_eq!((e.line, e.column), (10, 28), "{e}");
    let e = error(&VALID.replace("epochs: 2", "epochs: 0"));
    assert_eq!(e.path, "train.epochs");
}

#[test]
fn empty_file_and_empty_sweep_are_errors() {
    assert!(error("").message.contains("empty"));
    let e = error(&with_sweep("  method: grid\n  parameters: {}\n"));
    assert_eq!(e.path, "sweep.parameters");
    assert!(e.message.contains("no parameters"), "{e}");
    let e = error(&with_sweep("  method: grid\n  parameters:\n    model.arch: {values: []}\n"));
    assert!(e.message.contains("empty"), "{e}");
    assert_eq!(e.line, 14, "{e}");
}

#[test]
fn range_with_min_above_max_is_an_error() {
    let e = error(&with_sweep(
        "  method: random\n  max_runs: 3\n  parameters:\n    train.optimizer.lr: {distribution: log_uniform, min: 0.1, max: 0.001}\n",
    ));
    assert!(e.message.contains("must not exceed"), "{e}");
    assert_eq!(e.path, "sweep.parameters.train.optimizer.lr");
    assert_eq!(e.line, 15, "{e}");
}

#[test]
fn sweep_paths_must_name_real_keys() {
    let e = error(&with_sweep("  method: grid\n  parameters:\n    train.optimiser.lr: {values: [0.1]}\n"));
    assert!(e.message.contains("did you mean `train.optimizer.lr`"), "{e}");
}

#[test]
fn a_bad_value_in_a_sweep_is_blamed_on_the_parameter() {
    let e = error(&with_sweep("  method: grid\n  parameters:\n    train.optimizer.lr: {values: [0.01, -2]}\n"));
    assert_eq!(e.path, "sweep.parameters.train.optimizer.lr", "{e}");
    assert!(e.message.contains("run 1"), "{e}");
}

#[test]
fn grid_is_the_cartesian_product_capped_by_max_runs() {
    let source = with_sweep(
        "  method: grid\n  parameters:\n    model.arch: {values: [simple_cnn, resnet18]}\n    train.batch_size: {values: [4, 8, 16]}\n",
    );
    let parsed = plan::parse(&source, "g.yaml").expect("valid");
    let runs = parsed.runs.clone();
    assert_eq!(runs.len(), 6);
    let combos: Vec<String> = runs.iter().map(|r| sweep::describe(&r.params)).collect();
    assert_eq!(combos[0], "model.arch=simple_cnn train.batch_size=4");
    assert_eq!(combos[5], "model.arch=resnet18 train.batch_size=16");
    assert_eq!(runs[4].config.train.batch_size, 8);
    assert_eq!(runs[4].config.model.arch, Arch::Resnet18);
    assert!(runs.iter().all(|r| r.config.sweep.is_none()));

    let capped = plan::parse(&source.replace("method: grid", "method: grid\n  max_runs: 4"), "g.yaml").expect("valid");
    assert_eq!(capped.runs.clone().len(), 4);
}

#[test]
fn random_sweeps_are_reproducible_and_within_bounds() {
    let source = with_sweep(
        "  method: random\n  max_runs: 20\n  seed: 9\n  parameters:\n    train.optimizer.lr: {distribution: log_uniform, min: 0.0001, max: 0.01}\n    train.batch_size: {distribution: int_uniform, min: 4, max: 6}\n    model.dropout: {distribution: uniform, min: 0.1, max: 0.3}\n    model.arch: {values: [simple_cnn, resnet18]}\n",
    );
    let parsed = plan::parse(&source, "r.yaml").expect("valid");
    let a = parsed.runs.clone();
    let b = plan::parse(&source, "r.yaml").expect("valid").runs;
    assert_eq!(a, b, "same file and seed give the same runs");
    assert_eq!(a.len(), 20);
    for run in &a {
        let lr = run.config.train.optimizer.lr;
        assert!((0.0001..=0.01).contains(&lr), "{lr}");
        assert!((4..=6).contains(&run.config.train.batch_size));
        let dropout = run.config.model.dropout.expect("set");
        assert!((0.1..=0.3).contains(&dropout));
    }
    let sizes: std::collections::BTreeSet<u32> = a.iter().map(|r| r.config.train.batch_size).collect();
    assert_eq!(sizes.len(), 3, "int_uniform reaches both ends");
    let other = plan::parse(&source.replace("seed: 9", "seed: 10"), "r.yaml").expect("valid").runs;
    assert_ne!(a, other, "another seed draws other runs");
}

#[test]
fn random_sweep_without_max_runs_is_an_error() {
    let e = error(&with_sweep("  method: random\n  parameters:\n    model.dropout: {distribution: uniform, min: 0.1, max: 0.2}\n"));
    assert_eq!(e.path, "sweep.max_runs");
}

#[test]
fn grid_with_a_distribution_is_an_error() {
    let e = error(&with_sweep("  method: grid\n  parameters:\n    model.dropout: {distribution: uniform, min: 0.1, max: 0.2}\n"));
    assert!(e.message.contains("grid sweep needs `values`"), "{e}");
}

#[test]
fn every_sweepable_path_can_be_set() {
    for path in sweep::SWEEPABLE_PATHS {
        let value = match path {
            "model.arch" => "resnet18",
            "train.optimizer.name" => "sgd",
            "train.schedule.name" => "step",
            "train.loss.class_weights" => "balanced",
            "train.augment.scale" => "[0.9, 1.1]",
            "train.augment.hflip" => "true",
            "train.early_stopping.metric" | "select.metric" => "val_loss",
            "select.goal" => "minimize",
            "model.pretrained" => "w.safetensors",
            "train.optimizer.momentum" => "0.9",
            "train.schedule.gamma" => "0.5",
            "train.schedule.warmup_epochs" => "1",
            "train.epochs" => "3",
            "model.image_size" => "64",
            "model.dropout" | "train.loss.label_smoothing" => "0.1",
            _ => "1",
        };
        let mut source = with_sweep(&format!("  method: grid\n  parameters:\n    {path}: {{values: [{value}]}}\n"));
        if path == "train.optimizer.momentum" {
            source = source.replace("name: adamw", "name: sgd");
        }
        if path.starts_with("train.schedule.") && path != "train.schedule.name" && path != "train.schedule.warmup_epochs" {
            source = source.replace("  optimizer:", "  schedule: {name: step}\n  optimizer:");
        }
        if path.starts_with("train.early_stopping.") {
            source = source.replace("  optimizer:", "  early_stopping: {metric: val_loss, patience: 2}\n  optimizer:");
        }
        let parsed = plan::parse(&source, "p.yaml").unwrap_or_else(|e| panic!("{path}: {e}"));
        let runs = parsed.runs.clone();
        let json = serde_json::to_value(&runs[0].config).expect("json");
        let mut node = &json;
        for part in path.split('.') {
            node = node.get(part).unwrap_or_else(|| panic!("{path} is set in the resolved config"));
        }
    }
}

#[test]
fn image_size_defaults_to_the_native_resolution() {
    let parsed = plan::parse(&VALID.replace("  image_size: 32\n", ""), "n.yaml").expect("valid");
    let runs = parsed.runs.clone();
    assert_eq!(runs[0].config.model.image_size, Some(128));
}

#[test]
fn select_metric_must_be_a_per_epoch_metric() {
    let e = error(&format!("{VALID}select: {{metric: val_macro_f2}}\n"));
    assert_eq!(e.path, "select.metric");
    assert!(e.message.contains("did you mean `val_macro_f1`"), "{e}");
    assert!(plan::parse(&format!("{VALID}select: {{metric: val_recall/ap_preop}}\n"), "x").is_ok());
}

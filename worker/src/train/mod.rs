//! The training loop: a hand-written Burn loop (forward, backward, optimiser step) with
//! per-class validation metrics every epoch (protocol's metric math), best-epoch
//! selection, early stopping, cooperative cancellation, and checkpoints that let a run
//! resume exactly where it stopped.

pub mod bench;
pub mod checkpoint;
pub mod schedule;

use burn::grad_clipping::GradientClippingConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use protocol::metrics::{ClassificationReport, ConfusionMatrix};
use protocol::spec::{ClassWeights, ExperimentSpec, Goal, OptimizerName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::models::{self, Classifier};
use data::cache::{ImageCache, LoadError};
use data::loader::{Batch, Batches, LoaderConfig, LoaderItem};

/// Gradients are clipped to this global norm (a fixed choice; see docs/training.md).
pub const CLIP_NORM: f32 = 5.0;

/// A run carries on without images that cannot be decoded (each reported) while they are
/// at most this share of its train and validation items; beyond it the run fails naming
/// them, since the results would no longer describe the frozen dataset version.
pub const MAX_SKIPPED_FRACTION: f64 = 0.05;

/// What a run trains on.
pub struct TrainData {
    pub classes: Vec<String>,
    pub train: Vec<LoaderItem>,
    pub val: Vec<LoaderItem>,
    /// Decoded-image cache root and the dataset version it is keyed by.
    pub cache_root: PathBuf,
    pub version: String,
}

impl TrainData {
    /// The train and validation items of a dataset version (test items are dropped here,
    /// whatever the caller passes), with labels indexed by `classes`. An item whose path
    /// leaves `root` (or links out of it) is an error naming it: nothing outside the dataset
    /// root is ever read.
    pub fn from_items(
        root: &std::path::Path,
        classes: Vec<String>,
        items: &[protocol::api::DatasetItem],
        cache_root: PathBuf,
        version: &str,
    ) -> Result<Self, String> {
        let mut data = TrainData { classes, train: Vec::new(), val: Vec::new(), cache_root, version: version.to_owned() };
        for item in items {
            let Some(label) = data.classes.iter().position(|c| *c == item.label) else { continue };
            if item.split == protocol::Split::Test {
                continue;
            }
            let entry =
                LoaderItem { path: data::resolve_item(root, &item.path)?, name: item.path.clone(), sha256: item.sha256.clone(), label };
            match item.split {
                protocol::Split::Train => data.train.push(entry),
                protocol::Split::Val => data.val.push(entry),
                protocol::Split::Test => {}
            }
        }
        Ok(data)
    }
}

/// One finished epoch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub images_per_second: f64,
    pub confusion: ConfusionMatrix,
    pub report: ClassificationReport,
    /// Whether this epoch is the best so far by `select.metric`.
    pub best: bool,
    /// Images left out (could not be decoded) and why.
    pub skipped: Vec<(String, String)>,
    /// Each validation image's prediction, on a best epoch only (sent to the server, never
    /// kept in the checkpoint's history).
    #[serde(skip)]
    pub predictions: Vec<protocol::api::ItemPrediction>,
}

impl EpochReport {
    /// The per-epoch metric keys (docs/api.md) with their values.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        use protocol::keys;
        let mut out: Vec<(String, f64)> = [
            (keys::TRAIN_LOSS, self.train_loss),
            (keys::VAL_LOSS, self.val_loss),
            (keys::LR, self.lr),
            (keys::IMAGES_PER_SECOND, self.images_per_second),
            (keys::SKIPPED_IMAGES, self.skipped.len() as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        out.extend(keys::report_points(keys::ReportSplit::Val, &self.report));
        out
    }

    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Where the trainer tells its caller what happens, and asks whether to stop.
pub trait Reporter {
    fn step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: f64) {}
    fn epoch(&mut self, report: &EpochReport);
    /// Checked between steps: true stops training within one step.
    fn should_stop(&mut self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// All epochs ran, or early stopping ended the run.
    Completed { epochs: usize, early_stopped: bool },
    /// `should_stop` asked to stop; the last checkpoint is the previous epoch's.
    Stopped { epoch: usize },
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub finish: Finish,
    pub best_epoch: Option<usize>,
    pub best_value: Option<f64>,
    pub history: Vec<EpochReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the loss became {value} at epoch {epoch}, step {step}; lower the learning rate or check the data")]
    NonFinite { epoch: usize, step: usize, value: f64 },
    #[error("no training images could be read ({skipped} skipped); see the ingestion report")]
    NoData { skipped: usize },
    #[error("the validation split is empty (or none of its images could be read); the best epoch cannot be chosen")]
    NoValidation,
    #[error(transparent)]
    Data(#[from] LoadError),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Pretrained(#[from] models::pretrained::PretrainedError),
    #[error(
        "{skipped} of {total} train/val images could not be read in epoch {epoch}, more than the {limit:.0}% a run tolerates; first: {first}; fix or remove them and register a new dataset version"
    )]
    TooManySkipped { epoch: usize, skipped: usize, total: usize, limit: f64, first: String },
}

fn images_tensor(batch: &Batch, size: usize, device: &Device) -> Tensor<4> {
    input_tensor(&batch.images, batch.len(), size, device)
}

/// The model's input for `n` prepared `size` x `size` images (0..1, image after image): what
/// training, evaluation and classification all feed the model.
pub(crate) fn input_tensor(images: &[f32], n: usize, size: usize, device: &Device) -> Tensor<4> {
    // Centre 0..1 intensities around zero with a fixed scale.
    Tensor::<1>::from_floats(images, device).reshape([n, 1, size, size]).sub_scalar(0.5).mul_scalar(4.0)
}

fn labels_tensor(batch: &Batch, device: &Device) -> Tensor<1, Int> {
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(labels, [batch.len()]), device)
}

/// Class weights for `balanced`: total / (classes * count), 0-count classes weighted 1.
fn balanced_weights(items: &[LoaderItem], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for item in items {
        if item.label < classes {
            counts[item.label] += 1;
        }
    }
    let present = counts.iter().filter(|c| **c > 0).count().max(1);
    counts.iter().map(|&c| if c == 0 { 1.0 } else { items.len() as f32 / (present as f32 * c as f32) }).collect()
}

fn better(goal: Goal, candidate: f64, best: Option<f64>) -> bool {
    match best {
        None => true,
        Some(b) => match goal {
            Goal::Maximize => candidate > b,
            Goal::Minimize => candidate < b,
        },
    }
}

/// Predictions of a model over items: the confusion matrix, the summed loss and the images
/// seen, and the images that could not be read.
struct Scored {
    confusion: ConfusionMatrix,
    loss_sum: f64,
    seen: usize,
    skipped: Vec<(String, String)>,
    predictions: Vec<protocol::api::ItemPrediction>,
}

#[allow(clippy::too_many_arguments)]
fn score(
    model: &Classifier,
    classes: &[String],
    items: Arc<Vec<LoaderItem>>,
    cache: Arc<ImageCache>,
    config: &LoaderConfig,
    size: usize,
    device: &Device,
    loss_fn: Option<&burn::nn::loss::CrossEntropyLoss>,
) -> Result<Scored, TrainError> {
    let mut out =
        Scored { confusion: ConfusionMatrix::new(classes.to_vec()), loss_sum: 0.0, seen: 0, skipped: Vec::new(), predictions: Vec::new() };
    for batch in Batches::new(items, cache, config.clone(), 0) {
        let mut batch = batch?;
        out.skipped.append(&mut batch.skipped);
        if batch.is_empty() {
            continue;
        }
        let logits = model.forward(images_tensor(&batch, size, device));
        if let Some(loss_fn) = loss_fn {
            let loss = loss_fn.forward(logits.clone(), labels_tensor(&batch, device));
            out.loss_sum += f64::from(loss.into_scalar::<f32>()) * batch.len() as f64;
        }
        out.seen += batch.len();
        let predicted: Vec<i64> = logits.clone().argmax(1).into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default();
        let probabilities: Vec<f32> =
            burn::tensor::activation::softmax(logits, 1).into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        let n = classes.len();
        for (i, (truth, p)) in batch.labels.iter().zip(predicted).enumerate() {
            let p = p.max(0) as usize;
            let _ = out.confusion.record(*truth, p);
            if let (Some(name), Some(probs)) = (batch.names.get(i), probabilities.get(i * n..(i + 1) * n)) {
                out.predictions.push(protocol::api::ItemPrediction {
                    item: name.clone(),
                    predicted: p as u32,
                    probabilities: probs.to_vec(),
                });
            }
        }
    }
    Ok(out)
}

/// A checkpoint's result on a set of items (a promotion's test split).
pub struct Evaluation {
    pub confusion: ConfusionMatrix,
    pub skipped: Vec<(String, String)>,
    pub predictions: Vec<protocol::api::ItemPrediction>,
}

/// Evaluates the model saved at `model_file` (a best checkpoint, burnpack) on `items`, without
/// augmentation, on the chosen device.
pub fn evaluate_on(
    choice: crate::device::DeviceChoice,
    spec: &ExperimentSpec,
    classes: &[String],
    items: Vec<LoaderItem>,
    cache: ImageCache,
    model_file: &std::path::Path,
) -> Result<Evaluation, TrainError> {
    let device = crate::device::burn_device(choice)?;
    evaluate(spec, classes, items, cache, model_file, &device)
}

fn evaluate(
    spec: &ExperimentSpec,
    classes: &[String],
    items: Vec<LoaderItem>,
    cache: ImageCache,
    model_file: &std::path::Path,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let size = spec.model.resolved_image_size() as usize;
    let model = models::build(spec.model.arch, 1, classes.len(), spec.model.dropout, device).model;
    let model = checkpoint::load_model(model, model_file)?.valid();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = LoaderConfig { batch_size: spec.train.batch_size as usize, seed: 0, shuffle: false, augment: None, threads, prefetch: 2 };
    let scored = score(&model, classes, Arc::new(items), Arc::new(cache), &config, size, device, None)?;
    if scored.seen == 0 {
        return Err(TrainError::NoData { skipped: scored.skipped.len() });
    }
    Ok(Evaluation { confusion: scored.confusion, skipped: scored.skipped, predictions: scored.predictions })
}

/// Trains on the chosen device: Burn's flex backend on the CPU, or CUDA (`cuda` feature).
/// Call [`crate::device::probe`] first.
pub fn train_on(
    choice: crate::device::DeviceChoice,
    spec: &ExperimentSpec,
    data: &TrainData,
    checkpoints: &checkpoint::Store,
    resume: bool,
    reporter: &mut dyn Reporter,
) -> Result<Outcome, TrainError> {
    let device = crate::device::burn_device(choice)?;
    train(spec, data, &device, checkpoints, resume, reporter)
}

/// Trains `spec` on `data`. With `resume`, continues from the checkpoint in
/// `checkpoints` (if any) and reaches the same result as an uninterrupted run.
pub fn train(
    spec: &ExperimentSpec,
    data: &TrainData,
    device: &Device,
    checkpoints: &checkpoint::Store,
    resume: bool,
    reporter: &mut dyn Reporter,
) -> Result<Outcome, TrainError> {
    let o = &spec.train.optimizer;
    let clip = Some(GradientClippingConfig::Norm(CLIP_NORM));
    match o.name {
        OptimizerName::Adamw => {
            let optim = AdamWConfig::new().with_weight_decay(o.weight_decay as f32).with_grad_clipping(clip).init();
            run(spec, data, device, checkpoints, resume, reporter, optim)
        }
        OptimizerName::Sgd => {
            let mut config = SgdConfig::new().with_gradient_clipping(clip);
            if o.weight_decay > 0.0 {
                config = config.with_weight_decay(Some(WeightDecayConfig::new(o.weight_decay as f32)));
            }
            if let Some(m) = o.momentum {
                config = config.with_momentum(Some(MomentumConfig::new().with_momentum(m).with_dampening(0.0)));
            }
            run(spec, data, device, checkpoints, resume, reporter, config.init())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    spec: &ExperimentSpec,
    data: &TrainData,
    device: &Device,
    checkpoints: &checkpoint::Store,
    resume: bool,
    reporter: &mut dyn Reporter,
    mut optim: ModuleOptimizer,
) -> Result<Outcome, TrainError> {
    // Training runs on the autodiff form of the device; validation on the plain one.
    let eval_device = device.clone().inner();
    let device = &device.clone().autodiff();
    let t = &spec.train;
    let size = spec.model.resolved_image_size() as usize;
    let classes = data.classes.len();
    if data.val.is_empty() {
        return Err(TrainError::NoValidation);
    }
    let mut model: Classifier = models::build_seeded(spec.model.arch, 1, classes, spec.model.dropout, device, t.seed).model;
    let mut state = checkpoint::State::default();
    let mut resumed = false;
    if resume && let Some((m, opt_record, s)) = checkpoints.load_last(model.clone())? {
        model = m;
        optim = optim.load_record(opt_record);
        state = s;
        resumed = true;
    }
    if !resumed && let Some(path) = &spec.model.pretrained {
        let report = models::pretrained::load(&mut model, std::path::Path::new(path))?;
        tracing::info!(path, loaded = report.loaded, naming = report.naming, adapted = ?report.adapted, "pretrained weights loaded");
    }
    let weights = match t.loss.class_weights {
        ClassWeights::Balanced => Some(balanced_weights(&data.train, classes)),
        ClassWeights::None => None,
    };
    let smoothing = (t.loss.label_smoothing > 0.0).then_some(t.loss.label_smoothing as f32);
    let loss_fn = CrossEntropyLossConfig::new().with_weights(weights.clone()).with_smoothing(smoothing).init(device);
    let val_loss_fn = CrossEntropyLossConfig::new().with_weights(weights).init(&eval_device);

    let cache = Arc::new(ImageCache::new(&data.cache_root, &data.version, size));
    let train_items = Arc::new(data.train.clone());
    let val_items = Arc::new(data.val.clone());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let train_config = LoaderConfig {
        batch_size: t.batch_size as usize,
        seed: t.seed,
        shuffle: true,
        augment: Some(t.augment.clone()),
        threads,
        prefetch: 2,
    };
    let val_config = LoaderConfig { shuffle: false, augment: None, ..train_config.clone() };
    let steps_per_epoch = data.train.len().div_ceil(t.batch_size.max(1) as usize);

    let _dropout_generator = models::dropout::scope();
    for epoch in state.next_epoch..t.epochs as usize {
        // Dropout, the loop's only randomness (this thread's own generator, not shared with
        // another run in the process), is re-seeded per epoch, so a resumed run draws exactly
        // what an uninterrupted one would.
        models::dropout::seed_thread(Some(t.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9)));
        let started = Instant::now();
        let mut seen = 0usize;
        let mut loss_sum = 0.0;
        let mut skipped = Vec::new();
        let mut lr = 0.0;
        let batches = Batches::new(train_items.clone(), cache.clone(), train_config.clone(), epoch as u64);
        for (step, batch) in batches.enumerate() {
            if reporter.should_stop() {
                return Ok(state.into_outcome(Finish::Stopped { epoch }));
            }
            let mut batch = batch?;
            skipped.append(&mut batch.skipped);
            if batch.is_empty() {
                continue;
            }
            lr = schedule::lr_at(t.optimizer.lr, &t.schedule, t.epochs, epoch * steps_per_epoch + step, steps_per_epoch);
            let logits = model.forward(images_tensor(&batch, size, device));
            let loss = loss_fn.forward(logits, labels_tensor(&batch, device));
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(TrainError::NonFinite { epoch, step, value });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum += value * batch.len() as f64;
            seen += batch.len();
            reporter.step(epoch, step, steps_per_epoch, value);
        }
        if seen == 0 {
            return Err(TrainError::NoData { skipped: skipped.len() });
        }
        let images_per_second = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);

        // Validation on the inner (non-autodiff) backend: BatchNorm uses running statistics.
        let scored =
            score(&model.valid(), &data.classes, val_items.clone(), cache.clone(), &val_config, size, &eval_device, Some(&val_loss_fn))?;
        skipped.extend(scored.skipped);
        let total = data.train.len() + data.val.len();
        if skipped.len() as f64 > MAX_SKIPPED_FRACTION * total as f64 {
            let first: Vec<String> = skipped.iter().take(3).map(|(p, why)| format!("{p} ({why})")).collect();
            return Err(TrainError::TooManySkipped {
                epoch,
                skipped: skipped.len(),
                total,
                limit: MAX_SKIPPED_FRACTION * 100.0,
                first: first.join("; "),
            });
        }
        let (confusion, val_loss_sum, val_seen, predictions) = (scored.confusion, scored.loss_sum, scored.seen, scored.predictions);
        if val_seen == 0 {
            return Err(TrainError::NoValidation);
        }
        let report = confusion.report();
        let mut epoch_report = EpochReport {
            epoch,
            train_loss: loss_sum / seen as f64,
            val_loss: val_loss_sum / val_seen as f64,
            lr,
            images_per_second,
            confusion,
            report,
            best: false,
            skipped,
            predictions: Vec::new(),
        };
        let value = epoch_report.metric(&spec.select.metric).unwrap_or(f64::NAN);
        if value.is_finite() && better(spec.select.goal, value, state.best_value) {
            state.best_value = Some(value);
            state.best_epoch = Some(epoch);
            epoch_report.best = true;
            checkpoints.save_best(&model)?;
        }
        state.history.push(epoch_report.clone());
        if epoch_report.best {
            epoch_report.predictions = predictions;
        }
        if let Some(es) = &t.early_stopping {
            let v = epoch_report.metric(&es.metric).unwrap_or(f64::NAN);
            let goal = if es.metric.ends_with("loss") { Goal::Minimize } else { Goal::Maximize };
            if v.is_finite() && better(goal, v, state.early_best) {
                state.early_best = Some(v);
                state.since_improvement = 0;
            } else {
                state.since_improvement += 1;
            }
        }
        state.next_epoch = epoch + 1;
        checkpoints.save_last(&model, &optim, &state)?;
        reporter.epoch(&epoch_report);
        if let Some(es) = &t.early_stopping
            && state.since_improvement >= es.patience as usize
        {
            return Ok(state.into_outcome(Finish::Completed { epochs: epoch + 1, early_stopped: true }));
        }
    }
    Ok(state.into_outcome(Finish::Completed { epochs: t.epochs as usize, early_stopped: false }))
}

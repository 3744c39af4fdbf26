//! The experiment spec (experiments/*.yaml): parsing with positioned errors, validation,
//! and the canonical resolved form that a run trains with.

use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::issue::{Issue, closest};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub dataset: DatasetRef,
    pub model: ModelSpec,
    pub train: TrainSpec,
    #[serde(default)]
    pub select: SelectSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::SweepSpec>,
    /// The experiment's validation budget: how many distinct configurations may ever be
    /// scored against its frozen validation split, all sweeps together. Set by the first
    /// submission; a later one may lower it, never raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_val_configs: Option<u32>,
    /// What the promoted model must reach on the sealed test split, fixed before the split is
    /// opened (docs/evidence.md "Acceptance criteria").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionSpec>,
}

/// `promotion:` in a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PromotionSpec {
    /// Pre-registered acceptance criteria: the test report states PASS or FAIL for each. Frozen
    /// once a run of the experiment has been promoted.
    #[serde(default)]
    pub criteria: Vec<crate::evidence::Criterion>,
    /// How many reviewers (distinct tokens, the promoter included) must sign a promotion before
    /// its test evaluation runs; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// The precision a class's auto-accepted classifications must reach on validation; each
    /// class's confidence threshold is chosen for it when a run is promoted (default 0.99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_accept_precision: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    pub name: String,
    /// A version hash (or a unique prefix of one); the latest version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    EfficientnetB0,
    EfficientnetB1,
    EfficientnetB2,
    EfficientnetB3,
    EfficientnetB4,
    EfficientnetB5,
    EfficientnetB6,
    EfficientnetB7,
    Resnet18,
    Resnet34,
    Resnet50,
    SimpleCnn,
}

impl Arch {
    pub const ALL: [Arch; 12] = [
        Arch::EfficientnetB0,
        Arch::EfficientnetB1,
        Arch::EfficientnetB2,
        Arch::EfficientnetB3,
        Arch::EfficientnetB4,
        Arch::EfficientnetB5,
        Arch::EfficientnetB6,
        Arch::EfficientnetB7,
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::SimpleCnn,
    ];

    /// The input resolution the architecture was designed for (EfficientNet's compound
    /// scaling; 224 for ResNet; 128 for the small baseline).
    pub fn native_resolution(self) -> u32 {
        match self {
            Arch::EfficientnetB0 => 224,
            Arch::EfficientnetB1 => 240,
            Arch::EfficientnetB2 => 260,
            Arch::EfficientnetB3 => 300,
            Arch::EfficientnetB4 => 380,
            Arch::EfficientnetB5 => 456,
            Arch::EfficientnetB6 => 528,
            Arch::EfficientnetB7 => 600,
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => 224,
            Arch::SimpleCnn => 128,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::EfficientnetB0 => "efficientnet_b0",
            Arch::EfficientnetB1 => "efficientnet_b1",
            Arch::EfficientnetB2 => "efficientnet_b2",
            Arch::EfficientnetB3 => "efficientnet_b3",
            Arch::EfficientnetB4 => "efficientnet_b4",
            Arch::EfficientnetB5 => "efficientnet_b5",
            Arch::EfficientnetB6 => "efficientnet_b6",
            Arch::EfficientnetB7 => "efficientnet_b7",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::SimpleCnn => "simple_cnn",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub arch: Arch,
    /// Square input size in pixels; the architecture's native resolution when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// Path to ImageNet weights (.safetensors or .pth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
}

impl ModelSpec {
    pub fn resolved_image_size(&self) -> u32 {
        self.image_size.unwrap_or_else(|| self.arch.native_resolution())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub epochs: u32,
    pub batch_size: u32,
    pub seed: u64,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub loss: LossSpec,
    #[serde(default)]
    pub augment: AugmentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    pub name: OptimizerName,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleName {
    Cosine,
    Step,
    #[default]
    Constant,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub name: ScheduleName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<u32>,
    /// `step` only: epochs between decays (default: a third of the epochs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_epochs: Option<u32>,
    /// `step` only: the factor applied at each decay (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    #[default]
    None,
    Balanced,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    #[serde(default)]
    pub class_weights: ClassWeights,
    #[serde(default)]
    pub label_smoothing: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSpec {
    pub rotate_deg: f64,
    pub scale: [f64; 2],
    pub translate: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub noise: f64,
    /// Gamma jitter: gamma is drawn from [1 - g, 1 + g] (0 = off). An addition to
    /// The contract's keys (docs/contract.md): exposure differences between radiographs are non-linear.
    pub gamma: f64,
    /// Mirrors left and right; off by default because it mirrors the side markers.
    pub hflip: bool,
}

impl Default for AugmentSpec {
    fn default() -> Self {
        Self { rotate_deg: 0.0, scale: [1.0, 1.0], translate: 0.0, brightness: 0.0, contrast: 0.0, noise: 0.0, gamma: 0.0, hflip: false }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    pub metric: String,
    pub patience: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    #[default]
    Maximize,
    Minimize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectSpec {
    #[serde(default = "default_select_metric")]
    pub metric: String,
    #[serde(default)]
    pub goal: Goal,
    /// Bounds a run must meet at its best epoch (the weak classes' recall, say). A run that
    /// misses one ranks below every run that meets them all: in the leaderboard, `cobb runs
    /// --sort`, the best-run choice and TPE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// `{metric: val_recall/ap_postop_tether, min: 0.8}`: a bound on a validation metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Constraint {
    /// How `value` misses the constraint, in words (None: it meets it). A run without the
    /// metric misses it.
    pub fn missed(&self, value: Option<f64>) -> Option<String> {
        let Some(v) = value else { return Some(format!("{} missing", self.metric)) };
        match (self.min, self.max) {
            (Some(min), _) if v < min => Some(format!("{} {v:.3} < {min}", self.metric)),
            (_, Some(max)) if v > max => Some(format!("{} {v:.3} > {max}", self.metric)),
            _ => None,
        }
    }
}

fn default_select_metric() -> String {
    crate::keys::VAL_MACRO_F1.to_owned()
}

impl Default for SelectSpec {
    fn default() -> Self {
        Self { metric: default_select_metric(), goal: Goal::Maximize, constraints: Vec::new() }
    }
}

pub use crate::keys::{EPOCH_METRICS, is_epoch_metric};

/// A spec error positioned in its source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecError {
    pub file: String,
    /// 1-based; 0 when the position is unknown.
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `train.optimizer.lr` (empty for the document itself).
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// The spec as written, or the first type or syntax error, positioned. Semantic checks are
/// [`validate`]'s; `plan::parse` does both and expands the sweep.
pub(crate) fn deserialize(source: &str, file: &str) -> Result<ExperimentSpec, SpecError> {
    if source.trim().is_empty() {
        return Err(SpecError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            path: String::new(),
            message: "the file is empty; an experiment needs at least name, dataset, model and train".to_owned(),
            hint: None,
        });
    }
    let deserializer = serde_norway::Deserializer::from_str(source);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner();
        let (line, column) = inner.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        let raw = inner.to_string();
        // serde_norway appends " at line L column C" to some messages; the position is
        // printed in front instead.
        let message = match raw.find(" at line ") {
            Some(cut) => &raw[..cut],
            None => raw.as_str(),
        };
        // It also puts the key path in front, which is printed separately.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => rest.to_owned(),
            _ => message.to_owned(),
        };
        let hint = did_you_mean(&message);
        SpecError { file: file.to_owned(), line, column, path, message, hint }
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and unknown variant)
/// messages: the closest expected name, when one is close.
fn did_you_mean(message: &str) -> Option<String> {
    let start = message.find("unknown field `").or_else(|| message.find("unknown variant `"))?;
    let rest = &message[start..];
    let rest = &rest[rest.find('`')? + 1..];
    let (given, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    closest(given, &candidates).map(|c| format!("did you mean `{c}`?"))
}

fn in_range(value: f64, lo: f64, hi: f64) -> bool {
    value.is_finite() && value >= lo && value <= hi
}

/// The longest description accepted: a description is a paragraph or two, and it is stored
/// with every sweep of the experiment.
pub const MAX_DESCRIPTION_BYTES: usize = 8 * 1024;

/// Checks the rules serde cannot express. Returns every problem found, in file order.
pub fn validate(spec: &ExperimentSpec) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut check = |ok: bool, path: &str, message: String| {
        if !ok {
            issues.push(Issue::new(path, message));
        }
    };
    let name_ok =
        !spec.name.is_empty() && spec.name.len() <= 100 && spec.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    check(name_ok, "name", format!("`{}` is not a valid experiment name: use 1-100 letters, digits, '-', '_' or '.'", spec.name));
    check(
        spec.description.len() <= MAX_DESCRIPTION_BYTES,
        "description",
        format!(
            "is {} KB; a description is at most {} KB (put longer notes in a file next to the spec)",
            spec.description.len().div_ceil(1024),
            MAX_DESCRIPTION_BYTES / 1024
        ),
    );
    check(!spec.dataset.name.is_empty(), "dataset.name", "must not be empty".to_owned());
    check(spec.max_val_configs != Some(0), "max_val_configs", "must be at least 1 (leave it out for no budget)".to_owned());
    for (i, c) in spec.select.constraints.iter().enumerate() {
        let here = format!("select.constraints.{i}");
        check(c.metric.starts_with("val_"), &here, format!("`{}`: a constraint bounds a validation metric (val_*)", c.metric));
        check(c.min.is_some() || c.max.is_some(), &here, "needs min, max or both".to_owned());
        check(
            c.min.zip(c.max).is_none_or(|(lo, hi)| lo <= hi) && c.min.is_none_or(f64::is_finite) && c.max.is_none_or(f64::is_finite),
            &here,
            "min must not exceed max, and both must be numbers".to_owned(),
        );
    }

    if let Some(p) = spec.promotion.as_ref().and_then(|p| p.auto_accept_precision) {
        check(
            p > 0.0 && p <= 1.0,
            "promotion.auto_accept_precision",
            format!("{p}: a precision between 0 (exclusive) and 1, such as 0.99"),
        );
    }
    if let Some(n) = spec.promotion.as_ref().and_then(|p| p.approvals) {
        check((1..=5).contains(&n), "promotion.approvals", format!("{n}: a promotion needs 1 to 5 approvals (the promoter counts as one)"));
    }
    for (i, c) in spec.promotion.iter().flat_map(|p| p.criteria.iter()).enumerate() {
        let checked = c.check();
        check(checked.is_ok(), &format!("promotion.criteria.{i}"), checked.err().unwrap_or_default());
    }

    let m = &spec.model;
    if let Some(size) = m.image_size {
        check((16..=2048).contains(&size), "model.image_size", format!("{size} is outside 16..=2048 pixels"));
    }
    if let Some(dropout) = m.dropout {
        check(in_range(dropout, 0.0, 0.99), "model.dropout", format!("{dropout} is outside 0..0.99"));
    }
    if let Some(path) = &m.pretrained {
        let ok = path.ends_with(".safetensors") || path.ends_with(".pth") || path.ends_with(".pt");
        check(ok, "model.pretrained", format!("`{path}` is neither a .safetensors nor a .pth file"));
    }

    let t = &spec.train;
    check(t.epochs >= 1, "train.epochs", "must be at least 1".to_owned());
    check((1..=4096).contains(&t.batch_size), "train.batch_size", format!("{} is outside 1..=4096", t.batch_size));
    let o = &t.optimizer;
    check(o.lr.is_finite() && o.lr > 0.0 && o.lr <= 10.0, "train.optimizer.lr", format!("{} must be > 0 and <= 10", o.lr));
    check(in_range(o.weight_decay, 0.0, 1.0), "train.optimizer.weight_decay", format!("{} is outside 0..=1", o.weight_decay));
    if let Some(momentum) = o.momentum {
        check(o.name == OptimizerName::Sgd, "train.optimizer.momentum", "applies to sgd only; remove it for adamw".to_owned());
        check(in_range(momentum, 0.0, 0.999), "train.optimizer.momentum", format!("{momentum} is outside 0..0.999"));
    }
    let s = &t.schedule;
    if let Some(warmup) = s.warmup_epochs {
        check(warmup < t.epochs, "train.schedule.warmup_epochs", format!("{warmup} must be less than train.epochs ({})", t.epochs));
    }
    if s.name != ScheduleName::Step {
        check(s.step_epochs.is_none(), "train.schedule.step_epochs", "applies to the step schedule only".to_owned());
        check(s.gamma.is_none(), "train.schedule.gamma", "applies to the step schedule only".to_owned());
    }
    if let Some(step) = s.step_epochs {
        check(step >= 1, "train.schedule.step_epochs", "must be at least 1".to_owned());
    }
    if let Some(gamma) = s.gamma {
        check(gamma > 0.0 && gamma <= 1.0, "train.schedule.gamma", format!("{gamma} is outside (0, 1]"));
    }
    check(
        in_range(t.loss.label_smoothing, 0.0, 0.5),
        "train.loss.label_smoothing",
        format!("{} is outside 0..=0.5", t.loss.label_smoothing),
    );
    let a = &t.augment;
    check(in_range(a.rotate_deg, 0.0, 180.0), "train.augment.rotate_deg", format!("{} is outside 0..=180", a.rotate_deg));
    let [lo, hi] = a.scale;
    check(
        lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 4.0,
        "train.augment.scale",
        format!("[{lo}, {hi}] must satisfy 0 < lo <= hi <= 4"),
    );
    for (key, value) in
        [("translate", a.translate), ("brightness", a.brightness), ("contrast", a.contrast), ("noise", a.noise), ("gamma", a.gamma)]
    {
        check(in_range(value, 0.0, 1.0), &format!("train.augment.{key}"), format!("{value} is outside 0..=1"));
    }
    if let Some(es) = &t.early_stopping {
        check(is_epoch_metric(&es.metric), "train.early_stopping.metric", unknown_metric(&es.metric));
        check(es.patience >= 1, "train.early_stopping.patience", "must be at least 1".to_owned());
    }
    check(is_epoch_metric(&spec.select.metric), "select.metric", unknown_metric(&spec.select.metric));
    if let Some(sweep) = &spec.sweep {
        issues.extend(crate::sweep::validate(sweep));
    }
    issues
}

fn unknown_metric(key: &str) -> String {
    let mut message = format!("`{key}` is not a per-epoch metric");
    let candidates: Vec<&str> = EPOCH_METRICS.to_vec();
    match closest(key, &candidates) {
        Some(c) => message.push_str(&format!("; did you mean `{c}`?")),
        None => message
            .push_str(&format!("; use one of {} or val_precision/<class>, val_recall/<class>, val_f1/<class>", EPOCH_METRICS.join(", "))),
    }
    message
}

/// Gives an issue the line and column of its key in `source`.
pub fn position(source: &str, file: &str, issue: Issue) -> SpecError {
    let (line, column) = locate(source, &issue.path).unwrap_or((0, 0));
    SpecError { file: file.to_owned(), line, column, path: issue.path, message: issue.message, hint: None }
}

/// Finds the 1-based line and column of a dotted key path in a block-style YAML document.
/// Path segments may themselves contain dots when the YAML key is quoted (sweep
/// parameters such as `"train.optimizer.lr"`): the longest matching key wins. Returns the
/// deepest key found, so a missing leaf points at its parent.
pub fn locate(source: &str, path: &str) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    let lines: Vec<&str> = source.lines().collect();
    let mut best = None;
    let mut rest = path;
    let mut start = 0usize;
    let mut parent_indent: Option<usize> = None;
    'segments: while !rest.is_empty() {
        // Scan the block below the parent for a key that is a prefix of `rest`.
        let mut i = start;
        while i < lines.len() {
            let line = lines[i];
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                i += 1;
                continue;
            }
            if let Some(p) = parent_indent
                && indent <= p
            {
                break;
            }
            let trimmed = trimmed.trim_start_matches("- ");
            if let Some((key, _)) = trimmed.split_once(':') {
                let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
                let matches = rest == key || rest.starts_with(&format!("{key}."));
                if matches && !key.is_empty() {
                    best = Some((i + 1, indent + 1));
                    rest = rest[key.len()..].trim_start_matches('.');
                    // A flow mapping on the same line: `optimizer: {name: adamw, lr: 0.1}`.
                    if let Some(open) = line.find('{') {
                        if let Some(next) = rest.split('.').next().filter(|s| !s.is_empty()) {
                            for sep in ["{", ",", " "] {
                                if let Some(at) = line[open..].find(&format!("{sep}{next}:")) {
                                    let col = open + at + sep.len();
                                    best = Some((i + 1, col + 1));
                                    break;
                                }
                            }
                        }
                        break 'segments;
                    }
                    parent_indent = Some(indent);
                    start = i + 1;
                    continue 'segments;
                }
            }
            i += 1;
        }
        // A path segment such as a list index (`values[2]`) or a key that is absent.
        break;
    }
    best
}

/// The spec with its sweep removed and defaults filled in: what a single run trains with.
pub fn resolved(spec: &ExperimentSpec) -> ExperimentSpec {
    let mut out = spec.clone();
    out.sweep = None;
    out.model.image_size = Some(spec.model.resolved_image_size());
    out
}

pub use crate::sweep::Params;

//! Request and response bodies of the REST API under /api/v1.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::metrics::{ClassMetrics, ConfusionMatrix};
use crate::spec::{ExperimentSpec, Params};
use crate::status::{JobKind, JobStatus, Role, RunStatus, Split};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

// ---- tokens ----------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    /// The token stops working this many seconds after its creation (never when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// A token as `GET /tokens` lists it (never the token or its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: Millis,
    pub created_by: String,
    pub revoked_at: Option<Millis>,
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    /// Shown once; the server keeps only its hash.
    pub token: String,
    #[serde(default)]
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
}

// ---- datasets --------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Patient,
    None,
}

/// Checks an item path: relative to the dataset root and staying under it (no `..`, no
/// leading `/` or `\\`, no drive, no empty part, no control character), whatever the OS.
pub fn check_item_path(path: &str) -> Result<(), String> {
    let leaves = || Err(format!("item path `{}` leaves the dataset root: item paths are relative paths under it", path.escape_debug()));
    if path.is_empty() || path.starts_with(['/', '\\']) || path.chars().any(char::is_control) {
        return leaves();
    }
    for part in path.split(['/', '\\']) {
        if part.is_empty() || part == ".." || part.contains(':') {
            return leaves();
        }
    }
    Ok(())
}

/// One file of a dataset version, as computed by `cobb dataset register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetItem {
    /// Relative to the dataset root.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub label: String,
    /// Salted hash of the patient id; never the raw id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    pub split: Split,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<String>,
}

/// A file that was not taken into the dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestionIssue {
    pub path: String,
    pub reason: String,
}

/// `70/15/15` -> [70, 15, 15]: whole train/val/test percentages summing to 100, with
/// train and val above 0.
pub fn parse_split_ratios(text: &str) -> Result<[u32; 3], String> {
    let parts: Result<Vec<u32>, _> = text.split('/').map(|p| p.trim().parse::<u32>()).collect();
    match parts.as_deref() {
        Ok([a, b, c]) if a + b + c == 100 && *a > 0 && *b > 0 => Ok([*a, *b, *c]),
        _ => Err(format!("split `{text}` must be train/val/test percentages summing to 100 with train and val above 0, e.g. 70/15/15")),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterDataset {
    pub name: String,
    /// Absolute path of the dataset root on the registering machine.
    pub root: String,
    /// e.g. "70/15/15".
    pub split: String,
    pub seed: u64,
    pub group_by: GroupBy,
    pub classes: Vec<String>,
    pub items: Vec<DatasetItem>,
    #[serde(default)]
    pub report: Vec<IngestionIssue>,
    /// The id of the site key the patient pseudonyms were made with (never the key). A
    /// dataset's versions that carry one must all carry the same; none means the patients
    /// were pseudonymised some other way (older clients).
    #[serde(default)]
    pub pseudonym_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCount {
    pub label: String,
    pub train: u64,
    pub val: u64,
    pub test: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetVersionInfo {
    pub dataset: String,
    /// sha256 of the manifest: the version's identity.
    pub version: String,
    /// 1, 2, ... in registration order within the dataset.
    pub number: i64,
    pub root: String,
    pub split: String,
    pub seed: u64,
    pub group_by: GroupBy,
    pub classes: Vec<String>,
    pub items: u64,
    pub counts: Vec<SplitCount>,
    pub report: Vec<IngestionIssue>,
    pub created_at: Millis,
    pub created_by: String,
    /// The id of the site key its patient pseudonyms were made with (none: older versions,
    /// pseudonymised with the unkeyed salted hash).
    #[serde(default)]
    pub pseudonym_key: Option<String>,
    /// False when the same content was registered before (the existing version is returned).
    #[serde(default)]
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub name: String,
    pub versions: Vec<DatasetVersionBrief>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetVersionBrief {
    pub version: String,
    pub number: i64,
    pub items: u64,
    pub created_at: Millis,
}

// ---- experiments and sweeps --------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitExperiment {
    /// The YAML text as written by the user.
    pub yaml: String,
    /// File name, for error messages.
    #[serde(default)]
    pub file: Option<String>,
    /// Validate and expand only; store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedRunInfo {
    pub index: u32,
    pub name: String,
    pub params: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResult {
    pub experiment: String,
    pub dataset: String,
    pub dataset_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_id: Option<i64>,
    pub dry_run: bool,
    pub runs: Vec<PlannedRunInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusCounts(pub BTreeMap<RunStatus, u64>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentSummary {
    pub name: String,
    pub description: String,
    pub dataset: String,
    pub dataset_version: String,
    pub created_at: Millis,
    pub created_by: String,
    /// How many sweeps (submissions) it has. Named apart from `ExperimentDetail::sweeps`
    /// (the list), which flattens this summary beside it.
    pub sweep_count: u64,
    pub runs: StatusCounts,
    /// The validation budget: distinct configurations scored against the experiment's frozen
    /// validation split so far, all sweeps together.
    #[serde(default)]
    pub val_configs: u64,
    /// The budget's cap (`max_val_configs`), when the experiment has one.
    #[serde(default)]
    pub max_val_configs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentDetail {
    #[serde(flatten)]
    pub summary: ExperimentSummary,
    /// The YAML of the submission that created the experiment.
    pub spec_yaml: String,
    pub sweeps: Vec<SweepInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepInfo {
    pub id: i64,
    pub experiment: String,
    /// grid, random, tpe, or single (a spec without a sweep).
    pub method: String,
    pub file: Option<String>,
    pub spec_yaml: String,
    pub created_at: Millis,
    pub created_by: String,
    pub runs: StatusCounts,
    /// How many runs it may have in all (a tpe sweep creates them as workers ask).
    #[serde(default)]
    pub max_runs: Option<u64>,
    /// Cancelled: it creates no more runs.
    #[serde(default)]
    pub cancelled: bool,
    /// Distinct configurations of this sweep scored against the validation split.
    #[serde(default)]
    pub val_configs: u64,
}

// ---- runs --------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: i64,
    pub name: String,
    pub experiment: String,
    pub sweep_id: i64,
    pub index: u32,
    pub status: RunStatus,
    /// True while a cancel waits for the run's worker to stop.
    pub cancel_requested: bool,
    /// Leases taken so far (1 on the first training attempt).
    pub attempt: u32,
    pub max_attempts: u32,
    pub params: Params,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub best_epoch: Option<i64>,
    /// The sweep's constraints (`select.constraints`) this run missed at its best epoch, in
    /// words; it then ranks below every run that meets them. Known once its training ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints_missed: Vec<String>,
    /// The value of the metric the list was sorted by (at the best epoch, else the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_value: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunInfo>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelResult {
    /// Queued runs cancelled at once.
    pub cancelled: u64,
    /// Running runs asked to stop (they end as cancelled at their next heartbeat).
    pub stopping: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricValue {
    pub step: i64,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Shown to workers and admins only: a lease id is a write credential of its holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The job the lease was handed for, and its kind.
    pub job_id: Option<i64>,
    pub kind: Option<JobKind>,
    pub worker: String,
    pub attempt: u32,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub ended_at: Option<Millis>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub kind: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
    pub created_at: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochClassResults {
    pub epoch: i64,
    pub split: Split,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: ConfusionMatrix,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunInfo,
    pub config: ExperimentSpec,
    pub dataset: String,
    pub dataset_version: String,
    /// The latest value of each metric key.
    pub latest: BTreeMap<String, MetricValue>,
    /// Per-class validation results of the best epoch (else the latest).
    pub class_results: Option<EpochClassResults>,
    pub artifacts: Vec<ArtifactInfo>,
    pub leases: Vec<LeaseInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricPoint {
    pub key: String,
    pub step: i64,
    pub value: f64,
}

/// The contract's metric batch (docs/contract.md); `lease_id` fences it (also accepted as the
/// `Cobb-Lease` header).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsBatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    pub metrics: Vec<MetricPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsAccepted {
    pub accepted: u64,
    /// The run is to stop (its sweep's early-stop rule pruned it at this epoch, or it was
    /// cancelled): the worker stops within one step and completes with its best epoch.
    #[serde(default)]
    pub stop: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricSeries {
    pub key: String,
    pub points: Vec<MetricValue>,
}

/// A confusion matrix for one epoch; the server derives the per-class rows from it with
/// the metric math of this crate, so every number shown comes from one computation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochResults {
    pub lease_id: String,
    pub epoch: i64,
    pub confusion: ConfusionMatrix,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordArtifact {
    pub lease_id: String,
    /// best_checkpoint, last_checkpoint, confusion, config, ...
    pub kind: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
}

// ---- worker protocol -----------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker: String,
    #[serde(default)]
    pub device: Option<String>,
    /// The kinds of job this worker takes; empty means every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<JobKind>,
    /// This one job only: a classification batch its creator runs in its own process
    /// (`cobb classify`), held for that token until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
}

/// A job handed to a worker under a lease. The fields every kind shares are here; what the
/// kind needs is in `work` (flattened: the JSON has `kind` and that kind's fields beside the
/// shared ones).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobLease {
    pub lease_id: String,
    pub job_id: i64,
    pub run_id: i64,
    pub run_name: String,
    pub experiment: String,
    /// Leases taken by this job so far, this one included.
    pub attempt: u32,
    pub expires_at: Millis,
    pub ttl_seconds: u64,
    /// How often the worker should heartbeat.
    pub heartbeat_seconds: u64,
    pub config: ExperimentSpec,
    pub dataset: String,
    pub dataset_version: String,
    #[serde(flatten)]
    pub work: Work,
}

impl JobLease {
    pub fn kind(&self) -> JobKind {
        match self.work {
            Work::Train(_) => JobKind::Train,
            Work::Evaluate(_) => JobKind::Evaluate,
            Work::Classify(_) => JobKind::Classify,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    Train(TrainWork),
    Evaluate(EvaluateWork),
    Classify(crate::classify::ClassifyWork),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainWork {
    pub params: Params,
    /// The newest checkpoint of an earlier attempt, to resume from.
    pub resume_from: Option<ArtifactInfo>,
    /// That checkpoint's files in the artifact store (`last_checkpoint`, `last_optimizer`,
    /// `last_state`), for a worker on another machine to download.
    #[serde(default)]
    pub resume_files: Vec<ArtifactInfo>,
}

/// A promoted run's one evaluation on the sealed test split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluateWork {
    pub promotion_id: i64,
    /// The run's best checkpoint: the worker verifies this sha256 before evaluating.
    pub checkpoint: ArtifactInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub epoch: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatAction {
    Continue,
    /// The run was cancelled or pruned: stop within one step and complete (outcome
    /// `cancelled`, with the best epoch so far); the server records which.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub action: HeartbeatAction,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Complete {
    pub outcome: Outcome,
    #[serde(default)]
    pub error: Option<String>,
    /// Infrastructure failures (lost device, disk full) may be retried; training failures
    /// (bad data, NaN loss) may not.
    #[serde(default)]
    pub retryable: bool,
    /// Training: the epoch whose checkpoint is the run's best.
    #[serde(default)]
    pub best_epoch: Option<i64>,
    /// Evaluation: the test confusion matrix (the server computes the metrics from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<crate::metrics::ConfusionMatrix>,
    /// Evaluation: test images that could not be read, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<IngestionIssue>,
    /// Evaluation: each test image's prediction (stored with the run's test results).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predictions: Vec<ItemPrediction>,
    /// Classification: images per second of the whole pass (read, decode, forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_second: Option<f64>,
}

impl Complete {
    /// A completion with `outcome` and nothing else set (callers add what their kind reports).
    pub fn of(outcome: Outcome) -> Complete {
        Complete {
            outcome,
            error: None,
            retryable: false,
            best_epoch: None,
            confusion: None,
            skipped: Vec::new(),
            predictions: Vec::new(),
            images_per_second: None,
        }
    }

    /// A failure with its reason; `retryable` when another attempt may succeed.
    pub fn failed(error: String, retryable: bool) -> Complete {
        Complete { error: Some(error), retryable, ..Complete::of(Outcome::Failed) }
    }
}

/// One image's prediction, as a worker reports it: the item (its path relative to the dataset
/// root, as registered), the predicted class (index into the version's classes, the argmax the
/// confusion matrix counted) and the softmax probability of each class. No pixels, no patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemPrediction {
    pub item: String,
    pub predicted: u32,
    pub probabilities: Vec<f32>,
}

/// The validation predictions of a run's best epoch so far (`POST /runs/{id}/predictions`,
/// fenced by the training lease); a later best epoch replaces them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictionsUpload {
    pub lease_id: String,
    pub epoch: i64,
    pub predictions: Vec<ItemPrediction>,
}

/// A stored prediction as the server gives it back (`GET /runs/{id}/predictions?split=`):
/// the item, its hashed patient, true and predicted class, probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPrediction {
    pub item: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    pub truth: u32,
    pub predicted: u32,
    pub probabilities: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictionSet {
    pub run_id: i64,
    pub split: Split,
    /// The epoch whose model made them (validation: the best epoch; test: the best checkpoint).
    pub epoch: Option<i64>,
    pub classes: Vec<String>,
    pub predictions: Vec<StoredPrediction>,
}

/// A run's evidence on one split (`GET /runs/{id}/evidence?split=val|test`): intervals from a
/// patient-level bootstrap of its stored predictions, and the per-class table recomputed from
/// them (equal to the stored one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEvidence {
    pub run_id: i64,
    pub split: Split,
    pub epoch: Option<i64>,
    pub intervals: crate::evidence::Intervals,
    pub recomputed: crate::metrics::ClassificationReport,
    /// Calibration of the stored probabilities.
    pub calibration: crate::evidence::Calibration,
    /// Test split: the temperature fitted on the run's validation predictions (temperature
    /// scaling) and the test calibration after it; the class decisions do not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<crate::evidence::Calibration>,
}

/// Two runs compared on the same validation patients (`GET /runs/{a}/versus/{b}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunComparison {
    pub a: i64,
    pub b: i64,
    pub comparison: crate::evidence::Comparison,
}

/// A job as the server holds it: the answer to complete and release, and an entry of
/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: i64,
    pub kind: JobKind,
    pub run_id: i64,
    pub run_name: String,
    pub experiment: String,
    pub promotion_id: Option<i64>,
    pub status: JobStatus,
    pub cancel_requested: bool,
    pub attempt: u32,
    pub max_attempts: u32,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// One job with its attempt history (every lease it was handed, oldest first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobInfo,
    pub leases: Vec<LeaseInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemList {
    pub dataset: String,
    pub version: String,
    pub root: String,
    pub classes: Vec<String>,
    pub items: Vec<DatasetItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub device: Option<String>,
    pub last_seen_at: Millis,
    pub current_run: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub database: String,
}

// ---- audit -------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub experiment: Option<String>,
    pub run_id: Option<i64>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The result of recomputing the whole hash chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainCheck {
    pub ok: bool,
    pub events: u64,
    /// The first event whose stored hashes do not match its content or predecessor.
    pub first_broken: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLog {
    pub events: Vec<AuditEvent>,
    pub chain: ChainCheck,
}

// ---- promotion and the sealed test split ---------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotionInfo {
    pub id: i64,
    pub experiment: String,
    pub run_id: i64,
    pub run_name: String,
    pub actor: String,
    pub reason: String,
    pub created_at: Millis,
    pub checkpoint_sha256: String,
    pub best_epoch: i64,
    pub dataset_version: String,
    pub config_hash: String,
    pub code_version: String,
    /// The evaluation job's status (a promotion that reuses an earlier evaluation of its run
    /// has no job of its own and shows `succeeded`).
    pub status: JobStatus,
    /// The promotion's evaluation job; None when it reuses an earlier evaluation.
    pub job_id: Option<i64>,
    pub attempt: i64,
    pub error: Option<String>,
    pub finished_at: Option<Millis>,
    /// The promotion that replaced this one as the experiment's promoted model.
    pub superseded_by: Option<i64>,
    pub superseded_at: Option<Millis>,
    /// True when an earlier promotion of the same run already evaluated it: the test split
    /// is not evaluated twice for one model.
    pub reused_evaluation: bool,
    /// Signatures the promotion needs before its test evaluation runs (the experiment's
    /// `promotion.approvals`), and the token names that gave them (the promoter first).
    #[serde(default = "one")]
    pub approvals_needed: u32,
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The evaluation waits for approvals (`cobb approve ID` by another reviewer).
    #[serde(default)]
    pub awaiting_approval: bool,
    /// The per-class auto-accept thresholds fixed at promotion (`cobb classify` decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_accept: Option<crate::classify::AutoAccept>,
}

fn one() -> u32 {
    1
}

/// The test-split result of a promoted run: the source study's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestReport {
    pub promotion: PromotionInfo,
    pub report: crate::metrics::ClassificationReport,
    pub confusion: crate::metrics::ConfusionMatrix,
    /// Roll-ups by view (AP/lateral) and by phase (pre-op/post-op).
    pub by_view: crate::metrics::ClassificationReport,
    pub by_phase: crate::metrics::ClassificationReport,
    /// The experiment's pre-registered acceptance criteria, each judged PASS or FAIL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub criteria: Vec<crate::evidence::Verdict>,
    /// Patient-level intervals and calibration (before and after temperature scaling) from the
    /// evaluation's stored test predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<RunEvidence>,
}

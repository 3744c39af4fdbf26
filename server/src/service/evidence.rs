//! Stored predictions and the evidence drawn from them (issue 14): a worker's per-image
//! predictions are checked against the dataset version (its items on that split, its classes)
//! and against the confusion matrix already stored for the same model, so the per-class table
//! recomputed from them is the stored one; intervals and paired comparisons are computed from
//! them on request (protocol::evidence) and cached until the predictions change.

use protocol::Split;
use protocol::api::{ItemPrediction, PredictionSet, PredictionsUpload, RunComparison, RunEvidence, StoredPrediction};
use protocol::evidence::{self, DEFAULT_REPLICATES, DEFAULT_SEED, Paired, Scored};
use protocol::metrics::ConfusionMatrix;
use sea_orm::ConnectionTrait;
use std::collections::HashMap;
use std::sync::Arc;

use super::jobs::{Expect, begin_fenced};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;
use crate::store;
use crate::store::predictions::{Entry, ItemKey};

/// How far a prediction's probabilities may sum from 1 (float32 softmax).
const SUM_TOLERANCE: f32 = 1e-3;

/// The predictions checked against the version's `split` items and `classes`: the entries to
/// store and the confusion matrix they make.
pub(crate) async fn checked(
    conn: &impl ConnectionTrait,
    version_id: i64,
    split: Split,
    classes: &[String],
    predictions: &[ItemPrediction],
) -> Result<(Vec<Entry>, ConfusionMatrix), ApiError> {
    let items = store::predictions::items(conn, version_id, split.as_str()).await?;
    let by_path: HashMap<&str, &ItemKey> = items.iter().map(|i| (i.path.as_str(), i)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut matrix = ConfusionMatrix::new(classes.to_vec());
    let mut entries = Vec::with_capacity(predictions.len());
    let n = classes.len();
    for p in predictions {
        let Some(item) = by_path.get(p.item.as_str()) else {
            return Err(ApiError::InvalidRequest(format!(
                "`{}` is not an item of this dataset version's {split} split; predictions name items by their registered path",
                super::bounded_text(&p.item, 200)
            )));
        };
        if !seen.insert(item.id) {
            return Err(ApiError::InvalidRequest(format!("`{}` is predicted twice", item.path)));
        }
        let sum: f32 = p.probabilities.iter().sum();
        if p.probabilities.len() != n
            || p.predicted as usize >= n
            || p.probabilities.iter().any(|v| !v.is_finite() || !(0.0..=1.0).contains(v))
            || (sum - 1.0).abs() > SUM_TOLERANCE
        {
            return Err(ApiError::InvalidRequest(format!(
                "`{}`: a prediction is a class index below {n} and {n} probabilities in [0, 1] that sum to 1",
                item.path
            )));
        }
        let Some(truth) = classes.iter().position(|c| *c == item.label) else {
            return Err(ApiError::Internal(anyhow::anyhow!("item {} has label `{}` outside its version's classes", item.id, item.label)));
        };
        let _ = matrix.record(truth, p.predicted as usize);
        let probabilities = p.probabilities.iter().map(|v| (f64::from(*v) * 1e6).round() / 1e6).collect();
        entries.push((item.id, p.predicted, probabilities));
    }
    Ok((entries, matrix))
}

/// The validation predictions of a run's best epoch so far, fenced by its training lease.
/// The epoch's results must be stored first, and the predictions must make exactly its
/// confusion matrix.
pub async fn record_val(state: &AppState, who: &Principal, run_id: i64, upload: PredictionsUpload) -> Result<(), ApiError> {
    let (tx, _, job) = begin_fenced(state, who, &upload.lease_id, Expect::training_of(run_id)).await?;
    let outcome = async {
        let classes = version_classes(&tx, job.dataset_version_id).await?;
        let (entries, matrix) = checked(&tx, job.dataset_version_id, Split::Val, &classes, &upload.predictions).await?;
        let Some(stored) = store::results::matrix(&tx, run_id, Split::Val.as_str(), Some(upload.epoch)).await? else {
            return Err(ApiError::InvalidRequest(format!(
                "epoch {} has no stored results; send its confusion matrix (POST /runs/{run_id}/results) before its predictions",
                upload.epoch
            )));
        };
        if stored.decode(run_id, Split::Val.as_str())? != matrix {
            return Err(ApiError::InvalidRequest(format!(
                "the predictions do not make epoch {}'s stored confusion matrix: they must be the same model's on the same images",
                upload.epoch
            )));
        }
        store::predictions::upsert(&tx, run_id, Split::Val.as_str(), Some(upload.epoch), &entries, now_ms()).await?;
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => Ok(tx.commit().await?),
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}

pub(crate) async fn version_classes(conn: &impl ConnectionTrait, version_id: i64) -> Result<Vec<String>, ApiError> {
    let version =
        store::datasets::version_by_id(conn, version_id).await?.ok_or_else(|| ApiError::not_found("dataset version", version_id))?;
    Ok(version.classes()?)
}

/// A run's stored predictions on `split`, each with its item's path, hashed patient and truth.
pub async fn predictions(state: &AppState, run_id: i64, split: Split) -> Result<PredictionSet, ApiError> {
    let conn = &state.db.read;
    let run = super::runs::get(conn, run_id).await?;
    let classes = version_classes(conn, run.dataset_version_id).await?;
    let Some(row) = store::predictions::get(conn, run_id, split.as_str()).await? else {
        return Err(ApiError::NotFound { what: "stored predictions of run", id: format!("{run_id} on {split}") });
    };
    let items = store::predictions::items(conn, run.dataset_version_id, split.as_str()).await?;
    let by_id: HashMap<i64, &ItemKey> = items.iter().map(|i| (i.id, i)).collect();
    let mut out = Vec::new();
    for (id, predicted, probabilities) in row.decode(run_id, split.as_str())? {
        let Some(item) = by_id.get(&id) else { continue };
        let truth = classes.iter().position(|c| *c == item.label).unwrap_or_default() as u32;
        out.push(StoredPrediction {
            item: item.path.clone(),
            patient: item.patient.clone(),
            truth,
            predicted,
            probabilities: probabilities.into_iter().map(|p| p as f32).collect(),
        });
    }
    Ok(PredictionSet { run_id, split, epoch: row.epoch, classes, predictions: out })
}

/// Each prediction's probabilities and true class, for calibration.
fn rows(set: &PredictionSet) -> (Vec<Vec<f64>>, Vec<usize>) {
    set.predictions.iter().map(|p| (p.probabilities.iter().map(|v| f64::from(*v)).collect(), p.truth as usize)).unzip()
}

/// The temperature fitted on the run's stored validation predictions (None without any), on a
/// blocking thread: the promotion fixes it, the test evidence rescales with it.
pub(crate) async fn validation_temperature(state: &AppState, run_id: i64) -> Result<Option<f64>, ApiError> {
    let Some(set) = ApiError::found(predictions(state, run_id, Split::Val).await)?.filter(|s| !s.predictions.is_empty()) else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || {
        let (probabilities, truth) = rows(&set);
        Some(evidence::fit_temperature(&probabilities, &truth))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("the temperature fit panicked: {e}")))
}

/// Cached evidence: (run, split) -> (when its predictions were stored, the evidence).
pub type EvidenceCache = std::sync::Mutex<HashMap<(i64, Split), (i64, Arc<RunEvidence>)>>;

/// The most evidence entries kept; past it the cache is emptied.
const CACHE_MAX: usize = 10_000;

/// A run's intervals on `split` (patient-level bootstrap of its stored predictions) and the
/// per-class table recomputed from them; computed once per stored set.
pub async fn run_evidence(state: &AppState, run_id: i64, split: Split) -> Result<Arc<RunEvidence>, ApiError> {
    let Some(stamp) = store::predictions::stamp(&state.db.read, run_id, split.as_str()).await? else {
        return Err(ApiError::NotFound { what: "stored predictions of run", id: format!("{run_id} on {split}") });
    };
    if let Ok(cache) = state.evidence_cache.lock()
        && let Some((at, evidence)) = cache.get(&(run_id, split))
        && *at == stamp
    {
        return Ok(evidence.clone());
    }
    let set = predictions(state, run_id, split).await?;
    // Temperature scaling for the test split is fitted on the same run's validation predictions.
    let temperature = match split {
        Split::Test => validation_temperature(state, run_id).await?,
        _ => None,
    };
    let evidence = tokio::task::spawn_blocking(move || {
        let scored: Vec<Scored> = set
            .predictions
            .iter()
            .map(|p| Scored { patient: p.patient.as_deref(), truth: p.truth as usize, predicted: p.predicted as usize })
            .collect();
        let intervals = evidence::bootstrap(&set.classes, &scored, DEFAULT_REPLICATES, DEFAULT_SEED);
        let mut matrix = ConfusionMatrix::new(set.classes.clone());
        for p in &set.predictions {
            let _ = matrix.record(p.truth as usize, p.predicted as usize);
        }
        let (probabilities, truth) = rows(&set);
        let calibration = evidence::calibration(&probabilities, &truth);
        let calibrated = temperature.map(|t| evidence::calibration(&evidence::with_temperature(&probabilities, t), &truth));
        RunEvidence { run_id, split, epoch: set.epoch, intervals, recomputed: matrix.report(), calibration, temperature, calibrated }
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("the bootstrap panicked: {e}")))?;
    let evidence = Arc::new(evidence);
    if let Ok(mut cache) = state.evidence_cache.lock() {
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert((run_id, split), (stamp, evidence.clone()));
    }
    Ok(evidence)
}

/// Cached paired comparisons: (a, b) -> (when each run's predictions were stored, the comparison).
pub type VersusCache = std::sync::Mutex<HashMap<(i64, i64), ((i64, i64), Arc<RunComparison>)>>;

/// Runs `a` and `b` compared on the validation images both were scored on (the same frozen
/// split, so the same patients): paired bootstrap of the differences and McNemar's test;
/// computed once per pair of stored sets.
pub async fn versus(state: &AppState, a: i64, b: i64) -> Result<Arc<RunComparison>, ApiError> {
    let stored_at = |run: i64| async move {
        store::predictions::stamp(&state.db.read, run, Split::Val.as_str())
            .await?
            .ok_or_else(|| ApiError::NotFound { what: "stored predictions of run", id: format!("{run} on val") })
    };
    let stamps = (stored_at(a).await?, stored_at(b).await?);
    if let Ok(cache) = state.versus_cache.lock()
        && let Some((at, comparison)) = cache.get(&(a, b))
        && *at == stamps
    {
        return Ok(comparison.clone());
    }
    let comparison = Arc::new(compute_versus(state, a, b).await?);
    if let Ok(mut cache) = state.versus_cache.lock() {
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert((a, b), (stamps, comparison.clone()));
    }
    Ok(comparison)
}

async fn compute_versus(state: &AppState, a: i64, b: i64) -> Result<RunComparison, ApiError> {
    let (set_a, set_b) = (predictions(state, a, Split::Val).await?, predictions(state, b, Split::Val).await?);
    if set_a.classes != set_b.classes {
        return Err(ApiError::InvalidRequest(format!("runs {a} and {b} were trained on different class lists; compare runs of one study")));
    }
    let of_b: HashMap<&str, &StoredPrediction> = set_b.predictions.iter().map(|p| (p.item.as_str(), p)).collect();
    let paired: Vec<(Option<String>, usize, usize, usize)> = set_a
        .predictions
        .iter()
        .filter_map(|p| {
            of_b.get(p.item.as_str()).map(|q| (p.patient.clone(), p.truth as usize, p.predicted as usize, q.predicted as usize))
        })
        .collect();
    if paired.is_empty() {
        return Err(ApiError::InvalidRequest(format!(
            "runs {a} and {b} share no validation images (different dataset versions?); a paired comparison needs the same images"
        )));
    }
    let classes = set_a.classes.clone();
    let comparison = tokio::task::spawn_blocking(move || {
        let items: Vec<Paired> = paired
            .iter()
            .map(|(patient, truth, pa, pb)| Paired { patient: patient.as_deref(), truth: *truth, predicted_a: *pa, predicted_b: *pb })
            .collect();
        evidence::compare(&classes, &items, DEFAULT_REPLICATES, DEFAULT_SEED)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("the bootstrap panicked: {e}")))?;
    Ok(RunComparison { a, b, comparison })
}

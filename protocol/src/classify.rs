//! The promoted model at work: classification batches of new exports, the decision rule that
//! sends an image to `accept` or `review`, and the per-class confidence thresholds fixed at
//! promotion from the run's validation predictions.
//!
//! A threshold is chosen per class so that the validation images the model predicted as that
//! class *with at least that confidence* reach the target precision (`promotion.
//! auto_accept_precision`, default 0.99): the lowest such confidence, so the most images are
//! accepted. A class whose predictions never reach the target at any threshold has none, and
//! every image predicted as it goes to review. Confidence is the softmax probability of the
//! predicted class as the model gives it (before temperature scaling, which would not change
//! the order of one class's predictions by much but would tie the thresholds to a second fit).

use serde::{Deserialize, Serialize};

use crate::api::Millis;

/// The precision accepted predictions must reach on validation when a spec does not say.
pub const DEFAULT_AUTO_ACCEPT_PRECISION: f64 = 0.99;

/// Fewer validated predictions of a class than this: its threshold rests on little evidence
/// and the report says so.
pub const THIN_EVIDENCE: u64 = 30;

/// One class's auto-accept threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassThreshold {
    pub class: String,
    /// Predictions of this class with at least this confidence are accepted; None: never.
    pub threshold: Option<f64>,
    /// Validation images predicted as this class with at least the threshold, and how many of
    /// them were right (the precision the threshold reached).
    pub accepted: u64,
    pub correct: u64,
    /// Validation images predicted as this class at any confidence.
    pub predicted: u64,
}

impl ClassThreshold {
    pub fn precision(&self) -> Option<f64> {
        (self.accepted > 0).then(|| self.correct as f64 / self.accepted as f64)
    }

    /// What share of this class's validation predictions the threshold accepts.
    pub fn coverage(&self) -> Option<f64> {
        (self.predicted > 0).then(|| self.accepted as f64 / self.predicted as f64)
    }
}

/// The thresholds a promotion fixed, with the target they were chosen for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoAccept {
    pub target_precision: f64,
    /// The validation predictions they were computed from (run, epoch); None when the run had
    /// none stored (every image then goes to review).
    #[serde(default)]
    pub validation_images: u64,
    pub classes: Vec<ClassThreshold>,
}

impl AutoAccept {
    pub fn threshold_of(&self, class: usize) -> Option<f64> {
        self.classes.get(class).and_then(|c| c.threshold)
    }
}

/// Chooses each class's threshold from `(truth, predicted, confidence)` validation triples.
pub fn thresholds(classes: &[String], validation: &[(u32, u32, f64)], target: f64) -> AutoAccept {
    let mut out = Vec::with_capacity(classes.len());
    for (c, name) in classes.iter().enumerate() {
        let mut mine: Vec<(f64, bool)> =
            validation.iter().filter(|(_, p, _)| *p as usize == c).map(|(t, p, conf)| (*conf, t == p)).collect();
        // Most confident first; at one confidence, the wrong ones first so that a tie never
        // lets a wrong prediction in unseen.
        mine.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let (mut best, mut correct) = (None, 0u64);
        for (k, (conf, right)) in mine.iter().enumerate() {
            correct += u64::from(*right);
            // Only at the end of a run of equal confidences: a threshold takes all of them.
            let last_of_tie = mine.get(k + 1).is_none_or(|next| next.0 < *conf);
            if last_of_tie && correct as f64 >= target * (k + 1) as f64 {
                best = Some((*conf, k as u64 + 1, correct));
            }
        }
        let (threshold, accepted, correct) = match best {
            Some((t, n, c)) => (Some(t), n, c),
            None => (None, 0, 0),
        };
        out.push(ClassThreshold { class: name.clone(), threshold, accepted, correct, predicted: mine.len() as u64 });
    }
    AutoAccept { target_precision: target, validation_images: validation.len() as u64, classes: out }
}

pub use crate::status::Decision;

/// The view a DICOM ViewPosition (0018,5101) names: `ap` for AP/PA, `lat` for the laterals.
pub fn dicom_view(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "AP" | "PA" => Some("ap"),
        "LL" | "RL" | "LAT" | "LATERAL" | "LLD" | "RLD" => Some("lat"),
        _ => None,
    }
}

/// The decision for one classified image: accept when the predicted class has a threshold,
/// the confidence reaches it and the header's view (when there is one) agrees with the class.
pub fn decide(auto: &AutoAccept, classes: &[String], predicted: usize, confidence: f64, header_view: Option<&str>) -> (Decision, String) {
    let name = classes.get(predicted).map_or("?", String::as_str);
    if let (Some(code), Some(class_view)) = (header_view, crate::classes::view_of(name))
        && let Some(view) = dicom_view(code)
        && view != class_view
    {
        return (Decision::Review, format!("the DICOM ViewPosition `{code}` says {view}, the model says {name} ({class_view})"));
    }
    match auto.threshold_of(predicted) {
        None => (
            Decision::Review,
            format!("{name} has no auto-accept threshold: its validation predictions never reached {:.3} precision", auto.target_precision),
        ),
        Some(t) if confidence < t => (Decision::Review, format!("confidence {confidence:.3} is below {name}'s threshold {t:.3}")),
        Some(t) => (Decision::Accept, format!("confidence {confidence:.3} >= {name}'s threshold {t:.3}")),
    }
}

/// `POST /classifications`: classify the images under `path` with a promoted model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyRequest {
    /// The experiment whose current promoted model classifies (or `promotion`).
    #[serde(default)]
    pub experiment: Option<String>,
    #[serde(default)]
    pub promotion: Option<i64>,
    /// Where the images are, on the machine that classifies them (never read by the server).
    pub path: String,
    /// Run by the caller's own process (`cobb classify`), which leases the batch's job itself;
    /// otherwise a worker whose machine sees `path` leases it (`cobb classify --on-worker`).
    #[serde(default)]
    pub here: bool,
    /// Images per forward pass (default: the run's training batch size).
    #[serde(default)]
    pub batch: Option<u32>,
}

/// What a classification job carries to the process that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyWork {
    pub batch_id: i64,
    pub promotion_id: i64,
    /// The promoted checkpoint: its sha256 is checked before any image is read.
    pub checkpoint: crate::api::ArtifactInfo,
    pub path: String,
    pub classes: Vec<String>,
    pub auto_accept: AutoAccept,
    pub batch: u32,
}

/// One classified file as the classifier sends it (`POST /classifications/{id}/items`):
/// no pixels and no patient identifier, only what the record allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifiedItem {
    /// Relative to the batch's path, `/`-separated.
    pub path: String,
    /// The file's sha256; None when the file could not even be read.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The predicted class's index; None for a skipped file.
    #[serde(default)]
    pub predicted: Option<u32>,
    #[serde(default)]
    pub confidence: Option<f64>,
    pub decision: Decision,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifiedUpload {
    pub lease_id: String,
    pub items: Vec<ClassifiedItem>,
}

/// A stored classified image (with its review, when one was given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    pub path: String,
    pub sha256: Option<String>,
    pub predicted: Option<String>,
    pub confidence: Option<f64>,
    pub decision: Decision,
    pub reason: String,
    /// The reviewer's label (equal to `predicted` when confirmed).
    #[serde(default)]
    pub reviewed_label: Option<String>,
    #[serde(default)]
    pub reviewed_by: Option<String>,
    #[serde(default)]
    pub reviewed_at: Option<Millis>,
}

impl BatchItem {
    /// The label the next dataset version takes: the review's, else an accepted prediction's.
    pub fn final_label(&self) -> Option<&str> {
        match (&self.reviewed_label, self.decision) {
            (Some(l), _) => Some(l),
            (None, Decision::Accept) => self.predicted.as_deref(),
            _ => None,
        }
    }
}

/// Per class: images predicted as it, accepted, sent to review, and reviewed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: String,
    pub accepted: u64,
    pub review: u64,
    pub reviewed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchInfo {
    pub id: i64,
    pub experiment: String,
    pub promotion_id: i64,
    pub run_id: i64,
    pub checkpoint_sha256: String,
    pub job_id: i64,
    pub actor: String,
    pub path: String,
    pub status: crate::JobStatus,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub images: u64,
    pub accepted: u64,
    pub review: u64,
    pub skipped: u64,
    pub reviewed: u64,
    /// Images per second of the classifier's whole pass (read, decode, forward).
    pub images_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchDetail {
    pub batch: BatchInfo,
    pub classes: Vec<String>,
    pub counts: Vec<ClassCount>,
    pub auto_accept: Option<AutoAccept>,
}

/// `POST /classifications/{id}/review`: a reviewer's labels (a confirmation is the predicted
/// class itself), each one an audit event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewRequest {
    pub labels: Vec<ReviewLabel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewLabel {
    pub path: String,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewResult {
    pub reviewed: u64,
    pub corrected: u64,
    pub left_to_review: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| if i == 0 { "ap_preop".to_owned() } else { "lat_preop".to_owned() }).collect()
    }

    #[test]
    fn the_lowest_threshold_that_keeps_the_target_precision() {
        // Class 0: 0.99 right, 0.95 right, 0.90 wrong, 0.80 right. Target 0.75: accepting down
        // to 0.80 gives 3/4 = 0.75 (kept); target 0.9: only down to 0.95 (2/2).
        let v = [(0, 0, 0.99), (0, 0, 0.95), (1, 0, 0.90), (0, 0, 0.80), (1, 1, 0.7)];
        let t = thresholds(&names(2), &v, 0.75);
        assert_eq!(t.classes[0].threshold, Some(0.80));
        assert_eq!((t.classes[0].accepted, t.classes[0].correct, t.classes[0].predicted), (4, 3, 4));
        let t = thresholds(&names(2), &v, 0.9);
        assert_eq!(t.classes[0].threshold, Some(0.95));
        assert_eq!(t.classes[0].precision(), Some(1.0));
        assert_eq!(t.classes[1].threshold, Some(0.7));
    }

    #[test]
    fn a_class_that_never_reaches_the_target_has_no_threshold_and_ties_are_taken_whole() {
        let v = [(1, 0, 0.9), (0, 0, 0.8)];
        let t = thresholds(&names(2), &v, 0.99);
        assert_eq!(t.classes[0].threshold, None);
        assert_eq!(t.classes[1].threshold, None, "no predictions: no threshold");
        // Two at 0.9, one wrong: 0.9 cannot be a threshold for 1.0 precision.
        let v = [(0, 0, 0.9), (1, 0, 0.9), (0, 0, 0.95)];
        let t = thresholds(&names(2), &v, 0.99);
        assert_eq!(t.classes[0].threshold, Some(0.95));
        assert_eq!(t.classes[0].accepted, 1);
    }

    #[test]
    fn decisions_follow_threshold_and_view() {
        let classes = names(2);
        let auto = thresholds(&classes, &[(0, 0, 0.9), (1, 1, 0.8)], 0.99);
        assert_eq!(decide(&auto, &classes, 0, 0.95, None).0, Decision::Accept);
        assert_eq!(decide(&auto, &classes, 0, 0.85, None).0, Decision::Review);
        let (d, why) = decide(&auto, &classes, 0, 0.95, Some("LL"));
        assert_eq!(d, Decision::Review);
        assert!(why.contains("ViewPosition"), "{why}");
        assert_eq!(decide(&auto, &classes, 0, 0.95, Some("AP")).0, Decision::Accept);
        assert_eq!(decide(&auto, &classes, 0, 0.95, Some("XX")).0, Decision::Accept, "an unknown code says nothing");
        assert_eq!(dicom_view(" pa "), Some("ap"));
    }
}

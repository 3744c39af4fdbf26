//! Checkpoints: model, optimiser state and loop state (next epoch, best so far, early
//! stopping counters, per-epoch history) written together after every epoch, swapped in
//! atomically, so a run interrupted anywhere resumes from its last whole epoch. The best
//! epoch's model is kept separately. The data order and augmentations are functions of
//! (seed, epoch), and backend randomness is re-seeded each epoch, so no RNG state needs
//! saving.

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::{EpochReport, TrainError};
use crate::models::Classifier;
use crate::models::backend::CobbBackend;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub next_epoch: usize,
    pub best_epoch: Option<usize>,
    pub best_value: Option<f64>,
    pub early_best: Option<f64>,
    pub since_improvement: usize,
    pub history: Vec<EpochReport>,
}

impl State {
    /// How the run ended, with its best epoch and the history so far.
    pub fn into_outcome(self, finish: super::Finish) -> super::Outcome {
        super::Outcome { finish, best_epoch: self.best_epoch, best_value: self.best_value, history: self.history }
    }
}

/// A model saved by [`Store::save_best`] (the `.mpk` file), loaded into `model`.
pub fn load_model<B: CobbBackend>(model: Classifier<B>, file: &Path, device: &B::Device) -> Result<Classifier<B>, TrainError> {
    model.load_file(file.with_extension(""), &recorder(), device).map_err(|e| err("loading the checkpoint", e))
}

pub struct Store {
    dir: PathBuf,
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

fn err(context: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{context}: {e}"))
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Files of the last checkpoint (model.mpk, optimizer.mpk, state.json).
    pub fn last_dir(&self) -> PathBuf {
        self.dir.join("last")
    }

    /// The best epoch's model file.
    pub fn best_model(&self) -> PathBuf {
        self.dir.join("best").join("model.mpk")
    }

    pub fn save_best<B: CobbBackend>(&self, model: &Classifier<B>) -> Result<(), TrainError> {
        let dir = self.dir.join("best");
        std::fs::create_dir_all(&dir).map_err(|e| err("creating the best-model folder", e))?;
        model.clone().save_file(dir.join("model"), &recorder()).map_err(|e| err("saving the best model", e))
    }

    pub fn save_last<B: CobbBackend, R: Record<B>>(&self, model: &Classifier<B>, optim: R, state: &State) -> Result<(), TrainError> {
        let tmp = self.dir.join("last.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| err("creating the checkpoint folder", e))?;
        model.clone().save_file(tmp.join("model"), &recorder()).map_err(|e| err("saving the model", e))?;
        Recorder::<B>::record(&recorder(), optim, tmp.join("optimizer")).map_err(|e| err("saving the optimiser", e))?;
        let json = serde_json::to_vec(state).map_err(|e| err("encoding the state", e))?;
        std::fs::write(tmp.join("state.json"), json).map_err(|e| err("writing the state", e))?;
        let last = self.last_dir();
        let old = self.dir.join("last.old");
        let _ = std::fs::remove_dir_all(&old);
        if last.exists() {
            std::fs::rename(&last, &old).map_err(|e| err("swapping checkpoints", e))?;
        }
        std::fs::rename(&tmp, &last).map_err(|e| err("swapping checkpoints", e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// The last checkpoint, if there is one.
    pub fn load_last<B: CobbBackend, R: Record<B>>(
        &self,
        model: Classifier<B>,
        device: &B::Device,
    ) -> Result<Option<(Classifier<B>, R, State)>, TrainError> {
        let mut dir = self.last_dir();
        if !dir.join("state.json").exists() {
            dir = self.dir.join("last.old");
            if !dir.join("state.json").exists() {
                return Ok(None);
            }
        }
        let state: State = serde_json::from_slice(&std::fs::read(dir.join("state.json")).map_err(|e| err("reading the state", e))?)
            .map_err(|e| err("decoding the state", e))?;
        let model = model.load_file(dir.join("model"), &recorder(), device).map_err(|e| err("loading the model", e))?;
        let optim: R = Recorder::<B>::load(&recorder(), dir.join("optimizer"), device).map_err(|e| err("loading the optimiser", e))?;
        Ok(Some((model, optim, state)))
    }
}

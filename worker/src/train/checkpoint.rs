//! Checkpoints: model, optimiser state and loop state (next epoch, best so far, early
//! stopping counters, per-epoch history) written together after every epoch, swapped in
//! atomically, so a run interrupted anywhere resumes from its last whole epoch. The best
//! epoch's model is kept separately. The data order and augmentations are functions of
//! (seed, epoch), and dropout's generator is re-seeded each epoch, so no RNG state needs
//! saving.

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::{EpochReport, TrainError};
use crate::models::Classifier;

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

/// The first bytes of a burnpack file (Burn 0.22's format for modules and optimiser state).
const BURNPACK_MAGIC: [u8; 4] = 0x4255_524E_u32.to_le_bytes();

/// Refuses, with a message that says what wrote it, a checkpoint file this cobb cannot read:
/// cobb before the move to Burn 0.22 (2026-12-02) wrote MessagePack (`.mpk`) records.
fn check_format(file: &Path) -> Result<(), TrainError> {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(file).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    if let Err(e) = read {
        return Err(err(&format!("reading {}", file_name(file)), e));
    }
    if head == BURNPACK_MAGIC || head.iter().rev().eq(BURNPACK_MAGIC.iter()) {
        return Ok(());
    }
    let writer = if matches!(head[0], 0x80..=0x8f | 0xde | 0xdf) {
        "cobb with Burn 0.21 (a MessagePack .mpk record, before 2026-12-02)"
    } else {
        "an unknown program (not a burnpack file)"
    };
    Err(TrainError::Checkpoint(format!(
        "{} was written by {writer}; this cobb (Burn 0.22) reads burnpack checkpoints only: train the run again, or evaluate it with a cobb built from a commit before the Burn 0.22 move",
        file_name(file)
    )))
}

/// A checkpoint file by its name only: messages reach the server, where viewers read them,
/// and the worker's directories are none of their business.
fn file_name(file: &Path) -> String {
    file.file_name().map_or_else(|| "the checkpoint".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// A model saved by [`Store::save_best`], loaded into `model`.
pub fn load_model(model: Classifier, file: &Path) -> Result<Classifier, TrainError> {
    check_format(file)?;
    model.try_load_file(file).map_err(|e| err("loading the checkpoint", e))
}

pub struct Store {
    dir: PathBuf,
}

fn err(context: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Checkpoint(format!("{context}: {e:?}"))
}

/// File names of a last checkpoint: model, optimiser state, loop state.
pub const LAST_MODEL: &str = "model.bpk";
pub const LAST_OPTIMIZER: &str = "optimizer.bpk";
pub const LAST_STATE: &str = "state.json";

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Files of the last checkpoint ([`LAST_MODEL`], [`LAST_OPTIMIZER`], [`LAST_STATE`]).
    pub fn last_dir(&self) -> PathBuf {
        self.dir.join("last")
    }

    /// The best epoch's model file.
    pub fn best_model(&self) -> PathBuf {
        self.dir.join("best").join("model.bpk")
    }

    pub fn save_best(&self, model: &Classifier) -> Result<(), TrainError> {
        let dir = self.dir.join("best");
        std::fs::create_dir_all(&dir).map_err(|e| err("creating the best-model folder", e))?;
        model.clone().save_file(self.best_model()).map_err(|e| err("saving the best model", e))
    }

    pub fn save_last(&self, model: &Classifier, optim: &ModuleOptimizer, state: &State) -> Result<(), TrainError> {
        let tmp = self.dir.join("last.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| err("creating the checkpoint folder", e))?;
        model.clone().save_file(tmp.join(LAST_MODEL)).map_err(|e| err("saving the model", e))?;
        optim.save(tmp.join(LAST_OPTIMIZER)).map_err(|e| err("saving the optimiser", e))?;
        let json = serde_json::to_vec(state).map_err(|e| err("encoding the state", e))?;
        std::fs::write(tmp.join(LAST_STATE), json).map_err(|e| err("writing the state", e))?;
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

    /// The last checkpoint (model, optimiser state as a record, loop state), if there is one.
    pub fn load_last(&self, model: Classifier) -> Result<Option<(Classifier, burn::optim::OptimizerRecord, State)>, TrainError> {
        let mut dir = self.last_dir();
        if !dir.join(LAST_STATE).exists() {
            dir = self.dir.join("last.old");
            if !dir.join(LAST_STATE).exists() {
                return Ok(None);
            }
        }
        if dir.join("model.mpk").exists() && !dir.join(LAST_MODEL).exists() {
            check_format(&dir.join("model.mpk"))?;
        }
        let state: State = serde_json::from_slice(&std::fs::read(dir.join(LAST_STATE)).map_err(|e| err("reading the state", e))?)
            .map_err(|e| err("decoding the state", e))?;
        check_format(&dir.join(LAST_MODEL))?;
        check_format(&dir.join(LAST_OPTIMIZER))?;
        let model = model.try_load_file(dir.join(LAST_MODEL)).map_err(|e| err("loading the model", e))?;
        let optim = burn::optim::OptimizerRecord::load(dir.join(LAST_OPTIMIZER)).map_err(|e| err("loading the optimiser", e))?;
        Ok(Some((model, optim, state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;
    use protocol::spec::Arch;

    fn tiny() -> Classifier {
        crate::models::build(Arch::SimpleCnn, 1, 3, None, &Device::flex()).model
    }

    #[test]
    fn a_checkpoint_of_burn_021_is_refused_naming_its_writer() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("model.mpk");
        // A NamedMpk record is a MessagePack map: its first byte is a fixmap or map16 marker.
        std::fs::write(&file, [0x83, 0xa4, b'i', b't', b'e', b'm']).expect("write");
        let message = load_model(tiny(), &file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("Burn 0.21") && message.contains("train the run again"), "{message}");
        std::fs::write(&file, b"not a model").expect("write");
        let message = load_model(tiny(), &file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("not a burnpack file"), "{message}");
    }

    #[test]
    fn a_saved_best_model_loads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::new(dir.path());
        let model = tiny();
        store.save_best(&model).expect("saves");
        let loaded = load_model(tiny(), &store.best_model()).expect("loads");
        let x = burn::prelude::Tensor::<4>::ones([1, 1, 32, 32], &Device::flex());
        let (a, b) = (model.valid().forward(x.clone()).into_data(), loaded.valid().forward(x).into_data());
        assert_eq!(a.try_to_vec::<f32>().ok(), b.try_to_vec::<f32>().ok());
    }
}

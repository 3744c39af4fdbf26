//! cobb's dataset library, with no Burn in it: manifests of labelled files (`manifest`),
//! decoding DICOM/PNG/JPEG to grayscale (`decode`), the frozen patient-grouped split
//! (`split`), the input pipeline's decoded-image cache, augmentations and prefetching loader
//! (`cache`, `transforms`, `loader`; the worker turns its batches into tensors), and the
//! spine radiograph phantom generator (`phantoms`). `cobb dataset register` and `cobb
//! phantoms` use it without going near the training code.

pub mod cache;
pub mod decode;
pub mod loader;
pub mod manifest;
pub mod phantoms;
pub mod split;
pub mod transforms;

/// Everything that can go wrong while reading a dataset as a whole (single bad files
/// are reported as [`protocol::api::IngestionIssue`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("manifest {path} line {line}: {message}")]
    Manifest { path: String, line: u64, message: String },
    #[error("{path} holds no class folders or images; expected PATH/<class>/<image> or --manifest CSV")]
    Empty { path: String },
}

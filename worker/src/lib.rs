//! cobb's worker: the Burn models, the training loop and evaluation on top of the `data`
//! crate's input pipeline, and the job loop (`jobs`) that leases work from the server and
//! runs it by its kind.

pub mod classify;
pub mod device;
pub mod jobs;
pub mod models;
pub mod train;

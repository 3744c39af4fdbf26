//! cobb's worker: the data side (scanning, decoding, the frozen split, phantoms, the
//! input pipeline), the Burn models, the training loop, and the job loop (`jobs`) that
//! leases work from the server and runs it by its kind.

pub mod client;
pub mod data;
pub mod device;
pub mod jobs;
pub mod models;
pub mod phantoms;
pub mod train;

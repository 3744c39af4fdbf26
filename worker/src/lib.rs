//! cobb's worker: the data side (scanning, decoding, the frozen split, phantoms, the
//! input pipeline), the Burn models and the training loop. The lease loop that connects
//! training to the server arrives with the worker issue.

pub mod client;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod lease;
pub mod models;
pub mod phantoms;
pub mod train;

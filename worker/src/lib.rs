//! cobb's worker. Today: the dataset side that `cobb dataset register` uses (scanning a
//! folder or manifest, hashing files, the frozen patient-grouped split). Training with
//! Burn and the lease loop arrive with their issues; nothing here trains yet.

pub mod data;
pub mod phantoms;

pub mod dataset;
pub mod models;
pub mod phantoms;
pub mod runs;
pub mod server;
pub mod submit;
pub mod token;
pub mod train;

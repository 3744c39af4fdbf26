pub mod dataset;
pub mod phantoms;
pub mod runs;
pub mod server;
pub mod submit;
pub mod token;

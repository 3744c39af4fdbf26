pub mod dataset;
pub mod runs;
pub mod server;
pub mod submit;
pub mod token;

//! Types that cross cobb's process boundaries.
//!
//! Everything here is plain data plus pure logic: the experiment spec (parse, validate,
//! expand into runs), API request/response bodies, the error body, and the metric math
//! that turns a confusion matrix into per-class precision/recall/F1.

pub mod api;
pub mod classes;
pub mod classify;
pub mod compare;
pub mod early_stop;
pub mod error;
pub mod evidence;
pub mod importance;
pub mod issue;
pub mod keys;
pub mod metrics;
pub mod plan;
pub mod rng;
pub mod spec;
pub mod status;
pub mod study;
pub mod sweep;
pub mod time;
pub mod tpe;

pub use error::ErrorBody;
pub use spec::{ExperimentSpec, SpecError};
pub use status::{AuditAction, Decision, JobKind, JobStatus, Role, RunStatus, Split};

//! Small enums shared by the server, the workers and the CLI.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "`{other}` is not one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// queued -> running -> succeeded | failed | cancelled | pruned (a running run may go
    /// back to queued when its lease expires or its worker releases it). `pruned`: stopped
    /// early by its sweep's `early_stop` rule; it keeps its metrics, per-class rows and best
    /// checkpoint.
    RunStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Pruned => "pruned",
    }
);

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Pruned)
    }
}

/// A job's status: the same lifecycle as a run's (a run's status is its training job's).
pub type JobStatus = RunStatus;

string_enum!(
    /// What a job asks a worker to do. `train`: train a run (train and validation items);
    /// `evaluate`: evaluate a promoted run's best checkpoint on the sealed test split (the
    /// only kind that ever receives test items); `classify`: run a promoted model over a folder
    /// of new images (a classification batch; it reads no dataset items).
    JobKind {
        Train => "train",
        Evaluate => "evaluate",
        Classify => "classify",
    }
);

string_enum!(
    /// What happens to a classified image: `accept` (confident enough for its class's
    /// threshold), `review` (a person labels it), `skipped` (the file could not be classified:
    /// listed with its reason, never silently dropped).
    Decision {
        Accept => "accept",
        Review => "review",
        Skipped => "skipped",
    }
);

string_enum!(
    /// What an audit event records, in one grammar: `object.verb`. (Events written before
    /// this grammar keep their old names -- `promote`, `test_evaluation_started`,
    /// `test_evaluated`, `test_evaluation_retry`, `test_evaluation_failed` -- as the hash
    /// chain covers them.)
    AuditAction {
        TokenCreate => "token.create",
        TokenRevoke => "token.revoke",
        DatasetRegister => "dataset.register",
        ExperimentSubmit => "experiment.submit",
        ExperimentRulesRefused => "experiment.rules_refused",
        RunCancel => "run.cancel",
        RunPrune => "run.prune",
        SweepCancel => "sweep.cancel",
        PromotionCreate => "promotion.create",
        PromotionApprove => "promotion.approve",
        EvaluationStart => "evaluation.start",
        EvaluationSucceed => "evaluation.succeed",
        EvaluationRetry => "evaluation.retry",
        EvaluationFail => "evaluation.fail",
        ClassifyCreate => "classify.create",
        ClassifyFinish => "classify.finish",
        ReviewLabel => "review.label",
        EvaluationCancel => "evaluation.cancel",
    }
);

string_enum!(
    /// viewer < submitter < reviewer < admin; `worker` is separate and only speaks the
    /// worker protocol. Admin may do everything.
    Role {
        Viewer => "viewer",
        Submitter => "submitter",
        Reviewer => "reviewer",
        Admin => "admin",
        Worker => "worker",
    }
);

impl Role {
    /// Whether a token with this role may do what needs `required`.
    pub fn allows(self, required: Role) -> bool {
        fn rank(role: Role) -> Option<u8> {
            match role {
                Role::Viewer => Some(0),
                Role::Submitter => Some(1),
                Role::Reviewer => Some(2),
                Role::Admin => Some(3),
                Role::Worker => None,
            }
        }
        if self == Role::Admin || self == required {
            return true;
        }
        match (rank(self), rank(required)) {
            (Some(have), Some(need)) => have >= need,
            _ => false,
        }
    }
}

string_enum!(
    /// Which part of a frozen dataset version an item belongs to.
    Split {
        Train => "train",
        Val => "val",
        Test => "test",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_form_a_chain_with_worker_apart() {
        assert!(Role::Reviewer.allows(Role::Submitter));
        assert!(Role::Submitter.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Submitter));
        assert!(!Role::Worker.allows(Role::Viewer));
        assert!(!Role::Reviewer.allows(Role::Worker));
        assert!(Role::Worker.allows(Role::Worker));
        assert!(Role::Admin.allows(Role::Worker));
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(*status));
        }
        assert!("done".parse::<RunStatus>().is_err());
    }
}

//! The JSON body of every 4xx answer from the server.

use serde::{Deserialize, Serialize};

/// Stable machine-readable codes; clients match on these, never on messages.
pub mod code {
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const INVALID_SPEC: &str = "invalid_spec";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const DATASET_NOT_FOUND: &str = "dataset_not_found";
    pub const CONFLICT: &str = "conflict";
    pub const LEASE_EXPIRED: &str = "lease_expired";
    pub const LEASE_LOST: &str = "lease_lost";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const INTERNAL: &str = "internal";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of [`code`]'s constants.
    pub code: String,
    /// One sentence saying what went wrong.
    pub message: String,
    /// What to do next, when there is something to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Structured context (e.g. a spec error's file, line, column and key path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into(), hint: None, details: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

//! ApiError: every way a request can fail, mapped to an HTTP status in one place.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use protocol::error::code;
use protocol::{ErrorBody, Role, SpecError};
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidSpec(Box<SpecError>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("this needs the {needed} role; your token `{name}` has {have}")]
    Forbidden { needed: Role, have: Role, name: String },
    #[error("{what} `{id}` does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("dataset `{0}` is not registered")]
    DatasetNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    LeaseExpired(String),
    #[error("{0}")]
    LeaseLost(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("database error")]
    Database(#[from] DbErr),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// `Ok(None)` for a `NotFound`: for what a page or report shows when it exists (a run's
    /// stored predictions, say) and leaves out when it does not.
    pub fn found<T>(r: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
        match r {
            Ok(value) => Ok(Some(value)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        ApiError::NotFound { what, id: id.to_string() }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => code::INVALID_REQUEST,
            ApiError::InvalidSpec(_) => code::INVALID_SPEC,
            ApiError::Unauthorized(_) => code::UNAUTHORIZED,
            ApiError::Forbidden { .. } => code::FORBIDDEN,
            ApiError::NotFound { .. } => code::NOT_FOUND,
            ApiError::DatasetNotFound(_) => code::DATASET_NOT_FOUND,
            ApiError::Conflict(_) => code::CONFLICT,
            ApiError::LeaseExpired(_) => code::LEASE_EXPIRED,
            ApiError::LeaseLost(_) => code::LEASE_LOST,
            ApiError::PayloadTooLarge { .. } => code::PAYLOAD_TOO_LARGE,
            ApiError::Database(_) | ApiError::Internal(_) => code::INTERNAL,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ApiError::Unauthorized(_) => {
                Some("pass --token (or COBB_TOKEN); on the server's machine the CLI reads DATA_DIR/admin.token".to_owned())
            }
            ApiError::Forbidden { needed, .. } => Some(format!("ask an admin for a token: cobb token create --role {needed} --name NAME")),
            ApiError::DatasetNotFound(name) => Some(format!("register it first: cobb dataset register {name} PATH")),
            ApiError::NotFound { what: "run", .. } => Some("list runs with: cobb runs".to_owned()),
            ApiError::LeaseExpired(_) | ApiError::LeaseLost(_) => Some("stop working on this run; lease the next one".to_owned()),
            ApiError::PayloadTooLarge { .. } => Some("send it in smaller batches".to_owned()),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidSpec(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::DatasetNotFound(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::LeaseExpired(_) | ApiError::LeaseLost(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            let chain = match self {
                ApiError::Database(e) => format!("{e}"),
                ApiError::Internal(e) => format!("{e:#}"),
                _ => self.to_string(),
            };
            tracing::error!(error = %chain, "request failed");
        }
        let mut body = ErrorBody::new(self.code(), self.to_string());
        body.hint = self.hint();
        if let ApiError::InvalidSpec(spec_error) = self {
            body.details = serde_json::to_value(spec_error.as_ref()).ok();
        }
        HttpResponse::build(status).json(body)
    }
}

/// Turns actix's JSON extractor failures into the same error bodies.
pub fn json_error(err: actix_web::error::JsonPayloadError, limit: usize) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match &err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::PayloadTooLarge { limit },
        E::ContentType => ApiError::InvalidRequest("send the body as application/json".to_owned()),
        E::Deserialize(e) => ApiError::InvalidRequest(format!("invalid JSON body: {e}")),
        other => ApiError::InvalidRequest(format!("could not read the body: {other}")),
    };
    api.into()
}

/// Path and query extractor failures.
pub fn request_error(message: String) -> actix_web::Error {
    ApiError::InvalidRequest(message).into()
}

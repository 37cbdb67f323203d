//! The one error shape of the API: `{ "error": "...", "detail": "..." }`
//! with a 4xx status for anything the caller sent wrong.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::cluster::owners::{AskError, Failure};
use crate::storage::StorageError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub error: std::borrow::Cow<'static, str>,
    /// A sentence for people.
    pub detail: String,
    /// Seconds for `Retry-After`, on 503.
    pub retry_after: Option<u64>,
    /// Extra fields of the body (e.g. the order id of a declined order).
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            detail: detail.into(),
            retry_after: None,
            extra: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn conflict(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, error, detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    pub fn with_extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error,
            self.detail
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "error": self.error, "detail": self.detail });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (&self.extra, body.as_object_mut())
        {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header(("Retry-After", secs.to_string()));
        }
        res.json(body)
    }
}

/// Storage trouble is ours, not the caller's: 503 so clients retry.
impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        tracing::warn!(error = %e, "storage error in a request");
        ApiError::unavailable(format!("storage is busy or unavailable: {e}"), 1)
    }
}

/// An owner that could not be asked, or could not answer: 503, ours; a page
/// deeper than owners' lists are merged, or too large to send: 400.
impl From<AskError> for ApiError {
    fn from(e: AskError) -> Self {
        match e {
            AskError::TooDeep(why) => ApiError::bad_request(why),
            AskError::Failed {
                failure: failure @ Failure::TooLarge,
                ..
            } => ApiError::bad_request(failure.to_string()),
            AskError::Failed {
                failure: Failure::Busy(why),
                ..
            } => ApiError::unavailable(why, 1),
            e => {
                crate::metrics::inc(&crate::metrics::METRICS.owner_unavailable_total);
                tracing::warn!(error = %e, "an owner could not answer a request");
                ApiError {
                    error: "owner_unavailable".into(),
                    ..ApiError::unavailable(e.to_string(), 1)
                }
            }
        }
    }
}

//! API errors: every failure maps to one HTTP status and one `code` from DESIGN.md, with a
//! JSON body `{"error":{"code","message","leader"?}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_modes::replicator::{AdminError, LeaderHint, ReadError, SubmitError};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), leader: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")
    }
    /// A valid token that does not allow this request (the read-only token on a write).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "unauthorized", message)
    }
    pub fn precondition_failed(current: u64) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", format!("the key's current revision is {current}"))
    }
    /// Something that passes (a full write queue, an election): retry shortly.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// An internal failure is answered as unavailable too.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::unavailable(message)
    }
    fn with_leader(mut self, leader: Option<LeaderHint>) -> Self {
        self.leader = leader.and_then(|l| l.http_addr);
        self
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let msg = e.to_string();
        match e {
            SubmitError::NotLeader { leader } => ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", msg).with_leader(leader),
            SubmitError::ReadOnly(_) => ApiError::new(StatusCode::FORBIDDEN, "read_only", msg),
            SubmitError::Fenced { leader, .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "fenced", msg).with_leader(leader),
            SubmitError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg),
            SubmitError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg),
            SubmitError::Refused(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        let msg = e.to_string();
        match e {
            ReadError::BookmarkTimeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg),
            ReadError::NotLeader { leader } => ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", msg).with_leader(leader),
            ReadError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg),
            ReadError::UnknownBookmark(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let msg = e.to_string();
        match e {
            AdminError::NotSupported { .. } | AdminError::Rejected(_) => ApiError::bad_request(msg),
            AdminError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg),
            AdminError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
        }
    }
}

impl From<meridian_modes::state_machine::StateMachineError> for ApiError {
    fn from(e: meridian_modes::state_machine::StateMachineError) -> Self {
        match e {
            // Damaged bytes on disk: not a passing unavailability, and never served as data.
            meridian_modes::state_machine::StateMachineError::Corrupt { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("storage: {e}"))
            }
            _ => ApiError::internal(format!("storage: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(l) = &self.leader {
            body["leader"] = json!(l);
        }
        let mut resp = (self.status, Json(json!({ "error": body }))).into_response();
        if let Some(loc) = self.leader.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        // Every 503 is something that passes (a full write queue, an election, a peer away):
        // tell clients when to try again, as the connection cap's refusal does.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

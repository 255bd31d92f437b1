//! Vault's HTTP shapes: the response envelope and `{"errors": [...]}`.
//!
//! Vault clients are strict about both: hvac decodes a body only on status
//! 200, and treats `Content-Type: application/json` (exactly) as JSON.
//! Every error rolemint's admin API sends, 404 and 405 included, goes
//! through [`ApiError`], so no route answers with an empty or text body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

/// An error answer: a status and `{"errors": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            errors: vec![message.into()],
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403 with Vault's wording: a missing token and a wrong one look alike.
    pub fn permission_denied() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission denied")
    }

    /// 404 with an empty list, as Vault answers a LIST with no keys.
    pub fn empty_list() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "errors": self.errors }))).into_response()
    }
}

/// Vault's response envelope around `data`.
pub fn envelope(data: impl Serialize) -> Response {
    ok(Envelope {
        data: Some(to_value(data)),
        ..Envelope::default()
    })
}

/// A write's answer: 204, or 200 with Vault's `warnings` when there are any
/// (a field ignored, a value not taken).
pub fn written(warnings: Vec<String>) -> Response {
    if warnings.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    ok(Envelope {
        warnings: Some(warnings),
        ..Envelope::default()
    })
}

/// A renew answer: the lease, its new duration, and warnings.
pub fn lease_envelope(lease_id: &str, lease_duration: u64, warnings: Vec<String>) -> Response {
    ok(Envelope {
        lease_id: lease_id.to_owned(),
        renewable: true,
        lease_duration,
        warnings: (!warnings.is_empty()).then_some(warnings),
        ..Envelope::default()
    })
}

/// A login answer: the token and what it may do, in `auth`.
pub fn auth_envelope(auth: impl Serialize) -> Response {
    ok(Envelope {
        auth: Some(to_value(auth)),
        ..Envelope::default()
    })
}

/// A token answer (create, renew): the token in `auth`, and warnings.
pub fn auth_envelope_with_warnings(auth: impl Serialize, warnings: Vec<String>) -> Response {
    ok(Envelope {
        auth: Some(to_value(auth)),
        warnings: (!warnings.is_empty()).then_some(warnings),
        ..Envelope::default()
    })
}

/// A credentials answer: `data` with the lease it belongs to. The body
/// holds a password, so no cache, proxy or browser may keep it.
pub fn secret_envelope(lease_id: &str, lease_duration: u64, data: impl Serialize) -> Response {
    let mut response = ok(Envelope {
        lease_id: lease_id.to_owned(),
        renewable: true,
        lease_duration,
        data: Some(to_value(data)),
        ..Envelope::default()
    });
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// Vault's fields, all present in every answer, as Vault sends them.
#[derive(Debug, Default, Serialize)]
struct Envelope {
    request_id: String,
    lease_id: String,
    renewable: bool,
    lease_duration: u64,
    data: Option<Value>,
    wrap_info: Option<Value>,
    warnings: Option<Vec<String>>,
    auth: Option<Value>,
    mount_type: String,
}

fn ok(mut envelope: Envelope) -> Response {
    envelope.request_id = request_id();
    (StatusCode::OK, Json(envelope)).into_response()
}

fn to_value(data: impl Serialize) -> Value {
    serde_json::to_value(data).unwrap_or(Value::Null)
}

/// A random UUID-shaped request id (Vault clients log it).
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    // A failed system RNG leaves zeros: an id for logs, not a secret.
    let _ = aws_lc_rs::rand::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_ne!(id, request_id());
    }
}

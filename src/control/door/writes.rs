//! What the door's routes over rolemint's store (`database/roles`,
//! `database/config`, ...) answer alike: a `LIST` (its keys, or Vault's
//! empty 404), the warning naming the fields a write did not know, the
//! `store.written` audit line (on disk before the answer), and a store
//! failure as 400 or 503.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

use crate::control::leases::{is_list, ListQuery};
use crate::control::vault::{envelope, ApiError};
use crate::control::AdminState;
use crate::observe::audit::Event;
use crate::store::{Kind, StoreError};

/// 405 unless the request is Vault's `LIST` (or `GET ...?list=true`).
pub fn require_list(method: &Method, query: &ListQuery) -> Result<(), ApiError> {
    if is_list(method, query) {
        Ok(())
    } else {
        Err(crate::control::method_not_allowed_error())
    }
}

/// A `LIST` answer: `{"data": {"keys": [...]}}`, or Vault's 404 with no
/// errors when there are none.
pub fn keys_answer<K: Serialize>(keys: &[K]) -> Result<Response, ApiError> {
    if keys.is_empty() {
        return Err(ApiError::empty_list());
    }
    Ok(envelope(json!({ "keys": keys })))
}

/// Vault's warning for the fields of a write its endpoint does not know;
/// `None` when every field was known.
pub fn unknown_warning(mut unknown: Vec<String>) -> Option<String> {
    if unknown.is_empty() {
        return None;
    }
    unknown.sort();
    Some(format!(
        "Endpoint ignored these unrecognized parameters: [{}]",
        unknown.join(" ")
    ))
}

/// The `store.written` audit line of a write or delete of `kind` `name`,
/// durable before the answer.
pub async fn record(
    state: &AdminState,
    kind: Kind,
    name: &str,
    action: &str,
    by: &str,
) -> Result<(), ApiError> {
    state
        .audit_durable(Event::StoreWritten {
            kind: kind.as_str().into(),
            name: name.into(),
            action: action.into(),
            written_by: by.into(),
        })
        .await
}

/// A store failure as the API answers it: the writer's mistakes 400, the
/// rest 503 with the reason (never a secret: the store holds none).
pub fn store_error(e: StoreError) -> ApiError {
    if e.is_client_error() {
        return ApiError::bad_request(e.to_string());
    }
    tracing::error!("{e}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

//! Vault's database secrets mount: `creds/<template>` hands out a username
//! and password under a lease; `rotate-root/<database>` sets a new admin
//! password. The roles are in `roles.rs`, the connections in
//! `connection.rs`.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{door, require_workload};
use crate::auth::policy::Entitlement;
use crate::control::access::Access;
use crate::control::vault::{secret_envelope, ApiError};
use crate::control::{AdminState, ClientAddr};
use crate::lease::creds::CredsError;

/// Longest template name accepted in a path.
const MAX_NAME_BYTES: usize = 128;

/// `GET /v1/<mount>/creds/<template>`: mints a credential lease for the
/// calling workload. The one answer carrying a password: `no-store`, and
/// the password reaches no log or audit line.
pub async fn creds(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    Path(template): Path<String>,
    headers: HeaderMap,
    access: Access,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    // The principal (its stored token too, which the lease is recorded
    // under): a map lookup of the token read for this request, or the
    // verified-token cache for a JWT. The operator token stands for no
    // identity, and so can be handed no credentials.
    let principal = require_workload(&state, &headers)?;
    let identity = &principal.identity;
    // A workload's templates: its policies', and its allow lists'.
    let entitlement = Entitlement::Policies {
        acl: access.acl(),
        database_mount: &state.database_mount,
    };
    if template.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request("role name too long"));
    }
    // Templates and policy as reloaded (SIGHUP), like a session's.
    let runtime = door.shared.runtime();
    let issued = door
        .creds
        .issue(
            runtime.creds_rules(&*door.shared),
            identity,
            &template,
            Some(client),
            entitlement,
        )
        .await
        .map_err(|e| {
            // A stored role its connection no longer admits: say so, as
            // Vault does, rather than "unknown role".
            let store = door.shared.store.snapshot();
            match crate::runtime::templates::left_out(&store, &template) {
                Some(why) if matches!(e, CredsError::UnknownTemplate(_)) => {
                    ApiError::bad_request(why)
                }
                _ => creds_error(e, &identity.subject, &template),
            }
        })?;
    super::tokens::record_lease(&state, &principal, &issued.lease_id, issued.expires_at).await?;
    Ok(secret_envelope(
        &issued.lease_id,
        issued.lease_duration.as_secs(),
        json!({
            "username": issued.username,
            "password": issued.password.expose(),
        }),
    ))
}

fn creds_error(e: CredsError, identity: &str, template: &str) -> ApiError {
    match &e {
        CredsError::UnknownTemplate(_) => ApiError::bad_request(e.to_string()),
        CredsError::NotAllowed { rule } => {
            tracing::info!(identity, template, "credentials refused: {rule}");
            ApiError::permission_denied()
        }
        // Vault answers a rate or quota refusal 429 in its error shape.
        CredsError::Quota(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        CredsError::NeedsApproval(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        CredsError::TooMany | CredsError::ShuttingDown | CredsError::Backlog => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        CredsError::Mint(detail) => {
            tracing::warn!(identity, template, "credentials failed: {detail}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `POST /v1/<mount>/rotate-root/<database or connection>` (operators): a new random
/// admin password, as `rolemint rotate-admin` sets it. 204 when done; 400
/// when the config keeps the password where it cannot be rewritten.
pub async fn rotate_root(
    State(state): State<Arc<AdminState>>,
    Path(database): Path<String>,
) -> Result<Response, ApiError> {
    // Operators, or `update` on the path: the gate checked.
    let door = door(&state)?;
    // A database rolemint serves, or a connection written through
    // database/config/NAME (the name Vault's tutorial rotates): rolemint
    // has one backend and one admin password either way.
    let connection = door
        .shared
        .store
        .snapshot()
        .get(crate::store::Kind::Connection, &database)
        .is_some();
    if !state.databases.contains(&database) && !connection {
        return Err(ApiError::bad_request(format!(
            "unknown database: {}",
            database.chars().take(MAX_NAME_BYTES).collect::<String>()
        )));
    }
    let shared = &door.shared;
    match crate::pg::rotate::rotate_admin(&shared.admin_client, &shared.config.backend).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) if e.is_refusal() => Err(ApiError::bad_request(e.to_string())),
        Err(e) => {
            tracing::error!("rotate-root: {e}");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rotating the admin password failed; see rolemint's log",
            ))
        }
    }
}

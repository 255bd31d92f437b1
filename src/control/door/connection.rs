//! Vault's `database/config/NAME` and `database/reset/NAME`: the
//! connection a role's `db_name` names.
//!
//! rolemint has one backend, set in its config file (`[backend]`), with
//! the admin password kept there. A connection written here names a
//! database of that backend and its `allowed_roles`; it is accepted when
//! its `connection_url` and `username` match what rolemint runs with, and
//! refused (400) naming the config key to change otherwise. A password is
//! never taken nor shown: rolemint's admin password is rotated with
//! `database/rotate-root`. Reading a connection shows what rolemint
//! connects to.
//!
//! ```text
//! LIST   /v1/<db mount>/config             stored connection names
//! GET    /v1/<db mount>/config/NAME        the connection, never a password
//! POST   /v1/<db mount>/config/NAME        write (operators)
//! DELETE /v1/<db mount>/config/NAME        delete (operators)
//! POST   /v1/<db mount>/reset/NAME         check the connection again (operators)
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::writes::{keys_answer, record, require_list, store_error, unknown_warning};
use super::{door, VaultDoor};
use crate::config::BackendConfig;
use crate::control::auth::Authenticated;
use crate::control::leases::{parse_body, ListQuery};
use crate::control::vault::{envelope, ApiError};
use crate::control::AdminState;
use crate::store::{Kind, Stored};

/// The only plugin rolemint speaks for.
pub const PLUGIN: &str = "postgresql-database-plugin";
/// Longest connection name accepted in a path.
const MAX_NAME_BYTES: usize = 128;

/// `LIST /v1/<mount>/config`: the connections written here.
pub async fn config_list(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Query(query): Query<ListQuery>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    require_list(&method, &query)?;
    let door = door(&state)?;
    // Operators, or the capability on the path: the gate checked.
    auth.caller()?;
    let snapshot = door.shared.store.snapshot();
    let keys: Vec<&str> = snapshot.names(Kind::Connection).collect();
    keys_answer(&keys)
}

/// `/v1/<mount>/config/<name>`: read, write, delete.
pub async fn config(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Path(name): Path<String>,
    auth: Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request("connection name too long"));
    }
    let caller = auth.caller()?;
    match method.as_str() {
        "GET" => {
            let view = view(&state, door, &name).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, format!("unknown connection: {name}"))
            })?;
            Ok(envelope(view))
        }
        "POST" | "PUT" => {
            let fields: Map<String, Value> = parse_body(body)?;
            write(&state, door, &name, &fields, &caller.label()).await
        }
        "DELETE" => {
            if crate::store::check_name(&name).is_ok()
                && door
                    .shared
                    .store
                    .delete(Kind::Connection, &name)
                    .await
                    .map_err(store_error)?
            {
                record(&state, Kind::Connection, &name, "delete", &caller.label()).await?;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(crate::control::method_not_allowed_error()),
    }
}

/// The database `name` stands for: a stored connection's, or a database
/// rolemint serves by its own name.
fn database_of(
    state: &AdminState,
    door: &VaultDoor,
    name: &str,
) -> Option<(String, Option<Stored>)> {
    let stored = door
        .shared
        .store
        .snapshot()
        .get(Kind::Connection, name)
        .cloned();
    match stored {
        Some(s) => {
            let database = s.body.get("database")?.as_str()?.to_owned();
            Some((database, Some(s)))
        }
        None => state
            .databases
            .iter()
            .any(|d| d == name)
            .then(|| (name.to_owned(), None)),
    }
}

/// A connection as Vault shows one; what rolemint really connects to.
fn view(state: &AdminState, door: &VaultDoor, name: &str) -> Option<Value> {
    let (database, stored) = database_of(state, door, name)?;
    let backend = &door.shared.config.backend;
    let allowed_roles = match &stored {
        Some(s) => s.body.get("allowed_roles").cloned().unwrap_or(json!([])),
        // A database served by its own name: every template may use it.
        None => json!(["*"]),
    };
    Some(json!({
        "plugin_name": PLUGIN,
        "plugin_version": "",
        "connection_details": {
            "connection_url": connection_url(backend, &database),
            "username": backend.admin_user,
            "max_open_connections": backend.admin_pool_size,
        },
        "allowed_roles": allowed_roles,
        "password_policy": "",
        "root_credentials_rotate_statements": [],
        "verify_connection": true,
    }))
}

/// The URL of `database` on the backend, with Vault's placeholders for the
/// credentials (rolemint never shows them).
fn connection_url(backend: &BackendConfig, database: &str) -> String {
    let host = if backend.host.contains(':') {
        format!("[{}]", backend.host)
    } else {
        backend.host.clone()
    };
    format!(
        "postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{}/{database}",
        backend.port
    )
}

async fn write(
    state: &AdminState,
    door: &VaultDoor,
    name: &str,
    fields: &Map<String, Value>,
    by: &str,
) -> Result<Response, ApiError> {
    crate::store::check_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let shared = &door.shared;
    let existing = shared.store.snapshot().get(Kind::Connection, name).cloned();
    let (body, warnings) = connection_body(
        fields,
        existing.as_ref().map(|s| &s.body),
        &shared.config.backend,
    )
    .map_err(ApiError::bad_request)?;
    let database = body["database"].as_str().unwrap_or_default().to_owned();
    let verify = fields
        .get("verify_connection")
        .is_none_or(|v| v.as_bool().unwrap_or(v.as_str() != Some("false")));
    if verify {
        shared
            .admin_client
            .ping(&database)
            .await
            .map_err(|e| ApiError::bad_request(format!("error verifying connection: {e}")))?;
    }
    shared
        .store
        .put(Kind::Connection, name, &body, by)
        .await
        .map_err(store_error)?;
    record(state, Kind::Connection, name, "write", by).await?;
    Ok(crate::control::vault::written(warnings))
}

/// The stored body of a connection write (`{"database", "allowed_roles"}`)
/// and the answer's warnings; a 400's reason otherwise. Accepted when it
/// matches `backend` (host, port, admin user) or changes only
/// `allowed_roles`.
pub fn connection_body(
    fields: &Map<String, Value>,
    existing: Option<&Value>,
    backend: &BackendConfig,
) -> Result<(Value, Vec<String>), String> {
    let mut written = Connection {
        database: existing
            .and_then(|b| b.get("database"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        allowed_roles: existing
            .and_then(|b| b.get("allowed_roles"))
            .cloned()
            .unwrap_or(json!([])),
        warnings: Vec::new(),
    };
    let mut unknown = Vec::new();
    for (key, value) in fields {
        if !written.apply_field(key, value, backend)? {
            unknown.push(key.clone());
        }
    }
    let Connection {
        database,
        allowed_roles,
        mut warnings,
    } = written;
    warnings.extend(unknown_warning(unknown));
    let database = database.ok_or("connection_url is required")?;
    Ok((
        json!({ "plugin_name": PLUGIN, "database": database, "allowed_roles": allowed_roles }),
        warnings,
    ))
}

/// A connection as a write builds it.
struct Connection {
    database: Option<String>,
    allowed_roles: Value,
    warnings: Vec<String>,
}

impl Connection {
    /// Takes one field of a connection write; `false` for a field Vault's
    /// config endpoint does not know (a warning names it).
    fn apply_field(
        &mut self,
        key: &str,
        value: &Value,
        backend: &BackendConfig,
    ) -> Result<bool, String> {
        match key {
            "plugin_name" => {
                let plugin = value.as_str().unwrap_or_default();
                if plugin != PLUGIN {
                    return Err(format!(
                        "plugin_name \"{plugin}\": rolemint speaks only for {PLUGIN}"
                    ));
                }
            }
            "connection_url" => {
                let url = value.as_str().ok_or("connection_url must be a string")?;
                self.database = Some(check_url(url, backend, &mut self.warnings)?);
            }
            "username" => check_username(value.as_str().unwrap_or_default(), backend)?,
            "password" => self.warnings.push(
                "password is not taken: rolemint keeps its admin password in its config \
                 ([backend] admin_password, admin_password_file or admin_password_env); \
                 rotate it with database/rotate-root"
                    .to_owned(),
            ),
            "allowed_roles" => self.allowed_roles = json!(allowed_roles(value)?),
            "verify_connection"
            | "max_open_connections"
            | "max_idle_connections"
            | "max_connection_lifetime"
            | "username_template"
            | "password_policy"
            | "root_rotation_statements"
            | "password_authentication"
            | "plugin_version"
            | "disable_escaping"
            | "name" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A `username` is rolemint's admin user (or Vault's placeholder for it).
fn check_username(user: &str, backend: &BackendConfig) -> Result<(), String> {
    if user != backend.admin_user && user != "{{username}}" {
        return Err(format!(
            "username \"{user}\": rolemint connects as \"{}\"; change \
             [backend] admin_user in rolemint's config to use another",
            backend.admin_user
        ));
    }
    Ok(())
}

/// `allowed_roles`: a comma-separated string or a list, at most 1000.
fn allowed_roles(value: &Value) -> Result<Vec<String>, String> {
    let list: Vec<String> = match value {
        Value::String(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("allowed_roles must be a list of strings")?,
        _ => return Err("allowed_roles must be a string or a list".into()),
    };
    if list.len() > 1000 {
        return Err("allowed_roles: at most 1000 entries".into());
    }
    Ok(list)
}

/// The database of a `connection_url` (`postgres[ql]://[user[:password]@]
/// host[:port]/database[?...]`), refused unless its host and port are
/// the backend's. A literal password in it is not kept (a warning says so).
fn check_url(
    url: &str,
    backend: &BackendConfig,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or("connection_url must be a postgresql:// URL")?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            if let Some((user, password)) = userinfo.split_once(':') {
                if password != "{{password}}" {
                    warnings.push(
                        "the password in connection_url is not taken (nor kept): rolemint \
                         keeps its admin password in its config"
                            .to_owned(),
                    );
                }
                if user != "{{username}}" && user != backend.admin_user {
                    return Err(format!(
                        "connection_url logs in as \"{user}\", but rolemint connects as \"{}\"; \
                         change [backend] admin_user in rolemint's config to use another",
                        backend.admin_user
                    ));
                }
            }
            hostport
        }
        None => authority,
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("connection_url: bad IPv6 host")?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port: u16 = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("connection_url: bad port \"{p}\""))?,
        None => 5432,
    };
    if !same_host(host, &backend.host) || port != backend.port {
        return Err(format!(
            "connection_url points at {host}:{port}, but rolemint connects to {}:{}; change \
             [backend] host and port in rolemint's config (and restart) to move it",
            backend.host, backend.port
        ));
    }
    let database = if path.is_empty() { "postgres" } else { path };
    if database.len() > 63 || database.contains(['/', '\0']) {
        return Err(format!("connection_url: bad database name \"{database}\""));
    }
    Ok(database.to_owned())
}

/// Hosts compared as the backend is reached: names case-insensitively,
/// and the loopback names as one.
fn same_host(a: &str, b: &str) -> bool {
    let loopback = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "::1");
    a.eq_ignore_ascii_case(b) || (loopback(a) && loopback(b))
}

/// `POST /v1/<mount>/reset/<name>` (operators): Vault closes and reopens
/// the plugin's connection; rolemint checks that it can reach the
/// connection's database now (the admin pool drops broken connections by
/// itself).
pub async fn reset(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    // Operators, or the capability on the path: the gate checked.
    auth.caller()?;
    let shown: String = name.chars().take(MAX_NAME_BYTES).collect();
    let (database, _) = database_of(&state, door, &name)
        .ok_or_else(|| ApiError::bad_request(format!("unknown connection: {shown}")))?;
    door.shared
        .admin_client
        .ping(&database)
        .await
        .map_err(|e| {
            tracing::warn!("database/reset/{shown}: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot reach database \"{database}\"; see rolemint's log"),
            )
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> BackendConfig {
        let config = crate::config::Config::parse(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_plaintext = true\n\
             [backend]\nhost = \"127.0.0.1\"\nport = 5433\nadmin_user = \"rolemint_admin\"\n\
             admin_password = \"x\"\n[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n\
             [roles]\n",
        )
        .expect("config");
        config.backend
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_tutorial_config_write_matches_the_running_backend() {
        let (body, warnings) = connection_body(
            &fields(json!({
                "plugin_name": "postgresql-database-plugin",
                "allowed_roles": "readonly",
                "connection_url": "postgresql://{{username}}:{{password}}@localhost:5433/postgres?sslmode=disable",
                "username": "rolemint_admin",
                "password": "rootpassword",
            })),
            None,
            &backend(),
        )
        .unwrap();
        assert_eq!(body["database"], "postgres");
        assert_eq!(body["allowed_roles"], json!(["readonly"]));
        assert!(!body.to_string().contains("rootpassword"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn a_different_backend_is_refused_naming_the_config_key() {
        let b = backend();
        let url = |u: &str| fields(json!({ "connection_url": u }));
        let e = connection_body(&url("postgresql://db.example:5433/x"), None, &b).unwrap_err();
        assert!(e.contains("[backend] host and port"), "{e}");
        let e = connection_body(&url("postgresql://127.0.0.1:5432/x"), None, &b).unwrap_err();
        assert!(e.contains("[backend] host and port"), "{e}");
        let e = connection_body(
            &url("postgresql://bob:{{password}}@127.0.0.1:5433/x"),
            None,
            &b,
        )
        .unwrap_err();
        assert!(e.contains("[backend] admin_user"), "{e}");
        let e = connection_body(&fields(json!({"plugin_name": "mysql-database-plugin", "connection_url": "postgresql://127.0.0.1:5433/x"})), None, &b)
            .unwrap_err();
        assert!(e.contains("plugin_name"), "{e}");
        assert!(connection_body(&fields(json!({})), None, &b).is_err());
        // Changing only allowed_roles of a stored connection.
        let stored = json!({"database": "appdb", "allowed_roles": ["a"]});
        let (body, _) = connection_body(
            &fields(json!({"allowed_roles": ["a", "b"]})),
            Some(&stored),
            &b,
        )
        .unwrap();
        assert_eq!(body["database"], "appdb");
        assert_eq!(body["allowed_roles"], json!(["a", "b"]));
    }
}

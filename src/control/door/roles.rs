//! Vault's `database/roles`: the templates, as Vault shows its roles, and
//! written through the API as Vault's CLI, hvac and Terraform write them.
//!
//! ```text
//! LIST|GET ?list=true /v1/<db mount>/roles        every template name
//! GET    /v1/<db mount>/roles/NAME                one template (SQL: operators only)
//! POST|PUT /v1/<db mount>/roles/NAME              write (operators): Vault's fields
//! DELETE /v1/<db mount>/roles/NAME                delete (operators)
//! ```
//!
//! A written template is kept in the store (`runtime/templates.rs` merges
//! it on every instance) after the very check a config template passes
//! ([`crate::config::validate_template`]). The config file's templates stay
//! authoritative and read-only here: writing or deleting one answers 400.
//! Deleting a template stops new leases; running ones end as they would
//! have, and are revoked with its statements (the revoker keeps them).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::writes::{keys_answer, record, require_list, store_error, unknown_warning};
use super::{door, VaultDoor};
use crate::config::RoleTemplate;
use crate::control::access::Access;
use crate::control::auth::Authenticated;
use crate::control::leases::{parse_body, ListQuery};
use crate::control::vault::{envelope, ApiError};
use crate::control::AdminState;
use crate::runtime::templates;
use crate::store::{Kind, Snapshot};

/// Longest template name accepted in a path.
const MAX_NAME_BYTES: usize = 128;
/// TTLs of a role written without them. Vault's own default is the
/// mount's (32 days), beyond rolemint's 7-day bound on every TTL.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most statements in one list.
const MAX_STATEMENTS: usize = 100;

/// 403 unless the operator or a workload; whether it is the operator.
fn any_caller(auth: &Authenticated) -> Result<bool, ApiError> {
    auth.caller().map(|caller| caller.is_operator())
}

/// `LIST /v1/<mount>/roles` (or `GET ...?list=true`): the template names,
/// the config file's and the stored ones.
pub async fn roles_list(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Query(query): Query<ListQuery>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    require_list(&method, &query)?;
    let door = door(&state)?;
    any_caller(&auth)?;
    let runtime = door.shared.runtime();
    let keys: Vec<&String> = runtime.config.roles.keys().collect();
    keys_answer(&keys)
}

/// `/v1/<mount>/roles/<name>`: read, write, delete.
pub async fn role(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Path(name): Path<String>,
    auth: Authenticated,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request("role name too long"));
    }
    match method.as_str() {
        "GET" => read(&state, door, &name, &access),
        "POST" | "PUT" => write(&state, door, &name, &auth, &access, body).await,
        "DELETE" => delete(&state, door, &name, &auth).await,
        _ => Err(crate::control::method_not_allowed_error()),
    }
}

fn read(
    state: &AdminState,
    door: &VaultDoor,
    name: &str,
    access: &Access,
) -> Result<Response, ApiError> {
    // The SQL for the operator and for callers whose own policies grant
    // the read; other workloads see names and TTLs.
    let operator = state.policy_acl(&access.caller).allows(
        &access.need.path,
        crate::auth::acl::Capability::Read,
        false,
    );
    let runtime = door.shared.runtime();
    let template = runtime
        .config
        .template(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown role: {name}")))?;
    let mut view = role_view(template, operator);
    if runtime.stored_templates.contains(name) {
        if let Some(stored) = door.shared.store.snapshot().get(Kind::Template, name) {
            if let Some(db_name) = stored.body.get("db_name") {
                view["db_name"] = db_name.clone();
            }
        }
    }
    Ok(envelope(view))
}

/// A template as Vault shows a database role; TTLs in seconds. The SQL
/// and the owner role only for the operator: they map the database's
/// privileges (which grants, which owner) for anyone who reads them, and
/// a workload needs only the names and TTLs to ask for credentials.
fn role_view(t: &RoleTemplate, operator: bool) -> Value {
    let mut view = json!({
        "db_name": t.databases.first(),
        "databases": t.databases,
        "default_ttl": t.default_ttl.as_secs(),
        "max_ttl": t.max_ttl.as_secs(),
        "credential_type": "password",
        "credential_config": {},
    });
    if operator {
        view["creation_statements"] = json!(t.creation_statements);
        view["revocation_statements"] = json!(t.revocation_statements.clone().unwrap_or_default());
        view["renew_statements"] = json!([]);
        view["rollback_statements"] = json!([]);
        view["owner"] = json!(t.owner);
    }
    view
}

/// 400 when `name` is a template of the config file.
fn refuse_config_template(door: &VaultDoor, name: &str) -> Result<(), ApiError> {
    let runtime = door.shared.runtime();
    if runtime.config.roles.contains_key(name) && !runtime.stored_templates.contains(name) {
        return Err(ApiError::bad_request(format!(
            "role \"{name}\" is a template of rolemint's config file ([roles.{name}]): it is \
             read-only over the API; change it in the file and reload (SIGHUP)"
        )));
    }
    Ok(())
}

async fn write(
    state: &AdminState,
    door: &VaultDoor,
    name: &str,
    auth: &Authenticated,
    access: &Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = auth.caller()?;
    // `create` for a new role, `update` for one that exists, as Vault's
    // existence check decides.
    let exists = door
        .shared
        .store
        .snapshot()
        .get(Kind::Template, name)
        .is_some();
    access.require_write(exists)?;
    refuse_config_template(door, name)?;
    let fields: Map<String, Value> = parse_body(body)?;
    let shared = &door.shared;
    let snapshot = shared.store.snapshot();
    let existing = snapshot.get(Kind::Template, name).map(|s| &s.body);
    let (stored, warnings) = role_body(&fields, existing, |db_name| {
        connection_database(state, &snapshot, db_name, name)
    })
    .map_err(ApiError::bad_request)?;
    let (_, template) = templates::decode(&stored).map_err(ApiError::bad_request)?;
    let issuers = shared.runtime().config.auth.issuer_names();
    crate::config::validate_template(name, &template, &issuers)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    shared
        .store
        .put(Kind::Template, name, &stored, &caller.label())
        .await
        .map_err(store_error)?;
    record(state, Kind::Template, name, "write", &caller.label()).await?;
    templates::apply(shared);
    tracing::info!(template = name, by = %caller.label(), "template written through the API");
    Ok(crate::control::vault::written(warnings))
}

async fn delete(
    state: &AdminState,
    door: &VaultDoor,
    name: &str,
    auth: &Authenticated,
) -> Result<Response, ApiError> {
    // Operators, or `delete` on the path: the gate checked.
    let caller = auth.caller()?;
    refuse_config_template(door, name)?;
    let shared = &door.shared;
    // Vault answers 204 for a role that is not there, too.
    if crate::store::check_name(name).is_err() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Kept as a retired template: its leases are revoked with its
    // statements by whichever instance ends them.
    let existed = shared
        .store
        .retire_template(name, &caller.label())
        .await
        .map_err(store_error)?;
    if existed {
        record(state, Kind::Template, name, "delete", &caller.label()).await?;
        templates::apply(shared);
        tracing::info!(template = name, by = %caller.label(), "template deleted through the API");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The database of the backend a role's `db_name` stands for: a
/// connection written through `database/config/NAME` (whose
/// `allowed_roles` must then admit `role`), or a database rolemint serves,
/// by its own name.
fn connection_database(
    state: &AdminState,
    snapshot: &Snapshot,
    db_name: &str,
    role: &str,
) -> Result<String, String> {
    if let Some(connection) = snapshot.get(Kind::Connection, db_name) {
        let database = connection.body.get("database").and_then(Value::as_str);
        let allowed: Vec<&str> = connection
            .body
            .get("allowed_roles")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !allowed.iter().any(|pattern| glob_matches(pattern, role)) {
            return Err(format!(
                "role \"{role}\" is not in the allowed_roles of connection \"{db_name}\" \
                 ({allowed:?}): add it with `vault write database/config/{db_name} allowed_roles=...`"
            ));
        }
        if let Some(database) = database {
            return Ok(database.to_owned());
        }
    }
    if state.databases.iter().any(|d| d == db_name) {
        return Ok(db_name.to_owned());
    }
    Err(format!(
        "unknown db_name \"{db_name}\": write database/config/{db_name} first, or name one of \
         the databases rolemint serves ({})",
        state.databases.join(", ")
    ))
}

/// Vault's `allowed_roles` globs: `*` for any run of characters.
fn glob_matches(pattern: &str, name: &str) -> bool {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher().is_match(name))
        .unwrap_or(false)
}

/// The stored body of a role write: `fields` as Vault's role endpoint
/// takes them, over `existing` (an update keeps what it does not name, as
/// Vault's does); `database` resolves `db_name`. Also the warnings of the
/// answer. Errors are the writer's (400).
pub fn role_body(
    fields: &Map<String, Value>,
    existing: Option<&Value>,
    database: impl Fn(&str) -> Result<String, String>,
) -> Result<(Value, Vec<String>), String> {
    let mut template = existing
        .and_then(|b| b.get("template"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let db_name = db_name_of(fields, existing)?;
    let mut warnings = Vec::new();
    let mut unknown = Vec::new();
    for (key, value) in fields {
        if !apply_field(&mut template, key, value, &mut warnings)? {
            unknown.push(key.clone());
        }
    }
    warnings.extend(unknown_warning(unknown));
    let named_anew = fields.contains_key("db_name") && !fields.contains_key("databases");
    if named_anew || !template.contains_key("databases") {
        template.insert("databases".into(), json!([database(&db_name)?]));
    }
    fill_defaults(&mut template)?;
    Ok((templates::body(&db_name, Value::Object(template)), warnings))
}

/// The `db_name` a write names, or the stored one; required.
fn db_name_of(fields: &Map<String, Value>, existing: Option<&Value>) -> Result<String, String> {
    let db_name = match fields.get("db_name") {
        Some(v) => Some(text(v, "db_name")?),
        None => existing
            .and_then(|b| b.get("db_name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    db_name.filter(|d| !d.is_empty()).ok_or_else(|| {
        "db_name is required: the connection (database/config/NAME) the role uses".into()
    })
}

/// Takes one field of a role write into `template`; `false` for a field
/// Vault's role endpoint does not know (a warning names it).
fn apply_field(
    template: &mut Map<String, Value>,
    key: &str,
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<bool, String> {
    match key {
        "db_name" | "name" => {}
        "creation_statements" => {
            template.insert(key.into(), json!(statements(value, key)?));
        }
        "revocation_statements" => {
            let list = statements(value, key)?;
            template.insert(key.into(), null_if_empty(json!(list), list.is_empty()));
        }
        "renew_statements" | "rollback_statements" => unsupported_statements(key, value)?,
        "default_ttl" | "max_ttl" => {
            // 0 is Vault's "the default" (hvac sends it when unset).
            match ttl(value, key)? {
                t if t.is_zero() => template.remove(key),
                t => template.insert(key.into(), json!(format!("{}s", t.as_secs()))),
            };
        }
        "credential_type" => {
            let t = text(value, key)?;
            if !t.is_empty() && t != "password" {
                return Err(format!(
                    "credential_type \"{t}\" is not supported: rolemint hands out passwords"
                ));
            }
        }
        "credential_config" => {
            if value.as_object().is_some_and(|o| !o.is_empty()) {
                warnings.push("credential_config is ignored".to_owned());
            }
        }
        // rolemint's own template keys, for what Vault's role has no
        // field for.
        "databases" | "allow_identities" | "allow_groups" => {
            template.insert(key.into(), json!(list(value, key)?));
        }
        "owner" => {
            let owner = text(value, key)?;
            template.insert(key.into(), null_if_empty(json!(owner), owner.is_empty()));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn null_if_empty(value: Value, empty: bool) -> Value {
    if empty {
        Value::Null
    } else {
        value
    }
}

/// `renew_statements` and `rollback_statements`: taken only when empty.
fn unsupported_statements(key: &str, value: &Value) -> Result<(), String> {
    if statements(value, key)?.is_empty() {
        return Ok(());
    }
    Err(if key == "renew_statements" {
        "renew_statements are not supported: rolemint renews a lease by moving the role's \
         VALID UNTIL itself"
    } else {
        "rollback_statements are not supported: creation_statements run as one transaction, \
         which rolls back on failure"
    }
    .into())
}

/// The TTLs a role written without them gets, and the check that it has
/// creation statements.
fn fill_defaults(template: &mut Map<String, Value>) -> Result<(), String> {
    if !template.contains_key("default_ttl") {
        template.insert(
            "default_ttl".into(),
            json!(format!("{}s", DEFAULT_TTL.as_secs())),
        );
    }
    if !template.contains_key("max_ttl") {
        let default = template
            .get("default_ttl")
            .and_then(Value::as_str)
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(DEFAULT_TTL);
        let max = default.max(DEFAULT_MAX_TTL);
        template.insert("max_ttl".into(), json!(format!("{}s", max.as_secs())));
    }
    if !template.contains_key("creation_statements") {
        return Err("creation_statements are required".into());
    }
    template
        .entry("revocation_statements")
        .or_insert(Value::Null);
    Ok(())
}

fn text(value: &Value, key: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        _ => Err(format!("{key} must be a string")),
    }
}

/// A string or a list of strings; a string may be comma-separated, as
/// Vault reads its list fields from the CLI.
fn list(value: &Value, key: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = match value {
        Value::String(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{key} must be a list of strings"))?,
        Value::Null => Vec::new(),
        _ => return Err(format!("{key} must be a string or a list of strings")),
    };
    Ok(items.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Statements as Vault takes them: a string or a list of strings, each a
/// semicolon-separated script (what `creation_statements=@file.sql` sends),
/// a JSON array of strings, or either in base64.
pub fn statements(value: &Value, key: &str) -> Result<Vec<String>, String> {
    let items: Vec<&str> = match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{key} must be a list of strings"))?,
        Value::Null => Vec::new(),
        _ => return Err(format!("{key} must be a string or a list of strings")),
    };
    let mut out = Vec::new();
    for item in items {
        out.extend(split_script(item));
        if out.len() > MAX_STATEMENTS {
            return Err(format!("{key}: at most {MAX_STATEMENTS} statements"));
        }
    }
    Ok(out)
}

/// One item of a statements field, as Vault's `ParseArbitraryStringSlice`
/// reads it: base64 is decoded first; a JSON array of strings is taken
/// as it is; anything else is cut at the `;` that end statements (not
/// those inside a literal, a dollar-quoted body or a comment).
fn split_script(item: &str) -> Vec<String> {
    use base64::Engine as _;
    let trimmed = item.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let text = decoded.as_deref().unwrap_or(trimmed);
    if text.starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(text) {
            return list;
        }
    }
    super::script::split(text)
}

/// A TTL as Vault takes it: seconds (a number or digits) or a duration
/// string (`1h`, `30m`, `1h30m`).
pub fn ttl(value: &Value, key: &str) -> Result<Duration, String> {
    let bad = || format!("{key}: a number of seconds or a duration such as \"1h\"");
    match value {
        Value::Number(n) => n.as_u64().map(Duration::from_secs).ok_or_else(bad),
        Value::String(s)
            if s.trim().bytes().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() =>
        {
            s.trim().parse().map(Duration::from_secs).map_err(|_| bad())
        }
        Value::String(s) => humantime::parse_duration(s.trim()).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    const SQL_FILE: &str = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' \
        VALID UNTIL '{{expiration}}' INHERIT;\nGRANT app_read TO \"{{name}}\";\n";

    #[test]
    fn the_tutorial_role_write_becomes_a_template() {
        let (body, warnings) = role_body(
            &fields(json!({
                "db_name": "postgresql",
                "creation_statements": SQL_FILE,
                "default_ttl": "1h",
                "max_ttl": "24h",
            })),
            None,
            |db| Ok(format!("db-of-{db}")),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let (db_name, t) = templates::decode(&body).unwrap();
        assert_eq!(db_name, "postgresql");
        assert_eq!(t.databases, ["db-of-postgresql"]);
        assert_eq!(t.creation_statements.len(), 2);
        assert_eq!(t.creation_statements[1], "GRANT app_read TO \"{{name}}\"");
        assert_eq!(
            (t.default_ttl.as_secs(), t.max_ttl.as_secs()),
            (3600, 86400)
        );
        assert!(t.revocation_statements.is_none());
        crate::config::validate_template("readonly", &t, &["local".into()]).unwrap();
    }

    #[test]
    fn lists_json_arrays_and_base64_are_read_as_vault_reads_them() {
        use base64::Engine as _;
        let list = json!(["CREATE ROLE a", "GRANT b TO a; GRANT c TO a"]);
        assert_eq!(statements(&list, "s").unwrap().len(), 3);
        let array = json!(r#"["SELECT 1; SELECT 2"]"#);
        assert_eq!(statements(&array, "s").unwrap(), ["SELECT 1; SELECT 2"]);
        let b64 = base64::engine::general_purpose::STANDARD.encode("SELECT 1; SELECT 2");
        assert_eq!(
            statements(&json!(b64), "s").unwrap(),
            ["SELECT 1", "SELECT 2"]
        );
        assert!(statements(&json!(5), "s").is_err());
        assert_eq!(ttl(&json!(90), "t").unwrap().as_secs(), 90);
        assert_eq!(ttl(&json!("90"), "t").unwrap().as_secs(), 90);
        assert_eq!(ttl(&json!("1h30m"), "t").unwrap().as_secs(), 5400);
        assert!(ttl(&json!("soon"), "t").is_err());
        assert!(ttl(&json!(-1), "t").is_err());
    }

    #[test]
    fn a_do_block_in_a_statements_file_stays_one_statement() {
        let block = "DO $$\nBEGIN\n  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_read') THEN\n    \
                     GRANT app_read TO \"{{name}}\";\n  END IF;\nEND\n$$";
        let file = format!(
            "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' \
             VALID UNTIL '{{{{expiration}}}}';\n{block};\n"
        );
        let read = statements(&json!(file), "creation_statements").unwrap();
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!(read[1], block);
    }

    #[test]
    fn an_update_keeps_what_it_does_not_name() {
        let (first, _) = role_body(
            &fields(
                json!({"db_name": "appdb", "creation_statements": SQL_FILE, "default_ttl": 60}),
            ),
            None,
            |db| Ok(db.to_owned()),
        )
        .unwrap();
        let (second, warnings) = role_body(
            &fields(json!({"max_ttl": "2h", "frobnicate": true})),
            Some(&first),
            |_| Err("not asked".into()),
        )
        .unwrap();
        let (_, t) = templates::decode(&second).unwrap();
        assert_eq!(t.databases, ["appdb"]);
        assert_eq!((t.default_ttl.as_secs(), t.max_ttl.as_secs()), (60, 7200));
        assert_eq!(t.creation_statements.len(), 2);
        assert_eq!(
            warnings,
            ["Endpoint ignored these unrecognized parameters: [frobnicate]"]
        );
    }

    #[test]
    fn what_rolemint_cannot_honour_is_refused() {
        let base = json!({"db_name": "appdb", "creation_statements": SQL_FILE});
        let with = |k: &str, v: Value| {
            let mut f = fields(base.clone());
            f.insert(k.into(), v);
            role_body(&f, None, |db| Ok(db.to_owned()))
        };
        assert!(with("renew_statements", json!("ALTER ROLE x")).is_err());
        assert!(with("rollback_statements", json!(["DROP ROLE x"])).is_err());
        assert!(with("renew_statements", json!([])).is_ok());
        assert!(with("credential_type", json!("rsa_private_key")).is_err());
        assert!(role_body(
            &fields(json!({"creation_statements": SQL_FILE})),
            None,
            |d| Ok(d.into())
        )
        .is_err());
        assert!(role_body(&fields(json!({"db_name": "x"})), None, |d| Ok(d.into())).is_err());
    }
}

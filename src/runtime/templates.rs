//! Templates written through the API (`database/roles/NAME`), kept in the
//! store, merged into what every instance mints from.
//!
//! The config file's templates are authoritative: a stored template of
//! the same name is shadowed (and the API refuses to write one). Each
//! stored template is checked on every instance with the very function
//! that checks the config's ([`crate::config::validate_template`]), against
//! that instance's issuers; one that fails is left out and logged.
//!
//! The merged set is the [`Runtime`]'s `config.roles`, so every reader of
//! templates (the proxy door, `database/creds`, policy, the revoker) sees
//! one map. A change in the store swaps in a runtime that shares the
//! running one's TLS and token verifier; the revoker learns a template
//! before any session can mint from it, and keeps a deleted one, so a
//! lease minted from it is revoked with its statements. A deleted
//! template is kept in the store too (`Kind::RetiredTemplate`), so an
//! instance that restarted or started after the delete knows them as well.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::state::{Runtime, Shared};
use crate::auth::policy::Policy;
use crate::config::RoleTemplate;
use crate::store::{Kind, Snapshot};

/// A stored template's body: the Vault connection name it was written
/// with (`db_name`, shown back by `GET database/roles/NAME`) and the
/// template itself, in the config file's keys.
pub fn body(db_name: &str, template: Value) -> Value {
    json!({ "db_name": db_name, "template": template })
}

/// The `db_name` and template of a stored body.
pub fn decode(body: &Value) -> Result<(String, RoleTemplate), String> {
    let db_name = body
        .get("db_name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let template = body
        .get("template")
        .cloned()
        .ok_or_else(|| "no template in the stored body".to_owned())?;
    let template: RoleTemplate =
        serde_json::from_value(template).map_err(|e| format!("stored template: {e}"))?;
    Ok((db_name, template))
}

/// `runtime` with the templates of `snapshot` in place of the stored ones
/// it had.
pub fn merged(runtime: &Runtime, snapshot: &Snapshot) -> Runtime {
    let mut config = runtime.config.clone();
    for name in &runtime.stored_templates {
        config.roles.remove(name);
    }
    let issuers = config.auth.issuer_names();
    let mut stored = BTreeSet::new();
    for (name, object) in snapshot.iter(Kind::Template) {
        if config.roles.contains_key(name) {
            tracing::warn!(
                template = name,
                "a template written through the API has the name of one in the config file; \
                 the config file's is used"
            );
            continue;
        }
        let checked = decode(&object.body).and_then(|(db_name, t)| {
            connection_admits(snapshot, name, &db_name, &t)?;
            crate::config::validate_template(name, &t, &issuers)
                .map(|()| t)
                .map_err(|e| e.to_string())
        });
        match checked {
            Ok(t) => {
                config.roles.insert(name.to_owned(), t);
                stored.insert(name.to_owned());
            }
            Err(e) => tracing::warn!(
                template = name,
                "a template written through the API is left out on this instance: {e}"
            ),
        }
    }
    Runtime {
        policy: Policy::compile(&config),
        config,
        client_tls: runtime.client_tls.clone(),
        verifier: Arc::clone(&runtime.verifier),
        stored_templates: stored,
    }
}

/// Whether the connection a stored template's `db_name` names admits it
/// now. Vault asks when credentials are read, not only when the role is
/// written: a connection whose `allowed_roles` no longer names the role,
/// or that was deleted, mints nothing of it (it is left out, on both
/// doors) until it admits it again. A `db_name` that names a database
/// directly needs no connection.
fn connection_admits(
    snapshot: &Snapshot,
    name: &str,
    db_name: &str,
    template: &RoleTemplate,
) -> Result<(), String> {
    match snapshot.get(Kind::Connection, db_name) {
        Some(connection) => {
            let allowed = connection
                .body
                .get("allowed_roles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            let admitted = allowed
                .into_iter()
                .any(|p| crate::auth::auth_role::glob_match(p, name));
            admitted.then_some(()).ok_or_else(|| {
                format!(
                    "\"{name}\" is not an allowed role of connection \"{db_name}\": add it with \
                     `vault write database/config/{db_name} allowed_roles=...`"
                )
            })
        }
        None if template.databases.iter().any(|d| d == db_name) => Ok(()),
        None => Err(format!(
            "\"{name}\" names connection \"{db_name}\", which was deleted: write \
             database/config/{db_name} again"
        )),
    }
}

/// Why stored template `name` mints nothing on this instance (for the
/// answer to a caller who names it), or `None` when it does or is not
/// stored.
pub fn left_out(snapshot: &Snapshot, name: &str) -> Option<String> {
    let (db_name, template) = decode(&snapshot.get(Kind::Template, name)?.body).ok()?;
    connection_admits(snapshot, name, &db_name, &template).err()
}

/// The templates the revoker must know beyond the running ones: those
/// deleted through the API, and every stored one (also one left out of
/// minting here), so that a lease minted from one is revoked with its
/// statements. Unreadable ones are left out (the default revocation
/// applies).
pub fn revocable(snapshot: &Snapshot) -> BTreeMap<String, RoleTemplate> {
    [Kind::RetiredTemplate, Kind::Template]
        .into_iter()
        .flat_map(|kind| snapshot.iter(kind))
        .filter_map(|(name, object)| Some((name.to_owned(), decode(&object.body).ok()?.1)))
        .collect()
}

/// Swaps in the running runtime merged with the store as it is now. The
/// revoker takes the templates first (see the module doc); a template
/// minted from now wins over a stored or retired one of the same name.
pub fn apply(shared: &Shared) {
    let snapshot = shared.store.snapshot();
    let revocable = revocable(&snapshot);
    shared.runtime.rcu(|current| {
        let next = merged(current, &snapshot);
        shared.revoker.update_templates(&revocable);
        shared.revoker.update_templates(&next.config.roles);
        next
    });
}

/// Follows the store until shutdown: every change is merged.
pub async fn follow(shared: Arc<Shared>) {
    let mut changes = shared.store.changes();
    apply(&shared);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        apply(&shared);
    }
}

//! Tokens as Vault's API shows them: `lookup` answers in `data`, and
//! `create`, `login` and `renew` in `auth`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::auth::token::{accessor_of, Plan};
use crate::store::tokens::StoredToken;

pub(super) fn seconds(d: Duration) -> u64 {
    d.as_secs()
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn ttl_left(token: &StoredToken, now: SystemTime) -> u64 {
    token
        .expires_at
        .map_or(0, |e| e.duration_since(now).unwrap_or_default().as_secs())
}

/// `meta` as Vault shows it: `null` when empty.
pub(super) fn meta_view(meta: &BTreeMap<String, String>) -> Value {
    if meta.is_empty() {
        Value::Null
    } else {
        json!(meta)
    }
}

/// A token as `lookup` answers it. `id`: the token when the caller gave it.
pub(super) fn lookup_view(token: &StoredToken, id: &str, accessor: &str) -> Value {
    let now = SystemTime::now();
    let mut v = json!({
        "accessor": accessor,
        "creation_time": unix(token.created_at),
        "creation_ttl": seconds(token.creation_ttl),
        "display_name": token.display_name,
        "entity_id": "",
        "expire_time": token.expires_at.map(crate::pg::rfc3339),
        "explicit_max_ttl": seconds(token.explicit_max_ttl),
        "id": id,
        "issue_time": crate::pg::rfc3339(token.created_at),
        "meta": meta_view(&token.meta),
        "num_uses": token.uses_left,
        "orphan": token.orphan,
        "path": token.path,
        "policies": token.policies,
        "renewable": token.renewable,
        "ttl": ttl_left(token, now),
        "type": "service",
    });
    if !token.role.is_empty() {
        v["role"] = json!(token.role);
    }
    v
}

/// A token as `create`, `login` and `renew` answer it, in `auth`.
pub fn auth_view(token: &str, plan_or_stored: AuthView<'_>) -> Value {
    json!({
        "client_token": token,
        "accessor": if token.is_empty() { String::new() } else { accessor_of(token) },
        "policies": plan_or_stored.policies,
        "token_policies": plan_or_stored.policies,
        "identity_policies": null,
        "metadata": meta_view(plan_or_stored.meta),
        "lease_duration": plan_or_stored.lease_duration,
        "renewable": plan_or_stored.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": plan_or_stored.orphan,
        "num_uses": plan_or_stored.num_uses,
        "mfa_requirement": null,
    })
}

/// What [`auth_view`] shows.
pub struct AuthView<'a> {
    pub policies: &'a [String],
    pub meta: &'a BTreeMap<String, String>,
    pub lease_duration: u64,
    pub renewable: bool,
    pub orphan: bool,
    pub num_uses: u32,
}

impl<'a> From<&'a Plan> for AuthView<'a> {
    fn from(p: &'a Plan) -> AuthView<'a> {
        AuthView {
            policies: &p.policies,
            meta: &p.meta,
            lease_duration: p.ttl.as_secs(),
            renewable: p.renewable,
            orphan: p.orphan,
            num_uses: p.num_uses,
        }
    }
}

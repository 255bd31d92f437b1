//! Auth roles of the `jwt` and `kubernetes` mounts, without IO: Vault's
//! fields, read from a write request, and the bound check over the
//! claims of a JWT that was already verified.
//!
//! A role is kubernetes-shaped when it names service accounts
//! (`bound_service_account_names` / `_namespaces`, as Vault's kubernetes
//! method requires), jwt-shaped otherwise; either may live on any jwt
//! mount of `[vault] jwt_mounts`. What a login with it gets is the role's
//! `token_*` settings: policies (plus `default` unless
//! `token_no_default_policy`), TTL, max TTL, uses.
//!
//! The bounds, as Vault's plugins check them:
//! - `bound_subject`: `sub` equals it.
//! - `bound_audiences` (jwt) / `audience` (kubernetes): `aud` (a string
//!   or a list) holds one of them. A jwt role without audiences does not
//!   check `aud` here: the issuer's `audience` setting already did.
//! - `bound_claims`: every listed claim (a name, or a JSON pointer when it
//!   starts with `/`) has one of the listed values; a list claim matches
//!   when any element does; with `bound_claims_type = "glob"`, values may
//!   use `*`.
//! - `bound_service_account_names` / `_namespaces`: the service account's
//!   name and namespace, read from the projected token
//!   (`kubernetes.io.serviceaccount.name`, `kubernetes.io.namespace`), the
//!   legacy secret token's claims, or `sub`
//!   (`system:serviceaccount:<ns>:<name>`); `*` globs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::fields::{self, FieldError};
use super::token::{
    sanitize_policies, MAX_NUM_USES, MAX_POLICIES, MAX_POLICY_BYTES, MAX_TOKEN_TTL,
};

/// Longest role name (a path segment).
pub const MAX_ROLE_NAME_BYTES: usize = 128;
/// Most entries in any list field, and the longest entry.
const MAX_ITEMS: usize = 256;
const MAX_ITEM_BYTES: usize = 512;
/// Most bound claims.
const MAX_BOUND_CLAIMS: usize = 64;

/// Why a role write was refused (shown to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("invalid role name: 1 to 128 of [A-Za-z0-9_.-]")]
    Name,
    #[error("\"bound_service_account_names\" and \"bound_service_account_namespaces\" must both be set for a kubernetes role")]
    KubernetesBounds,
    #[error("bound_claims_type must be \"string\" or \"glob\"")]
    ClaimsType,
    #[error("role_type \"oidc\" is not supported; use \"jwt\"")]
    Oidc,
    #[error("token_max_ttl must not be less than token_ttl")]
    TtlOverMax,
}

/// Which bound a login's claims failed (for the audit log, never the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundMismatch {
    #[error("sub does not match bound_subject")]
    Subject,
    #[error("aud does not match the role's audiences")]
    Audience,
    #[error("claim \"{0}\" does not match bound_claims")]
    Claim(String),
    #[error("service account name not in bound_service_account_names")]
    ServiceAccountName,
    #[error("service account namespace not in bound_service_account_namespaces")]
    ServiceAccountNamespace,
    #[error("user_claim \"{0}\" missing or not a string")]
    UserClaim(String),
}

/// The shape of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    Jwt,
    Kubernetes,
}

/// An auth role, as stored (the generic object `auth_role`,
/// `<mount>/<role>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRole {
    pub kind: RoleKind,
    #[serde(default)]
    pub bound_audiences: Vec<String>,
    #[serde(default)]
    pub bound_subject: String,
    #[serde(default)]
    pub bound_claims: BTreeMap<String, Vec<String>>,
    /// `"string"` or `"glob"`.
    #[serde(default = "string_type")]
    pub bound_claims_type: String,
    #[serde(default)]
    pub bound_service_account_names: Vec<String>,
    #[serde(default)]
    pub bound_service_account_namespaces: Vec<String>,
    /// The claim naming the identity (jwt roles); default `sub`.
    #[serde(default = "sub")]
    pub user_claim: String,
    /// The claim listing groups; empty: none.
    #[serde(default)]
    pub groups_claim: String,
    #[serde(default)]
    pub token_policies: Vec<String>,
    /// Seconds; 0: the door's default.
    #[serde(default)]
    pub token_ttl: u64,
    #[serde(default)]
    pub token_max_ttl: u64,
    #[serde(default)]
    pub token_explicit_max_ttl: u64,
    #[serde(default)]
    pub token_num_uses: u32,
    #[serde(default)]
    pub token_no_default_policy: bool,
}

fn string_type() -> String {
    "string".into()
}
fn sub() -> String {
    "sub".into()
}

/// Whether `name` may name a role (a path segment, no `/`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROLE_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name != "."
        && name != ".."
}

impl AuthRole {
    /// A role from a write request's body, in Vault's fields
    /// (`policies`, `ttl`, `max_ttl`, `num_uses` as the older names of
    /// the `token_*` ones; lists as arrays or comma strings).
    pub fn from_request(body: &Value) -> Result<AuthRole, RoleError> {
        let list = |f: &str| fields::list(body, f, MAX_ITEMS, MAX_ITEM_BYTES);
        let ttl = |new: &str, old: &str| -> Result<u64, FieldError> {
            Ok(match fields::duration(body, new, MAX_TOKEN_TTL)? {
                Some(d) => d.as_secs(),
                None => fields::duration(body, old, MAX_TOKEN_TTL)?.map_or(0, |d| d.as_secs()),
            })
        };
        if fields::string(body, "role_type", 16)?.as_deref() == Some("oidc") {
            return Err(RoleError::Oidc);
        }
        let names = list("bound_service_account_names")?.unwrap_or_default();
        let namespaces = list("bound_service_account_namespaces")?.unwrap_or_default();
        let kind = if names.is_empty() && namespaces.is_empty() {
            RoleKind::Jwt
        } else if names.is_empty() || namespaces.is_empty() {
            return Err(RoleError::KubernetesBounds);
        } else {
            RoleKind::Kubernetes
        };
        let mut audiences = list("bound_audiences")?.unwrap_or_default();
        // The kubernetes method's single `audience`.
        if let Some(aud) = fields::string(body, "audience", MAX_ITEM_BYTES)? {
            if !aud.is_empty() {
                audiences.push(aud);
            }
        }
        let claims_type = fields::string(body, "bound_claims_type", 16)?
            .filter(|t| !t.is_empty())
            .unwrap_or_else(string_type);
        if claims_type != "string" && claims_type != "glob" {
            return Err(RoleError::ClaimsType);
        }
        let policies = match fields::list(body, "token_policies", MAX_POLICIES, MAX_POLICY_BYTES)? {
            Some(p) => p,
            None => {
                fields::list(body, "policies", MAX_POLICIES, MAX_POLICY_BYTES)?.unwrap_or_default()
            }
        };
        let num_uses = match fields::count(body, "token_num_uses", MAX_NUM_USES)? {
            Some(n) => n,
            None => fields::count(body, "num_uses", MAX_NUM_USES)?.unwrap_or(0),
        };
        let role = AuthRole {
            kind,
            bound_audiences: audiences,
            bound_subject: fields::string(body, "bound_subject", MAX_ITEM_BYTES)?
                .unwrap_or_default(),
            bound_claims: bound_claims(body)?,
            bound_claims_type: claims_type,
            bound_service_account_names: names,
            bound_service_account_namespaces: namespaces,
            user_claim: fields::string(body, "user_claim", MAX_ITEM_BYTES)?
                .filter(|c| !c.is_empty())
                .unwrap_or_else(sub),
            groups_claim: fields::string(body, "groups_claim", MAX_ITEM_BYTES)?.unwrap_or_default(),
            token_policies: sanitize_policies(&policies, false),
            token_ttl: ttl("token_ttl", "ttl")?,
            token_max_ttl: ttl("token_max_ttl", "max_ttl")?,
            token_explicit_max_ttl: ttl("token_explicit_max_ttl", "explicit_max_ttl")?,
            token_num_uses: num_uses as u32,
            token_no_default_policy: fields::boolean(body, "token_no_default_policy")?
                .unwrap_or(false),
        };
        if role.token_max_ttl != 0 && role.token_ttl > role.token_max_ttl {
            return Err(RoleError::TtlOverMax);
        }
        Ok(role)
    }

    /// The role as Vault's read answers it: the `token_*` fields and their
    /// older names, TTLs in seconds.
    pub fn view(&self) -> Value {
        let mut v = json!({
            "role_type": "jwt",
            "bound_audiences": self.bound_audiences,
            "bound_subject": self.bound_subject,
            "bound_claims": self.bound_claims,
            "bound_claims_type": self.bound_claims_type,
            "user_claim": self.user_claim,
            "groups_claim": self.groups_claim,
            "token_policies": self.token_policies,
            "policies": self.token_policies,
            "token_ttl": self.token_ttl,
            "ttl": self.token_ttl,
            "token_max_ttl": self.token_max_ttl,
            "max_ttl": self.token_max_ttl,
            "token_explicit_max_ttl": self.token_explicit_max_ttl,
            "token_num_uses": self.token_num_uses,
            "num_uses": self.token_num_uses,
            "token_no_default_policy": self.token_no_default_policy,
            "token_period": 0,
            "token_type": "default",
            "token_bound_cidrs": [],
        });
        if self.kind == RoleKind::Kubernetes {
            v["bound_service_account_names"] = json!(self.bound_service_account_names);
            v["bound_service_account_namespaces"] = json!(self.bound_service_account_namespaces);
            v["audience"] = json!(self.bound_audiences.first().cloned().unwrap_or_default());
            if let Some(obj) = v.as_object_mut() {
                obj.remove("role_type");
            }
        }
        v
    }

    /// The policies a login with this role gets.
    pub fn policies(&self) -> Vec<String> {
        sanitize_policies(&self.token_policies, !self.token_no_default_policy)
    }

    /// `(ttl, max_ttl, explicit_max_ttl)`; zero where unset.
    pub fn ttls(&self) -> (Duration, Duration, Duration) {
        (
            Duration::from_secs(self.token_ttl),
            Duration::from_secs(self.token_max_ttl),
            Duration::from_secs(self.token_explicit_max_ttl),
        )
    }

    /// Whether verified `claims` satisfy every bound of the role.
    pub fn check(&self, claims: &Value) -> Result<(), BoundMismatch> {
        if !self.bound_subject.is_empty()
            && claims.get("sub").and_then(Value::as_str) != Some(self.bound_subject.as_str())
        {
            return Err(BoundMismatch::Subject);
        }
        if !self.bound_audiences.is_empty() {
            let auds = strings_of(claims.get("aud"));
            if !self.bound_audiences.iter().any(|a| auds.contains(a)) {
                return Err(BoundMismatch::Audience);
            }
        }
        let glob = self.bound_claims_type == "glob";
        for (name, wanted) in &self.bound_claims {
            let actual = strings_of(claim(claims, name));
            let hit = actual.iter().any(|a| {
                wanted
                    .iter()
                    .any(|w| if glob { glob_match(w, a) } else { w == a })
            });
            if !hit {
                return Err(BoundMismatch::Claim(name.chars().take(64).collect()));
            }
        }
        if self.kind == RoleKind::Kubernetes {
            let (namespace, name) = service_account(claims);
            let any = |pats: &[String], v: &Option<String>| {
                v.as_deref()
                    .is_some_and(|v| pats.iter().any(|p| glob_match(p, v)))
            };
            if !any(&self.bound_service_account_names, &name) {
                return Err(BoundMismatch::ServiceAccountName);
            }
            if !any(&self.bound_service_account_namespaces, &namespace) {
                return Err(BoundMismatch::ServiceAccountNamespace);
            }
        }
        Ok(())
    }

    /// The identity a login names when the role says so: the `user_claim`
    /// of a jwt role (other than `sub`). `None`: keep the verifier's
    /// identity (the issuer's identity claim), as for kubernetes roles.
    pub fn user(&self, claims: &Value) -> Result<Option<String>, BoundMismatch> {
        if self.kind == RoleKind::Kubernetes || self.user_claim == "sub" {
            return Ok(None);
        }
        match claim(claims, &self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.clone())),
            _ => Err(BoundMismatch::UserClaim(
                self.user_claim.chars().take(64).collect(),
            )),
        }
    }

    /// The groups a login names from `groups_claim` (none when unset).
    pub fn groups(&self, claims: &Value) -> Vec<String> {
        if self.groups_claim.is_empty() {
            return Vec::new();
        }
        let mut groups = strings_of(claim(claims, &self.groups_claim));
        groups.truncate(crate::auth::identity::MAX_GROUPS);
        groups.retain(|g| g.len() <= crate::auth::identity::MAX_GROUP_BYTES);
        groups
    }

    /// Login metadata, as Vault's methods fill `auth.metadata`.
    pub fn metadata(&self, role: &str, claims: &Value) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        meta.insert("role".to_owned(), role.to_owned());
        if self.kind == RoleKind::Kubernetes {
            let (namespace, name) = service_account(claims);
            meta.insert("service_account_name".into(), name.unwrap_or_default());
            meta.insert(
                "service_account_namespace".into(),
                namespace.unwrap_or_default(),
            );
        }
        meta
    }
}

fn bound_claims(body: &Value) -> Result<BTreeMap<String, Vec<String>>, RoleError> {
    let bad = |reason| {
        RoleError::Field(FieldError {
            field: "bound_claims".into(),
            reason,
        })
    };
    let map = match body.get("bound_claims") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("not a map")),
    };
    if map.len() > MAX_BOUND_CLAIMS {
        return Err(bad("too many claims"));
    }
    let mut out = BTreeMap::new();
    for (name, value) in map {
        if name.is_empty() || name.len() > MAX_ITEM_BYTES {
            return Err(bad("a claim name is empty or too long"));
        }
        let values = match value {
            // Vault splits a string value on commas too.
            Value::String(s) => s.split(',').map(|v| v.trim().to_owned()).collect(),
            Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("values must be strings"))?,
            other => vec![scalar(other).ok_or_else(|| bad("values must be strings"))?],
        };
        if values.len() > MAX_ITEMS || values.iter().any(|v| v.len() > MAX_ITEM_BYTES) {
            return Err(bad("too many or too long values"));
        }
        out.insert(name.clone(), values);
    }
    Ok(out)
}

/// A claim by name, or by JSON pointer when it starts with `/`.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim's values as strings: a scalar, or the scalars of a list.
fn strings_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// `(namespace, name)` of a Kubernetes service account token.
fn service_account(claims: &Value) -> (Option<String>, Option<String>) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let k8s = claims.get("kubernetes.io");
    let mut namespace = s(k8s.and_then(|k| k.get("namespace")));
    let mut name = s(k8s.and_then(|k| k.pointer("/serviceaccount/name")));
    if namespace.is_none() {
        namespace = s(claims.get("kubernetes.io/serviceaccount/namespace"));
    }
    if name.is_none() {
        name = s(claims.get("kubernetes.io/serviceaccount/service-account.name"));
    }
    if namespace.is_none() || name.is_none() {
        if let Some(rest) = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
        {
            if let Some((ns, n)) = rest.split_once(':') {
                namespace = namespace.or_else(|| Some(ns.to_owned()));
                name = name.or_else(|| Some(n.to_owned()));
            }
        }
    }
    (namespace, name)
}

/// `*` matches any run of characters; nothing else is special.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    if !value.ends_with(last) {
        return false;
    }
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s_claims(ns: &str, name: &str) -> Value {
        json!({
            "iss": "https://kubernetes.default.svc", "aud": ["vault"],
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u-1"}},
        })
    }

    #[test]
    fn a_kubernetes_role_binds_service_accounts() {
        let role = AuthRole::from_request(&json!({
            "bound_service_account_names": "app,worker-*",
            "bound_service_account_namespaces": ["default"],
            "policies": "apps", "ttl": "1h",
        }))
        .unwrap();
        assert_eq!(role.kind, RoleKind::Kubernetes);
        assert_eq!(role.policies(), ["apps", "default"]);
        assert_eq!(role.ttls().0, Duration::from_secs(3600));
        assert_eq!(role.check(&k8s_claims("default", "app")), Ok(()));
        assert_eq!(role.check(&k8s_claims("default", "worker-7")), Ok(()));
        assert_eq!(
            role.check(&k8s_claims("default", "other")),
            Err(BoundMismatch::ServiceAccountName)
        );
        assert_eq!(
            role.check(&k8s_claims("prod", "app")),
            Err(BoundMismatch::ServiceAccountNamespace)
        );
        // Legacy secret tokens, and sub alone.
        let legacy = json!({"kubernetes.io/serviceaccount/namespace": "default",
                            "kubernetes.io/serviceaccount/service-account.name": "app"});
        assert_eq!(role.check(&legacy), Ok(()));
        assert_eq!(
            role.check(&json!({"sub": "system:serviceaccount:default:app"})),
            Ok(())
        );
        assert!(role.check(&json!({"sub": "alice"})).is_err());
        let meta = role.metadata("app", &k8s_claims("default", "app"));
        assert_eq!(meta["service_account_name"], "app");
        assert!(AuthRole::from_request(&json!({"bound_service_account_names": "app"})).is_err());
    }

    #[test]
    fn a_jwt_role_binds_subject_audience_and_claims() {
        let role = AuthRole::from_request(&json!({
            "role_type": "jwt", "user_claim": "email", "groups_claim": "groups",
            "bound_audiences": ["rolemint"], "bound_subject": "alice",
            "bound_claims": {"team": ["db", "ops"], "/org/unit": "blue"},
            "token_policies": ["apps"], "token_ttl": 600, "token_max_ttl": "1h",
        }))
        .unwrap();
        assert_eq!(role.kind, RoleKind::Jwt);
        let good = json!({"sub": "alice", "aud": "rolemint", "email": "a@x",
                          "team": ["web", "ops"], "org": {"unit": "blue"}, "groups": ["g"]});
        assert_eq!(role.check(&good), Ok(()));
        assert_eq!(role.user(&good), Ok(Some("a@x".into())));
        assert_eq!(role.groups(&good), ["g"]);
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            role.check(&c)
        };
        assert_eq!(with("sub", json!("bob")), Err(BoundMismatch::Subject));
        assert_eq!(with("aud", json!(["other"])), Err(BoundMismatch::Audience));
        assert_eq!(
            with("team", json!("web")),
            Err(BoundMismatch::Claim("team".into()))
        );
        assert_eq!(
            with("org", json!({"unit": "red"})),
            Err(BoundMismatch::Claim("/org/unit".into()))
        );
        let mut no_email = good.clone();
        no_email.as_object_mut().unwrap().remove("email");
        assert!(role.user(&no_email).is_err());
        let v = role.view();
        assert_eq!(v["token_ttl"], 600);
        assert_eq!(v["policies"], json!(["apps"]));
    }

    #[test]
    fn glob_claims_and_bad_writes() {
        let role = AuthRole::from_request(&json!({
            "bound_claims_type": "glob", "bound_claims": {"email": "*@corp.example"},
        }))
        .unwrap();
        assert_eq!(role.check(&json!({"email": "a@corp.example"})), Ok(()));
        assert!(role.check(&json!({"email": "a@evil.example"})).is_err());
        assert!(role.check(&json!({})).is_err());
        let bad = |b: Value| AuthRole::from_request(&b).unwrap_err();
        assert_eq!(
            bad(json!({"bound_claims_type": "regex"})),
            RoleError::ClaimsType
        );
        assert_eq!(bad(json!({"role_type": "oidc"})), RoleError::Oidc);
        assert_eq!(
            bad(json!({"token_ttl": "2h", "token_max_ttl": "1h"})),
            RoleError::TtlOverMax
        );
        assert!(matches!(
            bad(json!({"bound_claims": {"a": [{}]}})),
            RoleError::Field(_)
        ));
        assert!(
            valid_name("app-1.v2") && !valid_name("a/b") && !valid_name("..") && !valid_name("")
        );
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*c", "abbc") && !glob_match("a*c", "abbd"));
        assert!(glob_match("*-x-*", "a-x-b") && !glob_match("*-x-*", "a-y-b"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }
}

//! Who may do what on the admin listener, in Vault's terms: every request
//! is mapped to a Vault path and a capability ([`need`], the one place
//! that mapping lives), and the caller's policies are asked ([`gate`])
//! before any handler runs.
//!
//! The mapping is Vault's own (`logical.Operation` from the method): the
//! path is the request path after `/v1/`, percent-decoded; `GET` is
//! `read` (with `?list=true`, `list`), `LIST` is `list` (on the path with
//! a trailing `/`), `POST`/`PUT` write (`update`, or `create` for what
//! does not exist yet: the handler knows, [`Access::require_write`]),
//! `DELETE` is `delete`. The paths Vault guards with `sudo` need it here
//! too. Three kinds of route:
//!
//! - open: probes, `sys/health`, logins, `rolemint/whoami` (which
//!   checks its own token and tells only about its holder) and
//!   `rolemint/requests` (access requests, decided by `auth::access`).
//! - policy-checked: everything else unless listed below. Refused with
//!   403 here when the caller's policies do not grant the capability;
//!   a route nobody listed is policy-checked, so a new route is closed
//!   until a policy opens it.
//! - handler-decided: the lease routes and `<db>/creds/*`, where rolemint
//!   lets a caller act on its own leases and lets allow lists open
//!   templates. The handler gets the decision as [`Access`].
//!
//! Callers: the operator token is `root`. A workload holds its token's
//! policies (`default` for an identity JWT or static token presented
//! directly), plus reading the database roles' names and TTLs (what every
//! workload could before policies). Its templates are those its policies
//! grant `read` on `<db>/creds/<T>` for, and those its allow lists open.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{Authenticated, Caller};
use super::vault::ApiError;
use super::AdminState;
use crate::auth::acl::{Acl, Capability, Policy};

/// Who decides a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No caller needed.
    Open,
    /// The caller's policies, here.
    Policy,
    /// The handler, with [`Access`]: own leases, allow lists.
    Handler,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The Vault path: after `/v1/`, decoded; a LIST's ends with `/`.
    pub path: String,
    pub capability: Capability,
    /// The path is one Vault guards with `sudo`.
    pub sudo: bool,
    pub gate: Gate,
}

/// Longest request path mapped (a longer one is refused with 400).
const MAX_PATH_BYTES: usize = 4_096;

/// Paths (prefixes) Vault's system backend marks as root-protected, and
/// rolemint's own lease API, which acts on every principal's leases.
const SUDO_PREFIXES: &[&str] = &[
    "sys/leases/revoke-prefix/",
    "sys/leases/revoke-force/",
    "rolemint/leases/revoke",
];

/// The Vault path and capability of a request; `Ok(None)` for what is not
/// Vault's API (`/healthz`, `/readyz`, `/metrics`).
pub fn need(
    method: &Method,
    uri_path: &str,
    list_query: bool,
    jwt_mounts: &[String],
    database_mount: &str,
) -> Result<Option<Need>, ApiError> {
    let Some(rest) = uri_path.strip_prefix("/v1/") else {
        return Ok(None);
    };
    if rest.len() > MAX_PATH_BYTES {
        return Err(ApiError::bad_request("path too long"));
    }
    let mut path = percent_decode(rest).ok_or_else(|| ApiError::bad_request("bad path"))?;
    let capability = match method.as_str() {
        "LIST" => Capability::List,
        "GET" | "HEAD" if list_query => Capability::List,
        "GET" | "HEAD" => Capability::Read,
        "POST" | "PUT" => Capability::Update,
        "DELETE" => Capability::Delete,
        _ => return Err(super::method_not_allowed_error()),
    };
    if capability == Capability::List && !path.ends_with('/') {
        path.push('/');
    }
    let login = jwt_mounts.iter().any(|m| {
        path.strip_prefix("auth/")
            .and_then(|p| p.strip_prefix(m.as_str()))
            == Some("/login")
    });
    // whoami authenticates the person itself (with the Vault door off
    // too) and tells only about them; access requests are decided by
    // their own rules (requester, approvers, operators: `auth::access`).
    let people = path == "rolemint/whoami"
        || path == "rolemint/requests"
        || path.starts_with("rolemint/requests/");
    let gate = if path == "sys/health" || people || login {
        Gate::Open
    } else if handler_decided(&path, capability, database_mount) {
        Gate::Handler
    } else {
        Gate::Policy
    };
    let sudo = SUDO_PREFIXES.iter().any(|p| path.starts_with(p))
        || (capability == Capability::List && path.starts_with("sys/leases/lookup/"))
        || path == "rolemint/leases";
    Ok(Some(Need {
        path,
        capability,
        sudo,
        gate,
    }))
}

/// The routes whose handler decides: a caller's own leases, and
/// templates opened by allow lists.
fn handler_decided(path: &str, capability: Capability, database_mount: &str) -> bool {
    let creds = path
        .strip_prefix(database_mount)
        .is_some_and(|p| p.starts_with("/creds/"));
    let own_leases = matches!(
        path,
        "sys/leases/lookup" | "sys/leases/renew" | "sys/leases/revoke" | "rolemint/leases"
    ) || path.starts_with("sys/leases/renew/")
        || path.starts_with("sys/leases/revoke/")
        || (capability == Capability::List && path.starts_with("sys/leases/lookup/"));
    // Vault's token rules are the handlers' (auth/token.rs): a child
    // within its creator's policies, lookups of the tokens it holds.
    let tokens = path.starts_with("auth/token/");
    creds || own_leases || tokens
}

/// `%XX` decoded, as Vault matches policies on the decoded path; `None`
/// for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A request's caller and what its policies say, for the handler.
#[derive(Debug, Clone)]
pub struct Access {
    pub caller: Caller,
    pub need: Need,
    acl: Arc<Acl>,
    /// The caller may act on every principal's leases here: the operator,
    /// or a token whose policies other than `default` grant the need.
    /// `default` grants renew and lookup on any lease in Vault; here it
    /// reaches the caller's own leases only.
    every_lease: bool,
}

impl Access {
    /// Whether the caller may act on a lease of `(issuer, identity)`.
    pub fn may_act_on(&self, issuer: &str, identity: &str) -> bool {
        self.every_lease || self.caller.may_act_on(issuer, identity)
    }

    /// Whether the caller may act on every lease here.
    pub fn every_lease(&self) -> bool {
        self.every_lease
    }

    /// The caller's policies grant `capability` on `path`.
    pub fn allows(&self, path: &str, capability: Capability) -> bool {
        self.acl.allows(path, capability, false)
    }

    /// The ACL the caller holds.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// A write to the request's path, now that the handler knows whether
    /// the object exists: `update` on what exists, `create` on what does
    /// not, as Vault's existence check decides.
    pub fn require_write(&self, exists: bool) -> Result<(), ApiError> {
        let c = if exists {
            Capability::Update
        } else {
            Capability::Create
        };
        if self.acl.allows(&self.need.path, c, self.need.sudo) {
            Ok(())
        } else {
            Err(ApiError::permission_denied())
        }
    }
}

/// The built-in grants of a caller without policies, beside `default`:
/// the database roles, names and TTLs, as before policies existed.
fn legacy_policy(database_mount: &str) -> Policy {
    let text = format!(
        "path \"{database_mount}/roles\" {{ capabilities = [\"list\"] }}\n\
         path \"{database_mount}/roles/*\" {{ capabilities = [\"read\", \"list\"] }}\n"
    );
    // Mount names are [a-z0-9_-] (config validation): this always parses.
    Policy::parse("rolemint-workload", &text).unwrap_or_else(|_| Policy::default_policy())
}

impl AdminState {
    /// The ACL `caller` holds at the door: its policies, and for a
    /// workload the database roles' names and TTLs besides.
    pub fn acl_of(&self, caller: &Caller) -> Acl {
        match caller {
            Caller::Operator => Acl::root(),
            Caller::Workload { policies, .. } => self.policies_acl(policies, true),
        }
    }

    /// The ACL of the policies alone (`root` for the operator).
    pub fn policy_acl(&self, caller: &Caller) -> Acl {
        match caller {
            Caller::Operator => Acl::root(),
            Caller::Workload { policies, .. } => self.policies_acl(policies, false),
        }
    }

    /// Whether `caller`'s policies grant `sudo` on `path` (the operator's
    /// always do): what Vault asks of a token creating an orphan or a
    /// token with policies its creator lacks.
    pub fn sudo(&self, caller: &Caller, path: &str) -> bool {
        self.policy_acl(caller)
            .capabilities(path, false)
            .grants(Capability::Sudo)
    }

    fn policies_acl(&self, names: &[String], legacy: bool) -> Acl {
        if !legacy {
            return self.policy_cache.acl(names, self.policies.as_ref());
        }
        if names.iter().any(|n| n == "root") {
            return Acl::root();
        }
        let compiled: Vec<Arc<Policy>> = names
            .iter()
            .filter_map(|n| self.policy_cache.policy(n, self.policies.as_ref()))
            .collect();
        let legacy = legacy_policy(&self.database_mount);
        Acl::new(compiled.iter().map(|p| p.as_ref()).chain([&legacy]))
    }
}

/// The gate every route passes: maps the request, authenticates the
/// caller, refuses what its policies do not grant on policy-checked
/// routes, and hands [`Access`] to the handler.
pub async fn gate(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Unmatched paths go on to the 404 fallback.
    if request.extensions().get::<MatchedPath>().is_none() {
        return next.run(request).await;
    }
    // `?list=true`: a GET that is Vault's LIST (read here, not through the
    // lease module's query type, which imports this one).
    let list = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "list=true"));
    let need = match need(
        request.method(),
        request.uri().path(),
        list,
        &state.jwt_mounts,
        &state.database_mount,
    ) {
        Ok(Some(need)) if need.gate != Gate::Open => need,
        Ok(_) => return next.run(request).await,
        Err(e) => return e.into_response(),
    };
    // Who is calling was decided once, by `observe` (the outer layer).
    let caller = request
        .extensions()
        .get::<Authenticated>()
        .cloned()
        .unwrap_or_default()
        .caller();
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let acl = state.acl_of(&caller);
    let granted = acl.allows(&need.path, need.capability, need.sudo)
        || (need.capability == Capability::Update
            && acl.allows(&need.path, Capability::Create, need.sudo));
    if need.gate == Gate::Policy && !granted {
        return ApiError::permission_denied().into_response();
    }
    let every_lease = match &caller {
        Caller::Operator => true,
        Caller::Workload { policies, .. } => {
            let own: Vec<String> = policies
                .iter()
                .filter(|p| p.as_str() != "default")
                .cloned()
                .collect();
            state
                .policies_acl(&own, false)
                .allows(&need.path, need.capability, need.sudo)
        }
    };
    request.extensions_mut().insert(Access {
        caller,
        need,
        acl: Arc::new(acl),
        every_lease,
    });
    next.run(request).await
}

/// A handler takes the [`Access`] the gate left; a route the gate did
/// not see answers 403.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Access, ApiError> {
        parts
            .extensions
            .get::<Access>()
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "permission denied"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need_of(method: &str, path: &str) -> Need {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let mounts = ["jwt".to_owned(), "kubernetes".to_owned()];
        need(&m, path, false, &mounts, "database").unwrap().unwrap()
    }

    #[test]
    fn requests_map_to_vaults_paths_and_capabilities() {
        let n = need_of("GET", "/v1/database/creds/readonly");
        assert_eq!(
            (n.path.as_str(), n.capability, n.sudo, n.gate),
            (
                "database/creds/readonly",
                Capability::Read,
                false,
                Gate::Handler
            )
        );
        let n = need_of("LIST", "/v1/sys/policies/acl");
        assert_eq!(
            (n.path.as_str(), n.capability),
            ("sys/policies/acl/", Capability::List)
        );
        assert_eq!(n.gate, Gate::Policy);
        let n = need_of("PUT", "/v1/sys/policies/acl/apps");
        assert_eq!((n.capability, n.gate), (Capability::Update, Gate::Policy));
        assert_eq!(
            need_of("DELETE", "/v1/sys/policy/a").capability,
            Capability::Delete
        );
        let n = need_of("PUT", "/v1/sys/leases/revoke-prefix/database/creds");
        assert!(n.sudo && n.gate == Gate::Policy);
        let n = need_of("LIST", "/v1/sys/leases/lookup/database/creds");
        assert!(n.sudo && n.gate == Gate::Handler);
        assert!(!need_of("PUT", "/v1/sys/leases/lookup").sudo);
        assert_eq!(
            need_of("PUT", "/v1/sys/leases/renew/x/y").gate,
            Gate::Handler
        );
        assert_eq!(need_of("POST", "/v1/auth/jwt/login").gate, Gate::Open);
        assert_eq!(need_of("GET", "/v1/sys/health").gate, Gate::Open);
        assert_eq!(need_of("GET", "/v1/rolemint/whoami").gate, Gate::Open);
        assert_eq!(
            need_of("POST", "/v1/rolemint/requests/req-1/approve").gate,
            Gate::Open
        );
        assert_eq!(need_of("POST", "/v1/auth/token/create").gate, Gate::Handler);
        assert_eq!(need_of("PUT", "/v1/auth/jwt/role/app").gate, Gate::Policy);
        // Not a configured login mount: policy-checked like anything else.
        assert_eq!(need_of("POST", "/v1/auth/approle/login").gate, Gate::Policy);
        assert_eq!(
            need_of("POST", "/v1/database/rotate-root/appdb").gate,
            Gate::Policy
        );
        // Decoded, as Vault matches.
        assert_eq!(
            need_of("GET", "/v1/database/roles/read%6Fnly").path,
            "database/roles/readonly"
        );
        let m = Method::GET;
        assert!(need(&m, "/v1/a%zz", false, &[], "database").is_err());
        assert!(need(&m, "/v1/a%ff", false, &[], "database").is_err());
        assert!(need(&m, "/healthz", false, &[], "database")
            .unwrap()
            .is_none());
        let n = need(&m, "/v1/sys/policies/acl", true, &[], "database")
            .unwrap()
            .unwrap();
        assert_eq!(
            (n.path.as_str(), n.capability),
            ("sys/policies/acl/", Capability::List)
        );
        let odd = Method::from_bytes(b"OPTIONS").unwrap();
        let e = need(&odd, "/v1/sys/policy", false, &[], "database").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn a_caller_without_policies_reads_roles_and_nothing_it_did_not_before() {
        let legacy = legacy_policy("database");
        let acl = Acl::new([&Policy::default_policy(), &legacy]);
        assert!(acl.allows("database/roles/", Capability::List, false));
        assert!(acl.allows("database/roles/readonly", Capability::Read, false));
        assert!(acl.allows("auth/token/lookup-self", Capability::Read, false));
        assert!(!acl.allows("database/roles/readonly", Capability::Update, false));
        assert!(!acl.allows("database/rotate-root/appdb", Capability::Update, false));
        assert!(!acl.allows("sys/policies/acl/", Capability::List, false));
    }
}

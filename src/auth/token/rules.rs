//! Vault's rules for a token, as `vault/token_store.go` applies them
//! (`handleCreateCommon`, `framework.CalculateTTL`): what a create
//! request, a login or a renewal comes to, from the creator's policies,
//! the request's fields and the TTL limits. The token itself (its shape,
//! hash and accessor) is the parent's.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{
    TokenError, MAX_DISPLAY_NAME_BYTES, MAX_META_BYTES, MAX_META_ENTRIES, MAX_NUM_USES,
    MAX_POLICIES, MAX_POLICY_BYTES, MAX_TOKEN_BYTES, MAX_TOKEN_TTL, NON_ASSIGNABLE,
};
use crate::auth::fields::{self, FieldError};

/// Vault's `SanitizePolicies`: trimmed, lowercased, empty ones dropped,
/// `default` added when asked, sorted and deduplicated; `root` stands
/// alone.
pub fn sanitize_policies(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if out.iter().any(|p| p == "root") {
        return vec!["root".into()];
    }
    if add_default && !out.iter().any(|p| p == "default") {
        out.push("default".into());
    }
    out.sort();
    out.dedup();
    out
}

/// A `token/create` request, in Vault's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateRequest {
    /// `None`: the creator's policies.
    pub policies: Option<Vec<String>>,
    pub meta: BTreeMap<String, String>,
    pub no_parent: bool,
    pub no_default_policy: bool,
    pub ttl: Option<Duration>,
    pub explicit_max_ttl: Option<Duration>,
    /// Default: renewable.
    pub renewable: Option<bool>,
    pub display_name: Option<String>,
    /// 0: unlimited.
    pub num_uses: u32,
}

impl CreateRequest {
    /// Reads Vault's fields (and refuses those rolemint does not do:
    /// a caller-chosen `id`, `period`, `type = batch`).
    pub fn from_json(body: &Value) -> Result<CreateRequest, TokenError> {
        if fields::string(body, "id", MAX_TOKEN_BYTES)?.is_some_and(|id| !id.is_empty()) {
            return Err(TokenError::CustomId);
        }
        if fields::duration(body, "period", MAX_TOKEN_TTL)?.is_some_and(|p| !p.is_zero()) {
            return Err(TokenError::Periodic);
        }
        match fields::string(body, "type", 16)?.as_deref() {
            None | Some("") | Some("service") | Some("default") => {}
            Some("batch") => return Err(TokenError::Batch),
            Some(_) => {
                return Err(TokenError::Field(FieldError {
                    field: "type".into(),
                    reason: "invalid 'token_type' value",
                }))
            }
        }
        let ttl = match fields::duration(body, "ttl", MAX_TOKEN_TTL)? {
            Some(t) => Some(t),
            // Vault's older name for it.
            None => fields::duration(body, "lease", MAX_TOKEN_TTL)?,
        };
        Ok(CreateRequest {
            policies: fields::list(body, "policies", MAX_POLICIES, MAX_POLICY_BYTES)?,
            meta: fields::string_map(body, "meta", MAX_META_ENTRIES, MAX_META_BYTES)?
                .unwrap_or_default(),
            no_parent: fields::boolean(body, "no_parent")?.unwrap_or(false),
            no_default_policy: fields::boolean(body, "no_default_policy")?.unwrap_or(false),
            ttl,
            explicit_max_ttl: fields::duration(body, "explicit_max_ttl", MAX_TOKEN_TTL)?,
            renewable: fields::boolean(body, "renewable")?,
            display_name: fields::string(body, "display_name", MAX_DISPLAY_NAME_BYTES)?,
            num_uses: fields::count(body, "num_uses", MAX_NUM_USES)?.unwrap_or(0) as u32,
        })
    }
}

/// The token asking for a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creator<'a> {
    /// Its policies (`["root"]` for the operator).
    pub policies: &'a [String],
    /// Whether it has `sudo` on the create path (root always has).
    pub sudo: bool,
    /// Its `num_uses` (0: unlimited).
    pub num_uses: u32,
    /// When it expires (`None`: never, as the operator token).
    pub expires_at: Option<SystemTime>,
}

impl Creator<'_> {
    fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }
}

/// The TTL defaults in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A token's TTL when the request names none.
    pub default_ttl: Duration,
    /// The longest TTL, counted from creation (explicit_max_ttl may lower it).
    pub max_ttl: Duration,
}

/// A token to store, as Vault's rules make it from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub policies: Vec<String>,
    /// True: no parent (revoking the creator leaves it).
    pub orphan: bool,
    pub display_name: String,
    pub meta: BTreeMap<String, String>,
    pub num_uses: u32,
    /// The TTL at creation; zero: never expires (root tokens only).
    pub ttl: Duration,
    /// Zero: none.
    pub explicit_max_ttl: Duration,
    pub renewable: bool,
    /// `None`: never.
    pub expires_at: Option<SystemTime>,
    /// `auth/token/create` or `auth/token/create-orphan`.
    pub path: String,
}

/// What `request` from `creator` comes to, at `now`. `orphan_path`: the
/// request came to `create-orphan`, which makes an orphan without sudo.
pub fn plan_create(
    request: &CreateRequest,
    creator: &Creator<'_>,
    orphan_path: bool,
    limits: &Limits,
    now: SystemTime,
) -> Result<Plan, TokenError> {
    if creator.num_uses > 0 {
        return Err(TokenError::LimitedUseParent);
    }
    let sudo = creator.sudo || creator.is_root();
    let policies = child_policies(request, creator, sudo)?;
    if let Some(p) = policies
        .iter()
        .find(|p| NON_ASSIGNABLE.contains(&p.as_str()))
    {
        return Err(TokenError::NonAssignable(p.clone()));
    }
    let root = policies.iter().any(|p| p == "root");
    if root && !creator.is_root() {
        return Err(TokenError::RootFromNonRoot);
    }
    if request.no_parent && !sudo {
        return Err(TokenError::OrphanNeedsSudo);
    }
    let explicit_max_ttl = request.explicit_max_ttl.unwrap_or_default();
    let mut ttl = request.ttl.unwrap_or_default();
    // Root tokens without a TTL never expire; every other gets a TTL.
    if !ttl.is_zero() || !root {
        ttl = capped_ttl(
            ttl,
            limits.default_ttl,
            max_ttl(limits, explicit_max_ttl),
            now,
            now,
        )?;
    }
    if ttl.is_zero() && !explicit_max_ttl.is_zero() {
        ttl = explicit_max_ttl;
    }
    let mut renewable = request.renewable.unwrap_or(true);
    if ttl.is_zero() {
        if creator.expires_at.is_some() {
            return Err(TokenError::NonExpiringFromExpiring);
        }
        renewable = false;
    }
    let expires_at = if ttl.is_zero() {
        None
    } else {
        Some(now.checked_add(ttl).ok_or(TokenError::TimeOutOfRange)?)
    };
    Ok(Plan {
        policies,
        orphan: request.no_parent || orphan_path,
        display_name: display_name(request.display_name.as_deref()),
        meta: request.meta.clone(),
        num_uses: request.num_uses,
        ttl,
        explicit_max_ttl,
        renewable,
        expires_at,
        path: if orphan_path {
            "auth/token/create-orphan".into()
        } else {
            "auth/token/create".into()
        },
    })
}

/// What a login's token is to be, from its auth role (or the door's
/// defaults when the mount has no roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSpec {
    /// Sanitized already (the role's, `default` included when due).
    pub policies: Vec<String>,
    /// Zero: the default TTL.
    pub ttl: Duration,
    /// Zero: the door's max.
    pub max_ttl: Duration,
    /// Zero: none.
    pub explicit_max_ttl: Duration,
    pub num_uses: u32,
    pub renewable: bool,
    pub display_name: String,
    pub meta: BTreeMap<String, String>,
    /// `auth/<mount>/login`.
    pub path: String,
}

/// A login's token: an orphan (Vault's login tokens have no parent) with
/// the role's TTLs, capped as a created token's are.
pub fn plan_login(spec: LoginSpec, limits: &Limits, now: SystemTime) -> Result<Plan, TokenError> {
    let mut max = max_ttl(limits, spec.explicit_max_ttl);
    if !spec.max_ttl.is_zero() {
        max = max.min(spec.max_ttl);
    }
    let ttl = capped_ttl(spec.ttl, limits.default_ttl, max, now, now)?;
    Ok(Plan {
        policies: spec.policies,
        orphan: true,
        display_name: spec.display_name,
        meta: spec.meta,
        num_uses: spec.num_uses,
        ttl,
        explicit_max_ttl: spec.explicit_max_ttl,
        renewable: spec.renewable,
        expires_at: Some(now.checked_add(ttl).ok_or(TokenError::TimeOutOfRange)?),
        path: spec.path,
    })
}

/// Vault's policy rules for a child (no token roles): inherit when none
/// are named; otherwise a subset of the creator's unless sudo; `default`
/// added when the creator has it (or always, with sudo), unless
/// `no_default_policy`.
fn child_policies(
    request: &CreateRequest,
    creator: &Creator<'_>,
    sudo: bool,
) -> Result<Vec<String>, TokenError> {
    let parent = sanitize_policies(creator.policies, false);
    let (wanted, add_default) = match &request.policies {
        None => (parent.clone(), false),
        Some(p) if p.is_empty() => (parent.clone(), false),
        Some(p) if !sudo => {
            let wanted = sanitize_policies(p, false);
            if !wanted.iter().all(|w| parent.contains(w)) {
                return Err(TokenError::NotSubset);
            }
            let parent_default = parent.iter().any(|p| p == "default");
            (wanted, !request.no_default_policy && parent_default)
        }
        Some(p) => (sanitize_policies(p, false), !request.no_default_policy),
    };
    let mut out = sanitize_policies(&wanted, add_default);
    if request.no_default_policy {
        out.retain(|p| p != "default");
    }
    Ok(out)
}

/// The longest life from creation: the max TTL, lowered by a non-zero
/// `explicit_max_ttl`.
fn max_ttl(limits: &Limits, explicit_max_ttl: Duration) -> Duration {
    if explicit_max_ttl.is_zero() {
        limits.max_ttl
    } else {
        limits.max_ttl.min(explicit_max_ttl)
    }
}

/// Vault's `CalculateTTL`: `wanted` (else `default`), capped so the token
/// ends no later than `start + max`. Zero left: past the max TTL.
fn capped_ttl(
    wanted: Duration,
    default: Duration,
    max: Duration,
    start: SystemTime,
    now: SystemTime,
) -> Result<Duration, TokenError> {
    let wanted = if wanted.is_zero() { default } else { wanted };
    let end = start.checked_add(max).ok_or(TokenError::TimeOutOfRange)?;
    let left = end.duration_since(now).unwrap_or_default();
    if left.is_zero() {
        return Err(TokenError::PastMaxTtl);
    }
    // Whole seconds, as Vault reports them.
    Ok(Duration::from_secs(wanted.min(left).as_secs().max(1)))
}

/// Vault's display name of a created token: `token` or `token-<name>`
/// with anything outside `[A-Za-z0-9_-]` made `-`.
pub fn display_name(requested: Option<&str>) -> String {
    match requested {
        None | Some("") => "token".into(),
        Some(name) => {
            let full: String = format!("token-{name}")
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            full.trim_end_matches('-').to_owned()
        }
    }
}

/// A stored token's lifetime, as a renewal needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub created_at: SystemTime,
    /// The TTL it was created with.
    pub creation_ttl: Duration,
    pub explicit_max_ttl: Duration,
    pub renewable: bool,
    /// `None`: never expires.
    pub expires_at: Option<SystemTime>,
}

/// A renewal's outcome: the new TTL and expiry, and a warning when capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub ttl: Duration,
    pub expires_at: SystemTime,
    pub warning: Option<String>,
}

/// Vault's `RenewToken` for a non-periodic token: the new TTL is
/// `increment` (else the creation TTL), capped at creation + max TTL.
pub fn renew(
    token: &Lifetime,
    increment: Option<Duration>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Renewal, TokenError> {
    if !token.renewable || token.expires_at.is_none() {
        return Err(TokenError::NotRenewable);
    }
    let wanted = increment
        .filter(|i| !i.is_zero())
        .unwrap_or(token.creation_ttl)
        .min(MAX_TOKEN_TTL);
    let max = max_ttl(limits, token.explicit_max_ttl);
    let ttl = capped_ttl(wanted, limits.default_ttl, max, token.created_at, now)?;
    let warning = (ttl.as_secs() < wanted.as_secs()).then(|| {
        format!(
            "TTL of \"{}s\" exceeded the effective max_ttl of \"{}s\"; TTL value is capped accordingly",
            wanted.as_secs(),
            ttl.as_secs()
        )
    });
    Ok(Renewal {
        ttl,
        expires_at: now.checked_add(ttl).ok_or(TokenError::TimeOutOfRange)?,
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: Duration = Duration::from_secs(3600);

    fn limits() -> Limits {
        Limits {
            default_ttl: HOUR,
            max_ttl: 24 * HOUR,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn creator(policies: &[String]) -> Creator<'_> {
        Creator {
            policies,
            sudo: false,
            num_uses: 0,
            expires_at: Some(SystemTime::now() + HOUR),
        }
    }

    fn request(body: Value) -> CreateRequest {
        CreateRequest::from_json(&body).unwrap()
    }

    #[test]
    fn a_child_inherits_or_takes_a_subset_unless_sudo() {
        let parent = strings(&["apps", "default", "ops"]);
        let c = creator(&parent);
        let now = SystemTime::now();
        let p = plan_create(&request(json!({})), &c, false, &limits(), now).unwrap();
        assert_eq!(p.policies, ["apps", "default", "ops"]);
        assert!(!p.orphan && p.renewable && p.ttl == HOUR);
        let p = plan_create(
            &request(json!({"policies": "apps"})),
            &c,
            false,
            &limits(),
            now,
        );
        assert_eq!(p.unwrap().policies, ["apps", "default"]);
        let p = plan_create(
            &request(json!({"policies": ["apps"], "no_default_policy": true})),
            &c,
            false,
            &limits(),
            now,
        );
        assert_eq!(p.unwrap().policies, ["apps"]);
        let wider = request(json!({"policies": ["apps", "admin"]}));
        assert_eq!(
            plan_create(&wider, &c, false, &limits(), now),
            Err(TokenError::NotSubset)
        );
        let sudo = Creator {
            sudo: true,
            ..c.clone()
        };
        let p = plan_create(&wider, &sudo, false, &limits(), now).unwrap();
        assert_eq!(p.policies, ["admin", "apps", "default"]);
        // sudo is not root: no root tokens.
        let root = request(json!({"policies": ["root"]}));
        assert_eq!(
            plan_create(&root, &sudo, false, &limits(), now),
            Err(TokenError::RootFromNonRoot)
        );
        let internal = request(json!({"policies": ["response-wrapping"]}));
        assert!(matches!(
            plan_create(&internal, &sudo, false, &limits(), now),
            Err(TokenError::NonAssignable(_))
        ));
    }

    #[test]
    fn orphans_need_sudo_unless_asked_for_at_create_orphan() {
        let parent = strings(&["apps"]);
        let c = creator(&parent);
        let now = SystemTime::now();
        let orphan = request(json!({"no_parent": true}));
        assert_eq!(
            plan_create(&orphan, &c, false, &limits(), now),
            Err(TokenError::OrphanNeedsSudo)
        );
        let p = plan_create(&request(json!({})), &c, true, &limits(), now).unwrap();
        assert!(p.orphan);
        assert_eq!(p.path, "auth/token/create-orphan");
        let root = strings(&["root"]);
        let op = Creator {
            expires_at: None,
            ..creator(&root)
        };
        assert!(
            plan_create(&orphan, &op, false, &limits(), now)
                .unwrap()
                .orphan
        );
    }

    #[test]
    fn ttls_are_capped_by_the_max_and_explicit_max() {
        let parent = strings(&["apps"]);
        let c = creator(&parent);
        let now = SystemTime::now();
        let p = plan_create(&request(json!({"ttl": "48h"})), &c, false, &limits(), now);
        assert_eq!(p.unwrap().ttl, 24 * HOUR);
        let p = plan_create(
            &request(json!({"ttl": "2h", "explicit_max_ttl": 1800})),
            &c,
            false,
            &limits(),
            now,
        )
        .unwrap();
        assert_eq!((p.ttl, p.explicit_max_ttl), (HOUR / 2, HOUR / 2));
        assert_eq!(p.expires_at, Some(now + HOUR / 2));
        let p = plan_create(
            &request(json!({"renewable": false})),
            &c,
            false,
            &limits(),
            now,
        );
        assert!(!p.unwrap().renewable);
    }

    #[test]
    fn root_tokens_may_never_expire_only_under_a_non_expiring_root() {
        let root = strings(&["root"]);
        let op = Creator {
            expires_at: None,
            ..creator(&root)
        };
        let now = SystemTime::now();
        let p = plan_create(
            &request(json!({"policies": ["root"]})),
            &op,
            false,
            &limits(),
            now,
        )
        .unwrap();
        assert_eq!(
            (p.ttl, p.expires_at, p.renewable),
            (Duration::ZERO, None, false)
        );
        let expiring = creator(&root);
        assert_eq!(
            plan_create(&request(json!({})), &expiring, false, &limits(), now),
            Err(TokenError::NonExpiringFromExpiring)
        );
        // The operator's other children get the default TTL.
        let p = plan_create(
            &request(json!({"policies": ["apps"]})),
            &op,
            false,
            &limits(),
            now,
        );
        assert_eq!(p.unwrap().policies, ["apps", "default"]);
    }

    #[test]
    fn limited_use_tokens_have_no_children_and_fields_are_checked() {
        let parent = strings(&["apps"]);
        let limited = Creator {
            num_uses: 3,
            ..creator(&parent)
        };
        let now = SystemTime::now();
        assert_eq!(
            plan_create(&request(json!({})), &limited, false, &limits(), now),
            Err(TokenError::LimitedUseParent)
        );
        let bad = |b: Value| CreateRequest::from_json(&b).unwrap_err();
        assert_eq!(bad(json!({"id": "mine"})), TokenError::CustomId);
        assert_eq!(bad(json!({"period": "1h"})), TokenError::Periodic);
        assert_eq!(bad(json!({"type": "batch"})), TokenError::Batch);
        assert!(matches!(bad(json!({"num_uses": -1})), TokenError::Field(_)));
        assert!(matches!(bad(json!({"ttl": "-1h"})), TokenError::Field(_)));
        assert!(matches!(
            bad(json!({"ttl": u64::MAX})),
            TokenError::Field(_)
        ));
        let many: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        assert!(matches!(
            bad(json!({"policies": many})),
            TokenError::Field(_)
        ));
        assert_eq!(request(json!({"num_uses": "2"})).num_uses, 2);
    }

    #[test]
    fn a_login_token_is_an_orphan_with_the_roles_ttls() {
        let now = SystemTime::now();
        let spec = LoginSpec {
            policies: strings(&["apps", "default"]),
            ttl: 2 * HOUR,
            max_ttl: HOUR,
            explicit_max_ttl: Duration::ZERO,
            num_uses: 0,
            renewable: true,
            display_name: "jwt-alice".into(),
            meta: BTreeMap::new(),
            path: "auth/jwt/login".into(),
        };
        let p = plan_login(spec.clone(), &limits(), now).unwrap();
        assert!(p.orphan && p.ttl == HOUR && p.expires_at == Some(now + HOUR));
        let p = plan_login(
            LoginSpec {
                ttl: Duration::ZERO,
                max_ttl: Duration::ZERO,
                ..spec
            },
            &limits(),
            now,
        )
        .unwrap();
        assert_eq!(p.ttl, HOUR, "the default TTL");
    }

    #[test]
    fn display_names_are_vaults() {
        assert_eq!(display_name(None), "token");
        assert_eq!(display_name(Some("ci job!")), "token-ci-job");
        assert_eq!(display_name(Some("web")), "token-web");
    }

    #[test]
    fn renewals_extend_up_to_the_cap_from_creation() {
        let created = SystemTime::now() - 20 * HOUR;
        let t = Lifetime {
            created_at: created,
            creation_ttl: HOUR,
            explicit_max_ttl: Duration::ZERO,
            renewable: true,
            expires_at: Some(created + 21 * HOUR),
        };
        let now = SystemTime::now();
        let r = renew(&t, None, &limits(), now).unwrap();
        assert_eq!((r.ttl, r.warning), (HOUR, None));
        let r = renew(&t, Some(10 * HOUR), &limits(), now).unwrap();
        assert!(r.ttl <= 4 * HOUR && r.ttl >= 4 * HOUR - Duration::from_secs(2));
        assert!(r.warning.is_some());
        let capped = Lifetime {
            explicit_max_ttl: 20 * HOUR,
            ..t
        };
        assert_eq!(
            renew(&capped, None, &limits(), now),
            Err(TokenError::PastMaxTtl)
        );
        let fixed = Lifetime {
            renewable: false,
            ..t
        };
        assert_eq!(
            renew(&fixed, None, &limits(), now),
            Err(TokenError::NotRenewable)
        );
        let forever = Lifetime {
            expires_at: None,
            ..t
        };
        assert_eq!(
            renew(&forever, None, &limits(), now),
            Err(TokenError::NotRenewable)
        );
        // An increment past the clock's range is bounded, not wrapped.
        assert!(renew(&t, Some(Duration::MAX), &limits(), now).is_ok());
    }

    #[test]
    fn sanitize_matches_vault() {
        assert_eq!(
            sanitize_policies(&strings(&[" Apps", "apps", ""]), true),
            ["apps", "default"]
        );
        assert_eq!(sanitize_policies(&strings(&["a", "root"]), true), ["root"]);
    }
}

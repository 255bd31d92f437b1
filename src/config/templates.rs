//! `[roles.NAME]`: role templates, the `user` a client connects as: the
//! databases, TTLs and statements of its roles, who may use it, its
//! session settings, warm pool, approval and query audit; and
//! [`validate_template`], the one check of a template, whether it comes
//! from the config file or was written through the API.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{
    allow, approval, check_placeholders, invalid, placeholder, ConfigError, MAX_CONFIGURABLE_TTL,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleTemplate {
    /// Databases a session of this template may connect to.
    pub databases: Vec<String>,
    /// Lease TTL of a session.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest a lease may be renewed to.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// SQL run as one transaction to create the role (Vault placeholders).
    pub creation_statements: Vec<String>,
    /// SQL run to drop the role; a safe default is used when absent.
    /// rolemint sets NOLOGIN and terminates the role's backends first
    /// either way.
    pub revocation_statements: Option<Vec<String>>,
    /// Role that inherits what a minted role owns when it is revoked
    /// (`REASSIGN OWNED`). Without it, a role that owns objects is left
    /// NOLOGIN and reported, never dropped with its objects.
    pub owner: Option<String>,
    /// Identities (raw claim values, glob patterns) allowed this template.
    #[serde(default)]
    pub allow_identities: Vec<String>,
    /// Groups (raw claim values, glob patterns) allowed this template.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Cap the lease at the token's `exp`.
    #[serde(default)]
    pub bind_to_token_expiry: bool,
    /// `ALTER ROLE .. SET name = value` in the mint batch; values may use
    /// `{{identity}}` and `{{groups}}`.
    #[serde(default)]
    pub session_settings: BTreeMap<String, String>,
    /// Roles minted ahead, per database of the template, each with a
    /// backend already logged in as it (see `warm_pool.rs`): a session
    /// that finds one skips the mint and the login. 0 (the default) turns
    /// the pool off; at most [`MAX_WARM_POOL`] per template and database.
    #[serde(default)]
    pub warm_pool: usize,
    /// Sessions and credential leases need an access request others
    /// approved (`auth/access.rs`); off when absent.
    #[serde(default)]
    pub approval: Option<approval::Approval>,
    /// The name template of pooled roles. They are minted before any
    /// client is known, so it may not use `{{identity}}`; default
    /// [`DEFAULT_WARM_NAME_TEMPLATE`].
    pub warm_name_template: Option<String>,
    /// How long a pooled role waits to be claimed before it is revoked and
    /// replaced (its `VALID UNTIL` is a little later, so PostgreSQL itself
    /// refuses it after that even if rolemint dies).
    #[serde(default = "default_warm_lifetime", with = "humantime_serde")]
    pub warm_lifetime: Duration,
    /// Write every statement of this template's sessions to the audit log
    /// (`session.statement`: each simple Query and each Parse, in order).
    /// Such sessions always use the user-space relay, never the kernel
    /// splice, which would not show rolemint their bytes.
    #[serde(default)]
    pub audit_queries: bool,
    /// With `audit_queries`, also write the values of every Bind. Off by
    /// default: parameter values are where personal data and secrets are.
    #[serde(default)]
    pub audit_parameters: bool,
    /// Leases of this template (sessions and credential leases together)
    /// one principal may hold at once on this instance; refused with 53300
    /// or 429 past it (`lease/quota.rs`). No cap when absent.
    pub max_leases_per_principal: Option<usize>,
    /// Leases of this template everybody together may hold at once on this
    /// instance, as Vault's lease-count quota on `database/creds/NAME`
    /// (`max_leases`). No cap when absent.
    pub max_leases: Option<usize>,
}

/// Most session settings per template.
const MAX_SETTINGS: usize = 32;

/// The placeholders a session setting may use.
const SETTING_KEYS: &[&str] = &["identity", "groups", "template", "issuer"];

/// Most pooled roles per template and database: each holds a backend
/// connection, which counts against PostgreSQL's `max_connections`.
pub const MAX_WARM_POOL: usize = 1000;

/// The name template of pooled roles when `warm_name_template` is unset:
/// `mint.name_template` without the identity, which is not known yet.
pub const DEFAULT_WARM_NAME_TEMPLATE: &str = "v-{{template}}-{{random}}-{{unix_time}}";

fn default_warm_lifetime() -> Duration {
    Duration::from_secs(10 * 60)
}

impl RoleTemplate {
    /// The name template of this template's pooled roles.
    pub fn warm_name_template(&self) -> &str {
        self.warm_name_template
            .as_deref()
            .unwrap_or(DEFAULT_WARM_NAME_TEMPLATE)
    }
}

/// Checks one role template: its name, databases, TTLs, owner, the
/// placeholders of its statements, the `VALID UNTIL '{{expiration}}'` every
/// minted role must carry, its allow rules against the configured
/// `issuers`, its warm pool. The one check of a template, whether it comes
/// from the config file or was written through the API (`database/roles`).
pub fn validate_template(
    name: &str,
    t: &RoleTemplate,
    issuers: &[String],
) -> Result<(), ConfigError> {
    let ctx = |msg: &str| invalid(format!("roles.{name}: {msg}"));
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return Err(ctx("template names use only [a-z0-9_-], at most 63 bytes"));
    }
    if t.databases.is_empty() {
        return Err(ctx("databases is empty: no session could connect"));
    }
    if t.default_ttl.is_zero() || t.default_ttl > t.max_ttl {
        return Err(ctx("default_ttl must be positive and at most max_ttl"));
    }
    if t.owner
        .as_ref()
        .is_some_and(|o| o.trim().is_empty() || o.len() > 63)
    {
        return Err(ctx("owner must be a role name of 1 to 63 bytes"));
    }
    if t.max_ttl > MAX_CONFIGURABLE_TTL {
        return Err(ctx("max_ttl may be at most 7 days"));
    }
    if !t
        .creation_statements
        .iter()
        .any(|s| placeholder::uses(s, "name"))
    {
        return Err(ctx("creation_statements must create the role {{name}}"));
    }
    for s in &t.creation_statements {
        check_placeholders(
            &format!("roles.{name}.creation_statements"),
            s,
            &["name", "password", "expiration"],
        )?;
    }
    if !t.creation_statements.iter().any(|s| sets_expiry(s)) {
        return Err(ctx(
            "creation_statements must give the role VALID UNTIL '{{expiration}}' \
                 (for example CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' \
                 VALID UNTIL '{{expiration}}'): a role minted without an expiry could log in \
                 forever if it were never dropped",
        ));
    }
    for s in t.revocation_statements.iter().flatten() {
        check_placeholders(&format!("roles.{name}.revocation_statements"), s, &["name"])?;
    }
    validate_policy_keys(t, issuers).map_err(|e| ctx(&e))?;
    validate_warm_pool(name, t)?;
    if t.max_leases_per_principal == Some(0) || t.max_leases == Some(0) {
        return Err(ctx(
            "max_leases and max_leases_per_principal must be at least 1 \
             (to close a template to everybody, allow nobody)",
        ));
    }
    Ok(())
}

/// Whether `statement` sets the role's `VALID UNTIL` to the lease's
/// expiry: `VALID UNTIL '{{expiration}}'`, in any case and spacing. Every
/// minted role carries its expiry in PostgreSQL itself, so even a role
/// rolemint never got to drop cannot log in after its lease.
fn sets_expiry(statement: &str) -> bool {
    let parts: Vec<placeholder::Part<'_>> = match placeholder::parts(statement).collect() {
        Ok(parts) => parts,
        Err(_) => return false,
    };
    parts.windows(3).any(|w| match w {
        [placeholder::Part::Text(before), placeholder::Part::Key("expiration"), placeholder::Part::Text(after)] => {
            let words: Vec<String> = before
                .trim_end()
                .strip_suffix('\'')
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_ascii_uppercase)
                .collect();
            words.ends_with(&["VALID".to_owned(), "UNTIL".to_owned()]) && after.starts_with('\'')
        }
        _ => false,
    })
}

/// A template's warm pool: bounded, and renderable before any identity is
/// known. Its roles are minted ahead of every client, so neither their
/// names nor their `session_settings` (an `ALTER ROLE .. SET`, in force
/// from the pooled backend's login) may depend on who claims them.
fn validate_warm_pool(name: &str, t: &RoleTemplate) -> Result<(), ConfigError> {
    let ctx = |msg: String| invalid(format!("roles.{name}: {msg}"));
    if t.warm_pool > MAX_WARM_POOL {
        return Err(ctx(format!(
            "warm_pool may be at most {MAX_WARM_POOL} (per database)"
        )));
    }
    if t.warm_pool.saturating_mul(t.databases.len()) > MAX_WARM_POOL {
        return Err(ctx(format!(
            "warm_pool x databases may be at most {MAX_WARM_POOL} pooled backends"
        )));
    }
    if t.warm_lifetime < Duration::from_secs(10) || t.warm_lifetime > Duration::from_secs(24 * 3600)
    {
        return Err(ctx("warm_lifetime must be between 10s and 24h".into()));
    }
    let names = t.warm_name_template();
    if placeholder::uses(names, "identity") {
        return Err(ctx(format!(
            "warm_name_template {names:?} uses {{{{identity}}}}, but pooled roles are minted \
             before any identity is known: use {{{{template}}}}, {{{{random}}}}, {{{{unix_time}}}} \
             (the default is {DEFAULT_WARM_NAME_TEMPLATE:?})"
        )));
    }
    if !placeholder::uses(names, "random") {
        return Err(ctx(
            "warm_name_template must contain {{random}}: two roles must never collide".into(),
        ));
    }
    check_placeholders(
        &format!("roles.{name}.warm_name_template"),
        names,
        &["template", "random", "unix_time"],
    )?;
    if t.warm_pool > 0 {
        for (setting, value) in &t.session_settings {
            if ["identity", "groups", "issuer"]
                .iter()
                .any(|k| placeholder::uses(value, k))
            {
                return Err(ctx(format!(
                    "session_settings.{setting} depends on the identity ({value:?}), but a \
                     warm_pool role's settings are fixed before any identity is known: set \
                     warm_pool = 0 or use only {{{{template}}}} in session_settings"
                )));
            }
        }
    }
    Ok(())
}

/// Config checks of a template's policy keys: entries name their issuer
/// (unless `issuers` has one) and their globs compile, setting names fit
/// the alphabet, setting values use known placeholders.
pub(super) fn validate_policy_keys(t: &RoleTemplate, issuers: &[String]) -> Result<(), String> {
    allow::parse_list(&t.allow_identities, issuers)
        .map_err(|e| format!("allow_identities: {e}"))?;
    allow::parse_list(&t.allow_groups, issuers).map_err(|e| format!("allow_groups: {e}"))?;
    if let Some(a) = &t.approval {
        approval::validate(a, |list| allow::parse_list(list, issuers).map(|_| ()))?;
    }
    if t.session_settings.len() > MAX_SETTINGS {
        return Err(format!("session_settings: at most {MAX_SETTINGS} settings"));
    }
    for (name, value) in &t.session_settings {
        if !is_setting_name(name) {
            return Err(format!(
                "session_settings: \"{name}\" is not a custom setting name \
                 ([a-z_][a-z0-9_]*.[a-z0-9_.]*, e.g. rolemint.identity)"
            ));
        }
        placeholder::check(value, SETTING_KEYS)
            .map_err(|e| format!("session_settings.{name}: {e}"))?;
    }
    Ok(())
}

/// `[a-z_][a-z0-9_]*\.[a-z0-9_.]*`: a custom (dotted) setting, so that
/// no template can set a server setting such as `role` or
/// `session_authorization` from claims, and a name that needs no quoting.
pub fn is_setting_name(name: &str) -> bool {
    let Some((prefix, rest)) = name.split_once('.') else {
        return false;
    };
    let mut prefix_bytes = prefix.bytes();
    name.len() <= 63
        && prefix_bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && prefix_bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !rest.starts_with('.')
        && !rest.ends_with('.')
        && !rest.contains("..")
}

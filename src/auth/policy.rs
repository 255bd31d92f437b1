//! Who may use which template, for which database, and what the session
//! carries along.
//!
//! - A template lists who may use it: `allow_identities` and `allow_groups`,
//!   glob patterns matched on the *raw* claim values (not the sanitized
//!   ones that go into role names, which could make two identities look
//!   alike). A template with neither allows no one: deny by default, so a
//!   new template is closed until someone opens it.
//! - A denied session is told 28000 naming the template only; the log gets
//!   the rule ([`Refusal::rule`]).
//! - `bind_to_token_expiry` caps the lease at the token's `exp`.
//! - `session_settings` become `ALTER ROLE .. SET` in the mint batch
//!   ([`session_settings`]): names from a narrow alphabet, checked when the
//!   config is loaded; values are rendered from the identity here and
//!   escaped as literals by the mint.

use std::time::{Duration, SystemTime};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::auth::identity::Identity;
use crate::config::placeholder;
use crate::config::{Config, RoleTemplate};
use crate::error::ClientError;

/// Longest rendered session setting value, in bytes (PostgreSQL has no
/// small limit; this keeps a claim-stuffed token from bloating catalogs).
pub const MAX_SETTING_VALUE_BYTES: usize = 8192;
/// Most session settings per template.
const MAX_SETTINGS: usize = 32;

/// The placeholders a session setting may use.
const SETTING_KEYS: &[&str] = &["identity", "groups", "template", "issuer"];

/// A session the policy allows.
#[derive(Debug)]
pub struct Grant<'a> {
    pub template_name: &'a str,
    pub template: &'a RoleTemplate,
    /// The lease TTL the session starts with.
    pub ttl: Duration,
    /// The rule that allowed it, for the log.
    pub rule: String,
}

/// A session the policy refuses: what the client is told, and the rule
/// for the log.
#[derive(Debug)]
pub struct Refusal {
    pub error: ClientError,
    pub rule: String,
}

/// Config checks of a template's policy keys: globs compile, setting names
/// fit the alphabet, setting values use known placeholders.
pub fn validate_template(t: &RoleTemplate) -> Result<(), String> {
    globs(&t.allow_identities).map_err(|e| format!("allow_identities: {e}"))?;
    globs(&t.allow_groups).map_err(|e| format!("allow_groups: {e}"))?;
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

fn globs(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(Glob::new(p)?);
    }
    builder.build()
}

/// A template's allow lists, compiled.
#[derive(Debug, Clone)]
pub struct AllowSets {
    identities: GlobSet,
    groups: GlobSet,
}

impl AllowSets {
    fn compile(t: &RoleTemplate) -> AllowSets {
        // Validated at load; a pattern that fails here allows no one.
        AllowSets {
            identities: globs(&t.allow_identities).unwrap_or_else(|_| GlobSet::empty()),
            groups: globs(&t.allow_groups).unwrap_or_else(|_| GlobSet::empty()),
        }
    }
}

/// Which rule of `t` lets `identity` in, if any.
fn allowing_rule(t: &RoleTemplate, identity: &Identity) -> Option<String> {
    let sets = t.allow_compiled.get_or_init(|| AllowSets::compile(t));
    if let Some(i) = sets.identities.matches(&identity.subject).first() {
        return Some(format!("allow_identities \"{}\"", t.allow_identities[*i]));
    }
    let groups = &sets.groups;
    identity.groups.iter().find_map(|g| {
        groups
            .matches(g)
            .first()
            .map(|i| format!("allow_groups \"{}\" (group \"{g}\")", t.allow_groups[*i]))
    })
}

/// Decides whether `identity` may open a session of `template` on `database`.
pub fn authorize<'a>(
    config: &'a Config,
    identity: &Identity,
    template: &str,
    database: &str,
) -> Result<Grant<'a>, Refusal> {
    let refuse = |error, rule: &str| Refusal {
        error,
        rule: rule.to_owned(),
    };
    let Some((template_name, t)) = config.roles.get_key_value(template) else {
        return Err(refuse(
            ClientError::UnknownTemplate(template.to_owned()),
            "no such template",
        ));
    };
    let Some(rule) = allowing_rule(t, identity) else {
        let rule = if t.allow_identities.is_empty() && t.allow_groups.is_empty() {
            "the template allows no one (no allow_identities or allow_groups)"
        } else {
            "no allow_identities or allow_groups pattern matches"
        };
        return Err(refuse(
            ClientError::TemplateNotAllowed(template_name.clone()),
            rule,
        ));
    };
    if !t.databases.iter().any(|d| d == database) {
        return Err(refuse(
            ClientError::DatabaseNotAllowed {
                database: database.to_owned(),
                template: template_name.clone(),
            },
            "database not in the template's databases",
        ));
    }
    let mut ttl = t.default_ttl;
    if t.bind_to_token_expiry {
        let left = identity
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // VALID UNTIL has whole seconds; a token with less than one left
        // is as good as expired.
        let left = Duration::from_secs(left.as_secs());
        if left.is_zero() {
            return Err(refuse(ClientError::BadToken, "token expires now"));
        }
        ttl = ttl.min(left);
    }
    Ok(Grant {
        template_name,
        template: t,
        ttl,
        rule,
    })
}

/// The template's `session_settings` rendered for `identity` and checked:
/// `(name, value)` pairs, each name from the narrow alphabet (checked again
/// here, for a config that skipped validation), each value at most
/// [`MAX_SETTING_VALUE_BYTES`] and free of NUL (which no SQL literal can
/// hold). `{{groups}}` is the groups joined by `,`. The mint escapes each
/// value with `escape_literal`.
pub fn session_settings(
    template_name: &str,
    t: &RoleTemplate,
    identity: &Identity,
) -> Result<Vec<(String, String)>, String> {
    let groups = identity.groups.join(",");
    t.session_settings
        .iter()
        .map(|(name, value)| {
            if !is_setting_name(name) {
                return Err(format!("session setting name {name:?} refused"));
            }
            let value = placeholder::render(value, |key| match key {
                "identity" => Some(identity.subject.as_str()),
                "groups" => Some(groups.as_str()),
                "template" => Some(template_name),
                "issuer" => Some(identity.issuer.as_str()),
                _ => None,
            })
            .map_err(|e| format!("session setting {name}: {e}"))?;
            if value.len() > MAX_SETTING_VALUE_BYTES || value.contains('\0') {
                return Err(format!(
                    "session setting {name}: value longer than {MAX_SETTING_VALUE_BYTES} bytes or has NUL"
                ));
            }
            Ok((name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = crate::config::tests::EXAMPLE.replace(
            "[roles.readonly]\n",
            &format!("[roles.readonly]\n{extra}\n"),
        );
        let c = Config::parse(&text).unwrap();
        c.validate().unwrap();
        c
    }

    fn who(subject: &str, groups: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
            issuer: "local".into(),
        }
    }

    #[test]
    fn allows_listed_databases_with_the_default_ttl() {
        let c = config("allow_identities = [\"alice\"]");
        let g = authorize(&c, &who("alice", &[]), "readonly", "appdb").unwrap();
        assert_eq!(g.template_name, "readonly");
        assert_eq!(g.ttl, Duration::from_secs(3600));
        assert!(g.rule.contains("alice"));
    }

    #[test]
    fn refuses_unknown_templates_and_other_databases() {
        let c = config("allow_identities = [\"*\"]");
        let e = authorize(&c, &who("alice", &[]), "admin", "appdb").unwrap_err();
        assert_eq!(e.error.sqlstate(), "28000");
        let e = authorize(&c, &who("alice", &[]), "readonly", "postgres").unwrap_err();
        assert_eq!(e.error.sqlstate(), "3D000");
    }

    #[test]
    fn a_template_without_rules_allows_no_one() {
        let c = config("");
        let e = authorize(&c, &who("alice", &["dba"]), "readonly", "appdb").unwrap_err();
        assert_eq!(e.error, ClientError::TemplateNotAllowed("readonly".into()));
        assert!(e.rule.contains("allows no one"), "{}", e.rule);
        // The client's message names the template, never the rules.
        assert!(!e.error.to_string().contains("allow_"));
    }

    #[test]
    fn identity_and_group_globs_match_raw_values() {
        let c = config("allow_identities = [\"svc-*\"]\nallow_groups = [\"eng-*\", \"dba\"]");
        let ok = |s, g: &[&str]| authorize(&c, &who(s, g), "readonly", "appdb").is_ok();
        assert!(ok("svc-billing", &[]));
        assert!(ok("bob", &["eng-web"]));
        assert!(ok("bob", &["x", "dba"]));
        assert!(!ok("bob", &["dbas", "eng"]));
        // Raw values: "SVC-x" sanitizes to "svc-x" in role names, but is
        // not "svc-*".
        assert!(!ok("SVC-billing", &[]));
        assert!(!ok("alice", &[]));
    }

    #[test]
    fn bind_to_token_expiry_caps_the_ttl() {
        let c = config("allow_identities = [\"*\"]\nbind_to_token_expiry = true");
        let g = authorize(&c, &who("a", &[]), "readonly", "appdb").unwrap();
        assert!(g.ttl <= Duration::from_secs(600) && g.ttl >= Duration::from_secs(598));
        let mut late = who("a", &[]);
        late.expires_at = SystemTime::now();
        let e = authorize(&c, &late, "readonly", "appdb").unwrap_err();
        assert_eq!(e.error.sqlstate(), "28P01");
    }

    #[test]
    fn setting_names_are_narrow_and_values_rendered() {
        for good in ["rolemint.identity", "app.tenant_id", "_x.y.z"] {
            assert!(is_setting_name(good), "{good}");
        }
        for bad in [
            "role",
            "Rolemint.identity",
            "a.",
            "a..b",
            ".a",
            "a.b;drop",
            "a.b c",
            "a.\"b\"",
            "search_path",
        ] {
            assert!(!is_setting_name(bad), "{bad}");
        }
        let c = config(
            "allow_identities = [\"*\"]\nsession_settings = { \"rolemint.identity\" = \"{{identity}}\", \"rolemint.groups\" = \"{{groups}}\" }",
        );
        let t = &c.roles["readonly"];
        let s = session_settings("readonly", t, &who("o'brien", &["a", "b"])).unwrap();
        assert_eq!(
            s,
            [
                ("rolemint.groups".to_string(), "a,b".to_string()),
                ("rolemint.identity".to_string(), "o'brien".to_string())
            ]
        );
        let text = crate::config::tests::EXAMPLE.replace(
            "[roles.readonly]\n",
            "[roles.readonly]\nsession_settings = { \"role\" = \"{{identity}}\" }\n",
        );
        assert!(Config::parse(&text).unwrap().validate().is_err());
    }

    #[test]
    fn claims_are_rendered_once_and_spaced_placeholders_render() {
        let c = config(
            "allow_identities = [\"*\"]\nsession_settings = { \"rolemint.identity\" = \"{{ identity }}\", \"rolemint.groups\" = \"{{groups}}\" }",
        );
        let t = &c.roles["readonly"];
        // A subject that looks like a placeholder is a value, not a template.
        let s = session_settings("readonly", t, &who("{{groups}}", &["{{template}}"])).unwrap();
        assert_eq!(
            s,
            [
                ("rolemint.groups".to_string(), "{{template}}".to_string()),
                ("rolemint.identity".to_string(), "{{groups}}".to_string())
            ]
        );
    }
}

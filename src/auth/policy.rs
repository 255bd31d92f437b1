//! Who may use which template, for which database, and what the session
//! carries along.
//!
//! - A template lists who may use it: `allow_identities` and `allow_groups`,
//!   glob patterns matched on the *raw* claim values (not the sanitized
//!   ones that go into role names, which could make two identities look
//!   alike). A template with neither allows no one: deny by default, so a
//!   new template is closed until someone opens it.
//! - A principal is `(issuer, identity)`: two issuers' `alice` are two
//!   people. So an entry names its issuer, `"corp:alice"`,
//!   `"k8s-prod:system:serviceaccount:prod:*"` (`"*:..."`: every issuer;
//!   a bare `"*"`: everyone). An entry without one is refused at load
//!   ([`crate::config::allow::AllowEntry::parse`]) unless exactly one
//!   issuer is configured, which it then means.
//! - A denied session is told 28000 naming the template only; the log gets
//!   the rule ([`Refusal::rule`]).
//! - A Vault token is entitled by its policies instead
//!   ([`Entitlement::Policies`]): `read` on `<database mount>/creds/<T>`
//!   opens template `T`, on the proxy door as on the HTTP door.
//! - `bind_to_token_expiry` caps the lease at the token's `exp`.
//! - `session_settings` become `ALTER ROLE .. SET` in the mint batch
//!   ([`session_settings`]): names from a narrow alphabet, checked when the
//!   config is loaded; values are rendered from the identity here and
//!   escaped as literals by the mint.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use globset::GlobMatcher;

use crate::auth::acl::{Acl, Capability};
use crate::auth::identity::Identity;
use crate::config::placeholder;
pub use crate::config::templates::is_setting_name;
use crate::config::{AuthConfig, Config, RoleTemplate};
use crate::error::ClientError;

/// Longest rendered session setting value, in bytes (PostgreSQL has no
/// small limit; this keeps a claim-stuffed token from bloating catalogs).
pub const MAX_SETTING_VALUE_BYTES: usize = 8192;

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

/// One `allow_identities` / `allow_groups` entry, compiled: the issuer
/// it means and the matcher of its glob on the raw claim (the syntax is
/// the config's, [`crate::config::allow`]).
#[derive(Debug, Clone)]
struct AllowEntry {
    /// `None`: any issuer (`"*"`, `"*:pattern"`).
    issuer: Option<String>,
    glob: GlobMatcher,
}

impl AllowEntry {
    fn matches(&self, issuer: &str, value: &str) -> bool {
        self.issuer.as_deref().is_none_or(|i| i == issuer) && self.glob.is_match(value)
    }
}

fn entries(list: &[String], issuers: &[String]) -> Result<Vec<AllowEntry>, String> {
    let parsed = crate::config::allow::parse_list(list, issuers)?;
    Ok(parsed
        .into_iter()
        .map(|e| AllowEntry {
            issuer: e.issuer,
            glob: e.glob.compile_matcher(),
        })
        .collect())
}

/// Every template's allow lists, compiled: built with each runtime
/// (`runtime::state::Runtime::build`, and again when a reload or a store
/// change swaps in new templates), so a connection only matches.
#[derive(Debug, Default)]
pub struct Policy {
    templates: BTreeMap<String, AllowSets>,
}

impl Policy {
    /// The allow lists of every template of `config`, against its issuers.
    pub fn compile(config: &Config) -> Policy {
        let issuers = config.auth.issuer_names();
        let templates = config
            .roles
            .iter()
            .map(|(name, t)| (name.clone(), AllowSets::compile(t, &issuers)))
            .collect();
        Policy { templates }
    }
}

/// A template's allow lists, compiled.
#[derive(Debug, Clone)]
struct AllowSets {
    identities: Vec<AllowEntry>,
    groups: Vec<AllowEntry>,
}

impl AllowSets {
    fn compile(t: &RoleTemplate, issuers: &[String]) -> AllowSets {
        // Validated at load; a list that fails here allows no one.
        AllowSets {
            identities: entries(&t.allow_identities, issuers).unwrap_or_default(),
            groups: entries(&t.allow_groups, issuers).unwrap_or_default(),
        }
    }
}

/// Which rule of template `name` (`t`) lets `identity` in, if any: an
/// entry of its issuer (or of every issuer) matching its identity or one
/// of its groups. A template `policy` did not compile allows no one.
fn allowing_rule(
    policy: &Policy,
    name: &str,
    t: &RoleTemplate,
    identity: &Identity,
) -> Option<String> {
    let sets = policy.templates.get(name)?;
    let issuer = identity.issuer.as_str();
    if let Some(i) = sets
        .identities
        .iter()
        .position(|e| e.matches(issuer, &identity.subject))
    {
        return Some(format!("allow_identities \"{}\"", t.allow_identities[i]));
    }
    identity.groups.iter().find_map(|g| {
        sets.groups
            .iter()
            .position(|e| e.matches(issuer, g))
            .map(|i| format!("allow_groups \"{}\" (group \"{g}\")", t.allow_groups[i]))
    })
}

/// What entitles a caller to a template.
#[derive(Debug, Clone, Copy)]
pub enum Entitlement<'a> {
    /// The template's `allow_identities` / `allow_groups` (an identity
    /// token, or a login without an auth role).
    AllowLists,
    /// Vault policies (a Vault token; an identity token holds `default`):
    /// `read` on `<database mount>/creds/<template>`, as Vault asks of
    /// `vault read database/creds/<template>`; failing that, the allow
    /// lists, which keep working beside policies.
    Policies {
        acl: &'a Acl,
        database_mount: &'a str,
    },
}

/// Whether `acl` grants the template `template`: `read` on its creds path
/// under the database mount, the one policy language for both doors.
pub fn acl_grants_template(acl: &Acl, database_mount: &str, template: &str) -> bool {
    let mount = database_mount.trim_matches('/');
    acl.allows(
        &format!("{mount}/creds/{template}"),
        Capability::Read,
        false,
    )
}

/// Who may approve access requests, by a template's `approval` rule:
/// its `approvers` and `approver_groups`, issuer-qualified like the allow
/// lists and matched the same way.
pub struct ApprovalRules<'a> {
    pub auth: &'a AuthConfig,
}

impl crate::auth::access::Approvers for ApprovalRules<'_> {
    fn may_approve(&self, approval: &crate::config::approval::Approval, who: &Identity) -> bool {
        let issuers = self.auth.issuer_names();
        let (Ok(ids), Ok(groups)) = (
            entries(&approval.approvers, &issuers),
            entries(&approval.approver_groups, &issuers),
        ) else {
            return false;
        };
        ids.iter().any(|e| e.matches(&who.issuer, &who.subject))
            || who
                .groups
                .iter()
                .any(|g| groups.iter().any(|e| e.matches(&who.issuer, g)))
    }
}

/// For a template with an `approval` rule: the approved access request of
/// `identity` that covers it now, or the refusal naming `rolemint request`;
/// the grant's end caps the lease (so the session ends, 57P01, when the
/// grant does). A template without the rule passes untouched.
pub fn require_approval(
    grant: &mut Grant<'_>,
    identity: &Identity,
    requests: &[crate::auth::access::Request],
    now: SystemTime,
) -> Result<(), Refusal> {
    if grant.template.approval.is_none() {
        return Ok(());
    }
    let who = crate::auth::access::Principal::of(identity);
    let Some(request) = crate::auth::access::active_grant(requests, &who, grant.template_name, now)
    else {
        return Err(Refusal {
            error: ClientError::ApprovalRequired(grant.template_name.to_owned()),
            rule: "no approved access request covers this identity and template".into(),
        });
    };
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(request.granted_until.unwrap_or(0));
    let left = until.duration_since(now).unwrap_or_default();
    grant.ttl = grant.ttl.min(Duration::from_secs(left.as_secs()));
    grant.rule = format!("{}; access request {}", grant.rule, request.id);
    Ok(())
}

/// Decides whether `identity` may open a session of `template` on
/// `database`, by the templates of `config` and their allow lists as
/// `policy` compiled them (the two of one runtime).
pub fn authorize<'a>(
    config: &'a Config,
    policy: &Policy,
    identity: &Identity,
    template: &str,
    database: &str,
) -> Result<Grant<'a>, Refusal> {
    authorize_with(
        config,
        policy,
        identity,
        template,
        database,
        Entitlement::AllowLists,
    )
}

/// [`authorize`], entitled by allow lists or by policies.
pub fn authorize_with<'a>(
    config: &'a Config,
    policy: &Policy,
    identity: &Identity,
    template: &str,
    database: &str,
    entitlement: Entitlement<'_>,
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
    let allowed = match entitlement {
        Entitlement::AllowLists => allowing_rule(policy, template_name, t, identity),
        Entitlement::Policies {
            acl,
            database_mount,
        } => acl_grants_template(acl, database_mount, template_name)
            .then(|| format!("policy: read on {database_mount}/creds/{template_name}"))
            .or_else(|| allowing_rule(policy, template_name, t, identity)),
    };
    let Some(rule) = allowed else {
        let rule = match entitlement {
            Entitlement::Policies { .. } => {
                "no policy grants read on the template's creds path, and no allow_identities \
                 or allow_groups pattern matches"
            }
            _ if t.allow_identities.is_empty() && t.allow_groups.is_empty() => {
                "the template allows no one (no allow_identities or allow_groups)"
            }
            _ => "no allow_identities or allow_groups pattern matches",
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

    /// [`super::authorize`] with the policy compiled from `c`, as
    /// `Runtime::build` compiles it.
    fn authorize<'a>(
        c: &'a Config,
        identity: &Identity,
        template: &str,
        database: &str,
    ) -> Result<Grant<'a>, Refusal> {
        super::authorize(c, &Policy::compile(c), identity, template, database)
    }

    /// [`super::authorize_with`], the same way.
    fn authorize_with<'a>(
        c: &'a Config,
        identity: &Identity,
        template: &str,
        database: &str,
        entitlement: Entitlement<'_>,
    ) -> Result<Grant<'a>, Refusal> {
        super::authorize_with(
            c,
            &Policy::compile(c),
            identity,
            template,
            database,
            entitlement,
        )
    }

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

    /// The example config with a second issuer, `corp`, and `allow` as the
    /// readonly template's allow lines.
    fn two_issuers(allow: &str) -> Result<Config, String> {
        let text = crate::config::tests::EXAMPLE
            .replace("[roles.readonly]\n", &format!("[roles.readonly]\n{allow}\n"))
            .replace(
                "[roles.readonly]",
                "[[auth.issuers]]\nname = \"corp\"\nissuer = \"https://corp.example\"\n\
                 algorithms = [\"HS256\"]\nhs256_secret = \"corp-secret-0123456789abcdef0123456789\"\n\n\
                 [roles.readonly]",
            );
        let c = Config::parse(&text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_principal_is_issuer_and_identity() {
        let c = two_issuers("allow_identities = [\"local:alice\"]\nallow_groups = [\"corp:dba\"]")
            .unwrap();
        let from = |issuer: &str, subject: &str, groups: &[&str]| Identity {
            issuer: issuer.into(),
            ..who(subject, groups)
        };
        let ok = |i: &Identity| authorize(&c, i, "readonly", "appdb").is_ok();
        assert!(ok(&from("local", "alice", &[])));
        // corp's alice is not local's alice; local's dba group is not corp's.
        assert!(!ok(&from("corp", "alice", &[])));
        assert!(ok(&from("corp", "bob", &["dba"])));
        assert!(!ok(&from("local", "bob", &["dba"])));
        // "*:" and a bare "*" mean every issuer.
        let c = two_issuers("allow_identities = [\"*:alice\"]").unwrap();
        assert!(authorize(&c, &from("corp", "alice", &[]), "readonly", "appdb").is_ok());
        let c = two_issuers("allow_identities = [\"*\"]").unwrap();
        assert!(authorize(&c, &from("corp", "zed", &[]), "readonly", "appdb").is_ok());
    }

    #[test]
    fn an_entry_without_its_issuer_is_refused_when_there_are_several() {
        let err = two_issuers("allow_identities = [\"alice\"]").unwrap_err();
        assert!(
            err.contains("\"alice\" does not say which issuer")
                && err.contains("local, corp")
                && err.contains("\"local:alice\""),
            "{err}"
        );
        let err = two_issuers("allow_groups = [\"system:masters\"]").unwrap_err();
        assert!(err.contains("allow_groups"), "{err}");
        // With one issuer, an unqualified entry means it.
        let c = config("allow_identities = [\"alice\"]");
        assert!(authorize(&c, &who("alice", &[]), "readonly", "appdb").is_ok());
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
    fn a_policy_granting_read_on_the_creds_path_opens_the_template() {
        use crate::auth::acl::Policy;
        // The template allows no one by its lists; the policy opens it.
        let c = config("");
        let p = Policy::parse(
            "apps",
            r#"path "database/creds/readonly" { capabilities = ["read"] }"#,
        )
        .unwrap();
        let acl = Acl::new([&p]);
        let by = |mount| Entitlement::Policies {
            acl: &acl,
            database_mount: mount,
        };
        let id = who("token-alice", &[]);
        let g = authorize_with(&c, &id, "readonly", "appdb", by("database")).unwrap();
        assert!(g.rule.contains("policy"), "{}", g.rule);
        // Another mount, another path; the databases check still applies.
        let e = authorize_with(&c, &id, "readonly", "appdb", by("db2")).unwrap_err();
        assert_eq!(e.error.sqlstate(), "28000");
        assert!(e.rule.contains("no policy grants"), "{}", e.rule);
        let e = authorize_with(&c, &id, "readonly", "postgres", by("database")).unwrap_err();
        assert_eq!(e.error.sqlstate(), "3D000");
        // The default policy opens nothing; the allow lists still do.
        let d = Acl::new([&Policy::default_policy()]);
        let by_default = Entitlement::Policies {
            acl: &d,
            database_mount: "database",
        };
        assert!(authorize_with(&c, &id, "readonly", "appdb", by_default).is_err());
        let open = config("allow_identities = [\"token-*\"]");
        let g = authorize_with(&open, &id, "readonly", "appdb", by_default).unwrap();
        assert!(g.rule.contains("allow_identities"), "{}", g.rule);
        assert!(acl_grants_template(&Acl::root(), "/database/", "readonly"));
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

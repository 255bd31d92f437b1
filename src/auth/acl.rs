//! Vault's ACL policies: HCL text in, capabilities on a path out. Sans-IO:
//! no store, no HTTP; the door and the proxy ask it questions.
//!
//! - [`Policy::parse`] reads a policy as Vault does (`vault/policy.go`,
//!   `parseACLPolicyWithTemplating`): `path "P" { capabilities = [...] }`
//!   blocks (and the old `policy = "read"` shorthand), an optional `name`,
//!   nothing else. A leading `/` is dropped; a trailing `*` makes a prefix
//!   rule; a `+` segment (`a/+/b`) matches any one segment; `+*` is
//!   refused. The JSON form (`{"path": {"P": {...}}}`) is read too, as
//!   Vault's HCL 1 parser reads it. The text is read in `parse.rs`; this
//!   file holds what a policy means.
//! - [`Acl::new`] merges policies as Vault's `NewACL` does: rules on the
//!   same path add up, and a `deny` on a path wipes every other
//!   capability on that path, whichever policy wrote it.
//! - [`Acl::capabilities`] picks the one rule that applies, as Vault's
//!   `AllowOperation` does: an exact rule first; otherwise, among the
//!   prefix and `+` rules that match, the most specific by Vault's order
//!   (`CheckAllowedFromNonExactPaths`): the later the first `+` or `*`,
//!   the more specific; then a non-prefix beats a prefix; then fewer `+`
//!   segments; then the longer path. Capabilities of less specific rules
//!   do not add up: `secret/*` with `read` and `secret/a` with `list`
//!   leave `secret/a` list-only, as in Vault.
//!
//! Parameter constraints (`allowed_parameters`, `denied_parameters`,
//! `required_parameters`), wrapping TTLs, MFA and control groups are
//! refused when a policy is written: rolemint cannot honour them, and a
//! policy that silently lost a restriction would grant more than it says.
//! Identity templating (`{{identity.entity.id}}`) is not expanded: such a
//! path matches only itself.

use std::collections::{BTreeMap, HashMap};

mod parse;

/// Longest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Most `path` blocks in one policy.
pub const MAX_PATHS: usize = 1_000;
/// Longest path in a rule.
const MAX_PATH_BYTES: usize = 1_024;
/// Longest policy name.
pub const MAX_NAME_BYTES: usize = 128;

/// The policy every token carries unless told otherwise (Vault's
/// `default`, as Vault writes it at init, less the identity-templated
/// paths rolemint does not expand). It can be rewritten through
/// `sys/policy/default`, never deleted.
pub const DEFAULT_POLICY: &str = r#"# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its resultant ACL from all policies
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}
"#;

/// What a policy, or the door, can say about a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Not a policy; the text is Vault's ("failed to parse policy: ...").
    #[error("failed to parse policy: {0}")]
    Parse(String),
    #[error("invalid policy name {0:?}: use 1-128 of a-z, 0-9, '-', '_', '.', '@'")]
    Name(String),
}

fn parse_error(message: impl Into<String>) -> AclError {
    AclError::Parse(message.into())
}

/// One capability of Vault's policy language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Deny,
    Create,
    Read,
    Update,
    Delete,
    List,
    Sudo,
    Patch,
}

impl Capability {
    /// Vault's order in `capabilities` answers.
    const ALL: [Capability; 8] = [
        Capability::Sudo,
        Capability::Read,
        Capability::List,
        Capability::Update,
        Capability::Delete,
        Capability::Create,
        Capability::Patch,
        Capability::Deny,
    ];

    /// The word a policy writes (Vault's constants, lower case only).
    pub fn parse(word: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Deny => "deny",
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
            Capability::Patch => "patch",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of capabilities. A set holding `deny` holds nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u16);

impl Capabilities {
    /// Every capability but `deny`: what the root policy has everywhere.
    pub fn all() -> Capabilities {
        Capability::ALL
            .into_iter()
            .filter(|c| *c != Capability::Deny)
            .fold(Capabilities::default(), |s, c| s.with(c))
    }

    fn with(self, c: Capability) -> Capabilities {
        if c == Capability::Deny || self.is_denied() {
            return Capabilities(Capability::Deny.bit());
        }
        Capabilities(self.0 | c.bit())
    }

    /// Vault's merge of two rules on the same path: deny wins, else union.
    fn merge(self, other: Capabilities) -> Capabilities {
        if self.is_denied() || other.is_denied() {
            Capabilities(Capability::Deny.bit())
        } else {
            Capabilities(self.0 | other.0)
        }
    }

    pub fn is_denied(self) -> bool {
        self.0 & Capability::Deny.bit() != 0
    }

    /// Whether the set grants `c` (never when denied).
    pub fn grants(self, c: Capability) -> bool {
        !self.is_denied() && c != Capability::Deny && self.0 & c.bit() != 0
    }

    /// The names, in Vault's order; `["deny"]` for a denied or empty set,
    /// as `sys/capabilities` answers.
    pub fn names(self) -> Vec<&'static str> {
        if self.is_denied() || self.0 == 0 {
            return vec!["deny"];
        }
        Capability::ALL
            .into_iter()
            .filter(|c| self.grants(*c))
            .map(Capability::as_str)
            .collect()
    }
}

/// How a rule's path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The path itself.
    Exact,
    /// Every path starting with it (written with a trailing `*`).
    Prefix,
    /// Has `+` segments; the path keeps its trailing `*`, if any.
    Segments,
}

/// One `path` block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    path: String,
    kind: Kind,
    capabilities: Capabilities,
}

/// A parsed policy: its name, the text it was written as (what a read
/// returns), and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    raw: String,
    rules: Vec<Rule>,
}

/// A policy name as Vault stores it: lower case (Vault lower-cases
/// names), from a narrow alphabet rolemint also uses in log lines.
pub fn normalize_name(name: &str) -> Result<String, AclError> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= MAX_NAME_BYTES
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.@".contains(&b));
    if ok {
        Ok(lower)
    } else {
        Err(AclError::Name(name.chars().take(MAX_NAME_BYTES).collect()))
    }
}

impl Policy {
    /// Parses `text` (HCL, or its JSON form) as the policy `name`.
    pub fn parse(name: &str, text: &str) -> Result<Policy, AclError> {
        let name = normalize_name(name)?;
        if text.len() > MAX_POLICY_BYTES {
            return Err(parse_error(format!(
                "policy longer than {MAX_POLICY_BYTES} bytes"
            )));
        }
        let rules = parse::rules(text)?;
        Ok(Policy {
            name,
            raw: text.to_owned(),
            rules,
        })
    }

    /// The built-in `default` policy.
    pub fn default_policy() -> Policy {
        // The text is a constant tested below: it always parses.
        Policy::parse("default", DEFAULT_POLICY).unwrap_or_else(|_| Policy {
            name: "default".into(),
            raw: DEFAULT_POLICY.into(),
            rules: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }
}

/// The merged rules of a set of policies: what one caller may do.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Holds the `root` policy: everything, everywhere.
    root: bool,
    exact: HashMap<String, Capabilities>,
    prefix: BTreeMap<String, Capabilities>,
    segments: BTreeMap<String, Capabilities>,
}

impl Acl {
    /// The root policy's ACL.
    pub fn root() -> Acl {
        Acl {
            root: true,
            ..Acl::default()
        }
    }

    /// The merge of `policies`. A policy named `root` makes it root.
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Acl {
        let mut acl = Acl::default();
        for policy in policies {
            if policy.name == "root" {
                acl.root = true;
            }
            for rule in &policy.rules {
                let map = match rule.kind {
                    Kind::Exact => &mut acl.exact,
                    Kind::Prefix => {
                        merge_into(&mut acl.prefix, &rule.path, rule.capabilities);
                        continue;
                    }
                    Kind::Segments => {
                        merge_into(&mut acl.segments, &rule.path, rule.capabilities);
                        continue;
                    }
                };
                map.entry(rule.path.clone())
                    .and_modify(|c| *c = c.merge(rule.capabilities))
                    .or_insert(rule.capabilities);
            }
        }
        acl
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The capabilities on `path` (no leading `/`). `list`: the request is
    /// a LIST, whose path Vault ends with `/` and also matches without it.
    pub fn capabilities(&self, path: &str, list: bool) -> Capabilities {
        if self.root {
            return Capabilities::all();
        }
        let path = path.trim_start_matches('/');
        if let Some(c) = self.exact.get(path) {
            return *c;
        }
        let bare = path.strip_suffix('/');
        if list {
            if let Some(c) = bare.and_then(|p| self.exact.get(p)) {
                return *c;
            }
            if let Some(c) = bare.and_then(|p| self.non_exact(p)) {
                return c;
            }
        }
        self.non_exact(path).unwrap_or_default()
    }

    /// Whether `capability` is granted on `path`, and `sudo` too when
    /// `sudo` is asked for.
    pub fn allows(&self, path: &str, capability: Capability, sudo: bool) -> bool {
        let c = self.capabilities(path, capability == Capability::List);
        c.grants(capability) && (!sudo || c.grants(Capability::Sudo))
    }

    /// The most specific prefix or `+` rule matching `path`.
    fn non_exact(&self, path: &str) -> Option<Capabilities> {
        // Longest matching prefix rule (a radix tree's LongestPrefix).
        let prefix = self
            .prefix
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(p, c)| Candidate {
                first_wildcard: p.len(),
                is_prefix: true,
                wildcards: 0,
                path: p,
                capabilities: *c,
            });
        let parts: Vec<&str> = path.split('/').collect();
        let segments = self
            .segments
            .iter()
            .filter_map(|(full, c)| segment_match(full, &parts, *c));
        prefix
            .into_iter()
            .chain(segments)
            .max_by(Candidate::priority)
            .map(|c| c.capabilities)
    }
}

/// Where named policies are kept (the store, at run time): the text of
/// one by its lower-case name.
pub trait PolicyTexts: Send + Sync {
    fn text(&self, name: &str) -> Option<String>;
}

/// No stored policies: only the built-in `default` and `root`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinOnly;

impl PolicyTexts for BuiltinOnly {
    fn text(&self, _: &str) -> Option<String> {
        None
    }
}

/// Most compiled policies kept; past it the cache starts over (it only
/// saves parsing).
const MAX_CACHED: usize = 4_096;

/// Compiled policies by name, parsed again only when their text changes:
/// a request names its caller's policies, and parsing HCL on every
/// request would be waste.
#[derive(Debug, Default)]
pub struct PolicyCache {
    compiled: std::sync::Mutex<HashMap<String, std::sync::Arc<Policy>>>,
}

impl PolicyCache {
    /// The ACL of a caller holding the policies `names`. `root` is root;
    /// `default` is the stored one, else the built-in; a name with no
    /// stored policy, or whose stored text no longer parses, adds
    /// nothing (as Vault ignores a token's deleted policies).
    pub fn acl(&self, names: &[String], stored: &dyn PolicyTexts) -> Acl {
        if names.iter().any(|n| n == "root") {
            return Acl::root();
        }
        let policies: Vec<std::sync::Arc<Policy>> = names
            .iter()
            .filter_map(|name| self.policy(name, stored))
            .collect();
        Acl::new(policies.iter().map(|p| p.as_ref()))
    }

    /// The compiled policy `name`, if there is one.
    pub fn policy(&self, name: &str, stored: &dyn PolicyTexts) -> Option<std::sync::Arc<Policy>> {
        let text = match stored.text(name) {
            Some(text) => text,
            None if name == "default" => DEFAULT_POLICY.to_owned(),
            None => return None,
        };
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = compiled.get(name).filter(|p| p.raw == text) {
            return Some(std::sync::Arc::clone(p));
        }
        let policy = match Policy::parse(name, &text) {
            Ok(p) => std::sync::Arc::new(p),
            Err(e) => {
                tracing::warn!(policy = name, "stored policy ignored: {e}");
                return None;
            }
        };
        if compiled.len() >= MAX_CACHED {
            compiled.clear();
        }
        compiled.insert(name.to_owned(), std::sync::Arc::clone(&policy));
        Some(policy)
    }
}

fn merge_into(map: &mut BTreeMap<String, Capabilities>, path: &str, c: Capabilities) {
    map.entry(path.to_owned())
        .and_modify(|old| *old = old.merge(c))
        .or_insert(c);
}

/// A matching non-exact rule, described as Vault's `wcPathDescr`.
struct Candidate<'a> {
    first_wildcard: usize,
    is_prefix: bool,
    wildcards: usize,
    path: &'a str,
    capabilities: Capabilities,
}

impl Candidate<'_> {
    /// Vault's priority: the greater wins.
    fn priority(a: &Self, b: &Self) -> std::cmp::Ordering {
        a.first_wildcard
            .cmp(&b.first_wildcard)
            .then(b.is_prefix.cmp(&a.is_prefix))
            .then(b.wildcards.cmp(&a.wildcards))
            .then(a.path.len().cmp(&b.path.len()))
            .then(a.path.cmp(b.path))
    }
}

/// Whether the `+` rule `full` matches the path split into `parts`.
fn segment_match<'a>(full: &'a str, parts: &[&str], c: Capabilities) -> Option<Candidate<'a>> {
    let first_wildcard = full.find('+')?;
    let (path, is_prefix) = match full.strip_suffix('*') {
        Some(p) => (p, true),
        None => (full, false),
    };
    let rule: Vec<&str> = path.split('/').collect();
    if parts.len() < rule.len() || (!is_prefix && parts.len() != rule.len()) {
        return None;
    }
    let mut wildcards = 0;
    for (i, (want, got)) in rule.iter().zip(parts).enumerate() {
        if *want == "+" {
            wildcards += 1;
        } else if want != got && !(is_prefix && i == rule.len() - 1 && got.starts_with(want)) {
            return None;
        }
    }
    Some(Candidate {
        first_wildcard,
        is_prefix,
        wildcards,
        path,
        capabilities: c,
    })
}

#[cfg(test)]
mod tests;

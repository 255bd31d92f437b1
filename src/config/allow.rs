//! The allow-list syntax of templates (`allow_identities`,
//! `allow_groups`) and of approval rules (`approvers`,
//! `approver_groups`): `"ISSUER:GLOB"`.
//!
//! A principal is `(issuer, identity)`, so an entry names its issuer:
//! `"corp:alice"`, `"k8s-prod:system:serviceaccount:prod:*"`
//! (`"*:..."`: every issuer; a bare `"*"`: everyone). An entry without one
//! is refused at load unless exactly one issuer is configured, which it
//! then means. Parsed here, once, for the config's checks and for
//! `auth::policy`, which compiles each glob to a matcher.

use globset::Glob;

/// One entry as written: the issuer it means and its glob on the raw
/// claim value.
#[derive(Debug, Clone)]
pub struct AllowEntry {
    /// `None`: any issuer (`"*"`, `"*:pattern"`).
    pub issuer: Option<String>,
    pub glob: Glob,
}

impl AllowEntry {
    /// `"ISSUER:PATTERN"` when the text before the first `:` is a
    /// configured issuer name or `*`; a bare `"*"` is everyone. Anything
    /// else means the single configured issuer, and is refused (saying how
    /// to write it) when there are several: the entry could be anyone's.
    pub fn parse(entry: &str, issuers: &[String]) -> Result<AllowEntry, String> {
        let (issuer, pattern) = match entry.split_once(':') {
            _ if entry == "*" => (None, entry),
            Some(("*", rest)) => (None, rest),
            Some((name, rest)) if issuers.iter().any(|i| i == name) => (Some(name.to_owned()), rest),
            _ => match issuers {
                [only] => (Some(only.clone()), entry),
                _ => {
                    return Err(format!(
                        "\"{entry}\" does not say which issuer it means, and {} are configured ({}): \
                         write \"ISSUER:{entry}\", e.g. \"{}:{entry}\" (\"*:{entry}\" for every issuer)",
                        issuers.len(),
                        issuers.join(", "),
                        issuers.first().map_or("local", String::as_str),
                    ))
                }
            },
        };
        let glob = Glob::new(pattern).map_err(|e| e.to_string())?;
        Ok(AllowEntry { issuer, glob })
    }
}

/// Every entry of `list`, or the first that does not parse.
pub fn parse_list(list: &[String], issuers: &[String]) -> Result<Vec<AllowEntry>, String> {
    list.iter().map(|e| AllowEntry::parse(e, issuers)).collect()
}

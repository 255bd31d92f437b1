//! Access requests in the config: a template's `approval` rule, and the
//! `[access]` section (how long a request waits, the webhook).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// `[roles.NAME] approval = { ... }`: sessions and credential leases of
/// the template need an access request that other people approved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Who may approve: identities, issuer-qualified like `allow_identities`
    /// (`"corp:bob"`, `"corp:*-oncall"`).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Who may approve: groups, issuer-qualified like `allow_groups`
    /// (`"corp:dba"`).
    #[serde(default)]
    pub approver_groups: Vec<String>,
    /// Longest grant a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Distinct approvers a request needs (never the requester).
    #[serde(default = "one")]
    pub min_approvals: u32,
}

fn one() -> u32 {
    1
}

/// Longest grant any template may allow.
pub const MAX_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most approvals a template may ask for.
pub const MAX_APPROVALS: u32 = 10;

/// `[access]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// A request nobody decided within this long expires.
    #[serde(default = "default_pending_ttl", with = "humantime_serde")]
    pub pending_ttl: Duration,
    /// Called (POST, JSON, HMAC-SHA256 signed) when a request is created or
    /// decided, so a chat tool can page approvers. Never blocks a request:
    /// sent in the background, retried a few times, then given up (logged).
    pub webhook_url: Option<String>,
    /// The HMAC key of the webhook's `X-Rolemint-Signature` header.
    pub webhook_secret: Option<Secret>,
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            pending_ttl: default_pending_ttl(),
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
        }
    }
}

fn default_pending_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// Checks of one template's `approval`; `entries_ok` parses the
/// issuer-qualified entries as the policy does.
pub fn validate(
    a: &Approval,
    entries_ok: impl Fn(&[String]) -> Result<(), String>,
) -> Result<(), String> {
    if a.approvers.is_empty() && a.approver_groups.is_empty() {
        return Err("approval: name approvers or approver_groups (nobody could approve)".into());
    }
    entries_ok(&a.approvers).map_err(|e| format!("approval.approvers: {e}"))?;
    entries_ok(&a.approver_groups).map_err(|e| format!("approval.approver_groups: {e}"))?;
    if a.max_duration < Duration::from_secs(60) || a.max_duration > MAX_GRANT {
        return Err("approval.max_duration: from 1m to 7d".into());
    }
    if !(1..=MAX_APPROVALS).contains(&a.min_approvals) {
        return Err(format!("approval.min_approvals: 1 to {MAX_APPROVALS}"));
    }
    Ok(())
}

/// Checks of `[access]`.
pub fn validate_access(a: &AccessConfig) -> Result<(), String> {
    if a.pending_ttl < Duration::from_secs(60) || a.pending_ttl > MAX_GRANT {
        return Err("access.pending_ttl: from 1m to 7d".into());
    }
    if let Some(url) = &a.webhook_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
            return Err("access.webhook_url: an http(s) URL".into());
        }
        if a.webhook_secret.is_none() && a.webhook_secret_file.is_none() {
            return Err("access.webhook_url needs webhook_secret or webhook_secret_file (receivers check the signature)".into());
        }
    }
    if a.webhook_secret.is_some() && a.webhook_secret_file.is_some() {
        return Err("access: set webhook_secret or webhook_secret_file, not both".into());
    }
    Ok(())
}

//! `[quotas]`: what one principal (issuer, identity) may hold of this
//! instance at once, and how fast it may mint. Enforced by
//! `lease/quota.rs`; unset limits default to a tenth of the global limit
//! they divide.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[quotas]`: per-principal limits (see `lease/quota.rs`). Unset limits
/// default to a tenth of the global limit they divide.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sessions one principal may have open at once; default a tenth of
    /// `proxy.max_connections`.
    pub max_sessions_per_principal: Option<usize>,
    /// Live credential leases one principal may hold; default a tenth of
    /// `vault.max_credential_leases`.
    pub max_credential_leases_per_principal: Option<usize>,
    /// Live Vault tokens (`auth/token/create`, logins) one principal may
    /// hold, across instances; default a tenth of `vault.max_client_tokens`.
    pub max_tokens_per_principal: Option<usize>,
    /// New sessions and credential leases one principal may start in a
    /// minute; 0 (the default): no rate limit.
    #[serde(default)]
    pub mints_per_minute_per_principal: usize,
    /// Principals tracked at once (the quota table's bound).
    #[serde(default = "default_quota_max_principals")]
    pub max_principals: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_sessions_per_principal: None,
            max_credential_leases_per_principal: None,
            max_tokens_per_principal: None,
            mints_per_minute_per_principal: 0,
            max_principals: default_quota_max_principals(),
        }
    }
}

fn default_quota_max_principals() -> usize {
    100_000
}

impl QuotaConfig {
    /// Every set limit at least 1, the table's bound in range.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_sessions_per_principal == Some(0)
            || self.max_credential_leases_per_principal == Some(0)
            || self.max_tokens_per_principal == Some(0)
            || !(1..=10_000_000).contains(&self.max_principals)
        {
            return Err(invalid(
                "quotas: a per-principal limit must be at least 1, max_principals 1..10000000 \
                 (mints_per_minute_per_principal = 0 turns the rate off)",
            ));
        }
        Ok(())
    }
}

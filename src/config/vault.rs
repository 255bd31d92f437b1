//! `[vault]`: the Vault-compatible routes on the admin listener: which
//! mounts they answer on, how long a login's token lives, and how many
//! tokens and credential leases may exist at once.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// The Vault-compatible door: logins, credentials and role listings on the
/// admin listener, so clients written for Vault's database secrets engine
/// run unchanged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Serve the Vault routes (when the admin listener is on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Auth mounts taking `{"role", "jwt"}` logins: `/v1/auth/<mount>/login`.
    #[serde(default = "default_jwt_mounts")]
    pub jwt_mounts: Vec<String>,
    /// The database secrets mount: `/v1/<mount>/creds/<template>`.
    #[serde(default = "default_database_mount")]
    pub database_mount: String,
    /// Longest life of a login's token on a mount without auth roles (also
    /// capped at the JWT's expiry), and the default TTL of created tokens.
    #[serde(default = "default_client_token_ttl", with = "humantime_serde")]
    pub client_token_ttl: Duration,
    /// Vault tokens stored at once (every instance's); a login or token
    /// create beyond it answers 503.
    #[serde(default = "default_max_client_tokens")]
    pub max_client_tokens: usize,
    /// Credential leases of this instance live at once; more answer 503.
    #[serde(default = "default_max_credential_leases")]
    pub max_credential_leases: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            enabled: true,
            jwt_mounts: default_jwt_mounts(),
            database_mount: default_database_mount(),
            client_token_ttl: default_client_token_ttl(),
            max_client_tokens: default_max_client_tokens(),
            max_credential_leases: default_max_credential_leases(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_jwt_mounts() -> Vec<String> {
    vec!["jwt".into(), "kubernetes".into()]
}
fn default_database_mount() -> String {
    "database".into()
}
fn default_client_token_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_client_tokens() -> usize {
    10_000
}
fn default_max_credential_leases() -> usize {
    10_000
}

/// A mount name as a path segment: `[a-z0-9_-]`, 1 to 64 bytes.
fn is_mount_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl VaultConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self
            .jwt_mounts
            .iter()
            .chain([&self.database_mount])
            .find(|m| !is_mount_name(m))
        {
            return Err(invalid(format!(
                "vault: mount {bad:?} must be 1 to 64 characters of [a-z0-9_-]"
            )));
        }
        if self.max_client_tokens == 0 || self.max_credential_leases == 0 {
            return Err(invalid(
                "vault.max_client_tokens and vault.max_credential_leases must be at least 1",
            ));
        }
        if self.client_token_ttl < Duration::from_secs(1) {
            return Err(invalid("vault.client_token_ttl must be at least 1s"));
        }
        Ok(())
    }
}

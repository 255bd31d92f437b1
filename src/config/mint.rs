//! `[mint]`: how roles are minted and cleaned up: the name template of
//! minted roles, the SCRAM iteration count, the statement timeout, the
//! revoker's limits and the reaper's timing.

use std::time::Duration;

use serde::Deserialize;

use super::{check_placeholders, invalid, placeholder, ConfigError, MAX_CONFIGURABLE_TTL};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintConfig {
    /// Name of minted roles. Placeholders: `{{identity}}`, `{{template}}`,
    /// `{{random}}` (required), `{{unix_time}}`.
    #[serde(default = "default_name_template")]
    pub name_template: String,
    /// PBKDF2 iterations of the SCRAM verifier given to PostgreSQL. The
    /// minted password is 256 random bits, which stretching cannot make any
    /// harder to guess; every iteration is paid by PostgreSQL on CREATE ROLE
    /// and by rolemint on every login.
    #[serde(default = "default_scram_iterations")]
    pub scram_iterations: u32,
    /// This instance's name in lease comments (defaults to the host name).
    pub instance: Option<String>,
    /// Longest wait for a mint or revoke statement batch.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// A revocation that has kept failing for this long is logged at ERROR
    /// (it is retried for as long as the process lives either way).
    #[serde(default = "default_revoke_error_after", with = "humantime_serde")]
    pub revoke_error_after: Duration,
    /// Roles waiting to be revoked past which new sessions (53300) and
    /// credentials (503) are refused: while PostgreSQL is down, every
    /// ended session adds one, and nothing drains them.
    #[serde(default = "default_max_pending_revocations")]
    pub max_pending_revocations: usize,
    /// How often the reaper sweeps `rolemint_managed` for orphaned roles
    /// (it also sweeps once at startup).
    #[serde(default = "default_reap_interval", with = "humantime_serde")]
    pub reap_interval: Duration,
    /// How long a minted role may have no backend session before the
    /// reaper drops it. Longer than a mint plus a backend login, so a role
    /// that is about to log in is never taken for an orphan.
    #[serde(default = "default_reap_grace", with = "humantime_serde")]
    pub reap_grace: Duration,
}

impl Default for MintConfig {
    fn default() -> Self {
        MintConfig {
            name_template: default_name_template(),
            scram_iterations: default_scram_iterations(),
            instance: None,
            statement_timeout: default_statement_timeout(),
            revoke_error_after: default_revoke_error_after(),
            max_pending_revocations: default_max_pending_revocations(),
            reap_interval: default_reap_interval(),
            reap_grace: default_reap_grace(),
        }
    }
}

fn default_max_pending_revocations() -> usize {
    10_000
}
fn default_revoke_error_after() -> Duration {
    Duration::from_secs(60)
}

pub fn default_name_template() -> String {
    "v-{{identity}}-{{template}}-{{random}}-{{unix_time}}".into()
}
pub(super) fn default_scram_iterations() -> u32 {
    16
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reap_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_reap_grace() -> Duration {
    Duration::from_secs(120)
}

impl MintConfig {
    /// A name template that cannot collide, and every bound in range.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.max_pending_revocations) {
            return Err(invalid(
                "mint.max_pending_revocations must be between 1 and 1000000",
            ));
        }
        if !placeholder::uses(&self.name_template, "random") {
            return Err(invalid(
                "mint.name_template must contain {{random}}: two sessions must never collide",
            ));
        }
        check_placeholders(
            "mint.name_template",
            &self.name_template,
            &["identity", "template", "random", "unix_time"],
        )?;
        if !(1..=100_000).contains(&self.scram_iterations) {
            return Err(invalid(
                "mint.scram_iterations must be between 1 and 100000",
            ));
        }
        if self.reap_interval < Duration::from_millis(100)
            || self.reap_interval > MAX_CONFIGURABLE_TTL
        {
            return Err(invalid(
                "mint.reap_interval must be between 100ms and 7 days",
            ));
        }
        if self.reap_grace < Duration::from_secs(1) || self.reap_grace > MAX_CONFIGURABLE_TTL {
            return Err(invalid("mint.reap_grace must be between 1s and 7 days"));
        }
        Ok(())
    }
}

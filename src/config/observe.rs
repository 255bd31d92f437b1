//! `[audit]` and `[log]`: what rolemint writes about itself, the JSON
//! audit log (where, and how many pre-authentication lines a second) and
//! the format of its process log.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file appended to, or `"stdout"`; unset: no audit log.
    pub path: Option<PathBuf>,
    /// Lines a second (a burst of as many) for refusals before
    /// authentication: refused connections, tokens nobody accepts, admin
    /// requests without a valid token. A flood of them cannot fill the
    /// disk; the lines left out are counted and summed up in an
    /// `audit.suppressed` line.
    #[serde(default = "default_audit_pre_auth_lines_per_second")]
    pub pre_auth_lines_per_second: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            pre_auth_lines_per_second: default_audit_pre_auth_lines_per_second(),
        }
    }
}

fn default_audit_pre_auth_lines_per_second() -> u32 {
    50
}

impl AuditConfig {
    /// A rate of at least 1, and a path that names something.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.pre_auth_lines_per_second == 0 {
            return Err(invalid(
                "audit.pre_auth_lines_per_second must be at least 1",
            ));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid("audit.path is empty (a file path or \"stdout\")"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

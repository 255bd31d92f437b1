//! `[admin]`: the admin HTTP listener (health, metrics, the lease API and
//! the Vault-compatible door): its address and TLS, the operators' token
//! hash, and the bounds on its requests and connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, read_secret_file, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener; unset: no listener.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key for HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address. The operator token
    /// travels in a header, so this is for a network you trust (a pod's
    /// own interface behind a mesh, say).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Hex SHA-256 of the operators' bearer token; unset: the lease API
    /// answers 403 to everyone.
    pub operator_token_sha256: Option<String>,
    /// The same hash, read from a file (a mounted Secret).
    pub operator_token_sha256_file: Option<PathBuf>,
    /// Longest an admin request may take before it is answered 503.
    #[serde(default = "default_admin_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_admin_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Admin HTTP connections open at once; more wait to be accepted.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Admin connections one source (an IPv4 address, an IPv6 /64) may
    /// hold at once; more from it are closed at accept.
    #[serde(default = "default_admin_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// From a request head's first byte (on a new connection: from the
    /// accept) to the end of its headers.
    #[serde(
        default = "default_admin_header_read_timeout",
        with = "humantime_serde"
    )]
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request
    /// (from the end of a response to a complete request head).
    #[serde(default = "default_admin_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            tls_cert: None,
            tls_key: None,
            allow_plaintext: false,
            operator_token_sha256: None,
            operator_token_sha256_file: None,
            request_timeout: default_admin_request_timeout(),
            max_body_bytes: default_admin_max_body_bytes(),
            max_connections: default_admin_max_connections(),
            max_connections_per_source: default_admin_max_connections_per_source(),
            header_read_timeout: default_admin_header_read_timeout(),
            idle_timeout: default_admin_idle_timeout(),
        }
    }
}

pub(super) fn default_admin_request_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_admin_max_body_bytes() -> usize {
    64 * 1024
}
pub(super) fn default_admin_max_connections() -> usize {
    256
}
fn default_admin_max_connections_per_source() -> usize {
    32
}
fn default_admin_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_admin_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl AdminConfig {
    /// TLS or loopback (or an explicit plaintext), a well-formed token
    /// hash, and every bound in range.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("admin: tls_cert and tls_key go together"));
        }
        if let Some(listen) = self.listen {
            if self.tls_cert.is_none() && !self.allow_plaintext && !listen.ip().is_loopback() {
                return Err(invalid(format!(
                    "admin: listen = \"{listen}\" is not loopback and there is no tls_cert/tls_key: \
                     the operator token would cross the network in plaintext (set allow_plaintext = true to accept that)"
                )));
            }
        }
        if let Some(hash) = &self.operator_token_sha256 {
            if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    "admin.operator_token_sha256 must be 64 hex digits (the SHA-256 of the token; `rolemint token --operator` prints one)",
                ));
            }
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(600) {
            return Err(invalid(
                "admin.request_timeout must be positive and at most 10m",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                "admin.max_body_bytes must be between 1024 and 16777216",
            ));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(invalid("admin.max_connections must be between 1 and 65536"));
        }
        if self.max_connections_per_source == 0 {
            return Err(invalid(
                "admin.max_connections_per_source must be at least 1",
            ));
        }
        if self.header_read_timeout < Duration::from_millis(100)
            || self.header_read_timeout > Duration::from_secs(600)
        {
            return Err(invalid(
                "admin.header_read_timeout must be between 100ms and 10m",
            ));
        }
        if self.idle_timeout < Duration::from_millis(100)
            || self.idle_timeout > Duration::from_secs(3600)
        {
            return Err(invalid("admin.idle_timeout must be between 100ms and 1h"));
        }
        Ok(())
    }

    pub(super) fn resolve_operator_hash(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = &self.operator_token_sha256_file {
            if self.operator_token_sha256.is_some() {
                return Err(invalid(
                    "admin: set only one of operator_token_sha256, operator_token_sha256_file",
                ));
            }
            let hash = read_secret_file(file)?;
            self.operator_token_sha256 = Some(hash.expose().trim().to_owned());
        }
        Ok(())
    }
}

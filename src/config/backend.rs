//! `[backend]`: the PostgreSQL rolemint mints roles in: where it is, the
//! admin role and its password (inline, from a file or the environment),
//! the admin pool, and TLS to it (mode, CA, channel binding, direct TLS),
//! with the TLS default that depends on whether the host is local.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, read_secret_file, ConfigError};
use crate::secret::Secret;

/// TLS to the backend. Unset, it is `verify-full` for a backend that is
/// not on this machine and `disable` for a loopback address or a Unix
/// socket ([`BackendConfig::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTls {
    /// Plain TCP to the backend.
    Disable,
    /// TLS, without verifying the server certificate (like libpq's
    /// `sslmode=require`).
    Require,
    /// TLS, certificate verified against `tls_ca_file` and `host`.
    VerifyFull,
}

/// SCRAM channel binding to the backend (libpq's `channel_binding`): the
/// `tls-server-end-point` binding of SCRAM-SHA-256-PLUS ties the password
/// exchange to the TLS connection, so a man in the middle who terminates
/// TLS cannot relay the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// Bind whenever the connection is TLS and the server offers
    /// SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse a login that is not SCRAM-SHA-256-PLUS (needs TLS).
    Require,
    /// Never bind: plain SCRAM-SHA-256.
    Disable,
}

/// How TLS to the backend begins (libpq's `sslnegotiation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslNegotiation {
    /// SSLRequest first, TLS after the server's 'S': every version.
    #[default]
    Postgres,
    /// TLS from the first byte, with ALPN `postgresql`: PostgreSQL 17+,
    /// one round trip fewer per backend connection.
    Direct,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role rolemint mints and drops roles as: needs CREATEROLE and
    /// membership in pg_signal_backend.
    pub admin_user: String,
    pub admin_password: Option<Secret>,
    pub admin_password_file: Option<PathBuf>,
    pub admin_password_env: Option<String>,
    #[serde(default = "default_admin_database")]
    pub admin_database: String,
    /// Admin connections per database, busy or idle; mints and revokes
    /// queue for one when all are busy.
    #[serde(default = "default_admin_pool_size")]
    pub admin_pool_size: usize,
    /// Unset: see [`BackendConfig::tls`], which every reader uses.
    #[serde(default, rename = "tls")]
    pub tls_setting: Option<BackendTls>,
    pub tls_ca_file: Option<PathBuf>,
    /// SCRAM-SHA-256-PLUS with the admin pool and the minted roles' logins.
    #[serde(default)]
    pub channel_binding: ChannelBinding,
    /// `postgres` (SSLRequest first) or `direct` (PostgreSQL 17+).
    #[serde(default)]
    pub sslnegotiation: SslNegotiation,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Allow a backend that asks a minted role for a cleartext or MD5
    /// password, or that lets it in without asking. Off: only SCRAM-SHA-256
    /// is accepted, so a misconfigured pg_hba.conf is noticed.
    #[serde(default)]
    pub allow_weak_auth: bool,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_admin_database() -> String {
    "postgres".into()
}
fn default_admin_pool_size() -> usize {
    8
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl BackendConfig {
    /// The TLS mode in force: as set, or by default `verify-full` unless
    /// the backend is on this machine (a loopback address, `localhost`, or
    /// a Unix socket directory), where a network path cannot be tapped and
    /// `disable` stays the default.
    pub fn tls(&self) -> BackendTls {
        match self.tls_setting {
            Some(tls) => tls,
            None if self.is_local() => BackendTls::Disable,
            None => BackendTls::VerifyFull,
        }
    }

    /// The backend is reached without crossing a network: `localhost`, a
    /// loopback address (an IPv4-mapped one too), or a socket directory.
    pub fn is_local(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.starts_with('/')
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// An admin password, a pool size in range, and TLS settings that
    /// fit together (`verify-full` needs its CA).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_password.as_ref().is_none_or(|s| s.is_empty()) {
            return Err(invalid(
                "backend: admin_password (or admin_password_file / admin_password_env) is required",
            ));
        }
        if self.admin_pool_size == 0 || self.admin_pool_size > 64 {
            return Err(invalid("backend.admin_pool_size must be between 1 and 64"));
        }
        if self.sslnegotiation == SslNegotiation::Direct && self.tls() == BackendTls::Disable {
            return Err(invalid(
                "backend: sslnegotiation = \"direct\" needs tls = \"require\" or \"verify-full\"",
            ));
        }
        if self.channel_binding == ChannelBinding::Require && self.tls() == BackendTls::Disable {
            return Err(invalid(
                "backend: channel_binding = \"require\" needs tls = \"require\" or \"verify-full\"",
            ));
        }
        if self.tls() == BackendTls::VerifyFull && self.tls_ca_file.is_none() {
            return Err(invalid(if self.tls_setting.is_none() {
                format!(
                    "backend: host {:?} is not on this machine, so tls defaults to \"verify-full\", \
                     which needs tls_ca_file (the CA that signed the server's certificate); to reach \
                     it without verifying who answers, set tls = \"require\" (or \"disable\") explicitly",
                    self.host
                )
            } else {
                "backend: tls = \"verify-full\" needs tls_ca_file".to_owned()
            }));
        }
        Ok(())
    }

    /// `admin_password`, from the one place it is set.
    pub(super) fn resolve_password(&mut self) -> Result<(), ConfigError> {
        let sources = [
            self.admin_password.is_some(),
            self.admin_password_file.is_some(),
            self.admin_password_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "backend: set only one of admin_password, admin_password_file, admin_password_env",
            ));
        }
        if let Some(file) = &self.admin_password_file {
            self.admin_password = Some(read_secret_file(file)?);
        }
        if let Some(var) = &self.admin_password_env {
            let value = std::env::var(var).map_err(|_| {
                invalid(format!(
                    "backend.admin_password_env: environment variable {var} is not set"
                ))
            })?;
            self.admin_password = Some(Secret::new(value));
        }
        Ok(())
    }
}

//! `[proxy]`: the PostgreSQL-protocol listener clients connect to: its
//! address and TLS, how many sessions and handshakes it takes at once,
//! the handshake deadline, the shutdown timings, the largest token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the PostgreSQL-protocol listener binds.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key for client TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Accept clients without TLS. The token travels as a cleartext password
    /// message, so this is for loopback development and benchmarks only.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Sessions open at once; one more gets SQLSTATE 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections still in the handshake (before their token is checked)
    /// at once; more wait in the accept queue for up to `handshake_timeout`,
    /// then are closed. Kept apart from `max_connections` so that idle
    /// sockets cannot take session slots.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Handshakes one source (an IPv4 address, an IPv6 /64) may have in
    /// flight at once, so one client cannot take every handshake slot;
    /// more from it wait (holding no slot, up to `handshake_timeout`, in a
    /// waiting room of 4 x `max_handshakes` shared by all sources) for one
    /// of its own, and are closed only past that.
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
    /// Time a client has from TCP connect to sending its token: one
    /// deadline for the whole handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// On SIGTERM / Ctrl-C: how long running sessions may go on before they
    /// are ended and their leases revoked.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After the sessions have ended at shutdown: how long rolemint waits
    /// for their revocations before it exits and leaves the rest to the
    /// reaper of the next start.
    #[serde(default = "default_shutdown_revoke_timeout", with = "humantime_serde")]
    pub shutdown_revoke_timeout: Duration,
    /// Largest password message (the identity token) accepted, in bytes.
    /// Tokens from identity providers carrying many groups can be large.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Forward the bytes of sessions whose two legs are plaintext TCP in
    /// the kernel (a BPF sockmap, see `sockmap/`): nothing of their steady
    /// state crosses into user space. Needs CAP_BPF and CAP_NET_ADMIN;
    /// without them rolemint warns and relays in user space. Read at start.
    #[serde(default)]
    pub kernel_splice: bool,
}

fn default_max_connections() -> usize {
    1000
}
fn default_max_handshakes() -> usize {
    256
}
fn default_max_handshakes_per_source() -> usize {
    64
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_revoke_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token_bytes() -> usize {
    64 * 1024
}

impl ProxyConfig {
    /// TLS or an explicit plaintext, and every limit at least 1.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("proxy: tls_cert and tls_key go together"));
        }
        if self.tls_cert.is_none() && !self.allow_plaintext {
            return Err(invalid(
                "proxy: no tls_cert/tls_key and allow_plaintext = false: no client could connect",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("proxy.max_connections must be at least 1"));
        }
        if self.max_handshakes == 0 {
            return Err(invalid("proxy.max_handshakes must be at least 1"));
        }
        if self.max_handshakes_per_source == 0 {
            return Err(invalid(
                "proxy.max_handshakes_per_source must be at least 1",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_token_bytes) {
            return Err(invalid(
                "proxy.max_token_bytes must be between 1024 and 1048576",
            ));
        }
        Ok(())
    }
}

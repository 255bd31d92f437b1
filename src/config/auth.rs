//! `[auth]`: who may present tokens: the local issuer (the flat keys),
//! `[[auth.issuers]]` (identity providers, Kubernetes clusters),
//! `[[auth.static_tokens]]` and the per-address failure limit. The data
//! only; the verifier is built from it by `auth::identity`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, read_secret_file, ConfigError};
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss` claim of the local issuer, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim of the local issuer, when set.
    pub audience: Option<String>,
    /// HS256 key of the local issuer (`rolemint token` signs with it).
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// Claim that names the identity (`sub` by default), for the local
    /// issuer.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Claim holding the identity's groups, for the local issuer.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` / `nbf` / `iat`, for every issuer.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Further token issuers (identity providers, Kubernetes clusters),
    /// routed to by the token's `iss`.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Opaque tokens for service accounts without an identity provider;
    /// only their SHA-256 is configured.
    #[serde(default)]
    pub static_tokens: Vec<StaticTokenConfig>,
    /// How many failed authentications one client address may have.
    #[serde(default)]
    pub failure_rate: FailureRateConfig,
}

/// One `[[auth.issuers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Shown in logs and audit events.
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// The token's `aud` must contain one of these; empty: the token must
    /// carry no `aud` (RFC 7519 §4.1.3).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithms accepted, pinned here: the token header never chooses.
    pub algorithms: Vec<String>,
    /// JWKS over HTTPS.
    pub jwks_url: Option<String>,
    /// JWKS from a file.
    pub jwks_file: Option<PathBuf>,
    /// A PEM public key (RSA, EC or Ed25519).
    pub public_key_file: Option<PathBuf>,
    /// A shared HMAC secret.
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// Read `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// PEM CA certificates trusted for `jwks_url` / discovery instead of
    /// the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// How often a JWKS URL is fetched again.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Claim naming the identity: a top-level name, or a JSON pointer
    /// (`/kubernetes.io/serviceaccount/name`) for a nested one.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Claim holding the groups (name or JSON pointer).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Tokens whose `exp - iat` exceeds this are refused.
    #[serde(default = "default_max_token_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
}

/// One `[[auth.static_tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenConfig {
    /// The identity the token stands for.
    pub identity: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of the token; the token itself is never configured.
    pub sha256: String,
}

/// `[auth.failure_rate]`: a token bucket per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRateConfig {
    /// Failures an address may have in a burst.
    #[serde(default = "default_failure_burst")]
    pub burst: u32,
    /// Failures per minute an address earns back.
    #[serde(default = "default_failure_per_minute")]
    pub per_minute: u32,
    /// Addresses tracked at once; the stalest is forgotten first.
    #[serde(default = "default_failure_max_addresses")]
    pub max_addresses: usize,
}

impl Default for FailureRateConfig {
    fn default() -> Self {
        FailureRateConfig {
            burst: default_failure_burst(),
            per_minute: default_failure_per_minute(),
            max_addresses: default_failure_max_addresses(),
        }
    }
}

fn default_identity_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_failure_burst() -> u32 {
    10
}
fn default_failure_per_minute() -> u32 {
    10
}
fn default_failure_max_addresses() -> usize {
    10_000
}

impl AuthConfig {
    /// The local issuer's and every issuer's HS256 secret files.
    pub(super) fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if self.hs256_secret.is_some() && self.hs256_secret_file.is_some() {
            return Err(invalid(
                "auth: set only one of hs256_secret, hs256_secret_file",
            ));
        }
        if let Some(file) = &self.hs256_secret_file {
            self.hs256_secret = Some(read_secret_file(file)?);
        }
        for i in &mut self.issuers {
            if i.hs256_secret.is_some() && i.hs256_secret_file.is_some() {
                return Err(invalid(format!(
                    "auth.issuers \"{}\": set only one of hs256_secret, hs256_secret_file",
                    i.name
                )));
            }
            if let Some(file) = &i.hs256_secret_file {
                i.hs256_secret = Some(read_secret_file(file)?);
            }
        }
        Ok(())
    }
}

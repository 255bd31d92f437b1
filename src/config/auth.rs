//! `[auth]`: who may present tokens: the local issuer (the flat keys),
//! `[[auth.issuers]]` (identity providers, Kubernetes clusters),
//! `[[auth.static_tokens]]` and the per-address failure limit; their
//! checks (key sources and pinned algorithms that fit together, static
//! token hashes, names), and the issuer names allow lists are qualified
//! by. The data and its checks only: the verifier is built from it by
//! `auth::identity`, when `runtime` builds a runtime.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use super::{invalid, read_secret_file, ConfigError};
use crate::secret::Secret;

/// Longest identity claim accepted, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 256;
/// Most groups a token may carry; a token with more is refused rather than
/// silently truncated (a policy could deny by group).
pub const MAX_GROUPS: usize = 256;
/// Longest single group name accepted, in bytes.
pub const MAX_GROUP_BYTES: usize = 1024;

/// Algorithms a config may name.
const JWT_ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm an `algorithms` entry names, if it is one a config may
/// name.
pub fn jwt_algorithm(name: &str) -> Option<Algorithm> {
    JWT_ALGORITHMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
}

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

    /// The names identities are qualified by: `local` (the flat `[auth]`
    /// keys), `static` (static tokens) and each `[[auth.issuers]]` name,
    /// as configured.
    pub fn issuer_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.hs256_secret.is_some() || self.hs256_secret_file.is_some() {
            names.push("local".to_owned());
        }
        if !self.static_tokens.is_empty() {
            names.push("static".to_owned());
        }
        names.extend(self.issuers.iter().map(|i| i.name.clone()));
        names
    }

    /// Checks `[auth]` beyond what serde does: every issuer's key source
    /// and algorithms fit together, static token hashes are well formed,
    /// there is some way to authenticate. Needs no file: the keys are read
    /// when the verifier is built.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.hs256_secret {
            if secret.expose().len() < 32 {
                return Err("auth: hs256_secret must be at least 32 bytes".into());
            }
        }
        self.validate_issuers()?;
        validate_static_tokens(&self.static_tokens)?;
        let f = &self.failure_rate;
        if f.burst == 0 || f.per_minute == 0 || !(1..=10_000_000).contains(&f.max_addresses) {
            return Err(
                "auth.failure_rate: burst and per_minute must be at least 1, max_addresses 1..10000000"
                    .into(),
            );
        }
        if self.hs256_secret.is_none() && self.issuers.is_empty() && self.static_tokens.is_empty() {
            return Err(
                "auth: no way to authenticate: set hs256_secret (or hs256_secret_file), \
                 [[auth.issuers]] or [[auth.static_tokens]]"
                    .into(),
            );
        }
        Ok(())
    }

    /// Each `[[auth.issuers]]` entry valid, under a name of its own (not
    /// one of the reserved ones) and an `iss` of its own.
    fn validate_issuers(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let mut issuers = std::collections::BTreeSet::new();
        if self.hs256_secret.is_some() {
            issuers.insert(self.issuer.clone().unwrap_or_default());
        }
        for i in &self.issuers {
            i.validate()?;
            // `token` names the principals of Vault tokens created through the
            // door (`auth/token/create`): no issuer may pose as them.
            if !names.insert(i.name.as_str())
                || i.name == "local"
                || i.name == "static"
                || i.name == "token"
            {
                return Err(format!(
                    "auth.issuers: the name \"{}\" is used twice or reserved",
                    i.name
                ));
            }
            if !issuers.insert(i.issuer.clone()) {
                return Err(format!(
                    "auth.issuers \"{}\": another issuer has the same iss \"{}\"",
                    i.name, i.issuer
                ));
            }
        }
        Ok(())
    }
}

impl IssuerConfig {
    /// Config checks of one `[[auth.issuers]]` entry that need no file.
    pub fn validate(&self) -> Result<(), String> {
        let i = self;
        let ctx = |msg: &str| format!("auth.issuers \"{}\": {msg}", i.name);
        if i.name.is_empty()
            || i.name.len() > 63
            || !i
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ctx("name uses only [A-Za-z0-9_-], 1..63 bytes"));
        }
        if i.issuer.is_empty() {
            return Err(ctx("issuer (the required iss) is empty"));
        }
        let sources = [
            i.jwks_url.is_some(),
            i.jwks_file.is_some(),
            i.public_key_file.is_some(),
            i.hs256_secret.is_some() || i.hs256_secret_file.is_some(),
            i.discovery,
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ctx(
                "set exactly one of jwks_url, jwks_file, public_key_file, hs256_secret(_file), discovery = true",
            ));
        }
        if let Some(url) = &i.jwks_url {
            if !url.starts_with("https://") {
                return Err(ctx("jwks_url must be https://"));
            }
        }
        if i.discovery && !i.issuer.starts_with("https://") {
            return Err(ctx("discovery needs an https:// issuer"));
        }
        if i.algorithms.is_empty() {
            return Err(ctx("algorithms is empty: no token could verify"));
        }
        let symmetric = i.hs256_secret.is_some() || i.hs256_secret_file.is_some();
        for name in &i.algorithms {
            let alg = jwt_algorithm(name).ok_or_else(|| {
                ctx(&format!(
                    "unknown algorithm \"{name}\" (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                ))
            })?;
            // The key source decides the family: never a public key as an
            // HMAC secret, never a secret where a signature is expected.
            if (alg.family() == AlgorithmFamily::Hmac) != symmetric {
                return Err(ctx(&format!(
                    "algorithm {name} does not fit the key source (HS* only with hs256_secret, \
                     asymmetric algorithms only with public keys or JWKS)"
                )));
            }
        }
        if let Some(secret) = &i.hs256_secret {
            if secret.expose().len() < 32 {
                return Err(ctx("hs256_secret must be at least 32 bytes"));
            }
        }
        if i.max_token_lifetime.is_zero() {
            return Err(ctx("max_token_lifetime must be positive"));
        }
        if i.jwks_refresh < Duration::from_secs(30) {
            return Err(ctx("jwks_refresh must be at least 30s"));
        }
        for claim in [&i.identity_claim, &i.groups_claim] {
            if claim.is_empty() {
                return Err(ctx("identity_claim and groups_claim must not be empty"));
            }
        }
        Ok(())
    }
}

/// Config checks: hex SHA-256 hashes, sane identities and groups, no hash
/// twice.
pub fn validate_static_tokens(tokens: &[StaticTokenConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for t in tokens {
        let ctx = |msg: &str| format!("auth.static_tokens \"{}\": {msg}", t.identity);
        if t.identity.is_empty()
            || t.identity.len() > MAX_IDENTITY_BYTES
            || t.identity.chars().any(char::is_control)
        {
            return Err(ctx(
                "identity must be 1..256 bytes without control characters",
            ));
        }
        if t.groups.len() > MAX_GROUPS || t.groups.iter().any(|g| g.len() > MAX_GROUP_BYTES) {
            return Err(ctx("at most 256 groups of at most 1024 bytes"));
        }
        let hash =
            parse_sha256_hex(&t.sha256).ok_or_else(|| ctx("sha256 must be 64 hex digits"))?;
        if !seen.insert(hash) {
            return Err(ctx("the same sha256 is configured twice"));
        }
    }
    Ok(())
}

/// The 32 bytes of a hex SHA-256 (64 hex digits, surrounding blanks
/// ignored).
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

//! Who is connecting: an identity token in, an [`Identity`] out.
//!
//! The client's password is an identity token (a JWT). A [`Verifier`] holds
//! the keys it trusts as a list of [`KeySource`]s and the claim rules from
//! `[auth]`; [`Verifier::verify`] either returns the verified [`Identity`] or
//! an [`IdentityError`] naming *why* the token was refused. The reason is for
//! the log and the audit trail only: the client is always told the same
//! `28P01` (see `error.rs`), because telling which check failed helps an
//! attacker. No error ever carries the token or any part of it.
//!
//! - `jwt.rs`: the JWT rules (jsonwebtoken does the parsing and the
//!   signature; we pin algorithms, require claims, and read the identity and
//!   groups claims), and [`issue`] for the local issuer.
//!
//! Only the local issuer's HS256 key exists today. JWKS files/URLs and
//! RS256 / ES256 / EdDSA public keys slot in as further [`KeySource`]
//! variants: each names the algorithms it accepts, and `verify` tries the
//! sources that accept the token's `alg`.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::config::AuthConfig;
use crate::secret::Secret;

mod jwt;

/// Longest identity claim accepted, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 256;
/// Most groups a token may carry; a token with more is refused rather than
/// silently truncated (a policy could deny by group).
pub const MAX_GROUPS: usize = 256;
/// Longest single group name accepted, in bytes.
pub const MAX_GROUP_BYTES: usize = 1024;

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The identity claim (`sub` by default).
    pub subject: String,
    /// Groups from the groups claim; empty when absent.
    pub groups: Vec<String>,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

/// Why a token was refused, or why no verifier could be built.
///
/// Messages name the failed check and, at most, a claim *name*; never the
/// token, a claim value or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// The signature does not verify with any configured key.
    #[error("bad token signature")]
    BadSignature,
    /// The header's `alg` is not one we accept (`none`, HS512, ...).
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// `iss` is missing or not the configured issuer.
    #[error("wrong or missing token issuer")]
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience (or is
    /// present while no audience is configured: RFC 7519 §4.1.3).
    #[error("wrong or missing token audience")]
    WrongAudience,
    /// Not a JWT: bad shape, base64, JSON or claim types.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A required claim is absent.
    #[error("token lacks the required claim \"{0}\"")]
    MissingClaim(String),
    /// The identity claim is present but unusable.
    #[error("invalid identity claim \"{claim}\": {reason}")]
    InvalidIdentity { claim: String, reason: &'static str },
    /// The groups claim is present but unusable.
    #[error("invalid groups claim \"{claim}\": {reason}")]
    InvalidGroups { claim: String, reason: &'static str },
    /// No usable key is configured, or signing failed.
    #[error("no usable key: {0}")]
    Key(String),
}

impl IdentityError {
    /// A short, stable label for logs, audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Expired => "expired",
            IdentityError::NotYetValid => "not_yet_valid",
            IdentityError::BadSignature => "bad_signature",
            IdentityError::WrongAlgorithm => "wrong_algorithm",
            IdentityError::WrongIssuer => "wrong_issuer",
            IdentityError::WrongAudience => "wrong_audience",
            IdentityError::Malformed(_) => "malformed",
            IdentityError::MissingClaim(_) => "missing_claim",
            IdentityError::InvalidIdentity { .. } => "invalid_identity",
            IdentityError::InvalidGroups { .. } => "invalid_groups",
            IdentityError::Key(_) => "key",
        }
    }
}

/// One place keys come from. Today only the local issuer's shared secret;
/// JWKS and public keys are future variants.
enum KeySource {
    /// `auth.hs256_secret`: the local issuer (`rolemint token`, `rolemint
    /// dev`). Accepts HS256 only.
    Hs256(jwt::Hs256Key),
}

impl KeySource {
    fn label(&self) -> &'static str {
        match self {
            KeySource::Hs256(_) => "hs256_secret",
        }
    }
}

/// Checks tokens against the configured issuer keys.
pub struct Verifier {
    /// Keys tried in order; a token must verify with one of them.
    keys: Vec<KeySource>,
    /// Claim rules shared by every key source: issuer, audience, leeway,
    /// identity and groups claim names.
    rules: jwt::Rules,
}

impl fmt::Debug for Verifier {
    // Written by hand so that no key material can ever be formatted, whatever
    // the key types' own Debug impls do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(KeySource::label).collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("rules", &self.rules)
            .finish()
    }
}

impl Verifier {
    /// Builds the verifier from `[auth]`. Fails when no key is configured.
    pub fn from_config(auth: &AuthConfig) -> Result<Verifier, IdentityError> {
        let rules = jwt::Rules::from_config(auth);
        let mut keys = Vec::new();
        if let Some(secret) = &auth.hs256_secret {
            keys.push(KeySource::Hs256(jwt::Hs256Key::new(secret, &rules)?));
        }
        if keys.is_empty() {
            return Err(IdentityError::Key(
                "no token key configured (auth.hs256_secret)".into(),
            ));
        }
        Ok(Verifier { keys, rules })
    }

    /// Verifies `token` and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let alg = jwt::header_algorithm(token)?;
        let mut last = IdentityError::WrongAlgorithm;
        for key in &self.keys {
            let result = match key {
                KeySource::Hs256(k) if k.accepts(alg) => k.verify(token, &self.rules),
                KeySource::Hs256(_) => continue,
            };
            match result {
                // A signature that fails with one key may verify with the
                // next; any other failure is about the token itself.
                Err(IdentityError::BadSignature) => last = IdentityError::BadSignature,
                other => return other,
            }
        }
        Err(last)
    }
}

/// Signs a token with the local issuer key (`rolemint token`, `rolemint dev`).
pub fn issue(
    auth: &AuthConfig,
    subject: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<Secret, IdentityError> {
    jwt::issue(auth, subject, groups, ttl)
}

//! Who is connecting: an identity token in, an [`Identity`] out.
//!
//! The client's password is an identity token: a JWT from one of the
//! configured issuers, or a static token. A [`Verifier`] holds every issuer
//! and static token of `[auth]`; [`Verifier::authenticate`] returns the
//! verified [`Identity`] or an [`IdentityError`] naming *why* the token was
//! refused. The reason is for the log and the audit trail only: the client is
//! always told the same `28P01` (see `error.rs`), because telling which check
//! failed helps an attacker. No error ever carries the token or any part of
//! it.
//!
//! - `jwt.rs`: the claim rules (jsonwebtoken does the parsing and the
//!   signature; we pin algorithms, require claims, read the identity and
//!   groups claims, JSON pointers included), and signing for `rolemint token`.
//! - `keys.rs`: verification keys from PEM files and JWKS documents, each
//!   tagged with its family, curve and `kid`.
//! - `issuer.rs`: one issuer: its `iss`, its algorithms, its keys.
//! - `jwks.rs`: JWKS fetched over HTTPS (or found by OIDC discovery),
//!   cached and refreshed in the background.
//! - `static_tokens.rs`: tokens known by their SHA-256 only.
//! - `cache.rs`: JWTs verified before, remembered by hash until their
//!   `exp` while their issuer's key set is unchanged.
//! - `failures.rs`: failed authentications rate limited per client address.
//! - `keygen.rs`: Ed25519 key pairs and random tokens for `rolemint keygen`
//!   and `rolemint token`.
//!
//! Routing: a token without a `.` is a static token. A JWT is routed by its
//! (still unverified) `iss` to exactly one issuer, and verified with that
//! issuer's keys only, so a key of one issuer can never vouch for another's
//! identities.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::secret::Secret;

mod cache;
mod failures;
mod issuer;
mod jwks;
mod jwt;
pub mod keygen;
mod keys;
mod static_tokens;

pub use failures::FailureLimiter;

/// The bounds on identities and groups, the same for every kind of token
/// (the config checks static tokens against them).
pub use crate::config::auth::{MAX_GROUPS, MAX_GROUP_BYTES, MAX_IDENTITY_BYTES};

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The identity claim (`sub` by default), raw as the token has it.
    pub subject: String,
    /// Groups from the groups claim; empty when absent.
    pub groups: Vec<String>,
    /// The token's `exp` (far in the future for a static token).
    pub expires_at: SystemTime,
    /// The issuer entry that vouched for it (`name` of `[[auth.issuers]]`,
    /// `local`, or `static`), for logs.
    pub issuer: String,
}

/// Why a token was refused, or why no verifier could be built.
///
/// Messages name the failed check and, at most, a claim *name* or an issuer
/// entry's name; never the token, a claim value or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token not yet valid (nbf or iat in the future)")]
    NotYetValid,
    /// `exp - iat` exceeds the issuer's `max_token_lifetime`.
    #[error("token lifetime exceeds max_token_lifetime")]
    LifetimeTooLong,
    /// The signature does not verify with any of the issuer's keys.
    #[error("bad token signature")]
    BadSignature,
    /// The header's `alg` is not one the issuer accepts (`none`, HS256 for
    /// an RSA issuer, ...).
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// No key of the issuer has the token's `kid` (or fits its algorithm).
    #[error("no key of issuer \"{0}\" matches the token's kid and algorithm")]
    UnknownKey(String),
    /// `iss` is missing or names no configured issuer.
    #[error("wrong or missing token issuer")]
    WrongIssuer,
    /// `aud` is missing or does not contain a configured audience (or is
    /// present while no audience is configured: RFC 7519 §4.1.3).
    #[error("wrong or missing token audience")]
    WrongAudience,
    /// Not a JWT: bad shape, base64, JSON or claim types.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Not a JWT and not the hash of any static token.
    #[error("unknown static token")]
    UnknownStaticToken,
    /// A required claim is absent.
    #[error("token lacks the required claim \"{0}\"")]
    MissingClaim(String),
    /// The identity claim is present but unusable.
    #[error("invalid identity claim \"{claim}\": {reason}")]
    InvalidIdentity { claim: String, reason: &'static str },
    /// The groups claim is present but unusable.
    #[error("invalid groups claim \"{claim}\": {reason}")]
    InvalidGroups { claim: String, reason: &'static str },
    /// The client address failed too often lately; it may try again in
    /// `retry_after_secs`.
    #[error("too many failed authentications from this address")]
    RateLimited { retry_after_secs: u64 },
    /// No usable key is configured, or signing failed.
    #[error("no usable key: {0}")]
    Key(String),
    /// A Vault token (`rmv.`) that is unknown, expired or used up, or
    /// that the token store could not check.
    #[error("vault token {0}")]
    VaultToken(&'static str),
}

impl IdentityError {
    /// A short, stable label for logs, audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Expired => "expired",
            IdentityError::NotYetValid => "not_yet_valid",
            IdentityError::LifetimeTooLong => "lifetime_too_long",
            IdentityError::BadSignature => "bad_signature",
            IdentityError::WrongAlgorithm => "wrong_algorithm",
            IdentityError::UnknownKey(_) => "unknown_key",
            IdentityError::WrongIssuer => "wrong_issuer",
            IdentityError::WrongAudience => "wrong_audience",
            IdentityError::Malformed(_) => "malformed",
            IdentityError::UnknownStaticToken => "unknown_static_token",
            IdentityError::MissingClaim(_) => "missing_claim",
            IdentityError::InvalidIdentity { .. } => "invalid_identity",
            IdentityError::InvalidGroups { .. } => "invalid_groups",
            IdentityError::RateLimited { .. } => "rate_limited",
            IdentityError::Key(_) => "key",
            IdentityError::VaultToken(_) => "vault_token",
        }
    }
}

/// Checks tokens against every configured issuer and static token.
pub struct Verifier {
    /// The local issuer (flat `[auth]` keys) first, then `[[auth.issuers]]`.
    issuers: Vec<issuer::Issuer>,
    statics: static_tokens::StaticTokens,
    /// Failed authentications per client address.
    pub failures: FailureLimiter,
    /// JWTs verified before, until their `exp` (see `cache.rs`).
    cache: cache::TokenCache,
    /// Stops the JWKS refresh tasks when the verifier is dropped.
    stop: CancellationToken,
}

impl fmt::Debug for Verifier {
    // Written by hand so that no key material can ever be formatted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuers: Vec<&str> = self.issuers.iter().map(|i| i.name()).collect();
        f.debug_struct("Verifier")
            .field("issuers", &issuers)
            .field("static_tokens", &self.statics.len())
            .finish()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Verifier {
    /// Builds the verifier from `[auth]`: reads key files, parses JWKS
    /// files. JWKS URLs start empty; [`Verifier::start_refresh`] fetches
    /// them. Touches no network.
    pub fn from_config(auth: &AuthConfig) -> Result<Verifier, IdentityError> {
        let mut issuers = Vec::new();
        if let Some(local) = issuer::Issuer::local(auth)? {
            issuers.push(local);
        }
        for config in &auth.issuers {
            issuers.push(issuer::Issuer::from_config(config, auth.leeway)?);
        }
        let statics = static_tokens::StaticTokens::from_config(&auth.static_tokens)
            .map_err(IdentityError::Key)?;
        if issuers.is_empty() && statics.len() == 0 {
            return Err(IdentityError::Key(
                "no token key configured (auth.hs256_secret, [[auth.issuers]] or [[auth.static_tokens]])"
                    .into(),
            ));
        }
        Ok(Verifier {
            issuers,
            statics,
            failures: FailureLimiter::new(&auth.failure_rate),
            cache: cache::TokenCache::default(),
            stop: CancellationToken::new(),
        })
    }

    /// Starts one background task per JWKS URL: the first fetch at once
    /// (retried with backoff while it fails), then one every
    /// `jwks_refresh`. The tasks end when the verifier is dropped. Needs a
    /// tokio runtime.
    pub fn start_refresh(&self) {
        for issuer in &self.issuers {
            if let Some(remote) = issuer.remote() {
                tokio::spawn(jwks::RemoteJwks::run(remote, self.stop.clone()));
            }
        }
    }

    /// For `rolemint check`: every issuer by name, with what its keys
    /// came to: a JWKS URL (or discovery) is fetched once now; keys from
    /// files and secrets were read when the verifier was built.
    pub async fn probe_issuers(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        for issuer in &self.issuers {
            let result = match issuer.remote() {
                Some(remote) => remote
                    .probe()
                    .await
                    .map(|n| format!("JWKS fetched, {n} key(s)")),
                None => Ok("keys loaded".to_owned()),
            };
            out.push((issuer.name().to_owned(), result));
        }
        out
    }

    /// Verifies `token` with the keys at hand, without any network.
    pub fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        if token.is_empty() {
            return Err(IdentityError::Malformed("empty token"));
        }
        if !token.contains('.') {
            // Without static tokens there is nothing it could be: say what
            // it is not, rather than name a kind of token nobody set up.
            if self.statics.len() == 0 {
                return Err(IdentityError::Malformed("not a JWT"));
            }
            return self.statics.verify(token);
        }
        let now = SystemTime::now();
        let key_set = |i: usize| self.issuers.get(i).map(|i| i.key_set());
        if let Some(identity) = self.cache.get(token, now, key_set) {
            return Ok(identity);
        }
        let (index, issuer) = self.route(token)?;
        // Taken before the check: if a refresh swaps the keys meanwhile,
        // the entry names the older set and is not used again.
        let keys = issuer.key_set();
        let identity = issuer.verify_with(token, &keys)?;
        self.cache.put(token, &identity, index, keys, now);
        Ok(identity)
    }

    /// Tokens remembered by the verification cache now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies `token` as a session does: like [`Verifier::verify`], but
    /// a token whose `kid` the issuer's JWKS does not know yet triggers one
    /// refresh of that JWKS (at most one per 30 s per issuer), for a key
    /// rotated in since the last fetch.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, IdentityError> {
        match self.verify(token) {
            Err(IdentityError::UnknownKey(name)) => {
                let remote = self
                    .issuers
                    .iter()
                    .find(|i| i.name() == name)
                    .and_then(|i| i.remote());
                match remote {
                    Some(remote) if remote.refresh_for_unknown_kid().await => self.verify(token),
                    _ => Err(IdentityError::UnknownKey(name)),
                }
            }
            other => other,
        }
    }

    /// [`Verifier::authenticate`] for a client at `peer`, rate limited: an
    /// address with too many recent failures is refused without looking at
    /// the token, and every failure is counted against its address only.
    pub async fn authenticate_from(
        &self,
        peer: IpAddr,
        token: &str,
    ) -> Result<Identity, IdentityError> {
        if let Some(wait) = self.failures.retry_after(peer) {
            let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(IdentityError::RateLimited { retry_after_secs });
        }
        let result = self.authenticate(token).await;
        if result.is_err() {
            self.failures.failed(peer);
        }
        result
    }

    /// The issuer a JWT names in its (unverified) `iss`.
    fn route(&self, token: &str) -> Result<(usize, &issuer::Issuer), IdentityError> {
        let iss = jwt::peek_issuer(token)?;
        self.issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.accepts_iss(iss.as_deref()))
            .ok_or(IdentityError::WrongIssuer)
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

/// Signs a token with an Ed25519 private key (PKCS#8 PEM, as `rolemint
/// keygen` writes it), for an issuer configured with its public key or
/// JWKS. `kid` goes into the header when given.
pub fn issue_ed25519(
    key_pem: &str,
    kid: Option<&str>,
    claims: &jwt::IssueClaims<'_>,
) -> Result<Secret, IdentityError> {
    jwt::issue_ed25519(key_pem, kid, claims)
}

pub use jwt::IssueClaims;

/// The claims of a JWT that [`Verifier::authenticate`] has just accepted,
/// for the bound checks of an auth role. Reads the payload only: call it
/// on a verified token, never on one that failed.
pub fn verified_claims(token: &str) -> Result<serde_json::Value, IdentityError> {
    jwt::payload(token)
}

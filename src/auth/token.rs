//! Vault tokens, without IO: what a token looks like, how it is kept (its
//! SHA-256 only), and Vault's rules for creating and renewing one, as
//! `vault/token_store.go` applies them (`handleCreateCommon`,
//! `framework.CalculateTTL`).
//!
//! - A token is `rmv.` and 256 random bits in base64url (Vault's service
//!   tokens start `hvs.`; a recognisable prefix lets secret scanners find a
//!   leaked one). Login tokens have had this shape since the first door, so
//!   they keep working: they are now simply stored tokens too.
//! - Stored: the token's SHA-256 and its accessor's SHA-256. A lookup by
//!   hash needs no constant-time compare (the hash of a guess says nothing
//!   about the hash of a token), and a copy of the table logs nobody in.
//! - The accessor is a second handle, shown to whoever creates or looks
//!   up the token, with which it can be looked up and revoked but not
//!   used. It is derived from the token by a one-way hash, so a lookup
//!   that holds the token can show it though only its hash is stored.
//! - Policies: a child's policies must be a subset of its creator's unless
//!   the creator has `sudo` on the create path (the operator has it
//!   everywhere); none given means the creator's. `default` is added
//!   unless `no_default_policy`; `root` only from a root creator.
//! - Lifetime: `ttl` (else the default), capped by the max TTL and by
//!   `explicit_max_ttl`, both counted from creation; renewals likewise. A
//!   limited-use token (`num_uses`) cannot create children (it would
//!   escape its count).
//!
//! All arithmetic on times is checked: a bound that would overflow the
//! clock is refused, not wrapped.
//!
//! This file is the token (its shape, hash, accessor and errors);
//! `rules.rs` holds Vault's rules for creating, logging in and renewing.

use std::time::Duration;

use super::fields::FieldError;
use crate::secret::Secret;

mod rules;

pub use rules::{
    display_name, plan_create, plan_login, renew, sanitize_policies, CreateRequest, Creator,
    Lifetime, Limits, LoginSpec, Plan, Renewal,
};

/// Prefix of every token rolemint hands out.
pub const TOKEN_PREFIX: &str = "rmv.";
/// Longest token accepted for a lookup (ours are 47 bytes).
pub const MAX_TOKEN_BYTES: usize = 128;
/// Most policies a token carries.
pub const MAX_POLICIES: usize = 64;
/// Longest policy name.
pub const MAX_POLICY_BYTES: usize = 128;
/// Most `meta` entries, and the longest key or value.
pub const MAX_META_ENTRIES: usize = 64;
pub const MAX_META_BYTES: usize = 512;
/// Longest `display_name`.
pub const MAX_DISPLAY_NAME_BYTES: usize = 128;
/// Largest `num_uses`.
pub const MAX_NUM_USES: u64 = 1_000_000;
/// Longest TTL any token may have: Vault's default system `max_lease_ttl`
/// (768h), so a `vault token create -ttl=768h` written for Vault works.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(768 * 3600);
/// Policies no token may be given (Vault's `nonAssignablePolicies`).
const NON_ASSIGNABLE: [&str; 3] = ["response-wrapping", "control-group", "recovery"];

/// Why a token could not be created or renewed. Every message may be shown
/// to the caller: it is about the request, never about a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("child policies must be subset of parent")]
    NotSubset,
    #[error("root tokens may not be created without parent token being root")]
    RootFromNonRoot,
    #[error("cannot assign policy \"{0}\"")]
    NonAssignable(String),
    #[error("root or sudo privileges required to create orphan token")]
    OrphanNeedsSudo,
    #[error("restricted use token cannot generate child tokens")]
    LimitedUseParent,
    #[error("root or sudo privileges required to specify token id")]
    CustomId,
    #[error("periodic tokens are not supported")]
    Periodic,
    #[error("batch tokens are not supported")]
    Batch,
    #[error("expiring root tokens cannot create non-expiring root tokens")]
    NonExpiringFromExpiring,
    #[error("lease is not renewable")]
    NotRenewable,
    #[error("past the max TTL, cannot renew")]
    PastMaxTtl,
    #[error("time out of range")]
    TimeOutOfRange,
    #[error("no random bytes")]
    Random,
}

/// A token's SHA-256: what the store keys it by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    // Not a secret, but nothing a log line needs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    /// The SHA-256 of `secret` (a token or an accessor).
    pub fn of(secret: &str) -> TokenHash {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        TokenHash(out)
    }

    /// A short, stable, non-secret name for logs and lease identities: the
    /// first 8 bytes in hex.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether `token` is shaped like one of ours (so a wrong one is told
/// apart from an identity JWT or a static token).
pub fn is_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX) && token.len() <= MAX_TOKEN_BYTES
}

/// A fresh token and accessor, with their hashes.
pub struct Minted {
    pub token: Secret,
    pub hash: TokenHash,
    pub accessor: String,
    pub accessor_hash: TokenHash,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minted(***)")
    }
}

/// A new token (256 random bits) and its accessor.
pub fn mint() -> Result<Minted, TokenError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Random)?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let accessor = accessor_of(&token);
    Ok(Minted {
        hash: TokenHash::of(&token),
        accessor_hash: TokenHash::of(&accessor),
        token: Secret::new(token),
        accessor,
    })
}

/// A token's accessor: 24 characters derived from the token by a one-way
/// hash, so every lookup that holds the token can show its accessor while
/// the store keeps neither (and the accessor says nothing of the token).
pub fn accessor_of(token: &str) -> String {
    use base64::Engine as _;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"rolemint accessor\0");
    ctx.update(token.as_bytes());
    let digest = ctx.finish();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_kept_by_hash() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert!(is_token(a.token.expose()) && a.token.expose().len() == 47);
        assert_ne!(a.token.expose(), b.token.expose());
        assert_eq!(a.accessor.len(), 24);
        assert_eq!(a.accessor, accessor_of(a.token.expose()));
        assert_ne!(a.accessor, b.accessor);
        assert_eq!(a.hash, TokenHash::of(a.token.expose()));
        assert_eq!(a.accessor_hash, TokenHash::of(&a.accessor));
        assert!(!format!("{a:?}").contains(a.token.expose()));
        assert!(!format!("{a:?}").contains(&a.accessor));
        assert!(!is_token("eyJ.x.y") && !is_token(&format!("rmv.{}", "a".repeat(200))));
    }
}

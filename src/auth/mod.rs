//! Who a client is and what it may do: [`identity`] (tokens in,
//! identities out: issuers, keys, JWKS, static tokens, the verified-token
//! cache, the per-address failure limiter) and [`policy`] (identity x
//! template x database -> allowed or not, and the session settings
//! rendered from claims).
//!
//! Owns every decision about a token and a claim. Must not touch
//! PostgreSQL, leases, sessions or HTTP routes: it answers questions and
//! keeps no state about connections beyond the failure limiter and the
//! token cache.

pub mod identity;
pub mod policy;

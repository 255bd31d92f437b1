//! Who a client is and what it may do: [`identity`] (tokens in,
//! identities out: issuers, keys, JWKS, static tokens, the verified-token
//! cache, the per-address failure limiter), [`policy`] (identity x
//! template x database -> allowed or not, and the session settings
//! rendered from claims), [`acl`] (Vault's HCL policies: paths with
//! `*` and `+`, capabilities, `deny`, the `default` and `root` policies);
//! [`token`] Vault tokens and [`auth_role`] the
//! auth roles of the jwt/kubernetes mounts, both without IO (the door and
//! the store keep them), [`fields`], Vault's loose request fields,
//! [`source`], where a connection comes from as the per-source limits
//! count it (IPv6 by /64), and the per-source slots; [`access`] access
//! requests (who may create, approve, deny and revoke one, and which
//! approved grant covers a session).
//!
//! Owns every decision about a token and a claim. Must not touch
//! PostgreSQL, leases, sessions or HTTP routes: it answers questions and
//! keeps no state about connections beyond the failure limiter and the
//! token cache.

pub mod access;
pub mod acl;
pub mod auth_role;
pub mod fields;
pub mod identity;
pub mod policy;
pub mod source;
pub mod token;

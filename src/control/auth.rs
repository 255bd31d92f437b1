//! Who is calling: the token in `X-Vault-Token` or `Authorization: Bearer`.
//!
//! The operator token is stored only as its SHA-256 (`[admin]
//! operator_token_sha256`), so the config file does not hold a usable
//! credential. A presented token is hashed and compared in constant time.
//! A missing, malformed and wrong token all answer the same 403.
//!
//! [`Caller`] has room for workloads: the Vault-compatible door lets a
//! workload act on its own leases, so handlers ask the caller
//! ([`Caller::may_act_on`]) rather than assuming an operator.
//!
//! A request's token is checked once, by the listener's middleware, which
//! hands handlers the answer as [`Authenticated`]: a JWT is verified once
//! per request, and every wrong token counts against the client's source
//! in the failed-authentication limiter, as a wrong password does on the
//! proxy door (a source over its budget gets 429 before its token is read).

use axum::http::HeaderMap;
use subtle::ConstantTimeEq as _;

use super::vault::ApiError;
use crate::auth::identity::Identity;

/// Longest token header read; longer is refused before hashing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Holds the operator token: may act on every lease.
    Operator,
    /// A workload: a Vault token (from a login or `auth/token/create`) or
    /// an identity JWT presented directly. Acts on its own leases only
    /// (the principal `(issuer, identity)`); `policies` are the token's
    /// Vault policies (`default` for a JWT), for the ACL to evaluate.
    Workload {
        issuer: String,
        identity: String,
        policies: Vec<String>,
    },
}

impl Caller {
    /// How the audit log names the caller.
    pub fn label(&self) -> String {
        match self {
            Caller::Operator => "operator".into(),
            Caller::Workload {
                issuer, identity, ..
            } => format!("workload:{issuer}:{identity}"),
        }
    }

    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Operator)
    }

    /// 403 unless an operator.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(ApiError::permission_denied())
        }
    }

    /// The caller's Vault policies: `root` for the operator.
    pub fn policies(&self) -> Vec<String> {
        match self {
            Caller::Operator => vec!["root".into()],
            Caller::Workload { policies, .. } => policies.clone(),
        }
    }

    /// Whether this caller may see, renew or revoke a lease of the
    /// principal `(issuer, identity)`. Two issuers' `alice` are two
    /// principals; a lease that recorded no issuer (minted before leases
    /// did) is no workload's.
    pub fn may_act_on(&self, issuer: &str, identity: &str) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Workload {
                issuer: own_issuer,
                identity: own,
                ..
            } => !issuer.is_empty() && own_issuer == issuer && own == identity,
        }
    }
}

/// Who a request's token says it is: decided once per request (see the
/// module doc) and read by handlers as an extractor.
#[derive(Debug, Clone, Default)]
pub enum Authenticated {
    /// No token.
    #[default]
    Anonymous,
    /// A token nobody accepts.
    Invalid,
    Operator,
    /// A workload: its Vault token, identity JWT or static token, with the
    /// token's policies.
    Workload {
        identity: Identity,
        policies: Vec<String>,
    },
}

impl Authenticated {
    /// The caller, or 403.
    pub fn caller(&self) -> Result<Caller, ApiError> {
        match self {
            Authenticated::Operator => Ok(Caller::Operator),
            Authenticated::Workload { identity, policies } => Ok(Caller::Workload {
                issuer: identity.issuer.clone(),
                identity: identity.subject.clone(),
                policies: policies.clone(),
            }),
            Authenticated::Anonymous | Authenticated::Invalid => Err(ApiError::permission_denied()),
        }
    }

    /// The workload's identity, or 403 (also for the operator token, which
    /// stands for no identity and so can be handed no credentials).
    pub fn workload(&self) -> Result<&Identity, ApiError> {
        match self {
            Authenticated::Workload { identity, .. } => Ok(identity),
            _ => Err(ApiError::permission_denied()),
        }
    }

    /// How the audit log names the caller: `anonymous`, `invalid-token`,
    /// `operator` or `workload:<issuer>:<identity>`.
    pub fn label(&self) -> String {
        match self {
            Authenticated::Anonymous => "anonymous".into(),
            Authenticated::Invalid => "invalid-token".into(),
            other => other.caller().map(|c| c.label()).unwrap_or_default(),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The operator token's SHA-256.
#[derive(Clone)]
pub struct OperatorToken {
    sha256: [u8; 32],
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(***)")
    }
}

impl OperatorToken {
    /// From the 64 hex digits of the config (validated there).
    pub fn from_hex(hex: &str) -> Option<OperatorToken> {
        if hex.len() != 64 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(OperatorToken { sha256 })
    }

    /// Whether `token` is the operator token, in time independent of where
    /// it differs.
    pub fn matches(&self, token: &str) -> bool {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        bool::from(digest.as_ref().ct_eq(&self.sha256))
    }
}

/// A fresh operator token: `rmo_` and 256 random bits (the same maker as
/// static tokens, `rolemint token --operator`).
pub fn new_operator_token() -> Result<crate::secret::Secret, String> {
    crate::auth::identity::keygen::random_token("rmo_")
}

/// Hex SHA-256 of `token`: what `operator_token_sha256` holds.
pub fn sha256_hex(token: &str) -> String {
    crate::auth::identity::keygen::sha256_hex(&crate::secret::Secret::new(token))
}

/// The token a request presents, if any: `X-Vault-Token` first (Vault
/// clients), then `Authorization: Bearer`.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
        })?
        .trim();
    (!token.is_empty() && token.len() <= MAX_TOKEN_BYTES).then_some(token)
}

/// The caller of a request, or 403.
pub fn authenticate(
    operator: Option<&OperatorToken>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let token = presented_token(headers).ok_or_else(ApiError::permission_denied)?;
    match operator {
        Some(op) if op.matches(token) => Ok(Caller::Operator),
        _ => Err(ApiError::permission_denied()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn the_operator_token_is_checked_by_hash() {
        let op = OperatorToken::from_hex(&sha256_hex("s3cret")).unwrap();
        assert!(op.matches("s3cret"));
        assert!(!op.matches("s3creT"));
        let ok = |h: HeaderMap| authenticate(Some(&op), &h);
        assert_eq!(ok(headers("x-vault-token", "s3cret")), Ok(Caller::Operator));
        assert_eq!(
            ok(headers("authorization", "Bearer s3cret")),
            Ok(Caller::Operator)
        );
        let denied = ok(headers("authorization", "Basic s3cret")).unwrap_err();
        assert_eq!(denied.status, axum::http::StatusCode::FORBIDDEN);
        assert!(ok(HeaderMap::new()).is_err());
        assert!(authenticate(None, &headers("x-vault-token", "s3cret")).is_err());
    }

    #[test]
    fn sha256_hex_is_the_known_digest() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(OperatorToken::from_hex("zz").is_none());
        assert!(OperatorToken::from_hex(&"g".repeat(64)).is_none());
        assert_eq!(
            format!("{:?}", OperatorToken::from_hex(&sha256_hex("x")).unwrap()),
            "OperatorToken(***)"
        );
    }

    #[test]
    fn workloads_act_on_their_own_leases_only() {
        let w = Caller::Workload {
            issuer: "corp".into(),
            identity: "alice".into(),
            policies: vec!["default".into()],
        };
        assert!(w.may_act_on("corp", "alice") && !w.may_act_on("corp", "bob"));
        // Another issuer's alice is another principal; a lease without an
        // issuer (minted before leases recorded it) is the operators'.
        assert!(!w.may_act_on("k8s", "alice") && !w.may_act_on("", "alice"));
        assert!(w.require_operator().is_err());
        assert!(Caller::Operator.may_act_on("corp", "bob"));
        assert!(Caller::Operator.may_act_on("", "bob"));
        assert_eq!(w.label(), "workload:corp:alice");
    }
}

//! JWT validation and signing, on jsonwebtoken.
//!
//! jsonwebtoken parses the token, checks the signature and the registered
//! claims; this file decides *which* checks apply and reads our two claims:
//! - the algorithm is pinned per issuer and per key (see `issuer.rs`): a
//!   token whose header says `none` (in any casing) fails to parse at all;
//! - `exp` is required, `nbf` is honoured when present, both with
//!   `auth.leeway` of clock skew; an `iat` in the future (beyond the leeway)
//!   is refused, and so is `exp - iat` above the issuer's
//!   `max_token_lifetime` (a token without `iat` is measured from now);
//! - `iss` must equal the issuer's when it has one;
//! - `aud` must contain one of the issuer's audiences; with no audience
//!   configured a token that *carries* an `aud` is refused (RFC 7519
//!   §4.1.3: it was meant for someone who identified themselves; we did
//!   not);
//! - the identity claim (a name, or a JSON pointer such as
//!   `/kubernetes.io/serviceaccount/name` for a nested one) must be a
//!   non-empty string of at most [`MAX_IDENTITY_BYTES`] without control
//!   characters; the groups claim is absent/null or an array of at most
//!   [`MAX_GROUPS`] strings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::{Identity, IdentityError, MAX_GROUPS, MAX_GROUP_BYTES, MAX_IDENTITY_BYTES};
use crate::config::AuthConfig;
use crate::secret::Secret;

/// The claim rules of one issuer.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    /// The `iss` required, when the issuer has one (the local issuer may
    /// not).
    pub(super) issuer: Option<String>,
    /// `aud` must contain one of these; empty: no `aud` allowed.
    pub(super) audiences: Vec<String>,
    /// Clock skew tolerated on `exp` / `nbf` / `iat`, in whole seconds.
    pub(super) leeway_secs: u64,
    pub(super) identity_claim: String,
    pub(super) groups_claim: String,
    /// Longest `exp - iat` accepted; `None`: no limit (the local issuer,
    /// whose tokens rolemint itself signs).
    pub(super) max_lifetime: Option<Duration>,
}

impl Rules {
    /// The local issuer's rules: the flat `[auth]` keys.
    pub(super) fn from_config(auth: &AuthConfig) -> Rules {
        Rules {
            issuer: auth.issuer.clone(),
            audiences: auth.audience.iter().cloned().collect(),
            leeway_secs: auth.leeway.as_secs(),
            identity_claim: auth.identity_claim.clone(),
            groups_claim: auth.groups_claim.clone(),
            max_lifetime: None,
        }
    }

    /// jsonwebtoken's checks for a token signed with `alg`.
    pub(super) fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if !self.audiences.is_empty() {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Verifies `token` with one key and reads the identity out of it.
    pub(super) fn verify(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
        issuer_name: &str,
    ) -> Result<Identity, IdentityError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg))
            .map_err(map_error)?;
        let claims = Value::Object(data.claims);
        self.check_times(&claims)?;
        let mut identity = identity_from_claims(&claims, self)?;
        identity.issuer = issuer_name.to_owned();
        Ok(identity)
    }

    /// `iat` not in the future, `exp - iat` within `max_lifetime`.
    fn check_times(&self, claims: &Value) -> Result<(), IdentityError> {
        let now = unix_now();
        let iat = match claims.get("iat") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_seconds(v).ok_or(IdentityError::Malformed("iat is not a number"))?),
        };
        if iat.is_some_and(|iat| iat > now.saturating_add(self.leeway_secs)) {
            return Err(IdentityError::NotYetValid);
        }
        if let Some(max) = self.max_lifetime {
            let exp = claims
                .get("exp")
                .and_then(as_seconds)
                .ok_or(IdentityError::Malformed("exp is not a number"))?;
            let start = iat.unwrap_or(now).min(now);
            if exp.saturating_sub(start) > max.as_secs().saturating_add(self.leeway_secs) {
                return Err(IdentityError::LifetimeTooLong);
            }
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A NumericDate: non-negative, possibly fractional seconds.
fn as_seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// The header's `alg` and `kid`; only the header is read, nothing is
/// trusted yet.
pub(super) fn header(token: &str) -> Result<(Algorithm, Option<String>), IdentityError> {
    if token.is_empty() {
        return Err(IdentityError::Malformed("empty token"));
    }
    // An `alg` outside jsonwebtoken's list (`none`, `None`, `NONE` ...)
    // fails to parse here and is reported as a malformed header.
    jsonwebtoken::decode_header(token)
        .map(|h| (h.alg, h.kid))
        .map_err(map_error)
}

/// The unverified `iss` of a JWT, only to choose the issuer whose keys
/// then verify it. `None` when absent.
pub(super) fn peek_issuer(token: &str) -> Result<Option<String>, IdentityError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<Value>,
    }
    let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(map_error)?;
    match peek.iss {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(IdentityError::WrongIssuer),
    }
}

/// The payload of a JWT, not verified here (see `verified_claims`).
pub(super) fn payload(token: &str) -> Result<Value, IdentityError> {
    let claims: Map<String, Value> =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(map_error)?;
    Ok(Value::Object(claims))
}

/// Translates jsonwebtoken's error into our reason. Only static text and
/// registered claim names get through: serde's messages can quote claim
/// values, and those stay out of the log.
fn map_error(e: jsonwebtoken::errors::Error) -> IdentityError {
    match e.kind() {
        ErrorKind::InvalidToken => IdentityError::Malformed("not a JWT"),
        ErrorKind::InvalidSignature => IdentityError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => IdentityError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => IdentityError::WrongIssuer,
            "aud" => IdentityError::WrongAudience,
            other => IdentityError::MissingClaim(other.to_owned()),
        },
        ErrorKind::InvalidClaimFormat(_) => IdentityError::Malformed("exp or nbf is not a number"),
        ErrorKind::ExpiredSignature => IdentityError::Expired,
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::Base64(_) => IdentityError::Malformed("invalid base64"),
        ErrorKind::Json(_) => IdentityError::Malformed("invalid JSON or unknown algorithm"),
        ErrorKind::Utf8(_) => IdentityError::Malformed("invalid UTF-8"),
        // A key that does not fit the token (wrong curve, unusable
        // modulus) cannot have signed it.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => IdentityError::BadSignature,
        _ => IdentityError::Malformed("rejected by the JWT library"),
    }
}

/// A claim by name, or by JSON pointer when it starts with `/`.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// Reads the identity, groups and expiry out of verified claims.
fn identity_from_claims(claims: &Value, rules: &Rules) -> Result<Identity, IdentityError> {
    let subject = check_subject(&rules.identity_claim, claim(claims, &rules.identity_claim))?;

    let groups_err = |reason| IdentityError::InvalidGroups {
        claim: rules.groups_claim.clone(),
        reason,
    };
    let groups = match claim(claims, &rules.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_GROUPS {
                return Err(groups_err("more than 256 groups"));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(g) if g.len() <= MAX_GROUP_BYTES => Ok(g.clone()),
                    Value::String(_) => Err(groups_err("a group name is longer than 1024 bytes")),
                    _ => Err(groups_err("not an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(groups_err("not an array of strings")),
    };

    // jsonwebtoken has checked that `exp` is present and a non-negative
    // number; it may be fractional.
    let exp = match claims.get("exp") {
        Some(v) => as_seconds(v).ok_or(IdentityError::Malformed("exp is not a number"))?,
        None => return Err(IdentityError::MissingClaim("exp".into())),
    };
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .ok_or(IdentityError::Malformed("exp out of range"))?;

    Ok(Identity {
        subject,
        groups,
        expires_at,
        issuer: String::new(),
    })
}

pub(super) fn check_subject(claim: &str, value: Option<&Value>) -> Result<String, IdentityError> {
    let invalid = |reason| IdentityError::InvalidIdentity {
        claim: claim.to_owned(),
        reason,
    };
    match value {
        None | Some(Value::Null) => Err(IdentityError::MissingClaim(claim.to_owned())),
        Some(Value::String(s)) if s.is_empty() => Err(invalid("empty")),
        Some(Value::String(s)) if s.len() > MAX_IDENTITY_BYTES => {
            Err(invalid("longer than 256 bytes"))
        }
        // Control characters (NUL included) have no business in a name and
        // would garble text logs.
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(invalid("contains control characters"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid("not a string")),
    }
}

/// What `rolemint token --key` puts into a token.
#[derive(Debug, Clone)]
pub struct IssueClaims<'a> {
    pub subject: &'a str,
    pub groups: &'a [String],
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub ttl: Duration,
}

fn claims_map(c: &IssueClaims<'_>, identity_claim: &str, groups_claim: &str) -> Map<String, Value> {
    let now = unix_now();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(c.subject));
    if let Some(iss) = c.issuer {
        claims.insert("iss".into(), Value::from(iss));
    }
    if let Some(aud) = c.audience {
        claims.insert("aud".into(), Value::from(aud));
    }
    claims.insert("iat".into(), Value::from(now));
    claims.insert(
        "exp".into(),
        Value::from(now.saturating_add(c.ttl.as_secs())),
    );
    if !c.groups.is_empty() {
        claims.insert(groups_claim.to_owned(), Value::from(c.groups.to_vec()));
    }
    claims
        .entry(identity_claim.to_owned())
        .or_insert_with(|| Value::from(c.subject));
    claims
}

fn check_issue(subject: &str, groups: &[String], groups_claim: &str) -> Result<(), IdentityError> {
    check_subject("sub", Some(&Value::from(subject)))?;
    if groups.len() > MAX_GROUPS {
        return Err(IdentityError::InvalidGroups {
            claim: groups_claim.to_owned(),
            reason: "more than 256 groups",
        });
    }
    Ok(())
}

/// Signs `{sub, iss, aud, iat, exp, groups}` with the local HS256 key.
///
/// The subject is also written under `auth.identity_claim` and the groups
/// under `auth.groups_claim`, so an issued token always verifies against the
/// same config.
pub(super) fn issue(
    auth: &AuthConfig,
    subject: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<Secret, IdentityError> {
    let secret = auth
        .hs256_secret
        .as_ref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| IdentityError::Key("auth.hs256_secret is not set".into()))?;
    check_issue(subject, groups, &auth.groups_claim)?;
    let claims = claims_map(
        &IssueClaims {
            subject,
            groups,
            issuer: auth.issuer.as_deref(),
            audience: auth.audience.as_deref(),
            ttl,
        },
        &auth.identity_claim,
        &auth.groups_claim,
    );
    let key = EncodingKey::from_secret(secret.expose().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map(Secret::new)
        .map_err(|_| IdentityError::Key("signing the token failed".into()))
}

/// Signs with an Ed25519 private key in PKCS#8 PEM.
pub(super) fn issue_ed25519(
    key_pem: &str,
    kid: Option<&str>,
    c: &IssueClaims<'_>,
) -> Result<Secret, IdentityError> {
    check_issue(c.subject, c.groups, "groups")?;
    let der = super::keys::pem_der(key_pem, "PRIVATE KEY")
        .ok_or_else(|| IdentityError::Key("not a PKCS#8 PEM private key".into()))?;
    let key = EncodingKey::from_ed_der(&der);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims_map(c, "sub", "groups"), &key)
        .map(Secret::new)
        .map_err(|_| IdentityError::Key("signing with the Ed25519 key failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::Verifier;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-key";

    fn auth() -> AuthConfig {
        AuthConfig {
            issuer: Some("rolemint-dev".into()),
            audience: Some("rolemint".into()),
            hs256_secret: Some(Secret::new(SECRET)),
            hs256_secret_file: None,
            identity_claim: "sub".into(),
            groups_claim: "groups".into(),
            leeway: Duration::from_secs(30),
            issuers: vec![],
            static_tokens: vec![],
            failure_rate: Default::default(),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(alg: Algorithm, secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn good_claims() -> Value {
        json!({"sub": "alice", "iss": "rolemint-dev", "aud": "rolemint", "exp": now() + 600})
    }

    fn verify(claims: Value) -> Result<Identity, IdentityError> {
        Verifier::from_config(&auth())
            .unwrap()
            .verify(&sign(Algorithm::HS256, SECRET, claims))
    }

    #[test]
    fn issue_then_verify_round_trips() {
        let groups = vec!["dba".to_string(), "dev".to_string()];
        let token = issue(
            &auth(),
            "alice@example.com",
            &groups,
            Duration::from_secs(900),
        )
        .unwrap();
        let id = Verifier::from_config(&auth())
            .unwrap()
            .verify(token.expose())
            .unwrap();
        assert_eq!(id.subject, "alice@example.com");
        assert_eq!(id.groups, groups);
        let exp = id.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(exp.abs_diff(now() + 900) <= 2, "{exp}");

        // Without issuer/audience configured, and with other claim names.
        let mut a = auth();
        a.issuer = None;
        a.audience = None;
        a.identity_claim = "email".into();
        a.groups_claim = "roles".into();
        let token = issue(&a, "bob", &[], Duration::from_secs(60)).unwrap();
        let id = Verifier::from_config(&a)
            .unwrap()
            .verify(token.expose())
            .unwrap();
        assert_eq!(id.subject, "bob");
        assert!(id.groups.is_empty());
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused() {
        let mut c = good_claims();
        c["exp"] = json!(now() - 3600);
        assert_eq!(verify(c).unwrap_err(), IdentityError::Expired);

        // Within the leeway is fine.
        let mut c = good_claims();
        c["exp"] = json!(now() - 5);
        verify(c).unwrap();

        let mut c = good_claims();
        c["nbf"] = json!(now() + 3600);
        assert_eq!(verify(c).unwrap_err(), IdentityError::NotYetValid);

        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verify(c).unwrap_err(),
            IdentityError::MissingClaim("exp".into())
        );
    }

    #[test]
    fn wrong_or_missing_issuer_and_audience_are_refused() {
        let mut c = good_claims();
        c["iss"] = json!("someone-else");
        assert_eq!(verify(c).unwrap_err(), IdentityError::WrongIssuer);
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(verify(c).unwrap_err(), IdentityError::WrongIssuer);

        let mut c = good_claims();
        c["aud"] = json!("other-service");
        assert_eq!(verify(c).unwrap_err(), IdentityError::WrongAudience);
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(verify(c).unwrap_err(), IdentityError::WrongAudience);

        // An audience list containing ours is fine.
        let mut c = good_claims();
        c["aud"] = json!(["other-service", "rolemint"]);
        verify(c).unwrap();
    }

    #[test]
    fn wrong_key_is_a_bad_signature() {
        let token = sign(
            Algorithm::HS256,
            "another-key-another-key-another-key",
            good_claims(),
        );
        let v = Verifier::from_config(&auth()).unwrap();
        assert_eq!(v.verify(&token).unwrap_err(), IdentityError::BadSignature);

        // A tampered payload as well.
        let token = sign(Algorithm::HS256, SECRET, good_claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            json!({"sub": "root", "iss": "rolemint-dev", "aud": "rolemint", "exp": now() + 600})
                .to_string(),
        );
        parts[1] = &forged;
        assert_eq!(
            v.verify(&parts.join(".")).unwrap_err(),
            IdentityError::BadSignature
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let v = Verifier::from_config(&auth()).unwrap();
        let hs512 = sign(Algorithm::HS512, SECRET, good_claims());
        assert_eq!(v.verify(&hs512).unwrap_err(), IdentityError::WrongAlgorithm);
        let hs384 = sign(Algorithm::HS384, SECRET, good_claims());
        assert_eq!(v.verify(&hs384).unwrap_err(), IdentityError::WrongAlgorithm);

        // alg "none", with and without an empty signature part.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(good_claims().to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(v.verify(&token).is_err(), "{token}");
        }
        // "none" spelled in other ways.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#);
        assert!(v.verify(&format!("{header}.{payload}.")).is_err());
    }

    #[test]
    fn garbage_is_malformed() {
        let v = Verifier::from_config(&auth()).unwrap();
        for token in ["", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9.!!!.x"] {
            let err = v.verify(token).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{token:?}: {err}");
        }
        // Without a dot and no static tokens configured it is simply not
        // a JWT; with some, it is taken for a static token that is not one.
        let err = v.verify("garbage").unwrap_err();
        assert_eq!(err.reason(), "malformed", "{err}");
        let mut with_statics = auth();
        with_statics
            .static_tokens
            .push(crate::config::StaticTokenConfig {
                identity: "ci".into(),
                groups: vec![],
                sha256: super::super::static_tokens::sha256_hex("rmt_other"),
            });
        let v = Verifier::from_config(&with_statics).unwrap();
        let err = v.verify("garbage").unwrap_err();
        assert_eq!(err.reason(), "unknown_static_token");
    }

    #[test]
    fn identity_claim_must_be_a_sane_string() {
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verify(c).unwrap_err(),
            IdentityError::MissingClaim("sub".into())
        );

        for bad in [json!(""), json!(42), json!("a".repeat(257)), json!("a\nb")] {
            let mut c = good_claims();
            c["sub"] = bad.clone();
            assert_eq!(verify(c).unwrap_err().reason(), "invalid_identity", "{bad}");
        }
        // jsonwebtoken itself refuses a `sub` that is an array.
        let mut c = good_claims();
        c["sub"] = json!(["a"]);
        assert!(verify(c).is_err());

        let mut c = good_claims();
        c["sub"] = json!("a".repeat(256));
        verify(c).unwrap();
    }

    #[test]
    fn groups_claim_is_checked() {
        let mut c = good_claims();
        c["groups"] = json!(null);
        assert!(verify(c).unwrap().groups.is_empty());

        for bad in [json!("dba"), json!([1, 2]), json!(vec!["g"; 257])] {
            let mut c = good_claims();
            c["groups"] = bad;
            assert_eq!(verify(c).unwrap_err().reason(), "invalid_groups");
        }
        let mut c = good_claims();
        c["groups"] = json!(vec!["g"; 256]);
        assert_eq!(verify(c).unwrap().groups.len(), 256);
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let v = Verifier::from_config(&auth()).unwrap();
        let dbg = format!("{v:?}");
        assert!(!dbg.contains(SECRET), "{dbg}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
        assert!(dbg.contains("local"), "{dbg}");

        let token = sign(
            Algorithm::HS256,
            "another-key-another-key-another-key",
            good_claims(),
        );
        let err = v.verify(&token).unwrap_err();
        assert!(!err.to_string().contains(&token[..20]));
    }

    #[test]
    fn no_key_no_verifier() {
        let mut a = auth();
        a.hs256_secret = None;
        assert_eq!(Verifier::from_config(&a).unwrap_err().reason(), "key");
        assert_eq!(
            issue(&a, "x", &[], Duration::from_secs(1))
                .unwrap_err()
                .reason(),
            "key"
        );
    }
}

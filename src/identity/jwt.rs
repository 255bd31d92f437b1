//! JWT validation and signing, on jsonwebtoken.
//!
//! jsonwebtoken parses the token, checks the signature and the registered
//! claims; this file decides *which* checks apply and reads our two claims:
//! - the algorithm is pinned per key (HS256 for the local issuer): a token
//!   whose header says `none`, HS512 or anything else is refused before any
//!   key is touched, which rules out algorithm-confusion attacks;
//! - `exp` is required, `nbf` is honoured when present, both with
//!   `auth.leeway` of clock skew;
//! - `iss` is required and must equal `auth.issuer` when that is set;
//! - `aud` is required and must contain `auth.audience` when that is set.
//!   When no audience is configured a token that *carries* an `aud` is
//!   refused (RFC 7519 §4.1.3: it was meant for someone who identified
//!   themselves; we did not);
//! - the identity claim (`auth.identity_claim`, `sub` by default) must be a
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

/// The claim rules of `[auth]`, shared by every key source.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    issuer: Option<String>,
    audience: Option<String>,
    /// Clock skew tolerated on `exp` / `nbf`, in whole seconds.
    leeway_secs: u64,
    identity_claim: String,
    groups_claim: String,
}

impl Rules {
    pub(super) fn from_config(auth: &AuthConfig) -> Rules {
        Rules {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway_secs: auth.leeway.as_secs(),
            identity_claim: auth.identity_claim.clone(),
            groups_claim: auth.groups_claim.clone(),
        }
    }

    /// jsonwebtoken's checks for tokens signed with `alg`.
    fn validation(&self, alg: Algorithm) -> Validation {
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
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// The local issuer's shared secret, with the validation pinned to HS256.
pub(super) struct Hs256Key {
    key: DecodingKey,
    validation: Validation,
}

impl Hs256Key {
    pub(super) fn new(secret: &Secret, rules: &Rules) -> Result<Hs256Key, IdentityError> {
        if secret.is_empty() {
            return Err(IdentityError::Key("auth.hs256_secret is empty".into()));
        }
        Ok(Hs256Key {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation: rules.validation(Algorithm::HS256),
        })
    }

    pub(super) fn accepts(&self, alg: Algorithm) -> bool {
        alg == Algorithm::HS256
    }

    pub(super) fn verify(&self, token: &str, rules: &Rules) -> Result<Identity, IdentityError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(map_error)?;
        identity_from_claims(&data.claims, rules)
    }
}

/// The `alg` of the token's header; only the header is read, nothing is
/// trusted yet.
pub(super) fn header_algorithm(token: &str) -> Result<Algorithm, IdentityError> {
    if token.is_empty() {
        return Err(IdentityError::Malformed("empty token"));
    }
    // An `alg` outside jsonwebtoken's list (`none` included) fails to parse
    // here and is reported as a malformed header.
    jsonwebtoken::decode_header(token)
        .map(|h| h.alg)
        .map_err(map_error)
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
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => IdentityError::Key("key unusable for this token".into()),
        _ => IdentityError::Malformed("rejected by the JWT library"),
    }
}

/// Reads the identity, groups and expiry out of verified claims.
fn identity_from_claims(
    claims: &Map<String, Value>,
    rules: &Rules,
) -> Result<Identity, IdentityError> {
    let subject = check_subject(&rules.identity_claim, claims.get(&rules.identity_claim))?;

    let groups_err = |reason| IdentityError::InvalidGroups {
        claim: rules.groups_claim.clone(),
        reason,
    };
    let groups = match claims.get(&rules.groups_claim) {
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
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .ok_or(IdentityError::Malformed("exp is not a number"))?,
        None => return Err(IdentityError::MissingClaim("exp".into())),
    };
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .ok_or(IdentityError::Malformed("exp out of range"))?;

    Ok(Identity {
        subject,
        groups,
        expires_at,
    })
}

fn check_subject(claim: &str, value: Option<&Value>) -> Result<String, IdentityError> {
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
        // Control characters have no business in a name and would garble
        // text logs.
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(invalid("contains control characters"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid("not a string")),
    }
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
    let subject = check_subject(&auth.identity_claim, Some(&Value::from(subject)))?;
    if groups.len() > MAX_GROUPS {
        return Err(IdentityError::InvalidGroups {
            claim: auth.groups_claim.clone(),
            reason: "more than 256 groups",
        });
    }

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(subject.clone()));
    if let Some(iss) = &auth.issuer {
        claims.insert("iss".into(), Value::from(iss.as_str()));
    }
    if let Some(aud) = &auth.audience {
        claims.insert("aud".into(), Value::from(aud.as_str()));
    }
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now.saturating_add(ttl.as_secs())));
    if !groups.is_empty() {
        claims.insert(auth.groups_claim.clone(), Value::from(groups.to_vec()));
    }
    claims
        .entry(auth.identity_claim.clone())
        .or_insert_with(|| Value::from(subject));

    let key = EncodingKey::from_secret(secret.expose().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map(Secret::new)
        .map_err(|_| IdentityError::Key("signing the token failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Verifier;
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
        for token in ["", "garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9.!!!.x"] {
            let err = v.verify(token).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{token:?}: {err}");
        }
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
        assert!(dbg.contains("hs256_secret"), "{dbg}");

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

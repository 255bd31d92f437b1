//! Verification keys: from PEM public keys and from JWKS documents.
//!
//! Each [`Key`] remembers its family (HMAC, RSA, EC, Ed25519), its curve,
//! the algorithm its JWK names and its `kid`, so that `issuer.rs` can refuse
//! a token whose algorithm does not fit the key *before* any cryptography:
//! a public key is never used as an HMAC secret, an EC key never verifies
//! an RSA signature. A JWKS never contributes symmetric (`kty = "oct"`)
//! keys: a shared secret published in a key set would be a secret no more.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// Most keys taken from one JWKS; identity providers publish a handful.
pub(super) const MAX_JWKS_KEYS: usize = 64;

/// One verification key.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) kid: Option<String>,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    pub(super) alg: Option<Algorithm>,
    /// For EC keys: the curve decides between ES256 and ES384.
    pub(super) curve: Option<EllipticCurve>,
    pub(super) key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub(super) fn fits(&self, alg: Algorithm) -> bool {
        if self.key.family() != alg.family() || self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.curve, alg) {
            (Some(EllipticCurve::P256), Algorithm::ES256) => true,
            (Some(EllipticCurve::P384), Algorithm::ES384) => true,
            (Some(_), _) => false,
            (None, _) => true,
        }
    }
}

/// The contents of the first PEM block labelled `label`
/// (`-----BEGIN {label}-----`), decoded.
pub(crate) fn pem_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

/// A key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an RSA, EC
/// (P-256, P-384) or Ed25519 key, or a PKCS#1 `RSA PUBLIC KEY`.
pub(super) fn from_public_pem(pem: &str) -> Result<Key, String> {
    if let Some(der) = pem_der(pem, "RSA PUBLIC KEY") {
        return Ok(key(DecodingKey::from_rsa_der(&der), None));
    }
    let der = pem_der(pem, "PUBLIC KEY")
        .ok_or("no PEM PUBLIC KEY block (private keys and certificates are not accepted)")?;
    let (oid, param, bits) = spki(&der).ok_or("not a DER SubjectPublicKeyInfo")?;
    match (oid, param) {
        (OID_RSA, _) => Ok(key(DecodingKey::from_rsa_der(bits), None)),
        (OID_EC, Some(OID_P256)) => Ok(key(
            DecodingKey::from_ec_der(bits),
            Some(EllipticCurve::P256),
        )),
        (OID_EC, Some(OID_P384)) => Ok(key(
            DecodingKey::from_ec_der(bits),
            Some(EllipticCurve::P384),
        )),
        (OID_ED25519, _) if bits.len() == 32 => Ok(key(DecodingKey::from_ed_der(bits), None)),
        _ => Err("unsupported public key type (RSA, EC P-256/P-384 and Ed25519 are)".into()),
    }
}

fn key(key: DecodingKey, curve: Option<EllipticCurve>) -> Key {
    Key {
        kid: None,
        alg: None,
        curve,
        key,
    }
}

/// The keys of a JWKS document. Keys rolemint cannot or must not use
/// (symmetric, encryption-only, unknown types, unsupported curves) are
/// skipped; a document with no usable key, or not a JWKS at all, is an
/// error.
pub(super) fn from_jwks(json: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(json).map_err(|_| "not a JWKS document".to_owned())?;
    let mut keys = Vec::new();
    for value in set.keys.into_iter().take(MAX_JWKS_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(k) = from_jwk(&jwk) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable signing key".into());
    }
    Ok(keys)
}

fn from_jwk(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(Algorithm::try_from(ka).ok()?),
    };
    let curve = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_) => return None,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 | EllipticCurve::P384 => Some(p.curve.clone()),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve != EllipticCurve::Ed25519 => return None,
        _ => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        curve,
        key,
    })
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// (algorithm OID, parameter OID, key bits) of a SubjectPublicKeyInfo.
type Spki<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);

/// Splits a SubjectPublicKeyInfo into (algorithm OID, parameter OID when
/// it is one, key bits): the key bits are what jsonwebtoken's `from_*_der`
/// take (PKCS#1 for RSA, the point for EC, the 32 bytes for Ed25519).
fn spki(der: &[u8]) -> Option<Spki<'_>> {
    let (tag, outer, rest) = tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (tag, alg_id, rest) = tlv(outer)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, params) = tlv(alg_id)?;
    if tag != 0x06 {
        return None;
    }
    let param = match tlv(params) {
        Some((0x06, p, _)) => Some(p),
        _ => None,
    };
    let (tag, bits, _) = tlv(rest)?;
    // A BIT STRING starts with its count of unused bits: always 0 here.
    if tag != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    Some((oid, param, &bits[1..]))
}

/// One DER tag-length-value: (tag, value, what follows). Short and long
/// definite lengths only, bounded by the input.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_refuses_truncated_and_indefinite_lengths() {
        assert!(tlv(&[0x30]).is_none());
        assert!(tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(tlv(&[0x30, 0x80, 0, 0]).is_none());
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert_eq!(
            tlv(&[0x04, 0x01, 9, 7]),
            Some((0x04, &[9u8][..], &[7u8][..]))
        );
    }

    #[test]
    fn jwks_never_yields_symmetric_or_encryption_keys() {
        let jwks = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        assert!(from_jwks(jwks).is_err());
        let jwks = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let keys = from_jwks(jwks).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].fits(Algorithm::EdDSA));
        assert!(!keys[0].fits(Algorithm::HS256));
        assert!(!keys[0].fits(Algorithm::RS256));
        assert!(from_jwks(b"[]").is_err());
    }

    #[test]
    fn pem_needs_a_public_key_block() {
        assert!(
            from_public_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
        assert!(from_public_pem("garbage").is_err());
    }
}

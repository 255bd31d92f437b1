//! Key pairs and random tokens for the command line.
//!
//! - [`ed25519`]: an Ed25519 key pair as PEM (PKCS#8 private key,
//!   SubjectPublicKeyInfo public key) and the public key as a JWKS, for an
//!   issuer `rolemint token --key` signs for (`rolemint keygen`).
//! - [`random_token`]: 256 random bits, base64url, with a prefix saying what
//!   the token is for (`rolemint token --static` / `--operator`).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::static_tokens;
use crate::secret::Secret;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): the
/// 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 key pair in the forms rolemint reads.
pub struct Ed25519Files {
    /// PKCS#8 PEM: the signing key (`rolemint token --key`).
    pub private_pem: Secret,
    /// SubjectPublicKeyInfo PEM (`public_key_file`).
    pub public_pem: String,
    /// `{"keys":[...]}` with the public key (`jwks_file`).
    pub jwks: String,
    /// The key id in the JWKS (the first 16 hex digits of the public key's
    /// SHA-256), for the token header.
    pub kid: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The key id rolemint gives an Ed25519 public key.
fn kid(public: &[u8]) -> String {
    static_tokens::sha256_hex(&URL_SAFE_NO_PAD.encode(public))[..16].to_owned()
}

/// The key id of the public half of a PKCS#8 PEM Ed25519 private key, as
/// `ed25519` put it in the JWKS.
pub fn kid_of_private_pem(pem: &str) -> Result<String, String> {
    let der = super::keys::pem_der(pem, "PRIVATE KEY").ok_or("not a PKCS#8 PEM private key")?;
    let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| "not an Ed25519 private key")?;
    Ok(kid(pair.public_key().as_ref()))
}

/// A fresh Ed25519 key pair.
pub fn ed25519() -> Result<Ed25519Files, String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "key generation failed")?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "key generation failed")?;
    let public = pair.public_key().as_ref().to_vec();
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(&public);
    let kid = kid(&public);
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
        "kid": kid, "x": URL_SAFE_NO_PAD.encode(&public),
    }]});
    Ok(Ed25519Files {
        private_pem: Secret::new(pem("PRIVATE KEY", pkcs8.as_ref())),
        public_pem: pem("PUBLIC KEY", &spki),
        jwks: serde_json::to_string_pretty(&jwks).map_err(|e| e.to_string())?,
        kid,
    })
}

/// 256 random bits as base64url after `prefix`; no `.`, so it is never
/// mistaken for a JWT.
pub fn random_token(prefix: &str) -> Result<Secret, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "system random number generator failed")?;
    Ok(Secret::new(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes)
    )))
}

/// The hex SHA-256 the config holds for `token`.
pub fn sha256_hex(token: &Secret) -> String {
    static_tokens::sha256_hex(token.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        let files = ed25519().unwrap();
        let key = super::super::keys::from_public_pem(&files.public_pem).unwrap();
        assert!(key.fits(jsonwebtoken::Algorithm::EdDSA));
        let keys = super::super::keys::from_jwks(files.jwks.as_bytes()).unwrap();
        assert_eq!(keys[0].kid.as_deref(), Some(files.kid.as_str()));
        assert_eq!(
            kid_of_private_pem(files.private_pem.expose()).unwrap(),
            files.kid
        );
        assert!(!format!("{:?}", files.private_pem).contains("PRIVATE"));
    }

    #[test]
    fn random_tokens_differ_and_have_no_dot() {
        let a = random_token("rmt_").unwrap();
        let b = random_token("rmt_").unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("rmt_") && !a.expose().contains('.'));
        assert_eq!(sha256_hex(&a).len(), 64);
    }
}

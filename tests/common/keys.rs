//! Real signing keys for test tokens: an RSA key pair as jsonwebtoken signs
//! with it, and its public half as PEM and as JWK members.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::EncodingKey;
use serde_json::{json, Value};

/// PEM armour around DER.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A fresh RSA-2048 key pair.
pub struct Rsa {
    pub signing: EncodingKey,
    /// SubjectPublicKeyInfo PEM: the public key an attacker knows.
    pub public_pem: String,
    pub n: String,
    pub e: String,
}

pub fn rsa() -> Rsa {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = kp.as_der().unwrap();
    let public = kp.public_key();
    Rsa {
        signing: EncodingKey::from_rsa_der(&pkcs8_to_pkcs1(pkcs8.as_ref())),
        public_pem: pem("PUBLIC KEY", public.as_der().unwrap().as_ref()),
        n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
        e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
    }
}

/// The key's public half as an RS256 JWK named `kid`.
pub fn rsa_jwk(key: &Rsa, kid: &str) -> Value {
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": key.n, "e": key.e})
}

/// One DER TLV: (tag, value, rest).
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (input[0], input[1]);
    let (len, rest) = if first < 0x80 {
        (first as usize, &input[2..])
    } else {
        let n = (first & 0x7f) as usize;
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &input[2 + n..])
    };
    (tag, &rest[..len], &rest[len..])
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (what
/// jsonwebtoken's `from_rsa_der` signs with).
fn pkcs8_to_pkcs1(pkcs8: &[u8]) -> Vec<u8> {
    let (_, seq, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(seq);
    let (_, _alg, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    key.to_vec()
}

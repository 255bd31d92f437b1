//! One token issuer: its `iss`, the algorithms it may use, its keys.
//!
//! The algorithms are pinned by the config; the token's header only says
//! which of them it claims to use. The key source decides the family: a
//! shared secret allows only HS256/384/512, a public key or JWKS only the
//! asymmetric algorithms, so an RSA public key can never be fed to HMAC as
//! a secret (the classic RS/HS confusion). Within the family every key is
//! checked against the algorithm again (`keys::Key::fits`), and a `kid` in
//! the token header must match the key's when the key has one.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::jwks::RemoteJwks;
use super::jwt::{self, Rules};
use super::keys::{self, Key};
use super::{Identity, IdentityError};
use crate::config::auth::jwt_algorithm;
use crate::config::{AuthConfig, IssuerConfig};

/// Where an issuer's keys come from.
enum Keys {
    /// Read once at startup: a shared secret, a PEM file, a JWKS file.
    Fixed(Arc<Vec<Key>>),
    /// Fetched and refreshed: a JWKS URL (or one found by discovery).
    Remote(Arc<RemoteJwks>),
}

pub(super) struct Issuer {
    name: String,
    rules: Rules,
    algorithms: Vec<Algorithm>,
    keys: Keys,
}

impl Issuer {
    /// The local issuer of the flat `[auth]` keys, when `hs256_secret` is
    /// set: HS256 only.
    pub(super) fn local(auth: &AuthConfig) -> Result<Option<Issuer>, IdentityError> {
        let Some(secret) = &auth.hs256_secret else {
            return Ok(None);
        };
        if secret.is_empty() {
            return Err(IdentityError::Key("auth.hs256_secret is empty".into()));
        }
        Ok(Some(Issuer {
            name: "local".into(),
            rules: Rules::from_config(auth),
            algorithms: vec![Algorithm::HS256],
            keys: Keys::Fixed(Arc::new(vec![Key {
                kid: None,
                alg: Some(Algorithm::HS256),
                curve: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            }])),
        }))
    }

    /// An `[[auth.issuers]]` entry; reads its key file. Relative paths have
    /// been resolved by `Config::resolve`.
    pub(super) fn from_config(c: &IssuerConfig, leeway: Duration) -> Result<Issuer, IdentityError> {
        c.validate().map_err(IdentityError::Key)?;
        let key_err = |msg: String| IdentityError::Key(format!("issuer \"{}\": {msg}", c.name));
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| key_err(format!("cannot read {}: {e}", path.display())))
        };
        let keys = if let Some(secret) = &c.hs256_secret {
            Keys::Fixed(Arc::new(vec![Key {
                kid: None,
                alg: None,
                curve: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            }]))
        } else if let Some(path) = &c.public_key_file {
            let pem = String::from_utf8(read(path)?)
                .map_err(|_| key_err("public_key_file is not PEM text".into()))?;
            Keys::Fixed(Arc::new(
                vec![keys::from_public_pem(&pem).map_err(key_err)?],
            ))
        } else if let Some(path) = &c.jwks_file {
            Keys::Fixed(Arc::new(keys::from_jwks(&read(path)?).map_err(key_err)?))
        } else {
            Keys::Remote(Arc::new(RemoteJwks::new(c).map_err(key_err)?))
        };
        Ok(Issuer {
            name: c.name.clone(),
            rules: Rules {
                issuer: Some(c.issuer.clone()),
                audiences: c.audiences.clone(),
                leeway_secs: leeway.as_secs(),
                identity_claim: c.identity_claim.clone(),
                groups_claim: c.groups_claim.clone(),
                max_lifetime: Some(c.max_token_lifetime),
            },
            algorithms: c
                .algorithms
                .iter()
                .filter_map(|a| jwt_algorithm(a))
                .collect(),
            keys,
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn remote(&self) -> Option<Arc<RemoteJwks>> {
        match &self.keys {
            Keys::Remote(r) => Some(Arc::clone(r)),
            Keys::Fixed(_) => None,
        }
    }

    /// Whether a token with this (unverified) `iss` is this issuer's. The
    /// local issuer without a configured `iss` takes tokens without one.
    pub(super) fn accepts_iss(&self, iss: Option<&str>) -> bool {
        self.rules.issuer.as_deref() == iss
    }

    /// The keys at hand: a new `Arc` after every JWKS refresh, which is
    /// how the token cache tells a key set from its successor.
    pub(super) fn key_set(&self) -> Arc<Vec<Key>> {
        match &self.keys {
            Keys::Fixed(keys) => Arc::clone(keys),
            Keys::Remote(remote) => remote.keys(),
        }
    }

    /// Verifies `token` with `keys`, an [`Issuer::key_set`] of this
    /// issuer: with this issuer's keys only.
    pub(super) fn verify_with(&self, token: &str, keys: &[Key]) -> Result<Identity, IdentityError> {
        let (alg, kid) = jwt::header(token)?;
        if !self.algorithms.contains(&alg) {
            return Err(IdentityError::WrongAlgorithm);
        }
        let fitting: Vec<&Key> = keys.iter().filter(|k| k.fits(alg)).collect();
        let candidates: Vec<&Key> = fitting
            .iter()
            .copied()
            .filter(|k| match (&kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(IdentityError::UnknownKey(self.name.clone()));
        }
        let mut last = IdentityError::BadSignature;
        for key in candidates {
            match self.rules.verify(token, &key.key, alg, &self.name) {
                // A signature that fails with one key may verify with the
                // next (a key set without kids); any other failure is about
                // the token itself.
                Err(IdentityError::BadSignature) => last = IdentityError::BadSignature,
                other => return other,
            }
        }
        Err(last)
    }
}

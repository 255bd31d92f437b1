//! Static tokens: for service accounts with no identity provider.
//!
//! Only the SHA-256 of each token is in the config, so a leaked config
//! leaks no credential. A presented token is hashed and compared with
//! every configured hash in constant time (`subtle`), without stopping at
//! the first match, so the time taken says nothing about which entry, or
//! how much of one, matched. A 256-bit random token needs no stretching:
//! guessing it is as hard as guessing the hash's preimage.

use aws_lc_rs::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use super::{Identity, IdentityError};
use crate::config::auth::{parse_sha256_hex, validate_static_tokens as validate};
use crate::config::StaticTokenConfig;

/// Static tokens never expire by themselves; the lease TTL bounds a
/// session. A century from now stands in for "no `exp`".
const NO_EXPIRY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

struct Entry {
    hash: [u8; 32],
    identity: String,
    groups: Vec<String>,
}

pub(super) struct StaticTokens {
    entries: Vec<Entry>,
}

/// The hex SHA-256 of `token`, as the config holds it.
pub fn sha256_hex(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl StaticTokens {
    pub(super) fn from_config(tokens: &[StaticTokenConfig]) -> Result<StaticTokens, String> {
        validate(tokens)?;
        let entries = tokens
            .iter()
            .filter_map(|t| {
                Some(Entry {
                    hash: parse_sha256_hex(&t.sha256)?,
                    identity: t.identity.clone(),
                    groups: t.groups.clone(),
                })
            })
            .collect();
        Ok(StaticTokens { entries })
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let presented = digest(&SHA256, token.as_bytes());
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            // Every entry is compared; none is skipped after a match.
            if bool::from(entry.hash.ct_eq(presented.as_ref())) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(IdentityError::UnknownStaticToken)?;
        Ok(Identity {
            subject: entry.identity.clone(),
            groups: entry.groups.clone(),
            expires_at: std::time::SystemTime::now() + NO_EXPIRY,
            issuer: "static".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: &str) -> Vec<StaticTokenConfig> {
        vec![StaticTokenConfig {
            identity: "ci".into(),
            groups: vec!["ci".into()],
            sha256: sha256_hex(token),
        }]
    }

    #[test]
    fn only_the_token_whose_hash_is_configured_verifies() {
        let tokens = StaticTokens::from_config(&config("rmt_secret-token")).unwrap();
        let id = tokens.verify("rmt_secret-token").unwrap();
        assert_eq!((id.subject.as_str(), id.issuer.as_str()), ("ci", "static"));
        assert_eq!(id.groups, ["ci"]);
        assert_eq!(
            tokens.verify("rmt_secret-tokeN").unwrap_err(),
            IdentityError::UnknownStaticToken
        );
        // The hash itself is not the token.
        assert!(tokens.verify(&sha256_hex("rmt_secret-token")).is_err());
    }

    #[test]
    fn bad_hashes_are_config_errors() {
        let mut c = config("x");
        c[0].sha256 = "abc".into();
        assert!(validate(&c).is_err());
        let mut c = config("x");
        c.push(c[0].clone());
        assert!(validate(&c).unwrap_err().contains("twice"));
    }
}

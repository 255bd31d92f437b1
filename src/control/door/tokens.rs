//! Client tokens of the Vault-compatible login: what `auth.client_token`
//! is, and what later requests send as `X-Vault-Token`.
//!
//! A token is 256 random bits; rolemint keeps only its SHA-256 (a lookup
//! by hash needs no constant-time compare: the hash of a guess says nothing
//! about the hash of the token), with the identity it stands for and its
//! expiry. The map is bounded (`vault.max_client_tokens`): expired entries
//! are swept when it is full, and a login past the bound is refused rather
//! than evicting a live token. Tokens live in memory only: after a restart
//! a workload logs in again, as it would after a Vault token expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::auth::identity::Identity;
use crate::secret::Secret;

/// Prefix of client tokens, so a leaked one is recognisable in a secret
/// scanner (Vault's own service tokens start `hvs.`).
const PREFIX: &str = "rmv.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("too many client tokens; try again later")]
    Full,
    #[error("no random bytes")]
    Random,
}

/// The in-memory client tokens.
pub struct ClientTokens {
    max: usize,
    map: Mutex<HashMap<[u8; 32], Identity>>,
}

impl std::fmt::Debug for ClientTokens {
    // By hand: the map's keys are the tokens' hashes, which are not for a
    // log line either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTokens")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl ClientTokens {
    pub fn new(max: usize) -> ClientTokens {
        ClientTokens {
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A new token standing for `identity` until `expires_at` (stored in
    /// place of the identity's own expiry).
    pub fn issue(&self, identity: &Identity, expires_at: SystemTime) -> Result<Secret, TokenError> {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Random)?;
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            let now = SystemTime::now();
            map.retain(|_, id| id.expires_at > now);
            if map.len() >= self.max {
                return Err(TokenError::Full);
            }
        }
        let identity = Identity {
            expires_at,
            ..identity.clone()
        };
        map.insert(hash(&token), identity);
        Ok(Secret::new(token))
    }

    /// The identity `token` stands for, if it is one of ours and unexpired.
    /// `None` also for anything that is not shaped like a client token.
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        if !token.starts_with(PREFIX) {
            return None;
        }
        let key = hash(token);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(id) if id.expires_at > SystemTime::now() => Some(id.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a token is shaped like a client token (for telling a wrong one
/// from an identity JWT or static token).
pub fn is_client_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// How long a login's client token lives: `ttl`, never past the JWT's own
/// expiry. Whole seconds, as Vault reports them.
pub fn client_token_ttl(identity: &Identity, ttl: Duration, now: SystemTime) -> Duration {
    let left = identity.expires_at.duration_since(now).unwrap_or_default();
    Duration::from_secs(left.min(ttl).as_secs())
}

fn hash(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(expires_in: Duration) -> Identity {
        Identity {
            subject: "alice".into(),
            groups: vec!["dev".into()],
            expires_at: SystemTime::now() + expires_in,
            issuer: "local".into(),
        }
    }

    #[test]
    fn a_token_stands_for_its_identity_until_it_expires() {
        let tokens = ClientTokens::new(10);
        let id = alice(Duration::from_secs(600));
        let t = tokens
            .issue(&id, SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        assert!(t.expose().starts_with("rmv.") && t.expose().len() > 40);
        let found = tokens.lookup(t.expose()).unwrap();
        assert_eq!((found.subject.as_str(), found.groups.len()), ("alice", 1));
        assert!(tokens.lookup("rmv.nope").is_none());
        assert!(tokens.lookup("eyJ.x.y").is_none());
        let gone = tokens.issue(&id, SystemTime::now()).unwrap();
        assert!(tokens.lookup(gone.expose()).is_none());
        assert_eq!(tokens.len(), 1, "an expired token is forgotten when seen");
    }

    #[test]
    fn the_map_is_bounded_and_expired_tokens_make_room() {
        let tokens = ClientTokens::new(2);
        let id = alice(Duration::from_secs(600));
        let past = SystemTime::now() - Duration::from_secs(1);
        tokens.issue(&id, past).unwrap();
        let later = SystemTime::now() + Duration::from_secs(60);
        tokens.issue(&id, later).unwrap();
        // Full, but one is expired: swept, room made.
        let t = tokens.issue(&id, later).unwrap();
        assert!(tokens.lookup(t.expose()).is_some());
        assert!(matches!(tokens.issue(&id, later), Err(TokenError::Full)));
    }

    #[test]
    fn the_ttl_never_outlives_the_jwt() {
        let now = SystemTime::now();
        let id = alice(Duration::from_secs(90));
        let hour = Duration::from_secs(3600);
        assert!(client_token_ttl(&id, hour, now) <= Duration::from_secs(90));
        assert_eq!(
            client_token_ttl(&id, Duration::from_secs(30), now),
            Duration::from_secs(30)
        );
    }
}

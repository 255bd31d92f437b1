//! Verified JWTs remembered until they expire, so a client that reconnects
//! with the same token (a pool, `pgbench -C`) costs one hash and one lookup
//! instead of a signature check and three JSON parses.
//!
//! What keeps it safe:
//! - The key is the token's SHA-256, never the token: the cache holds
//!   nothing a client could log in with.
//! - An entry is used only before the token's `exp` (without the leeway:
//!   past `exp` the token is checked again, leeway and all) and only while
//!   its issuer still has the very key set it was verified with. A JWKS
//!   refresh swaps the key set, so a key rotated out stops vouching for its
//!   tokens at the next refresh, as it would without the cache.
//! - A reload builds a new verifier, and with it an empty cache.
//! - Only successes are cached; a refused token is checked in full every
//!   time (and counted by the failure limiter).
//! - Bounded: at most [`CAPACITY`] entries of at most [`MAX_ENTRY_BYTES`]
//!   each (a token with a large groups claim is simply not cached). When
//!   full, expired entries go first, then an arbitrary one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_lc_rs::digest::{digest, SHA256};

use super::keys::Key;
use super::Identity;

/// Most tokens remembered at once.
pub const CAPACITY: usize = 4096;
/// Largest identity (subject and groups, in bytes) worth remembering.
pub const MAX_ENTRY_BYTES: usize = 4096;

/// A verified token's identity, and what it was verified with.
struct Entry {
    identity: Identity,
    /// Index of the issuer in the verifier.
    issuer: usize,
    /// The issuer's key set at verification time.
    keys: Arc<Vec<Key>>,
}

#[derive(Default)]
pub(super) struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

// Hand-written: the keys of the map are token hashes.
impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .finish()
    }
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

fn size(identity: &Identity) -> usize {
    identity.subject.len() + identity.groups.iter().map(String::len).sum::<usize>()
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity `token` was verified as, if that still holds at `now`
    /// with `keys_of(issuer)` the issuer's current key set.
    pub(super) fn get(
        &self,
        token: &str,
        now: SystemTime,
        keys_of: impl Fn(usize) -> Option<Arc<Vec<Key>>>,
    ) -> Option<Identity> {
        let key = hash(token);
        let mut entries = self.lock();
        let entry = entries.get(&key)?;
        let fresh = now < entry.identity.expires_at
            && keys_of(entry.issuer).is_some_and(|keys| Arc::ptr_eq(&keys, &entry.keys));
        if fresh {
            Some(entry.identity.clone())
        } else {
            entries.remove(&key);
            None
        }
    }

    /// Remembers that `token` verified as `identity` with `keys` of issuer
    /// number `issuer`.
    pub(super) fn put(
        &self,
        token: &str,
        identity: &Identity,
        issuer: usize,
        keys: Arc<Vec<Key>>,
        now: SystemTime,
    ) {
        if size(identity) > MAX_ENTRY_BYTES || identity.expires_at <= now {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.retain(|_, e| e.identity.expires_at > now);
        }
        if entries.len() >= CAPACITY {
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
            }
        }
        entries.insert(
            hash(token),
            Entry {
                identity: identity.clone(),
                issuer,
                keys,
            },
        );
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn identity(subject: &str, valid_for: Duration) -> Identity {
        Identity {
            subject: subject.into(),
            groups: vec![],
            expires_at: SystemTime::now() + valid_for,
            issuer: "local".into(),
        }
    }

    #[test]
    fn an_entry_holds_until_exp_and_while_the_key_set_is_the_same() {
        let cache = TokenCache::default();
        let keys = Arc::new(Vec::new());
        let now = SystemTime::now();
        let alice = identity("alice", Duration::from_secs(60));
        cache.put("tok-a", &alice, 0, Arc::clone(&keys), now);
        let same = |_| Some(Arc::clone(&keys));
        assert_eq!(cache.get("tok-a", now, same), Some(alice.clone()));
        assert_eq!(cache.get("tok-b", now, same), None);
        // Past exp: gone, and removed.
        let later = now + Duration::from_secs(61);
        assert_eq!(cache.get("tok-a", later, same), None);
        assert_eq!(cache.len(), 0);
        // A new key set (a JWKS refresh) invalidates.
        cache.put("tok-a", &alice, 0, Arc::clone(&keys), now);
        let rotated = Arc::new(Vec::new());
        assert_eq!(
            cache.get("tok-a", now, |_| Some(Arc::clone(&rotated))),
            None
        );
        assert_eq!(cache.get("tok-a", now, same), None, "removed on the miss");
    }

    #[test]
    fn bounded_in_entries_and_in_entry_size() {
        let cache = TokenCache::default();
        let keys = Arc::new(Vec::new());
        let now = SystemTime::now();
        let mut big = identity("bob", Duration::from_secs(60));
        big.groups = vec!["g".repeat(MAX_ENTRY_BYTES)];
        cache.put("big", &big, 0, Arc::clone(&keys), now);
        assert_eq!(cache.len(), 0, "a large identity is not cached");
        for i in 0..CAPACITY + 10 {
            let who = identity(&format!("u{i}"), Duration::from_secs(60));
            cache.put(&format!("t{i}"), &who, 0, Arc::clone(&keys), now);
        }
        assert_eq!(cache.len(), CAPACITY);
        let last = format!("t{}", CAPACITY + 9);
        assert!(cache.get(&last, now, |_| Some(Arc::clone(&keys))).is_some());
    }

    #[test]
    fn debug_shows_no_hash() {
        let cache = TokenCache::default();
        let now = SystemTime::now();
        let who = identity("carol", Duration::from_secs(60));
        cache.put("secret-token", &who, 0, Arc::new(Vec::new()), now);
        assert_eq!(format!("{cache:?}"), "TokenCache { entries: 1 }");
    }
}

//! Query cancellation: rolemint's own BackendKeyData, mapped to the backend's.
//!
//! A client never sees the backend's cancel secret. It gets a (process id,
//! secret) pair from here, and a CancelRequest that carries it is forwarded
//! to the right backend. Secrets are compared in constant time, so their
//! bytes cannot be guessed one at a time from response timing; a wrong or
//! unknown key is ignored silently, as PostgreSQL does.
//!
//! The process id is always the backend's own: applications compare it with
//! `pg_backend_pid()`, join `pg_stat_activity` on it, and recognise their
//! own `NOTIFY`s by it (psycopg2's `get_backend_pid()`, JDBC's
//! `PGConnection.getBackendPID()`). Only the secret half is rolemint's.
//!
//! # One instance
//!
//! Without `[cluster] secret` the secret is random and only the instance
//! that issued it knows it ([`CancelMap`]): a CancelRequest that a load
//! balancer sends to another instance cancels nothing.
//!
//! # Many instances
//!
//! With `[cluster] secret` the secret is a MAC ([`ClusterKey`]):
//! HMAC-SHA-256, keyed by the secret every instance
//! shares, over the process id and the name of the role the backend is
//! logged in as: the whole 256-bit tag for a protocol 3.2 client, cut to
//! the 32 bits a protocol 3.0 key has otherwise. Any instance
//! verifies a key without shared memory: it asks PostgreSQL which role
//! `pid` is logged in as (only if it is a minted role), recomputes the MAC,
//! and only if it matches calls `pg_cancel_backend(pid)` for that pid *and*
//! that role, in one statement, so a pid reused in between is not hit.
//!
//! Why the role's name and not `pg_stat_activity.backend_start`: both tell
//! a reused pid apart (a minted role logs in once, for one session, and its
//! name is never minted again: it carries a random part and the time), but
//! the name is known before the backend login, while `backend_start` would
//! cost a round trip per session (it is not in the login's messages, and
//! reading it on the client's own session would put a query of ours in its
//! statement log and statistics), and the admin role sees `backend_start`
//! of other roles' backends only with `pg_read_all_stats`; `usename` and
//! `pid` are visible to every role.
//!
//! # Forgery odds
//!
//! The instance that holds a session accepts only the exact key it issued.
//! Another instance cannot know which length a session's key has (the
//! client's protocol is nowhere in the database), so it verifies both: for
//! a request that reaches another instance, a 3.2 session's key is also
//! guessable as its 32-bit prefix, at the odds below.
//!
//! A client that speaks protocol 3.2 (libpq 18 with
//! `max_protocol_version=latest`) gets a 256-bit secret, random or the
//! whole MAC: guessing it is out of reach. A protocol 3.0 client's secret is
//! 32 bits, whatever the backend speaks. A forger who knows a live
//! session's pid has one chance in 2^32 per try against such a key,
//! and each try is a TCP connection to rolemint. Failed verifications are
//! counted per client address with the token bucket of failed logins
//! (`[auth.failure_rate]`, by default 10 at once and 10 a minute): once an
//! address's bucket is empty its CancelRequests are dropped without asking
//! PostgreSQL. That is at most ~14,400 tries a day per address, odds of
//! about 1 in 300,000 per day of cancelling one query of one session; and
//! a cancel only interrupts a statement, it reads and changes nothing.

use std::net::IpAddr;
use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use dashmap::DashMap;

use crate::auth::identity::FailureLimiter;
use crate::config::Config;
use crate::pg::backend::{BackendKey, CancelSecret};
use crate::secret::Secret;

/// The MAC key shared by every instance of a deployment.
pub struct ClusterKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(***)")
    }
}

/// The secret length a protocol 3.2 client gets: 256 bits, as PostgreSQL
/// 18 gives, and the whole HMAC-SHA-256 tag in a cluster.
pub const LONG_SECRET: usize = 32;
/// A protocol 3.0 client's secret.
pub const SHORT_SECRET: usize = 4;

impl ClusterKey {
    pub fn new(secret: &Secret) -> ClusterKey {
        ClusterKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
        }
    }

    /// The MAC of the backend `process_id` logged in as `role`, all 32
    /// bytes; a 3.0 key is its first four. The process id is fixed-width
    /// and comes first, so no two (pid, role) pairs share an input.
    fn tag(&self, process_id: i32, role: &str) -> [u8; LONG_SECRET] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"rolemint cancel v1\0");
        ctx.update(&process_id.to_be_bytes());
        ctx.update(role.as_bytes());
        let mut tag = [0u8; LONG_SECRET];
        tag.copy_from_slice(ctx.sign().as_ref());
        tag
    }

    /// The cancel secret of (`process_id`, `role`), `len` bytes long
    /// ([`SHORT_SECRET`] or [`LONG_SECRET`]).
    pub fn secret_for(&self, process_id: i32, role: &str, len: usize) -> CancelSecret {
        let tag = self.tag(process_id, role);
        CancelSecret::new(&tag[..len.clamp(SHORT_SECRET, LONG_SECRET)])
            .expect("4 to 32 bytes is a valid cancel secret")
    }

    /// Whether `secret` is the secret of (`process_id`, `role`), in
    /// constant time; only the two lengths rolemint issues can match.
    pub fn verify(&self, process_id: i32, role: &str, secret: &CancelSecret) -> bool {
        let len = secret.as_bytes().len();
        if len != SHORT_SECRET && len != LONG_SECRET {
            return false;
        }
        self.secret_for(process_id, role, len) == *secret
    }
}

/// A random cancel secret of `len` bytes, from the system's generator.
fn random_secret(len: usize) -> CancelSecret {
    let mut bytes = [0u8; LONG_SECRET];
    let len = len.clamp(SHORT_SECRET, LONG_SECRET);
    // The system RNG failing is not something a proxy can recover from;
    // PostgreSQL itself refuses connections then.
    SystemRandom::new()
        .fill(&mut bytes[..len])
        .expect("system random number generator failed");
    CancelSecret::new(&bytes[..len]).expect("4 to 32 bytes is a valid cancel secret")
}

struct Registered {
    secret: CancelSecret,
    backend: BackendKey,
}

/// The cancel keys this instance handed out, by the backend's process id;
/// and, in a cluster, the key that verifies everyone else's.
pub struct CancelMap {
    map: DashMap<i32, Registered>,
    /// `[cluster] secret`; `None` on a single instance.
    cluster: Option<ClusterKey>,
    /// Failed cluster verifications per client address: each costs a query,
    /// and each is a guess at a 32-bit secret.
    failures: FailureLimiter,
}

impl Default for CancelMap {
    fn default() -> Self {
        CancelMap {
            map: DashMap::new(),
            cluster: None,
            failures: FailureLimiter::new(&Default::default()),
        }
    }
}

/// Removes its key from the map when the session ends.
pub struct CancelKey {
    map: Arc<CancelMap>,
    /// The key the client was given.
    pub key: BackendKey,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        // Only our own entry: the map is keyed by real pids, and a reused
        // pid may already carry a newer session's key.
        self.map
            .map
            .remove_if(&self.key.process_id, |_, r| r.secret == self.key.secret);
    }
}

impl CancelMap {
    /// The map for `config`: cluster keys when `[cluster] secret` is set.
    pub fn new(config: &Config) -> CancelMap {
        CancelMap {
            map: DashMap::new(),
            cluster: config.cluster.secret.as_ref().map(ClusterKey::new),
            failures: FailureLimiter::new(&config.auth.failure_rate),
        }
    }

    /// The cluster key, when instances share one.
    pub fn cluster(&self) -> Option<&ClusterKey> {
        self.cluster.as_ref()
    }

    /// The client-facing key for the backend `backend` logged in as
    /// `role`: the backend's real pid, with the MAC of (pid, role) as the
    /// secret in a cluster and a random secret otherwise; `long` (a
    /// protocol 3.2 client) makes it [`LONG_SECRET`] bytes, else
    /// [`SHORT_SECRET`]. The backend's own key may be either length.
    pub fn issue(self: &Arc<Self>, backend: BackendKey, role: &str, long: bool) -> CancelKey {
        let len = if long { LONG_SECRET } else { SHORT_SECRET };
        let secret = match &self.cluster {
            Some(cluster) => cluster.secret_for(backend.process_id, role, len),
            None => random_secret(len),
        };
        let key = BackendKey {
            process_id: backend.process_id,
            secret: secret.clone(),
        };
        // Live backends have distinct pids, so an occupied slot is a session
        // whose backend is gone (its key's drop removes only its own entry).
        self.map
            .insert(key.process_id, Registered { secret, backend });
        CancelKey {
            map: Arc::clone(self),
            key,
        }
    }

    /// The backend key for a client's CancelRequest, if this instance
    /// issued the key.
    pub fn lookup(&self, process_id: i32, secret: &CancelSecret) -> Option<BackendKey> {
        let entry = self.map.get(&process_id)?;
        (entry.secret == *secret).then(|| entry.backend.clone())
    }

    /// Whether this instance holds the session of backend `process_id`:
    /// then its key is the only one, and a key that did not match it is
    /// not asked about elsewhere (a cluster MAC cut to another length would
    /// verify: a 3.2 session's key must not be guessable as 32 bits here).
    pub fn holds(&self, process_id: i32) -> bool {
        self.map.contains_key(&process_id)
    }

    /// Whether `peer` may still have a key checked against the database.
    pub fn may_verify(&self, peer: IpAddr) -> bool {
        self.failures.may_try(peer)
    }

    /// Counts a key from `peer` that verified nowhere.
    pub fn verify_failed(&self, peer: IpAddr) {
        self.failures.failed(peer);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_map(secret: &str) -> Arc<CancelMap> {
        Arc::new(CancelMap {
            cluster: Some(ClusterKey::new(&Secret::new(secret))),
            ..CancelMap::default()
        })
    }

    fn secret(bytes: &[u8]) -> CancelSecret {
        CancelSecret::new(bytes).unwrap()
    }

    fn backend(pid: i32) -> BackendKey {
        BackendKey {
            process_id: pid,
            secret: secret(&[7; 32]),
        }
    }

    /// The same secret with its last byte changed.
    fn flipped(s: &CancelSecret) -> CancelSecret {
        let mut bytes = s.as_bytes().to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        secret(&bytes)
    }

    #[test]
    fn maps_only_the_exact_key_and_forgets_it_on_drop() {
        let map = Arc::new(CancelMap::default());
        for long in [false, true] {
            let key = map.issue(backend(4242), "v-alice-readonly-abc-1", long);
            let len = key.key.secret.as_bytes().len();
            assert_eq!(len, if long { LONG_SECRET } else { SHORT_SECRET });
            assert_eq!(key.key.process_id, 4242, "the backend's own pid");
            assert_eq!(map.lookup(4242, &key.key.secret), Some(backend(4242)));
            assert_eq!(map.lookup(4242, &flipped(&key.key.secret)), None);
            // A prefix or an extension of the key is another key.
            let prefix = secret(&key.key.secret.as_bytes()[..4]);
            assert!(!long || map.lookup(4242, &prefix).is_none());
            let mut longer = key.key.secret.as_bytes().to_vec();
            longer.push(0);
            assert_eq!(map.lookup(4242, &secret(&longer)), None);
            drop(key);
            assert!(map.is_empty());
        }
    }

    #[test]
    fn secrets_are_random_per_session_and_not_the_backends() {
        let map = Arc::new(CancelMap::default());
        let keys: Vec<_> = (1..=1000)
            .map(|pid| map.issue(backend(pid), "v-role", pid % 2 == 0))
            .collect();
        assert_eq!(map.len(), keys.len());
        let secrets: std::collections::HashSet<Vec<u8>> = keys
            .iter()
            .map(|k| k.key.secret.as_bytes().to_vec())
            .collect();
        // 500 draws of 32 bits: one collision has odds of ~1 in 34,000.
        assert!(secrets.len() >= keys.len() - 1, "{}", secrets.len());
        assert!(keys
            .iter()
            .all(|k| map.lookup(k.key.process_id, &secret(&[7; 32])).is_none()));
    }

    #[test]
    fn cluster_keys_verify_on_any_instance_with_the_same_secret_only() {
        let shared = "0123456789abcdef0123456789abcdef";
        let issuer = cluster_map(shared);
        let other = ClusterKey::new(&Secret::new(shared));
        let stranger = ClusterKey::new(&Secret::new("another secret of thirty-two bytes!"));
        let role = "v-alice-readonly-abc-1";
        for long in [false, true] {
            let key = issuer.issue(backend(31337), role, long);
            let s = &key.key.secret;
            assert_eq!(key.key.process_id, 31337, "the real pid");
            assert_eq!(issuer.lookup(31337, s), Some(backend(31337)));
            assert!(other.verify(31337, role, s));
            // A reused pid with another role, another pid, another secret,
            // one flipped bit, another cluster.
            assert!(!other.verify(31337, "v-bob-readonly-def-2", s));
            assert!(!other.verify(31338, role, s));
            assert!(!other.verify(31337, role, &flipped(s)));
            assert!(!stranger.verify(31337, role, s));
        }
        // The long key is the whole MAC, the short one its first four bytes;
        // any other length verifies nowhere.
        let long = other.secret_for(31337, role, LONG_SECRET);
        let short = other.secret_for(31337, role, SHORT_SECRET);
        assert_eq!(&long.as_bytes()[..4], short.as_bytes());
        assert!(!other.verify(31337, role, &secret(&long.as_bytes()[..16])));
    }

    #[test]
    fn a_stale_cluster_key_does_not_remove_a_newer_one_for_the_same_pid() {
        let map = cluster_map("0123456789abcdef0123456789abcdef");
        let old = map.issue(backend(500), "v-old-1", true);
        let new = map.issue(backend(500), "v-new-2", true);
        assert_ne!(old.key.secret, new.key.secret);
        drop(old);
        assert_eq!(map.lookup(500, &new.key.secret), Some(backend(500)));
        drop(new);
        assert!(map.is_empty());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ClusterKey::new(&Secret::new("0123456789abcdef0123456789abcdef"));
        assert_eq!(format!("{key:?}"), "ClusterKey(***)");
        let b = backend(1);
        assert!(!format!("{b:?}").contains("7, 7"), "{b:?}");
    }
}

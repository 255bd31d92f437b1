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
//! logged in as, cut to the 32 bits a protocol 3.0 key has. Any instance
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
//! rolemint speaks protocol 3.0, where the secret is 32 bits (3.2, from
//! PostgreSQL 18, allows up to 256 bytes; 17 and older only have 3.0). A
//! forger who knows a live session's pid has one chance in 2^32 per try,
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
use subtle::ConstantTimeEq;

use crate::auth::identity::FailureLimiter;
use crate::config::Config;
use crate::pg::backend::BackendKey;
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

impl ClusterKey {
    pub fn new(secret: &Secret) -> ClusterKey {
        ClusterKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
        }
    }

    /// The cancel secret of the backend `process_id` logged in as `role`.
    /// The process id is fixed-width and comes first, so no two (pid,
    /// role) pairs share an input.
    pub fn secret_for(&self, process_id: i32, role: &str) -> i32 {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"rolemint cancel v1\0");
        ctx.update(&process_id.to_be_bytes());
        ctx.update(role.as_bytes());
        let tag = ctx.sign();
        let t = tag.as_ref();
        i32::from_be_bytes([t[0], t[1], t[2], t[3]])
    }

    /// Whether `secret_key` is the secret of (`process_id`, `role`), in
    /// constant time.
    pub fn verify(&self, process_id: i32, role: &str, secret_key: i32) -> bool {
        let expected = self.secret_for(process_id, role).to_be_bytes();
        expected.ct_eq(&secret_key.to_be_bytes()).into()
    }
}

/// A random cancel secret, from the system's generator.
fn random_secret() -> i32 {
    let mut bytes = [0u8; 4];
    // The system RNG failing is not something a proxy can recover from;
    // PostgreSQL itself refuses connections then.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator failed");
    i32::from_be_bytes(bytes)
}

struct Registered {
    secret_key: i32,
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
        self.map.map.remove_if(&self.key.process_id, |_, r| {
            r.secret_key == self.key.secret_key
        });
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
    /// secret in a cluster and a random secret otherwise.
    pub fn issue(self: &Arc<Self>, backend: BackendKey, role: &str) -> CancelKey {
        let secret_key = match &self.cluster {
            Some(cluster) => cluster.secret_for(backend.process_id, role),
            None => random_secret(),
        };
        let key = BackendKey {
            process_id: backend.process_id,
            secret_key,
        };
        // Live backends have distinct pids, so an occupied slot is a session
        // whose backend is gone (its key's drop removes only its own entry).
        self.map.insert(
            key.process_id,
            Registered {
                secret_key,
                backend,
            },
        );
        CancelKey {
            map: Arc::clone(self),
            key,
        }
    }

    /// The backend key for a client's CancelRequest, if this instance
    /// issued the key.
    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<BackendKey> {
        let entry = self.map.get(&process_id)?;
        let ok: bool = entry
            .secret_key
            .to_be_bytes()
            .ct_eq(&secret_key.to_be_bytes())
            .into();
        ok.then_some(entry.backend)
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

    #[test]
    fn maps_only_the_exact_key_and_forgets_it_on_drop() {
        let map = Arc::new(CancelMap::default());
        let backend = BackendKey {
            process_id: 4242,
            secret_key: 99,
        };
        let key = map.issue(backend, "v-alice-readonly-abc-1");
        assert_eq!(key.key.process_id, 4242, "the backend's own pid");
        assert_eq!(map.lookup(4242, key.key.secret_key), Some(backend));
        assert_eq!(map.lookup(4242, key.key.secret_key.wrapping_add(1)), None);
        drop(key);
        assert!(map.is_empty());
        assert_eq!(map.lookup(4242, 0), None);
    }

    #[test]
    fn secrets_are_random_per_session_and_not_the_backends() {
        let map = Arc::new(CancelMap::default());
        let keys: Vec<_> = (1..=1000)
            .map(|pid| {
                let backend = BackendKey {
                    process_id: pid,
                    secret_key: 7,
                };
                map.issue(backend, "v-role")
            })
            .collect();
        assert_eq!(map.len(), keys.len());
        let secrets: std::collections::HashSet<i32> =
            keys.iter().map(|k| k.key.secret_key).collect();
        // 1,000 draws of 32 bits: one collision has odds of ~1 in 8,600.
        assert!(secrets.len() >= keys.len() - 1, "{}", secrets.len());
        assert!(keys
            .iter()
            .all(|k| map.lookup(k.key.process_id, 7).is_none()));
    }

    #[test]
    fn cluster_keys_verify_on_any_instance_with_the_same_secret_only() {
        let secret = "0123456789abcdef0123456789abcdef";
        let issuer = cluster_map(secret);
        let backend = BackendKey {
            process_id: 31337,
            secret_key: 7,
        };
        let key = issuer.issue(backend, "v-alice-readonly-abc-1");
        assert_eq!(key.key.process_id, backend.process_id, "the real pid");
        assert_eq!(issuer.lookup(31337, key.key.secret_key), Some(backend));

        let other = ClusterKey::new(&Secret::new(secret));
        assert!(other.verify(31337, "v-alice-readonly-abc-1", key.key.secret_key));
        // A reused pid with another role, another pid, another secret.
        assert!(!other.verify(31337, "v-bob-readonly-def-2", key.key.secret_key));
        assert!(!other.verify(31338, "v-alice-readonly-abc-1", key.key.secret_key));
        let stranger = ClusterKey::new(&Secret::new("another secret of thirty-two bytes!"));
        assert!(!stranger.verify(31337, "v-alice-readonly-abc-1", key.key.secret_key));
    }

    #[test]
    fn a_stale_cluster_key_does_not_remove_a_newer_one_for_the_same_pid() {
        let map = cluster_map("0123456789abcdef0123456789abcdef");
        let backend = BackendKey {
            process_id: 500,
            secret_key: 1,
        };
        let old = map.issue(backend, "v-old-1");
        let new = map.issue(backend, "v-new-2");
        assert_ne!(old.key.secret_key, new.key.secret_key);
        drop(old);
        assert_eq!(map.lookup(500, new.key.secret_key), Some(backend));
        drop(new);
        assert!(map.is_empty());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ClusterKey::new(&Secret::new("0123456789abcdef0123456789abcdef"));
        assert_eq!(format!("{key:?}"), "ClusterKey(***)");
    }
}

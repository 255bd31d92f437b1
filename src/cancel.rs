//! Query cancellation: rolemint's own BackendKeyData, mapped to the backend's.
//!
//! A client never sees the backend's process id and secret. It gets a
//! (process id, secret) pair minted here, and a CancelRequest that carries it
//! is forwarded to the right backend. The secret is compared in constant
//! time, so its bytes cannot be guessed one at a time from response timing;
//! a wrong or unknown key is ignored silently, as PostgreSQL does.

use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use subtle::ConstantTimeEq;

/// Where a cancel for one session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub process_id: i32,
    pub secret_key: i32,
}

struct Registered {
    secret_key: i32,
    backend: BackendKey,
}

/// The live sessions' cancel keys, by the process id rolemint handed out.
#[derive(Default)]
pub struct CancelMap {
    map: DashMap<i32, Registered>,
}

/// Removes its key from the map when the session ends.
pub struct CancelKey {
    map: Arc<CancelMap>,
    /// The key the client was given.
    pub key: BackendKey,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.map.map.remove(&self.key.process_id);
    }
}

impl CancelMap {
    /// Mints a fresh client-facing key for a session's backend key.
    pub fn register(self: &Arc<Self>, backend: BackendKey) -> CancelKey {
        let rng = SystemRandom::new();
        loop {
            let mut bytes = [0u8; 8];
            // The system RNG failing is not something a proxy can recover
            // from; PostgreSQL itself refuses connections then.
            rng.fill(&mut bytes)
                .expect("system random number generator failed");
            // Positive, like a real process id, and never 0.
            let process_id =
                (i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & i32::MAX).max(1);
            let secret_key = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if let Entry::Vacant(slot) = self.map.entry(process_id) {
                slot.insert(Registered {
                    secret_key,
                    backend,
                });
                return CancelKey {
                    map: Arc::clone(self),
                    key: BackendKey {
                        process_id,
                        secret_key,
                    },
                };
            }
        }
    }

    /// The backend key for a client's CancelRequest, if the key is ours.
    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<BackendKey> {
        let entry = self.map.get(&process_id)?;
        let ok: bool = entry
            .secret_key
            .to_be_bytes()
            .ct_eq(&secret_key.to_be_bytes())
            .into();
        ok.then_some(entry.backend)
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

    #[test]
    fn maps_only_the_exact_key_and_forgets_it_on_drop() {
        let map = Arc::new(CancelMap::default());
        let backend = BackendKey {
            process_id: 4242,
            secret_key: 99,
        };
        let key = map.register(backend);
        assert!(key.key.process_id > 0);
        assert_eq!(
            map.lookup(key.key.process_id, key.key.secret_key),
            Some(backend)
        );
        assert_eq!(
            map.lookup(key.key.process_id, key.key.secret_key.wrapping_add(1)),
            None
        );
        assert_eq!(map.lookup(backend.process_id, backend.secret_key), None);
        let pid = key.key.process_id;
        drop(key);
        assert!(map.is_empty());
        assert_eq!(map.lookup(pid, 0), None);
    }

    #[test]
    fn keys_are_distinct() {
        let map = Arc::new(CancelMap::default());
        let backend = BackendKey {
            process_id: 1,
            secret_key: 1,
        };
        let keys: Vec<_> = (0..1000).map(|_| map.register(backend)).collect();
        assert_eq!(map.len(), keys.len());
    }
}

//! Where a connection comes from, as the per-source limits count it, and a
//! bounded count of connections per source.
//!
//! An IPv4 client is its address. An IPv6 client is its /64: one host is
//! routinely handed a whole /64 (SLAAC, privacy addresses, a cloud VM's
//! prefix), so counting single IPv6 addresses would give one attacker 2^64
//! buckets. An IPv4-mapped IPv6 address counts as the IPv4 address it maps.
//!
//! [`SourceSlots`] caps the connections one source holds at once (the
//! proxy's handshakes, the admin listener's connections); [`SourceSlots::take`]
//! waits for one of its source's slots to come back. An entry exists
//! only while its source holds a slot, so the map never has more entries
//! than the slots handed out, which the caller's global limit bounds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// A client's source for per-source limits: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// At most `per_source` slots held by any one source at once.
#[derive(Debug)]
pub struct SourceSlots {
    per_source: usize,
    held: Mutex<HashMap<Source, usize>>,
    /// Woken whenever a slot comes back, for [`SourceSlots::take`].
    freed: tokio::sync::Notify,
}

/// One slot of a source; given back when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    slots: Arc<SourceSlots>,
    source: Source,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(n) = held.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.source);
            }
        }
        drop(held);
        self.slots.freed.notify_waiters();
    }
}

impl SourceSlots {
    pub fn new(per_source: usize) -> Arc<SourceSlots> {
        Arc::new(SourceSlots {
            per_source: per_source.max(1),
            held: Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// A slot for `peer`, waiting for one of its source's to come back
    /// when it holds `per_source` (the caller bounds the wait).
    pub async fn take(self: &Arc<Self>, peer: IpAddr) -> SourceSlot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back in between
            // still wakes this waiter.
            freed.as_mut().enable();
            if let Some(slot) = self.try_take(peer) {
                return slot;
            }
            freed.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `peer`, or `None` when its source holds `per_source`.
    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Option<SourceSlot> {
        let source = Source::of(peer);
        let mut held = self.lock();
        let n = held.entry(source).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            slots: Arc::clone(self),
            source,
        })
    }

    /// Sources holding a slot now.
    pub fn sources(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
        assert_ne!(Source::of(ip("10.0.0.1")), Source::of(ip("10.0.0.2")));
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_its_source_gives_back() {
        let slots = SourceSlots::new(1);
        let held = slots.try_take(ip("10.0.0.1")).unwrap();
        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.take(ip("10.0.0.1")).await }
        });
        // Another source is not held up meanwhile.
        let _other = slots.try_take(ip("10.0.0.2")).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when the slot came back")
            .unwrap();
        drop(got);
        assert_eq!(slots.sources(), 1, "only 10.0.0.2 holds a slot now");
    }

    #[test]
    fn a_source_holds_at_most_its_slots_and_gets_them_back() {
        let slots = SourceSlots::new(2);
        let a = slots.try_take(ip("2001:db8::1")).unwrap();
        let _b = slots.try_take(ip("2001:db8::2")).unwrap();
        // A third address of the same /64 is the same source.
        assert!(slots.try_take(ip("2001:db8::3")).is_none());
        // Another source is not slowed.
        let c = slots.try_take(ip("10.0.0.1")).unwrap();
        drop(a);
        assert!(slots.try_take(ip("2001:db8::4")).is_some());
        drop(c);
        // Only sources holding a slot are remembered.
        assert_eq!(slots.sources(), 1);
    }
}

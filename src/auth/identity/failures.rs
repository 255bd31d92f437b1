//! Failed authentications, rate limited per client address.
//!
//! A token bucket per address: `burst` failures at once, `per_minute`
//! earned back. While an address's bucket is empty its attempts are
//! refused without looking at the token: 28P01 saying so and when to retry
//! (given before the token is read, it tells a guesser nothing about the
//! token). Clients behind one NAT share an address, and a bucket. Other addresses are
//! never slowed: nothing here sleeps, and the lock is held for a map
//! lookup only.
//!
//! The map is bounded (`max_addresses`): when full, the entry that has
//! been quiet longest is evicted. Only failures create entries, and an
//! entry whose bucket has refilled is dropped, so honest traffic never
//! fills it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::FailureRateConfig;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional: refills continuously).
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    per_second: f64,
    max_addresses: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    pub fn new(c: &FailureRateConfig) -> FailureLimiter {
        FailureLimiter {
            burst: f64::from(c.burst),
            per_second: f64::from(c.per_minute) / 60.0,
            max_addresses: c.max_addresses,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
    }

    /// Whether `peer` may try to authenticate now.
    pub fn may_try(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get_mut(&peer) else {
            return true;
        };
        self.refill(bucket, now);
        if bucket.tokens >= self.burst {
            buckets.remove(&peer);
            return true;
        }
        bucket.tokens >= 1.0
    }

    /// How long `peer` must wait before its next attempt is looked at;
    /// `None` when it may try now. What a refused client is told.
    pub fn retry_after(&self, peer: IpAddr) -> Option<std::time::Duration> {
        if self.may_try(peer) {
            return None;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let missing = 1.0 - buckets.get(&peer).map_or(1.0, |b| b.tokens);
        Some(std::time::Duration::from_secs_f64(
            missing.max(0.0) / self.per_second,
        ))
    }

    /// Counts one failure against `peer`.
    pub fn failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&peer) && buckets.len() >= self.max_addresses {
            // Evict the quietest address. O(n), but only when the map is
            // full, which takes failures from max_addresses addresses.
            if let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.updated)
                .map(|(ip, _)| *ip)
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, max: usize) -> FailureLimiter {
        FailureLimiter::new(&FailureRateConfig {
            burst,
            per_minute: 1,
            max_addresses: max,
        })
    }

    #[test]
    fn an_address_is_limited_after_its_burst_and_others_are_not() {
        let l = limiter(3, 100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.may_try(a));
            l.failed(a);
        }
        assert!(!l.may_try(a));
        assert!(l.may_try(b));
        // One failure a minute is earned back: the wait is under a minute.
        let wait = l.retry_after(a).expect("limited");
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(60));
        assert_eq!(l.retry_after(b), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let l = limiter(1, 10);
        for i in 0..1000u32 {
            l.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.tracked(), 10);
        // The most recent offender is still limited.
        assert!(!l.may_try(IpAddr::from(999u32.to_be_bytes())));
    }
}

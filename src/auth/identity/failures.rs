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
//! The map is bounded (`max_addresses`): when full, the address whose
//! last failure is oldest is evicted, found through an ordered index of
//! last failures, so a full map costs O(log n) per failure rather than a
//! scan of every entry under the lock. Only failures create entries, and
//! an entry whose bucket has refilled is dropped, so honest traffic never
//! fills it. An IPv6 client is counted by its /64 ([`Source`]).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::auth::source::Source;
use crate::config::FailureRateConfig;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional: refills continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// The number of the last failure (a counter, so that two failures in
    /// the same clock tick still have an order): the entry's key in
    /// [`Table::by_last_failure`].
    last_failure: u64,
}

/// The buckets, and the order in which to evict them.
#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<Source, Bucket>,
    /// `(last failure, source)` of every bucket: the first is evicted.
    by_last_failure: BTreeSet<(u64, Source)>,
    /// Failures counted so far: numbers them.
    failures: u64,
}

impl Table {
    fn remove(&mut self, source: &Source) {
        if let Some(b) = self.buckets.remove(source) {
            self.by_last_failure.remove(&(b.last_failure, *source));
        }
    }
}

#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    per_second: f64,
    max_addresses: usize,
    table: Mutex<Table>,
}

impl FailureLimiter {
    pub fn new(c: &FailureRateConfig) -> FailureLimiter {
        FailureLimiter {
            burst: f64::from(c.burst),
            per_second: f64::from(c.per_minute) / 60.0,
            max_addresses: c.max_addresses,
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
    }

    /// Whether `peer` may try to authenticate now.
    pub fn may_try(&self, peer: IpAddr) -> bool {
        self.tokens_left(peer) >= 1.0
    }

    /// Failures `peer` may still have now (a full bucket when untracked);
    /// a bucket that refilled is forgotten.
    fn tokens_left(&self, peer: IpAddr) -> f64 {
        let source = Source::of(peer);
        let now = Instant::now();
        let mut table = self.lock();
        let Some(bucket) = table.buckets.get_mut(&source) else {
            return self.burst;
        };
        self.refill(bucket, now);
        let tokens = bucket.tokens;
        if tokens >= self.burst {
            table.remove(&source);
        }
        tokens
    }

    /// How long `peer` must wait before its next attempt is looked at;
    /// `None` when it may try now. What a refused client is told.
    pub fn retry_after(&self, peer: IpAddr) -> Option<std::time::Duration> {
        let tokens = self.tokens_left(peer);
        if tokens >= 1.0 {
            return None;
        }
        Some(std::time::Duration::from_secs_f64(
            (1.0 - tokens).max(0.0) / self.per_second,
        ))
    }

    /// Counts one failure against `peer`.
    pub fn failed(&self, peer: IpAddr) {
        let source = Source::of(peer);
        let now = Instant::now();
        let mut table = self.lock();
        let table = &mut *table;
        if !table.buckets.contains_key(&source) && table.buckets.len() >= self.max_addresses {
            if let Some(&(_, oldest)) = table.by_last_failure.first() {
                table.remove(&oldest);
            }
        }
        table.failures += 1;
        let number = table.failures;
        let bucket = table.buckets.entry(source).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
            last_failure: number,
        });
        table.by_last_failure.remove(&(bucket.last_failure, source));
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        bucket.last_failure = number;
        table.by_last_failure.insert((number, source));
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().buckets.len()
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
        // The index holds exactly the tracked entries.
        assert_eq!(l.lock().by_last_failure.len(), 10);
    }

    #[test]
    fn eviction_takes_the_oldest_failure_and_ipv6_counts_by_its_64() {
        let l = limiter(1, 3);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        l.failed(ip("10.0.0.1"));
        l.failed(ip("10.0.0.2"));
        l.failed(ip("2001:db8::1"));
        // Every address of that /64 is limited: it is one source.
        assert!(!l.may_try(ip("2001:db8::ffff")));
        // 10.0.0.1 fails again: now 10.0.0.2 is the oldest, and goes.
        l.failed(ip("10.0.0.1"));
        l.failed(ip("10.0.0.4"));
        assert!(l.may_try(ip("10.0.0.2")));
        assert!(!l.may_try(ip("10.0.0.1")) && !l.may_try(ip("10.0.0.4")));
        assert_eq!(l.tracked(), 3);
    }

    #[test]
    fn a_full_table_costs_no_scan() {
        // 200,000 tracked sources, then 50,000 new failures: each evicts
        // through the index. A scan per failure (as the limiter once did)
        // is 10^10 steps: this test then does not finish.
        let l = limiter(1, 200_000);
        for i in 0..250_000u32 {
            l.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.tracked(), 200_000);
        assert!(l.may_try(IpAddr::from(0u32.to_be_bytes())));
        assert!(!l.may_try(IpAddr::from(249_999u32.to_be_bytes())));
    }
}

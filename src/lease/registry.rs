//! The registry of live leases: what is minted and in use right now, and
//! when each runs out.
//!
//! A lease is one minted role and whoever uses it (a proxied session, or
//! credentials handed out over the API). The registry knows their deadlines,
//! looks them up, lists them, renews them and ends them; it runs no SQL and
//! knows neither the config nor the admin client. Ending a lease only signals its
//! holder (through a `CancellationToken`): the session tells its client why,
//! closes both connections and hands the role to the revoker, so revocation
//! lives in one place whatever ended the session.
//!
//! Deadlines live in a `tokio_util::time::DelayQueue` keyed by lease, driven
//! by one task ([`Leases::run_expiry`]); no timer per lease. The key is
//! removed the moment the lease leaves the registry, so a session that ends
//! long before its TTL leaves nothing behind: at `pgbench -C` rates with a
//! one-hour TTL the registry stays as large as the number of open sessions,
//! not the number of sessions of the last hour.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::lease::end::EndReason;
use crate::pg::{rfc3339, LeaseComment};

/// Who holds a lease (`session` / `creds`): defined next to the lease
/// comment that records it, in `pg`.
pub use crate::pg::LeaseKind;

/// A fresh, path-like lease id: `database/<sessions|creds>/<template>/<random>`
/// with 24 random `[a-z0-9]` characters (about 124 bits), so that operators
/// can revoke by prefix as in Vault.
pub fn new_lease_id(kind: LeaseKind, template: &str) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator failed");
    // 256 % 36 = 4: the first four letters are a hair likelier; at 24
    // characters that costs well under a bit of the ~124.
    let random: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("database/{}/{template}/{random}", kind.as_str())
}

/// One minted role and who uses it: what the operator API shows.
#[derive(Debug)]
pub struct Lease {
    /// `database/sessions/<template>/<random>`.
    pub id: String,
    /// The minted role.
    pub role: String,
    pub template: String,
    pub database: String,
    /// The token's identity claim.
    pub identity: String,
    /// The issuer entry that vouched for it: `(issuer, identity)` is the
    /// lease's principal.
    pub issuer: String,
    /// The token's groups, for listing and revoking by group.
    pub groups: Vec<String>,
    /// The client's address (sessions), or the API caller's.
    pub client_addr: Option<SocketAddr>,
    pub kind: LeaseKind,
    pub issued_at: SystemTime,
    /// Expiry and last renewal change together, under one lock.
    times: Mutex<Times>,
    /// Bytes from the client to the backend; updated at least when the
    /// session ends.
    pub bytes_in: AtomicU64,
    /// Bytes from the backend to the client.
    pub bytes_out: AtomicU64,
    /// Cancelled when the lease ends before its holder lets it go.
    end: CancellationToken,
    reason: OnceLock<EndReason>,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    expires_at: SystemTime,
    last_renewal: Option<SystemTime>,
}

/// What a new lease is made of.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub id: String,
    pub role: String,
    pub template: String,
    pub database: String,
    pub identity: String,
    pub issuer: String,
    pub groups: Vec<String>,
    pub client_addr: Option<SocketAddr>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl Lease {
    /// The lease comment a renewal writes: this record with a new expiry,
    /// as `instance` holds it. The caller renews the role with it
    /// ([`crate::pg::AdminClient::renew`]), then moves the registry's
    /// deadline ([`Leases::renew`]).
    pub fn comment(&self, instance: &str, expires_at: SystemTime) -> LeaseComment {
        LeaseComment {
            lease_id: self.id.clone(),
            identity: self.identity.clone(),
            issuer: self.issuer.clone(),
            template: self.template.clone(),
            database: self.database.clone(),
            expires_at: rfc3339(expires_at),
            instance: instance.to_owned(),
            issued_at: rfc3339(self.issued_at),
            kind: self.kind.comment_word().to_owned(),
        }
    }

    pub fn new(new: NewLease) -> Lease {
        Lease {
            kind: LeaseKind::of_lease_id(&new.id),
            id: new.id,
            role: new.role,
            template: new.template,
            database: new.database,
            identity: new.identity,
            issuer: new.issuer,
            groups: new.groups,
            client_addr: new.client_addr,
            issued_at: new.issued_at,
            times: Mutex::new(Times {
                expires_at: new.expires_at,
                last_renewal: None,
            }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            end: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }

    fn times(&self) -> Times {
        *self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the lease runs out (changed by a renewal).
    pub fn expires_at(&self) -> SystemTime {
        self.times().expires_at
    }

    /// When it was last renewed, if ever.
    pub fn last_renewal(&self) -> Option<SystemTime> {
        self.times().last_renewal
    }

    /// Records the traffic of the session so far.
    pub fn set_traffic(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.store(bytes_in, Ordering::Relaxed);
        self.bytes_out.store(bytes_out, Ordering::Relaxed);
    }

    /// Ends the lease; the first reason wins.
    pub fn end(&self, reason: EndReason) {
        let _ = self.reason.set(reason);
        self.end.cancel();
    }

    /// Resolves once the lease has been ended.
    pub async fn ended(&self) -> EndReason {
        self.end.cancelled().await;
        self.end_reason().unwrap_or(EndReason::RevokedByOperator)
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.reason.get().copied()
    }

    /// Time left until the expiry, from the wall clock.
    fn remaining(&self) -> Duration {
        self.expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// Why a renewal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    #[error("no live lease {0}")]
    NotFound(String),
    #[error("lease {0} has already ended")]
    Ended(String),
}

/// The live leases.
#[derive(Default)]
pub struct Leases {
    inner: Mutex<Inner>,
    /// Set by [`Leases::end_all`]: a lease registered afterwards (its
    /// session was minting when shutdown came) is ended at once.
    ending: OnceLock<EndReason>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Lease ids by deadline.
    deadlines: DelayQueue<String>,
    /// The roles the leases of `map` hold, each with how many hold it (one,
    /// but for a bug): [`Leases::holds_role`] is asked for every role a
    /// reaper sweep reads, and must not scan `map` for each.
    roles: HashMap<String, usize>,
}

impl Inner {
    fn hold_role(&mut self, role: &str) {
        *self.roles.entry(role.to_owned()).or_default() += 1;
    }

    fn release_role(&mut self, role: &str) {
        if let Some(n) = self.roles.get_mut(role) {
            *n -= 1;
            if *n == 0 {
                self.roles.remove(role);
            }
        }
    }

    /// After a mass end (a `revoke-prefix` of 100,000 leases) the maps and
    /// the deadline queue would keep their capacity for good: give it back
    /// once they are at most a quarter full. Halving twice before each
    /// shrink keeps its O(n) cost amortized O(1) per removal.
    fn shrink_if_sparse(&mut self) {
        const SMALL: usize = 1024;
        if self.map.capacity() > SMALL && self.map.len() * 4 < self.map.capacity() {
            let keep = (self.map.len() * 2).max(SMALL);
            self.map.shrink_to(keep);
            self.roles.shrink_to(keep);
            self.deadlines.compact();
        }
    }
}

struct Entry {
    lease: Arc<Lease>,
    /// `None` once the deadline fired (its key is then free for reuse by
    /// the queue, so it must never be removed again).
    key: Option<delay_queue::Key>,
}

/// Removes its lease from the registry, deadline included, when the holder
/// is done with it.
pub struct Registered {
    leases: Arc<Leases>,
    pub lease: Arc<Lease>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.leases.remove(&self.lease.id);
    }
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the map and the queue consistent,
        // so a panic elsewhere does not poison them in any way that matters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a lease and arms its deadline.
    pub fn register(self: &Arc<Self>, lease: Lease) -> Registered {
        let lease = Arc::new(lease);
        {
            let mut inner = self.lock();
            let key = inner
                .deadlines
                .insert_at(lease.id.clone(), Instant::now() + lease.remaining());
            let entry = Entry {
                lease: Arc::clone(&lease),
                key: Some(key),
            };
            inner.hold_role(&lease.role);
            if let Some(old) = inner.map.insert(lease.id.clone(), entry) {
                inner.release_role(&old.lease.role);
                // Ids are random; a duplicate is a bug, but never leave a
                // stale timer behind.
                if let Some(key) = old.key {
                    inner.deadlines.try_remove(&key);
                }
            }
        }
        if let Some(reason) = self.ending.get() {
            lease.end(*reason);
        }
        Registered {
            leases: Arc::clone(self),
            lease,
        }
    }

    fn remove(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.map.remove(id) {
            inner.release_role(&entry.lease.role);
            if let Some(key) = entry.key {
                inner.deadlines.try_remove(&key);
            }
            inner.shrink_if_sparse();
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Lease>> {
        self.lock().map.get(id).map(|e| Arc::clone(&e.lease))
    }

    /// Every live lease, in no particular order.
    pub fn list(&self) -> Vec<Arc<Lease>> {
        self.lock()
            .map
            .values()
            .map(|e| Arc::clone(&e.lease))
            .collect()
    }

    /// Whether a live lease of this instance holds `role`: the reaper never
    /// sweeps such a role.
    pub fn holds_role(&self, role: &str) -> bool {
        self.lock().roles.contains_key(role)
    }

    /// Ends one lease; false when there is no such live lease.
    pub fn end(&self, id: &str, reason: EndReason) -> bool {
        match self.get(id) {
            Some(lease) => {
                lease.end(reason);
                true
            }
            None => false,
        }
    }

    /// Moves a lease's expiry to `new_expiry` and re-arms its deadline. The
    /// caller has checked it against the template's `max_ttl` and has
    /// already moved the role's `VALID UNTIL`.
    pub fn renew(&self, id: &str, new_expiry: SystemTime) -> Result<Arc<Lease>, RenewError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let entry = inner
            .map
            .get_mut(id)
            .ok_or_else(|| RenewError::NotFound(id.to_owned()))?;
        if entry.lease.end_reason().is_some() {
            return Err(RenewError::Ended(id.to_owned()));
        }
        {
            let mut times = entry.lease.times.lock().unwrap_or_else(|e| e.into_inner());
            times.expires_at = new_expiry;
            times.last_renewal = Some(SystemTime::now());
        }
        let when = Instant::now() + entry.lease.remaining();
        match &entry.key {
            Some(key) => inner.deadlines.reset_at(key, when),
            None => entry.key = Some(inner.deadlines.insert_at(id.to_owned(), when)),
        }
        Ok(Arc::clone(&entry.lease))
    }

    /// Ends every live lease, and every lease registered from now on
    /// (shutdown).
    pub fn end_all(&self, reason: EndReason) {
        let _ = self.ending.set(reason);
        for lease in self.list() {
            lease.end(reason);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in the deadline queue: equal to [`Leases::len`] but for
    /// leases whose deadline already fired. For tests and metrics.
    pub fn deadlines_len(&self) -> usize {
        self.lock().deadlines.len()
    }

    /// Whether a lease whose deadline fired has a deadline again (renewed
    /// since).
    fn rearmed(&self, id: &str) -> bool {
        self.lock().map.get(id).is_some_and(|e| e.key.is_some())
    }

    /// The next lease whose deadline has passed, waiting for it.
    async fn next_expired(&self) -> Arc<Lease> {
        poll_fn(|cx| {
            let mut inner = self.lock();
            loop {
                match inner.deadlines.poll_expired(cx) {
                    Poll::Ready(Some(expired)) => {
                        let id = expired.into_inner();
                        if let Some(entry) = inner.map.get_mut(&id) {
                            entry.key = None;
                            return Poll::Ready(Arc::clone(&entry.lease));
                        }
                    }
                    // An empty queue keeps our waker: the next insert wakes us.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// The expiry task: ends leases as their deadlines pass, until `stop`.
    pub async fn run_expiry(self: Arc<Self>, stop: CancellationToken) {
        self.run_expiry_checked(None, stop).await
    }

    /// [`Leases::run_expiry`], asking `recorded` for the expiry the
    /// database holds before ending a lease at its deadline: another
    /// instance may have renewed it (the catalog is the record, and
    /// renewals through any instance's lease API write it). A later expiry
    /// re-arms the deadline; anything else (the same expiry, the role gone,
    /// the database unreachable) ends the lease, so the local deadline is
    /// never extended without the database saying so.
    ///
    /// The checks run beside the loop, one per lease at its deadline, so a
    /// slow database does not hold up the others; there are never more of
    /// them than live leases, and `recorded` bounds each with a timeout.
    pub async fn run_expiry_checked(
        self: Arc<Self>,
        recorded: Option<RecordedExpiry>,
        stop: CancellationToken,
    ) {
        let mut checks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                lease = self.next_expired() => match &recorded {
                    Some(read) => {
                        let read = read(Arc::clone(&lease));
                        checks.spawn(async move { (lease, read.await) });
                    }
                    None => self.settle_expiry(&lease, None),
                },
                Some(Ok((lease, recorded))) = checks.join_next(), if !checks.is_empty() => {
                    self.settle_expiry(&lease, recorded);
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Ends a lease whose deadline passed, unless it has a later expiry now:
    /// `recorded` (from the database), or a renewal through this instance
    /// that landed while the database was being asked (that renewal already
    /// re-armed the deadline).
    fn settle_expiry(&self, lease: &Arc<Lease>, recorded: Option<SystemTime>) {
        if self.rearmed(&lease.id) {
            return;
        }
        if let Some(expiry) = recorded.filter(|t| *t > SystemTime::now()) {
            if self.renew(&lease.id, expiry).is_ok() {
                tracing::info!(
                    lease = %lease.id, role = %lease.role,
                    expires_at = %humantime::format_rfc3339_seconds(expiry),
                    "lease renewed in the database (by another instance): deadline re-armed"
                );
                return;
            }
        }
        tracing::info!(lease = %lease.id, role = %lease.role, "lease TTL reached");
        lease.end(EndReason::Expired);
    }
}

/// Reads a lease's expiry as the database records it: `None` when the
/// role is gone, or the database could not say in time.
pub type RecordedExpiry = Arc<
    dyn Fn(Arc<Lease>) -> Pin<Box<dyn Future<Output = Option<SystemTime>> + Send>> + Send + Sync,
>;

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(template: &str, ttl: Duration) -> Lease {
        let id = new_lease_id(LeaseKind::Session, template);
        Lease::new(NewLease {
            role: format!("v-{}", &id[id.len() - 8..]),
            id,
            template: template.into(),
            database: "db".into(),
            identity: "alice".into(),
            issuer: "local".into(),
            groups: vec!["dev".into()],
            client_addr: None,
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now() + ttl,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_ends_leases_in_deadline_order() {
        let leases = Arc::new(Leases::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&leases).run_expiry(stop.clone()));
        let long = leases.register(lease("t", Duration::from_secs(3600)));
        let short = leases.register(lease("t", Duration::from_millis(0)));
        assert_eq!(short.lease.ended().await, EndReason::Expired);
        assert_eq!(long.lease.end_reason(), None);
        drop(short);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases.deadlines_len(), 1);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn churned_leases_leave_the_registry_at_its_starting_size() {
        let leases = Arc::new(Leases::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&leases).run_expiry(stop.clone()));
        let resident = leases.register(lease("t", Duration::from_secs(3600)));
        let (map0, queue0) = (leases.len(), leases.deadlines_len());
        for i in 0..10_000u32 {
            let l = leases.register(lease("t", Duration::from_secs(3600)));
            assert!(leases.holds_role(&l.lease.role));
            if i % 1000 == 0 {
                tokio::task::yield_now().await;
            }
            drop(l);
        }
        assert_eq!((leases.len(), leases.deadlines_len()), (map0, queue0));
        assert_eq!((map0, queue0), (1, 1));
        assert_eq!(leases.lock().roles.len(), 1, "the role index churns too");
        assert!(leases.holds_role(&resident.lease.role));
        // The one that stayed still expires on time.
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert_eq!(resident.lease.ended().await, EndReason::Expired);
        assert_eq!(leases.deadlines_len(), 0);
        drop(resident);
        assert_eq!((leases.len(), leases.deadlines_len()), (0, 0));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn renew_moves_the_deadline() {
        let leases = Arc::new(Leases::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&leases).run_expiry(stop.clone()));
        let l = leases.register(lease("t", Duration::from_secs(10)));
        let renewed = leases
            .renew(&l.lease.id, SystemTime::now() + Duration::from_secs(100))
            .unwrap();
        assert!(renewed.last_renewal().is_some());
        tokio::time::advance(Duration::from_secs(20)).await;
        tokio::task::yield_now().await;
        assert_eq!(l.lease.end_reason(), None, "the old deadline was disarmed");
        assert_eq!(leases.deadlines_len(), 1);
        assert_eq!(
            leases
                .renew("database/sessions/t/nope", SystemTime::now())
                .unwrap_err(),
            RenewError::NotFound("database/sessions/t/nope".into())
        );
        assert!(leases.end(&l.lease.id, EndReason::RevokedByOperator));
        assert_eq!(l.lease.ended().await, EndReason::RevokedByOperator);
        assert!(matches!(
            leases.renew(&l.lease.id, SystemTime::now()),
            Err(RenewError::Ended(_))
        ));
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn leases_registered_after_end_all_end_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let leases = Arc::new(Leases::default());
        let before = leases.register(lease("t", Duration::from_secs(60)));
        leases.end_all(EndReason::Shutdown);
        assert_eq!(before.lease.end_reason(), Some(EndReason::Shutdown));
        let after = leases.register(lease("t", Duration::from_secs(60)));
        assert_eq!(after.lease.end_reason(), Some(EndReason::Shutdown));
        assert_eq!(leases.list().len(), 2);
    }

    #[test]
    fn first_end_reason_wins() {
        let l = lease("t", Duration::from_secs(1));
        l.end(EndReason::RevokedByOperator);
        l.end(EndReason::Expired);
        assert_eq!(l.end_reason(), Some(EndReason::RevokedByOperator));
    }

    #[test]
    fn lease_ids_are_path_like_and_random() {
        let a = new_lease_id(LeaseKind::Session, "readonly");
        let random = a.strip_prefix("database/sessions/readonly/").unwrap();
        assert_eq!(random.len(), 24);
        assert!(random
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(a, new_lease_id(LeaseKind::Session, "readonly"));
        let c = new_lease_id(LeaseKind::Creds, "readonly");
        assert!(c.starts_with("database/creds/readonly/"));
        assert_eq!(LeaseKind::of_lease_id(&c), LeaseKind::Creds);
        assert_eq!(LeaseKind::of_lease_id(&a), LeaseKind::Session);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_renewed_in_the_database_is_re_armed_once_then_ends() {
        use std::sync::atomic::AtomicUsize;
        let leases = Arc::new(Leases::default());
        let stop = CancellationToken::new();
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        // First read: another instance renewed it by an hour; then the role
        // is gone (no recorded expiry).
        let recorded: RecordedExpiry = Arc::new(move |_lease| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { (n == 0).then(|| SystemTime::now() + Duration::from_secs(3600)) })
        });
        let task =
            tokio::spawn(Arc::clone(&leases).run_expiry_checked(Some(recorded), stop.clone()));
        let l = leases.register(lease("t", Duration::ZERO));
        tokio::time::timeout(Duration::from_secs(1), async {
            while asked.load(Ordering::SeqCst) == 0 || leases.deadlines_len() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the deadline fired and was re-armed");
        assert_eq!(l.lease.end_reason(), None, "renewed elsewhere: still live");
        assert!(l.lease.last_renewal().is_some());
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert_eq!(l.lease.ended().await, EndReason::Expired);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        stop.cancel();
        task.await.unwrap();
    }
}

//! Leases: every minted role is a lease with a deadline.
//!
//! The registry holds the live leases and one task that ends them when their
//! TTL runs out, in the manner of mini-redis's `purge_expired_tasks`: a
//! `BTreeSet<(Instant, id)>` ordered by deadline and a `Notify` that wakes the
//! task when an earlier deadline arrives — one task, no timer per lease.
//!
//! Ending a lease only signals its session (through a `CancellationToken`);
//! the session tells its client why, closes both connections and revokes the
//! role, so that revocation lives in one place whatever ended the session.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ClientError;
use crate::mint::Minter;

/// Why a lease ended before its session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The TTL ran out.
    Expired,
    /// An operator revoked it.
    Revoked,
    /// rolemint is shutting down and the drain period is over.
    Shutdown,
}

impl EndReason {
    /// What the client is told.
    pub fn client_error(self) -> ClientError {
        match self {
            EndReason::Expired => ClientError::LeaseExpired,
            EndReason::Revoked => ClientError::LeaseRevoked,
            EndReason::Shutdown => ClientError::Terminated,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// One minted role and the session using it.
#[derive(Debug)]
pub struct Lease {
    pub id: String,
    pub role: String,
    pub template: String,
    pub database: String,
    pub identity: String,
    pub expires_at: SystemTime,
    /// Cancelled when the lease ends before the session does.
    end: CancellationToken,
    reason: OnceLock<EndReason>,
}

impl Lease {
    pub fn new(
        id: String,
        role: String,
        template: String,
        database: String,
        identity: String,
        expires_at: SystemTime,
    ) -> Lease {
        Lease {
            id,
            role,
            template,
            database,
            identity,
            expires_at,
            end: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }

    /// Ends the lease; the first reason wins.
    pub fn end(&self, reason: EndReason) {
        let _ = self.reason.set(reason);
        self.end.cancel();
    }

    /// Resolves once the lease has been ended.
    pub async fn ended(&self) -> EndReason {
        self.end.cancelled().await;
        self.end_reason().unwrap_or(EndReason::Revoked)
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.reason.get().copied()
    }

    /// Time left, from the wall clock deadline.
    fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// A fresh lease id: 16 random hex digits.
pub fn new_lease_id() -> String {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The live leases.
#[derive(Default)]
pub struct Leases {
    map: DashMap<String, Arc<Lease>>,
    /// Deadlines, earliest first. Entries of removed leases are skipped
    /// lazily by the expiry task.
    deadlines: Mutex<BTreeSet<(Instant, String)>>,
    /// Wakes the expiry task when a new earliest deadline arrives.
    wake: Notify,
    /// Set by [`Leases::end_all`]: a lease registered afterwards (its
    /// session was minting when shutdown came) is ended at once.
    ending: OnceLock<EndReason>,
}

/// Removes its lease from the registry when the session is done with it.
pub struct Registered {
    leases: Arc<Leases>,
    pub lease: Arc<Lease>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.leases.map.remove(&self.lease.id);
    }
}

impl Leases {
    /// Registers a lease and arms its deadline.
    pub fn register(self: &Arc<Self>, lease: Lease) -> Registered {
        let lease = Arc::new(lease);
        let deadline = Instant::now() + lease.remaining();
        self.map.insert(lease.id.clone(), Arc::clone(&lease));
        let earliest = {
            let mut deadlines = self.lock_deadlines();
            deadlines.insert((deadline, lease.id.clone()));
            deadlines.first().map(|(d, _)| *d) == Some(deadline)
        };
        if earliest {
            self.wake.notify_one();
        }
        if let Some(reason) = self.ending.get() {
            lease.end(*reason);
        }
        Registered {
            leases: Arc::clone(self),
            lease,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Lease>> {
        self.map.get(id).map(|l| Arc::clone(&l))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends every live lease, and every lease registered from now on
    /// (shutdown).
    pub fn end_all(&self, reason: EndReason) {
        let _ = self.ending.set(reason);
        for lease in self.map.iter() {
            lease.end(reason);
        }
    }

    fn lock_deadlines(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, String)>> {
        // A panic while holding this lock leaves a consistent set behind.
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends leases whose deadline has passed; returns the next deadline.
    fn expire_due(&self, now: Instant) -> Option<Instant> {
        let mut deadlines = self.lock_deadlines();
        while let Some((deadline, id)) = deadlines.first().cloned() {
            if deadline > now {
                return Some(deadline);
            }
            deadlines.pop_first();
            if let Some(lease) = self.map.get(&id) {
                tracing::info!(lease = %id, role = %lease.role, "lease TTL reached");
                lease.end(EndReason::Expired);
            }
        }
        None
    }

    /// The expiry task: runs until `shutdown`.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.expire_due(Instant::now());
            let sleep = async {
                match next {
                    Some(when) => tokio::time::sleep_until(when).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Revokes a lease's role, retrying with backoff until it succeeds.
///
/// Never gives up silently: each failure is logged, and the only way out
/// without success is a shutdown after a few more attempts, logged as an
/// error naming the role. Such a role is still marked `rolemint_managed`
/// and past its `VALID UNTIL` soon, so the reaper finds it.
pub async fn revoke_until_done(
    minter: &Minter,
    config: &Config,
    lease: &Lease,
    shutdown: &CancellationToken,
) -> bool {
    const FIRST_DELAY: Duration = Duration::from_millis(100);
    const MAX_DELAY: Duration = Duration::from_secs(30);
    const ATTEMPTS_AFTER_SHUTDOWN: u32 = 3;
    let Some(template) = config.template(&lease.template) else {
        tracing::error!(lease = %lease.id, role = %lease.role, "template gone; role left for the reaper");
        return false;
    };
    let mut delay = FIRST_DELAY;
    let mut attempts_in_shutdown = 0;
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let outcome = tokio::time::timeout(
            config.admin_operation_timeout(),
            minter.revoke(&lease.role, &lease.database, template),
        )
        .await;
        match outcome {
            Ok(Ok(())) => {
                tracing::info!(lease = %lease.id, role = %lease.role, attempt, "lease revoked");
                return true;
            }
            Ok(Err(e)) if !e.is_transient() => {
                // Retrying cannot help (the role owns objects, a revocation
                // statement is wrong): say so loudly and leave it to an
                // operator and the reaper.
                tracing::error!(lease = %lease.id, role = %lease.role, attempt, "revoke failed for good: {e}");
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %lease.id, role = %lease.role, attempt, "revoke failed: {e}")
            }
            Err(_) => {
                tracing::warn!(lease = %lease.id, role = %lease.role, attempt, "revoke timed out")
            }
        }
        if shutdown.is_cancelled() {
            attempts_in_shutdown += 1;
            if attempts_in_shutdown >= ATTEMPTS_AFTER_SHUTDOWN {
                tracing::error!(
                    lease = %lease.id, role = %lease.role,
                    "shutting down with the role not revoked; the reaper will drop it"
                );
                return false;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, ttl: Duration) -> Lease {
        Lease::new(
            id.into(),
            format!("v-{id}"),
            "t".into(),
            "db".into(),
            "alice".into(),
            SystemTime::now() + ttl,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_ends_leases_in_deadline_order() {
        let leases = Arc::new(Leases::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&leases).run_expiry(stop.clone()));
        let long = leases.register(lease("long", Duration::from_secs(3600)));
        let short = leases.register(lease("short", Duration::from_millis(0)));
        assert_eq!(short.lease.ended().await, EndReason::Expired);
        assert_eq!(long.lease.end_reason(), None);
        drop(short);
        assert_eq!(leases.len(), 1);
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn leases_registered_after_end_all_end_at_once() {
        let leases = Arc::new(Leases::default());
        let before = leases.register(lease("before", Duration::from_secs(60)));
        leases.end_all(EndReason::Shutdown);
        assert_eq!(before.lease.end_reason(), Some(EndReason::Shutdown));
        let after = leases.register(lease("after", Duration::from_secs(60)));
        assert_eq!(after.lease.end_reason(), Some(EndReason::Shutdown));
    }

    #[test]
    fn first_end_reason_wins() {
        let l = lease("x", Duration::from_secs(1));
        l.end(EndReason::Revoked);
        l.end(EndReason::Expired);
        assert_eq!(l.end_reason(), Some(EndReason::Revoked));
    }

    #[test]
    fn lease_ids_are_random_hex() {
        let a = new_lease_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_lease_id());
    }
}

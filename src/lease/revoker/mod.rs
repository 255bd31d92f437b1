//! Revocation that finishes: one service that every minted role is handed
//! to when its lease is over, and that keeps at it until the role is gone.
//!
//! Sessions, the mint path and the reaper call [`Revoker::schedule`] and go
//! on: nobody waits for a revocation on the connect path. One task owns the
//! queue. Each round it takes the due jobs, groups them by database and
//! runs each group as one round trip ([`AdminClient::revoke_batch`]); groups of
//! different databases run side by side, one at a time per database, and
//! a backlog (a mass revocation) in two rounds at once of up to 64 roles.
//!
//! What a job can come to:
//! - **revoked** (dropped, or already gone): done;
//! - **retained**: the role owns objects and its template names no `owner`:
//!   it stays NOLOGIN with its objects, is logged at WARN with the reason
//!   and counted ([`Revoker::retained`]), and is not retried (asking again
//!   before [`RETAINED_RECHECK`] has passed is a no-op);
//! - **refused**: not a member of `rolemint_managed`: logged at ERROR, never
//!   touched;
//! - **failed**: any error at all (28P01 from a rotated admin password,
//!   3D000, a timeout, the server restarting): retried with backoff capped
//!   at [`MAX_BACKOFF`] for as long as the process lives, and logged at
//!   ERROR once it has failed for longer than `mint.revoke_error_after`.
//!   Nothing is given up silently; at shutdown what is left is counted and
//!   left to the next start's reaper (every minted role is marked and
//!   commented in the database).
//!
//! A failed mint is a job too: the role's name is known before its batch
//! is sent, and the batch may still commit after we stopped waiting. Such a
//! job finds "no such role" at first, so it is confirmed only once the
//! batch can no longer land (its *settle time*), re-checking meanwhile.
//!
//! Every settled job is written to the audit log (`lease.revoked` with who
//! revoked it, `lease.retained`) and counted in
//! `rolemint_revocations_total{result}`; failing attempts are audited as
//! `lease.revoke_failed` at the same moments they are logged (the 1st,
//! 2nd, 4th, 8th... attempt), so a backend that is down for an hour does
//! not flood the log. The pending count, the oldest pending age and the
//! retained count are published as gauges at least once a second while
//! anything is pending.
//!
//! Templates after a reload: the service keeps every template it was ever
//! given, newest definition first ([`Revoker::update_templates`]). A role
//! minted from a template that a reload removed is still revoked with that
//! template's `owner` and revocation statements, so its objects go to the
//! owner as the operator wrote when it was minted, instead of the role
//! being retained. The map only grows with template names an operator
//! configured, so it stays as small as the configs were.
//!
//! The queue is bounded by refusing what would grow it, never by dropping
//! a role that exists: one entry per role (a role scheduled twice is one
//! job); a mint that never reached PostgreSQL (no admin connection) is not
//! queued, since no role can exist; and past `mint.max_pending_revocations`
//! pending roles ([`Revoker::backlogged`]) sessions and credentials mint
//! nothing new (53300, 503) until the backlog drains. While PostgreSQL is
//! down the queue holds at most the leases that were live when it went
//! down plus that limit, however hard clients retry. The backlog is the
//! `rolemint_revocations_pending` gauge.
//!
//! This file is the service's handle ([`Revoker`]): it books what is
//! pending and retained, and sends jobs. The task that owns the queue,
//! runs the rounds and settles each role's outcome is `worker.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RoleTemplate};
use crate::lease::end::EndReason;
use crate::observe::audit::Audit;
use crate::pg::AdminClient;

mod worker;

use worker::{Job, Worker};

/// First retry delay of a failing job; doubled on every failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts of a failing job.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait between two checks of a failed mint within its settle time.
const MAX_SETTLE_CHECK: Duration = Duration::from_secs(2);
/// Roles per round trip.
const MAX_BATCH: usize = 32;
/// Roles per round trip while more than [`MAX_BATCH`] are due in one
/// database (a mass revocation, the end of a TTL shared by many leases): a
/// round costs PostgreSQL one compile, one set of plans and two commits
/// whatever its size, and the revocation itself ~0.35 ms a role at 32, 256
/// or 1,000 a round (`pg/revoke_sql.rs`). Not more: a round is one
/// transaction, and the mints of other sessions wait on what it holds
/// (revoke-prefix of 99,980 leases under a connect loop, 2 rounds at once:
/// at 256 a round 29.5 s but connect p99 23x idle; at 64, 49.4 s and 1.9x).
const MAX_BULK_BATCH: usize = 64;
/// Bulk rounds in flight at once in one database: a mass revocation uses
/// two of the database's admin connections (`backend.admin_pool_size`,
/// 8 by default) and two of its cores, and leaves the rest to mints.
const MAX_BULK_ROUNDS: usize = 2;
/// How long a role whose session simply ended waits for others to share
/// its round trip. A batch costs PostgreSQL one compile and one set of
/// plans whatever its size (`pg/revoke_sql.rs`), so under connection churn
/// gathering roles for a few milliseconds pays: with the loop, it took the
/// PL/pgSQL share of revoking a role from 1.26 to 0.54 ms of PostgreSQL CPU
/// (`perf`, `pgbench -C -S -c8`, 2 CPUs). Such a role is already useless:
/// its password died with the session, and its backend is gone.
/// Revocations someone waits for (TTL, an operator, shutdown) are not held
/// back.
const GATHER: Duration = Duration::from_millis(20);
/// A retained role scheduled again within this time is left alone: it owns
/// objects, and only an operator changes that.
pub const RETAINED_RECHECK: Duration = Duration::from_secs(15 * 60);
/// Retained roles remembered (the count goes on beyond it).
const MAX_RETAINED_LISTED: usize = 10_000;
/// While anything is pending, the gauges are refreshed at least this often
/// (the oldest pending age grows without any event).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Every template the service knows, by name (see the module doc).
type Templates = Arc<ArcSwap<BTreeMap<String, RoleTemplate>>>;

/// A role that was left NOLOGIN with its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedRole {
    pub role: String,
    pub database: String,
    /// Where it owns objects, as PostgreSQL says.
    pub reason: String,
    since: Instant,
}

/// Counts kept for getters (and metrics, which read them).
#[derive(Default)]
struct Books {
    /// Roles scheduled and not yet settled, with when they were scheduled.
    pending: Mutex<HashMap<String, Instant>>,
    /// Jobs whose last attempt failed.
    failing: Mutex<usize>,
    retained: Mutex<Retained>,
}

#[derive(Default)]
struct Retained {
    roles: HashMap<String, RetainedRole>,
    /// Every role ever retained by this process.
    total: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its value consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The revocation service. Cheap to share behind the `Arc` of the server's
/// state; its task stops with [`Revoker::stop`] or when it is dropped.
pub struct Revoker {
    tx: mpsc::UnboundedSender<Job>,
    /// `mint.max_pending_revocations`.
    limit: usize,
    books: Arc<Books>,
    /// Pending count, for [`Revoker::drain`].
    pending_count: watch::Receiver<usize>,
    pending_tx: Arc<watch::Sender<usize>>,
    stop: CancellationToken,
    templates: Templates,
}

impl std::fmt::Debug for Revoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revoker")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Revoker {
    /// Starts the service's task. Templates are read from `config` (their
    /// `owner` and `revocation_statements`); a role whose template is not
    /// there (removed since) gets the default revocation, without an owner.
    pub fn start(admin_client: Arc<AdminClient>, config: &Config) -> Revoker {
        Revoker::start_audited(admin_client, config, Audit::disabled())
    }

    /// [`Revoker::start`], writing what it does to `audit`.
    pub fn start_audited(admin_client: Arc<AdminClient>, config: &Config, audit: Audit) -> Revoker {
        let (revoker, worker, rx) = Revoker::unstarted(admin_client, config, audit);
        tokio::spawn(worker.run(rx, revoker.stop.clone()));
        revoker
    }

    /// The service and its worker, not yet running: [`Revoker::start_audited`]
    /// spawns the worker; the tests drive it a step at a time.
    fn unstarted(
        admin_client: Arc<AdminClient>,
        config: &Config,
        audit: Audit,
    ) -> (Revoker, Worker, mpsc::UnboundedReceiver<Job>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let templates: Templates = Arc::new(ArcSwap::from_pointee(config.roles.clone()));
        let (pending_tx, pending_count) = watch::channel(0);
        let books = Arc::new(Books::default());
        let pending_tx = Arc::new(pending_tx);
        let stop = CancellationToken::new();
        let worker = Worker::new(
            admin_client,
            Arc::clone(&templates),
            audit,
            config,
            Arc::clone(&books),
            Arc::clone(&pending_tx),
        );
        let revoker = Revoker {
            tx,
            limit: config.mint.max_pending_revocations,
            books,
            pending_count,
            pending_tx,
            stop,
            templates,
        };
        (revoker, worker, rx)
    }

    /// Takes the templates of a reloaded config: a template that is there
    /// now wins, one that was removed is kept (see the module doc).
    pub fn update_templates(&self, roles: &BTreeMap<String, RoleTemplate>) {
        self.templates.rcu(|known| {
            let mut merged = BTreeMap::clone(known);
            for (name, template) in roles {
                merged.insert(name.clone(), template.clone());
            }
            merged
        });
    }

    /// Like [`Revoker::schedule`], for the role of a known lease: its id
    /// goes into the audit lines.
    pub fn schedule_lease(
        &self,
        lease_id: &str,
        role: &str,
        database: &str,
        template: Option<&str>,
        why: EndReason,
    ) {
        self.submit(Submit {
            lease_id: Some(lease_id),
            role,
            database,
            template,
            why,
            settle: Duration::ZERO,
        });
    }

    /// Hands `role` (minted for `database` from `template`) to the service.
    /// Returns at once; the role is revoked as soon as possible and retried
    /// until it is. Idempotent: scheduling a pending role again is one job.
    /// `template` names the template whose `owner` and revocation
    /// statements apply; `None` or an unknown name means the default
    /// revocation without an owner.
    pub fn schedule(&self, role: &str, database: &str, template: Option<&str>, why: EndReason) {
        self.submit(Submit {
            lease_id: None,
            role,
            database,
            template,
            why,
            settle: Duration::ZERO,
        });
    }

    /// Like [`Revoker::schedule`], for a role whose mint failed: finding no
    /// such role counts only once `settle` has passed (see the module doc).
    pub fn schedule_failed_mint(
        &self,
        role: &str,
        database: &str,
        template: Option<&str>,
        settle: Duration,
    ) {
        self.submit(Submit {
            lease_id: None,
            role,
            database,
            template,
            why: EndReason::MintFailed,
            settle,
        });
    }

    fn submit(&self, s: Submit<'_>) {
        let (role, database) = (s.role, s.database);
        let now = Instant::now();
        if let Some(r) = lock(&self.books.retained).roles.get(role) {
            if now.duration_since(r.since) < RETAINED_RECHECK {
                tracing::debug!(role, "retained role not revoked again yet");
                return;
            }
        }
        {
            let mut pending = lock(&self.books.pending);
            pending.entry(role.to_owned()).or_insert(now);
            self.pending_tx.send_replace(pending.len());
        }
        if self.tx.send(Job::new(s, now)).is_err() {
            tracing::error!(
                role,
                database,
                "revocation service stopped; role left for the reaper"
            );
        }
    }

    /// Roles scheduled and not yet revoked, retained or refused.
    pub fn pending(&self) -> usize {
        lock(&self.books.pending).len()
    }

    /// At least `mint.max_pending_revocations` roles are pending: mint
    /// nothing new (see the module doc).
    pub fn backlogged(&self) -> bool {
        self.pending() >= self.limit
    }

    /// Whether `role` is waiting for (or in) revocation.
    pub fn is_pending(&self, role: &str) -> bool {
        lock(&self.books.pending).contains_key(role)
    }

    /// How long the oldest pending role has waited.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        let now = Instant::now();
        lock(&self.books.pending)
            .values()
            .min()
            .map(|since| now.duration_since(*since))
    }

    /// Pending roles whose last attempt failed.
    pub fn failing(&self) -> usize {
        *lock(&self.books.failing)
    }

    /// Roles left NOLOGIN with their objects (see the module doc).
    pub fn retained(&self) -> Vec<RetainedRole> {
        lock(&self.books.retained).roles.values().cloned().collect()
    }

    /// Every role retained since this process started.
    pub fn retained_total(&self) -> u64 {
        lock(&self.books.retained).total
    }

    /// Waits until nothing is pending or `within` has passed; returns how
    /// many roles are still pending.
    pub async fn drain(&self, within: Duration) -> usize {
        let mut rx = self.pending_count.clone();
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        self.pending()
    }

    /// Stops the task; pending jobs are abandoned (the caller has said so).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Revoker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What [`Revoker::submit`] is given.
struct Submit<'a> {
    lease_id: Option<&'a str>,
    role: &'a str,
    database: &'a str,
    template: Option<&'a str>,
    why: EndReason,
    settle: Duration,
}

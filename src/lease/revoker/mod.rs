//! Revocation that finishes: one service that every minted role is handed
//! to when its lease is over, and that keeps at it until the role is gone.
//!
//! Sessions, the mint path and the reaper call [`Revoker::schedule`] and go
//! on: nobody waits for a revocation on the connect path. One task owns the
//! queue. Each round it takes the due jobs, groups them by database and
//! runs each group as one round trip ([`AdminClient::revoke_batch`]); groups of
//! different databases run side by side, one at a time per database.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RoleTemplate};
use crate::lease::end::EndReason;
use crate::observe::audit::{Audit, Event};
use crate::pg::{AdminClient, MintError, Outcome, Target};

/// First retry delay of a failing job; doubled on every failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts of a failing job.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait between two checks of a failed mint within its settle time.
const MAX_SETTLE_CHECK: Duration = Duration::from_secs(2);
/// Roles per round trip.
const MAX_BATCH: usize = 32;
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
        let worker = Worker {
            admin_client,
            templates: Arc::clone(&templates),
            audit,
            error_after: config.mint.revoke_error_after,
            round_timeout: config.admin_operation_timeout() * 4,
            books: Arc::clone(&books),
            pending_tx: Arc::clone(&pending_tx),
            jobs: HashMap::new(),
            busy: HashSet::new(),
            inflight: JoinSet::new(),
            inflight_ids: HashMap::new(),
        };
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
        let Submit {
            lease_id,
            role,
            database,
            template,
            why,
            settle,
        } = s;
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
        let job = Job {
            lease_id: lease_id.map(str::to_owned),
            role: role.to_owned(),
            database: database.to_owned(),
            template: template.map(str::to_owned),
            why,
            since: now,
            attempts: 0,
            next: match why {
                EndReason::SessionClosed | EndReason::Unclaimed => now + GATHER,
                _ => now,
            },
            delay: FIRST_BACKOFF,
            failing_since: None,
            alarmed: false,
            settle_until: (!settle.is_zero()).then(|| now + settle),
            dropped: false,
            in_flight: false,
        };
        if self.tx.send(job).is_err() {
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

/// One role to revoke, and how its attempts went.
#[derive(Debug)]
struct Job {
    /// The lease the role was minted for, when the scheduler knew it.
    lease_id: Option<String>,
    role: String,
    database: String,
    template: Option<String>,
    why: EndReason,
    since: Instant,
    attempts: u32,
    /// Not before then.
    next: Instant,
    /// Wait after the next failure (or the next check while settling).
    delay: Duration,
    failing_since: Option<Instant>,
    /// Logged at ERROR already.
    alarmed: bool,
    /// A failed mint: "no such role" counts only after this.
    settle_until: Option<Instant>,
    /// An attempt dropped the role (a failed mint's later checks then find
    /// it gone).
    dropped: bool,
    in_flight: bool,
}

type RoundResult = (
    String,
    Vec<String>,
    Result<Vec<Result<Outcome, MintError>>, MintError>,
);

struct Worker {
    admin_client: Arc<AdminClient>,
    templates: Templates,
    audit: Audit,
    error_after: Duration,
    /// Outer bound of one round trip's task (the pool bounds each step).
    round_timeout: Duration,
    books: Arc<Books>,
    pending_tx: Arc<watch::Sender<usize>>,
    /// By role.
    jobs: HashMap<String, Job>,
    /// Databases with a round trip in flight.
    busy: HashSet<String>,
    inflight: JoinSet<RoundResult>,
    /// What each in-flight task carries, should it panic.
    inflight_ids: HashMap<tokio::task::Id, (String, Vec<String>)>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>, stop: CancellationToken) {
        loop {
            self.start_due(Instant::now());
            self.publish();
            // While anything is pending, wake at least every
            // PUBLISH_EVERY so the oldest-pending gauge keeps growing.
            let next = match self.next_due() {
                Some(due) => Some(due.min(Instant::now() + PUBLISH_EVERY)),
                None if self.jobs.is_empty() => None,
                None => Some(Instant::now() + PUBLISH_EVERY),
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                job = rx.recv() => match job {
                    Some(job) => {
                        self.add(job);
                        // Whatever else has arrived goes into the same round.
                        while let Ok(job) = rx.try_recv() {
                            self.add(job);
                        }
                    }
                    None => break,
                },
                Some(done) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                    self.finish(done);
                }
                _ = sleep_until(next), if next.is_some() => {}
            }
        }
        let left = self.jobs.len();
        if left > 0 {
            tracing::debug!(left, "revocation service stopped");
        }
    }

    fn add(&mut self, job: Job) {
        match self.jobs.get_mut(&job.role) {
            Some(existing) => {
                // One job per role; a failed mint's settle time wins, and a
                // job waiting out a backoff is not made to wait longer.
                if let Some(until) = job.settle_until {
                    existing.settle_until = existing.settle_until.max(Some(until));
                }
                // A duplicate that knows the lease names it in the audit.
                if existing.lease_id.is_none() {
                    existing.lease_id = job.lease_id;
                }
                if !existing.in_flight
                    && job.next < existing.next
                    && existing.failing_since.is_none()
                {
                    existing.next = job.next;
                }
            }
            None => {
                // The submitter booked the role as pending before sending
                // the job, but an earlier job of the same role may have
                // completed in between and taken that entry with it (a
                // duplicate still in the channel while the first one's
                // round settled). The job is queued, so the role is
                // pending: book it again, or `drain` and `is_pending`
                // would say it is done.
                {
                    let mut pending = lock(&self.books.pending);
                    pending.entry(job.role.clone()).or_insert(job.since);
                    self.pending_tx.send_replace(pending.len());
                }
                self.jobs.insert(job.role.clone(), job);
            }
        }
    }

    /// The earliest time a job not in flight, in a database not busy, is due.
    fn next_due(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter(|j| !j.in_flight && !self.busy.contains(&j.database))
            .map(|j| j.next)
            .min()
    }

    fn start_due(&mut self, now: Instant) {
        let templates = self.templates.load();
        let idle = |job: &&Job| !job.in_flight && !self.busy.contains(&job.database);
        // A database with a due job gets a round, and the round takes along
        // the jobs there that are still gathering (due within GATHER).
        let due: HashSet<&str> = self
            .jobs
            .values()
            .filter(idle)
            .filter(|j| j.next <= now)
            .map(|j| j.database.as_str())
            .collect();
        let mut candidates: HashMap<&str, Vec<(Instant, &str)>> = HashMap::new();
        for job in self.jobs.values().filter(idle) {
            if job.next <= now + GATHER && due.contains(job.database.as_str()) {
                candidates
                    .entry(job.database.as_str())
                    .or_default()
                    .push((job.next, job.role.as_str()));
            }
        }
        // The longest due first, so a full round never leaves one behind.
        let by_db: HashMap<String, Vec<String>> = candidates
            .into_iter()
            .map(|(db, mut jobs)| {
                jobs.sort_unstable();
                let roles = jobs.iter().take(MAX_BATCH).map(|(_, r)| (*r).to_owned());
                (db.to_owned(), roles.collect())
            })
            .collect();
        for (database, roles) in by_db {
            let targets: Vec<Target> = roles
                .iter()
                .map(|role| {
                    let job = &self.jobs[role];
                    let template = job.template.as_deref().and_then(|t| templates.get(t));
                    Target {
                        role: role.clone(),
                        owner: template.and_then(|t| t.owner.clone()),
                        custom: template.and_then(|t| t.revocation_statements.clone()),
                    }
                })
                .collect();
            for role in &roles {
                if let Some(job) = self.jobs.get_mut(role) {
                    job.in_flight = true;
                    job.attempts = job.attempts.saturating_add(1);
                }
            }
            self.busy.insert(database.clone());
            let admin_client = Arc::clone(&self.admin_client);
            let round_timeout = self.round_timeout;
            let db = database.clone();
            let names = roles.clone();
            let handle = self.inflight.spawn(async move {
                let result = match tokio::time::timeout(
                    round_timeout,
                    admin_client.revoke_batch(&db, &targets),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(MintError::Timeout {
                        what: "revoking roles",
                        database: db.clone(),
                        after: round_timeout,
                    }),
                };
                (db, names, result)
            });
            self.inflight_ids.insert(handle.id(), (database, roles));
        }
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, RoundResult), tokio::task::JoinError>) {
        let (database, roles, result) = match done {
            Ok((id, round)) => {
                self.inflight_ids.remove(&id);
                round
            }
            Err(e) => {
                let Some((database, roles)) = self.inflight_ids.remove(&e.id()) else {
                    return;
                };
                let error = Err(MintError::Backend {
                    database: database.clone(),
                    message: "revocation task failed".into(),
                });
                (database, roles, error)
            }
        };
        self.busy.remove(&database);
        match result {
            Ok(outcomes) => {
                for (role, outcome) in roles.into_iter().zip(outcomes) {
                    self.settle(&role, outcome);
                }
            }
            Err(e) => {
                for role in roles {
                    let error = MintError::Backend {
                        database: database.clone(),
                        message: e.to_string(),
                    };
                    self.settle(&role, Err(error));
                }
            }
        }
    }

    /// Applies one role's outcome to its job.
    fn settle(&mut self, role: &str, outcome: Result<Outcome, MintError>) {
        let now = Instant::now();
        let Some(job) = self.jobs.get_mut(role) else {
            return;
        };
        job.in_flight = false;
        match outcome {
            Ok(done @ (Outcome::Dropped | Outcome::Gone))
                if job.settle_until.is_some_and(|until| now < until) =>
            {
                // A failed mint's batch may still commit: look again.
                job.dropped |= done == Outcome::Dropped;
                job.failing_since = None;
                job.next = now + job.delay.min(MAX_SETTLE_CHECK);
                job.delay = (job.delay * 2).min(MAX_SETTLE_CHECK);
            }
            Ok(done @ (Outcome::Dropped | Outcome::Gone)) => {
                // Queued while the role is still pending: a synchronous
                // revoke waiting for it to settle answers only after its
                // line is in the audit queue.
                if let Some(by) = job.why.revoked_by() {
                    self.audit.record(Event::LeaseRevoked {
                        lease_id: job.lease_id.clone().unwrap_or_default(),
                        role: role.to_owned(),
                        by,
                    });
                }
                let job = self.complete(role);
                let dropped = job.dropped || done == Outcome::Dropped;
                crate::observe::metrics::revocation(crate::observe::metrics::RevocationResult::Ok);
                tracing::info!(
                    role,
                    database = %job.database,
                    why = job.why.as_str(),
                    outcome = if dropped { "dropped" } else { "already gone" },
                    attempts = job.attempts,
                    waited_ms = u64::try_from(job.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "role revoked"
                );
            }
            Ok(Outcome::Retained(reason)) => {
                let job = self.complete(role);
                tracing::warn!(
                    role,
                    database = %job.database,
                    why = job.why.as_str(),
                    "role retained: left NOLOGIN with its objects, because it {reason} and its template names no owner; an operator decides"
                );
                // Not dropped: for an alert, that is a failure an operator
                // must look at.
                crate::observe::metrics::revocation(
                    crate::observe::metrics::RevocationResult::Failed,
                );
                self.audit.record(Event::LeaseRetained {
                    lease_id: job.lease_id.clone().unwrap_or_default(),
                    role: role.to_owned(),
                    detail: format!("{reason}; its template names no owner"),
                });
                let mut retained = lock(&self.books.retained);
                retained.total += 1;
                if retained.roles.len() < MAX_RETAINED_LISTED {
                    retained.roles.insert(
                        role.to_owned(),
                        RetainedRole {
                            role: role.to_owned(),
                            database: job.database,
                            reason,
                            since: now,
                        },
                    );
                }
            }
            Ok(Outcome::NotManaged) => {
                let job = self.complete(role);
                tracing::error!(
                    role,
                    database = %job.database,
                    "refusing to revoke a role that is not a member of rolemint_managed"
                );
                crate::observe::metrics::revocation(
                    crate::observe::metrics::RevocationResult::Failed,
                );
                self.audit.record(Event::LeaseRevokeFailed {
                    lease_id: job.lease_id.unwrap_or_default(),
                    role: role.to_owned(),
                    attempt: job.attempts,
                    error: "not a member of rolemint_managed; refused".into(),
                    retrying: false,
                });
            }
            Ok(Outcome::Elsewhere(dbs)) => {
                let e = MintError::OwnsObjects {
                    role: role.to_owned(),
                    database: job.database.clone(),
                    detail: format!("still has objects or privileges in {}", dbs.join(", ")),
                };
                Self::failed(job, &e, self.error_after, now, &self.audit);
            }
            Err(e) => Self::failed(job, &e, self.error_after, now, &self.audit),
        }
    }

    fn failed(
        job: &mut Job,
        error: &MintError,
        error_after: Duration,
        now: Instant,
        audit: &Audit,
    ) {
        crate::observe::metrics::revocation(crate::observe::metrics::RevocationResult::Retry);
        if job.attempts.is_power_of_two() {
            audit.record(Event::LeaseRevokeFailed {
                lease_id: job.lease_id.clone().unwrap_or_default(),
                role: job.role.clone(),
                attempt: job.attempts,
                error: error.to_string(),
                retrying: true,
            });
        }
        let since = *job.failing_since.get_or_insert(now);
        job.next = now + job.delay;
        let retry_in = job.delay;
        job.delay = (job.delay * 2).min(MAX_BACKOFF);
        let failing_for = now.duration_since(since);
        if !job.alarmed && failing_for >= error_after {
            job.alarmed = true;
            tracing::error!(
                role = %job.role, database = %job.database, attempts = job.attempts,
                failing_s = failing_for.as_secs(),
                "revocation keeps failing (retrying every {:?} at most): {error}",
                MAX_BACKOFF
            );
        } else if job.attempts.is_power_of_two() {
            tracing::warn!(
                role = %job.role, database = %job.database, attempts = job.attempts,
                "revocation failed, retrying in {retry_in:?}: {error}"
            );
        }
    }

    /// Removes a settled job from the queue and the books.
    fn complete(&mut self, role: &str) -> Job {
        let job = self
            .jobs
            .remove(role)
            .expect("complete is called for a queued job");
        if job.alarmed {
            tracing::error!(
                role,
                attempts = job.attempts,
                "revocation finally went through"
            );
        }
        let mut pending = lock(&self.books.pending);
        pending.remove(role);
        self.pending_tx.send_replace(pending.len());
        job
    }

    fn publish(&self) {
        *lock(&self.books.failing) = self
            .jobs
            .values()
            .filter(|j| j.failing_since.is_some())
            .count();
        let now = Instant::now();
        let (pending, oldest) = {
            let pending = lock(&self.books.pending);
            let oldest = pending
                .values()
                .min()
                .map(|since| now.duration_since(*since));
            (pending.len(), oldest.unwrap_or_default())
        };
        crate::observe::metrics::set_revocations_pending(pending, oldest);
        crate::observe::metrics::roles_retained(lock(&self.books.retained).roles.len());
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[proxy]
listen = "127.0.0.1:0"
allow_plaintext = true

[backend]
host = "127.0.0.1"
port = 1
admin_user = "rolemint_admin"
admin_password = "x"

[auth]
hs256_secret = "0123456789abcdef0123456789abcdef"

[roles.readonly]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]
"#;

    /// A service whose worker the test steps by hand (its admin client
    /// connects to nothing: no step here reaches PostgreSQL).
    fn unstarted() -> (Revoker, Worker, mpsc::UnboundedReceiver<Job>) {
        let config = Config::parse(CONFIG).expect("test config parses");
        let admin = Arc::new(AdminClient::new(&config).expect("admin client"));
        Revoker::unstarted(admin, &config, Audit::disabled())
    }

    /// The race of a duplicate: the role is scheduled, its round starts,
    /// it is scheduled again (the duplicate waits in the channel), and the
    /// first round settles before the worker reads the duplicate. The
    /// duplicate is a queued job, so the role must still be pending.
    #[tokio::test]
    async fn a_duplicate_queued_while_its_job_completes_keeps_the_role_pending() {
        let (revoker, mut worker, mut rx) = unstarted();
        revoker.schedule_lease(
            "database/sessions/readonly/a",
            "v-a",
            "appdb",
            None,
            EndReason::RevokedByOperator,
        );
        worker.add(rx.try_recv().expect("the first job"));
        worker.jobs.get_mut("v-a").expect("queued").in_flight = true;

        revoker.schedule("v-a", "appdb", None, EndReason::ReapedOrphaned);
        worker.settle("v-a", Ok(Outcome::Dropped));
        assert!(!worker.jobs.contains_key("v-a"), "the first job settled");

        worker.add(rx.try_recv().expect("the duplicate"));
        assert!(worker.jobs.contains_key("v-a"), "the duplicate is queued");
        assert!(revoker.is_pending("v-a"), "a queued role is pending");
        assert_eq!(revoker.pending(), 1);
        assert_eq!(*revoker.pending_count.borrow(), 1, "drain would not wait");

        // When the duplicate settles, nothing is left pending.
        worker.settle("v-a", Ok(Outcome::Gone));
        assert_eq!(revoker.pending(), 0);
        assert_eq!(*revoker.pending_count.borrow(), 0);
    }

    /// A duplicate merged into a queued job brings the lease id the first
    /// scheduler did not know.
    #[tokio::test]
    async fn a_duplicate_merged_into_a_queued_job_keeps_its_lease_id() {
        let (revoker, mut worker, mut rx) = unstarted();
        revoker.schedule("v-b", "appdb", None, EndReason::ReapedOrphaned);
        worker.add(rx.try_recv().expect("the first job"));
        revoker.schedule_lease(
            "database/creds/readonly/b",
            "v-b",
            "appdb",
            None,
            EndReason::Expired,
        );
        worker.add(rx.try_recv().expect("the duplicate"));
        assert_eq!(worker.jobs.len(), 1);
        assert_eq!(
            worker.jobs["v-b"].lease_id.as_deref(),
            Some("database/creds/readonly/b")
        );
    }
}

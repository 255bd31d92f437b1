//! The revoker's task: the queue of jobs, one round trip per database at
//! a time, and what each role's outcome comes to (see the module doc of
//! `revoker`). The handle, [`super::Revoker`], only books roles and sends
//! them here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    lock, Books, RetainedRole, Submit, Templates, FIRST_BACKOFF, GATHER, MAX_BACKOFF, MAX_BATCH,
    MAX_BULK_BATCH, MAX_BULK_ROUNDS, MAX_RETAINED_LISTED, MAX_SETTLE_CHECK, PUBLISH_EVERY,
};
use crate::config::Config;
use crate::lease::end::EndReason;
use crate::lease::memory;
use crate::observe::audit::{Audit, Event};
use crate::observe::metrics::{self, RevocationResult};
use crate::pg::{AdminClient, MintError, Outcome, Target};

/// One role to revoke, and how its attempts went.
#[derive(Debug)]
pub(super) struct Job {
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

impl Job {
    /// The job of a role just submitted: a role whose session simply ended
    /// (or an unclaimed pooled one) waits [`GATHER`] for company.
    pub(super) fn new(s: Submit<'_>, now: Instant) -> Job {
        Job {
            lease_id: s.lease_id.map(str::to_owned),
            role: s.role.to_owned(),
            database: s.database.to_owned(),
            template: s.template.map(str::to_owned),
            why: s.why,
            since: now,
            attempts: 0,
            next: match s.why {
                EndReason::SessionClosed | EndReason::Unclaimed => now + GATHER,
                _ => now,
            },
            delay: FIRST_BACKOFF,
            failing_since: None,
            alarmed: false,
            settle_until: (!s.settle.is_zero()).then(|| now + s.settle),
            dropped: false,
            in_flight: false,
        }
    }

    /// A failed mint whose batch may still commit: "no such role" does not
    /// count yet.
    fn settling(&self, now: Instant) -> bool {
        self.settle_until.is_some_and(|until| now < until)
    }

    /// Within its settle time, a failed mint's role is looked at again,
    /// sooner than a failure would be retried.
    fn look_again(&mut self, dropped: bool, now: Instant) {
        self.dropped |= dropped;
        self.failing_since = None;
        self.next = now + self.delay.min(MAX_SETTLE_CHECK);
        self.delay = (self.delay * 2).min(MAX_SETTLE_CHECK);
    }

    /// An attempt failed: retried with backoff, audited and logged at the
    /// 1st, 2nd, 4th, 8th... attempt, and at ERROR once it has failed for
    /// `error_after`.
    fn failed(&mut self, error: &MintError, error_after: Duration, now: Instant, audit: &Audit) {
        metrics::revocation(RevocationResult::Retry);
        if self.attempts.is_power_of_two() {
            audit.record(Event::LeaseRevokeFailed {
                lease_id: self.lease_id.clone().unwrap_or_default(),
                role: self.role.clone(),
                attempt: self.attempts,
                error: error.to_string(),
                retrying: true,
            });
        }
        let since = *self.failing_since.get_or_insert(now);
        self.next = now + self.delay;
        let retry_in = self.delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        let failing_for = now.duration_since(since);
        if !self.alarmed && failing_for >= error_after {
            self.alarmed = true;
            tracing::error!(
                role = %self.role, database = %self.database, attempts = self.attempts,
                failing_s = failing_for.as_secs(),
                "revocation keeps failing (retrying every {:?} at most): {error}",
                MAX_BACKOFF
            );
        } else if self.attempts.is_power_of_two() {
            tracing::warn!(
                role = %self.role, database = %self.database, attempts = self.attempts,
                "revocation failed, retrying in {retry_in:?}: {error}"
            );
        }
    }
}

type RoundResult = (
    String,
    Vec<String>,
    Result<Vec<Result<Outcome, MintError>>, MintError>,
);

/// The service's task: owns the queue (see the module doc).
pub(super) struct Worker {
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
    /// The jobs not in flight, by database, in the order they are due: a
    /// round takes the first of a set, and the next wake-up is the first
    /// of each. Kept in step with `jobs` by [`Worker::idle`] and
    /// [`Worker::unready`], so that a backlog of a hundred thousand roles
    /// costs a round what a backlog of a hundred does.
    ready: HashMap<String, BTreeSet<(Instant, String)>>,
    /// Last time the gauges were published.
    published: Option<Instant>,
    /// Jobs settled since the queue last drained and gave its memory back.
    settled_since_trim: usize,
    /// Round trips in flight, by database.
    busy: HashMap<String, usize>,
    inflight: JoinSet<RoundResult>,
    /// What each in-flight task carries, should it panic.
    inflight_ids: HashMap<tokio::task::Id, (String, Vec<String>)>,
}

impl Worker {
    pub(super) fn new(
        admin_client: Arc<AdminClient>,
        templates: Templates,
        audit: Audit,
        config: &Config,
        books: Arc<Books>,
        pending_tx: Arc<watch::Sender<usize>>,
    ) -> Worker {
        Worker {
            admin_client,
            templates,
            audit,
            error_after: config.mint.revoke_error_after,
            round_timeout: config.admin_operation_timeout() * 4,
            books,
            pending_tx,
            jobs: HashMap::new(),
            ready: HashMap::new(),
            published: None,
            settled_since_trim: 0,
            busy: HashMap::new(),
            inflight: JoinSet::new(),
            inflight_ids: HashMap::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Job>,
        stop: CancellationToken,
    ) {
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
                    let role = job.role;
                    self.unready(&role);
                    if let Some(existing) = self.jobs.get_mut(&role) {
                        existing.next = job.next;
                    }
                    self.idle(&role);
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
                let role = job.role.clone();
                self.jobs.insert(role.clone(), job);
                self.idle(&role);
            }
        }
    }

    /// Puts a queued job that is not in flight among the ready ones.
    fn idle(&mut self, role: &str) {
        if let Some(job) = self.jobs.get(role) {
            if !job.in_flight {
                self.ready
                    .entry(job.database.clone())
                    .or_default()
                    .insert((job.next, role.to_owned()));
            }
        }
    }

    /// Takes a job out of the ready ones (it goes in flight, or its due
    /// time changes).
    fn unready(&mut self, role: &str) {
        let Some(job) = self.jobs.get(role) else {
            return;
        };
        if let Some(set) = self.ready.get_mut(&job.database) {
            set.remove(&(job.next, role.to_owned()));
            if set.is_empty() {
                self.ready.remove(&job.database);
            }
        }
    }

    /// The earliest time a job not in flight, in a database not busy, is due.
    fn next_due(&self) -> Option<Instant> {
        self.ready
            .iter()
            .filter(|(db, _)| !self.busy.contains_key(*db))
            .filter_map(|(_, set)| set.first().map(|(next, _)| *next))
            .min()
    }

    /// Starts a round in every database that has a due job.
    fn start_due(&mut self, now: Instant) {
        for (database, roles) in self.due_rounds(now) {
            self.start_round(database, roles);
        }
    }

    /// The roles of each round to start now, by database: a database with
    /// a due job gets a round, and the round takes along the jobs there
    /// that are still gathering (due within GATHER), the longest due first
    /// so that a full round never leaves one behind. A backlog (more due
    /// than [`MAX_BATCH`], as after a mass revocation) goes in rounds of up
    /// to [`MAX_BULK_BATCH`].
    fn due_rounds(&self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut rounds = Vec::new();
        for (db, set) in &self.ready {
            let in_flight = self.busy.get(db).copied().unwrap_or(0);
            if in_flight >= MAX_BULK_ROUNDS || set.first().is_none_or(|(next, _)| *next > now) {
                continue;
            }
            let gathering = |(next, _): &&(Instant, String)| *next <= now + GATHER;
            let bulk = set.iter().take(MAX_BATCH + 1).filter(gathering).count() > MAX_BATCH;
            // A second round at once only for a backlog: roles that trickle
            // in wait for the round in flight, and go together after it.
            if in_flight > 0 && !bulk {
                continue;
            }
            let size = if bulk { MAX_BULK_BATCH } else { MAX_BATCH };
            let roles = set
                .iter()
                .take_while(|entry| gathering(entry))
                .take(size)
                .map(|(_, role)| role.clone())
                .collect();
            rounds.push((db.clone(), roles));
        }
        rounds
    }

    /// One round trip revoking `roles` in `database`, on a task of its own;
    /// [`Worker::finish`] takes its result.
    fn start_round(&mut self, database: String, roles: Vec<String>) {
        let templates = self.templates.load();
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
            self.unready(role);
            if let Some(job) = self.jobs.get_mut(role) {
                job.in_flight = true;
                job.attempts = job.attempts.saturating_add(1);
            }
        }
        *self.busy.entry(database.clone()).or_default() += 1;
        let admin_client = Arc::clone(&self.admin_client);
        let round_timeout = self.round_timeout;
        let db = database.clone();
        let names = roles.clone();
        let handle = self.inflight.spawn(async move {
            let result =
                match tokio::time::timeout(round_timeout, admin_client.revoke_batch(&db, &targets))
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
        if let Some(n) = self.busy.get_mut(&database) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&database);
            }
        }
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
            Ok(done @ (Outcome::Dropped | Outcome::Gone)) if job.settling(now) => {
                job.look_again(done == Outcome::Dropped, now);
            }
            Ok(done @ (Outcome::Dropped | Outcome::Gone)) => {
                self.revoked(role, done == Outcome::Dropped);
            }
            Ok(Outcome::Retained(reason)) => self.retain(role, reason, now),
            Ok(Outcome::NotManaged) => self.refuse(role),
            Ok(Outcome::Elsewhere(dbs)) => {
                let e = MintError::OwnsObjects {
                    role: role.to_owned(),
                    database: job.database.clone(),
                    detail: format!("still has objects or privileges in {}", dbs.join(", ")),
                };
                job.failed(&e, self.error_after, now, &self.audit);
            }
            Err(e) => job.failed(&e, self.error_after, now, &self.audit),
        }
        // Still queued (to look at again, or to retry): ready again.
        self.idle(role);
    }

    /// The role is gone (dropped now, or already): `lease.revoked`, and
    /// the job is done.
    fn revoked(&mut self, role: &str, dropped_now: bool) {
        // Queued while the role is still pending: a synchronous revoke
        // waiting for it to settle answers only after its line is in the
        // audit queue.
        let job = &self.jobs[role];
        if let Some(by) = job.why.revoked_by() {
            self.audit.record(Event::LeaseRevoked {
                lease_id: job.lease_id.clone().unwrap_or_default(),
                role: role.to_owned(),
                by,
            });
        }
        let job = self.complete(role);
        let dropped = job.dropped || dropped_now;
        metrics::revocation(RevocationResult::Ok);
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

    /// The role owns objects and its template names no owner: it stays
    /// NOLOGIN with them, for an operator (see the module doc).
    fn retain(&mut self, role: &str, reason: String, now: Instant) {
        let job = self.complete(role);
        tracing::warn!(
            role,
            database = %job.database,
            why = job.why.as_str(),
            "role retained: left NOLOGIN with its objects, because it {reason} and its template names no owner; an operator decides"
        );
        // Not dropped: for an alert, that is a failure an operator must
        // look at.
        metrics::revocation(RevocationResult::Failed);
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

    /// Not a member of `rolemint_managed`: never touched.
    fn refuse(&mut self, role: &str) {
        let job = self.complete(role);
        tracing::error!(
            role,
            database = %job.database,
            "refusing to revoke a role that is not a member of rolemint_managed"
        );
        metrics::revocation(RevocationResult::Failed);
        self.audit.record(Event::LeaseRevokeFailed {
            lease_id: job.lease_id.unwrap_or_default(),
            role: role.to_owned(),
            attempt: job.attempts,
            error: "not a member of rolemint_managed; refused".into(),
            retrying: false,
        });
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
        self.settled_since_trim += 1;
        if self.jobs.is_empty() && self.settled_since_trim >= memory::TRIM_AFTER {
            // A mass revocation is over: the queue's maps keep the
            // capacity of its peak, and the allocator the leases' memory.
            pending.shrink_to_fit();
            self.jobs.shrink_to_fit();
            self.ready.shrink_to_fit();
            self.settled_since_trim = 0;
            memory::release_freed();
        }
        job
    }

    /// Publishes the gauges: at once when nothing is left (the drop to
    /// zero is what a dashboard waits for), else at most every
    /// [`PUBLISH_EVERY`], since it reads every job.
    fn publish(&mut self) {
        let now = Instant::now();
        let recent = self
            .published
            .is_some_and(|at| now.duration_since(at) < PUBLISH_EVERY);
        if recent && !self.jobs.is_empty() {
            return;
        }
        self.published = Some(now);
        *lock(&self.books.failing) = self
            .jobs
            .values()
            .filter(|j| j.failing_since.is_some())
            .count();
        let (pending, oldest) = {
            let pending = lock(&self.books.pending);
            let oldest = pending
                .values()
                .min()
                .map(|since| now.duration_since(*since));
            (pending.len(), oldest.unwrap_or_default())
        };
        metrics::set_revocations_pending(pending, oldest);
        metrics::roles_retained(lock(&self.books.retained).roles.len());
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
    use crate::lease::revoker::Revoker;

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
        worker.unready("v-a");
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

    /// After a mass revocation a round takes up to MAX_BULK_BATCH roles,
    /// the longest due first; a role in flight is in no other round; one
    /// that failed is ready again, after its backoff; a settled one is in
    /// no set at all.
    #[tokio::test]
    async fn a_backlog_goes_in_bulk_rounds_in_due_order_and_failures_come_back() {
        let (revoker, mut worker, mut rx) = unstarted();
        let n = MAX_BULK_BATCH * 3 + 5;
        for i in 0..n {
            revoker.schedule(
                &format!("v-{i:05}"),
                "appdb",
                None,
                EndReason::RevokedByOperator,
            );
            worker.add(rx.try_recv().expect("a job"));
        }
        revoker.schedule("v-other", "otherdb", None, EndReason::RevokedByOperator);
        worker.add(rx.try_recv().expect("a job"));
        let now = Instant::now() + GATHER;
        let rounds = worker.due_rounds(now);
        assert_eq!(rounds.len(), 2, "one round per database");
        let (_, appdb) = rounds.iter().find(|(db, _)| db == "appdb").expect("appdb");
        assert_eq!(appdb.len(), MAX_BULK_BATCH);
        assert_eq!(appdb[0], "v-00000", "the longest due first");
        let (_, other) = rounds
            .iter()
            .find(|(db, _)| db == "otherdb")
            .expect("otherdb");
        assert_eq!(other, &vec!["v-other".to_owned()]);

        let first = appdb.clone();
        worker.start_round("appdb".into(), first.clone());
        let next = worker.due_rounds(now);
        let (_, second) = next.iter().find(|(db, _)| db == "appdb").expect("appdb");
        assert!(
            second.iter().all(|r| !first.contains(r)),
            "no role in two rounds"
        );
        worker.start_round("appdb".into(), second.clone());
        assert!(
            worker.due_rounds(now).iter().all(|(db, _)| db != "appdb"),
            "at most MAX_BULK_ROUNDS rounds in flight in one database"
        );
        // The second round fails as a whole: its roles are ready again.
        for role in second {
            let failure = MintError::Backend {
                database: "appdb".into(),
                message: "boom".into(),
            };
            worker.settle(role, Err(failure));
        }

        // The first round settles: all dropped but one, which failed.
        for role in &first[1..] {
            worker.settle(role, Ok(Outcome::Dropped));
        }
        let failure = MintError::Backend {
            database: "appdb".into(),
            message: "boom".into(),
        };
        worker.settle(&first[0], Err(failure));
        assert_eq!(worker.jobs.len(), n + 1 - (MAX_BULK_BATCH - 1));
        // A database with a round in flight and only a trickle due waits.
        worker.busy.insert("otherdb".into(), 1);
        assert!(worker.due_rounds(now).iter().all(|(db, _)| db != "otherdb"));
        let ready: usize = worker.ready.values().map(BTreeSet::len).sum();
        assert_eq!(ready, worker.jobs.len(), "every queued job is ready again");
        let retry = worker.jobs[&first[0]].next;
        assert!(
            retry > Instant::now(),
            "the failed one waits out its backoff"
        );
        assert!(worker.ready["appdb"].contains(&(retry, first[0].clone())));
        assert_eq!(revoker.pending(), worker.jobs.len());
    }

    /// A few due roles still go in a round of at most MAX_BATCH, and a
    /// role that is only gathering starts no round by itself.
    #[tokio::test]
    async fn a_few_roles_go_in_small_rounds_and_gathering_ones_wait() {
        let (revoker, mut worker, mut rx) = unstarted();
        revoker.schedule("v-a", "appdb", None, EndReason::SessionClosed);
        worker.add(rx.try_recv().expect("a job"));
        assert!(
            worker.due_rounds(Instant::now()).is_empty(),
            "a closed session's role waits GATHER for company"
        );
        let due = worker.next_due().expect("a wake-up");
        for i in 0..(MAX_BATCH + 3) {
            revoker.schedule(&format!("v-{i}"), "appdb", None, EndReason::Expired);
            worker.add(rx.try_recv().expect("a job"));
        }
        assert!(worker.next_due().expect("a wake-up") <= due);
        let rounds = worker.due_rounds(Instant::now());
        assert_eq!(rounds.len(), 1);
        assert!(rounds[0].1.len() <= MAX_BULK_BATCH);
        assert!(
            rounds[0].1.len() > MAX_BATCH,
            "more than MAX_BATCH due: bulk"
        );
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

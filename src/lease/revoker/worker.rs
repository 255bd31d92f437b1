//! The revoker's task: the queue of jobs, one round trip per database at
//! a time, and what each role's outcome comes to (see the module doc of
//! `revoker`). The handle, [`super::Revoker`], only books roles and sends
//! them here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    lock, Books, RetainedRole, Submit, Templates, FIRST_BACKOFF, GATHER, MAX_BACKOFF, MAX_BATCH,
    MAX_RETAINED_LISTED, MAX_SETTLE_CHECK, PUBLISH_EVERY,
};
use crate::config::Config;
use crate::lease::end::EndReason;
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
    /// Databases with a round trip in flight.
    busy: HashSet<String>,
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
            busy: HashSet::new(),
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

    /// Starts a round in every database that has a due job.
    fn start_due(&mut self, now: Instant) {
        for (database, roles) in self.due_rounds(now) {
            self.start_round(database, roles);
        }
    }

    /// The roles of each round to start now, by database: a database with
    /// a due job gets a round, and the round takes along the jobs there
    /// that are still gathering (due within GATHER), the longest due first
    /// so that a full round never leaves one behind.
    fn due_rounds(&self, now: Instant) -> HashMap<String, Vec<String>> {
        let idle = |job: &&Job| !job.in_flight && !self.busy.contains(&job.database);
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
        candidates
            .into_iter()
            .map(|(db, mut jobs)| {
                jobs.sort_unstable();
                let roles = jobs.iter().take(MAX_BATCH).map(|(_, r)| (*r).to_owned());
                (db.to_owned(), roles.collect())
            })
            .collect()
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

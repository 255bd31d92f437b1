//! The reaper: the sweep that drops every role rolemint minted and nothing
//! will otherwise drop.
//!
//! The database is the only record of minted roles (each is a member of
//! `rolemint_managed` with its lease in `COMMENT ON ROLE`), so after a
//! crash, a lost `DROP ROLE`, or the death of another instance, the roles
//! are found here. At startup and then every `mint.reap_interval`:
//!
//! 1. take the sweep lock (`pg_try_advisory_lock`, see
//!    [`crate::pg::SWEEP_LOCK_KEY`]) on a connection of the sweep's own;
//!    when another instance holds it, that instance is sweeping: skip;
//! 2. read the members of `rolemint_managed`: `VALID UNTIL` passed or not,
//!    lease comment, number of backends ([`crate::pg::ManagedRole`]); a
//!    role whose `VALID UNTIL` is NULL or `infinity` (altered by hand since
//!    its mint) is expired when its comment's `expires_at` has passed;
//! 3. [`decide`] for each (pure, below), and revoke what it says, through
//!    the one revoke function the reaper is given; an expired role's
//!    backends are terminated first, whatever its template's revocation
//!    statements do.
//!
//! # Why a live session is never reaped
//!
//! A role is revoked before its `VALID UNTIL` only when it has had **no
//! backend** for longer than `mint.reap_grace`, and no live lease of this
//! instance holds it. That cannot end anybody's live session, on any
//! instance:
//! - a session that has logged in always has its backend: the backend *is*
//!   the session, and once it has exited the session is over (rolemint
//!   never logs a role in twice);
//! - a session that has not logged in yet is at most one mint plus one
//!   backend login old (`backend.connect_timeout + mint.statement_timeout`
//!   and `2 x backend.connect_timeout`, both bounded in `session`), and
//!   `reap_grace` is longer than that (the example config says so), so its
//!   role is too young to count as idle. The idle time is measured from the
//!   lease's issue time when the comment has one, else from the first
//!   sweep of this process that saw the role without a backend: both are
//!   no later than the mint, so the role is at least that old;
//! - a backend that appears between our read and our revoke belongs to a
//!   role already older than the grace, hence not to a login in progress.
//!
//! A role past `VALID UNTIL` is revoked whatever else holds: PostgreSQL
//! already refuses it new logins, and the lease it belonged to is over.
//! Revocation is idempotent, so two instances revoking the same role (one
//! ending its session, the other sweeping) both succeed.
//!
//! Roles rolemint hands out as direct credentials (lease kind `creds`) have
//! no backend until their holder logs in; they are reaped at expiry only.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::lease::end::EndReason;
use crate::lease::revoker::Revoker;
use crate::observe::audit::{Audit, Event};
use crate::pg::{is_valid_role_name, AdminClient, ManagedRole, MintError};

/// What the sweep decided about one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// [`EndReason::ReapedExpired`] (past its `VALID UNTIL`) or
    /// [`EndReason::ReapedOrphaned`] (no backend for longer than the grace
    /// and no live lease here).
    Revoke(EndReason),
    Keep(Kept),
}

/// Why a role is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Its name is outside the role-name alphabet: rolemint never minted it
    /// and refuses to revoke it.
    ForeignName,
    /// A revocation left it NOLOGIN because it owns objects: an operator
    /// decides (retried at the next start).
    Retained,
    /// A backend is logged in as it.
    LiveBackend,
    /// A live session of this instance holds it.
    Held,
    /// A direct credential, reaped at expiry only.
    Credential,
    /// Idle for less than the grace: may be about to log in.
    Young,
}

/// What [`decide`] needs to know about one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub valid_name: bool,
    pub retained: bool,
    pub expired: bool,
    pub backends: u32,
    pub held: bool,
    pub credential: bool,
    /// How long this process has seen it without a backend.
    pub idle_seen: Duration,
    /// Its age by the lease comment's issue time, when known.
    pub age: Option<Duration>,
}

/// The sweep's rule, without I/O (see the module doc for why it is safe).
pub fn decide(facts: &Facts, grace: Duration) -> Verdict {
    if !facts.valid_name {
        return Verdict::Keep(Kept::ForeignName);
    }
    if facts.retained {
        return Verdict::Keep(Kept::Retained);
    }
    if facts.expired {
        return Verdict::Revoke(EndReason::ReapedExpired);
    }
    if facts.backends > 0 {
        return Verdict::Keep(Kept::LiveBackend);
    }
    if facts.held {
        return Verdict::Keep(Kept::Held);
    }
    if facts.credential {
        return Verdict::Keep(Kept::Credential);
    }
    let idle = facts.idle_seen.max(facts.age.unwrap_or_default());
    if idle >= grace {
        Verdict::Revoke(EndReason::ReapedOrphaned)
    } else {
        Verdict::Keep(Kept::Young)
    }
}

/// The fields of a lease comment the reaper uses. Every field is optional
/// and a comment that is not JSON reads as all-absent: a role whose comment
/// was lost or edited is still a member of the marker, and still reaped.
#[derive(Debug, Default, Deserialize)]
struct CommentFields {
    lease_id: Option<String>,
    template: Option<String>,
    database: Option<String>,
    /// The instance that minted it.
    instance: Option<String>,
    /// RFC 3339, when the lease records its issue time.
    issued_at: Option<String>,
    /// `session` or `creds`.
    kind: Option<String>,
    /// RFC 3339: the lease's expiry, as minted (and renewed).
    expires_at: Option<String>,
}

impl CommentFields {
    fn parse(comment: Option<&str>) -> CommentFields {
        comment
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default()
    }

    /// Whether the lease's recorded expiry has passed at `now` (Unix
    /// seconds, the database's clock); false when the comment has none.
    fn expired(&self, now: i64) -> bool {
        let Some(expires) = self
            .expires_at
            .as_deref()
            .and_then(|e| humantime::parse_rfc3339_weak(e).ok())
        else {
            return false;
        };
        let expires = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        u64::try_from(now).is_ok_and(|now| now >= expires)
    }

    /// Age at `now` (Unix seconds, the database's clock).
    fn age(&self, now: i64) -> Option<Duration> {
        let issued = humantime::parse_rfc3339_weak(self.issued_at.as_deref()?).ok()?;
        let issued = issued
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let now = u64::try_from(now).ok()?;
        Some(Duration::from_secs(now.saturating_sub(issued)))
    }
}

/// A role the sweep decided to revoke, as the revoke function gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub role: String,
    /// The lease id from the role's comment, when it has one.
    pub lease_id: Option<String>,
    /// The instance that minted it, from the comment.
    pub instance: Option<String>,
    /// The lease's database; `None` when the comment does not say.
    pub database: Option<String>,
    /// The lease's template; `None` when the comment does not say.
    pub template: Option<String>,
    /// [`EndReason::ReapedExpired`] or [`EndReason::ReapedOrphaned`].
    pub cause: EndReason,
}

/// Per-role memory between sweeps, bounded by the roles the last sweep
/// read ([`crate::pg::MAX_ROLES_PER_SWEEP`]): entries of roles that are
/// gone are dropped at every sweep.
#[derive(Debug, Default)]
struct Memory {
    /// When a sweep of this process first saw the role without a backend.
    idle_since: HashMap<String, Instant>,
    /// Roles a revocation left NOLOGIN because they own objects.
    retained: HashSet<String>,
}

impl Memory {
    /// Updates the idle clocks from a sweep's rows; returns each role's idle
    /// time so far.
    fn observe(&mut self, roles: &[ManagedRole], now: Instant) -> Vec<Duration> {
        let present: HashSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        self.idle_since
            .retain(|name, _| present.contains(name.as_str()));
        self.retained.retain(|name| present.contains(name.as_str()));
        roles
            .iter()
            .map(|r| {
                if r.backends > 0 {
                    self.idle_since.remove(&r.name);
                    Duration::ZERO
                } else {
                    let since = *self.idle_since.entry(r.name.clone()).or_insert(now);
                    now.saturating_duration_since(since)
                }
            })
            .collect()
    }
}

/// What one sweep did, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Another instance held the sweep lock.
    pub skipped: bool,
    pub seen: usize,
    pub revoked: usize,
    pub failed: usize,
}

/// The sweep, with its collaborators given: how to tell a live lease of
/// this instance (role, lease id from the comment), and how to revoke.
pub struct Reaper<H, R> {
    grace: Duration,
    is_held: H,
    revoke: R,
    memory: Memory,
}

impl<H, R, F> Reaper<H, R>
where
    H: Fn(&str, Option<&str>) -> bool,
    R: Fn(Orphan) -> F,
    F: Future<Output = Result<(), MintError>>,
{
    pub fn new(grace: Duration, is_held: H, revoke: R) -> Self {
        Reaper {
            grace,
            is_held,
            revoke,
            memory: Memory::default(),
        }
    }

    /// One sweep (see the module doc).
    pub async fn sweep(&mut self, admin_client: &AdminClient) -> Result<SweepReport, MintError> {
        let Some(sweep) = admin_client.begin_sweep().await? else {
            tracing::debug!("reaper: another instance is sweeping");
            return Ok(SweepReport {
                skipped: true,
                ..SweepReport::default()
            });
        };
        let (roles, db_now) = sweep.managed_roles().await?;
        let idle = self.memory.observe(&roles, Instant::now());
        let mut report = SweepReport {
            seen: roles.len(),
            ..SweepReport::default()
        };
        for (role, idle_seen) in roles.iter().zip(idle) {
            let comment = CommentFields::parse(role.comment.as_deref());
            let facts = Facts {
                valid_name: is_valid_role_name(&role.name),
                retained: self.memory.retained.contains(&role.name),
                // A role whose VALID UNTIL is NULL or `infinity` would
                // otherwise never expire: its lease comment still says when
                // the lease ends.
                expired: role.expired || (!role.finite_expiry && comment.expired(db_now)),
                backends: role.backends,
                held: (self.is_held)(&role.name, comment.lease_id.as_deref()),
                credential: comment.kind.as_deref() == Some("creds"),
                idle_seen,
                age: comment.age(db_now),
            };
            let Verdict::Revoke(cause) = decide(&facts, self.grace) else {
                continue;
            };
            if cause == EndReason::ReapedExpired && role.backends > 0 {
                if let Err(e) = sweep.terminate_backends(&role.name).await {
                    tracing::warn!(role = %role.name, "reaper: terminating the sessions of an expired role failed: {e}");
                }
            }
            let orphan = Orphan {
                role: role.name.clone(),
                lease_id: comment.lease_id,
                instance: comment.instance,
                database: comment.database,
                template: comment.template,
                cause,
            };
            match (self.revoke)(orphan).await {
                Ok(()) => {
                    report.revoked += 1;
                    self.memory.idle_since.remove(&role.name);
                    tracing::info!(role = %role.name, cause = cause.reaped(), "reaper: role revoked");
                }
                Err(e @ MintError::OwnsObjects { .. }) => {
                    report.failed += 1;
                    self.memory.retained.insert(role.name.clone());
                    tracing::warn!(role = %role.name, "reaper: role retained NOLOGIN: {e}");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(role = %role.name, cause = cause.reaped(), "reaper: revoke failed, retried next sweep: {e}");
                }
            }
        }
        Ok(report)
    }

    /// Sweeps now and every `interval` until `stop`.
    pub async fn run(
        mut self,
        admin_client: &AdminClient,
        interval: Duration,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                outcome = self.sweep(admin_client) => match outcome {
                    Ok(r) if r.skipped => {}
                    Ok(r) if r.revoked + r.failed > 0 => {
                        crate::observe::metrics::reaper_run();
                        crate::observe::metrics::roles_reaped(r.revoked as u64);
                        tracing::info!(
                            seen = r.seen, revoked = r.revoked, failed = r.failed, "reaper: sweep done"
                        );
                    }
                    Ok(r) => {
                        crate::observe::metrics::reaper_run();
                        tracing::debug!(seen = r.seen, "reaper: sweep done");
                    }
                    Err(e) => tracing::warn!("reaper: sweep failed, next in {interval:?}: {e}"),
                },
            }
            // The lease index's upkeep, when due (`pg/lease_index.rs`).
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = admin_client.tidy_lease_index() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// What the reaper of a server uses, and nothing else of the server: the
/// admin client it reads the catalog with, the revoker it hands roles to,
/// the audit log, and three settings.
pub struct Setup {
    pub admin_client: Arc<AdminClient>,
    pub revoker: Arc<Revoker>,
    pub audit: Audit,
    /// `mint.reap_grace`.
    pub grace: Duration,
    /// `mint.reap_interval`.
    pub interval: Duration,
    /// The longest a role can exist before its session logs in: a mint,
    /// then a backend login (see `session`).
    pub login_window: Duration,
    /// `backend.admin_database`: where a role whose comment names no
    /// database is revoked.
    pub admin_database: String,
}

impl Setup {
    /// The settings from `config`, with the server's collaborators.
    pub fn new(
        config: &Config,
        admin_client: Arc<AdminClient>,
        revoker: Arc<Revoker>,
        audit: Audit,
    ) -> Setup {
        Setup {
            admin_client,
            revoker,
            audit,
            grace: config.mint.reap_grace,
            interval: config.mint.reap_interval,
            login_window: config.admin_operation_timeout() + 2 * config.backend.connect_timeout,
            admin_database: config.backend.admin_database.clone(),
        }
    }
}

/// Runs the reaper of a server until `stop`: `is_held` says whether a live
/// lease of this instance (or a pending revocation, a mint in flight, a
/// pooled role) holds a role; revoke is the session's revocation with the
/// lease's template, or the default revocation when the template is gone
/// from the config (or the comment does not name one).
pub async fn run<H>(setup: Setup, is_held: H, stop: CancellationToken)
where
    H: Fn(&str) -> bool,
{
    let Setup {
        admin_client,
        revoker,
        audit,
        grace,
        interval,
        login_window,
        admin_database,
    } = setup;
    if grace <= login_window {
        tracing::warn!(
            "mint.reap_grace ({grace:?}) is not longer than a mint plus a backend login \
             ({login_window:?}): a role minted by another instance may be dropped just \
             before its session logs in"
        );
    }
    let is_held = move |role: &str, _lease_id: Option<&str>| is_held(role);
    let revoke = move |orphan: Orphan| {
        revoke_orphan(&revoker, &audit, &admin_database, &orphan);
        std::future::ready(Ok(()))
    };
    Reaper::new(grace, is_held, revoke)
        .run(&admin_client, interval, stop)
        .await;
}

/// The one place the reaper revokes: the role goes to the revocation
/// service, which retries it until it is dropped (or retained), falls back to
/// the admin database when the lease's database was dropped, and uses the
/// default revocation when the template is gone from the config. Scheduling
/// a role that is already pending is a no-op, so a sweep that finds the same
/// orphan again adds nothing.
fn revoke_orphan(revoker: &Revoker, audit: &Audit, admin_database: &str, orphan: &Orphan) {
    let database = orphan.database.as_deref().unwrap_or(admin_database);
    // Said before the revoker has it: the revoker's own `lease.revoked`
    // (by reaper) follows once the role is gone.
    audit.record(Event::LeaseReaped {
        lease_id: orphan.lease_id.clone(),
        role: orphan.role.clone(),
        reason: orphan.cause.reaped().unwrap_or_default().to_owned(),
        instance: orphan.instance.clone(),
    });
    match &orphan.lease_id {
        Some(lease_id) => revoker.schedule_lease(
            lease_id,
            &orphan.role,
            database,
            orphan.template.as_deref(),
            orphan.cause,
        ),
        None => revoker.schedule(
            &orphan.role,
            database,
            orphan.template.as_deref(),
            orphan.cause,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(120);

    /// An idle, unheld session role, just past the grace.
    fn orphan() -> Facts {
        Facts {
            valid_name: true,
            retained: false,
            expired: false,
            backends: 0,
            held: false,
            credential: false,
            idle_seen: GRACE,
            age: None,
        }
    }

    #[test]
    fn idle_past_the_grace_and_unheld_is_revoked() {
        assert_eq!(
            decide(&orphan(), GRACE),
            Verdict::Revoke(EndReason::ReapedOrphaned)
        );
        let by_age = Facts {
            idle_seen: Duration::ZERO,
            age: Some(GRACE + Duration::from_secs(1)),
            ..orphan()
        };
        assert_eq!(
            decide(&by_age, GRACE),
            Verdict::Revoke(EndReason::ReapedOrphaned)
        );
    }

    #[test]
    fn young_roles_are_kept_whichever_clock_says_so() {
        let young = Facts {
            idle_seen: GRACE - Duration::from_millis(1),
            ..orphan()
        };
        assert_eq!(decide(&young, GRACE), Verdict::Keep(Kept::Young));
        let just_minted = Facts {
            idle_seen: Duration::ZERO,
            age: Some(Duration::from_secs(3)),
            ..orphan()
        };
        assert_eq!(decide(&just_minted, GRACE), Verdict::Keep(Kept::Young));
        let never_seen = Facts {
            idle_seen: Duration::ZERO,
            ..orphan()
        };
        assert_eq!(decide(&never_seen, GRACE), Verdict::Keep(Kept::Young));
    }

    #[test]
    fn a_live_backend_is_never_reaped_before_expiry() {
        for backends in [1, 2, u32::MAX] {
            for held in [false, true] {
                for age in [None, Some(Duration::ZERO), Some(GRACE * 100)] {
                    let f = Facts {
                        backends,
                        held,
                        age,
                        idle_seen: GRACE * 100,
                        ..orphan()
                    };
                    assert_eq!(decide(&f, GRACE), Verdict::Keep(Kept::LiveBackend), "{f:?}");
                }
            }
        }
    }

    #[test]
    fn expired_is_revoked_even_with_backends_or_held() {
        for backends in [0, 3] {
            for held in [false, true] {
                for credential in [false, true] {
                    let f = Facts {
                        expired: true,
                        backends,
                        held,
                        credential,
                        idle_seen: Duration::ZERO,
                        ..orphan()
                    };
                    assert_eq!(
                        decide(&f, GRACE),
                        Verdict::Revoke(EndReason::ReapedExpired),
                        "{f:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn held_by_this_instance_is_kept() {
        let f = Facts {
            held: true,
            ..orphan()
        };
        assert_eq!(decide(&f, GRACE), Verdict::Keep(Kept::Held));
    }

    #[test]
    fn credentials_wait_for_expiry() {
        let f = Facts {
            credential: true,
            age: Some(GRACE * 10),
            ..orphan()
        };
        assert_eq!(decide(&f, GRACE), Verdict::Keep(Kept::Credential));
    }

    #[test]
    fn foreign_names_and_retained_roles_are_never_touched() {
        for expired in [false, true] {
            let foreign = Facts {
                valid_name: false,
                expired,
                ..orphan()
            };
            assert_eq!(decide(&foreign, GRACE), Verdict::Keep(Kept::ForeignName));
            let retained = Facts {
                retained: true,
                expired,
                ..orphan()
            };
            assert_eq!(decide(&retained, GRACE), Verdict::Keep(Kept::Retained));
        }
    }

    #[test]
    fn comments_are_read_leniently() {
        let c = CommentFields::parse(Some(
            r#"{"lease_id":"ab","identity":"x","template":"readonly","database":"appdb",
                "expires_at":"2026-11-22T10:00:00Z","instance":"a","issued_at":"2026-11-22T09:00:00Z",
                "kind":"session","future_field":[1,2]}"#,
        ));
        assert_eq!(c.lease_id.as_deref(), Some("ab"));
        assert_eq!(c.template.as_deref(), Some("readonly"));
        assert_eq!(c.database.as_deref(), Some("appdb"));
        let issued = 1_795_338_000; // 2026-11-22T09:00:00Z
        assert_eq!(c.age(issued + 90), Some(Duration::from_secs(90)));
        // A clock behind the issue time gives age zero, never a wrap.
        assert_eq!(c.age(issued - 5), Some(Duration::ZERO));
        // The recorded expiry (10:00): passed at 10:00, not a second before.
        assert!(!c.expired(issued + 3599));
        assert!(c.expired(issued + 3600));
        assert!(!CommentFields::parse(Some("{}")).expired(i64::MAX));

        for bad in [
            None,
            Some(""),
            Some("not json"),
            Some("[1]"),
            Some(r#"{"lease_id":7}"#),
        ] {
            let c = CommentFields::parse(bad);
            assert!(c.lease_id.is_none() && c.template.is_none() && c.database.is_none());
            assert_eq!(c.age(issued), None);
        }
        let c = CommentFields::parse(Some(r#"{"issued_at":"yesterday"}"#));
        assert_eq!(c.age(issued), None);
    }

    fn row(name: &str, backends: u32) -> ManagedRole {
        ManagedRole {
            name: name.into(),
            expired: false,
            finite_expiry: true,
            comment: None,
            backends,
        }
    }

    #[test]
    fn idle_clocks_start_at_first_sight_reset_on_a_backend_and_forget_gone_roles() {
        let mut m = Memory::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(
            m.observe(&[row("a", 0), row("b", 1)], t0),
            [Duration::ZERO, Duration::ZERO]
        );
        assert_eq!(
            m.observe(&[row("a", 0), row("b", 0)], t0 + s),
            [s, Duration::ZERO]
        );
        // a logs in: its clock resets; b keeps counting.
        assert_eq!(
            m.observe(&[row("a", 1), row("b", 0)], t0 + 3 * s),
            [Duration::ZERO, 2 * s]
        );
        m.retained.insert("b".into());
        // b is gone: forgotten, so the memory is bounded by the last read.
        assert_eq!(m.observe(&[row("a", 0)], t0 + 4 * s), [Duration::ZERO]);
        assert!(!m.idle_since.contains_key("b") && m.retained.is_empty());
        assert_eq!(m.idle_since.len(), 1);
    }
}

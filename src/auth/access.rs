//! Access requests: a person asks for a template that needs approval, other
//! people approve it, and the approval is a grant bounded in time.
//!
//! Everything here is decisions without IO — who may create, approve, deny
//! or revoke, what state a request is in at a given time, which grant
//! covers a session — so each rule is tested without a socket. The
//! requests themselves are kept in rolemint's store in PostgreSQL (every
//! instance sees them), the routes are `control/requests.rs`.
//!
//! ```text
//! pending --approve (min_approvals distinct approvers)--> approved --(granted_until)--> ended
//!    |  \--deny--> denied                                     \--revoke--> revoked
//!    \--(pending_until)--> expired
//! ```

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::auth::identity::Identity;
use crate::config::approval::Approval;

/// Longest reason kept.
pub const MAX_REASON_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("template {0} needs no approval")]
    NoApprovalNeeded(String),
    #[error("a reason is required (e.g. the incident or ticket)")]
    NoReason,
    #[error("the reason is longer than {MAX_REASON_BYTES} bytes")]
    ReasonTooLong,
    #[error("the duration must be from 1 minute to the template's max_duration ({0})")]
    BadDuration(String),
    #[error("you may not use template {0} even with an approval")]
    NotAllowed(String),
    #[error("nobody may approve their own request")]
    OwnRequest,
    #[error("you are not an approver of template {0}")]
    NotApprover(String),
    #[error("you approved this request already")]
    AlreadyApproved,
    #[error("the request is {0}, not pending")]
    NotPending(State),
    #[error("the request is {0}, not approved")]
    NotApproved(State),
    #[error("only the requester, an approver or an operator may revoke a grant")]
    MayNotRevoke,
}

/// Where a request is; see the module's diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Revoked,
    Ended,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Revoked => "revoked",
            State::Ended => "ended",
        })
    }
}

/// A principal: `(issuer, identity)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub issuer: String,
    pub identity: String,
}

impl Principal {
    pub fn of(id: &Identity) -> Principal {
        Principal {
            issuer: id.issuer.clone(),
            identity: id.subject.clone(),
        }
    }
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    #[serde(flatten)]
    pub by: Principal,
    /// Unix seconds.
    pub at: u64,
}

/// One request, as stored (JSON) and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub requester: Principal,
    pub template: String,
    pub reason: String,
    /// The grant asked for, in seconds.
    pub duration: u64,
    /// As stored; [`Request::state_at`] adds the clock's view.
    pub state: State,
    /// Unix seconds.
    pub created_at: u64,
    /// A pending request expires at this time.
    pub pending_until: u64,
    #[serde(default)]
    pub approvals: Vec<Approved>,
    /// Who denied or revoked it, and why.
    #[serde(default)]
    pub decided_by: Option<Principal>,
    #[serde(default)]
    pub decision_reason: Option<String>,
    /// When the grant ends (set when approved).
    #[serde(default)]
    pub granted_until: Option<u64>,
}

/// Seconds since the epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who may approve a template's requests, as the caller decides it (the
/// policy's issuer-qualified matching lives in `policy.rs`).
pub trait Approvers {
    fn may_approve(&self, approval: &Approval, who: &Identity) -> bool;
}

impl Request {
    /// A new pending request of `who` for `template`, checked against the
    /// template's rule. `allowed`: whether the template's allow lists let
    /// `who` in at all (an approval adds time, never a template).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        id: String,
        who: &Identity,
        template: &str,
        approval: Option<&Approval>,
        allowed: bool,
        reason: &str,
        duration: Duration,
        pending_ttl: Duration,
        now: SystemTime,
    ) -> Result<Request, AccessError> {
        let approval = approval.ok_or_else(|| AccessError::NoApprovalNeeded(template.into()))?;
        if !allowed {
            return Err(AccessError::NotAllowed(template.into()));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(AccessError::NoReason);
        }
        if reason.len() > MAX_REASON_BYTES {
            return Err(AccessError::ReasonTooLong);
        }
        if duration < Duration::from_secs(60) || duration > approval.max_duration {
            return Err(AccessError::BadDuration(
                humantime::format_duration(approval.max_duration).to_string(),
            ));
        }
        let created_at = unix(now);
        Ok(Request {
            id,
            requester: Principal::of(who),
            template: template.into(),
            reason: reason.into(),
            duration: duration.as_secs(),
            state: State::Pending,
            created_at,
            pending_until: created_at.saturating_add(pending_ttl.as_secs()),
            approvals: Vec::new(),
            decided_by: None,
            decision_reason: None,
            granted_until: None,
        })
    }

    /// The state at `now`: a pending request past its wait is expired, an
    /// approved one past its grant has ended.
    pub fn state_at(&self, now: SystemTime) -> State {
        let now = unix(now);
        match self.state {
            State::Pending if now >= self.pending_until => State::Expired,
            State::Approved if self.granted_until.is_none_or(|u| now >= u) => State::Ended,
            s => s,
        }
    }

    /// A pending request past its wait, or a grant past its end, as stored:
    /// the stored state becomes the one [`Request::state_at`] shows
    /// (`expired`, `ended`), which is returned; `None` when nothing lapsed
    /// (or it was recorded already).
    pub fn lapse(&mut self, now: SystemTime) -> Option<State> {
        let at = self.state_at(now);
        if at == self.state {
            return None;
        }
        self.state = at;
        Some(at)
    }

    /// `who` approves. Refused for the requester, for someone the rule
    /// does not name (checked now, at approval time), twice by the same
    /// person, or when not pending. The request is approved, and its grant
    /// starts, once `min_approvals` distinct people approved.
    pub fn approve(
        &mut self,
        who: &Identity,
        approval: &Approval,
        approvers: &dyn Approvers,
        now: SystemTime,
    ) -> Result<(), AccessError> {
        self.require(State::Pending, now)?;
        let by = Principal::of(who);
        if by == self.requester {
            return Err(AccessError::OwnRequest);
        }
        if !approvers.may_approve(approval, who) {
            return Err(AccessError::NotApprover(self.template.clone()));
        }
        if self.approvals.iter().any(|a| a.by == by) {
            return Err(AccessError::AlreadyApproved);
        }
        let at = unix(now);
        self.approvals.push(Approved { by, at });
        if self.approvals.len() >= approval.min_approvals.max(1) as usize {
            self.state = State::Approved;
            self.granted_until = Some(at.saturating_add(self.duration));
        }
        Ok(())
    }

    /// `who` (an approver) denies.
    pub fn deny(
        &mut self,
        who: &Identity,
        approval: &Approval,
        approvers: &dyn Approvers,
        reason: &str,
        now: SystemTime,
    ) -> Result<(), AccessError> {
        self.require(State::Pending, now)?;
        if !approvers.may_approve(approval, who) {
            return Err(AccessError::NotApprover(self.template.clone()));
        }
        self.decide(State::Denied, Principal::of(who), reason);
        Ok(())
    }

    /// Ends an approved grant early. `who` is `None` for an operator.
    pub fn revoke(
        &mut self,
        who: Option<&Identity>,
        approval: Option<&Approval>,
        approvers: &dyn Approvers,
        reason: &str,
        now: SystemTime,
    ) -> Result<(), AccessError> {
        let state = self.state_at(now);
        if state != State::Approved && state != State::Pending {
            return Err(AccessError::NotApproved(state));
        }
        let by = match who {
            None => Principal {
                issuer: String::new(),
                identity: "operator".into(),
            },
            Some(id) => {
                let p = Principal::of(id);
                let approver = approval.is_some_and(|a| approvers.may_approve(a, id));
                if p != self.requester && !approver {
                    return Err(AccessError::MayNotRevoke);
                }
                p
            }
        };
        self.decide(State::Revoked, by, reason);
        Ok(())
    }

    fn require(&self, want: State, now: SystemTime) -> Result<(), AccessError> {
        match self.state_at(now) {
            s if s == want => Ok(()),
            s if want == State::Pending => Err(AccessError::NotPending(s)),
            s => Err(AccessError::NotApproved(s)),
        }
    }

    fn decide(&mut self, state: State, by: Principal, reason: &str) {
        self.state = state;
        self.decided_by = Some(by);
        let reason: String = reason.trim().chars().take(MAX_REASON_BYTES / 4).collect();
        self.decision_reason = (!reason.is_empty()).then_some(reason);
    }

    /// Whether a stored request may be forgotten: decided or over for a
    /// day (the audit log keeps the history).
    pub fn is_stale(&self, now: SystemTime) -> bool {
        const KEEP: u64 = 24 * 3600;
        let now_s = unix(now);
        let over_since = match self.state_at(now) {
            State::Pending | State::Approved => return false,
            State::Expired => self.pending_until,
            State::Ended => self.granted_until.unwrap_or(self.created_at),
            // Decided: the newest time it carries.
            _ => self
                .approvals
                .iter()
                .map(|a| a.at)
                .chain([self.created_at])
                .max()
                .unwrap_or(self.created_at),
        };
        now_s.saturating_sub(over_since) > KEEP
    }
}

/// The requests among stored JSON bodies (one that does not parse is
/// skipped: it was not written by this code).
pub fn parse_all<'a>(bodies: impl IntoIterator<Item = &'a serde_json::Value>) -> Vec<Request> {
    bodies
        .into_iter()
        .filter_map(|b| serde_json::from_value(b.clone()).ok())
        .collect()
}

/// The grant covering `who` on `template` at `now`: the approved request
/// that ends last. Its end caps a session's lease.
pub fn active_grant<'a>(
    requests: impl IntoIterator<Item = &'a Request>,
    who: &Principal,
    template: &str,
    now: SystemTime,
) -> Option<&'a Request> {
    requests
        .into_iter()
        .filter(|r| &r.requester == who && r.template == template)
        .filter(|r| r.state_at(now) == State::Approved)
        .max_by_key(|r| r.granted_until)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dba;
    impl Approvers for Dba {
        fn may_approve(&self, _: &Approval, who: &Identity) -> bool {
            who.groups.iter().any(|g| g == "dba")
        }
    }

    fn id(name: &str, groups: &[&str]) -> Identity {
        Identity {
            subject: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
            issuer: "corp".into(),
        }
    }

    fn rule(min: u32) -> Approval {
        Approval {
            approvers: vec![],
            approver_groups: vec!["corp:dba".into()],
            max_duration: Duration::from_secs(3600),
            min_approvals: min,
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn request(min: u32) -> (Request, Approval) {
        let a = rule(min);
        let r = Request::create(
            "r1".into(),
            &id("alice", &["dba"]),
            "dba",
            Some(&a),
            true,
            "INC-123",
            Duration::from_secs(1800),
            Duration::from_secs(600),
            t(0),
        )
        .unwrap();
        (r, a)
    }

    #[test]
    fn a_wait_or_a_grant_that_ran_out_lapses_once() {
        let (mut r, a) = request(1);
        assert_eq!(r.lapse(t(599)), None, "still pending");
        assert_eq!(r.lapse(t(600)), Some(State::Expired));
        assert_eq!(r.state, State::Expired);
        assert_eq!(r.lapse(t(700)), None, "recorded once");
        let (mut r, _) = request(1);
        r.approve(&id("bob", &["dba"]), &a, &Dba, t(10)).unwrap();
        assert_eq!(r.lapse(t(10 + 1799)), None, "the grant runs");
        assert_eq!(r.lapse(t(10 + 1800)), Some(State::Ended));
        assert_eq!(r.lapse(t(10 + 1900)), None);
        let (mut r, _) = request(1);
        r.revoke(None, Some(&a), &Dba, "", t(5)).unwrap();
        assert_eq!(r.lapse(t(100_000)), None, "a decided request never lapses");
    }

    #[test]
    fn nobody_approves_their_own_request_even_as_an_approver() {
        let (mut r, a) = request(1);
        let e = r.approve(&id("alice", &["dba"]), &a, &Dba, t(1));
        assert_eq!(e, Err(AccessError::OwnRequest));
        assert_eq!(r.state_at(t(1)), State::Pending);
    }

    #[test]
    fn an_approver_starts_a_grant_that_ends_on_time() {
        let (mut r, a) = request(1);
        assert_eq!(
            r.approve(&id("carol", &[]), &a, &Dba, t(5)),
            Err(AccessError::NotApprover("dba".into()))
        );
        r.approve(&id("bob", &["dba"]), &a, &Dba, t(10)).unwrap();
        assert_eq!(r.state_at(t(10)), State::Approved);
        assert_eq!(r.granted_until, Some(unix(t(10)) + 1800));
        let me = Principal::of(&id("alice", &[]));
        assert!(active_grant([&r], &me, "dba", t(1000)).is_some());
        assert!(active_grant([&r], &me, "other", t(1000)).is_none());
        assert_eq!(r.state_at(t(1810)), State::Ended);
        assert!(active_grant([&r], &me, "dba", t(1810)).is_none());
        // Another issuer's alice holds no grant.
        let other = Principal {
            issuer: "k8s".into(),
            identity: "alice".into(),
        };
        assert!(active_grant([&r], &other, "dba", t(1000)).is_none());
    }

    #[test]
    fn two_approvals_need_two_people() {
        let (mut r, a) = request(2);
        r.approve(&id("bob", &["dba"]), &a, &Dba, t(1)).unwrap();
        assert_eq!(r.state_at(t(1)), State::Pending);
        assert_eq!(
            r.approve(&id("bob", &["dba"]), &a, &Dba, t(2)),
            Err(AccessError::AlreadyApproved)
        );
        r.approve(&id("dan", &["dba"]), &a, &Dba, t(3)).unwrap();
        assert_eq!(r.state_at(t(3)), State::Approved);
    }

    #[test]
    fn pending_requests_expire_and_decided_ones_stay_decided() {
        let (mut r, a) = request(1);
        assert_eq!(r.state_at(t(600)), State::Expired);
        assert!(matches!(
            r.approve(&id("bob", &["dba"]), &a, &Dba, t(601)),
            Err(AccessError::NotPending(State::Expired))
        ));
        let (mut r, a) = request(1);
        r.deny(&id("bob", &["dba"]), &a, &Dba, "no", t(1)).unwrap();
        assert_eq!(r.state_at(t(2)), State::Denied);
        assert!(r.approve(&id("dan", &["dba"]), &a, &Dba, t(2)).is_err());
    }

    #[test]
    fn a_grant_is_revoked_by_its_requester_an_approver_or_an_operator_only() {
        let (mut r, a) = request(1);
        r.approve(&id("bob", &["dba"]), &a, &Dba, t(1)).unwrap();
        let mut r2 = r.clone();
        assert_eq!(
            r.revoke(Some(&id("carol", &[])), Some(&a), &Dba, "", t(2)),
            Err(AccessError::MayNotRevoke)
        );
        r.revoke(Some(&id("bob", &["dba"])), Some(&a), &Dba, "done", t(2))
            .unwrap();
        assert_eq!(r.state_at(t(3)), State::Revoked);
        let me = Principal::of(&id("alice", &[]));
        assert!(active_grant([&r], &me, "dba", t(3)).is_none());
        r2.revoke(None, Some(&a), &Dba, "", t(2)).unwrap();
        assert_eq!(r2.decided_by.unwrap().identity, "operator");
    }

    #[test]
    fn requests_are_checked_when_made() {
        let a = rule(1);
        let alice = id("alice", &[]);
        let make = |approval: Option<&Approval>, allowed, reason: &str, secs| {
            Request::create(
                "x".into(),
                &alice,
                "dba",
                approval,
                allowed,
                reason,
                Duration::from_secs(secs),
                Duration::from_secs(600),
                t(0),
            )
        };
        assert!(matches!(
            make(None, true, "r", 600),
            Err(AccessError::NoApprovalNeeded(_))
        ));
        assert!(matches!(
            make(Some(&a), false, "r", 600),
            Err(AccessError::NotAllowed(_))
        ));
        assert_eq!(make(Some(&a), true, "  ", 600), Err(AccessError::NoReason));
        assert!(matches!(
            make(Some(&a), true, "r", 7200),
            Err(AccessError::BadDuration(_))
        ));
        assert!(matches!(
            make(Some(&a), true, "r", 10),
            Err(AccessError::BadDuration(_))
        ));
        assert!(make(Some(&a), true, "r", 3600).is_ok());
    }

    #[test]
    fn old_decided_requests_become_stale_live_ones_never() {
        let (mut r, a) = request(1);
        assert!(!r.is_stale(t(100_000)) || r.state_at(t(100_000)) == State::Expired);
        r.approve(&id("bob", &["dba"]), &a, &Dba, t(1)).unwrap();
        assert!(!r.is_stale(t(100)));
        assert!(r.is_stale(t(1 + 1800 + 24 * 3600 + 1)));
    }
}

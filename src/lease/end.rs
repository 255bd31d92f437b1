//! Why a lease ended: one type, [`EndReason`], from the moment something
//! ends a lease (its session, its TTL, an operator, shutdown, the reaper)
//! to the revoker that drops its role, the `57P01` its client is told and
//! the audit lines that record it.
//!
//! A leaf: it imports nothing of the crate but the client errors, so every
//! folder may use it. The audit log (`observe`, which `lease` itself uses)
//! takes the words below rather than the type, which keeps `observe` free
//! of `lease`. The words are contract (README, "Audit log"): each audit
//! field has its own method, since the fields speak differently of the
//! same end (`ttl` in `lease.revoked`'s `by`, `expired` in `lease.reaped`'s
//! `reason`).
//!
//! How a splice ended (client closed, backend closed, I/O failed) is not a
//! reason here: it is the relay's outcome (`proxy::session::relay::End`),
//! which carries an [`EndReason`] when the lease ended first.

use crate::error::ClientError;

/// Who or what ended a lease (or, for [`EndReason::MintFailed`] and
/// [`EndReason::Unclaimed`], why a role that never had one is revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its holder let go: the client closed its session, the backend went
    /// away, or the relay failed.
    SessionClosed,
    /// The lease's TTL ran out.
    Expired,
    /// An operator revoked it through the lease API.
    RevokedByOperator,
    /// A workload revoked its own lease through the Vault-compatible API.
    RevokedByWorkload,
    /// The Vault token that created it was revoked or expired.
    RevokedByToken,
    /// The access grant it was opened under was revoked (by its requester,
    /// an approver or an operator: the `access.request` line says who).
    GrantRevoked,
    /// rolemint is shutting down and the drain period is over.
    Shutdown,
    /// The reaper found its role past `VALID UNTIL`.
    ReapedExpired,
    /// The reaper found its role orphaned: no backend for longer than the
    /// grace, and no live lease of this instance.
    ReapedOrphaned,
    /// Its mint failed or timed out; the role may or may not exist, and no
    /// lease was handed out.
    MintFailed,
    /// A pooled role (`warm_pool.rs`) no session claimed: past its pool
    /// lifetime, its backend gone, or rolemint shutting down.
    Unclaimed,
}

impl EndReason {
    /// What the client of a session whose lease ended is told (all
    /// `57P01`).
    pub fn client_error(self) -> ClientError {
        match self {
            EndReason::Expired | EndReason::ReapedExpired => ClientError::LeaseExpired,
            EndReason::Shutdown => ClientError::Terminated,
            EndReason::GrantRevoked => ClientError::GrantRevoked,
            EndReason::RevokedByWorkload => ClientError::LeaseRevoked(" by its workload"),
            EndReason::RevokedByToken => {
                ClientError::LeaseRevoked(": its Vault token was revoked or expired")
            }
            _ => ClientError::LeaseRevoked(" by an operator"),
        }
    }

    /// `lease.revoked`'s `by`: `client`, `ttl`, `operator`, `workload`,
    /// `token`, `grant`, `shutdown`, `reaper`; `None` when no lease was ever handed
    /// out (a failed mint, an unclaimed pooled role), so none is revoked.
    pub fn revoked_by(self) -> Option<&'static str> {
        match self {
            EndReason::SessionClosed => Some("client"),
            EndReason::Expired => Some("ttl"),
            EndReason::RevokedByOperator => Some("operator"),
            EndReason::RevokedByWorkload => Some("workload"),
            EndReason::RevokedByToken => Some("token"),
            EndReason::GrantRevoked => Some("grant"),
            EndReason::Shutdown => Some("shutdown"),
            EndReason::ReapedExpired | EndReason::ReapedOrphaned => Some("reaper"),
            EndReason::MintFailed | EndReason::Unclaimed => None,
        }
    }

    /// `session.ended`'s `reason` when the lease ended under the session:
    /// `ttl`, `revoked`, `shutdown`. `None` when its holder let go (the
    /// relay's outcome then says how: `client`, `backend`, `error`).
    pub fn session_ended(self) -> Option<&'static str> {
        match self {
            EndReason::Expired => Some("ttl"),
            EndReason::RevokedByOperator
            | EndReason::RevokedByWorkload
            | EndReason::RevokedByToken
            | EndReason::GrantRevoked => Some("revoked"),
            EndReason::Shutdown => Some("shutdown"),
            _ => None,
        }
    }

    /// `lease.reaped`'s `reason`: `expired`, `orphaned`; `None` for what
    /// the reaper does not end.
    pub fn reaped(self) -> Option<&'static str> {
        match self {
            EndReason::ReapedExpired => Some("expired"),
            EndReason::ReapedOrphaned => Some("orphaned"),
            _ => None,
        }
    }

    /// The word logs use (`why=`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::SessionClosed => "session_ended",
            EndReason::Expired => "expired",
            EndReason::RevokedByOperator => "revoked",
            EndReason::RevokedByWorkload => "revoked_by_workload",
            EndReason::RevokedByToken => "revoked_by_token",
            EndReason::GrantRevoked => "grant_revoked",
            EndReason::Shutdown => "shutdown",
            EndReason::ReapedExpired | EndReason::ReapedOrphaned => "reaper",
            EndReason::MintFailed => "mint_failed",
            EndReason::Unclaimed => "warm_pool_unclaimed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [EndReason; 11] = [
        EndReason::SessionClosed,
        EndReason::Expired,
        EndReason::RevokedByOperator,
        EndReason::RevokedByWorkload,
        EndReason::RevokedByToken,
        EndReason::GrantRevoked,
        EndReason::Shutdown,
        EndReason::ReapedExpired,
        EndReason::ReapedOrphaned,
        EndReason::MintFailed,
        EndReason::Unclaimed,
    ];

    /// The audit words are contract (README, "Audit log"): exactly these,
    /// and nothing else.
    #[test]
    fn the_audit_words_are_the_documented_ones() {
        let by: Vec<_> = ALL.iter().filter_map(|r| r.revoked_by()).collect();
        assert_eq!(
            by,
            [
                "client", "ttl", "operator", "workload", "token", "grant", "shutdown", "reaper",
                "reaper"
            ]
        );
        let ended: Vec<_> = ALL.iter().filter_map(|r| r.session_ended()).collect();
        assert_eq!(
            ended,
            ["ttl", "revoked", "revoked", "revoked", "revoked", "shutdown"]
        );
        let reaped: Vec<_> = ALL.iter().filter_map(|r| r.reaped()).collect();
        assert_eq!(reaped, ["expired", "orphaned"]);
    }

    #[test]
    fn a_client_is_told_expired_revoked_or_terminated() {
        assert_eq!(
            EndReason::Expired.client_error().to_string(),
            ClientError::LeaseExpired.to_string()
        );
        assert_eq!(
            EndReason::RevokedByOperator.client_error().to_string(),
            "lease revoked by an operator; any open transaction was rolled back"
        );
        assert_eq!(
            EndReason::RevokedByToken.client_error().to_string(),
            "lease revoked: its Vault token was revoked or expired; any open transaction was rolled back"
        );
        assert_eq!(
            EndReason::RevokedByWorkload.client_error().to_string(),
            "lease revoked by its workload; any open transaction was rolled back"
        );
        assert_eq!(
            EndReason::Shutdown.client_error().to_string(),
            ClientError::Terminated.to_string()
        );
    }
}

//! What a client is told when its session is refused or ended.
//!
//! Every failure a client can see is a [`ClientError`]: a short, actionable
//! message and the SQLSTATE a PostgreSQL client expects. Internal detail
//! (which claim failed, what the backend said, SQL errors) goes to the log
//! and never into a `ClientError`, so nothing sensitive can reach the wire by
//! accident: there is deliberately no `From<anyhow::Error>` or `From<io::Error>`.

/// A failure as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The token is missing, malformed, expired or not ours. The reason is
    /// logged, never sent: telling which check failed helps an attacker.
    #[error("password authentication failed: invalid or expired token")]
    BadToken,
    /// The client's address failed to authenticate too often lately: its
    /// attempts are refused without looking at the token, so this says
    /// nothing about whether the token was valid. Clients behind one NAT
    /// share the address, and so the wait.
    #[error("too many failed attempts from this address; retry in {0} s")]
    RateLimited(u64),
    /// The user name is a live credential lease's role and the password is
    /// no token: credentials from the Vault-compatible API log in to
    /// PostgreSQL directly, at the address given.
    #[error("password authentication failed: this is a credential lease's password; connect to PostgreSQL directly at {0}, not through rolemint")]
    CredentialLease(String),
    /// The token is fine but names no template we know.
    #[error("role template \"{0}\" does not exist")]
    UnknownTemplate(String),
    /// The identity may not use this template.
    #[error("identity is not allowed to use role template \"{0}\"")]
    TemplateNotAllowed(String),
    /// The template needs an approved access request, and the identity
    /// holds none that is current.
    #[error("role template \"{0}\" needs an approved access request: run rolemint request create {0} --reason \"...\" and ask an approver")]
    ApprovalRequired(String),
    /// The template does not list this database.
    #[error("database \"{database}\" is not allowed for role template \"{template}\"")]
    DatabaseNotAllowed { database: String, template: String },
    /// TLS is required and the client did not ask for it.
    #[error("rolemint requires TLS: connect with sslmode=require")]
    TlsRequired,
    /// The backend could not be reached or refused the minted role.
    #[error("the database server is unavailable; try again later")]
    BackendUnavailable,
    /// Creating or granting the role failed.
    #[error("could not create a role for this session; try again later")]
    MintFailed,
    /// `proxy.max_connections` sessions are open.
    #[error("sorry, too many clients already")]
    TooManyConnections,
    /// The principal is at one of its quotas (`[quotas]`); the text says
    /// which and its limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// More roles wait to be revoked than `mint.max_pending_revocations`
    /// (PostgreSQL is down or failing): no new role is minted until the
    /// backlog drains.
    #[error("too many roles are waiting to be revoked; try again later")]
    RevocationBacklog,
    /// The proxy is shutting down.
    #[error("rolemint is shutting down")]
    ShuttingDown,
    /// The lease TTL ran out; the backend was terminated.
    #[error("lease expired: the session's role reached its TTL and was revoked; any open transaction was rolled back")]
    LeaseExpired,
    /// The lease was revoked; the words say by whom (an operator, its
    /// workload, or with the Vault token it was taken under).
    #[error("lease revoked{0}; any open transaction was rolled back")]
    LeaseRevoked(&'static str),
    /// The access grant the session was opened under was revoked
    /// (`rolemint request revoke`).
    #[error("access grant revoked; any open transaction was rolled back")]
    GrantRevoked,
    /// rolemint is shutting down and ended the session.
    #[error("terminating connection: rolemint is shutting down")]
    Terminated,
    /// The client broke the protocol (bad length, unexpected message).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The client spoke a protocol version we do not.
    #[error("unsupported frontend protocol {0}.{1}: rolemint speaks 3.0")]
    UnsupportedProtocol(u16, u16),
    /// The client sent a startup without `user`.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// A startup parameter (or `options` setting) not on the allowlist of
    /// `pg::backend::params`: PostgreSQL would apply it as the minted role.
    #[error("rolemint does not pass the setting \"{0}\" to the database")]
    ParameterNotAllowed(String),
    /// A startup parameter we refuse (replication connections).
    #[error("{0}")]
    Unsupported(&'static str),
}

impl ClientError {
    /// The SQLSTATE of the ErrorResponse.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientError::BadToken
            | ClientError::RateLimited(_)
            | ClientError::CredentialLease(_) => "28P01",
            ClientError::UnknownTemplate(_)
            | ClientError::TemplateNotAllowed(_)
            | ClientError::ApprovalRequired(_) => "28000",
            ClientError::TlsRequired => "28000",
            ClientError::DatabaseNotAllowed { .. } => "3D000",
            ClientError::BackendUnavailable => "08006",
            ClientError::MintFailed => "58000",
            ClientError::TooManyConnections
            | ClientError::RevocationBacklog
            | ClientError::QuotaExceeded(_) => "53300",
            ClientError::ShuttingDown => "57P03",
            ClientError::LeaseExpired
            | ClientError::LeaseRevoked(_)
            | ClientError::GrantRevoked
            | ClientError::Terminated => "57P01",
            ClientError::Protocol(_) => "08P01",
            ClientError::UnsupportedProtocol(..) => "0A000",
            ClientError::NoUser => "28000",
            ClientError::Unsupported(_) => "0A000",
            ClientError::ParameterNotAllowed(_) => "42501",
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::BadToken => "bad_token",
            ClientError::RateLimited(_) => "rate_limited",
            ClientError::CredentialLease(_) => "credential_lease",
            ClientError::UnknownTemplate(_) => "unknown_template",
            ClientError::TemplateNotAllowed(_) => "template_not_allowed",
            ClientError::ApprovalRequired(_) => "approval_required",
            ClientError::DatabaseNotAllowed { .. } => "database_not_allowed",
            ClientError::TlsRequired => "tls_required",
            ClientError::BackendUnavailable => "backend_unavailable",
            ClientError::MintFailed => "mint_failed",
            ClientError::TooManyConnections => "too_many_connections",
            ClientError::RevocationBacklog => "revocation_backlog",
            ClientError::QuotaExceeded(_) => "quota_exceeded",
            ClientError::ShuttingDown => "shutting_down",
            ClientError::LeaseExpired => "lease_expired",
            ClientError::LeaseRevoked(_) => "lease_revoked",
            ClientError::GrantRevoked => "grant_revoked",
            ClientError::Terminated => "terminated",
            ClientError::Protocol(_) => "protocol",
            ClientError::UnsupportedProtocol(..) => "unsupported_protocol",
            ClientError::NoUser => "no_user",
            ClientError::Unsupported(_) => "unsupported",
            ClientError::ParameterNotAllowed(_) => "parameter_not_allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_follow_the_contract() {
        assert_eq!(ClientError::BadToken.sqlstate(), "28P01");
        assert_eq!(
            ClientError::TemplateNotAllowed("x".into()).sqlstate(),
            "28000"
        );
        let db = ClientError::DatabaseNotAllowed {
            database: "a".into(),
            template: "b".into(),
        };
        assert_eq!(db.sqlstate(), "3D000");
        assert_eq!(ClientError::BackendUnavailable.sqlstate(), "08006");
        assert_eq!(ClientError::TooManyConnections.sqlstate(), "53300");
        assert_eq!(ClientError::RevocationBacklog.sqlstate(), "53300");
        assert_eq!(ClientError::LeaseExpired.sqlstate(), "57P01");
    }
}

//! [`MintError`]: why talking to PostgreSQL as the admin failed, and
//! whether trying again may help. Every admin-side module (`admin.rs`,
//! `pool.rs`, `catalog.rs`, `rotate.rs`, ...) answers with it; it carries
//! what the log needs (database, SQLSTATE, server message) and never a
//! password or a token.

use std::time::Duration;

use super::template::TemplateError;

/// Why a mint or a revoke failed. Carries what the log needs (database,
/// SQLSTATE, server message); never a password or a token. None of this is
/// for the client: the session maps it to `ClientError::MintFailed` /
/// `BackendUnavailable`.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The config cannot work (checked in [`AdminClient::new`]).
    #[error("mint configuration: {0}")]
    Config(String),
    /// The backend TLS client config could not be built.
    #[error("backend TLS: {0}")]
    Tls(String),
    /// A value or placeholder was refused while rendering a template.
    #[error("role template: {0}")]
    Template(#[from] TemplateError),
    /// `revoke` was given a name outside the role-name alphabet.
    #[error("invalid role name {0:?}")]
    InvalidRoleName(String),
    /// The system CSPRNG failed.
    #[error("system random number generator failed")]
    Random,
    /// Connecting or logging in as admin failed.
    #[error("cannot connect to database \"{database}\" as admin: {message}")]
    Connect {
        database: String,
        /// Set when the server refused us (bad admin password, no such
        /// database, too many connections).
        sqlstate: Option<String>,
        message: String,
    },
    /// A bounded wait ran out.
    #[error("timed out {what} in database \"{database}\" after {after:?}")]
    Timeout {
        what: &'static str,
        database: String,
        after: Duration,
    },
    /// The server rejected a statement.
    #[error(
        "SQL error {sqlstate} in database \"{database}\": {message}{}",
        detail_suffix(detail)
    )]
    Sql {
        database: String,
        sqlstate: String,
        message: String,
        detail: Option<String>,
    },
    /// `DROP ROLE` failed with 2BP01: the role owns objects (or holds
    /// privileges in another database). It was left NOLOGIN, its sessions
    /// terminated; an operator decides what happens to the objects.
    #[error("role \"{role}\" was left NOLOGIN: it owns objects or holds privileges ({database}): {detail}")]
    OwnsObjects {
        role: String,
        database: String,
        detail: String,
    },
    /// The role exists but is not a member of `rolemint_managed`: refused.
    #[error("role \"{role}\" is not managed by rolemint; refusing to revoke it")]
    NotManaged { role: String },
    /// The admin connection failed other than with an SQL error.
    #[error("admin connection to database \"{database}\": {message}")]
    Backend { database: String, message: String },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(" ({})", d.replace('\n', "; ")))
        .unwrap_or_default()
}

impl MintError {
    /// Whether trying again later may succeed (network, timeouts, server
    /// overload or restart, lock and serialization conflicts). Permission,
    /// syntax and template errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            MintError::Timeout { .. } | MintError::Backend { .. } => true,
            MintError::Connect { sqlstate, .. } => {
                sqlstate.as_deref().is_none_or(transient_sqlstate)
            }
            MintError::Sql {
                sqlstate, message, ..
            } => {
                transient_sqlstate(sqlstate)
                    // Two concurrent GRANTs on the same object (templates
                    // that grant on tables directly) can collide on the
                    // catalog row.
                    || (sqlstate == "XX000" && message.contains("tuple concurrently updated"))
            }
            _ => false,
        }
    }

    /// The SQLSTATE, when the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            MintError::Sql { sqlstate, .. } => Some(sqlstate),
            MintError::Connect { sqlstate, .. } => sqlstate.as_deref(),
            MintError::OwnsObjects { .. } => Some("2BP01"),
            _ => None,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MintError::Config(_) => "config",
            MintError::Tls(_) => "tls",
            MintError::Template(_) => "template",
            MintError::InvalidRoleName(_) => "invalid_role_name",
            MintError::Random => "random",
            MintError::Connect { .. } => "connect",
            MintError::Timeout { .. } => "timeout",
            MintError::Sql { .. } => "sql",
            MintError::OwnsObjects { .. } => "owns_objects",
            MintError::NotManaged { .. } => "not_managed",
            MintError::Backend { .. } => "backend",
        }
    }

    pub(super) fn connect(database: &str, e: &tokio_postgres::Error) -> MintError {
        MintError::Connect {
            database: database.to_owned(),
            sqlstate: e.code().map(|c| c.code().to_owned()),
            message: error_text(e),
        }
    }

    pub(super) fn query(database: &str, e: &tokio_postgres::Error) -> MintError {
        match e.as_db_error() {
            Some(db) => MintError::Sql {
                database: database.to_owned(),
                sqlstate: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
            },
            None => MintError::Backend {
                database: database.to_owned(),
                message: error_text(e),
            },
        }
    }
}

/// tokio-postgres' error with its cause chain ("error connecting to server:
/// Connection refused"). It never contains the connection's password.
fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// SQLSTATE classes worth a retry: 08 connection exception, 40 transaction
/// rollback (serialization, deadlock), 53 insufficient resources, 57
/// operator intervention (admin shutdown, cannot connect now, statement
/// timeout), 58 system error; and 55P03 lock not available.
fn transient_sqlstate(code: &str) -> bool {
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55P03"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_classified() {
        let sql = |code: &str, message: &str| MintError::Sql {
            database: "appdb".into(),
            sqlstate: code.into(),
            message: message.into(),
            detail: None,
        };
        assert!(sql("40001", "could not serialize").is_transient());
        assert!(sql("57P03", "the database system is starting up").is_transient());
        assert!(sql("57014", "canceling statement due to statement timeout").is_transient());
        assert!(sql("53300", "too many connections").is_transient());
        assert!(sql("XX000", "tuple concurrently updated").is_transient());
        assert!(!sql("XX000", "cache lookup failed").is_transient());
        assert!(!sql("42501", "permission denied").is_transient());
        assert!(!sql("42601", "syntax error").is_transient());
        assert!(!sql("42704", "role \"app_read\" does not exist").is_transient());
        let connect = |code: Option<&str>| MintError::Connect {
            database: "appdb".into(),
            sqlstate: code.map(Into::into),
            message: "x".into(),
        };
        assert!(connect(None).is_transient());
        assert!(!connect(Some("28P01")).is_transient());
        assert!(!connect(Some("3D000")).is_transient());
        assert!(MintError::Timeout {
            what: "x",
            database: "d".into(),
            after: Duration::from_secs(1)
        }
        .is_transient());
        assert!(!MintError::OwnsObjects {
            role: "r".into(),
            database: "d".into(),
            detail: "owner of table t".into()
        }
        .is_transient());

        let e = MintError::Sql {
            database: "appdb".into(),
            sqlstate: "2BP01".into(),
            message: "role cannot be dropped".into(),
            detail: Some("owner of table t\nprivileges for table u".into()),
        };
        assert_eq!(
            e.to_string(),
            "SQL error 2BP01 in database \"appdb\": role cannot be dropped (owner of table t; privileges for table u)"
        );
    }
}

//! What the reaper asks the database: the sweep lock, the members of
//! `rolemint_managed` with their expiry, lease comment and backend count,
//! and the termination of an expired role's sessions.
//!
//! The sweep runs on a connection of its own, outside the admin pool: it
//! holds the advisory lock for the whole sweep while the revocations it
//! decides take pooled connections, so even `admin_pool_size = 1` cannot
//! make it wait for itself. Closing that connection releases the lock, also
//! when the process dies.

use std::time::Duration;

use postgres_protocol::escape::escape_literal;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{AdminClient, MintError};

/// The `pg_try_advisory_lock` key of the sweep: the bytes of "rolemint" as
/// a big-endian 64-bit integer (0x726f6c656d696e74 = 8245928625621790324).
/// Fixed, so every instance contends for the same lock. Advisory locks are
/// scoped to one database, and every instance takes it in
/// `backend.admin_database`: instances configured with different admin
/// databases may sweep at the same moment, which is wasteful but safe
/// (revocation is idempotent).
pub const SWEEP_LOCK_KEY: i64 = 0x726f_6c65_6d69_6e74;

/// Most roles read in one sweep: bounds the memory of a sweep (and of the
/// reaper's per-role bookkeeping). The rest are read by the next sweeps,
/// once these are gone.
pub const MAX_ROLES_PER_SWEEP: usize = 10_000;

/// One member of `rolemint_managed`, as the sweep reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRole {
    pub name: String,
    /// `VALID UNTIL` has passed (by the database's clock).
    pub expired: bool,
    /// `VALID UNTIL` is a real time: false when it is NULL or `infinity`
    /// (someone altered the role, or a template bypassed the check), in
    /// which case the lease comment's expiry is the one that counts.
    pub finite_expiry: bool,
    /// The role's `COMMENT`: the lease as JSON, when rolemint wrote it.
    pub comment: Option<String>,
    /// Backends logged in as the role now, in any database.
    pub backends: u32,
}

/// A sweep in progress: holds the advisory lock until dropped.
pub struct Sweep {
    client: Client,
    database: String,
    timeout: Duration,
    /// Per-backend wait of `pg_terminate_backend`, as on revoke.
    terminate_wait_ms: u64,
}

impl AdminClient {
    /// Opens the sweep's own connection and takes the sweep lock; `None`
    /// when another instance holds it (it is sweeping now).
    pub async fn begin_sweep(&self) -> Result<Option<Sweep>, MintError> {
        let client = self.pool.connect(&self.admin_database).await?;
        let sweep = Sweep {
            client,
            database: self.admin_database.clone(),
            timeout: self.pool.statement_timeout(),
            terminate_wait_ms: self.terminate_wait_ms,
        };
        // The connection is the sweep's own, closed with it: its settings
        // touch nothing else.
        let rows = sweep
            .run(&format!("{SWEEP_SETTINGS};\n{}", try_lock()))
            .await?;
        Ok((first_cell(&rows).as_deref() == Some("t")).then_some(sweep))
    }
}

impl Sweep {
    /// The members of `rolemint_managed` (at most [`MAX_ROLES_PER_SWEEP`]),
    /// and the database's clock as Unix seconds.
    pub async fn managed_roles(&self) -> Result<(Vec<ManagedRole>, i64), MintError> {
        let messages = self.run(&managed_roles()).await?;
        let mut roles = Vec::new();
        let mut now = None;
        for m in &messages {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            let (Some(name), Some(expired), Some(backends), Some(db_now), Some(finite)) =
                (row.get(0), row.get(1), row.get(3), row.get(4), row.get(5))
            else {
                continue;
            };
            now = db_now.parse().ok();
            // A role granted the marker twice (by two grantors, PostgreSQL
            // 16+) is read twice, in adjacent rows: once is enough.
            if roles.last().is_some_and(|r: &ManagedRole| r.name == name) {
                continue;
            }
            roles.push(ManagedRole {
                name: name.to_owned(),
                expired: expired == "t",
                finite_expiry: finite == "t",
                comment: row.get(2).map(str::to_owned),
                backends: backends.parse().unwrap_or(u32::MAX),
            });
        }
        let now = match now {
            Some(now) => now,
            None => first_cell(&self.run(DB_NOW).await?)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
        };
        Ok((roles, now))
    }

    /// Terminates the backends of `role` (if it is still one of ours),
    /// waiting a bounded time for each to exit; returns how many there were.
    pub async fn terminate_backends(&self, role: &str) -> Result<u32, MintError> {
        let rows = self
            .run(&terminate_backends(role, self.terminate_wait_ms))
            .await?;
        Ok(first_cell(&rows)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default())
    }

    /// One simple-query string, bounded by `mint.statement_timeout`.
    async fn run(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, MintError> {
        match tokio::time::timeout(self.timeout, self.client.simple_query(sql)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(MintError::query(&self.database, &e)),
            Err(_) => Err(MintError::Timeout {
                what: "running the reaper's statements",
                database: self.database.clone(),
                after: self.timeout,
            }),
        }
    }
}

fn first_cell(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

const DB_NOW: &str = "SELECT pg_catalog.date_part('epoch', pg_catalog.now())::pg_catalog.int8";

fn try_lock() -> String {
    format!("SELECT pg_catalog.pg_try_advisory_lock({SWEEP_LOCK_KEY})")
}

/// What the sweep's own connection sets before it reads: no `Memoize`
/// node over the probe of `pg_authid` by member. Every member is a
/// different role, so the cache never hits, and keeping it cost a third of
/// the sweep (100,000 marked roles among 1,100,000: 1.03–1.26 s with it,
/// 0.76–0.82 s without, on this machine under load). The scale bench runs
/// its `EXPLAIN` of [`managed_roles`] with it too.
pub const SWEEP_SETTINGS: &str = "SET enable_memoize = off";

/// Members of the marker role only: the reaper never reads, let alone
/// touches, any other role. `pg_stat_activity.usesysid` is visible to every
/// role (other columns of other users' backends are not), which is all the
/// count needs.
///
/// The admin role is a member of the marker too, WITH ADMIN OPTION (how it
/// may grant the marker on; PostgreSQL 16 requires it), and so may be
/// another role an operator gave the marker to administer it. Minted roles
/// get the marker plainly, never with ADMIN OPTION, and never are
/// superusers or CREATEROLE: those are all left out, and the admin itself
/// (`CURRENT_USER`) in any case (the condition of `sql::minted_role`,
/// written here as a join).
///
/// The read starts from the marker's memberships (`roleid` = the marker's
/// oid, looked up once) and probes `pg_authid` once per member. Written as
/// `minted_role`'s `EXISTS`, the planner gathered every member into a hash
/// aggregate first and probed `pg_authid` twice per member, and looked the
/// `rolemint_direct` oid up again for every member: 1.8 s at 100,000
/// marked roles among 1,100,000, against 0.8 s now. A role granted the
/// marker by two grantors (PostgreSQL 16+) comes twice, in adjacent rows;
/// [`Sweep::managed_roles`] keeps one.
///
/// Credential roles (members of `rolemint_direct`) with a finite `VALID
/// UNTIL` are read only once it has passed: before that the reaper keeps
/// them whatever it finds (their
/// holders log in directly, so no backend says anything), and reading
/// them filled the sweep's [`MAX_ROLES_PER_SWEEP`] rows, ordered by
/// expiry, with leases that cannot be reaped: past 10,000 live credential
/// leases expiring first, an orphaned session role was not seen at all.
/// Membership is an index probe of `pg_auth_members`; the comment that
/// names the kind would be a `pg_shdescription` probe per role. One without
/// a finite `VALID UNTIL` is read every sweep: its comment's expiry decides.
pub fn managed_roles() -> String {
    format!(
        "SELECT r.rolname,
       (r.rolvaliduntil IS NOT NULL AND r.rolvaliduntil <= pg_catalog.now()),
       pg_catalog.shobj_description(r.oid, 'pg_authid'),
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a WHERE a.usesysid = r.oid),
       pg_catalog.date_part('epoch', pg_catalog.now())::pg_catalog.int8,
       COALESCE(pg_catalog.isfinite(r.rolvaliduntil), false)
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles r ON r.oid = m.member
 WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = {marker})
   AND NOT m.admin_option
   AND NOT r.rolsuper AND NOT r.rolcreaterole AND r.rolname <> CURRENT_USER
   AND (NOT COALESCE(pg_catalog.isfinite(r.rolvaliduntil), false)
        OR r.rolvaliduntil <= pg_catalog.now()
        OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members d
                        WHERE d.member = r.oid
                          AND d.roleid = (SELECT oid FROM pg_catalog.pg_roles
                                           WHERE rolname = {direct})))
 ORDER BY r.rolvaliduntil NULLS FIRST, r.rolname
 LIMIT {MAX_ROLES_PER_SWEEP}",
        marker = escape_literal(super::MARKER_ROLE),
        direct = escape_literal(super::DIRECT_MARKER_ROLE),
    )
}

/// The condition "`alias` is a minted role": see [`managed_roles`].
fn members(alias: &str) -> String {
    super::sql::minted_role(&format!("{alias}.oid"))
}

/// Ends the sessions of an expired role whatever its template's revocation
/// statements do; the membership check is repeated in the statement itself
/// so no other role's sessions can be hit.
fn terminate_backends(role: &str, wait_ms: u64) -> String {
    format!(
        "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid, {wait_ms}))
  FROM pg_catalog.pg_stat_activity a
  JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid
 WHERE r.rolname = {lit} AND {members}",
        lit = escape_literal(role),
        members = members("r"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_spells_rolemint() {
        assert_eq!(&SWEEP_LOCK_KEY.to_be_bytes(), b"rolemint");
        assert!(try_lock().contains("pg_try_advisory_lock(8245928625621790324)"));
    }

    #[test]
    fn only_marker_members_are_read_or_terminated() {
        let sql = managed_roles();
        assert!(
            sql.contains("m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'rolemint_managed')"),
            "{sql}"
        );
        for guard in [
            "NOT m.admin_option",
            "NOT r.rolsuper",
            "NOT r.rolcreaterole",
            "r.rolname <> CURRENT_USER",
        ] {
            assert!(sql.contains(guard), "{sql}");
        }
        assert!(
            sql.contains(&format!("LIMIT {MAX_ROLES_PER_SWEEP}")),
            "{sql}"
        );
        // Credential roles only once expired.
        assert!(sql.contains("WHERE rolname = 'rolemint_direct'"), "{sql}");
        let sql = terminate_backends("v-a'b", 250);
        assert!(sql.contains("r.rolname = 'v-a''b'"), "{sql}");
        assert!(sql.contains("g.rolname = 'rolemint_managed'"), "{sql}");
        assert!(sql.contains("pg_terminate_backend(a.pid, 250)"), "{sql}");
    }
}

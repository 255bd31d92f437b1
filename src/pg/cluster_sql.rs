//! What an instance asks the database about sessions that another instance
//! may hold: which minted role a backend is logged in as (to verify a
//! cluster cancel key), cancelling that backend, and a lease's expiry as
//! the catalog records it (another instance may have renewed it).
//!
//! Each is one short statement on a pooled admin connection in
//! `backend.admin_database`: `pg_stat_activity` and `pg_roles` are
//! cluster-wide, so any database sees every backend and every role.

use std::time::{Duration, SystemTime};

use postgres_protocol::escape::escape_literal;
use tokio_postgres::SimpleQueryMessage;

use super::names::is_valid_role_name;
use super::sql::minted_role;
use super::{AdminClient, MintError};

impl AdminClient {
    /// The role backend `pid` is logged in as, if it is a role rolemint
    /// minted (any instance's); `None` for any other backend or none.
    /// Reads only `pid` and `usename`, which every role may see (most other
    /// columns, `backend_type` and `backend_start` included, are NULL for
    /// other roles' backends unless the reader has `pg_read_all_stats`).
    pub async fn minted_backend_role(&self, pid: i32) -> Result<Option<String>, MintError> {
        let sql = format!(
            "SELECT a.usename FROM pg_catalog.pg_stat_activity a \
             WHERE a.pid = {pid} AND {minted}",
            minted = minted_role("a.usesysid"),
        );
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&sql).await?;
        Ok(first_cell(&rows).filter(|name| is_valid_role_name(name)))
    }

    /// `pg_cancel_backend(pid)`, only while `pid` is still logged in as
    /// `role` (one statement, so a pid reused in between is left alone).
    /// True when a backend was signalled.
    pub async fn cancel_backend(&self, pid: i32, role: &str) -> Result<bool, MintError> {
        if !is_valid_role_name(role) {
            return Err(MintError::InvalidRoleName(role.to_owned()));
        }
        let sql = format!(
            "SELECT pg_catalog.pg_cancel_backend(a.pid) FROM pg_catalog.pg_stat_activity a \
             WHERE a.pid = {pid} AND a.usename = {role} AND {minted}",
            role = escape_literal(role),
            minted = minted_role("a.usesysid"),
        );
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&sql).await?;
        Ok(first_cell(&rows).as_deref() == Some("t"))
    }

    /// The `VALID UNTIL` of a minted role, as the catalog has it now: moved
    /// by whichever instance renewed the lease. `None` when the role is
    /// gone, not ours, or has no finite expiry.
    pub async fn recorded_expiry(&self, role: &str) -> Result<Option<SystemTime>, MintError> {
        if !is_valid_role_name(role) {
            return Err(MintError::InvalidRoleName(role.to_owned()));
        }
        // Unix microseconds as an integer: exact, and independent of the
        // admin session's DateStyle and TimeZone.
        let sql = format!(
            "SELECT (pg_catalog.date_part('epoch', r.rolvaliduntil) * 1000000)::pg_catalog.int8 \
             FROM pg_catalog.pg_roles r \
             WHERE r.rolname = {role} AND pg_catalog.isfinite(r.rolvaliduntil) AND {minted}",
            role = escape_literal(role),
            minted = minted_role("r.oid"),
        );
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&sql).await?;
        Ok(first_cell(&rows)
            .and_then(|micros| micros.parse::<u64>().ok())
            .map(|micros| SystemTime::UNIX_EPOCH + Duration::from_micros(micros)))
    }
}

fn first_cell(rows: &[SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

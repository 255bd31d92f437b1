//! The SQL rolemint itself sends: marker role, mint batch, revoke batch.
//!
//! Role names reaching these builders have been checked against
//! `[a-z0-9_-]` and are still quoted with `escape_identifier`; every other
//! value (identity, lease metadata) goes through `escape_literal`. Inside
//! `DO` bodies the dollar-quote tag `$rolemint$` is used; no value in them
//! can contain a `$`.
//!
//! Every batch is made of explicit `BEGIN; ...; COMMIT` blocks and nothing
//! else. When a statement fails, PostgreSQL skips the rest of the string and
//! the session is left inside an aborted block, so the pool's `ROLLBACK`
//! always has a transaction to end (outside one it would log a WARNING), and
//! a failed batch has changed nothing beyond its last committed block.

use postgres_protocol::escape::{escape_identifier, escape_literal};
use serde::{Deserialize, Serialize};

/// NOLOGIN role every minted role is a member of: how a restarted or second
/// instance, and the reaper, recognise rolemint's roles. It has no
/// privileges, so membership grants nothing.
pub const MARKER_ROLE: &str = "rolemint_managed";

/// SQLSTATE raised when asked to revoke a role that exists but is not a
/// member of [`MARKER_ROLE`] (a user-defined class, `RM`).
pub const NOT_MANAGED_SQLSTATE: &str = "RM001";

/// The lease metadata stored as the role's `COMMENT`: the database is the
/// durable record of every role rolemint minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseComment {
    pub lease_id: String,
    pub identity: String,
    pub template: String,
    pub database: String,
    /// RFC 3339 UTC, whole seconds: the role's `VALID UNTIL`.
    pub expires_at: String,
    /// The rolemint instance that minted it.
    pub instance: String,
}

/// Creates the marker role if it does not exist. Idempotent and safe when
/// two instances start at once: the loser of a `CREATE ROLE` race gets
/// `duplicate_object` (or `unique_violation` on pg_authid's index), which is
/// caught.
pub fn prepare() -> String {
    let ident = escape_identifier(MARKER_ROLE);
    let lit = escape_literal(MARKER_ROLE);
    let comment =
        escape_literal("rolemint: marker of roles minted by rolemint (NOLOGIN, no privileges)");
    format!(
        "BEGIN;
DO $rolemint$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {lit}) THEN
    CREATE ROLE {ident} NOLOGIN;
    COMMENT ON ROLE {ident} IS {comment};
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$rolemint$;
COMMIT"
    )
}

/// How a mint batch ends: `Commit` for a session, `Rollback` for the dry
/// run of `rolemint check`, which runs every statement and keeps nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Commit,
    Rollback,
}

/// One simple-query string minting a role in one transaction: the template's
/// statements, the marker membership, the lease comment.
pub fn mint_batch(
    creation: &[String],
    role: &str,
    comment: &LeaseComment,
    finish: Finish,
) -> String {
    let ident = escape_identifier(role);
    let json = serde_json::to_string(comment).expect("a struct of strings serializes");
    let mut sql = String::from("BEGIN;\n");
    for stmt in creation {
        // A statement's own trailing `;` is dropped; `;` goes on its own
        // line so a trailing `-- comment` cannot swallow it.
        let stmt = stmt.trim().trim_end_matches(';').trim_end();
        if !stmt.is_empty() {
            sql.push_str(stmt);
            sql.push_str("\n;\n");
        }
    }
    sql.push_str(&format!(
        "GRANT {} TO {ident};\nCOMMENT ON ROLE {ident} IS {};\n{}",
        escape_identifier(MARKER_ROLE),
        escape_literal(&json),
        match finish {
            Finish::Commit => "COMMIT",
            Finish::Rollback => "ROLLBACK",
        }
    ));
    sql
}

/// Refuses (SQLSTATE [`NOT_MANAGED_SQLSTATE`]) when `role` exists but is not
/// one of ours, so no bug or operator typo can drop somebody else's role;
/// does nothing when the role is gone.
fn managed_guard(role: &str) -> String {
    let lit = escape_literal(role);
    format!(
        "DO $rolemint$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {lit})
     AND NOT EXISTS (
       SELECT 1 FROM pg_catalog.pg_auth_members m
         JOIN pg_catalog.pg_roles r ON r.oid = m.member
         JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
        WHERE r.rolname = {lit} AND g.rolname = {marker}) THEN
    RAISE EXCEPTION 'role % is not managed by rolemint', {lit} USING ERRCODE = '{code}';
  END IF;
END
$rolemint$",
        marker = escape_literal(MARKER_ROLE),
        code = NOT_MANAGED_SQLSTATE,
    )
}

/// The default revocation, one simple-query string, idempotent (it is
/// retried): a role that is already gone is success.
///
/// 1. In an explicit transaction (a bare `COMMIT` in an implicit one draws
///    a WARNING): the guard refuses a role that is not ours, then
///    `ALTER ROLE .. NOLOGIN`; `COMMIT`, so NOLOGIN sticks even if the drop
///    below fails.
/// 2. In a second block: terminate the role's backends (`DROP ROLE` does not end sessions),
///    waiting up to `terminate_wait_ms` for each to exit.
/// 3. `DROP ROLE IF EXISTS`. If it fails with 2BP01 (dependent objects):
///    when the role owns no object in this database (no `pg_shdepend` row of
///    deptype 'o' here), what remains are privileges (ACL entries, policy
///    references), and `DROP OWNED BY` then only
///    revokes them — it drops nothing anybody made — so it is done and the
///    drop retried. `DROP OWNED` needs the privileges of the role, which a
///    CREATEROLE admin does not hold by default, so the admin first grants
///    itself membership (allowed: it created the role / holds CREATEROLE);
///    that membership disappears with the role, or rolls back with the
///    statement if the drop still fails. When the role owns objects, the 2BP01 is re-raised:
///    dropping a table someone's session created is not ours to decide, and
///    the caller leaves the role NOLOGIN and reports it. Privileges held in
///    *other* databases make the second `DROP ROLE` fail with 2BP01 as well,
///    which is reported the same way.
pub fn default_revoke(role: &str, terminate_wait_ms: u64) -> String {
    let ident = escape_identifier(role);
    let lit = escape_literal(role);
    format!(
        "BEGIN;
{guard};
DO $rolemint$
BEGIN
  ALTER ROLE {ident} NOLOGIN;
EXCEPTION WHEN undefined_object THEN NULL;
END
$rolemint$;
COMMIT;
BEGIN;
SELECT pg_catalog.pg_terminate_backend(pid, {terminate_wait_ms})
  FROM pg_catalog.pg_stat_activity
 WHERE usesysid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = {lit});
DO $rolemint$
BEGIN
  DROP ROLE IF EXISTS {ident};
EXCEPTION WHEN dependent_objects_still_exist THEN
  IF EXISTS (
    SELECT 1 FROM pg_catalog.pg_shdepend d
      JOIN pg_catalog.pg_roles r ON r.oid = d.refobjid
     WHERE d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
       AND r.rolname = {lit}
       AND d.deptype = 'o'
       AND d.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) THEN
    RAISE;
  END IF;
  GRANT {ident} TO CURRENT_USER;
  DROP OWNED BY {ident};
  DROP ROLE {ident};
END
$rolemint$;
COMMIT",
        guard = managed_guard(role),
    )
}

/// A template's own revocation statements, after the same guard, in one
/// transaction.
pub fn custom_revoke(role: &str, statements: &[String]) -> String {
    let mut sql = String::from("BEGIN;\n");
    sql.push_str(&managed_guard(role));
    sql.push_str(";\n");
    for stmt in statements {
        let stmt = stmt.trim().trim_end_matches(';').trim_end();
        if !stmt.is_empty() {
            sql.push_str(stmt);
            sql.push_str("\n;\n");
        }
    }
    sql.push_str("COMMIT");
    sql
}

/// One row about the admin role: server version, superuser, CREATEROLE,
/// member of pg_signal_backend, marker role present (`t`/`f` each).
pub fn admin_facts() -> String {
    format!(
        "SELECT pg_catalog.current_setting('server_version'), r.rolsuper, r.rolcreaterole,
       pg_catalog.pg_has_role(r.oid, 'pg_signal_backend', 'MEMBER'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {marker})
  FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER",
        marker = escape_literal(MARKER_ROLE),
    )
}

/// pg_hba.conf's valid lines, each with the admin connection's own address
/// (user names joined by newlines, which a role name cannot hold unquoted).
pub const HBA_RULES: &str = "SELECT r.line_number, r.type, \
       pg_catalog.array_to_string(r.user_name, E'\\n'), r.address, r.netmask, \
       r.auth_method, pg_catalog.host(pg_catalog.inet_client_addr()) \
  FROM pg_catalog.pg_hba_file_rules r WHERE r.error IS NULL ORDER BY r.line_number";

/// One row (`1`) if the role exists.
pub fn role_exists(role: &str) -> String {
    format!(
        "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {}",
        escape_literal(role)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment() -> LeaseComment {
        LeaseComment {
            lease_id: "lease-1".into(),
            identity: "o'brien\\\"; DROP ROLE x; --".into(),
            template: "readonly".into(),
            database: "appdb".into(),
            expires_at: "2026-11-22T10:00:00Z".into(),
            instance: "host-1".into(),
        }
    }

    #[test]
    fn mint_batch_is_one_transaction() {
        let stmts = vec![
            "CREATE ROLE \"v-a\" LOGIN;  ".to_string(),
            "GRANT app_read TO \"v-a\" -- read only".to_string(),
        ];
        let sql = mint_batch(&stmts, "v-a", &comment(), Finish::Commit);
        assert!(
            sql.starts_with("BEGIN;\nCREATE ROLE \"v-a\" LOGIN\n;\n"),
            "{sql}"
        );
        assert!(
            sql.contains("GRANT app_read TO \"v-a\" -- read only\n;\n"),
            "{sql}"
        );
        assert!(
            sql.contains("GRANT \"rolemint_managed\" TO \"v-a\";"),
            "{sql}"
        );
        assert!(sql.ends_with("COMMIT"), "{sql}");
        let dry = mint_batch(&stmts, "v-a", &comment(), Finish::Rollback);
        assert!(
            dry.ends_with("ROLLBACK") && !dry.contains("COMMIT"),
            "{dry}"
        );
        // The identity is inside one escaped literal: quotes doubled, and
        // E'' syntax because of the backslash.
        let comment_line = sql
            .lines()
            .find(|l| l.starts_with("COMMENT ON ROLE"))
            .unwrap();
        assert!(comment_line.contains(" E'{"), "{comment_line}");
        assert!(comment_line.contains("o''brien"), "{comment_line}");
    }

    #[test]
    fn lease_comment_round_trips_as_json() {
        let c = comment();
        let json = serde_json::to_string(&c).unwrap();
        let back: LeaseComment = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        for key in [
            "lease_id",
            "identity",
            "template",
            "database",
            "expires_at",
            "instance",
        ] {
            assert!(json.contains(&format!("\"{key}\"")), "{json}");
        }
    }

    #[test]
    fn revoke_sql_quotes_and_orders() {
        let sql = default_revoke("v-a-b-abcdefgh-1", 5000);
        let nologin = sql.find("NOLOGIN").unwrap();
        let commit = sql.find("COMMIT;").unwrap();
        let terminate = sql.find("pg_terminate_backend(pid, 5000)").unwrap();
        let drop = sql
            .find("DROP ROLE IF EXISTS \"v-a-b-abcdefgh-1\"")
            .unwrap();
        assert!(nologin < commit && commit < terminate && terminate < drop);
        assert!(sql.contains("rolname = 'v-a-b-abcdefgh-1'"));
        assert!(sql.contains(NOT_MANAGED_SQLSTATE));

        let sql = custom_revoke("v-x", &["DROP ROLE \"v-x\";".to_string()]);
        assert!(sql.starts_with("BEGIN;\nDO $rolemint$"), "{sql}");
        assert!(sql.ends_with(";\nDROP ROLE \"v-x\"\n;\nCOMMIT"), "{sql}");
    }

    #[test]
    fn prepare_is_idempotent_sql() {
        let sql = prepare();
        assert!(sql.contains("IF NOT EXISTS"));
        assert!(sql.contains("CREATE ROLE \"rolemint_managed\" NOLOGIN"));
        assert!(sql.contains("duplicate_object OR unique_violation"));
    }
}

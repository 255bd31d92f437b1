//! The SQL rolemint itself sends: marker role, mint batch, renewal (the
//! revocation SQL is in `revoke_sql.rs`).
//!
//! Role names reaching these builders have been checked against
//! `[a-z0-9_-]` and are still quoted with `escape_identifier`; every other
//! value (identity, lease metadata) goes through `escape_literal`. Inside
//! `DO` bodies the dollar-quote tag `$rolemint$` is used; no value in them
//! can contain a `$`.
//!
//! Every batch is made of explicit `BEGIN; ...; COMMIT` blocks and nothing
//! else (`batch.rs` says why, and assembles the mint's and the
//! revocation's alike).

use postgres_protocol::escape::{escape_identifier, escape_literal};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
pub use super::batch::Finish;

/// NOLOGIN role every minted role is a member of: how a restarted or second
/// instance, and the reaper, recognise rolemint's roles. It has no
/// privileges, so membership grants nothing.
pub const MARKER_ROLE: &str = "rolemint_managed";

/// The SQL condition "the role with oid `oid` is one rolemint minted": a
/// member of [`MARKER_ROLE`] *without* ADMIN OPTION (the admin role holds
/// the marker WITH ADMIN OPTION, to grant it), neither superuser nor
/// CREATEROLE, and not the admin itself. Revocation, renewal and the reaper
/// share this one definition, so none of them can touch a role the others
/// would refuse.
pub(super) fn minted_role(oid: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
           JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
           JOIN pg_catalog.pg_roles x ON x.oid = m.member
          WHERE m.member = {oid} AND g.rolname = {marker} AND NOT m.admin_option
            AND NOT x.rolsuper AND NOT x.rolcreaterole AND x.rolname <> CURRENT_USER)",
        marker = escape_literal(MARKER_ROLE),
    )
}

/// SQLSTATE raised when asked to revoke a role that exists but is not a
/// member of [`MARKER_ROLE`] (a user-defined class, `RM`).
pub const NOT_MANAGED_SQLSTATE: &str = "RM001";

/// Who holds a lease. Serialized (in the lease API) as its comment word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    /// A session proxied by rolemint: `database/sessions/...`.
    Session,
    /// Credentials handed to a workload, which logs in directly:
    /// `database/creds/...`.
    Creds,
}

impl LeaseKind {
    /// The middle part of lease ids, as in Vault's `database/creds/<role>`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Session => "sessions",
            LeaseKind::Creds => "creds",
        }
    }

    /// The word stored in lease comments (`"session"` / `"creds"`).
    pub fn comment_word(self) -> &'static str {
        match self {
            LeaseKind::Session => "session",
            LeaseKind::Creds => "creds",
        }
    }

    /// The kind a lease id names; ids are made by
    /// [`crate::lease::registry::new_lease_id`], so the
    /// id is the one place the kind is written down.
    pub fn of_lease_id(id: &str) -> LeaseKind {
        if id.starts_with("database/creds/") {
            LeaseKind::Creds
        } else {
            LeaseKind::Session
        }
    }
}

/// The lease metadata stored as the role's `COMMENT`: the database is the
/// durable record of every role rolemint minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseComment {
    pub lease_id: String,
    pub identity: String,
    /// The issuer entry that vouched for `identity` (`local`, `static`, an
    /// `[[auth.issuers]]` name): with it, the lease's principal. Empty in
    /// comments written before it existed; such leases are acted on by
    /// operators only (no workload can prove it is their principal).
    #[serde(default)]
    pub issuer: String,
    pub template: String,
    pub database: String,
    /// RFC 3339 UTC, whole seconds: the role's `VALID UNTIL`.
    pub expires_at: String,
    /// The rolemint instance that minted it.
    pub instance: String,
    /// RFC 3339 UTC, whole seconds: when it was minted. Empty in comments
    /// written before it existed.
    #[serde(default)]
    pub issued_at: String,
    /// `"session"` (a proxied session) or `"creds"` (handed out over the
    /// API). Comments written before it existed were all sessions.
    #[serde(default = "default_kind")]
    pub kind: String,
}

fn default_kind() -> String {
    "session".into()
}

/// NOLOGIN marker of credential roles (handed out over the Vault-compatible
/// API), granted besides [`MARKER_ROLE`]: they log in to PostgreSQL
/// directly, and pg_hba tells them apart from proxied roles by it
/// (`host all +rolemint_direct all scram-sha-256` before the
/// `+rolemint_managed` lines).
pub const DIRECT_MARKER_ROLE: &str = "rolemint_direct";

/// Creates the marker roles if they do not exist. Idempotent and safe when
/// two instances start at once: the loser of a `CREATE ROLE` race gets
/// `duplicate_object` (or `unique_violation` on pg_authid's index), which is
/// caught.
pub fn prepare() -> String {
    let mut sql = String::from("BEGIN;\n");
    for (marker, what) in [
        (MARKER_ROLE, "marker of roles minted by rolemint"),
        (
            DIRECT_MARKER_ROLE,
            "marker of rolemint credential roles that log in directly",
        ),
    ] {
        let ident = escape_identifier(marker);
        let lit = escape_literal(marker);
        let comment = escape_literal(&format!("rolemint: {what} (NOLOGIN, no privileges)"));
        sql.push_str(&format!(
            "DO $rolemint$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {lit}) THEN
    CREATE ROLE {ident} NOLOGIN;
    COMMENT ON ROLE {ident} IS {comment};
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$rolemint$;
"
        ));
    }
    sql.push_str("COMMIT");
    sql
}

/// One simple-query string minting a role in one transaction: the template's
/// statements (with the database's default `search_path`), the marker
/// membership, the lease comment. `Finish::Rollback` is the dry run of
/// `rolemint check`.
pub fn mint_batch(
    creation: &[String],
    role: &str,
    comment: &LeaseComment,
    finish: Finish,
) -> String {
    let ident = escape_identifier(role);
    let json = serde_json::to_string(comment).expect("a struct of strings serializes");
    // The marker grant and comment after the template's statements name
    // roles only, so the default search_path they run with changes nothing.
    Batch::begin()
        .operator_statements(creation)
        .statement(&format!(
            "GRANT {} TO {ident}",
            escape_identifier(MARKER_ROLE)
        ))
        .statement(&format!(
            "COMMENT ON ROLE {ident} IS {}",
            escape_literal(&json)
        ))
        .end(finish)
}

/// `ALTER ROLE role SET name = 'value'` for each session setting. Names
/// must pass `policy::is_setting_name` (a dotted lower-case custom setting,
/// which needs no quoting); values go through `escape_literal`, so no claim
/// text reaches SQL unescaped.
pub fn role_settings(role: &str, settings: &[(String, String)]) -> Result<Vec<String>, String> {
    settings
        .iter()
        .map(|(name, value)| {
            if !crate::auth::policy::is_setting_name(name) {
                return Err(format!("session setting name {name:?} refused"));
            }
            Ok(format!(
                "ALTER ROLE {} SET {name} = {}",
                escape_identifier(role),
                escape_literal(value)
            ))
        })
        .collect()
}

/// Moves a role's `VALID UNTIL` and rewrites its lease comment, in one
/// transaction, for a managed role only (the same guard as revocation:
/// raises [`NOT_MANAGED_SQLSTATE`] for a foreign role, and `undefined_object`
/// for a role that is gone).
pub fn renew(role: &str, valid_until: &str, comment: &LeaseComment) -> String {
    let ident = escape_identifier(role);
    let lit = escape_literal(role);
    let json = serde_json::to_string(comment).expect("a struct of strings serializes");
    format!(
        "BEGIN;
DO $rolemint$
DECLARE r oid;
BEGIN
  SELECT oid INTO r FROM pg_catalog.pg_roles WHERE rolname = {lit};
  IF r IS NULL THEN
    RAISE EXCEPTION 'role % does not exist', {lit} USING ERRCODE = 'undefined_object';
  END IF;
  IF NOT {minted} THEN
    RAISE EXCEPTION 'role % is not managed by rolemint', {lit} USING ERRCODE = '{code}';
  END IF;
END
$rolemint$;
ALTER ROLE {ident} VALID UNTIL {until};
COMMENT ON ROLE {ident} IS {comment};
COMMIT",
        minted = minted_role("r"),
        code = NOT_MANAGED_SQLSTATE,
        until = escape_literal(valid_until),
        comment = escape_literal(&json),
    )
}

/// Binds a pooled role to the session that claimed it, in one
/// transaction: `LOGIN` back, `VALID UNTIL`, the session's lease comment.
/// Its password was removed when it was pooled (see [`seal_warm`]), so
/// `LOGIN` lets nobody log in with a password: it only makes the lease live
/// again for the catalog (`catalog.rs`: a live lease can log in; revocation
/// begins with NOLOGIN).
///
/// The guard is [`renew`]'s, in plain SQL instead of a PL/pgSQL block: a
/// claim is on the connect path, and compiling the block cost PostgreSQL
/// more than the rest of the claim (measured: ~0.7 ms of ~1 ms). Casting
/// to `regrole` is the assertion: NULL for a managed role, else a name no
/// role has, so the transaction fails (42704) before the `ALTER`. A role
/// that is gone fails the `ALTER` itself (42704). Either way the claim falls
/// back to a mint.
pub fn claim_warm(role: &str, valid_until: &str, comment: &LeaseComment) -> String {
    let ident = escape_identifier(role);
    let json = serde_json::to_string(comment).expect("a struct of strings serializes");
    format!(
        "BEGIN;
SELECT (CASE WHEN {minted} THEN NULL ELSE {refusal} END)::pg_catalog.regrole
  FROM pg_catalog.pg_roles r WHERE r.rolname = {lit};
ALTER ROLE {ident} LOGIN VALID UNTIL {until};
COMMENT ON ROLE {ident} IS {comment};
COMMIT",
        minted = minted_role("r.oid"),
        refusal = escape_literal(&format!("\"{role} is not managed by rolemint\"")),
        lit = escape_literal(role),
        until = escape_literal(valid_until),
        comment = escape_literal(&json),
    )
}

/// Terminates backend `pid` if it is a session of `role` (a pid may have
/// been reused by another backend since).
pub fn terminate_session(role: &str, pid: i32) -> String {
    format!(
        "SELECT pg_catalog.pg_terminate_backend(a.pid) FROM pg_catalog.pg_stat_activity a \
         WHERE a.pid = {pid} AND a.usename = {}",
        escape_literal(role)
    )
}

/// A pooled role, once its backend has logged in: nobody may log in as it
/// again. `NOLOGIN` refuses every new login (the backend already in is not
/// affected), `PASSWORD NULL` drops the verifier too.
pub fn seal_warm(role: &str) -> String {
    format!(
        "BEGIN;\nALTER ROLE {} NOLOGIN PASSWORD NULL;\nCOMMIT",
        escape_identifier(role)
    )
}

/// One row about the admin role: server version, superuser, CREATEROLE,
/// member of pg_signal_backend, marker role present (`t`/`f` each),
/// `server_version_num`, and the marker roles that exist but that the admin
/// holds without ADMIN OPTION (comma-separated; PostgreSQL 16+ needs it to
/// grant them, see `rolemint check`).
pub fn admin_facts() -> String {
    format!(
        "SELECT pg_catalog.current_setting('server_version'), r.rolsuper, r.rolcreaterole,
       pg_catalog.pg_has_role(r.oid, 'pg_signal_backend', 'MEMBER'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {marker}),
       pg_catalog.current_setting('server_version_num'),
       (SELECT pg_catalog.string_agg(m.rolname, ',' ORDER BY m.rolname)
          FROM pg_catalog.pg_roles m
         WHERE m.rolname IN ({marker}, {direct})
           AND NOT pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER WITH ADMIN OPTION'))
  FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER",
        marker = escape_literal(MARKER_ROLE),
        direct = escape_literal(DIRECT_MARKER_ROLE),
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
            issuer: "local".into(),
            template: "readonly".into(),
            database: "appdb".into(),
            expires_at: "2026-11-22T10:00:00Z".into(),
            instance: "host-1".into(),
            issued_at: "2026-11-22T09:00:00Z".into(),
            kind: "session".into(),
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
            sql.starts_with(
                "BEGIN;\nSET LOCAL search_path TO DEFAULT;\nCREATE ROLE \"v-a\" LOGIN\n;\n"
            ),
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
    fn role_settings_escape_values_and_refuse_odd_names() {
        let sql = role_settings(
            "v-a-b",
            &[(
                "rolemint.identity".into(),
                "o'brien\\\"; DROP ROLE x; --".into(),
            )],
        )
        .unwrap();
        assert_eq!(sql.len(), 1);
        assert!(
            sql[0].starts_with("ALTER ROLE \"v-a-b\" SET rolemint.identity = "),
            "{}",
            sql[0]
        );
        // One literal: the quote doubled, the backslash making it E''.
        assert!(sql[0].contains("o''brien"), "{}", sql[0]);
        assert!(role_settings("r", &[("role".into(), "x".into())]).is_err());
        assert!(role_settings("r", &[("a.b; DROP".into(), "x".into())]).is_err());
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
            "issued_at",
            "kind",
        ] {
            assert!(json.contains(&format!("\"{key}\"")), "{json}");
        }
    }

    #[test]
    fn renew_is_guarded_and_one_transaction() {
        let sql = renew("v-a", "2026-11-22T11:00:00Z", &comment());
        assert!(sql.starts_with("BEGIN;\nDO $rolemint$"), "{sql}");
        let guard = sql.find(NOT_MANAGED_SQLSTATE).unwrap();
        let alter = sql
            .find("ALTER ROLE \"v-a\" VALID UNTIL '2026-11-22T11:00:00Z';")
            .unwrap();
        let comment = sql.find("COMMENT ON ROLE \"v-a\" IS ").unwrap();
        assert!(sql[comment..].contains("E'{"));
        assert!(guard < alter && alter < comment);
        assert!(sql.ends_with("COMMIT"));
    }

    #[test]
    fn warm_roles_are_sealed_then_bound_with_the_guard() {
        let sql = seal_warm("v-w-abc");
        assert_eq!(
            sql,
            "BEGIN;\nALTER ROLE \"v-w-abc\" NOLOGIN PASSWORD NULL;\nCOMMIT"
        );
        let sql = claim_warm("v-w-abc", "2026-11-22T11:00:00Z", &comment());
        let guard = sql.find("'rolemint_managed'").unwrap();
        let assertion = sql
            .find("ELSE '\"v-w-abc is not managed by rolemint\"' END)::pg_catalog.regrole")
            .unwrap();
        let alter = sql
            .find("ALTER ROLE \"v-w-abc\" LOGIN VALID UNTIL '2026-11-22T11:00:00Z';")
            .unwrap();
        assert!(guard < assertion && assertion < alter, "{sql}");
        assert!(
            !sql.contains("DO $"),
            "no PL/pgSQL on the connect path: {sql}"
        );
        assert!(sql.contains("o''brien"), "{sql}");
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT"));
        // renew is unchanged: no LOGIN.
        assert!(!renew("v-a", "x", &comment()).contains("LOGIN"));
    }

    #[test]
    fn old_lease_comments_still_read() {
        let old = r#"{"lease_id":"abc","identity":"a","template":"t","database":"d","expires_at":"2026-11-22T10:00:00Z","instance":"h"}"#;
        let c: LeaseComment = serde_json::from_str(old).unwrap();
        assert_eq!(c.kind, "session");
        assert_eq!(c.issued_at, "");
    }

    #[test]
    fn prepare_is_idempotent_sql() {
        let sql = prepare();
        assert!(sql.contains("IF NOT EXISTS"));
        assert!(sql.contains("CREATE ROLE \"rolemint_managed\" NOLOGIN"));
        assert!(sql.contains("CREATE ROLE \"rolemint_direct\" NOLOGIN"));
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT"));
        assert!(sql.contains("duplicate_object OR unique_violation"));
    }
}

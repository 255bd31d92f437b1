//! The SQL that ends roles, and running it: one round trip for every due
//! revocation in a database.
//!
//! The order, for every role (DESIGN.md, "Lease lifecycle"):
//! 1. the guard: a role that is not a member of `rolemint_managed` is never
//!    touched; a role that is gone is done;
//! 2. `ALTER ROLE .. NOLOGIN`, committed on its own, so that no new login
//!    can race what follows and the role stays locked whatever happens next;
//! 3. terminate the role's backends by `usesysid`, waiting a bounded time
//!    for each (`DROP ROLE` does not end sessions);
//! 4. owned objects: with a template `owner`, `REASSIGN OWNED BY role TO
//!    owner` and only then `DROP OWNED` (which then only revokes privileges);
//!    without one, a role that owns anything anywhere is *retained*: left
//!    NOLOGIN, its objects untouched, and reported. `DROP OWNED` never runs
//!    while the role owns an object in the current database;
//! 5. objects or privileges in *other* databases (`pg_shdepend` says which)
//!    are dealt with by connecting to each ([`Outcome::Elsewhere`]), since
//!    `REASSIGN OWNED` / `DROP OWNED` act on the current database only;
//! 6. `DROP ROLE`.
//!
//! Several roles share one simple-query string: a `DO` block loops over
//! them (compiled and planned once per batch, not once per role); each
//! role's work catches its own errors (a subtransaction), so one role's
//! failure neither skips nor undoes the others, and writes its outcome into
//! a transaction-local setting (`rolemint.outcome_N`) that the last
//! statement of the string reads back as one row. Names reach the SQL as
//! checked role names in `escape_literal` array elements, and become
//! identifiers inside it through `format('%I')`.
//!
//! A template's own `revocation_statements` run after steps 1–3, which
//! rolemint always does itself, one role per round trip (they are the
//! operator's SQL and may fail in ways that would abort a shared string).

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::SimpleQueryMessage;

use super::batch::{Batch, Finish};
use super::sql::{minted_role, NOT_MANAGED_SQLSTATE};
use super::{template, AdminClient, MintError};

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub role: String,
    /// The template's `owner`: who inherits the role's objects.
    pub owner: Option<String>,
    /// The template's `revocation_statements`, if it has its own.
    pub custom: Option<Vec<String>>,
}

/// How one role's revocation came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped now.
    Dropped,
    /// There was no such role (already dropped, or never created).
    Gone,
    /// Left NOLOGIN with its objects, because it owns objects and its
    /// template names no `owner`: an operator decides.
    Retained(String),
    /// Exists but is not a member of `rolemint_managed`: refused.
    NotManaged,
    /// Owns objects or holds privileges in these other databases; they must
    /// be dealt with there before the role can be dropped.
    Elsewhere(Vec<String>),
}

/// `pg_shdepend` rows (alias `s`) that point at role `r` (a PL/pgSQL
/// variable).
const OF_R: &str = "s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.refobjid = r";

/// The OID of the current database, in SQL.
const THIS_DB: &str =
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())";

/// The backends of role `r`, as `a.pid`: `pg_stat_get_activity` itself,
/// the function under the `pg_stat_activity` view, without the view's two
/// joins to plan.
const BACKENDS_OF_R: &str = "pg_catalog.pg_stat_get_activity(NULL) a WHERE a.usesysid = r";

/// `values` as a SQL `text[]` literal, each element escaped (`NULL` for
/// `None`).
fn text_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> String {
    let items: Vec<String> = values
        .map(|v| v.map_or_else(|| "NULL".to_owned(), escape_literal))
        .collect();
    format!("ARRAY[{}]::pg_catalog.text[]", items.join(", "))
}

/// Step 2 for every role in `roles` (a `DO` block, committed on its own by
/// [`batch`]): NOLOGIN for the managed ones that exist. Foreign roles are left alone here and
/// reported by the per-role step; so is a role whose NOLOGIN fails (each is
/// its own subtransaction, so one such role cannot hold up the others).
///
/// One loop over the names, not a block per role: PL/pgSQL compiles a `DO`
/// block on every run, and plans each of its queries once per run when the
/// plans are generic (`plan_cache_mode`; by default the first five runs of
/// a query with variables are planned anew each time). The loop's
/// iterations then reuse those plans. Under connection churn that compile
/// and planning was most of what revoking a role cost PostgreSQL.
fn nologin_all(roles: &[&str]) -> String {
    format!(
        "DO $rolemint$
DECLARE
  rname pg_catalog.text;
  r oid;
BEGIN
  FOREACH rname IN ARRAY {names} LOOP
    SELECT oid INTO r FROM pg_catalog.pg_roles WHERE rolname = rname;
    IF r IS NOT NULL AND {minted} THEN
      BEGIN
        EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', rname);
      EXCEPTION WHEN OTHERS THEN NULL;
      END;
    END IF;
  END LOOP;
END
$rolemint$",
        names = text_array(roles.iter().map(|r| Some(*r))),
        minted = minted_role("r"),
    )
}

/// Steps 1 and 3–6 for every target, one loop iteration each, writing
/// role `i`'s outcome to `rolemint.outcome_{i}`. Each iteration's work is
/// its own subtransaction, so one role's failure neither skips nor undoes
/// the others. With `drop_role` false (another database's share of the
/// work) an iteration deals with this database's objects and privileges
/// and stops short of `DROP ROLE`.
///
/// Without an owner, a role that owns anything anywhere is retained;
/// otherwise what is left here are privileges, which `DROP OWNED` revokes
/// without dropping anything anybody made. With an owner, `REASSIGN OWNED`
/// comes first: after it the role owns nothing here, so `DROP OWNED` only
/// revokes its privileges.
fn roles_loop(targets: &[Target], terminate_wait_ms: u64, drop_role: bool) -> String {
    let finish = if drop_role {
        format!(
            "IF outcome IS NULL THEN
          SELECT pg_catalog.json_agg(DISTINCT d.datname)::pg_catalog.text INTO elsewhere
            FROM pg_catalog.pg_shdepend s
            JOIN pg_catalog.pg_database d ON d.oid = s.dbid
           WHERE {OF_R} AND d.datname <> pg_catalog.current_database();
          IF elsewhere IS NOT NULL THEN
            outcome := 'elsewhere:' || elsewhere;
          ELSE
            EXECUTE pg_catalog.format('DROP ROLE %I', rname);
            outcome := 'dropped';
          END IF;
        END IF;"
        )
    } else {
        "IF outcome IS NULL THEN outcome := 'dropped'; END IF;".to_owned()
    };
    format!(
        "DO $rolemint$
DECLARE
  names pg_catalog.text[] := {names};
  owners pg_catalog.text[] := {owners};
  rname pg_catalog.text;
  rowner pg_catalog.text;
  r oid;
  outcome pg_catalog.text;
  owned pg_catalog.text;
  elsewhere pg_catalog.text;
BEGIN
  FOR i IN 1 .. pg_catalog.array_length(names, 1) LOOP
    rname := names[i];
    rowner := owners[i];
    outcome := NULL;
    owned := NULL;
    elsewhere := NULL;
    SELECT oid INTO r FROM pg_catalog.pg_roles WHERE rolname = rname;
    IF r IS NULL THEN
      outcome := 'gone';
    ELSIF NOT {minted} THEN
      outcome := 'not_managed';
    ELSE
      BEGIN
        PERFORM pg_catalog.pg_terminate_backend(a.pid, {terminate_wait_ms})
           FROM {BACKENDS_OF_R};
        IF rowner IS NOT NULL THEN
          IF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend s
                      WHERE {OF_R} AND s.dbid IN (0, {THIS_DB})) THEN
            EXECUTE pg_catalog.format('GRANT %I TO CURRENT_USER', rname);
            EXECUTE pg_catalog.format('REASSIGN OWNED BY %I TO %I', rname, rowner);
            EXECUTE pg_catalog.format('DROP OWNED BY %I', rname);
          END IF;
        ELSE
          SELECT pg_catalog.string_agg(DISTINCT COALESCE(d.datname::pg_catalog.text, '(shared)'), ', ') INTO owned
            FROM pg_catalog.pg_shdepend s
            LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid
           WHERE {OF_R} AND s.deptype = 'o';
          IF owned IS NOT NULL THEN
            outcome := 'retained:owns objects in ' || owned;
          ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend s
                         WHERE {OF_R} AND s.dbid IN (0, {THIS_DB})) THEN
            EXECUTE pg_catalog.format('GRANT %I TO CURRENT_USER', rname);
            EXECUTE pg_catalog.format('DROP OWNED BY %I', rname);
          END IF;
        END IF;
        {finish}
      EXCEPTION WHEN OTHERS THEN
        outcome := 'error:' || SQLSTATE || ':' || SQLERRM;
      END;
    END IF;
    PERFORM pg_catalog.set_config('rolemint.outcome_' || (i - 1), outcome, true);
  END LOOP;
END
$rolemint$",
        names = text_array(targets.iter().map(|t| Some(t.role.as_str()))),
        owners = text_array(targets.iter().map(|t| t.owner.as_deref())),
        minted = minted_role("r"),
    )
}

/// The batch revoking `targets` in one database (default revocation only):
/// NOLOGIN for all, committed; then the per-role loop and the row of
/// outcomes, in a second transaction. Both blocks plan generically (see
/// [`nologin_all`]).
pub fn batch(targets: &[Target], terminate_wait_ms: u64, drop_role: bool) -> String {
    let roles: Vec<&str> = targets.iter().map(|t| t.role.as_str()).collect();
    Batch::begin()
        .generic_plans()
        .statement(&nologin_all(&roles))
        .commit_and_begin()
        .generic_plans()
        .statement(&roles_loop(targets, terminate_wait_ms, drop_role))
        .statement(&outcomes_query(targets.len()))
        .end(Finish::Commit)
}

/// One row: the outcome of each block, in order.
fn outcomes_query(n: usize) -> String {
    let columns: Vec<String> = (0..n)
        .map(|i| format!("pg_catalog.current_setting('rolemint.outcome_{i}', true)"))
        .collect();
    format!("SELECT {}", columns.join(", "))
}

/// The prelude rolemint runs before a template's own revocation statements:
/// the guard (raising, so the statements after it are skipped), NOLOGIN,
/// committed; then the role's backends terminated.
pub fn custom_prelude(role: &str, terminate_wait_ms: u64) -> String {
    let ident = escape_identifier(role);
    let lit = escape_literal(role);
    format!(
        "BEGIN;
DO $rolemint$
DECLARE r oid;
BEGIN
  SELECT oid INTO r FROM pg_catalog.pg_roles WHERE rolname = {lit};
  IF r IS NOT NULL THEN
    IF NOT {minted} THEN
      RAISE EXCEPTION 'role % is not managed by rolemint', {lit} USING ERRCODE = '{NOT_MANAGED_SQLSTATE}';
    END IF;
    ALTER ROLE {ident} NOLOGIN;
  END IF;
END
$rolemint$;
COMMIT;
SELECT pg_catalog.pg_terminate_backend(a.pid, {terminate_wait_ms})
  FROM pg_catalog.pg_stat_get_activity(NULL) a
 WHERE a.usesysid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = {lit});
",
        minted = minted_role("r"),
    )
}

/// A template's own statements in one transaction, with the database's
/// default `search_path` (see [`Batch::operator_statements`]).
pub fn custom_statements(statements: &[String]) -> String {
    Batch::begin()
        .operator_statements(statements)
        .end(Finish::Commit)
}

/// Reads the outcome row of a [`batch`].
fn parse_outcomes(
    database: &str,
    targets: &[Target],
    rows: &[SimpleQueryMessage],
) -> Vec<Result<Outcome, MintError>> {
    let row = rows.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let text = row.and_then(|r| r.get(i)).unwrap_or("");
            parse_outcome(database, &target.role, text)
        })
        .collect()
}

fn parse_outcome(database: &str, role: &str, text: &str) -> Result<Outcome, MintError> {
    let (word, rest) = text.split_once(':').unwrap_or((text, ""));
    match word {
        "dropped" => Ok(Outcome::Dropped),
        "gone" => Ok(Outcome::Gone),
        "not_managed" => Ok(Outcome::NotManaged),
        "retained" => Ok(Outcome::Retained(rest.to_owned())),
        "elsewhere" => match serde_json::from_str::<Vec<String>>(rest) {
            Ok(dbs) => Ok(Outcome::Elsewhere(dbs)),
            Err(_) => Err(MintError::Backend {
                database: database.to_owned(),
                message: format!("unreadable revoke outcome for {role}"),
            }),
        },
        "error" => {
            let (sqlstate, message) = rest.split_once(':').unwrap_or((rest, ""));
            Err(MintError::Sql {
                database: database.to_owned(),
                sqlstate: sqlstate.to_owned(),
                message: message.to_owned(),
                detail: None,
            })
        }
        _ => Err(MintError::Backend {
            database: database.to_owned(),
            message: format!("no revoke outcome for {role}"),
        }),
    }
}

impl AdminClient {
    /// Revokes `targets` in `database`: the default revocation for all of
    /// them in one round trip, then, for those that need it, the other
    /// databases they own objects or hold privileges in, and a template's
    /// own statements one role at a time. An outcome per target, in order;
    /// an `Err` for the whole call only when `database` could not be used
    /// at all.
    ///
    /// A database that no longer exists (3D000) is replaced by
    /// `backend.admin_database`: roles are cluster-wide, and the objects of
    /// a dropped database went with it.
    pub async fn revoke_batch(
        &self,
        database: &str,
        targets: &[Target],
    ) -> Result<Vec<Result<Outcome, MintError>>, MintError> {
        let database = match self.pool.get(database).await {
            Err(MintError::Connect { sqlstate, .. }) if sqlstate.as_deref() == Some("3D000") => {
                tracing::warn!(
                    database,
                    "database is gone; revoking its roles from {}",
                    self.admin_database
                );
                self.admin_database.as_str()
            }
            Err(e) => return Err(e),
            Ok(_) => database,
        };
        let mut results: Vec<Option<Result<Outcome, MintError>>> = Vec::new();
        results.resize_with(targets.len(), || None);
        let mut plain = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            if !super::is_valid_role_name(&target.role) {
                results[i] = Some(Err(MintError::InvalidRoleName(target.role.clone())));
            } else if target.custom.is_some() {
                results[i] = Some(self.revoke_custom(database, target).await);
            } else {
                plain.push(i);
            }
        }
        if !plain.is_empty() {
            let batch_targets: Vec<Target> = plain.iter().map(|&i| targets[i].clone()).collect();
            let outcomes = self.run_blocks(database, &batch_targets, true).await?;
            for (&i, outcome) in plain.iter().zip(outcomes) {
                results[i] = Some(match outcome {
                    Ok(Outcome::Elsewhere(dbs)) => {
                        self.revoke_elsewhere(database, &targets[i], &dbs).await
                    }
                    other => other,
                });
            }
        }
        let results: Vec<Result<Outcome, MintError>> = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(MintError::Backend {
                        database: database.to_owned(),
                        message: "revocation skipped".into(),
                    })
                })
            })
            .collect();
        // A revocation that came to an outcome (dropped, gone, retained,
        // refused) ended the lease: its row leaves the lease index. One
        // that failed is retried and forgotten then.
        self.forget_roles(
            targets
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(t, _)| t.role.as_str()),
        );
        Ok(results)
    }

    async fn run_blocks(
        &self,
        database: &str,
        targets: &[Target],
        drop_role: bool,
    ) -> Result<Vec<Result<Outcome, MintError>>, MintError> {
        let sql = batch(targets, self.terminate_wait_ms, drop_role);
        let mut conn = self.pool.get(database).await?;
        // Each role may wait for its backends; the batch as a whole gets
        // that much more time than one statement.
        let wait = std::time::Duration::from_millis(self.terminate_wait_ms);
        let rows = conn
            .batch_within(
                &sql,
                self.statement_timeout + wait * u32::try_from(targets.len()).unwrap_or(u32::MAX),
            )
            .await?;
        Ok(parse_outcomes(database, targets, &rows))
    }

    /// Deals with the role's objects and privileges in each of `others`,
    /// then drops it from `home`.
    async fn revoke_elsewhere(
        &self,
        home: &str,
        target: &Target,
        others: &[String],
    ) -> Result<Outcome, MintError> {
        for db in others {
            let outcome = match self
                .run_blocks(db, std::slice::from_ref(target), false)
                .await
            {
                // Dropped since pg_shdepend named it: nothing left there.
                Err(MintError::Connect { sqlstate, .. })
                    if sqlstate.as_deref() == Some("3D000") =>
                {
                    continue
                }
                Err(e) => return Err(e),
                Ok(mut v) => v.pop().unwrap_or(Ok(Outcome::Gone))?,
            };
            match outcome {
                Outcome::Dropped => {}
                other => return Ok(other),
            }
        }
        let mut again = self
            .run_blocks(home, std::slice::from_ref(target), true)
            .await?;
        match again.pop().unwrap_or(Ok(Outcome::Gone))? {
            // Still elsewhere: something new appeared meanwhile; the next
            // attempt deals with it.
            Outcome::Elsewhere(dbs) => Err(MintError::Backend {
                database: home.to_owned(),
                message: format!(
                    "role {} still has objects or privileges in {}",
                    target.role,
                    dbs.join(", ")
                ),
            }),
            other => Ok(other),
        }
    }

    /// NOLOGIN and termination by rolemint, then the template's statements.
    async fn revoke_custom(&self, database: &str, target: &Target) -> Result<Outcome, MintError> {
        let role = target.role.as_str();
        let statements = template::render(
            target.custom.as_deref().unwrap_or_default(),
            &template::Values {
                name: role,
                password: None,
                expiration: None,
            },
        )?;
        let mut conn = self.pool.get(database).await?;
        match conn
            .batch(&custom_prelude(role, self.terminate_wait_ms))
            .await
        {
            Ok(_) => {}
            Err(e) if e.sqlstate() == Some(NOT_MANAGED_SQLSTATE) => return Ok(Outcome::NotManaged),
            Err(e) => return Err(e),
        }
        let result = conn.batch(&custom_statements(&statements)).await;
        // The statements may not be idempotent (`DROP ROLE` without `IF
        // EXISTS`): whatever they said, a role that is gone is revoked.
        let exists = conn
            .batch(&super::sql::role_exists(role))
            .await
            .map(|rows| rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
        match (result, exists) {
            (_, Ok(false)) => Ok(Outcome::Dropped),
            (Ok(_), Ok(true)) => Ok(Outcome::Dropped),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(role: &str, owner: Option<&str>) -> Target {
        Target {
            role: role.into(),
            owner: owner.map(Into::into),
            custom: None,
        }
    }

    #[test]
    fn batch_orders_nologin_terminate_reassign_drop() {
        let sql = batch(
            &[target("v-a-1", Some("app_owner")), target("v-b-2", None)],
            5000,
            true,
        );
        // The names and owners as escaped array elements, in order.
        assert!(
            sql.contains("ARRAY['v-a-1', 'v-b-2']::pg_catalog.text[]"),
            "{sql}"
        );
        assert!(
            sql.contains("ARRAY['app_owner', NULL]::pg_catalog.text[]"),
            "{sql}"
        );
        // NOLOGIN for all, committed, before anything else.
        let nologin = sql.find("'ALTER ROLE %I NOLOGIN', rname").unwrap();
        let commit = sql.find("COMMIT;").unwrap();
        let terminate = sql.find("pg_terminate_backend(a.pid, 5000)").unwrap();
        let reassign = sql
            .find("'REASSIGN OWNED BY %I TO %I', rname, rowner")
            .unwrap();
        let drop_owned = sql.find("'DROP OWNED BY %I', rname").unwrap();
        let drop = sql.find("'DROP ROLE %I', rname").unwrap();
        assert!(nologin < commit && commit < terminate);
        assert!(terminate < reassign && reassign < drop_owned && drop_owned < drop);
        // Without an owner: retained when it owns anything, never
        // reassigned, and DROP OWNED only after that check.
        let no_owner = &sql[sql
            .find("ELSE\n          SELECT pg_catalog.string_agg")
            .unwrap()..];
        let retained = no_owner.find("retained:owns objects").unwrap();
        assert!(!no_owner[..retained].contains("REASSIGN"));
        assert!(retained < no_owner.find("'DROP OWNED BY %I', rname").unwrap());
        assert!(sql.contains("set_config('rolemint.outcome_' || (i - 1), outcome, true)"));
        assert!(sql.ends_with(
            "SELECT pg_catalog.current_setting('rolemint.outcome_0', true), pg_catalog.current_setting('rolemint.outcome_1', true);\nCOMMIT"
        ));
        // Every table and function rolemint reads is schema-qualified.
        for word in [
            "pg_shdepend",
            "pg_roles",
            "pg_database",
            "pg_stat_get_activity",
            "format(",
        ] {
            assert!(!sql.contains(&format!(" {word}")), "unqualified {word}");
        }
        let elsewhere = batch(&[target("v-a-1", None)], 10, false);
        assert!(!elsewhere.contains("DROP ROLE"));
    }

    /// A name that would break out of a literal stays inside its element.
    #[test]
    fn names_are_escaped_literals() {
        let sql = batch(&[target("v-x'); DROP TABLE t; --", None)], 10, true);
        assert!(sql.contains("ARRAY['v-x''); DROP TABLE t; --']"), "{sql}");
    }

    #[test]
    fn outcomes_are_parsed() {
        let p = |t: &str| parse_outcome("db", "r", t);
        assert_eq!(p("dropped").unwrap(), Outcome::Dropped);
        assert_eq!(p("gone").unwrap(), Outcome::Gone);
        assert_eq!(p("not_managed").unwrap(), Outcome::NotManaged);
        assert_eq!(
            p("retained:owns objects in appdb").unwrap(),
            Outcome::Retained("owns objects in appdb".into())
        );
        assert_eq!(
            p("elsewhere:[\"a\", \"b:c\"]").unwrap(),
            Outcome::Elsewhere(vec!["a".into(), "b:c".into()])
        );
        let e = p("error:2BP01:role cannot be dropped: x").unwrap_err();
        assert_eq!(e.sqlstate(), Some("2BP01"));
        assert!(e.to_string().contains("role cannot be dropped: x"), "{e}");
        assert!(p("").is_err());
    }

    #[test]
    fn custom_revocation_is_preceded_by_nologin_and_termination() {
        let pre = custom_prelude("v-x", 100);
        let nologin = pre.find("ALTER ROLE \"v-x\" NOLOGIN").unwrap();
        let terminate = pre.find("pg_terminate_backend(a.pid, 100)").unwrap();
        assert!(pre.find(NOT_MANAGED_SQLSTATE).unwrap() < nologin && nologin < terminate);
        let sql = custom_statements(&["DROP ROLE \"v-x\";".to_string()]);
        assert_eq!(
            sql,
            "BEGIN;\nSET LOCAL search_path TO DEFAULT;\nDROP ROLE \"v-x\"\n;\nCOMMIT"
        );
    }
}

//! rolemint's schema in the admin database, and its migrations.
//!
//! `MIGRATIONS` is append-only: a later rolemint adds its tables by
//! appending `(next version, sql)`; an earlier entry is never edited (a
//! database migrated by it would not run the edit). All of them run in
//! one transaction under a transaction-scoped advisory lock, so two
//! instances starting at once do not race (`CREATE ... IF NOT EXISTS` alone
//! does: two sessions can both find the name free and one fails on the
//! catalog's unique index). A database migrated by a newer rolemint (a
//! higher version than this one knows) is used as it is: migrations only
//! add.

use crate::pg::AdminClient;

use super::StoreError;

/// The advisory lock of the migrations ("rolemint" and a 1 in ASCII; apart
/// from the reaper's sweep lock).
const MIGRATION_LOCK_KEY: i64 = 0x726f_6c65_6d69_6e31;

/// The migrations, in order: `(version, sql)`. Append only.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        // Generic named objects with a JSON body (templates, policies, auth
        // roles), and per kind a generation bumped by every write: a reader
        // compares generations (a few rows) instead of re-reading everything.
        "CREATE TABLE rolemint.objects (\
       kind text NOT NULL, \
       name text NOT NULL, \
       body jsonb NOT NULL, \
       written_by text NOT NULL, \
       written_at timestamptz NOT NULL DEFAULT pg_catalog.now(), \
       PRIMARY KEY (kind, name)); \
     CREATE TABLE rolemint.generations (\
       kind text PRIMARY KEY, \
       generation bigint NOT NULL)",
    ),
    // Vault tokens by hash, their tree, and the leases each created
    // (`tokens.rs`).
    (2, super::tokens::MIGRATION),
    // The lease index: lease id -> role (`pg/lease_index.rs`).
    (3, crate::pg::LEASE_INDEX_MIGRATION),
];

/// Creates the schema if missing and runs the migrations it lacks; the
/// version it is at.
pub(super) async fn migrate(admin: &AdminClient) -> Result<i32, StoreError> {
    let mut conn = admin.admin_connection().await?;
    let database = admin.admin_database().to_owned();
    // CREATE SCHEMA checks the database's CREATE privilege even when the
    // schema exists: look first, so a schema a DBA created is enough.
    let setup = format!(
        "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); \
         DO $rolemint$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'rolemint') THEN \
             CREATE SCHEMA rolemint; \
           END IF; \
         END $rolemint$; \
         CREATE TABLE IF NOT EXISTS rolemint.schema_version (\
           version integer PRIMARY KEY, \
           applied_at timestamptz NOT NULL DEFAULT pg_catalog.now()); \
         SELECT coalesce(max(version), 0)::text FROM rolemint.schema_version"
    );
    let rows = conn
        .batch(&setup)
        .await
        .map_err(|e| not_ready(e, &database))?;
    let current: i32 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .unwrap_or(0);
    let mut version = current;
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let step = format!("{sql}; INSERT INTO rolemint.schema_version (version) VALUES ({v})");
        if let Err(e) = conn.batch(&step).await {
            // `batch` rolled the transaction back on a database error; on
            // any other the connection is discarded.
            return Err(not_ready(e, &database));
        }
        version = *v;
    }
    conn.batch("COMMIT")
        .await
        .map_err(|e| not_ready(e, &database))?;
    if version > current {
        tracing::info!(from = current, to = version, "rolemint schema migrated");
    }
    Ok(version.max(current))
}

/// A migration failure, with what the admin lacks when that is the cause.
fn not_ready(e: crate::pg::MintError, database: &str) -> StoreError {
    let hint = match &e {
        crate::pg::MintError::Sql { sqlstate, .. } if sqlstate == "42501" => format!(
            " (the admin role needs `GRANT CREATE ON DATABASE {database} TO <admin_user>` \
             once, or a schema `rolemint` it owns)"
        ),
        _ => String::new(),
    };
    StoreError::NotReady(format!("{e}{hint}"))
}

/// What `rolemint check` says of the schema, without changing anything:
/// there and usable, or creatable at startup; else what to grant.
pub async fn preflight(admin: &AdminClient) -> Result<String, String> {
    let database = admin.admin_database().to_owned();
    let mut conn = admin.admin_connection().await.map_err(|e| e.to_string())?;
    let rows = conn
        .batch(
            "SELECT (SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE,CREATE') \
               FROM pg_catalog.pg_namespace n WHERE n.nspname = 'rolemint')::text, \
             pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')::text",
        )
        .await
        .map_err(|e| e.to_string())?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
        }
        _ => None,
    });
    match row {
        Some((Some(usable), _)) if usable == "true" => {
            Ok(format!("schema rolemint in database {database}"))
        }
        Some((Some(_), _)) => Err(format!(
            "schema rolemint in database {database} exists but the admin may not use it \
             (it needs USAGE and CREATE on it, or to own it)"
        )),
        Some((None, Some(create))) if create == "true" => Ok(format!(
            "schema rolemint will be created in database {database} at startup"
        )),
        _ => Err(format!(
            "the admin cannot create schema rolemint in database {database}: \
             GRANT CREATE ON DATABASE {database} TO <admin_user> (templates, policies and \
             tokens written through the API are kept there)"
        )),
    }
}

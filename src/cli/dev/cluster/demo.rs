//! The demo schema on a [`TempCluster`]: the roles, database and tables that
//! `rolemint dev`, the Docker setup (`docker/initdb/`) and the tests share,
//! and the role templates for them.

use crate::secret::Secret;

use super::{random_hex, run_capturing, ClusterError, TempCluster};

/// Name of the demo database.
pub const DEMO_DATABASE: &str = "appdb";

/// Name of the demo admin role rolemint connects as.
pub const DEMO_ADMIN_USER: &str = "rolemint_admin";

/// The demo's global roles, database and schema, as psql input. The same file
/// provisions the Docker setup; there the admin password comes from the
/// environment (`\getenv`), here the line is replaced by a `\set` with a
/// SCRAM verifier (see [`provision_demo`]).
const DEMO_SQL: &str = include_str!("../../../../docker/initdb/10-rolemint-demo.sql");

/// The line of [`DEMO_SQL`] that [`provision_demo`] replaces.
const DEMO_SQL_GETENV: &str = "\\getenv admin_password ROLEMINT_ADMIN_PASSWORD";

/// pgbench tables, handed to `app_read` after `pgbench -i`.
const DEMO_GRANTS_SQL: &str = "\
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_read;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO app_read;
";

/// What [`provision_demo`] created for rolemint to use.
#[derive(Debug, Clone)]
pub struct Demo {
    /// The role rolemint mints and drops roles as (`rolemint_admin`).
    pub admin_user: String,
    pub admin_password: Secret,
    /// The demo database (`appdb`).
    pub database: String,
}

/// Creates the demo on `cluster`, as its superuser:
///
/// - `rolemint_admin`: LOGIN CREATEROLE with a random password, member of
///   `pg_signal_backend` (to end a lease's sessions);
/// - `app_read`, `app_owner`: NOLOGIN group roles the templates grant, both
///   granted to `rolemint_admin` WITH ADMIN OPTION (PostgreSQL 16 requires
///   it to grant them on); exactly README's admin grants, so the tests prove
///   them. The marker roles are rolemint's to create at startup;
/// - database `appdb` with `public.accounts` and the pgbench tables (scale 1),
///   all owned by `app_owner` and readable by `app_read`.
///
/// The SQL is `docker/initdb/10-rolemint-demo.sql`, shared with the Docker
/// setup. The admin password reaches PostgreSQL only as a SCRAM verifier, so
/// it appears in no server log even with `log_statement = 'all'`.
pub fn provision_demo(cluster: &TempCluster) -> Result<Demo, ClusterError> {
    let admin_password = Secret::new(random_hex(32)?);
    let verifier = postgres_protocol::password::scram_sha_256(admin_password.expose().as_bytes());
    // The verifier is base64 and `$`/`:`; nothing psql's quoting would touch.
    let set_password = format!("\\set admin_password '{verifier}'");
    assert!(
        DEMO_SQL.contains(DEMO_SQL_GETENV),
        "demo SQL lost its \\getenv line"
    );
    let sql = DEMO_SQL.replacen(DEMO_SQL_GETENV, &set_password, 1);
    cluster.psql_as_superuser("postgres", &sql)?;
    init_pgbench_tables(cluster, 1)?;

    Ok(Demo {
        admin_user: DEMO_ADMIN_USER.into(),
        admin_password,
        database: DEMO_DATABASE.into(),
    })
}

/// (Re)creates the demo's pgbench tables at `scale` (100,000 accounts and
/// one branch per unit), as app_owner so that app_owner owns them, and lets
/// app_read read them. The bench raises the scale to its client count, as
/// pgbench's documentation asks, so TPC-B measures transactions rather
/// than contention on one branch row.
pub fn init_pgbench_tables(cluster: &TempCluster, scale: u32) -> Result<(), ClusterError> {
    let mut pgbench = cluster.superuser_client(cluster.pgbench(), DEMO_DATABASE);
    pgbench
        .args(["-i", "-s", &scale.to_string(), "-q", DEMO_DATABASE])
        .env("PGOPTIONS", "-c role=app_owner");
    run_capturing(pgbench, None, "pgbench -i")?;
    cluster.psql_as_superuser(DEMO_DATABASE, DEMO_GRANTS_SQL)?;
    Ok(())
}

/// The demo's role templates, as commented TOML (`[roles.readonly]`,
/// `[roles.readwrite]`), for the config `rolemint dev` writes. The same
/// templates are in `config/docker.toml`.
pub fn demo_templates_toml() -> &'static str {
    DEMO_TEMPLATES
}

const DEMO_TEMPLATES: &str = r#"# ---------------------------------------------------------------------------
# Role templates: a client names one as its `user`. For each session rolemint
# runs creation_statements as one transaction, with Vault's placeholders:
#   {{name}}        the minted role's name (quote it as an identifier)
#   {{password}}    a SCRAM-SHA-256 verifier of its random password (never the
#                   password itself, so it cannot leak into server logs)
#   {{expiration}}  the lease's expiry, for VALID UNTIL
# At session end (or TTL, or revocation) the role is dropped.
# ---------------------------------------------------------------------------

# Read-only: SELECT on everything app_owner owns in appdb, through app_read.
[roles.readonly]
databases = ["appdb"]
# Who may use it: glob patterns on the token's raw identity claim and on its
# groups. A template with neither allows no one. "*" lets every identity of
# this throwaway setup in; name real identities or groups in production.
allow_identities = ["*"]
default_ttl = "1h"      # a session lives at most this long
max_ttl = "24h"         # an operator may renew a lease up to this
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]

# Read-write, as the long-lived owner role app_owner. The login sets
# `role = app_owner`, so every table the session creates belongs to app_owner
# and the minted role owns nothing: dropping it never fails on owned objects,
# and never takes data with it.
[roles.readwrite]
databases = ["appdb"]
allow_identities = ["*"]   # every identity; see readonly
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_owner TO \"{{name}}\"",
  "ALTER ROLE \"{{name}}\" SET role = 'app_owner'",
]
"#;

//! [`AdminClient`], the client of the admin database: minting and
//! revoking roles, the part of a session that touches the backend as
//! admin.
//!
//! [`AdminClient::mint`] turns an [`Identity`] and a [`RoleTemplate`] into a role
//! that exists now, in one round trip and one commit:
//! 1. a name (`names.rs`), a 256-bit random password and its SCRAM verifier
//!    (`scram.rs`), an expiry of now + TTL;
//! 2. the template's `creation_statements` rendered with those values, each
//!    checked against a narrow alphabet first (`template.rs`);
//! 3. `BEGIN; <creation statements>; GRANT rolemint_managed TO role;
//!    COMMENT ON ROLE role IS '<lease json>'; COMMIT` as a single
//!    simple-query string (`sql.rs`) on a pooled admin connection to the
//!    target database (`pool.rs`, TLS via `pg_tls.rs`).
//!
//! The plaintext password stays in the returned [`MintedRole`]; PostgreSQL
//! only ever sees the verifier. The marker membership and the comment make
//! the database the durable record: the reaper finds every role rolemint
//! minted, even one whose mint future was dropped half-way.
//!
//! [`AdminClient::create`] is split from rendering ([`AdminClient::render_mint`]) so
//! that the caller knows the role's name before any SQL is sent: whatever
//! happens to the batch (an error, a timeout, a COMMIT that lands after we
//! stopped waiting), the caller can hand that name to the revoker.
//!
//! [`AdminClient::revoke_batch`] ends roles (`revoke_sql.rs`: NOLOGIN, terminate
//! their backends, hand owned objects to the template's `owner`, drop), many
//! per round trip; [`AdminClient::renew`] moves a role's `VALID UNTIL`. Both are
//! idempotent and refuse roles that are not members of `rolemint_managed`.
//! [`AdminClient::catalog_page`] reads every live lease of every instance
//! back from the catalog (`catalog.rs`), a page at a time.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use tokio_postgres::SimpleQueryMessage;

use crate::auth::identity::Identity;
use crate::config::{Config, RoleTemplate};
use crate::secret::Secret;

use super::error::MintError;
use super::lease_index::LeaseIndex;
use super::names::{is_valid_role_name, NameTemplate};
use super::revoke_sql::{Outcome, Target};
use super::sql::{LeaseComment, LeaseKind, MARKER_ROLE};
use super::{names, pool, scram, sql, template};

/// The lease-id prefix of a pooled role's comment, until a session claims
/// it (`database/warm/<template>/<random>`): not a lease anyone holds.
pub const WARM_LEASE_PREFIX: &str = "database/warm/";

/// The `kind` of a pooled role's lease comment, until a session claims it.
pub const WARM_KIND: &str = "warm";

/// Longest `pg_terminate_backend` wait per backend during a revoke.
const MAX_TERMINATE_WAIT: Duration = Duration::from_secs(5);

/// What to mint.
pub struct MintRequest<'a> {
    pub identity: &'a Identity,
    pub template_name: &'a str,
    pub template: &'a RoleTemplate,
    pub database: &'a str,
    pub ttl: Duration,
    pub lease_id: &'a str,
}

/// A role that exists in the database now.
#[derive(Debug, Clone)]
pub struct MintedRole {
    pub name: String,
    /// Plaintext password, kept in memory only for the backend login.
    pub password: Secret,
    pub expires_at: SystemTime,
}

/// A mint rendered and not yet sent: the name is known before any SQL runs.
#[derive(Debug)]
pub struct PreparedMint {
    pub role: MintedRole,
    database: String,
    /// The simple-query string (holds the verifier: never logged).
    batch: Secret,
    /// Statements in the batch: how long the server may go on running it
    /// after we stopped waiting is bounded by this many statement timeouts.
    statements: usize,
    /// The lease it is minted for, recorded in the lease index once the
    /// batch has committed; `None` for a pooled role, which no lease holds
    /// until a session claims it.
    lease_id: Option<String>,
}

impl PreparedMint {
    /// The database the role is minted in.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The longest the batch can still run on the server after its client
    /// gave up: the server bounds each statement of a simple query by
    /// `statement_timeout` separately (PostgreSQL 13+), and does not notice
    /// a closed connection between them. A revocation of a failed mint is
    /// confirmed only after this has passed.
    pub fn settle_time(&self, statement_timeout: Duration) -> Duration {
        statement_timeout * u32::try_from(self.statements + 2).unwrap_or(u32::MAX)
    }

    /// The simple-query string itself, for tests that mint many roles
    /// exactly as [`AdminClient::create`] would, several to a round trip.
    /// Test scaffolding: not in `cargo build` or a release binary.
    #[cfg(any(test, feature = "testkit"))]
    pub fn sql(&self) -> &str {
        self.batch.expose()
    }
}

/// The admin role's powers, for `rolemint check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminFacts {
    pub server_version: String,
    pub superuser: bool,
    pub create_role: bool,
    /// Member of pg_signal_backend: may end a lease's sessions.
    pub signal_backend: bool,
    /// `rolemint_managed` exists.
    pub marker_exists: bool,
    /// `server_version_num` (150004, 180001): what the server demands of a
    /// CREATEROLE admin changed in 16.
    pub server_version_num: u32,
    /// Marker roles that exist and that the admin does not hold WITH ADMIN
    /// OPTION (created beforehand by someone else, and not granted).
    pub markers_without_admin_option: Vec<String>,
}

/// PostgreSQL 16: a CREATEROLE role may grant, alter and drop only the
/// roles it holds WITH ADMIN OPTION (it gets that on the roles it creates).
/// Before 16, CREATEROLE alone could grant any non-superuser role.
pub const ADMIN_OPTION_NEEDED_FROM: u32 = 160_000;

/// One line of pg_hba.conf as the server reads it (`pg_hba_file_rules`),
/// for `rolemint check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    pub line: u32,
    /// `local`, `host`, `hostssl`, ...
    pub kind: String,
    /// The user column: `all`, `+group` or role names.
    pub users: Vec<String>,
    /// `all`, an address, a host name, `samehost`, ...; `None` for `local`.
    pub address: Option<String>,
    pub netmask: Option<String>,
    pub method: String,
}

/// Creates and drops roles as the admin user.
#[derive(Debug)]
pub struct AdminClient {
    /// Admin connections, per database.
    pub(super) pool: pool::AdminPool,
    /// One admin connection per database for the health probes (`ping`,
    /// `managed_role_count`), apart from `pool`: probes never wait for, or
    /// hold, a connection a mint needs.
    probes: pool::AdminPool,
    /// `mint.name_template`, parsed and checked once.
    pub(super) names: names::NameTemplate,
    /// `mint.scram_iterations` (see `scram.rs` for why it is low).
    pub(super) scram_iterations: NonZeroU32,
    /// This instance's name in lease comments.
    pub(super) instance: String,
    /// `backend.admin_database`: where `prepare` runs.
    pub(super) admin_database: String,
    /// Per-backend wait of `pg_terminate_backend` on revoke, in ms.
    pub(super) terminate_wait_ms: u64,
    /// `mint.statement_timeout`.
    pub(super) statement_timeout: Duration,
    pub(super) rng: SystemRandom,
    /// The lease index's queue and state (`lease_index.rs`).
    pub(super) lease_index: LeaseIndex,
}

impl AdminClient {
    /// Checks the mint settings and builds the admin pool. Connects to
    /// nothing yet.
    pub fn new(config: &Config) -> Result<AdminClient, MintError> {
        let names =
            names::NameTemplate::parse(&config.mint.name_template).map_err(MintError::Config)?;
        let scram_iterations = NonZeroU32::new(config.mint.scram_iterations)
            .ok_or_else(|| MintError::Config("mint.scram_iterations must be at least 1".into()))?;
        // `None` when `backend.tls = "disable"`.
        let tls = crate::tls::backend_client_config(&config.backend)
            .map_err(|e| MintError::Tls(e.to_string()))?;
        let statement_timeout = config.mint.statement_timeout;
        if statement_timeout.is_zero() {
            return Err(MintError::Config(
                "mint.statement_timeout must be positive".into(),
            ));
        }
        let pool = pool::AdminPool::new(&config.backend, tls.clone(), statement_timeout)?;
        let one = crate::config::BackendConfig {
            admin_pool_size: 1,
            ..config.backend.clone()
        };
        let probes = pool::AdminPool::new(&one, tls, statement_timeout)?;
        let terminate_wait = MAX_TERMINATE_WAIT.min(statement_timeout / 2);
        Ok(AdminClient {
            pool,
            probes,
            names,
            scram_iterations,
            instance: instance_name(config.mint.instance.as_deref()),
            admin_database: config.backend.admin_database.clone(),
            terminate_wait_ms: u64::try_from(terminate_wait.as_millis())
                .unwrap_or(5000)
                .max(1),
            statement_timeout,
            rng: SystemRandom::new(),
            lease_index: LeaseIndex::default(),
        })
    }

    /// Creates the `rolemint_managed` marker role if missing. Run at startup
    /// (and by `rolemint check`); idempotent and safe to race.
    pub async fn prepare(&self) -> Result<(), MintError> {
        let mut conn = self.pool.get(&self.admin_database).await?;
        conn.batch(&sql::prepare()).await?;
        Ok(())
    }

    /// A pooled connection to `backend.admin_database`, for rolemint's own
    /// schema there (`store/`): reads, writes, and the migrations, which
    /// hold one connection across several batches of one transaction.
    pub async fn admin_connection(&self) -> Result<pool::PooledClient<'_>, MintError> {
        self.pool.get(&self.admin_database).await
    }

    /// `backend.admin_database`.
    pub fn admin_database(&self) -> &str {
        &self.admin_database
    }

    /// A connection of its own to `backend.admin_database` that has run
    /// `LISTEN channel`: each notification on it wakes `wake`, and so does
    /// its end (the caller then sees `is_closed()` and opens another).
    pub async fn listen(
        &self,
        channel: &str,
        wake: Arc<tokio::sync::Notify>,
    ) -> Result<tokio_postgres::Client, MintError> {
        let client = self
            .pool
            .connect_with(&self.admin_database, Some(wake))
            .await?;
        let listen = format!(
            "LISTEN {}",
            postgres_protocol::escape::escape_identifier(channel)
        );
        match tokio::time::timeout(self.statement_timeout, client.simple_query(&listen)).await {
            Err(_) => Err(MintError::Timeout {
                what: "running LISTEN",
                database: self.admin_database.clone(),
                after: self.statement_timeout,
            }),
            Ok(Err(e)) => Err(MintError::query(&self.admin_database, &e)),
            Ok(Ok(_)) => Ok(client),
        }
    }

    /// Proves an admin connection to `database` works now: the probes'
    /// own connection (reopened if it broke), and a `SELECT 1` on it. For
    /// the admin listener's `/readyz`.
    pub async fn ping(&self, database: &str) -> Result<(), MintError> {
        let mut conn = self.probes.get(database).await?;
        conn.batch("SELECT 1").await?;
        Ok(())
    }

    /// How many roles are members of `rolemint_managed` now: the
    /// `rolemint_managed_roles` gauge, which shows a catalog that grows
    /// (revocations failing, the reaper not keeping up). Members holding
    /// ADMIN OPTION are the admin role itself (PostgreSQL 16 grants a
    /// created role to its creator that way), never a minted role.
    pub async fn managed_role_count(&self) -> Result<u64, MintError> {
        let mut conn = self.probes.get(&self.admin_database).await?;
        let sql = format!(
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_auth_members m \
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid \
             WHERE g.rolname = {} AND NOT m.admin_option",
            postgres_protocol::escape::escape_literal(MARKER_ROLE)
        );
        let rows = conn.batch(&sql).await?;
        rows.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|n| n.parse().ok()),
                _ => None,
            })
            .ok_or_else(|| MintError::Backend {
                database: self.admin_database.clone(),
                message: "counting managed roles returned no number".into(),
            })
    }

    /// Creates the role for one session. See the module doc.
    pub async fn mint(&self, req: &MintRequest<'_>) -> Result<MintedRole, MintError> {
        let prepared = self.render_mint(req)?;
        self.create(&prepared).await?;
        Ok(prepared.role)
    }

    /// Name, credentials, expiry and SQL of a mint, without sending it.
    pub fn render_mint(&self, req: &MintRequest<'_>) -> Result<PreparedMint, MintError> {
        let (role, batch, statements) = self.render(req, sql::Finish::Commit)?;
        Ok(PreparedMint {
            role,
            database: req.database.to_owned(),
            batch: Secret::new(batch),
            statements,
            lease_id: Some(req.lease_id.to_owned()),
        })
    }

    /// A pooled role of `template` for `database` (see `warm_pool.rs`):
    /// rendered like a session's, named by `names` (no identity), its
    /// `VALID UNTIL` `valid_for` from now and its comment marked
    /// [`WARM_KIND`] under a [`WARM_LEASE_PREFIX`] id. Its session settings
    /// are rendered for no identity: config validation refuses a pooled
    /// template whose settings use one.
    pub fn render_warm(
        &self,
        template_name: &str,
        template: &RoleTemplate,
        database: &str,
        valid_for: Duration,
        names: &NameTemplate,
        lease_id: &str,
    ) -> Result<PreparedMint, MintError> {
        let nobody = Identity {
            subject: String::new(),
            groups: Vec::new(),
            expires_at: SystemTime::now() + valid_for,
            issuer: String::new(),
        };
        let req = MintRequest {
            identity: &nobody,
            template_name,
            template,
            database,
            ttl: valid_for,
            lease_id,
        };
        let (role, batch, statements) =
            self.render_as(&req, sql::Finish::Commit, names, WARM_KIND)?;
        Ok(PreparedMint {
            role,
            database: database.to_owned(),
            batch: Secret::new(batch),
            statements,
            lease_id: None,
        })
    }

    /// Once a pooled role's backend has logged in: `NOLOGIN PASSWORD
    /// NULL`, so nobody (rolemint included) logs in as it again.
    pub async fn seal_warm(&self, role: &str, database: &str) -> Result<(), MintError> {
        if !is_valid_role_name(role) {
            return Err(MintError::InvalidRoleName(role.to_owned()));
        }
        let mut conn = self.pool.get(database).await?;
        conn.batch(&sql::seal_warm(role)).await.map(drop)
    }

    /// Binds a pooled role to the session that claimed it, in one round
    /// trip: `LOGIN` (it has no password), `VALID UNTIL` `expires_at`, the
    /// session's lease comment. Refuses a role that is not managed (an
    /// SQL error: the claim falls back to a mint).
    pub async fn claim_warm(
        &self,
        role: &str,
        database: &str,
        expires_at: SystemTime,
        comment: &LeaseComment,
    ) -> Result<(), MintError> {
        if !is_valid_role_name(role) {
            return Err(MintError::InvalidRoleName(role.to_owned()));
        }
        let mut conn = self.pool.get(database).await?;
        conn.batch(&sql::claim_warm(role, &rfc3339(expires_at), comment))
            .await?;
        self.record_lease(&comment.lease_id, role);
        Ok(())
    }

    /// Ends one session's backend (`pg_terminate_backend`), if `pid` is
    /// still a backend of `role`: PostgreSQL then sends the client its own
    /// FATAL (57P01) at a message boundary. The kernel splice ends a lease
    /// this way, since rolemint does not see that session's bytes.
    pub async fn terminate_session(
        &self,
        role: &str,
        database: &str,
        pid: i32,
    ) -> Result<(), MintError> {
        if !is_valid_role_name(role) {
            return Err(MintError::InvalidRoleName(role.to_owned()));
        }
        let mut conn = self.pool.get(database).await?;
        conn.batch(&sql::terminate_session(role, pid))
            .await
            .map(drop)
    }

    /// Runs a rendered mint: one round trip, one commit. Once it has
    /// committed, the lease's row is queued for the lease index (written
    /// a few milliseconds later, off the mint's path: `lease_index.rs`).
    pub async fn create(&self, prepared: &PreparedMint) -> Result<(), MintError> {
        let mut conn = self.pool.get(&prepared.database).await?;
        conn.batch(prepared.batch.expose()).await?;
        drop(conn);
        if let Some(lease_id) = &prepared.lease_id {
            self.record_lease(lease_id, &prepared.role.name);
        }
        tracing::debug!(role = %prepared.role.name, database = %prepared.database, "role minted");
        Ok(())
    }

    /// New admin connections log in with `password` from now on; those
    /// open stay as they are (PostgreSQL checks a password at login only).
    pub fn use_admin_password(&self, password: &Secret) {
        self.pool.set_password(password.expose());
        self.probes.set_password(password.expose());
    }

    /// `mint.statement_timeout`.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// This instance's name, as lease comments carry it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Moves `role`'s `VALID UNTIL` to `new_expiry` and rewrites its lease
    /// comment, in one transaction. Refuses a role that is not managed.
    pub async fn renew(
        &self,
        role: &str,
        database: &str,
        new_expiry: SystemTime,
        comment: &LeaseComment,
    ) -> Result<(), MintError> {
        if !is_valid_role_name(role) {
            return Err(MintError::InvalidRoleName(role.to_owned()));
        }
        let until = rfc3339(new_expiry);
        let mut conn = self.pool.get(database).await?;
        match conn.batch(&sql::renew(role, &until, comment)).await {
            Err(e) if e.sqlstate() == Some(sql::NOT_MANAGED_SQLSTATE) => {
                Err(MintError::NotManaged {
                    role: role.to_owned(),
                })
            }
            other => other.map(drop),
        }
    }

    /// Runs a mint exactly as a session would, then rolls it back: proves
    /// the template's statements and grants work for the admin, and leaves
    /// nothing behind (`rolemint check`).
    pub async fn dry_run(&self, req: &MintRequest<'_>) -> Result<(), MintError> {
        let (_, batch, _) = self.render(req, sql::Finish::Rollback)?;
        let mut conn = self.pool.get(req.database).await?;
        conn.batch(&batch).await?;
        Ok(())
    }

    /// What the admin role may do, as `rolemint check` reports it.
    /// Whether the admin has the privileges of `owner`, which `REASSIGN
    /// OWNED ... TO owner` needs (for `rolemint check`); `None` when no
    /// role of that name exists.
    pub async fn may_reassign_to(&self, owner: &str) -> Result<Option<bool>, MintError> {
        let mut conn = self.pool.get(&self.admin_database).await?;
        let sql = format!(
            "SELECT pg_catalog.pg_has_role(current_user, r.oid, 'USAGE') \
             FROM pg_catalog.pg_roles r WHERE r.rolname = {}",
            postgres_protocol::escape::escape_literal(owner)
        );
        let rows = conn.batch(&sql).await?;
        Ok(rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0) == Some("t")),
            _ => None,
        }))
    }

    pub async fn admin_facts(&self) -> Result<AdminFacts, MintError> {
        let mut conn = self.pool.get(&self.admin_database).await?;
        let rows = conn.batch(&sql::admin_facts()).await?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .ok_or_else(|| MintError::Backend {
                database: self.admin_database.clone(),
                message: "the admin role is not in pg_roles".into(),
            })?;
        let flag = |i: usize| row.get(i) == Some("t");
        Ok(AdminFacts {
            server_version: row.get(0).unwrap_or("unknown").to_owned(),
            superuser: flag(1),
            create_role: flag(2),
            signal_backend: flag(3),
            marker_exists: flag(4),
            server_version_num: row.get(5).and_then(|v| v.parse().ok()).unwrap_or(0),
            markers_without_admin_option: row
                .get(6)
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }

    /// pg_hba.conf's valid lines in order, and the admin connection's
    /// address as the server sees it (rolemint's address).
    pub async fn hba_rules(&self) -> Result<(Option<String>, Vec<HbaRule>), MintError> {
        let mut conn = self.pool.get(&self.admin_database).await?;
        let messages = conn.batch(sql::HBA_RULES).await?;
        let mut address = None;
        let mut rules = Vec::new();
        for row in messages.iter().filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        }) {
            address = row.get(6).map(str::to_owned);
            let text = |i: usize| row.get(i).map(str::to_owned);
            rules.push(HbaRule {
                line: row.get(0).and_then(|l| l.parse().ok()).unwrap_or(0),
                kind: text(1).unwrap_or_default(),
                users: row
                    .get(2)
                    .map(|u| u.split('\n').map(str::to_owned).collect())
                    .unwrap_or_default(),
                address: text(3),
                netmask: text(4),
                method: text(5).unwrap_or_default(),
            });
        }
        Ok((address, rules))
    }

    /// Name, credentials, expiry, the statement batch of one mint and the
    /// number of statements in it.
    fn render(
        &self,
        req: &MintRequest<'_>,
        finish: sql::Finish,
    ) -> Result<(MintedRole, String, usize), MintError> {
        let kind = LeaseKind::of_lease_id(req.lease_id).comment_word();
        self.render_as(req, finish, &self.names, kind)
    }

    /// [`AdminClient::render`] with the name template and comment kind given.
    fn render_as(
        &self,
        req: &MintRequest<'_>,
        finish: sql::Finish,
        names: &NameTemplate,
        kind: &str,
    ) -> Result<(MintedRole, String, usize), MintError> {
        if req.ttl.as_secs() == 0 {
            return Err(MintError::Config(
                "lease TTL must be at least one second".into(),
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let name = names
            .render(&req.identity.subject, req.template_name, now, &self.rng)
            .map_err(|_| MintError::Random)?;
        let creds =
            scram::generate(self.scram_iterations, &self.rng).map_err(|_| MintError::Random)?;
        // Whole seconds, as VALID UNTIL gets them: the lease and the role
        // expire at the same instant.
        let expires_at = UNIX_EPOCH + Duration::from_secs(now.saturating_add(req.ttl.as_secs()));
        let expiration = rfc3339(expires_at);

        let mut statements = template::render(
            &req.template.creation_statements,
            &template::Values {
                name: &name,
                password: Some(&creds.verifier),
                expiration: Some(&expiration),
            },
        )?;
        // The template's session_settings (claims for row-level security
        // and audit), in the same transaction as the role itself.
        let settings =
            crate::auth::policy::session_settings(req.template_name, req.template, req.identity)
                .map_err(MintError::Config)?;
        statements.extend(sql::role_settings(&name, &settings).map_err(MintError::Config)?);
        let comment = LeaseComment {
            lease_id: req.lease_id.to_owned(),
            identity: req.identity.subject.clone(),
            issuer: req.identity.issuer.clone(),
            template: req.template_name.to_owned(),
            database: req.database.to_owned(),
            expires_at: expiration,
            instance: self.instance.clone(),
            issued_at: rfc3339(UNIX_EPOCH + Duration::from_secs(now)),
            kind: kind.to_owned(),
        };
        let batch = sql::mint_batch(&statements, &name, &comment, finish);
        // The template's, SET LOCAL, the marker grant, the comment, and the
        // transaction's ends.
        let count = statements.len() + 5;
        let minted = MintedRole {
            name,
            password: creds.password,
            expires_at,
        };
        Ok((minted, batch, count))
    }

    /// Ends `role` in `database` now, as the template says (its owner, its
    /// own statements): one [`AdminClient::revoke_batch`] of one role. A role
    /// that no longer exists is success; a retained role (it owns objects
    /// and the template names no owner) is [`MintError::OwnsObjects`].
    pub async fn revoke(
        &self,
        role: &str,
        database: &str,
        template: &RoleTemplate,
    ) -> Result<(), MintError> {
        let target = Target {
            role: role.to_owned(),
            owner: template.owner.clone(),
            custom: template.revocation_statements.clone(),
        };
        let outcome = self
            .revoke_batch(database, std::slice::from_ref(&target))
            .await?
            .pop()
            .unwrap_or(Ok(Outcome::Gone))?;
        match outcome {
            Outcome::Dropped | Outcome::Gone => Ok(()),
            Outcome::NotManaged => Err(MintError::NotManaged {
                role: role.to_owned(),
            }),
            Outcome::Retained(detail) => Err(MintError::OwnsObjects {
                role: role.to_owned(),
                database: database.to_owned(),
                detail,
            }),
            Outcome::Elsewhere(dbs) => Err(MintError::OwnsObjects {
                role: role.to_owned(),
                database: database.to_owned(),
                detail: format!("objects or privileges in {}", dbs.join(", ")),
            }),
        }
    }
}

/// RFC 3339 UTC, whole seconds, as `VALID UNTIL` and lease comments take it.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `mint.instance`, else the host name, else "rolemint".
fn instance_name(configured: Option<&str>) -> String {
    let clean = |s: String| {
        let s = s.trim().to_owned();
        (!s.is_empty() && s.len() <= 255).then_some(s)
    };
    configured
        .map(str::to_owned)
        .and_then(clean)
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(clean))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(clean)
        })
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .and_then(clean)
        })
        .unwrap_or_else(|| "rolemint".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::tests::example()
    }

    #[test]
    fn new_checks_the_name_template() {
        let mut c = config();
        AdminClient::new(&c).unwrap();
        c.mint.name_template = "v-{{identity}}".into();
        assert_eq!(AdminClient::new(&c).unwrap_err().kind(), "config");
        c.mint.name_template = "V-{{random}}".into();
        assert_eq!(AdminClient::new(&c).unwrap_err().kind(), "config");
    }

    #[test]
    fn debug_shows_no_admin_password() {
        let mut c = config();
        c.backend.admin_password = Some(Secret::new("s3cret-admin-password"));
        let m = AdminClient::new(&c).unwrap();
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("s3cret-admin-password"), "{dbg}");
    }

    #[test]
    fn instance_name_prefers_the_config() {
        assert_eq!(instance_name(Some("node-a")), "node-a");
        assert!(!instance_name(None).is_empty());
        assert!(!instance_name(Some("  ")).is_empty());
    }
}

//! Admin connections to the backend, pooled per database.
//!
//! Minting and revoking run as `backend.admin_user`. `CREATE ROLE` is
//! cluster-wide, but `GRANT ... ON` objects, `DROP OWNED` and the template's
//! statements act on the database the connection is in, so each target
//! database has its own pool of at most `backend.admin_pool_size`
//! connections. A mint or revoke waits for one when all are busy (its
//! caller's timeout bounds the wait), so a burst of clients queues for a
//! few milliseconds each instead of opening an admin connection apiece and
//! exhausting the server's `max_connections`. A connection that broke (`is_closed`), timed
//! out, or was dropped in the middle of a statement is discarded, never
//! reused.
//!
//! Every wait is bounded: connecting by `backend.connect_timeout`, every
//! statement batch by `mint.statement_timeout` on our side *and* as the
//! session's `statement_timeout` on the server's side, so a statement we
//! gave up on does not run on forever.
//!
//! The admin password never crosses the wire in a form an eavesdropper can
//! use: unless `backend.allow_weak_auth` is set, every admin login reads
//! the server's messages through [`super::auth_guard`], which ends the
//! connection before tokio-postgres can answer a cleartext or MD5 password
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use super::auth_guard::{Guarded, GuardedConnect};
use super::pg_tls::MakeRustlsConnect;
use super::MintError;
use crate::config::{BackendConfig, BackendTls, ChannelBinding};
use crate::secret::Secret;
use tokio_postgres::tls::MakeTlsConnect;

/// Idle admin connections, per database.
pub struct AdminPool {
    /// Host, port, user, TLS mode; the database and the password are set
    /// per connect. No password here: `tokio_postgres::Config` keeps one
    /// in a plain `Vec<u8>` that it never zeroes, so it holds the password
    /// only in the copy one login uses, for as long as that login takes.
    base: tokio_postgres::Config,
    /// The admin password, zeroed when replaced or dropped. Behind a lock
    /// because root rotation changes it: open connections stay logged in,
    /// new ones use the new password.
    password: std::sync::RwLock<Secret>,
    /// rustls config when `backend.tls` is not `disable`.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Per database: idle connections, and permits for all of them.
    databases: Mutex<HashMap<String, DatabasePool>>,
    /// `backend.admin_pool_size`: connections per database, busy or idle.
    size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
    /// Run once on every new connection.
    session_setup: String,
    /// Where to connect (the `base` config holds them too, but
    /// `connect_raw` takes an open socket).
    addr: (String, u16),
    /// `backend.allow_weak_auth`: when false, logins go through the guard.
    allow_weak_auth: bool,
    /// `backend.admin_password_file`, read again when a login gets 28P01.
    password_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for AdminPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config redacts the password in its Debug output,
        // but there is no need to rely on that.
        f.debug_struct("AdminPool")
            .field("tls", &self.tls.is_some())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Rounds of reading the password files again after a refused login: each
/// round is one more rotation by another instance that finished meanwhile.
const MAX_PASSWORD_ROUNDS: usize = 4;

/// Where a rotation keeps the new password between writing it and renaming
/// it over `file` (`rotate.rs`).
pub(super) fn pending_password_file(file: &std::path::Path) -> std::path::PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".rotating");
    file.with_file_name(name)
}

impl AdminPool {
    pub fn new(
        backend: &BackendConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        statement_timeout: Duration,
    ) -> Result<AdminPool, MintError> {
        let password = backend
            .admin_password
            .as_ref()
            .ok_or_else(|| MintError::Config("backend.admin_password is not set".into()))?;
        let mut base = tokio_postgres::Config::new();
        base.host(&backend.host)
            .port(backend.port)
            .user(&backend.admin_user)
            .application_name("rolemint")
            .connect_timeout(backend.connect_timeout)
            .ssl_mode(match backend.tls() {
                BackendTls::Disable => SslMode::Disable,
                BackendTls::Require | BackendTls::VerifyFull => SslMode::Require,
            })
            .channel_binding(match backend.channel_binding {
                ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
                ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
                ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            })
            .ssl_negotiation(match backend.sslnegotiation {
                crate::config::SslNegotiation::Postgres => {
                    tokio_postgres::config::SslNegotiation::Postgres
                }
                crate::config::SslNegotiation::Direct => {
                    tokio_postgres::config::SslNegotiation::Direct
                }
            });
        if backend.tls() != BackendTls::Disable && tls.is_none() {
            return Err(MintError::Config(
                "backend.tls is enabled but no TLS client config was given".into(),
            ));
        }
        let ms = statement_timeout.as_millis().max(1);
        // synchronous_commit = off: a mint or revoke commit returns before
        // its WAL reaches disk. Losing such a commit in a database crash is
        // safe here: a lost CREATE ROLE means the backend login that follows
        // fails and the client retries; a lost DROP ROLE leaves a marked role
        // that the reaper finds and drops; and either way the role carries
        // VALID UNTIL, so it can never be used past its lease. In exchange
        // no mint waits for an fsync.
        //
        // search_path = pg_catalog: rolemint's own statements name every
        // table and function with its schema, and nothing a user can create
        // is searched. (A template's own statements get the database's
        // default path back, `SET LOCAL search_path TO DEFAULT`: they are
        // the operator's SQL, written for it.)
        let session_setup = format!(
            "SET synchronous_commit = off; SET application_name = 'rolemint'; SET statement_timeout = '{ms}ms'; SET search_path = pg_catalog"
        );
        Ok(AdminPool {
            base,
            password: std::sync::RwLock::new(password.clone()),
            tls,
            databases: Mutex::new(HashMap::new()),
            size: backend.admin_pool_size.max(1),
            connect_timeout: backend.connect_timeout,
            statement_timeout,
            session_setup,
            addr: (backend.host.clone(), backend.port),
            allow_weak_auth: backend.allow_weak_auth,
            password_file: backend.admin_password_file.clone(),
        })
    }

    /// The password new admin connections log in with (after a rotation).
    pub fn set_password(&self, password: &str) {
        *self.password.write().unwrap_or_else(|e| e.into_inner()) = Secret::new(password);
    }

    /// An admin connection to `database`: an idle one if any, else a new one
    /// once fewer than `size` are open. Waits while all are busy.
    pub async fn get(&self, database: &str) -> Result<PooledClient<'_>, MintError> {
        let permits = Arc::clone(
            &self
                .lock_databases()
                .entry(database.to_owned())
                .or_insert_with(|| DatabasePool {
                    idle: Vec::new(),
                    permits: Arc::new(Semaphore::new(self.size)),
                })
                .permits,
        );
        let permit = permits
            .acquire_owned()
            .await
            .map_err(|_| MintError::Backend {
                database: database.to_owned(),
                message: "admin pool closed".into(),
            })?;
        loop {
            let client = self
                .lock_databases()
                .get_mut(database)
                .and_then(|db| db.idle.pop());
            match client {
                Some(c) if !c.is_closed() => return Ok(self.wrap(database, c, permit)),
                Some(_) => continue, // broken while idle: drop it, try the next
                None => break,
            }
        }
        let client = self.connect(database).await?;
        Ok(self.wrap(database, client, permit))
    }

    fn lock_databases(&self) -> std::sync::MutexGuard<'_, HashMap<String, DatabasePool>> {
        self.databases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wrap(
        &self,
        database: &str,
        client: Client,
        permit: OwnedSemaphorePermit,
    ) -> PooledClient<'_> {
        let loaned = PooledClient {
            pool: self,
            database: database.to_owned(),
            client: Some(client),
            busy: false,
            _permit: permit,
        };
        self.publish(database, 0);
        loaned
    }

    /// Sets `rolemint_admin_pool_connections{database,state}` from the
    /// pool's books. `leaving` counts loans whose permit is still held but
    /// that are being returned (a `PooledClient` in its `Drop`).
    fn publish(&self, database: &str, leaving: usize) {
        let (idle, busy) = match self.lock_databases().get(database) {
            Some(db) => {
                let loaned = self.size.saturating_sub(db.permits.available_permits());
                (db.idle.len(), loaned.saturating_sub(leaving))
            }
            None => (0, 0),
        };
        crate::observe::metrics::admin_pool(database, "idle", idle);
        crate::observe::metrics::admin_pool(database, "busy", busy);
    }

    /// A new admin connection to `database`, outside the pool's bound and
    /// never returned to it (the reaper's sweep holds one for its lock).
    pub(super) async fn connect(&self, database: &str) -> Result<Client, MintError> {
        self.connect_with(database, None).await
    }

    /// [`AdminPool::connect`], and with `wake` set, a connection whose
    /// `NOTIFY` messages (and its end) wake `wake`: the store's `LISTEN`.
    ///
    /// A login refused with 28P01 is tried again with each other password
    /// `backend.admin_password_file` offers: another instance rotated it
    /// (`rotate.rs`), and every instance reading that file picks the new
    /// one up without a restart. A password is adopted only once it logs in.
    pub(super) async fn connect_with(
        &self,
        database: &str,
        wake: Option<Arc<Notify>>,
    ) -> Result<Client, MintError> {
        let refused = match self.connect_once(database, wake.clone(), None).await {
            Err(e) if e.sqlstate() == Some("28P01") => e,
            result => return result,
        };
        // Rotations by other instances may follow one another while this
        // login tries: read the files again after each refused round, until
        // a round offers nothing new (bounded).
        let mut tried: Vec<zeroize::Zeroizing<String>> = Vec::new();
        for _ in 0..MAX_PASSWORD_ROUNDS {
            let fresh: Vec<_> = self
                .file_passwords()
                .into_iter()
                .filter(|p| !tried.iter().any(|t| t.as_str() == p.as_str()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for candidate in fresh {
                match self
                    .connect_once(database, wake.clone(), Some(&candidate))
                    .await
                {
                    Ok(client) => {
                        tracing::info!("admin login refused (28P01): using the password now in the admin password file");
                        self.set_password(&candidate);
                        return Ok(client);
                    }
                    Err(e) if e.sqlstate() == Some("28P01") => tried.push(candidate),
                    Err(e) => return Err(e),
                }
            }
        }
        Err(refused)
    }

    /// The passwords other than the one in use that the password file
    /// offers: the file, then `<file>.rotating`, which holds the new
    /// password from just before a rotation's `ALTER ROLE` to the rename
    /// just after it (a login in that window is refused the old one while
    /// the file still holds it).
    fn file_passwords(&self) -> Vec<zeroize::Zeroizing<String>> {
        let Some(file) = &self.password_file else {
            return Vec::new();
        };
        let current = self.password.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<zeroize::Zeroizing<String>> = Vec::new();
        for path in [file.clone(), pending_password_file(file)] {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let text = zeroize::Zeroizing::new(text);
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty()
                || current.expose() == password
                || found.iter().any(|f| f.as_str() == password)
            {
                continue;
            }
            found.push(zeroize::Zeroizing::new(password.to_owned()));
        }
        found
    }

    /// One login, with `password` instead of the one in use when given.
    async fn connect_once(
        &self,
        database: &str,
        wake: Option<Arc<Notify>>,
        password: Option<&str>,
    ) -> Result<Client, MintError> {
        // The one copy of the password outside a `Secret` (postgres-protocol
        // makes its own for the SCRAM exchange): dropped, not zeroed, as
        // soon as the login is over.
        let mut config = self.base.clone();
        config.dbname(database);
        match password {
            Some(password) => config.password(password),
            None => config.password(
                self.password
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .expose(),
            ),
        };
        let connecting = self.log_in(&config, wake);
        let client = match tokio::time::timeout(self.connect_timeout, connecting).await {
            // Every failure to connect is `Connect`: no statement was sent
            // on this connection, so a mint that failed here created
            // nothing (the session does not queue its role for revocation).
            Err(_) => {
                return Err(MintError::Connect {
                    database: database.to_owned(),
                    sqlstate: None,
                    message: format!("no connection within {:?}", self.connect_timeout),
                })
            }
            Ok(Err(GuardedConnectError::Postgres(e))) => {
                return Err(MintError::connect(database, &e))
            }
            Ok(Err(GuardedConnectError::Io(e))) => {
                return Err(MintError::Connect {
                    database: database.to_owned(),
                    sqlstate: None,
                    message: e.to_string(),
                })
            }
            Ok(Ok(c)) => c,
        };
        // Logged in: the password's copy goes now, not after the setup.
        drop(config);
        self.set_up(client, database).await
    }

    /// The TCP (and TLS) connection and the login. Unless
    /// `allow_weak_auth`, the stream refuses a cleartext or MD5 password
    /// request (`auth_guard.rs`).
    async fn log_in(
        &self,
        config: &tokio_postgres::Config,
        wake: Option<Arc<Notify>>,
    ) -> Result<Client, GuardedConnectError> {
        if self.allow_weak_auth {
            return match &self.tls {
                None => Ok(spawn_connection(config.connect(NoTls).await?, wake)?),
                Some(tls) => Ok(spawn_connection(
                    config.connect(MakeRustlsConnect::new(tls.clone())).await?,
                    wake,
                )?),
            };
        }
        let tcp = tokio::net::TcpStream::connect((self.addr.0.as_str(), self.addr.1))
            .await
            .map_err(GuardedConnectError::Io)?;
        crate::tls::tune_tcp(&tcp);
        Ok(match &self.tls {
            None => spawn_connection(config.connect_raw(Guarded::new(tcp), NoTls).await?, wake)?,
            Some(tls) => {
                let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                    &mut MakeRustlsConnect::new(tls.clone()),
                    &self.addr.0,
                )
                .map_err(GuardedConnectError::Io)?;
                spawn_connection(config.connect_raw(tcp, GuardedConnect(tls)).await?, wake)?
            }
        })
    }

    /// The admin session's settings, on a fresh connection.
    async fn set_up(&self, client: Client, database: &str) -> Result<Client, MintError> {
        match tokio::time::timeout(
            self.statement_timeout,
            client.simple_query(&self.session_setup),
        )
        .await
        {
            Err(_) => Err(MintError::Timeout {
                what: "setting up the admin session",
                database: database.to_owned(),
                after: self.statement_timeout,
            }),
            Ok(Err(e)) => Err(MintError::query(database, &e)),
            Ok(Ok(_)) => {
                tracing::debug!(database, "admin connection opened");
                Ok(client)
            }
        }
    }

    /// `mint.statement_timeout`.
    pub(super) fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    fn put_back(&self, database: &str, client: Client) {
        if client.is_closed() {
            return;
        }
        // At most `size` exist (the permits see to it), so the list is
        // bounded too.
        if let Some(db) = self.lock_databases().get_mut(database) {
            db.idle.push(client);
        }
    }
}

/// Why an admin connection could not be opened.
enum GuardedConnectError {
    Io(std::io::Error),
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for GuardedConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        GuardedConnectError::Postgres(e)
    }
}

/// One database's admin connections.
struct DatabasePool {
    idle: Vec<Client>,
    /// `size` permits; a `PooledClient` holds one while on loan.
    permits: Arc<Semaphore>,
}

/// Drives the connection's socket on its own task; the `Client` talks to it
/// through a channel and sees `is_closed()` once it ends. With `wake`, every
/// notification wakes it, and so does the end of the connection (its owner
/// then finds `is_closed()` and reconnects). Notifications are not queued
/// here: a wake means "read again", and `Notify` keeps at most one.
fn spawn_connection<S, T>(
    (client, mut connection): (Client, tokio_postgres::Connection<S, T>),
    wake: Option<Arc<Notify>>,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Some(wake) = wake else {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
            return;
        };
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "listening admin connection ended");
                    break;
                }
                None => break,
            }
        }
        wake.notify_one();
    });
    Ok(client)
}

/// An admin connection on loan; goes back to the pool when dropped, unless
/// it broke or a statement was left unfinished.
pub struct PooledClient<'a> {
    pool: &'a AdminPool,
    database: String,
    client: Option<Client>,
    /// A batch was sent and its outcome not yet seen. If the future running
    /// it is dropped (the caller gave up), the session's state is unknown —
    /// possibly inside an aborted transaction — so it is not reused.
    busy: bool,
    /// The right to this connection; released after the connection went
    /// back to the idle list (fields drop after `Drop::drop`).
    _permit: OwnedSemaphorePermit,
}

impl PooledClient<'_> {
    /// Runs `sql` (one or more statements) in one round trip, bounded by
    /// `mint.statement_timeout`.
    ///
    /// After a database error the connection is rolled back: a batch that
    /// fails inside its own `BEGIN` leaves the session in an aborted
    /// transaction (the rest of a simple-query string is skipped, `COMMIT`
    /// included; `sql.rs` builds every batch from such blocks). If that
    /// `ROLLBACK` fails too, the connection is discarded.
    pub async fn batch(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, MintError> {
        self.batch_within(sql, self.pool.statement_timeout).await
    }

    /// [`PooledClient::batch`] with our side's wait set to `timeout`, for
    /// batches of several statements that may each wait (the server still
    /// bounds each statement by `mint.statement_timeout`).
    pub async fn batch_within(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, MintError> {
        let client = self.client.as_ref().ok_or_else(|| MintError::Backend {
            database: self.database.clone(),
            message: "admin connection already discarded".into(),
        })?;
        self.busy = true;
        let result = tokio::time::timeout(timeout, client.simple_query(sql)).await;
        match result {
            Ok(Ok(rows)) => {
                self.busy = false;
                Ok(rows)
            }
            Ok(Err(e)) => {
                let err = MintError::query(&self.database, &e);
                let clean = e.as_db_error().is_some()
                    && matches!(
                        tokio::time::timeout(timeout, client.simple_query("ROLLBACK")).await,
                        Ok(Ok(_))
                    );
                if clean {
                    self.busy = false;
                } else {
                    self.discard();
                }
                Err(err)
            }
            Err(_) => {
                // The server cancels the statement by its own
                // statement_timeout; this connection is not reused.
                self.discard();
                Err(MintError::Timeout {
                    what: "running admin statements",
                    database: self.database.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// Closes the connection instead of returning it.
    pub fn discard(&mut self) {
        self.client = None;
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !self.busy {
                self.pool.put_back(&self.database, client);
            }
        }
        // The permit is released after this body; this loan no longer counts.
        self.pool.publish(&self.database, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long-lived config of the pool holds no password (the one a
    /// login uses is set on its own copy); the password is a `Secret`,
    /// replaced whole by a rotation.
    #[test]
    fn the_pooled_config_holds_no_password() {
        let mut backend: BackendConfig =
            toml::from_str("host = \"127.0.0.1\"\nport = 5432\nadmin_user = \"rolemint_admin\"")
                .unwrap();
        backend.admin_password = Some(Secret::new("admin-password-0123456789"));
        let pool = AdminPool::new(&backend, None, Duration::from_secs(1)).unwrap();
        assert_eq!(pool.base.get_password(), None);
        assert_eq!(pool.base.get_user(), Some("rolemint_admin"));
        let current = || pool.password.read().unwrap().expose().to_owned();
        assert_eq!(current(), "admin-password-0123456789");
        pool.set_password("rotated-password-0123456789");
        assert_eq!(current(), "rotated-password-0123456789");
        assert_eq!(pool.base.get_password(), None);
    }
}

//! The integration test harness: a real PostgreSQL (started here, scram
//! auth, free port, `log_statement = 'all'`), the demo schema, and a
//! rolemint server in-process on port 0.
//!
//! Each test gets its own cluster and proxy, so tests that count roles
//! cannot see each other's. Everything stops on drop, also when a test
//! fails.

#![allow(dead_code)]

pub mod keys;
pub mod vault;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rolemint::cli::dev::cluster::{self, ClusterOptions, Demo, TempCluster};
use rolemint::config::Config;
use rolemint::proxy::server::Server;
use rolemint::runtime::state::Shared;
use rolemint::secret::Secret;
use tokio_util::sync::CancellationToken;

/// What a harness should look like.
pub struct Options {
    /// Plaintext clients allowed (tokio-postgres tests use NoTls).
    pub allow_plaintext: bool,
    /// Extra TOML appended to the config (more templates).
    pub extra_toml: String,
    /// `proxy.max_connections`.
    pub max_connections: usize,
    /// `proxy.max_handshakes`.
    pub max_handshakes: usize,
    /// `proxy.max_handshakes_per_source`.
    pub max_handshakes_per_source: usize,
    /// `backend.admin_pool_size`.
    pub admin_pool_size: usize,
    /// The PostgreSQL cluster; by default it logs every statement, so tests
    /// can read what reached the server.
    pub cluster: ClusterOptions,
    /// Capture rolemint's log in memory (see [`captured_log`]); off for
    /// benchmarks.
    pub capture_log: bool,
    /// `proxy.kernel_splice`.
    pub kernel_splice: bool,
    /// More `[backend]` keys (TLS to the backend), one per line.
    pub backend_toml: String,
    /// The demo's templates (`readonly`, `readwrite`) in the config; when
    /// false, `extra_toml` must define one.
    pub demo_templates: bool,
    /// The `[quotas]` table's keys. By default no per-principal session
    /// quota below `max_connections`: most tests connect as one identity.
    pub quotas: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_plaintext: true,
            extra_toml: String::new(),
            max_connections: 100,
            max_handshakes: 256,
            max_handshakes_per_source: 64,
            admin_pool_size: 8,
            cluster: ClusterOptions::default()
                .setting("log_statement", "all")
                .setting("log_connections", "on"),
            capture_log: true,
            kernel_splice: false,
            backend_toml: String::new(),
            demo_templates: true,
            quotas: "max_sessions_per_principal = 100000\n".into(),
        }
    }
}

pub struct Harness {
    pub cluster: TempCluster,
    pub demo: Demo,
    pub addr: SocketAddr,
    /// The admin listener's address, when the config turns it on.
    pub admin_addr: Option<SocketAddr>,
    pub config: Config,
    pub shared: Arc<Shared>,
    /// What only the proxy's sessions share: cancel keys, kernel splice.
    pub proxy: Arc<rolemint::proxy::Proxy>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// The rolemint log lines of this test process, to check for secrets.
pub fn captured_log() -> String {
    let buf = log_buffer().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static BUF: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUF.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        log_buffer()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            // Everything at debug, filtered as `rolemint serve` filters it.
            .with_env_filter(rolemint::observe::logging::filter(Some("debug")))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .try_init();
    });
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Harness {
        rolemint::tls::install_crypto_provider();
        if options.capture_log {
            init_logging();
        }
        let cluster_options = options.cluster.clone();
        let (cluster, demo) = tokio::task::spawn_blocking(move || {
            let cluster = TempCluster::start(cluster_options).expect("start PostgreSQL");
            let demo = cluster::provision_demo(&cluster).expect("provision the demo");
            (cluster, demo)
        })
        .await
        .expect("cluster task");

        let dir = tempfile::tempdir().expect("temp dir");
        write_self_signed_cert(dir.path());
        let text = config_toml(&cluster, &demo, &options);
        let mut config = Config::parse(&text).expect("test config parses");
        config.resolve(dir.path()).expect("resolve");
        config.validate().expect("test config is valid");
        let server = Server::bind(config.clone()).await.expect("bind rolemint");
        let addr = server.local_addr();
        let admin_addr = server.admin_addr();
        let shared = server.shared();
        let proxy = server.proxy();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Harness {
            cluster,
            demo,
            addr,
            admin_addr,
            config,
            shared,
            proxy,
            shutdown,
            server: Some(task),
            _dir: dir,
        }
    }

    /// A fresh token for `subject`.
    pub fn token(&self, subject: &str) -> Secret {
        rolemint::auth::identity::issue(&self.config.auth, subject, &[], Duration::from_secs(600))
            .expect("issue token")
    }

    /// A tokio-postgres connection string through the proxy (plaintext).
    pub fn conn_string(&self, template: &str, database: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={template} dbname={database} password={password} sslmode=disable connect_timeout=10",
            self.addr.port()
        )
    }

    /// Connects through the proxy with tokio-postgres, no TLS.
    pub async fn connect(
        &self,
        template: &str,
        database: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(
            &self.conn_string(template, database, password),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A session of `template` on appdb for a fresh token of `identity`.
    pub async fn session(&self, template: &str, identity: &str) -> tokio_postgres::Client {
        let token = self.token(identity);
        self.connect(template, "appdb", token.expose())
            .await
            .unwrap_or_else(|e| panic!("{template} session for {identity}: {e:?}"))
    }

    /// A superuser connection straight to PostgreSQL, to look behind the proxy.
    pub async fn superuser(&self) -> tokio_postgres::Client {
        self.superuser_on("appdb").await
    }

    /// A superuser connection to `database`.
    pub async fn superuser_on(&self, database: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &self.cluster.superuser_conn_string(database),
            tokio_postgres::NoTls,
        )
        .await
        .expect("superuser connects");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Names of the roles that are members of `rolemint_managed` now (not
    /// those that administer it: they hold it WITH ADMIN OPTION).
    pub async fn managed_roles(&self) -> Vec<String> {
        let su = self.superuser().await;
        let rows = su
            .query(
                "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'rolemint_managed' \
                 AND NOT m.admin_option AND r.rolname LIKE 'v-%' ORDER BY 1",
                &[],
            )
            .await
            .expect("list managed roles");
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Waits until no minted role is left, up to `within`; returns what is left.
    pub async fn wait_no_managed_roles(&self, within: Duration) -> Vec<String> {
        wait_until(within, || async { self.managed_roles().await.is_empty() }).await;
        self.managed_roles().await
    }

    /// Waits until rolemint's lease registry is empty (a session's lease
    /// leaves it just after its role is dropped), up to 5 s; returns what is
    /// left.
    pub async fn wait_no_leases(&self) -> usize {
        wait_until(Duration::from_secs(5), || async {
            self.shared.leases.is_empty()
        })
        .await;
        self.shared.leases.len()
    }

    /// Runs a client binary (psql, pgbench) with the token in PGPASSWORD,
    /// never on the command line.
    pub async fn run_client(
        &self,
        program: &Path,
        args: &[&str],
        token: &Secret,
        sslmode: &str,
    ) -> Output {
        tokio::process::Command::new(program)
            .args(args)
            .env("PGPASSWORD", token.expose())
            .env("PGSSLMODE", sslmode)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.addr.port().to_string())
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGUSER")
            .env_remove("PGDATABASE")
            .kill_on_drop(true)
            .output()
            .await
            .expect("client binary runs")
    }

    /// psql -XAt through the proxy.
    pub async fn psql(&self, template: &str, database: &str, token: &Secret, sql: &str) -> Output {
        let psql = self.cluster.psql().to_owned();
        self.run_client(
            &psql,
            &[
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                template,
                "-d",
                database,
                "-c",
                sql,
            ],
            token,
            "require",
        )
        .await
    }

    /// The proxy's certificate (self-signed, for localhost / 127.0.0.1).
    pub fn cert_path(&self) -> std::path::PathBuf {
        self._dir.path().join("cert.pem")
    }

    /// Stops the proxy, draining and revoking; an error when it failed or
    /// took longer than 90 s.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let Some(task) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(90), task).await {
            Ok(joined) => joined?,
            Err(_) => anyhow::bail!("rolemint did not shut down within 90 s"),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.server.take() {
            task.abort();
        }
    }
}

/// Checks `check` every 20 ms until it holds or `within` has passed, and
/// says whether it held: tests wait for conditions, never for fixed times.
pub async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `serve` config of a harness: TLS and (by default) plaintext, the demo
/// admin role and templates, plus `options.extra_toml`.
pub fn config_toml(cluster: &TempCluster, demo: &Demo, options: &Options) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
tls_cert = "cert.pem"
tls_key = "key.pem"
allow_plaintext = {plain}
max_connections = {max_connections}
max_handshakes = {max_handshakes}
max_handshakes_per_source = {max_handshakes_per_source}
handshake_timeout = "5s"
shutdown_grace = "2s"
kernel_splice = {kernel_splice}

[backend]
host = "127.0.0.1"
port = {port}
admin_user = "{admin}"
admin_password = "{admin_pw}"
admin_database = "postgres"
admin_pool_size = {admin_pool_size}
{backend_toml}

[auth]
issuer = "rolemint-test"
audience = "rolemint"
hs256_secret = "{secret}"

[quotas]
{quotas}

{templates}

{extra}
"#,
        plain = options.allow_plaintext,
        kernel_splice = options.kernel_splice,
        backend_toml = options.backend_toml,
        max_connections = options.max_connections,
        max_handshakes = options.max_handshakes,
        max_handshakes_per_source = options.max_handshakes_per_source,
        admin_pool_size = options.admin_pool_size,
        port = cluster.port(),
        admin = demo.admin_user,
        admin_pw = demo.admin_password.expose(),
        secret = HS256_SECRET,
        templates = if options.demo_templates {
            cluster::demo_templates_toml()
        } else {
            ""
        },
        extra = options.extra_toml,
        quotas = options.quotas,
    )
}

/// The local issuer key of test configs (tests only).
pub const HS256_SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// A self-signed certificate for localhost / 127.0.0.1 in `dir`.
pub fn write_self_signed_cert(dir: &Path) {
    rolemint::cli::dev::write_self_signed_cert(dir).expect("write self-signed certificate");
}

/// The SQLSTATE of a tokio-postgres error, if it carries one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|db| db.code().code().to_owned())
}

/// stdout + stderr of a finished client, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `rolemint serve` as a child process of the test, so a test can SIGKILL
/// it. Killed on drop.
pub struct ServeProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Harness {
    /// Starts `rolemint serve` (the debug binary) on this harness's cluster
    /// with `extra_toml` appended to the config and `env` set (e.g.
    /// `ROLEMINT_FAILPOINT`); returns once it accepts connections.
    pub async fn spawn_serve(&self, extra_toml: &str, env: &[(&str, &str)]) -> ServeProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        write_self_signed_cert(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = Options {
            extra_toml: extra_toml.to_owned(),
            ..Options::default()
        };
        let text = config_toml(&self.cluster, &self.demo, &options)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        let config_path = dir.path().join("rolemint.toml");
        std::fs::write(&config_path, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("rolemint.log")).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("ROLEMINT_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("rolemint serve starts");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut serve = ServeProcess { child, addr, dir };
        let up = wait_until(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(
            up && matches!(serve.child.try_wait(), Ok(None)),
            "rolemint serve did not start:\n{}",
            serve.log()
        );
        serve
    }

    /// Minted roles' backends running now: those logged in as a member of
    /// `rolemint_managed`, and those whose role is already gone.
    pub async fn minted_backends(&self) -> i64 {
        let su = self.superuser().await;
        su.query_one(
            "SELECT count(*) FROM pg_stat_activity a WHERE a.backend_type = 'client backend' \
             AND a.usesysid IS NOT NULL AND (a.usename IS NULL OR EXISTS (SELECT 1 \
             FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
             WHERE m.member = a.usesysid AND g.rolname = 'rolemint_managed' AND NOT m.admin_option))",
            &[],
        )
        .await
        .expect("count minted backends")
        .get(0)
    }
}

impl ServeProcess {
    /// Its config directory (`rolemint.toml`, `cert.pem`, `key.pem`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A tokio-postgres connection string through this proxy (plaintext).
    pub fn conn_string(&self, template: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={template} dbname=appdb password={password} sslmode=disable connect_timeout=10",
            self.addr.port()
        )
    }

    /// Connects through this proxy with tokio-postgres, no TLS.
    pub async fn connect(
        &self,
        template: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect_owned(self.conn_string(template, password)).await
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL rolemint serve");
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rolemint.log")).unwrap_or_default()
    }
}

/// Connects with tokio-postgres (no TLS) and drives the connection on its
/// own task; owns its string, so it can be spawned.
pub async fn connect_owned(
    conn_string: String,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conn_string, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Python (psycopg 3) for the cancel tests: `run_and_cancel(conn)` runs
/// `pg_sleep(60)` in a thread, waits until the server shows it running (a
/// cancel that reaches an idle backend is dropped, and libpq's ACTIVE only
/// means sent) through the superuser DSN in `ROLEMINT_TEST_SU_DSN`, cancels
/// it with `cancel_safe`, and prints `outcome ...` and `after still alive`.
pub const PY_RUN_AND_CANCEL: &str = r#"
import os, sys, threading, time, psycopg
from psycopg import pq

def run_and_cancel(conn):
    result = {}
    def run():
        try:
            conn.execute("SELECT pg_sleep(60)")
            result["outcome"] = "finished"
        except psycopg.errors.QueryCanceled as e:
            result["outcome"] = "cancelled " + e.sqlstate
    t = threading.Thread(target=run)
    t.start()
    # A cancel that reaches an idle backend is dropped, so wait until the
    # server itself shows the statement running (libpq's ACTIVE only means
    # sent), looking through a superuser connection at the backend's pid.
    watch = psycopg.connect(os.environ["ROLEMINT_TEST_SU_DSN"], autocommit=True)
    deadline = time.monotonic() + 20
    while not watch.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' AND wait_event = 'PgSleep'",
            (conn.info.backend_pid,)).fetchone():
        if time.monotonic() > deadline:
            sys.exit("the query never started")
        time.sleep(0.01)
    conn.cancel_safe(timeout=10)
    t.join(30)
    print("outcome", result.get("outcome"), flush=True)
    print("after", conn.execute("SELECT 'still alive'").fetchone()[0], flush=True)
"#;

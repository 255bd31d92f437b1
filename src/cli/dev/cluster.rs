//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `postgres` on a
//! free loopback port, stopped and deleted when dropped.
//!
//! `rolemint dev` and the integration tests both stand on this, so it is plain
//! synchronous `std::process` code that needs no runtime. The cluster is set
//! up the way rolemint is meant to meet PostgreSQL in production, except for
//! durability:
//!
//! - Every connection proves a password (SCRAM-SHA-256 in `pg_hba.conf`, for
//!   TCP and the Unix socket alike). A password-free method would make every
//!   authentication bug in rolemint invisible.
//! - It listens on 127.0.0.1 only, on a port nobody else holds, and never
//!   touches a PostgreSQL that happens to run on the machine.
//! - `fsync`, `synchronous_commit` and `full_page_writes` are off: the data is
//!   thrown away anyway, and tests run much faster.
//!
//! PostgreSQL refuses to run as root, so when started as root the server runs
//! as the `postgres` system user and the temp dir is handed over to it.
//!
//! No process may outlive the cluster: [`TempCluster::stop`] (also run by
//! `Drop`, so a panicking test cleans up too) asks for a fast shutdown and
//! kills after a deadline. A cluster kept in a `static` is never dropped, and
//! a process can die by SIGKILL, so each postmaster also gets a small watchdog
//! that stops it when the process that started it is gone.
//!
//! [`provision_demo`] then creates the demo schema that `rolemint dev`, the
//! Docker setup (`docker/initdb/`) and the tests share.
//!
//! This file is the cluster's life (options, start, clients, stop); beside
//! it, `binaries.rs` finds the PostgreSQL programs, `process.rs` runs them
//! (the server's user, free ports, captured output) and `demo.rs` holds the
//! demo schema and role templates.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};

use crate::secret::Secret;

/// Where PostgreSQL listens. Loopback only: the cluster is never reachable
/// from another machine.
const HOST: &str = "127.0.0.1";

/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a restarted server to accept connections again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts to start on a fresh free port. The port is found by binding port
/// 0 and letting it go, so another process can take it before PostgreSQL
/// binds it; a retry with another port settles that race.
const START_ATTEMPTS: usize = 5;

/// Lines of the server log quoted in a start error.
const LOG_TAIL_LINES: usize = 40;

/// Bound on a psql run by [`TempCluster::psql_as_superuser`] (server-side
/// `statement_timeout`, and libpq's connect timeout).
const PSQL_STATEMENT_TIMEOUT: &str = "300s";
const PSQL_CONNECT_TIMEOUT_SECS: &str = "10";

/// The cluster's pg_hba.conf: the lines `rolemint check` asks for.
///
/// Every connection proves a password: a method without one would hide every
/// authentication bug in rolemint. And a minted role (a member of
/// `rolemint_managed`) logs in only from rolemint's address, 127.0.0.1 here:
/// a session that gave its role a password (`ALTER ROLE CURRENT_USER
/// PASSWORD ...`) cannot use it around the proxy. Credential roles of the
/// Vault-compatible door are members of `rolemint_direct` too and log in
/// from anywhere; the first matching line wins. Any other address on the
/// loopback network (127.0.0.2, ...) plays "elsewhere" in the tests.
pub const HBA: &str = "\
# Written by rolemint's TempCluster (src/cli/dev/cluster.rs).
# TYPE  DATABASE  USER               ADDRESS        METHOD
local   all       +rolemint_managed                 reject
local   all       all                               scram-sha-256
host    all       +rolemint_direct   all            scram-sha-256
host    all       +rolemint_managed  127.0.0.1/32   scram-sha-256
host    all       +rolemint_managed  all            reject
host    all       all                127.0.0.0/8    scram-sha-256
";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`postgres`; the message says how to install them.
    #[error("{0}")]
    BinariesNotFound(String),
    /// Running as root without a `postgres` user to run the server as.
    #[error("{0}")]
    NoServerUser(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A PostgreSQL program ran and failed; `output` is what it printed.
    #[error("{what} failed ({status}):\n{output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    /// The server did not come up; the message quotes the server log.
    #[error("{0}")]
    Start(String),
}

impl ClusterError {
    /// No PostgreSQL server programs anywhere we look: how to get them.
    pub fn not_installed() -> ClusterError {
        ClusterError::BinariesNotFound(
            "PostgreSQL's server programs (initdb, postgres) were not found: \
             not in $ROLEMINT_PG_BIN (unset), not on PATH, not in \
             /usr/lib/postgresql/*/bin or /usr/pgsql-*/bin.\n\
             Install them:\n  \
               Debian/Ubuntu:  apt-get install -y postgresql\n  \
               Fedora:         dnf install postgresql-server\n  \
               macOS:          brew install postgresql\n\
             or set ROLEMINT_PG_BIN to the directory that holds initdb and postgres."
                .into(),
        )
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

/// How to set up a [`TempCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory in which the cluster's own temp dir is created (default: the
    /// system temp dir). The temp dir is deleted on stop either way. When
    /// running as root, the `postgres` user must be able to reach it.
    pub base_dir: Option<PathBuf>,
    /// The bootstrap superuser's name.
    pub superuser: String,
    /// `max_connections`; the proxy tests open many sessions at once.
    pub max_connections: u32,
    /// Extra `postgresql.conf` settings, e.g. `("log_statement", "all")`.
    /// Values are written as quoted strings, which PostgreSQL accepts for
    /// settings of every type.
    pub settings: Vec<(String, String)>,
    /// Longest wait for the server to accept connections.
    pub start_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            base_dir: None,
            superuser: "postgres".into(),
            max_connections: 200,
            settings: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterOptions {
    /// Adds a `postgresql.conf` setting.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// The unprivileged user the server runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// A running throwaway PostgreSQL cluster. Stopped, and its directory
/// deleted, by [`TempCluster::stop`] or on drop.
#[derive(Debug)]
pub struct TempCluster {
    /// The temp dir holding everything: `data/`, the server log, the Unix
    /// socket. `None` once removed.
    dir: Option<tempfile::TempDir>,
    /// Kept apart from `dir` so accessors still work after `stop`.
    root: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin: PgBinaries,
    superuser: String,
    superuser_password: Secret,
    port: u16,
    /// Set when we are root: initdb and postgres run as this user.
    run_as: Option<RunAs>,
    /// The postmaster, started directly (not through pg_ctl) so that its pid
    /// is ours to signal and wait for.
    postmaster: Option<Child>,
    /// A shell waiting for EOF on its stdin, whose write end only this
    /// process holds: when the process dies without running `stop` (a
    /// cluster in a `static`, SIGKILL), the watchdog stops the postmaster and
    /// deletes the directory.
    watchdog: Option<Child>,
    /// Keeps the watchdog's pipe open; dropped only with the watchdog.
    watchdog_stdin: Option<ChildStdin>,
}

impl TempCluster {
    /// Creates, configures and starts a cluster, and waits until it accepts
    /// connections.
    pub fn start(options: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bin = find_binaries()?;
        let run_as = server_user()?;

        let mut builder = tempfile::Builder::new();
        builder.prefix("rolemint-pg-");
        let dir = match &options.base_dir {
            Some(base) => {
                fs::create_dir_all(base)
                    .map_err(io_error(format!("cannot create {}", base.display())))?;
                builder.tempdir_in(base)
            }
            None => builder.tempdir(),
        }
        .map_err(io_error("cannot create the cluster's temp dir"))?;
        let root = dir.path().to_owned();
        // Private: the log may hold statements, the socket leads in.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(io_error(format!("cannot restrict {}", root.display())))?;

        // From here on `Drop` cleans up whatever has been set up so far.
        let mut cluster = TempCluster {
            dir: Some(dir),
            data_dir: root.join("data"),
            log_path: root.join("postgres.log"),
            root,
            bin,
            superuser: options.superuser.clone(),
            superuser_password: Secret::new(random_hex(32)?),
            port: 0,
            run_as,
            postmaster: None,
            watchdog: None,
            watchdog_stdin: None,
        };
        cluster.initdb()?;
        cluster.configure(&options)?;
        cluster.launch(&options)?;
        Ok(cluster)
    }

    /// Runs initdb with a random superuser password, passed in a file that
    /// exists only while initdb runs.
    fn initdb(&self) -> Result<(), ClusterError> {
        let pwfile = self.root.join("pwfile");
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(io_error("cannot write the password file"))?;
        writeln!(file, "{}", self.superuser_password.expose())
            .map_err(io_error("cannot write the password file"))?;
        drop(file);
        File::create(&self.log_path).map_err(io_error(format!(
            "cannot create {}",
            self.log_path.display()
        )))?;
        if let Some(user) = self.run_as {
            for path in [&self.root, &pwfile, &self.log_path] {
                nix::unistd::chown(path.as_path(), Some(user.uid), Some(user.gid)).map_err(
                    |e| ClusterError::Io {
                        what: format!("cannot hand {} to the postgres user", path.display()),
                        source: e.into(),
                    },
                )?;
            }
        }

        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&self.superuser)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--no-sync",
                "--no-locale",
                "--encoding=UTF8",
            ]);
        let output = run_capturing(cmd, None, "initdb");
        let _ = fs::remove_file(&pwfile);
        match output {
            Err(ClusterError::Command { what, status, output }) if self.run_as.is_some() => Err(ClusterError::Command {
                what,
                status,
                output: format!(
                    "{output}\n(initdb ran as the postgres user, since PostgreSQL refuses to run as root: \
                     it must be able to reach {})",
                    self.root.display()
                ),
            }),
            other => other.map(drop),
        }
    }

    /// Appends our settings to postgresql.conf and replaces pg_hba.conf.
    fn configure(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        // The socket lives beside the data dir, in a directory the server
        // user owns. Its path is limited to ~100 bytes (sun_path); a deep
        // base_dir gets no socket, which nothing here needs.
        let socket_dir = if self.root.as_os_str().len() < 80 {
            self.root.display().to_string()
        } else {
            String::new()
        };
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), HOST.into()),
            ("unix_socket_directories".into(), socket_dir),
            (
                "max_connections".into(),
                options.max_connections.to_string(),
            ),
            // Durability off: the cluster is thrown away.
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("password_encryption".into(), "scram-sha-256".into()),
            // Everything to stderr, which is the log file.
            ("log_destination".into(), "stderr".into()),
            ("logging_collector".into(), "off".into()),
            ("log_line_prefix".into(), "%m [%p] %q%u@%d ".into()),
        ];
        settings.extend(options.settings.iter().cloned());

        let mut conf =
            String::from("\n# Added by rolemint's TempCluster (src/cli/dev/cluster.rs).\n");
        for (name, value) in &settings {
            let _ = writeln!(conf, "{name} = '{}'", value.replace('\'', "''"));
        }
        let conf_path = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(io_error(format!("cannot write {}", conf_path.display())))?;

        let hba_path = self.data_dir.join("pg_hba.conf");
        fs::write(&hba_path, HBA).map_err(io_error(format!("cannot write {}", hba_path.display())))
    }

    /// Starts the postmaster on a free port, retrying on a port taken in the
    /// meantime, and waits until it accepts connections.
    fn launch(&mut self, options: &ClusterOptions) -> Result<(), ClusterError> {
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            let log_start = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            let pid = self.spawn_postmaster(port)?;
            match self.wait_ready(pid, port, options.start_timeout) {
                Ok(()) => return Ok(()),
                Err(Some(status)) => {
                    self.stop_postmaster();
                    let log = self.read_log_from(log_start);
                    let port_taken =
                        log.contains("could not bind") || log.contains("Address already in use");
                    if port_taken && attempt < START_ATTEMPTS {
                        continue;
                    }
                    return Err(ClusterError::Start(format!(
                        "postgres exited during startup ({status}); server log ({}):\n{}",
                        self.log_path.display(),
                        tail(&log, LOG_TAIL_LINES)
                    )));
                }
                Err(None) => {
                    self.stop_postmaster();
                    let log = self.read_log_from(log_start);
                    return Err(ClusterError::Start(format!(
                        "postgres did not accept connections on {HOST}:{port} within {:?}; server log ({}):\n{}",
                        options.start_timeout,
                        self.log_path.display(),
                        tail(&log, LOG_TAIL_LINES)
                    )));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Starts the postmaster on `port` with its watchdog; returns its pid.
    fn spawn_postmaster(&mut self, port: u16) -> Result<u32, ClusterError> {
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(io_error(format!("cannot open {}", self.log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_error("cannot share the log file"))?;

        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C in the terminal reaches the
            // process that owns the cluster, which then stops it in order,
            // rather than killing PostgreSQL under a running proxy.
            .process_group(0);
        let child = cmd.spawn().map_err(io_error(format!(
            "cannot run {}",
            self.bin.dir.join("postgres").display()
        )))?;
        let pid = child.id();
        self.postmaster = Some(child);
        self.port = port;
        self.spawn_watchdog(pid);
        Ok(pid)
    }

    /// Polls until the server is up: `postmaster.pid` names our child, our
    /// port and the status `ready`, and a startup packet is answered with an
    /// authentication request. `Err(Some)` when the postmaster exited,
    /// `Err(None)` on timeout.
    fn wait_ready(
        &mut self,
        pid: u32,
        port: u16,
        timeout: Duration,
    ) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            if let Some(child) = self.postmaster.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return Err(Some(status)),
                    Ok(None) => {}
                    Err(_) => return Err(None),
                }
            }
            let pid_file_ready = fs::read_to_string(&pid_file).is_ok_and(|text| {
                // Lines: pid, data dir, start time, port, socket dir,
                // listen address, shmem key, status.
                let lines: Vec<&str> = text.lines().collect();
                lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
                    && lines.get(3).map(|l| l.trim()) == Some(port.to_string().as_str())
                    && lines.get(7).is_some_and(|l| l.trim() == "ready")
            });
            if pid_file_ready && answers_startup(port, &self.superuser) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the watchdog for postmaster `pid`. Best effort: without `sh`
    /// the cluster still works, it just relies on `stop`/`Drop` alone.
    fn spawn_watchdog(&mut self, pid: u32) {
        // `read` sees EOF only once every holder of the pipe's write end is
        // gone, i.e. when this process has exited (std's pipes are CLOEXEC,
        // so no other child inherits it).
        const SCRIPT: &str = r#"
while read -r _; do :; done
kill -INT "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$1" 2>/dev/null
rm -rf -- "$2"
"#;
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("rolemint-pg-watchdog")
            .arg(pid.to_string())
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut child) => {
                self.watchdog_stdin = child.stdin.take();
                self.watchdog = Some(child);
            }
            Err(e) => tracing::warn!("no watchdog for the temp cluster (cannot run /bin/sh: {e})"),
        }
    }

    /// Stops the server (fast shutdown, then SIGKILL after 10 s) and deletes
    /// the directory. Idempotent.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        self.stop_postmaster();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            dir.close()
                .map_err(io_error(format!("cannot remove {}", path.display())))?;
        }
        Ok(())
    }

    /// Stops the server and keeps its data directory, so that
    /// [`TempCluster::restart`] brings it back: for tests of what happens
    /// while the database is down.
    pub fn stop_server(&mut self) {
        self.stop_postmaster();
    }

    /// Restarts the server on the same port and data directory, as
    /// `pg_ctl restart -m fast` does: sessions are ended (FATAL 57P01),
    /// open transactions rolled back; returns once it accepts connections
    /// again. For tests of what survives a database restart.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop_postmaster();
        let log_start = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let pid = self.spawn_postmaster(self.port)?;
        match self.wait_ready(pid, self.port, RESTART_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.stop_postmaster();
                Err(ClusterError::Start(format!(
                    "postgres did not come back on {HOST}:{} within {RESTART_TIMEOUT:?}; server log:\n{}",
                    self.port,
                    tail(&self.read_log_from(log_start), LOG_TAIL_LINES)
                )))
            }
        }
    }

    fn stop_postmaster(&mut self) {
        // The watchdog goes first: once we reap the postmaster its pid may be
        // reused, and the watchdog must not signal a stranger.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.watchdog_stdin = None;

        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(child.id() as i32);
        // SIGINT is PostgreSQL's "fast" shutdown: roll back open
        // transactions, end sessions, checkpoint, exit.
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            pid = pid.as_raw(),
            "temp cluster ignored fast shutdown for {STOP_TIMEOUT:?}; killing it"
        );
        // Backends are not in the postmaster's process group (each calls
        // setsid), so they are found and killed one by one. They would exit
        // on their own on noticing the postmaster's death, but not at once.
        let backends = children_of(pid.as_raw());
        let _ = kill(pid, Signal::SIGKILL);
        for backend in backends {
            let _ = kill(Pid::from_raw(backend), Signal::SIGKILL);
        }
        let _ = child.wait();
    }

    /// A command for a server program, run as the server user when we are
    /// root, from inside the cluster directory (the server user may not be
    /// allowed into our working directory).
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.dir.join(program));
        cmd.current_dir(&self.root).env_remove("PGDATA");
        if let Some(user) = self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd
    }

    /// A command for a client program (psql, pgbench) that connects as the
    /// superuser to `db`. The password travels in the environment, never on
    /// the command line (where `ps` shows it).
    fn superuser_client(&self, program: &Path, db: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-h")
            .arg(HOST)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.superuser)
            .env("PGPASSWORD", self.superuser_password.expose())
            .env("PGCONNECT_TIMEOUT", PSQL_CONNECT_TIMEOUT_SECS)
            .env("PGSSLMODE", "disable")
            .env("PGDATABASE", db)
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        cmd
    }

    /// Runs `sql` with psql as the superuser in `db` and returns what it
    /// printed (`-At`: unaligned, tuples only). The script is fed on stdin, so
    /// statements run one by one (`CREATE DATABASE` works) and psql
    /// meta-commands such as `\connect` are allowed; the first error stops it.
    pub fn psql_as_superuser(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.superuser_client(&self.bin.psql, db);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
            .env(
                "PGOPTIONS",
                format!("-c statement_timeout={PSQL_STATEMENT_TIMEOUT}"),
            );
        let output = run_capturing(cmd, Some(sql), "psql")?;
        Ok(output.trim_end_matches('\n').to_owned())
    }

    fn read_log_from(&self, offset: u64) -> String {
        let mut text = self.read_log();
        let offset = (offset as usize).min(text.len());
        if text.is_char_boundary(offset) {
            text.drain(..offset);
        }
        text
    }

    /// The server log so far (empty once the cluster is removed).
    pub fn read_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn superuser_password(&self) -> &Secret {
        &self.superuser_password
    }

    /// A libpq / tokio-postgres connection string for the superuser. It
    /// holds the password: do not log it.
    pub fn superuser_conn_string(&self, db: &str) -> String {
        format!(
            "host={HOST} port={} user={} password={} dbname={db}",
            self.port,
            self.superuser,
            self.superuser_password.expose()
        )
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// The cluster's temp dir (data dir, log, socket).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin.dir
    }

    pub fn psql(&self) -> &Path {
        &self.bin.psql
    }

    pub fn pgbench(&self) -> &Path {
        &self.bin.pgbench
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("temp cluster cleanup: {e}");
        }
    }
}

mod binaries;
mod demo;
mod process;

pub use self::binaries::{find_binaries, PgBinaries};
pub use self::demo::{
    demo_templates_toml, init_pgbench_tables, provision_demo, Demo, DEMO_ADMIN_USER, DEMO_DATABASE,
};
pub(crate) use self::process::random_hex;
use self::process::{answers_startup, children_of, free_port, run_capturing, server_user, tail};

#[cfg(test)]
mod tests;

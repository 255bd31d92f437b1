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

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

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

/// Name of the demo database.
pub const DEMO_DATABASE: &str = "appdb";

/// Name of the demo admin role rolemint connects as.
pub const DEMO_ADMIN_USER: &str = "rolemint_admin";

/// The demo's global roles, database and schema, as psql input. The same file
/// provisions the Docker setup; there the admin password comes from the
/// environment (`\getenv`), here the line is replaced by a `\set` with a
/// SCRAM verifier (see [`provision_demo`]).
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
# Written by rolemint's TempCluster (src/pgcluster.rs).
# TYPE  DATABASE  USER               ADDRESS        METHOD
local   all       +rolemint_managed                 reject
local   all       all                               scram-sha-256
host    all       +rolemint_direct   all            scram-sha-256
host    all       +rolemint_managed  127.0.0.1/32   scram-sha-256
host    all       +rolemint_managed  all            reject
host    all       all                127.0.0.0/8    scram-sha-256
";

const DEMO_SQL: &str = include_str!("../../../docker/initdb/10-rolemint-demo.sql");

/// The line of [`DEMO_SQL`] that [`provision_demo`] replaces.
const DEMO_SQL_GETENV: &str = "\\getenv admin_password ROLEMINT_ADMIN_PASSWORD";

/// pgbench tables, handed to `app_read` after `pgbench -i`.
const DEMO_GRANTS_SQL: &str = "\
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_read;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO app_read;
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
// Finding the binaries
// ---------------------------------------------------------------------------

/// Where the PostgreSQL programs are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    /// Directory holding `initdb` and `postgres`.
    pub dir: PathBuf,
    /// `psql`: next to `initdb`, else on PATH.
    pub psql: PathBuf,
    /// `pgbench`: next to `initdb`, else on PATH.
    pub pgbench: PathBuf,
}

/// Finds the server binaries: `$ROLEMINT_PG_BIN`, else the directory of
/// `initdb` on PATH, else the newest of the usual per-version directories
/// (Debian's `/usr/lib/postgresql/*/bin`, PGDG's `/usr/pgsql-*/bin`,
/// Homebrew's keg-only `postgresql@*`).
pub fn find_binaries() -> Result<PgBinaries, ClusterError> {
    let has_server =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"));

    let dir = if let Some(dir) = std::env::var_os("ROLEMINT_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !has_server(&dir) {
            return Err(ClusterError::BinariesNotFound(format!(
                "ROLEMINT_PG_BIN={} holds no initdb and postgres executables; \
                 point it at PostgreSQL's bin directory (`pg_config --bindir`)",
                dir.display()
            )));
        }
        dir
    } else if let Some(dir) = path_dirs().into_iter().find(|d| has_server(d)) {
        dir
    } else if let Some(dir) = versioned_dirs().into_iter().rev().find(|d| has_server(d)) {
        dir
    } else {
        return Err(ClusterError::not_installed());
    };
    let beside_or_on_path = |name: &str| {
        let beside = dir.join(name);
        if is_executable(&beside) {
            return beside;
        }
        path_dirs()
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
            .unwrap_or(beside)
    };
    Ok(PgBinaries {
        psql: beside_or_on_path("psql"),
        pgbench: beside_or_on_path("pgbench"),
        dir,
    })
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Per-version install directories, oldest first.
fn versioned_dirs() -> Vec<PathBuf> {
    // (parent, prefix of the version part, path below the versioned dir)
    let layouts: [(&str, &str, &str); 4] = [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ];
    let mut found: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix, below) in layouts {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            let Ok(version) = version
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            found.push((version, entry.path().join(below)));
        }
    }
    found.sort();
    found.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

        let mut conf = String::from("\n# Added by rolemint's TempCluster (src/pgcluster.rs).\n");
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

/// Root may not run PostgreSQL; find the user that will.
fn server_user() -> Result<Option<RunAs>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let explain = |why: String| {
        ClusterError::NoServerUser(format!(
            "running as root, and PostgreSQL refuses to run as root, so the throwaway cluster \
             runs as the `postgres` system user; {why}. Create it \
             (`useradd --system --user-group --no-create-home postgres`; installing the \
             PostgreSQL package usually does) or run as a non-root user."
        ))
    };
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(RunAs {
            uid: user.uid,
            gid: user.gid,
        })),
        Ok(None) => Err(explain("there is no such user".into())),
        Err(e) => Err(explain(format!("looking it up failed ({e})"))),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_error("cannot find a free port on 127.0.0.1"))
}

/// Sends a StartupMessage and checks that the server answers with an
/// authentication request ('R'): it accepts connections. While it starts up
/// it answers with an ErrorResponse (57P03) instead. We then hang up, which a
/// server waiting for a password takes silently.
fn answers_startup(port: u16, user: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut body = 196_608_i32.to_be_bytes().to_vec(); // protocol 3.0
    for (key, value) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    let mut tag = [0_u8; 1];
    stream.write_all(&message).is_ok() && stream.read_exact(&mut tag).is_ok() && tag[0] == b'R'
}

/// Child processes of `pid`, from /proc (Linux only; elsewhere the backends
/// exit by themselves once the postmaster is gone).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Runs `cmd` to completion, feeding `stdin`, and returns its stdout; on
/// failure the error holds stdout and stderr.
fn run_capturing(
    mut cmd: Command,
    stdin: Option<&str>,
    what: &str,
) -> Result<String, ClusterError> {
    let program = cmd.get_program().to_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_error(format!(
        "cannot run {}",
        Path::new(&program).display()
    )))?;
    // Written from another thread: a large script and a large output would
    // otherwise block each other.
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let output = child
        .wait_with_output()
        .map_err(io_error(format!("waiting for {what}")))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(ClusterError::Command {
        what: what.to_owned(),
        status: output.status.to_string(),
        output: format!("{stdout}{stderr}").trim_end().to_owned(),
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `bytes` random bytes from the system RNG (aws-lc), hex encoded: safe to
/// put in a connection string, a SQL literal or TOML unquoted.
pub(crate) fn random_hex(bytes: usize) -> Result<String, ClusterError> {
    let mut buf = vec![0_u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| ClusterError::Io {
        what: "the system random number generator failed".into(),
        source: std::io::Error::other("aws_lc_rs::rand::fill"),
    })?;
    Ok(buf
        .iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }))
}

// ---------------------------------------------------------------------------
// The demo schema
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    fn process_exists(pid: u32) -> bool {
        // Signal 0 checks for existence; a zombie would still count, but
        // `stop` reaps the postmaster.
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[test]
    fn starts_answers_and_leaves_nothing_behind() {
        let mut cluster =
            TempCluster::start(ClusterOptions::default().setting("log_statement", "all")).unwrap();
        let out = cluster
            .psql_as_superuser("postgres", "SELECT 40 + 2;")
            .unwrap();
        assert_eq!(out, "42");

        let hba = fs::read_to_string(cluster.data_dir().join("pg_hba.conf")).unwrap();
        assert!(
            !hba.contains("trust"),
            "pg_hba.conf must not allow password-free logins:\n{hba}"
        );
        let method = cluster
            .psql_as_superuser(
                "postgres",
                "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules \
                 WHERE error IS NULL;",
            )
            .unwrap();
        assert_eq!(method, "reject,scram-sha-256");

        // A wrong password is refused: the cluster really asks for one.
        let mut wrong = cluster.superuser_client(cluster.psql(), "postgres");
        wrong
            .env("PGPASSWORD", "wrong")
            .args(["-X", "-c", "SELECT 1"]);
        let err = run_capturing(wrong, None, "psql").unwrap_err().to_string();
        assert!(err.contains("password authentication failed"), "{err}");

        assert!(
            cluster.read_log().contains("SELECT 40 + 2"),
            "log_statement = 'all' is applied"
        );

        let pid = cluster.pid().unwrap();
        let dir = cluster.dir().to_owned();
        assert!(process_exists(pid));
        cluster.stop().unwrap();
        assert!(!process_exists(pid), "postmaster {pid} still runs");
        assert!(!dir.exists(), "{} still exists", dir.display());
        cluster.stop().unwrap(); // idempotent
        assert!(cluster.pid().is_none());
    }

    #[test]
    fn drop_stops_the_server_even_on_panic() {
        let cluster = TempCluster::start(ClusterOptions::default()).unwrap();
        let (pid, dir) = (cluster.pid().unwrap(), cluster.dir().to_owned());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _cluster = cluster;
            panic!("a failing test");
        }));
        assert!(unwound.is_err());
        assert!(!process_exists(pid));
        assert!(!dir.exists());
    }

    #[test]
    fn provisions_the_demo() {
        let cluster =
            TempCluster::start(ClusterOptions::default().setting("log_statement", "all")).unwrap();
        let demo = provision_demo(&cluster).unwrap();
        assert_eq!(demo.database, "appdb");

        // The admin logs in with its password and holds what rolemint needs.
        let mut admin = Command::new(cluster.psql());
        admin
            .args(["-X", "-At", "-h", HOST, "-p", &cluster.port().to_string()])
            .args(["-U", &demo.admin_user, "-d", "appdb", "-c"])
            .arg(
                "SELECT rolcreaterole, pg_has_role('pg_signal_backend', 'MEMBER'), \
                 pg_has_role('app_read', 'USAGE WITH ADMIN OPTION'), \
                 pg_has_role('app_owner', 'USAGE WITH ADMIN OPTION'), \
                 rolsuper \
                 FROM pg_roles WHERE rolname = current_user",
            )
            .env("PGPASSWORD", demo.admin_password.expose())
            .env_remove("PGOPTIONS");
        assert_eq!(
            run_capturing(admin, None, "psql as admin").unwrap().trim(),
            "t|t|t|t|f"
        );

        let owners = cluster
            .psql_as_superuser(
                "appdb",
                "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'public';",
            )
            .unwrap();
        assert_eq!(owners, "app_owner");
        let readable = cluster
            .psql_as_superuser(
                "appdb",
                "SELECT count(*) FILTER (WHERE NOT has_table_privilege('app_read', oid, 'SELECT')), count(*) \
                 FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r';",
            )
            .unwrap();
        assert_eq!(readable, "0|5", "every table readable by app_read");
        let rows = cluster
            .psql_as_superuser("appdb", "SELECT count(*) FROM pgbench_accounts;")
            .unwrap();
        assert_eq!(rows, "100000");

        // Only a verifier reached the server.
        assert!(!cluster.read_log().contains(demo.admin_password.expose()));
    }

    #[test]
    fn demo_templates_are_valid_config() {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_plaintext = true\n\
             [backend]\nhost = \"127.0.0.1\"\nadmin_user = \"a\"\nadmin_password = \"p\"\n\
             [auth]\nhs256_secret = \"{}\"\n{}",
            "k".repeat(32),
            demo_templates_toml()
        );
        let config = crate::config::Config::parse(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.roles.keys().collect::<Vec<_>>(),
            ["readonly", "readwrite"]
        );
    }

    #[test]
    fn a_cluster_can_live_in_a_static() {
        fn check<T: Send + Sync>() {}
        check::<TempCluster>();
    }

    #[test]
    fn random_hex_is_random() {
        let (a, b) = (random_hex(32).unwrap(), random_hex(32).unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}

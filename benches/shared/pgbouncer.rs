//! PgBouncer in session pooling mode: the yardstick for another proxy doing
//! a similar job. Optional: its rows are skipped when it is not installed.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use super::{BENCH_ROLE, DATABASE};

pub struct PgBouncer {
    child: tokio::process::Child,
    pub port: u16,
    /// The process, for its CPU time.
    pub pid: u32,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    pub fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    }
    /// Session pooling on a free loopback port, SCRAM for clients with the
    /// bench role's verifier (which PgBouncer then also uses to log in to
    /// PostgreSQL). As the `postgres` user when we are root.
    pub async fn start(bin: &Path, pg_port: u16, verifier: &str) -> anyhow::Result<PgBouncer> {
        let run_as = if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .ok_or_else(|| anyhow!("running as root and there is no postgres user"))?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("rolemint-bench-pgbouncer-")
            .tempdir()
            .context("temp dir")?;
        let mut last = anyhow!("no attempt");
        // The free port may be taken before PgBouncer binds it: retry.
        for _ in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let ini = dir.path().join("pgbouncer.ini");
            let users = dir.path().join("userlist.txt");
            let log = dir.path().join("pgbouncer.log");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     {DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE}\n\
                     \n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = scram-sha-256\n\
                     auth_file = {users}\n\
                     pool_mode = session\n\
                     max_client_conn = 200\n\
                     default_pool_size = 20\n\
                     client_tls_sslmode = disable\n\
                     server_tls_sslmode = disable\n\
                     logfile = {log}\n\
                     log_connections = 0\n\
                     log_disconnections = 0\n",
                    users = users.display(),
                    log = log.display(),
                ),
            )?;
            std::fs::write(&users, format!("\"{BENCH_ROLE}\" \"{verifier}\"\n"))?;
            std::fs::write(&log, "")?;
            if let Some((uid, gid)) = run_as {
                for path in [dir.path(), &ini, &users, &log] {
                    nix::unistd::chown(path, Some(uid), Some(gid))
                        .with_context(|| format!("chown {}", path.display()))?;
                }
            }
            let mut cmd = tokio::process::Command::new(bin);
            cmd.arg(&ini)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if let Some((uid, gid)) = run_as {
                cmd.uid(uid.as_raw()).gid(gid.as_raw());
            }
            let mut child = cmd.spawn().context("spawning pgbouncer")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last = anyhow!("pgbouncer exited with {status}:\n{}", super::tail(&log, 10));
                    break;
                }
                if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .await
                    .is_ok()
                {
                    let pid = child.id().ok_or_else(|| anyhow!("pgbouncer exited"))?;
                    return Ok(PgBouncer {
                        child,
                        port,
                        pid,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    bail!("pgbouncer did not listen on port {port} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(last)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

//! rolemint as its own `rolemint serve` process (the release binary, as
//! deployed), and what is measured with a client loop rather than pgbench:
//! connect latency, RSS per idle session, RSS over churned sessions.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rolemint::secret::Secret;
use tokio::sync::Semaphore;

use super::common::{self, Harness, Options};
use super::DATABASE;

/// A `rolemint serve` child process with the harness's config.
pub struct Proxy {
    child: tokio::process::Child,
    pub port: u16,
    pub pid: u32,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy on a free port with `options`' config and waits
    /// until it accepts connections.
    pub async fn start(h: &Harness, options: &Options) -> anyhow::Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix("rolemint-bench-proxy-")
            .tempdir()?;
        common::write_self_signed_cert(dir.path());
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let toml = common::config_toml(&h.cluster, &h.demo, options).replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        let config = dir.path().join("rolemint.toml");
        std::fs::write(&config, toml)?;
        let log = std::fs::File::create(dir.path().join("rolemint.log"))?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("ROLEMINT_LOG", log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning rolemint serve")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("rolemint exited at once"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("rolemint.log"))?;
                bail!(
                    "rolemint serve exited with {status}:\n{}",
                    super::tail(&log, 10)
                );
            }
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return Ok(Proxy {
                    child,
                    port,
                    pid,
                    dir,
                });
            }
            if Instant::now() > deadline {
                bail!("rolemint serve did not listen on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory now, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        super::procfs::rss_kib(self.pid)
    }

    /// Resident memory now, in KiB: (anonymous, file-backed).
    pub fn rss_parts_kib(&self) -> anyhow::Result<(u64, u64)> {
        super::procfs::rss_parts_kib(self.pid)
    }

    /// The proxy's self-signed certificate (PEM), for a client to trust.
    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// What the proxy logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rolemint.log")).unwrap_or_default()
    }

    /// SIGTERM (drain, revoke every lease), then a bounded wait. With
    /// `ROLEMINT_BENCH_PROXY_LOG` set the log is kept, as
    /// `target/bench/rolemint-PORT.log`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let stopped = self.stop_inner().await;
        if std::env::var_os("ROLEMINT_BENCH_PROXY_LOG").is_some() {
            let kept = super::bench_dir().join(format!("rolemint-{}.log", self.port));
            std::fs::create_dir_all(super::bench_dir())?;
            std::fs::copy(self.dir.path().join("rolemint.log"), &kept)?;
            eprintln!("proxy log kept: {}", kept.display());
        }
        stopped
    }

    async fn stop_inner(&mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    let log = std::fs::read_to_string(self.dir.path().join("rolemint.log"))?;
                    bail!(
                        "rolemint serve exited with {status}:\n{}",
                        super::tail(&log, 10)
                    );
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("rolemint serve did not stop within 30 s of SIGTERM")
            }
        }
    }
}

/// The proxy's `ROLEMINT_LOG`: `warn`, or `ROLEMINT_BENCH_PROXY_LOG` (to
/// read what a profiled row did, e.g. `rolemint=debug`).
fn log_filter() -> String {
    std::env::var("ROLEMINT_BENCH_PROXY_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// A tokio-postgres connection to `port`, plaintext or (with `tls`)
/// `sslmode=require` over rustls; the client is usable (and the first
/// ReadyForQuery received) when this returns.
pub async fn connect(
    port: u16,
    user: &str,
    secret: &Secret,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<tokio_postgres::Client> {
    let sslmode = if tls.is_some() { "require" } else { "disable" };
    let conn = format!(
        "host=127.0.0.1 port={port} user={user} dbname={DATABASE} sslmode={sslmode} connect_timeout=10"
    );
    let mut config: tokio_postgres::Config = conn.parse()?;
    config.password(secret.expose());
    let client = match tls {
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
        }
        Some(tls) => {
            let make = rolemint::pg::MakeRustlsConnect::new(Arc::clone(tls));
            let (client, connection) = config.connect(make).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// A rustls client trusting the PEM certificate `ca` (the targets' own
/// self-signed ones). With `resume` it keeps sessions and offers them on
/// the next connection, as rustls, Go and JDBC clients do; without, every
/// handshake is a full one, as libpq's are.
pub fn tls_client(ca: &std::path::Path, resume: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(rolemint::tls::root_store(ca)?)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Connect latency, one connection at a time: from the TCP connect to the
/// first ReadyForQuery, as a client sees it (µs, each connection closed
/// before the next).
pub async fn connect_latencies(
    port: u16,
    user: &str,
    secret: &Secret,
    count: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Vec<u32>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let client = connect(port, user, secret, tls).await?;
        samples.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        drop(client);
    }
    Ok(samples)
}

/// RSS before and after `count` idle sessions are open at once.
pub struct IdleMemory {
    pub sessions: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

impl IdleMemory {
    pub fn per_session_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.sessions.max(1) as f64
    }
}

pub async fn idle_memory(
    proxy: &Proxy,
    user: &str,
    token: &Secret,
    count: usize,
) -> anyhow::Result<IdleMemory> {
    let before_kib = proxy.rss_kib()?;
    // 16 logins at a time: the admin pool and PostgreSQL take them in turn.
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let gate = gate.clone();
        let (port, user, token) = (proxy.port, user.to_owned(), token.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            connect(port, &user, &token, None).await
        });
    }
    let mut clients = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined??);
    }
    let after_kib = proxy.rss_kib()?;
    // Every session answers: they are sessions, not half-open sockets.
    for client in clients.iter().step_by(100) {
        client.simple_query("SELECT 1").await?;
    }
    drop(clients);
    Ok(IdleMemory {
        sessions: count,
        before_kib,
        after_kib,
    })
}

/// RSS sampled while `total` sessions each connect, run one query and
/// close, `concurrency` at a time.
pub struct ChurnMemory {
    pub sessions: usize,
    /// (sessions completed, RSS KiB), the first after a warm-up tenth.
    pub samples: Vec<(usize, u64)>,
}

impl ChurnMemory {
    /// RSS growth from the first sample (after the warm-up) to the last.
    pub fn growth_kib(&self) -> i64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(first), Some(last)) => last.1 as i64 - first.1 as i64,
            _ => 0,
        }
    }
}

pub async fn churn_memory(
    proxy: &Proxy,
    user: &str,
    token: &Secret,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<ChurnMemory> {
    let step = (total / 10).max(1);
    let mut samples = Vec::new();
    let mut done = 0;
    while done < total {
        let batch = step.min(total - done);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..concurrency {
            let n = batch / concurrency + usize::from(worker < batch % concurrency);
            let (port, user, token) = (proxy.port, user.to_owned(), token.clone());
            tasks.spawn(async move {
                for _ in 0..n {
                    let client = connect(port, &user, &token, None).await?;
                    client.simple_query("SELECT 1").await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        done += batch;
        samples.push((done, proxy.rss_kib()?));
    }
    Ok(ChurnMemory {
        sessions: total,
        samples,
    })
}

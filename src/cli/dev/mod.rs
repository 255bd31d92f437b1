//! `rolemint dev`: everything needed to try rolemint, in one command.
//!
//! 1. A throwaway PostgreSQL from the machine's binaries
//!    ([`crate::cli::dev::cluster::TempCluster`]) with the demo roles and database
//!    ([`crate::cli::dev::cluster::provision_demo`]).
//! 2. A dev directory with a self-signed certificate for `localhost` /
//!    `127.0.0.1`, and a commented `rolemint.toml`: a local token issuer
//!    (random HS256 key), the backend, the demo role templates.
//! 3. The proxy, loaded from that file exactly as `rolemint serve` would.
//! 4. A banner with ready-to-paste `psql` and `pgbench` lines holding a fresh
//!    token.
//!
//! SIGHUP reloads the config as `serve` does. Ctrl-C or SIGTERM then shuts
//! the proxy down (session leases are revoked; credential leases are left
//! to expire, as with `serve`), stops PostgreSQL and deletes its data. The
//! dev directory is a temp dir removed too, unless `--dir` named it: then
//! the config stays, for a look at what was generated (a re-run keeps the
//! earlier one as `rolemint.toml.prev`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub mod cluster;

use self::cluster::{ClusterOptions, Demo, TempCluster};
use crate::proxy::server::Server;
use crate::secret::Secret;

/// Where the admin listener goes (or the next free port).
const ADMIN_PORT: u16 = 8200;

/// How many ports above `--port` are tried when it is busy.
const PORT_SEARCH: u16 = 20;

/// Lifetime of the token in the banner.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Sessions get this long to finish after Ctrl-C (written to the config).
const DEV_SHUTDOWN_GRACE: &str = "3s";

/// Beyond the grace period, how long revoking the leases may take before we
/// stop waiting for the proxy and stop PostgreSQL under it.
const REVOKE_WAIT: Duration = Duration::from_secs(70);

/// The file names inside the dev directory.
const CONFIG_FILE: &str = "rolemint.toml";
const PREV_CONFIG_FILE: &str = "rolemint.toml.prev";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// What `rolemint dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevArgs {
    /// Where to write the config, certificate and key, and to put the cluster
    /// (whose data is deleted on exit all the same). Default: a temp dir.
    pub dir: Option<PathBuf>,
    /// Port for the proxy; the next free one (up to +20) if it is busy.
    pub port: u16,
    /// The identity the printed token is for.
    pub subject: String,
}

impl Default for DevArgs {
    fn default() -> Self {
        DevArgs {
            dir: None,
            port: 6432,
            subject: "alice".into(),
        }
    }
}

/// Runs `rolemint dev` until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // The dev directory: the named one (kept), or a temp dir (removed when
    // `_temp_dir` drops at the end of this function).
    let (dir, _temp_dir) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir =
                std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
            (dir, None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rolemint-dev-")
                .tempdir()
                .context("creating a temp dir")?;
            (temp.path().to_owned(), Some(temp))
        }
    };

    tracing::info!("starting a throwaway PostgreSQL");
    let base_dir = args.dir.as_ref().map(|_| dir.clone());
    let (cluster, demo) = tokio::task::spawn_blocking(move || {
        let cluster = TempCluster::start(ClusterOptions {
            base_dir,
            ..ClusterOptions::default()
        })?;
        // On failure `cluster` drops here, which stops it.
        let demo = cluster::provision_demo(&cluster)?;
        Ok::<_, cluster::ClusterError>((cluster, demo))
    })
    .await
    .context("the cluster setup task failed")?
    .context("starting the throwaway PostgreSQL")?;
    tracing::info!(
        port = cluster.port(),
        dir = %cluster.dir().display(),
        "PostgreSQL is up, demo database provisioned"
    );

    let served = serve(&args, &dir, &cluster, &demo).await;

    tracing::info!("stopping PostgreSQL");
    let stopped = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop()
    })
    .await
    .context("the cluster stop task failed")?;
    served?;
    stopped.context("stopping the throwaway PostgreSQL")?;
    if args.dir.is_some() {
        eprintln!("The config stays in {}.", dir.display());
    }
    Ok(())
}

/// Writes the dev files, runs the proxy and waits for a signal. Returns once
/// the proxy has shut down; the caller stops the cluster whatever happened.
async fn serve(
    args: &DevArgs,
    dir: &Path,
    cluster: &TempCluster,
    demo: &Demo,
) -> anyhow::Result<()> {
    let (config_path, config, operator_token) = write_config(args, dir, cluster, demo)?;
    let grace = config.proxy.shutdown_grace;
    let (proxy, shutdown) =
        start_proxy(args, cluster, config_path, config, &operator_token).await?;
    wait_then_stop(proxy, shutdown, grace).await
}

/// Picks the ports, makes an operator token, writes the dev files and loads
/// the config from them as `rolemint serve` would.
fn write_config(
    args: &DevArgs,
    dir: &Path,
    cluster: &TempCluster,
    demo: &Demo,
) -> anyhow::Result<(PathBuf, Config, Secret)> {
    let port = pick_port(args.port)?;
    let admin_port = pick_port(if args.port == 0 { 0 } else { ADMIN_PORT })?;
    let operator_token = crate::control::auth::new_operator_token()
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    let admin = DevAdmin {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
        operator_token_sha256: crate::control::auth::sha256_hex(operator_token.expose()),
    };
    let backend = DevBackend {
        host: cluster.host(),
        port: cluster.port(),
        admin_user: &demo.admin_user,
        admin_password: &demo.admin_password,
    };
    let config_path = write_dev_files(
        dir,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        &backend,
        &admin,
    )?;
    let config =
        Config::load(&config_path).with_context(|| format!("loading {}", config_path.display()))?;
    Ok((config_path, config, operator_token))
}

/// Binds the proxy, reloads on SIGHUP, runs it and prints the banners.
async fn start_proxy(
    args: &DevArgs,
    cluster: &TempCluster,
    config_path: PathBuf,
    config: Config,
    operator_token: &Secret,
) -> anyhow::Result<(ProxyTask, CancellationToken)> {
    let server = Server::bind(config.clone())
        .await
        .context("starting the proxy")?;
    let addr = server.local_addr();
    let admin_addr = server.admin_addr();
    let token = crate::auth::identity::issue(&config.auth, &args.subject, &[], TOKEN_TTL)
        .context("signing a token")?;

    // As `serve` does: the banner invites editing the config, and
    // SIGHUP's default action would end the process with the cluster
    // deleted under it.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    tokio::spawn(crate::runtime::reload::reload_on_hangup(
        hangups,
        server.shared(),
        config_path.clone(),
    ));
    let shutdown = CancellationToken::new();
    let proxy = tokio::spawn(server.run(shutdown.clone()));
    print_banner(&config_path, addr, cluster, &args.subject, &token);
    if let Some(admin_addr) = admin_addr {
        print_admin_banner(admin_addr, operator_token);
        if config.vault.enabled {
            print_vault_banner(admin_addr, &token, cluster);
        }
    }
    Ok((proxy, shutdown))
}

/// The running proxy's task.
type ProxyTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Waits for Ctrl-C or SIGTERM, then shuts the proxy down, giving it its
/// grace period plus the time to revoke leases. A proxy that stops on its
/// own before that is an error worth showing.
async fn wait_then_stop(
    mut proxy: ProxyTask,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = crate::runtime::signal::terminated() => {}
        ended = &mut proxy => {
            return match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("the proxy stopped unexpectedly")),
                Ok(Err(e)) => Err(e.context("the proxy failed")),
                Err(e) => Err(anyhow::anyhow!("the proxy task failed: {e}")),
            };
        }
    }
    eprintln!("\nShutting down: ending sessions, revoking leases, stopping PostgreSQL...");
    shutdown.cancel();
    match tokio::time::timeout(grace + REVOKE_WAIT, &mut proxy).await {
        Ok(Ok(result)) => result.context("the proxy failed while shutting down"),
        Ok(Err(e)) => Err(anyhow::anyhow!("the proxy task failed: {e}")),
        Err(_) => {
            proxy.abort();
            Err(anyhow::anyhow!(
                "the proxy did not finish shutting down in time; stopping PostgreSQL anyway"
            ))
        }
    }
}

/// The first port from `first` to `first + 20` that is free on 127.0.0.1.
/// (Port 0 asks the system for one.)
fn pick_port(first: u16) -> anyhow::Result<u16> {
    let last = first.saturating_add(PORT_SEARCH);
    (first..=last)
        .find(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
        .with_context(|| {
            format!("ports {first} to {last} on 127.0.0.1 are all in use; choose one with --port")
        })
}

/// The dev config's `[admin]`: on loopback, with a fresh operator token.
struct DevAdmin {
    listen: SocketAddr,
    operator_token_sha256: String,
}

/// Where the dev config's `[backend]` points.
struct DevBackend<'a> {
    host: &'a str,
    port: u16,
    admin_user: &'a str,
    admin_password: &'a Secret,
}

/// Writes the certificate, key and `rolemint.toml` into `dir` and returns
/// the config's path. An earlier `rolemint.toml` (perhaps edited) cannot
/// serve this run (the cluster, its port and passwords are new): it is
/// kept as `rolemint.toml.prev`, and said so.
fn write_dev_files(
    dir: &Path,
    listen: SocketAddr,
    backend: &DevBackend<'_>,
    admin: &DevAdmin,
) -> anyhow::Result<PathBuf> {
    write_self_signed_cert(dir)?;

    let mut key = [0_u8; 48];
    aws_lc_rs::rand::fill(&mut key)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    let hs256_secret = Secret::new(base64::engine::general_purpose::STANDARD.encode(key));

    let path = dir.join(CONFIG_FILE);
    if path.exists() {
        let prev = dir.join(PREV_CONFIG_FILE);
        std::fs::rename(&path, &prev)
            .with_context(|| format!("moving {} to {}", path.display(), prev.display()))?;
        tracing::warn!(
            "{} is rewritten for this run (new cluster, port and secrets); \
             the earlier one, with any edits, is kept as {}",
            path.display(),
            prev.display()
        );
    }
    write_file(
        &path,
        &render_config(listen, backend, &hs256_secret, admin),
        0o600,
    )?;
    Ok(path)
}

/// Writes a self-signed certificate for `localhost` / `127.0.0.1` and its
/// key into `dir` as `cert.pem` and `key.pem` (the tests use it too).
pub fn write_self_signed_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let tls =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("generating a self-signed certificate")?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    write_file(&cert, &tls.cert.pem(), 0o644)?;
    write_file(&key, &tls.signing_key.serialize_pem(), 0o600)?;
    Ok((cert, key))
}

/// Creates or replaces `path` with `mode` (also fixing the mode of an older
/// file, which `OpenOptions::mode` leaves alone).
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The dev config: every key commented, as in `config/`.
fn render_config(
    listen: SocketAddr,
    backend: &DevBackend<'_>,
    hs256_secret: &Secret,
    admin: &DevAdmin,
) -> String {
    format!(
        r#"# Written by `rolemint dev`, and rewritten by every run: the PostgreSQL it
# points at is a throwaway cluster that is deleted when `rolemint dev` stops.
# Relative paths are relative to this file. Every key is documented in
# config/rolemint.example.toml.

[proxy]
listen = {listen}
# A self-signed certificate for localhost and 127.0.0.1, made for this run:
# clients use sslmode=require (encrypted, certificate not verified).
tls_cert = {cert}
tls_key = {key}
# Clients may also connect without TLS: the listener is on loopback, so the
# token never leaves this machine. Never allow it on a reachable address.
allow_plaintext = true
# After Ctrl-C, sessions get this long before they are ended and their
# leases revoked.
shutdown_grace = {grace}

[backend]
# The throwaway cluster: 127.0.0.1 only, scram-sha-256 for every login.
host = {host}
port = {port}
# Created by the demo provisioning (docker/initdb/10-rolemint-demo.sql):
# CREATEROLE, pg_signal_backend, ADMIN OPTION on the roles templates grant.
admin_user = {admin_user}
admin_password = {admin_password}
admin_database = "postgres"

[auth]
# Tokens must carry these `iss` and `aud` claims.
issuer = "rolemint-dev"
audience = "rolemint"
# Key of the local HS256 issuer (random, made for this run):
#   rolemint token --config THIS_FILE --sub alice
hs256_secret = {hs256_secret}

[admin]
# Health, metrics and the lease API, on loopback (plain HTTP).
listen = {admin_listen}
# SHA-256 of the operator token printed at startup (made for this run).
operator_token_sha256 = {admin_hash}

{templates}"#,
        listen = toml_str(&listen.to_string()),
        cert = toml_str(CERT_FILE),
        key = toml_str(KEY_FILE),
        grace = toml_str(DEV_SHUTDOWN_GRACE),
        host = toml_str(backend.host),
        port = backend.port,
        admin_user = toml_str(backend.admin_user),
        admin_password = toml_str(backend.admin_password.expose()),
        hs256_secret = toml_str(hs256_secret.expose()),
        admin_listen = toml_str(&admin.listen.to_string()),
        admin_hash = toml_str(&admin.operator_token_sha256),
        templates = cluster::demo_templates_toml(),
    )
}

fn print_admin_banner(addr: SocketAddr, operator_token: &Secret) {
    let token = operator_token.expose();
    println!(
        r#"Admin API (health, metrics, leases) on http://{addr}:

  export ROLEMINT_ADDR=http://{addr}
  export ROLEMINT_TOKEN={token}
  rolemint leases list
  curl -s -H "X-Vault-Token: $ROLEMINT_TOKEN" $ROLEMINT_ADDR/v1/rolemint/leases
"#
    );
}

/// The Vault-compatible door: what a program written for Vault's database
/// secrets engine needs in its environment, and the same by hand.
fn print_vault_banner(addr: SocketAddr, token: &Secret, cluster: &TempCluster) {
    let token = token.expose();
    println!(
        r#"Vault-compatible API (programs written for Vault run unchanged):

  export VAULT_ADDR=http://{addr}
  export VAULT_TOKEN={token}
  curl -s -H "X-Vault-Token: $VAULT_TOKEN" $VAULT_ADDR/v1/database/creds/readonly

Its username and password log in to PostgreSQL directly, not through the proxy:

  psql "host={pg_host} port={pg_port} dbname=appdb user=USERNAME password=PASSWORD"
"#,
        pg_host = cluster.host(),
        pg_port = cluster.port(),
    );
}

fn print_banner(
    config_path: &Path,
    addr: SocketAddr,
    cluster: &TempCluster,
    subject: &str,
    token: &Secret,
) {
    let (host, port) = (addr.ip(), addr.port());
    let token = token.expose();
    let config = config_path.display();
    println!(
        r#"
rolemint dev is running.

  proxy       {addr}  (TLS with a self-signed certificate; plaintext allowed on loopback)
  config      {config}
  PostgreSQL  {pg_host}:{pg_port}, data in {pg_dir} (deleted on exit)

Connect as "{subject}" (token valid for 1 hour), read-only:

  psql "host={host} port={port} dbname=appdb user=readonly password={token} sslmode=require"

Benchmark, read-write (each client gets its own minted role):

  PGSSLMODE=require PGPASSWORD={token} pgbench -h {host} -p {port} -U readwrite -c 4 -T 10 appdb

A fresh token:

  rolemint token --config {config} --sub {subject}

Edit the config and `kill -HUP {pid}` to reload it, as with `rolemint serve`.
Ctrl-C ends every session and revokes its lease (credential leases are left to
expire, as with `serve`), then stops PostgreSQL and deletes its data.
"#,
        pg_host = cluster.host(),
        pg_port = cluster.port(),
        pg_dir = cluster.dir().display(),
        pid = std::process::id(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_TOML: &str = include_str!("../../../config/docker.toml");
    const DOCKER_COMPOSE: &str = include_str!("../../../docker-compose.yml");

    fn dev_admin() -> DevAdmin {
        DevAdmin {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8200)),
            operator_token_sha256: crate::control::auth::sha256_hex("t"),
        }
    }

    #[test]
    fn the_dev_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let password = Secret::new("a'b\"c\\d");
        let backend = DevBackend {
            host: "127.0.0.1",
            port: 54321,
            admin_user: "rolemint_admin",
            admin_password: &password,
        };
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 6432));
        let path = write_dev_files(dir.path(), listen, &backend, &dev_admin()).unwrap();
        let config = Config::load(&path).unwrap();

        assert_eq!(config.proxy.listen, listen);
        assert_eq!(
            config.proxy.tls_cert.as_deref(),
            Some(dir.path().join(CERT_FILE).as_path())
        );
        assert!(config.proxy.allow_plaintext);
        assert_eq!(config.backend.port, 54321);
        assert_eq!(config.backend.admin_password.as_ref(), Some(&password));
        assert_eq!(config.auth.issuer.as_deref(), Some("rolemint-dev"));
        assert_eq!(config.auth.audience.as_deref(), Some("rolemint"));
        assert!(config.auth.hs256_secret.as_ref().unwrap().expose().len() >= 32);
        assert_eq!(config.admin.listen, Some(dev_admin().listen));
        assert_eq!(
            config.admin.operator_token_sha256,
            Some(dev_admin().operator_token_sha256)
        );
        assert_eq!(
            config.roles.keys().collect::<Vec<_>>(),
            ["readonly", "readwrite"]
        );

        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CONFIG_FILE), 0o600);
        let cert = std::fs::read_to_string(dir.path().join(CERT_FILE)).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn a_rerun_keeps_the_earlier_config_as_prev() {
        let dir = tempfile::tempdir().unwrap();
        let password = Secret::new("p");
        let backend = DevBackend {
            host: "127.0.0.1",
            port: 54321,
            admin_user: "rolemint_admin",
            admin_password: &password,
        };
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 6432));
        let path = write_dev_files(dir.path(), listen, &backend, &dev_admin()).unwrap();
        let edited = format!("{}\n# my edit\n", std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, &edited).unwrap();
        write_dev_files(dir.path(), listen, &backend, &dev_admin()).unwrap();
        let prev = std::fs::read_to_string(dir.path().join(PREV_CONFIG_FILE)).unwrap();
        assert_eq!(prev, edited, "the edit is kept");
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains("# my edit"));
    }

    #[test]
    fn a_busy_port_is_skipped() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        if port < u16::MAX - PORT_SEARCH {
            let picked = pick_port(port).unwrap();
            assert!(picked > port && picked <= port + PORT_SEARCH);
        }
    }

    #[test]
    fn the_docker_config_parses_and_validates() {
        let mut config = Config::parse(DOCKER_TOML).unwrap();
        // The password comes from the environment docker-compose.yml sets;
        // `resolve` would read it, validate only needs it present.
        let var = config.backend.admin_password_env.clone().unwrap();
        assert_eq!(var, "ROLEMINT_ADMIN_PASSWORD");
        assert!(DOCKER_COMPOSE.contains(&var));
        config.backend.admin_password = Some(Secret::new("from-the-environment"));
        config.validate().unwrap();

        assert_eq!(config.backend.host, "postgres", "the compose service name");
        assert_eq!(config.proxy.listen.port(), 6432);
        assert!(DOCKER_COMPOSE.contains("6432:6432"));
        assert!(DOCKER_COMPOSE.contains("/etc/rolemint/rolemint.toml"));

        // The same templates as `rolemint dev`.
        let demo = Config::parse(&render_config(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 6432)),
            &DevBackend {
                host: "h",
                port: 1,
                admin_user: "a",
                admin_password: &Secret::new("p"),
            },
            &Secret::new("k".repeat(32)),
            &dev_admin(),
        ))
        .unwrap();
        assert_eq!(format!("{:?}", config.roles), format!("{:?}", demo.roles));
    }
}

//! The off-loopback default of `backend.tls`, at run time: a config whose
//! `[backend] host` is not on loopback (nor a socket) sets no `tls` key and
//! gets `verify-full`. `rolemint serve` is run as a process against a
//! TLS cluster reached on this machine's own non-loopback address:
//!
//! - without `tls_ca_file` it refuses to start (exit code 1, and a message
//!   that says why and what to write);
//! - with the CA that signed the server's certificate (issued for that
//!   address) it starts, and the session's backend and every admin
//!   connection are on TLS from that address (`pg_stat_ssl`); pg_hba.conf
//!   accepts that address only with `hostssl`;
//! - with a CA that did not sign it, it refuses to start (the certificate
//!   is not trusted).
//!
//! A machine with no non-loopback IPv4 address cannot run the last two:
//! the test then says so loudly on stderr and runs the first against a
//! name that is not on this machine, which is refused before any connect.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Options, HS256_SECRET};
use rolemint::cli::dev::cluster::{self, ClusterOptions, Demo, TempCluster};

/// This machine's own address on a non-loopback IPv4 route, if it has
/// one: for each route in `/proc/net/route`, a UDP socket "connected" to
/// its gateway (or to an address of its network) takes the source address
/// the kernel would use toward it. No packet is sent, no root needed.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    // Each address is the hex of the network-order bytes read as a native
    // number.
    let addr = |field: Option<&&str>| {
        let raw = u32::from_str_radix(field?, 16).ok()?;
        Some(u32::from(Ipv4Addr::from(raw.to_ne_bytes())))
    };
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (destination, gateway) = (addr(fields.get(1))?, addr(fields.get(2))?);
        let mask = addr(fields.get(7))?;
        let toward = match gateway {
            0 if mask == u32::MAX => Ipv4Addr::from(destination),
            0 => Ipv4Addr::from(destination & mask | 1),
            gateway => Ipv4Addr::from(gateway),
        };
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect((toward, 9)).ok()?;
        match socket.local_addr().ok()?.ip() {
            IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
            _ => None,
        }
    })
}

/// A CA, and a server certificate it signed for `ip`: the CA's PEM, the
/// server's certificate and key PEM.
fn ca_and_server_cert(ip: IpAddr) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rolemint test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec![ip.to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, ip.to_string());
    let issuer = Issuer::new(ca, ca_key);
    let cert = server.signed_by(&server_key, &issuer).unwrap();
    (ca_pem, cert.pem(), server_key.serialize_pem())
}

/// Writes the server's certificate and key where the server user can
/// read them (PostgreSQL refuses a key others can read, and one it does
/// not own unless root owns it); `ssl = on` with them, listening on
/// loopback (the harness's own connections) and on `ip`.
fn tls_cluster_on(dir: &Path, ip: IpAddr, cert: &str, key: &str) -> ClusterOptions {
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user (.ci/run creates it)");
        for path in [dir.to_path_buf(), cert_path.clone(), key_path.clone()] {
            std::os::unix::fs::chown(&path, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    ClusterOptions::default()
        .setting("listen_addresses", format!("127.0.0.1,{ip}"))
        .setting("ssl", "on")
        .setting("ssl_cert_file", cert_path.display().to_string())
        .setting("ssl_key_file", key_path.display().to_string())
}

/// The harness's pg_hba.conf, with `ip` let in over TLS only: the admin,
/// and minted roles (which otherwise log in only from 127.0.0.1).
fn hba_with(ip: IpAddr) -> String {
    format!(
        "\
local   all       +rolemint_managed                 reject
local   all       all                               scram-sha-256
host    all       +rolemint_direct   all            scram-sha-256
hostssl all       +rolemint_managed  {ip}/32        scram-sha-256
host    all       +rolemint_managed  127.0.0.1/32   scram-sha-256
host    all       +rolemint_managed  all            reject
hostssl all       all                {ip}/32        scram-sha-256
host    all       all                127.0.0.0/8    scram-sha-256
"
    )
}

/// A `rolemint serve` config for `cluster` with `[backend] host = host`,
/// no `tls` key, and `backend_toml`; its listen port.
fn serve_config(
    cluster: &TempCluster,
    demo: &Demo,
    host: &str,
    backend_toml: &str,
    dir: &Path,
) -> (PathBuf, u16) {
    common::write_self_signed_cert(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let options = Options {
        backend_toml: backend_toml.to_owned(),
        ..Options::default()
    };
    let text = common::config_toml(cluster, demo, &options)
        .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""))
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    assert!(text.contains(&format!("host = \"{host}\"")));
    assert!(!text.contains("\ntls = "), "the test is of the default");
    assert!(text.contains(HS256_SECRET));
    let path = dir.join("rolemint.toml");
    std::fs::write(&path, text).unwrap();
    (path, port)
}

fn serve(config: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("ROLEMINT_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `rolemint serve` expecting it to refuse to start: its output,
/// once it exited (within 60 s).
async fn refused_start(config: &Path) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(60), serve(config).output())
        .await
        .expect("rolemint serve exits instead of serving")
        .expect("rolemint serve runs");
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_backend_is_verified_by_default_or_rolemint_does_not_start() {
    rolemint::tls::install_crypto_provider();
    let ip = non_loopback_ipv4();
    if ip.is_none() {
        eprintln!(
            "\n*** SKIPPED in part: this machine has no non-loopback IPv4 address, so \
             verify-full against a real off-loopback backend (right CA, wrong CA) is NOT \
             tested here; only the refusal without a CA is. ***\n"
        );
    }
    let certs = tempfile::tempdir().unwrap();
    let ip_addr = IpAddr::V4(ip.unwrap_or(Ipv4Addr::LOCALHOST));
    let (ca, cert, key) = ca_and_server_cert(ip_addr);
    let options = match ip {
        Some(_) => tls_cluster_on(certs.path(), ip_addr, &cert, &key),
        None => ClusterOptions::default(),
    };
    let (cluster, demo) = tokio::task::spawn_blocking(move || {
        let cluster = TempCluster::start(options).expect("start PostgreSQL");
        let demo = cluster::provision_demo(&cluster).expect("provision the demo");
        (cluster, demo)
    })
    .await
    .unwrap();
    let host = ip.map_or_else(|| "db.example.invalid".to_owned(), |ip| ip.to_string());
    eprintln!("the backend's off-loopback address: {host}");

    // No CA: refused at load, before any connection, saying what to write.
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = serve_config(&cluster, &demo, &host, "", dir.path());
    let out = refused_start(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "backend: host \"{host}\" is not on this machine, so tls defaults to \"verify-full\", \
             which needs tls_ca_file"
        )),
        "{}",
        common::output_text(&out)
    );
    if ip.is_none() {
        return;
    }

    // The address is let in with TLS only.
    let su = superuser(&cluster).await;
    std::fs::write(cluster.data_dir().join("pg_hba.conf"), hba_with(ip_addr)).unwrap();
    su.query_one("SELECT pg_reload_conf()", &[]).await.unwrap();
    let reloaded = common::wait_until(Duration::from_secs(10), || async {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_hba_file_rules WHERE type = 'hostssl'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 2
    })
    .await;
    assert!(reloaded, "pg_hba.conf with hostssl lines in force");

    // The CA that signed the server's certificate: serving, over TLS.
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let dir_ok = tempfile::tempdir().unwrap();
    let (config, port) = serve_config(
        &cluster,
        &demo,
        &host,
        &format!("tls_ca_file = \"{}\"", ca_path.display()),
        dir_ok.path(),
    );
    let log = dir_ok.path().join("serve.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = serve(&config)
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let token = rolemint::auth::identity::issue(
        &rolemint::config::Config::load(&config).unwrap().auth,
        "alice",
        &[],
        Duration::from_secs(600),
    )
    .unwrap();
    let conn = format!(
        "host=127.0.0.1 port={port} user=readonly dbname=appdb password={} sslmode=disable connect_timeout=10",
        token.expose()
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let session = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(session) = common::connect_owned(conn.clone()).await {
                break session;
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!("no session (exit: {exited:?}):\n{}", log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let row = session
        .query_one(
            "SELECT s.ssl, host(inet_client_addr()), host(inet_server_addr()) \
             FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (ssl, client, server): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
    assert!(ssl, "the session's backend is on TLS");
    assert_eq!((client, server), (host.clone(), host.clone()));
    // Every admin connection too, from that address.
    let (admin, on_tls): (i64, i64) = {
        let row = su
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl AND host(a.client_addr) = $1) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.usename = $2",
                &[&host, &demo.admin_user],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(admin > 0, "no admin connection to look at");
    assert_eq!(on_tls, admin, "an admin connection not on verified TLS");
    assert!(
        !log_text().contains("is not on this machine and is reached"),
        "verify-full by default warns of nothing:\n{}",
        log_text()
    );
    drop(session);
    child.start_kill().unwrap();
    let _ = child.wait().await;

    // A CA that did not sign the server's certificate (with the same name
    // as the one that did, as an impostor's would have): no start.
    let (other_ca, _, _) = ca_and_server_cert(ip_addr);
    let other_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_path, other_ca).unwrap();
    let dir_wrong = tempfile::tempdir().unwrap();
    let (config, _) = serve_config(
        &cluster,
        &demo,
        &host,
        &format!("tls_ca_file = \"{}\"", other_path.display()),
        dir_wrong.path(),
    );
    let out = refused_start(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("preparing the backend at {host}:"))
            && stderr.contains("invalid peer certificate"),
        "{}",
        common::output_text(&out)
    );
}

async fn superuser(cluster: &TempCluster) -> tokio_postgres::Client {
    common::connect_owned(cluster.superuser_conn_string("postgres"))
        .await
        .unwrap()
}

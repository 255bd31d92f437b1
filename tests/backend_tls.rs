//! TLS to the backend, started either way (`backend.sslnegotiation`):
//! `direct` (TLS from the first byte, ALPN `postgresql`) works on
//! PostgreSQL 17+ for sessions and the admin pool, and fails cleanly on
//! older servers, which read a ClientHello as a broken startup packet.
//! The cluster runs with `ssl = on` and the harness's self-signed
//! certificate; the matrix runs this on every version.
//!
//! Verification and channel binding: `verify-full` against the
//! certificate's CA carries sessions and the admin pool, and a wrong CA is
//! refused; SCRAM-SHA-256-PLUS is proven by the server itself, which
//! refuses a bound login relayed by a TLS-terminating man in the middle
//! ("SCRAM channel binding check failed") that it lets through unbound.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{Harness, Options};
use rolemint::cli::dev::cluster::ClusterOptions;
use rolemint::config::{BackendConfig, SslNegotiation};

/// `ssl = on` with a certificate the server user can read (PostgreSQL
/// refuses a key that others can read, and one it does not own unless
/// root owns it).
fn ssl_cluster(dir: &Path) -> ClusterOptions {
    common::write_self_signed_cert(dir);
    let key = dir.join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user (.ci/run creates it)");
        for path in [dir.to_path_buf(), dir.join("cert.pem"), key.clone()] {
            std::os::unix::fs::chown(&path, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    ClusterOptions::default()
        .setting("ssl", "on")
        .setting("ssl_cert_file", dir.join("cert.pem").display().to_string())
        .setting("ssl_key_file", key.display().to_string())
        .setting("log_connections", "on")
}

const DIRECT: &str = "tls = \"require\"\nsslnegotiation = \"direct\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_to_the_backend_on_17_and_newer_and_a_clear_failure_before() {
    rolemint::tls::install_crypto_provider();
    let certs = tempfile::tempdir().unwrap();
    let cluster = ssl_cluster(certs.path());
    // The version first, from a harness that negotiates TLS the usual way.
    let h = Harness::with(Options {
        cluster: cluster.clone(),
        backend_toml: "tls = \"require\"".into(),
        ..Options::default()
    })
    .await;
    let version: i32 = h
        .superuser()
        .await
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let toml = format!(
        "host = \"127.0.0.1\"\nport = {}\nadmin_user = \"a\"\n{DIRECT}\nconnect_timeout = \"5s\"",
        h.cluster.port()
    );
    let backend: BackendConfig = toml::from_str(&toml).unwrap();
    assert_eq!(backend.sslnegotiation, SslNegotiation::Direct);
    let tls = rolemint::tls::backend_client_config(&backend).unwrap();
    let direct = tokio::time::timeout(
        Duration::from_secs(10),
        rolemint::pg::backend::connect(&backend, tls.as_ref()),
    )
    .await
    .expect("connect in time");
    if version < 170_000 {
        // Nothing to splice onto: the server closes on the ClientHello.
        assert!(direct.is_err(), "direct TLS to {version}");
        return;
    }
    assert!(direct.is_ok(), "{:?}", direct.err());
    drop(h);

    // A proxy whose every backend connection (sessions and the admin pool)
    // starts TLS directly.
    let h = Harness::with(Options {
        cluster,
        backend_toml: DIRECT.into(),
        ..Options::default()
    })
    .await;
    let token = h.token("alice");
    let out = h
        .psql(
            "readonly",
            "appdb",
            &token,
            "SELECT s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
        )
        .await;
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "the session's backend is on TLS: {text}"
    );
    // The admin pool too: rolemint_admin's backends are all on TLS.
    let su = h.superuser().await;
    let plain: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = 'rolemint_admin' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let admin: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'rolemint_admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(admin > 0, "no admin connection to look at");
    assert_eq!(plain, 0, "an admin connection without TLS");
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}

/// A man in the middle who terminates TLS: it answers the SSLRequest,
/// shows its own (self-signed) certificate, and relays the bytes to the
/// cluster over a TLS connection of its own. `tls = "require"` accepts it;
/// only channel binding notices, because the server binds the login to
/// its certificate and the client to the relay's.
async fn tls_terminating_relay(cluster_port: u16) -> u16 {
    let certs = tempfile::tempdir().unwrap();
    common::write_self_signed_cert(certs.path());
    let acceptor = tokio_rustls::TlsAcceptor::from(
        rolemint::tls::server_config(
            &certs.path().join("cert.pem"),
            &certs.path().join("key.pem"),
        )
        .unwrap(),
    );
    let upstream: BackendConfig = toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {cluster_port}\nadmin_user = \"a\"\ntls = \"require\"\nconnect_timeout = \"5s\""
    ))
    .unwrap();
    let upstream_tls = rolemint::tls::backend_client_config(&upstream).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _certs = certs;
        // Bounded: the test opens a handful of connections.
        for _ in 0..32 {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, upstream, upstream_tls) =
                (acceptor.clone(), upstream.clone(), upstream_tls.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                client.write_all(b"S").await?;
                let mut client = acceptor.accept(client).await?;
                let mut server = rolemint::pg::backend::connect(&upstream, upstream_tls.as_ref())
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    port
}

/// `[backend]` toward `port` with `extra` keys.
fn backend_at(port: u16, extra: &str) -> BackendConfig {
    toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {port}\nadmin_user = \"a\"\nconnect_timeout = \"5s\"\n{extra}"
    ))
    .unwrap()
}

/// Logs in as `user` the way a session does; the error's text if refused.
async fn login_as(backend: &BackendConfig, user: &str, password: &str) -> Result<(), String> {
    let tls = rolemint::tls::backend_client_config(backend).map_err(|e| e.to_string())?;
    let stream = rolemint::pg::backend::connect(backend, tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let password = rolemint::secret::Secret::new(password);
    rolemint::pg::backend::login(stream, user, &password, "appdb", &[], backend)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The admin pool's way in (tokio-postgres with rolemint's rustls
/// adaptor) with `channel_binding = require`.
async fn admin_login_bound(port: u16, user: &str, password: &str) -> Result<(), String> {
    let backend = backend_at(port, "tls = \"require\"");
    let tls = rolemint::tls::backend_client_config(&backend)
        .unwrap()
        .unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("appdb")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let (client, conn) = config
        .connect(rolemint::pg::MakeRustlsConnect::new(tls))
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    tokio::spawn(conn);
    client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_and_channel_binding_against_a_tls_cluster_and_a_wrong_ca_is_refused() {
    rolemint::tls::install_crypto_provider();
    let certs = tempfile::tempdir().unwrap();
    let cluster = ssl_cluster(certs.path());
    let ca = certs.path().join("cert.pem");
    let h = Harness::with(Options {
        cluster,
        backend_toml: format!("tls = \"verify-full\"\ntls_ca_file = \"{}\"", ca.display()),
        ..Options::default()
    })
    .await;
    let port = h.cluster.port();

    // Sessions and the admin pool run over verified TLS.
    let token = h.token("alice");
    let out = h
        .psql(
            "readonly",
            "appdb",
            &token,
            "SELECT s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
        )
        .await;
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "{text}");
    let su = h.superuser().await;
    let (admin, plain): (i64, i64) = {
        let row = su
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'rolemint_admin'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(admin > 0, "no admin connection to look at");
    assert_eq!(plain, 0, "an admin connection without TLS");

    // A login role to drive the backend login by hand.
    let password = "binding-test-password-0123456789";
    su.batch_execute(&format!(
        "CREATE ROLE cb_user LOGIN PASSWORD '{password}'; GRANT CONNECT ON DATABASE appdb TO cb_user"
    ))
    .await
    .unwrap();

    // Straight to the server, binding required: both logins are
    // SCRAM-SHA-256-PLUS (either refuses anything else).
    let verified = format!("tls = \"verify-full\"\ntls_ca_file = \"{}\"", ca.display());
    login_as(
        &backend_at(port, &format!("{verified}\nchannel_binding = \"require\"")),
        "cb_user",
        password,
    )
    .await
    .expect("a channel-bound session login");
    admin_login_bound(port, "cb_user", password)
        .await
        .expect("a channel-bound admin login");

    // Through a TLS-terminating man in the middle that `tls = "require"`
    // lets through: unbound, the login is relayed and succeeds (what
    // channel binding is for); bound, the server sees the binding of
    // another certificate and refuses, for sessions and the admin pool.
    let relay = tls_terminating_relay(port).await;
    login_as(
        &backend_at(relay, "tls = \"require\"\nchannel_binding = \"disable\""),
        "cb_user",
        password,
    )
    .await
    .expect("without binding the relay goes unnoticed");
    let e = login_as(&backend_at(relay, "tls = \"require\""), "cb_user", password)
        .await
        .expect_err("the default (prefer) binds, and the server notices the relay");
    // The server's own words: it checked a SCRAM-SHA-256-PLUS binding.
    assert!(e.contains("SCRAM channel binding check failed"), "{e}");
    let e = admin_login_bound(relay, "cb_user", password)
        .await
        .expect_err("the admin pool's binding notices the relay");
    assert!(e.contains("SCRAM channel binding check failed"), "{e}");

    // verify-full with a CA that did not sign the server's certificate:
    // no session connection and no admin connection.
    let other = tempfile::tempdir().unwrap();
    common::write_self_signed_cert(other.path());
    let wrong = format!(
        "tls = \"verify-full\"\ntls_ca_file = \"{}\"",
        other.path().join("cert.pem").display()
    );
    let e = login_as(&backend_at(port, &wrong), "cb_user", password)
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(e.contains("certificate"), "{e}");
    let mut config = h.config.clone();
    config.backend.tls_ca_file = Some(other.path().join("cert.pem"));
    let admin = rolemint::pg::AdminClient::new(&config).unwrap();
    let e = admin
        .ping("postgres")
        .await
        .expect_err("the admin pool refuses it too");
    assert!(e.to_string().contains("certificate"), "{e}");
}

//! TLS to the backend, started either way (`backend.sslnegotiation`):
//! `direct` (TLS from the first byte, ALPN `postgresql`) works on
//! PostgreSQL 17+ for sessions and the admin pool, and fails cleanly on
//! older servers, which read a ClientHello as a broken startup packet.
//! The cluster runs with `ssl = on` and the harness's self-signed
//! certificate; the matrix runs this on every version.

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

//! Sessions rolemint refuses: each gets a PostgreSQL error with the contract's
//! SQLSTATE, nothing internal, and no role is minted or left behind.

mod common;

use std::time::Duration;

use common::{output_text, sqlstate, Harness, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Counts the CREATE ROLE statements PostgreSQL has logged.
fn mints_in_server_log(h: &Harness) -> usize {
    h.cluster
        .read_log()
        .lines()
        .filter(|l| l.contains("CREATE ROLE \"v-"))
        .count()
}

async fn refused(
    h: &Harness,
    template: &str,
    database: &str,
    password: &str,
) -> tokio_postgres::Error {
    match h.connect(template, database, password).await {
        Ok(_) => panic!("{template}/{database} was let in"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_unknown_templates_and_databases_are_refused_before_minting() {
    let h = Harness::start().await;
    let token = h.token("mallory");

    let garbage = refused(&h, "readonly", "appdb", "not-a-jwt").await;
    assert_eq!(sqlstate(&garbage).as_deref(), Some("28P01"), "{garbage:?}");

    let foreign = rolemint::auth::identity::issue(
        &rolemint::config::AuthConfig {
            hs256_secret: Some(rolemint::secret::Secret::new(
                "another-key-0123456789abcdef0123456789",
            )),
            ..h.config.auth.clone()
        },
        "mallory",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    let e = refused(&h, "readonly", "appdb", foreign.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    // The client is not told which check failed.
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(!message.contains("signature"), "{message}");

    let e = refused(&h, "superuser", "appdb", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{e:?}");

    let e = refused(&h, "readonly", "postgres", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("postgres") && message.contains("readonly"),
        "{message}"
    );

    assert_eq!(
        mints_in_server_log(&h),
        0,
        "a refused session minted a role"
    );
    assert!(h.managed_roles().await.is_empty());
    // The log says why, the client did not hear.
    let log = common::captured_log();
    assert!(log.contains("28P01"), "refusals are logged");
    assert!(!log.contains(token.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_wrong_audience_tokens_are_refused() {
    let h = Harness::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = jsonwebtoken::EncodingKey::from_secret(common::HS256_SECRET.as_bytes());
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let good = sign(serde_json::json!({
        "sub": "alice", "iss": "rolemint-test", "aud": "rolemint", "exp": now + 600
    }));
    let expired = sign(serde_json::json!({
        "sub": "alice", "iss": "rolemint-test", "aud": "rolemint", "exp": now - 3600
    }));
    let wrong_aud = sign(serde_json::json!({
        "sub": "alice", "iss": "rolemint-test", "aud": "someone-else", "exp": now + 600
    }));
    let no_exp = sign(serde_json::json!({
        "sub": "alice", "iss": "rolemint-test", "aud": "rolemint"
    }));
    // The hand-made token is accepted, so the refusals below are about the claims.
    drop(
        h.connect("readonly", "appdb", &good)
            .await
            .expect("a valid token connects"),
    );
    for token in [expired, wrong_aud, no_exp] {
        let e = refused(&h, "readonly", "appdb", &token).await;
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_tls_is_required() {
    let h = Harness::with(Options {
        allow_plaintext: false,
        ..Options::default()
    })
    .await;
    let token = h.token("alice");
    let e = refused(&h, "readonly", "appdb", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("TLS"));
    // With TLS, the same token works.
    let out = h.psql("readonly", "appdb", &token, "SELECT 1").await;
    assert!(out.status.success(), "{}", output_text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backend_login_after_minting_leaves_no_role() {
    let h = Harness::with(Options {
        extra_toml: r#"
[roles.broken]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "1h"
# NOLOGIN: minting succeeds, logging in as the role fails.
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH NOLOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#
        .into(),
        ..Options::default()
    })
    .await;
    let token = h.token("alice");
    let e = refused(&h, "broken", "appdb", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(
        !message.contains("not permitted to log in"),
        "backend detail leaked: {message}"
    );
    assert_eq!(mints_in_server_log(&h), 1);
    let left = h.wait_no_managed_roles(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_is_08006() {
    let mut h = Harness::start().await;
    let token = h.token("alice");
    // Warm the admin pool, then take the database away.
    drop(
        h.connect("readonly", "appdb", token.expose())
            .await
            .expect("first session"),
    );
    tokio::task::block_in_place(|| h.cluster.stop()).expect("stop PostgreSQL");
    let e = refused(&h, "readonly", "appdb", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_gets_an_error_or_a_close_and_the_proxy_lives_on() {
    let h = Harness::start().await;
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0, 1],                              // length below the minimum
        vec![0xff, 0xff, 0xff, 0xff],                  // huge length
        vec![0, 0, 0, 8, 0, 2, 0, 0],                  // protocol 2.0
        vec![0, 0, 0, 9, 0, 3, 0, 0, b'u'],            // unterminated parameter
        vec![0, 0, 0, 12, 4, 210, 22, 46, 0, 0, 0, 1], // cancel with an unknown key
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        {
            // SSLRequest with bytes pipelined behind it (CVE-2021-23214).
            let mut v = vec![0, 0, 0, 8, 4, 210, 22, 47];
            v.extend_from_slice(b"\x00\x00\x00\x08\x00\x03\x00\x00");
            v
        },
    ];
    for case in cases {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let _ = s.write_all(&case).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the proxy hung on {case:?}");
    }
    // CVE-2021-23214: bytes pipelined after an SSLRequest are never read as
    // plaintext. The client gets 'S', then its "ClientHello" (the pipelined
    // startup) fails the TLS handshake: no authentication request follows.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut v = vec![0, 0, 0, 8, 4, 210, 22, 47];
    v.extend_from_slice(b"\x00\x00\x00\x17\x00\x03\x00\x00user\x00readonly\x00\x00");
    s.write_all(&v).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("no hang");
    assert_eq!(answer.first(), Some(&b'S'), "{answer:?}");
    assert_ne!(
        answer.get(1),
        Some(&b'R'),
        "pipelined plaintext was served: {answer:?}"
    );

    // A password message far over the limit is refused, not buffered.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut startup = vec![0, 3, 0, 0];
    for kv in ["user", "readonly", "database", "appdb", ""] {
        startup.extend_from_slice(kv.as_bytes());
        startup.push(0);
    }
    let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    s.write_all(&packet).await.unwrap();
    let mut auth = [0u8; 9];
    s.read_exact(&mut auth).await.unwrap();
    assert_eq!(auth[0], b'R');
    s.write_all(&[b'p', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(answer.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&answer).contains("08P01"));

    // Still serving.
    let token = h.token("alice");
    let client = h
        .connect("readonly", "appdb", token.expose())
        .await
        .expect("proxy still serves");
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_over_the_limit_gets_53300() {
    let h = Harness::with(Options {
        max_connections: 1,
        ..Options::default()
    })
    .await;
    let token = h.token("alice");
    let first = h
        .connect("readonly", "appdb", token.expose())
        .await
        .expect("first session");
    let e = refused(&h, "readonly", "appdb", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e:?}");
    assert_eq!(
        h.managed_roles().await.len(),
        1,
        "the refused session minted nothing"
    );
    assert_eq!(
        first
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop(first);
    // The slot frees once the first session has ended.
    let freed = common::wait_until(Duration::from_secs(10), || async {
        match h.connect("readonly", "appdb", token.expose()).await {
            Ok(_) => true,
            Err(e) if sqlstate(&e).as_deref() == Some("53300") => false,
            Err(e) => panic!("{e:?}"),
        }
    })
    .await;
    assert!(freed, "the slot never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_asking_minted_roles_for_a_cleartext_password_is_refused() {
    let h = Harness::start().await;
    // A pg_hba.conf gone wrong: members of rolemint_managed (the minted
    // roles, and the admin, who copes) are asked for a cleartext password.
    let hba_path = h.cluster.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).unwrap();
    std::fs::write(
        &hba_path,
        format!("host all +rolemint_managed 127.0.0.1/32 password\n{hba}"),
    )
    .unwrap();
    let su = h.superuser().await;
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let rules: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'password' AND error IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rules, 1, "the weak rule is in place");

    let token = h.token("alice");
    let e = refused(&h, "readonly", "appdb", token.expose()).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{e:?}");
    assert!(common::captured_log().contains("cleartext password"));
    let left = h.wait_no_managed_roles(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

//! A session end to end: a token in, a minted role spliced to PostgreSQL,
//! the role dropped at the end. Real PostgreSQL, real psql, tokio-postgres.

mod common;

use std::time::{Duration, SystemTime};

use common::{output_text, sqlstate, Harness, Options};

/// A minted role's name: `v-<identity>-<template>-<random>-<unix time>`.
fn assert_minted_name(name: &str, identity: &str, template: &str) {
    let prefix = format!("v-{identity}-{template}-");
    assert!(name.starts_with(&prefix), "{name}");
    let rest: Vec<&str> = name[prefix.len()..].split('-').collect();
    assert_eq!(rest.len(), 2, "{name}");
    assert!(
        rest[0].len() >= 8 && rest[0].bytes().all(|c| c.is_ascii_alphanumeric()),
        "{name}"
    );
    let unix: u64 = rest[1].parse().expect("unix time suffix");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(unix) < 600, "{name}");
    assert!(name.len() <= 63);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_gets_a_minted_role_that_is_dropped_after() {
    let h = Harness::start().await;
    let token = h.token("alice");
    // sslmode=require: psql refuses to go on unless rolemint speaks TLS.
    let sql = "SELECT current_user; \
               SELECT pg_has_role(current_user, 'rolemint_managed', 'member'); \
               SELECT extract(epoch from rolvaliduntil)::bigint FROM pg_roles WHERE rolname = current_user; \
               SELECT count(*) FROM accounts;";
    let out = h.psql("readonly", "appdb", &token, sql).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_minted_name(lines[0], "alice", "readonly");
    assert_eq!(lines[1], "t", "the role is a member of rolemint_managed");
    let valid_until: u64 = lines[2].parse().expect("VALID UNTIL is set");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ttl = h.config.roles["readonly"].default_ttl.as_secs();
    assert!(
        valid_until.abs_diff(now + ttl) < 30,
        "VALID UNTIL {valid_until} is the lease expiry"
    );
    assert!(lines[3].parse::<u64>().unwrap() > 0);

    let left = h.wait_no_managed_roles(Duration::from_secs(5)).await;
    assert!(
        left.is_empty(),
        "roles left after psql disconnected: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_exists_during_the_session_and_is_gone_after() {
    let h = Harness::start().await;
    let client = h.session("readonly", "bob@example.com").await;
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    let role: String = row.get(0);
    assert_minted_name(&role, "bob_example_com", "readonly");
    assert_eq!(h.managed_roles().await, vec![role.clone()]);
    // The lease comment names the identity and template.
    let su = h.superuser().await;
    let comment: Option<String> = su
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    let comment = comment.expect("lease comment on the role");
    assert!(
        comment.contains("bob@example.com") && comment.contains("readonly"),
        "{comment}"
    );

    // The readonly template cannot write.
    let err = client
        .execute("DELETE FROM accounts", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));

    drop(client);
    let left = h.wait_no_managed_roles(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_get_distinct_roles() {
    let h = Harness::start().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(h.session("readwrite", "alice").await);
    }
    let mut names = Vec::new();
    for c in &clients {
        names.push(
            c.query_one("SELECT session_user::text", &[])
                .await
                .unwrap()
                .get::<_, String>(0),
        );
        // readwrite sessions act as app_owner, so what they create is not theirs.
        let current: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(current, "app_owner");
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5);
    assert_eq!(h.managed_roles().await.len(), 5);
    drop(clients);
    let left = h.wait_no_managed_roles(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_ttl_is_ended_with_57p01_and_rolled_back() {
    let h = Harness::with(Options {
        extra_toml: r#"
[roles.shortlived]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "3s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_owner TO \"{{name}}\"",
  "ALTER ROLE \"{{name}}\" SET role = 'app_owner'",
]
"#
        .into(),
        ..Options::default()
    })
    .await;
    let su = h.superuser().await;
    su.batch_execute("CREATE TABLE ttl_probe (x int); ALTER TABLE ttl_probe OWNER TO app_owner;")
        .await
        .unwrap();

    let client = h.session("shortlived", "carol").await;
    let role: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("BEGIN; INSERT INTO ttl_probe VALUES (1);")
        .await
        .unwrap();
    let err = client
        .batch_execute("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    // An error at all means the sleep was cut short; 57P01 says by whom.
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains("lease expired"), "{}", db.message());
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());

    let left = h.wait_no_managed_roles(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
    let rows: i64 = su
        .query_one("SELECT count(*) FROM ttl_probe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the open transaction was rolled back");
    let backends: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(backends, 0, "the backend was terminated");
}

/// Waits until a minted role runs a query starting with `query` (up to 20 s).
async fn wait_for_active_query(su: &tokio_postgres::Client, query: &str) {
    let running = || async {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename LIKE 'v-%' AND starts_with(query, $1) AND state = 'active'",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    };
    assert!(
        common::wait_until(Duration::from_secs(20), running).await,
        "{query} never started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_backend_and_the_session_stays_usable() {
    let h = Harness::start().await;
    let client = h.session("readonly", "dave").await;
    let cancel = client.cancel_token();
    let su = h.superuser().await;
    let canceller = tokio::spawn(async move {
        // Cancel once the sleep is running in the backend: a cancel that
        // arrives before the query is ignored by PostgreSQL.
        wait_for_active_query(&su, "SELECT pg_sleep(30)").await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client
        .batch_execute("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    canceller.await.unwrap().expect("cancel request sent");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_reaches_postgres_or_our_logs() {
    let h = Harness::start().await;
    let token = h.token("frank");
    for template in ["readonly", "readwrite"] {
        let out = h.psql(template, "appdb", &token, "SELECT 1").await;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let log = h.cluster.read_log();
    let creates: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CREATE ROLE \"v-"))
        .collect();
    assert!(
        creates.len() >= 2,
        "log_statement = 'all' shows the mints:\n{log}"
    );
    for line in &creates {
        assert!(
            line.contains("PASSWORD 'SCRAM-SHA-256$"),
            "not a verifier: {line}"
        );
    }
    let ours = common::captured_log();
    assert!(
        !ours.contains(token.expose()),
        "the token is in rolemint's log"
    );
    assert!(
        !ours.contains("SCRAM-SHA-256$"),
        "a verifier is in rolemint's log"
    );
    assert!(
        !log.contains(token.expose()),
        "the token is in the server log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_ends_sessions_and_revokes_every_lease() {
    let mut h = Harness::start().await;
    let idle = h.session("readonly", "gina").await;
    let busy = h.session("readonly", "gina").await;
    let sleeper = tokio::spawn(async move { busy.batch_execute("SELECT pg_sleep(60)").await });
    assert_eq!(h.managed_roles().await.len(), 2);

    // The harness's shutdown_grace is 2s; stop() returns once the server has.
    h.stop().await.expect("rolemint stops cleanly");
    assert!(
        h.managed_roles().await.is_empty(),
        "every lease revoked before exit"
    );

    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("shutting down"));
    assert!(idle.simple_query("SELECT 1").await.is_err());
    assert!(
        tokio::net::TcpStream::connect(h.addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// A TLS client that trusts the harness's self-signed certificate.
fn tls_connector(h: &Harness, alpn: Option<&[u8]>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(h.cert_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// The next backend message from `tls`, reading as needed.
async fn next_message<S: tokio::io::AsyncRead + Unpin>(
    tls: &mut S,
    buf: &mut bytes::BytesMut,
) -> postgres_protocol::message::backend::Message {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(m) = postgres_protocol::message::backend::Message::parse(buf).unwrap() {
            return m;
        }
        assert!(tls.read_buf(buf).await.unwrap() > 0, "closed early");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql_gets_a_session() {
    use bytes::BytesMut;
    use postgres_protocol::message::{backend, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    let token = h.token("hana");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // PostgreSQL 17's sslnegotiation=direct: TLS first, ALPN "postgresql".
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut tls = tls_connector(&h, Some(b"postgresql"))
        .connect(name.clone(), tcp)
        .await
        .expect("direct TLS handshake");
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "readonly"), ("database", "appdb")], &mut out).unwrap();
    tls.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(
        next_message(&mut tls, &mut buf).await,
        backend::Message::AuthenticationCleartextPassword
    ));
    out.clear();
    frontend::password_message(token.expose().as_bytes(), &mut out).unwrap();
    tls.write_all(&out).await.unwrap();
    assert!(matches!(
        next_message(&mut tls, &mut buf).await,
        backend::Message::AuthenticationOk
    ));
    let mut saw_key = false;
    loop {
        match next_message(&mut tls, &mut buf).await {
            backend::Message::BackendKeyData(_) => saw_key = true,
            backend::Message::ReadyForQuery(_) => break,
            backend::Message::ParameterStatus(_) => {}
            _ => panic!("unexpected message during startup"),
        }
    }
    assert!(saw_key);
    assert_eq!(h.managed_roles().await.len(), 1);
    drop(tls);
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(5))
        .await
        .is_empty());

    // Direct TLS without the ALPN is not PostgreSQL: closed, nothing minted.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let refused = match tls_connector(&h, None).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut tls) => {
            let _ = tls.write_all(&out).await;
            let mut rest = Vec::new();
            matches!(tls.read_to_end(&mut rest).await, Err(_) | Ok(0))
        }
    };
    assert!(refused, "direct TLS without ALPN was served");
}

/// Output of a process on a pseudo-terminal, collected by a thread.
struct Terminal {
    master: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }

    /// Waits until the screen shows `text` (up to 20 s).
    async fn wait_for(&self, text: &str) {
        let shown = || async { self.output.lock().unwrap().contains(text) };
        if !common::wait_until(Duration::from_secs(20), shown).await {
            panic!(
                "never saw {text:?} on the terminal:\n{}",
                self.output.lock().unwrap()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_psql_ctrl_c_cancels_and_the_session_stays_usable() {
    let h = Harness::start().await;
    let token = h.token("ivan");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    // On a terminal psql is interactive: Ctrl-C cancels the query and psql
    // goes on reading commands in the same session.
    let mut child = std::process::Command::new(h.cluster.psql())
        .args([
            "-X",
            "-n",
            "-P",
            "pager=off",
            "-U",
            "readonly",
            "-d",
            "appdb",
        ])
        .env("PGPASSWORD", token.expose())
        .env("PGSSLMODE", "require")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", h.addr.port().to_string())
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(slave))
        .spawn()
        .unwrap();
    let master = std::fs::File::from(pty.master);
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut reader = master.try_clone().unwrap();
    let sink = std::sync::Arc::clone(&output);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut term = Terminal { master, output };

    term.wait_for("appdb=>").await;
    term.type_line("SELECT session_user AS before \\gset");
    term.type_line("SELECT pg_sleep(30);");
    let su = h.superuser().await;
    wait_for_active_query(&su, "SELECT pg_sleep(30)").await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    term.wait_for("canceling statement due to user request")
        .await;

    // Same session, same minted role.
    term.type_line("SELECT 'same ' || (session_user = :'before')::text || ' session';");
    term.wait_for("same true session").await;
    term.type_line("\\q");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(5))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sessions_shares_a_bounded_admin_pool() {
    let h = Harness::with(Options {
        admin_pool_size: 2,
        ..Options::default()
    })
    .await;
    let token = h.token("judy");
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let conn_string = h.conn_string("readonly", "appdb", token.expose());
        burst.spawn(async move {
            let (client, conn) =
                tokio_postgres::connect(&conn_string, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        });
    }
    let clients = burst.join_all().await;
    for c in &clients {
        let c = c.as_ref().expect("every session of the burst connects");
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
    }
    assert_eq!(h.managed_roles().await.len(), 12);
    drop(clients);
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
    // log_connections shows every admin login to appdb: the 12 mints and 12
    // revocations went through at most two connections.
    let admin_logins = h
        .cluster
        .read_log()
        .lines()
        .filter(|l| l.contains("connection authorized: user=rolemint_admin database=appdb"))
        .count();
    assert!(
        (1..=2).contains(&admin_logins),
        "{admin_logins} admin connections to appdb"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_terminated_behind_the_proxy_ends_the_session_and_its_role() {
    let h = Harness::start().await;
    let client = h.session("readonly", "kim").await;
    let role: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let su = h.superuser().await;
    su.query(
        // With a timeout it returns once the backend has exited.
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = $1",
        &[&role],
    )
    .await
    .unwrap();
    // The client hears PostgreSQL's own FATAL through the splice.
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(client.is_closed(), "{err:?}");
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(5))
        .await
        .is_empty());
    assert_eq!(h.wait_no_leases().await, 0);
}

/// One whole message off `tcp` (tag, length, body), read raw: protocol
/// 3.2's long BackendKeyData is not something `postgres_protocol` parses.
async fn raw_message(
    tcp: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> bytes::BytesMut {
    use tokio::io::AsyncReadExt;
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                return buf.split_to(len + 1);
            }
        }
        assert!(tcp.read_buf(buf).await.unwrap() > 0, "closed early");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_for_protocol_3_2_with_an_option_speaks_3_2_with_a_long_cancel_key() {
    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;

    let h = Harness::start().await;
    let token = h.token("leo");
    let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // A startup for protocol 3.2 with a protocol option, as newer libpq
    // versions may send.
    let mut body = BytesMut::new();
    body.put_u32(0x0003_0002);
    for s in [
        "user",
        "readonly",
        "database",
        "appdb",
        "_pq_.test_option",
        "on",
        "",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.put_u8(0);
    }
    let mut packet = BytesMut::new();
    packet.put_u32(body.len() as u32 + 4);
    packet.extend_from_slice(&body);
    tcp.write_all(&packet).await.unwrap();

    let mut buf = BytesMut::new();
    let v = raw_message(&mut tcp, &mut buf).await;
    assert_eq!(v[0], b'v');
    assert_eq!(&v[5..9], &0x0003_0002u32.to_be_bytes(), "3.2 kept");
    assert_eq!(&v[9..13], &1i32.to_be_bytes(), "one option refused");
    assert_eq!(&v[13..], b"_pq_.test_option\0");
    assert_eq!(
        &raw_message(&mut tcp, &mut buf).await[..],
        b"R\0\0\0\x08\0\0\0\x03"
    );
    let mut out = BytesMut::new();
    frontend::password_message(token.expose().as_bytes(), &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    assert_eq!(
        &raw_message(&mut tcp, &mut buf).await[..],
        b"R\0\0\0\x08\0\0\0\0"
    );
    let mut key = None;
    loop {
        let m = raw_message(&mut tcp, &mut buf).await;
        match m[0] {
            b'K' => key = Some(m),
            b'Z' => break,
            _ => {}
        }
    }
    // 3.2: the pid and a 256-bit secret.
    let key = key.expect("BackendKeyData");
    assert_eq!(key.len(), 1 + 4 + 4 + 32, "{key:?}");
    out.clear();
    frontend::query("SELECT 1", &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    assert_eq!(raw_message(&mut tcp, &mut buf).await[0], b'T');
    assert_eq!(raw_message(&mut tcp, &mut buf).await[0], b'D');
}

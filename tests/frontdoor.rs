//! The front door: every byte before authentication is hostile. Each test
//! sends the bytes to the real proxy (or plays a hostile backend to the
//! real login code) and checks the outcome where it matters: what the
//! client read, what reached the log, what PostgreSQL holds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{sqlstate, Harness, Options};
use rolemint::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A startup packet (length word included) with these parameters.
fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    startup_version(0x0003_0000, params)
}

fn startup_version(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn password_message(token: &str) -> Vec<u8> {
    let mut m = vec![b'p'];
    m.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(token.as_bytes());
    m.push(0);
    m
}

/// Sends `bytes`, half-closes, and reads until the proxy closes; panics on
/// a hang.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the proxy hung on {bytes:?}");
    answer
}

/// The SQLSTATE and severity of an ErrorResponse at the start of `answer`.
fn error_fields(answer: &[u8]) -> Option<(String, String)> {
    if answer.first() != Some(&b'E') || answer.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([answer[1], answer[2], answer[3], answer[4]]) as usize;
    let body = answer.get(5..1 + len)?;
    let mut code = None;
    let mut severity = None;
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = Some(String::from_utf8_lossy(v).into_owned()),
            Some((b'S', v)) => severity = Some(String::from_utf8_lossy(v).into_owned()),
            _ => {}
        }
    }
    Some((severity?, code?))
}

fn fatal(code: &str) -> Option<(String, String)> {
    Some(("FATAL".into(), code.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_a_fatal_or_a_close_never_a_hang() {
    let h = Harness::start().await;
    // The length word is read first: too short or too long is told at once.
    let answer = exchange(h.addr, &[0, 0, 0, 4, 0, 3, 0, 0]).await;
    assert_eq!(error_fields(&answer), fatal("08P01"), "{answer:?}");
    let answer = exchange(h.addr, &10_001u32.to_be_bytes()).await;
    assert_eq!(error_fields(&answer), fatal("08P01"), "{answer:?}");
    // No terminator after the last parameter.
    let mut unterminated = startup(&[("user", "readonly")]);
    unterminated.pop();
    unterminated.pop();
    let n = unterminated.len() as u32;
    unterminated[..4].copy_from_slice(&n.to_be_bytes());
    let answer = exchange(h.addr, &unterminated).await;
    assert_eq!(error_fields(&answer), fatal("08P01"), "{answer:?}");
    // No user: 28000, as PostgreSQL says it.
    let answer = exchange(h.addr, &startup(&[("database", "appdb")])).await;
    assert_eq!(error_fields(&answer), fatal("28000"), "{answer:?}");
    // Protocol 2.0 and 4.0: refused as unsupported.
    for version in [0x0002_0000, 0x0004_0000] {
        let answer = exchange(h.addr, &startup_version(version, &[("user", "readonly")])).await;
        assert_eq!(error_fields(&answer), fatal("0A000"), "{answer:?}");
    }
    // EOF in the middle of a packet: nobody to tell, the socket is closed.
    let whole = startup(&[("user", "readonly"), ("database", "appdb")]);
    let answer = exchange(h.addr, &whole[..whole.len() / 2]).await;
    assert!(answer.is_empty(), "{answer:?}");
    // EOF in the middle of the token.
    let mut partial = whole.clone();
    partial.extend_from_slice(&[b'p', 0, 0, 1, 0, b'x']);
    let answer = exchange(h.addr, &partial).await;
    assert_eq!(
        answer.first(),
        Some(&b'R'),
        "asked for the token: {answer:?}"
    );

    assert!(h.managed_roles().await.is_empty(), "nothing was minted");
    let token = h.token("alice");
    let client = h.connect("readonly", "appdb", token.expose()).await;
    assert!(client.is_ok(), "the proxy still serves: {client:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_reach_postgresql_only_from_the_allowlist() {
    let h = Harness::start().await;
    let token = h.token("alice");
    // An allowed setting inside options reaches the backend session.
    let conn = format!(
        "{} options='-c statement_timeout=4321ms' application_name=frontdoor-test",
        h.conn_string("readonly", "appdb", token.expose())
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("allowed settings connect");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "4321ms");
    assert_eq!(row.get::<_, String>(1), "frontdoor-test");
    drop(client);

    // A setting the minted role must not choose: refused before minting.
    let conn = format!(
        "{} options='-c session_authorization=postgres'",
        h.conn_string("readonly", "appdb", token.expose())
    );
    let e = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("session_authorization"), "{message}");

    // As a plain startup parameter, and replication.
    let answer = exchange(
        h.addr,
        &startup(&[("user", "readonly"), ("log_statement", "none")]),
    )
    .await;
    assert_eq!(error_fields(&answer), fatal("42501"), "{answer:?}");
    let answer = exchange(
        h.addr,
        &startup(&[("user", "readonly"), ("replication", "database")]),
    )
    .await;
    assert_eq!(error_fields(&answer), fatal("0A000"), "{answer:?}");

    let minted = h
        .cluster
        .read_log()
        .lines()
        .filter(|l| l.contains("CREATE ROLE \"v-"))
        .count();
    assert_eq!(minted, 1, "only the allowed session minted a role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newlines_in_startup_parameters_never_forge_a_log_line() {
    let h = Harness::start().await;
    let mut bytes = startup(&[
        ("user", "readonly\nFORGED-USER level=INFO refused nothing"),
        ("database", "appdb\r\nFORGED-DB"),
    ]);
    bytes.extend(password_message("not-a-token"));
    let answer = exchange(h.addr, &bytes).await;
    let rest = &answer[9..]; // after AuthenticationCleartextPassword
    assert_eq!(error_fields(rest), fatal("28P01"), "{answer:?}");

    let log = common::captured_log();
    assert!(
        log.contains("readonly\\nFORGED-USER"),
        "the refusal names the parameter, escaped:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "a client string started a log line: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_covers_the_whole_handshake_and_a_trickle_is_cut() {
    let h = Harness::start().await; // handshake_timeout = 5s
    let token = h.token("alice");
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let started = Instant::now();
    // The startup packet, its first bytes one per second.
    let packet = startup(&[("user", "readonly"), ("database", "appdb")]);
    for b in &packet[..3] {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.write_all(&packet[3..]).await.unwrap();
    let mut auth = [0u8; 9];
    s.read_exact(&mut auth).await.unwrap();
    assert_eq!(auth[0], b'R');
    // Then the token, one byte per second, until the proxy hangs up.
    let message = password_message(token.expose());
    let mut sent = 0;
    let mut answer = Vec::new();
    for b in &message {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {} // still open; next byte
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the trickle was never cut"
        );
    }
    // About 3 s went to the startup packet, so the token had about 2 s of
    // the 5 s deadline, not a fresh 5 s of its own.
    assert!(
        sent <= 4,
        "{sent} token bytes were accepted: the token got its own timeout"
    );
    assert!(sent < message.len(), "the whole token went through");
    // Cut: at most a FATAL ErrorResponse, never an AuthenticationOk.
    assert!(
        answer.is_empty() || answer[0] == b'E',
        "no session was started: {answer:?}"
    );
    assert!(h.managed_roles().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_take_handshake_slots_not_session_slots() {
    let h = Harness::with(Options {
        max_connections: 1,
        max_handshakes: 2,
        ..Options::default()
    })
    .await;
    let token = h.token("alice");
    // An idle socket does not hold the only session slot.
    let idle1 = TcpStream::connect(h.addr).await.unwrap();
    let client = h
        .connect("readonly", "appdb", token.expose())
        .await
        .expect("a session beside an idle socket");
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(h.managed_roles().await, vec![role]);
    drop(client);
    assert_eq!(h.wait_no_leases().await, 0);

    // Two idle sockets fill the handshake slots: the next connection waits
    // in the accept queue (a reconnect storm must not meet closed sockets)
    // and gets its session once the idle sockets' handshake deadline has
    // cut them; they keep no slot past it.
    let idle2 = TcpStream::connect(h.addr).await.unwrap();
    let queued = h
        .connect("readonly", "appdb", token.expose())
        .await
        .expect("a third connection waits for a handshake slot, not closed");
    queued
        .simple_query("SELECT 1")
        .await
        .expect("the queued session answers");
    drop(queued);
    for mut idle in [idle1, idle2] {
        let mut buf = [0_u8; 256];
        let cut = tokio::time::timeout(Duration::from_secs(30), async {
            // At most an ErrorResponse, then the end of the stream.
            while matches!(idle.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
        assert!(
            cut.is_ok(),
            "an idle socket outlived its handshake deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_role_that_sets_its_own_password_cannot_log_in_around_the_proxy() {
    let h = Harness::start().await;
    let client = h.session("readonly", "alice").await;
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let password = "self-chosen-password-0123456789";
    client
        .batch_execute(&format!("ALTER ROLE CURRENT_USER PASSWORD '{password}'"))
        .await
        .expect("a role may change its own password");

    // From another address (127.0.0.2 is on the loopback network too):
    // pg_hba.conf rejects members of rolemint_managed.
    let direct = |from: [u8; 4]| {
        let role = role.clone();
        let port = h.cluster.port();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind((std::net::Ipv4Addr::from(from), 0).into())
                .unwrap();
            let tcp = socket
                .connect(([127, 0, 0, 1], port).into())
                .await
                .expect("TCP to PostgreSQL");
            let mut config = tokio_postgres::Config::new();
            config.user(&role).password(password).dbname("appdb");
            config
                .connect_raw(tcp, tokio_postgres::NoTls)
                .await
                .map(|(client, connection)| {
                    tokio::spawn(connection);
                    client
                })
        }
    };
    let Err(e) = direct([127, 0, 0, 2]).await else {
        panic!("a direct login from 127.0.0.2 was let in");
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{e:?}");
    assert!(
        h.cluster
            .read_log()
            .contains("pg_hba.conf rejects connection"),
        "PostgreSQL refused it by pg_hba.conf"
    );
    // From rolemint's address the password works: the refusal above is the
    // address, which is why rolemint's host must be the only one allowed.
    let from_rolemint = direct([127, 0, 0, 1])
        .await
        .expect("from rolemint's address");
    drop(from_rolemint);

    // `rolemint check` passes on these rules and fails on a wider line.
    rolemint::cli::check::run(&h.config)
        .await
        .expect("check passes on the test cluster's pg_hba.conf");
    let hba_path = h.cluster.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).unwrap();
    std::fs::write(
        &hba_path,
        format!("host all all 127.0.0.0/8 scram-sha-256\n{hba}"),
    )
    .unwrap();
    h.superuser()
        .await
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let failed = common::wait_until(Duration::from_secs(10), || async {
        rolemint::cli::check::run(&h.config).await.is_err()
    })
    .await;
    assert!(
        failed,
        "check passed with a line letting minted roles in from anywhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_pool_refuses_to_send_its_password_in_clear() {
    let h = Harness::start().await;
    let hba_path = h.cluster.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).unwrap();
    std::fs::write(
        &hba_path,
        format!(
            "host all {} 127.0.0.1/32 password\n{hba}",
            h.demo.admin_user
        ),
    )
    .unwrap();
    let su = h.superuser().await;
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let admin_client = rolemint::pg::AdminClient::new(&h.config).unwrap();
    let Err(e) = admin_client.admin_facts().await else {
        panic!("the admin sent its password in clear");
    };
    assert!(e.to_string().contains("cleartext password"), "{e}");
    // PostgreSQL never got a password to check: no failed or successful
    // admin login is in its log from this attempt.
    let log = h.cluster.read_log();
    assert!(
        !log.contains(&format!(
            "password authentication failed for user \"{}\"",
            h.demo.admin_user
        )),
        "{log}"
    );

    let mut weak = h.config.clone();
    weak.backend.allow_weak_auth = true;
    let admin_client = rolemint::pg::AdminClient::new(&weak).unwrap();
    admin_client
        .admin_facts()
        .await
        .expect("allow_weak_auth lets the admin in with a cleartext password");
}

/// A backend that answers an SSLRequest with 'S' and, in the same write,
/// bytes that were never encrypted (CVE-2021-23222).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_backends_tls_answer_abort_the_connection() {
    rolemint::tls::install_crypto_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        s.read_exact(&mut request).await.unwrap();
        s.write_all(b"S\x00\x00\x00\x0cinjected").await.unwrap();
        // Whatever comes next (nothing, or a ClientHello) is not answered.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        request
    });
    let backend: rolemint::config::BackendConfig = toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {port}\nadmin_user = \"a\"\ntls = \"require\"\nconnect_timeout = \"5s\""
    ))
    .unwrap();
    let tls = rolemint::tls::backend_client_config(&backend).unwrap();
    let e = rolemint::pg::backend::connect(&backend, tls.as_ref())
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("CVE-2021-23222"), "{e}");
    let request = fake.await.unwrap();
    assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
}

/// Plays a backend that answers the startup with `reply` and records
/// everything the client sends after its startup packet.
async fn hostile_backend(reply: Vec<u8>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        s.write_all(&reply).await.unwrap();
        let mut after = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut after)).await;
        after
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_backend_gets_no_password_and_a_clear_error() {
    let password = Secret::new("minted-password-never-on-the-wire");
    let auth = |code: i32, rest: &[u8]| {
        let mut m = vec![b'R'];
        m.extend_from_slice(&((8 + rest.len()) as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(rest);
        m
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (auth(3, b""), "cleartext password"),
        (auth(5, b"salt"), "MD5 password"),
        (auth(0, b""), "no authentication"),
        (
            b"E\x00\x00\x00\x10SFATAL\x00Mhi\x00\x00".to_vec(),
            "without a SQLSTATE",
        ),
    ];
    for (reply, expected) in cases {
        let (port, backend) = hostile_backend(reply).await;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let result = rolemint::pg::backend::login(
            rolemint::tls::MaybeTls::Plain(tcp),
            "v-alice-readonly-x",
            &password,
            "appdb",
            &[],
            &toml::from_str("host = \"127.0.0.1\"\nadmin_user = \"a\"").unwrap(),
        )
        .await;
        let e = result.expect_err("refused");
        assert!(e.to_string().contains(expected), "{expected}: {e}");
        let after = backend.await.unwrap();
        assert!(
            !after.windows(9).any(|w| w == b"minted-pa"),
            "the password was sent: {after:?}"
        );
        assert!(after.first() != Some(&b'p'), "a password message was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_inside_tls_from_libpq_17_is_closed_cleanly() {
    let Some(python) = std::env::var_os("ROLEMINT_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .filter(|p| p.exists())
    else {
        eprintln!(
            "skipped: set ROLEMINT_TEST_PYTHON to a python with psycopg[binary] (libpq 17+); .ci/run does"
        );
        return;
    };
    let h = Harness::start().await;
    let token = h.token("alice");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=appdb user=readonly sslmode=require connect_timeout=10",
        h.addr.port()
    );
    // cancel_safe() raises when the server does not close its TLS stream
    // cleanly.
    let script = common::PY_RUN_AND_CANCEL.to_owned()
        + r#"
print("libpq", pq.version(), flush=True)
conn = psycopg.connect(sys.argv[1], autocommit=True)
run_and_cancel(conn)
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", &script, &conninfo])
        .env("PGPASSWORD", token.expose())
        .env(
            "ROLEMINT_TEST_SU_DSN",
            h.cluster.superuser_conn_string("appdb"),
        )
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("python finished")
        .expect("python runs");
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    let version: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("libpq "))
        .and_then(|v| v.trim().parse().ok())
        .expect("libpq version printed");
    assert!(
        version >= 170_000,
        "libpq {version} cancels in plaintext: {text}"
    );
    assert!(text.contains("cancelled 57014"), "{text}");
    assert!(text.contains("still alive"), "{text}");
    assert!(!text.contains("unexpected eof"), "{text}");
}

#[test]
fn any_bytes_sent_to_the_front_door_end_in_an_error_or_a_close() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::start());
    let addr = h.addr;
    // Random bytes, and random bytes behind a valid startup header or an
    // SSLRequest, so the deeper states are reached too.
    let header = prop_oneof![
        Just(Vec::new()),
        Just(startup(&[("user", "readonly"), ("database", "appdb")])),
        Just(vec![0, 0, 0, 8, 4, 210, 22, 47]),
        Just(vec![0, 0, 0, 16, 4, 210, 22, 46]),
    ];
    let input = (header, prop::collection::vec(any::<u8>(), 0..400)).prop_map(|(mut h, tail)| {
        h.extend(tail);
        h
    });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&input, |bytes| {
            // `exchange` panics on a hang (15 s, beyond the 5 s handshake
            // deadline).
            rt.block_on(exchange(addr, &bytes));
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        assert!(h.managed_roles().await.is_empty(), "garbage minted a role");
        let token = h.token("alice");
        assert!(h.connect("readonly", "appdb", token.expose()).await.is_ok());
    });
    drop(h);
}

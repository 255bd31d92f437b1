//! Three rolemint instances on loopback against one PostgreSQL, sharing
//! nothing but the database and `[cluster] secret`: instance A runs
//! in-process (the harness), B and C are `rolemint serve` processes.
//!
//! What a load balancer in front of them may do, and what must still hold:
//! a cancel lands on another instance than the session's; an operator acts
//! through A on a session C holds; B dies by SIGKILL with sessions open;
//! clients connect and disconnect at full speed through all three.

mod common;

use std::time::{Duration, SystemTime};

use common::{output_text, sqlstate, wait_until, Harness, Options, ServeProcess};
use rolemint::lease::end::EndReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLUSTER_SECRET: &str = "cluster-secret-for-tests-0123456789abcdef";

/// The TOML every instance appends: the shared secret, a fast reaper, and
/// a template with a short TTL; `instance` names it in lease comments. The
/// grace is longer than a mint and a login take on a loaded machine (the
/// lease comment's issue time is in whole seconds), so no instance reaps a
/// role another has minted and is about to log in with.
fn extra(instance: &str) -> String {
    format!(
        r#"
[cluster]
secret = "{CLUSTER_SECRET}"

[mint]
instance = "{instance}"
reap_interval = "1s"
reap_grace = "5s"

[roles.short]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "4s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_read TO \"{{{{name}}}}\"",
]
"#
    )
}

async fn instance_a() -> Harness {
    Harness::with(Options {
        extra_toml: extra("a"),
        ..Options::default()
    })
    .await
}

/// One session's client, role and backend pid.
struct Session {
    client: tokio_postgres::Client,
    role: String,
    pid: i32,
}

async fn describe(client: tokio_postgres::Client) -> Session {
    let row = client
        .query_one("SELECT current_user::text, pg_backend_pid()", &[])
        .await
        .expect("who am I");
    Session {
        role: row.get(0),
        pid: row.get(1),
        client,
    }
}

async fn session_on(h: &Harness, serve: Option<&ServeProcess>, template: &str) -> Session {
    let token = h.token("alice");
    let client = match serve {
        Some(serve) => serve.connect(template, token.expose()).await,
        None => h.connect(template, "appdb", token.expose()).await,
    };
    describe(client.expect("session through rolemint")).await
}

/// Sends a raw CancelRequest to `addr` and waits until rolemint closes the
/// connection, which it does once it has handled the request.
async fn send_cancel(addr: std::net::SocketAddr, pid: i32, secret: i32) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect for cancel");
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16i32.to_be_bytes());
    msg.extend_from_slice(&80_877_102i32.to_be_bytes());
    msg.extend_from_slice(&pid.to_be_bytes());
    msg.extend_from_slice(&secret.to_be_bytes());
    tcp.write_all(&msg).await.expect("send cancel");
    let mut sink = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut sink))
        .await
        .expect("rolemint closes a cancel connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "a CancelRequest gets no answer");
}

/// Whether `pid` is running a statement now, as PostgreSQL sees it.
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

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .expect("read pg_roles")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_instance_cancels_and_forged_keys_do_nothing() {
    let h = instance_a().await;
    let c = h.spawn_serve(&extra("c"), &[]).await;
    let s = session_on(&h, Some(&c), "readonly").await;
    let token = s.client.cancel_token();

    // A long statement on C's session.
    let sleeper = {
        let client = s.client;
        tokio::spawn(async move {
            let result = client.simple_query("SELECT pg_sleep(60)").await;
            (client, result)
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || is_active(&h, s.pid)).await,
        "the statement never started"
    );

    // Forged keys for the live pid, to the issuing instance and to another:
    // nothing is cancelled. Each is handled (the connection closed) before
    // we look.
    for forged in [0, 1, -1, 0x5eed] {
        send_cancel(h.addr, s.pid, forged).await;
        send_cancel(c.addr, s.pid, forged).await;
    }
    // And a key for a pid that is not a minted role's backend.
    let su_pid: i32 = h
        .superuser()
        .await
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    send_cancel(h.addr, su_pid, 0).await;
    assert!(
        is_active(&h, s.pid).await,
        "a forged key cancelled the query"
    );
    assert!(!sleeper.is_finished());

    // The client's real key, sent to A (not C, which holds the session).
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    token
        .cancel_query_raw(tcp, tokio_postgres::NoTls)
        .await
        .expect("cancel through A");
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap_or_else(|_| {
            let log = common::captured_log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("cancel")).collect();
            panic!(
                "the query was not cancelled in time; A's log:\n{}",
                lines.join("\n")
            )
        })
        .unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");

    // The session goes on, as the same role and backend.
    let row = client
        .query_one("SELECT current_user::text, pg_backend_pid()", &[])
        .await
        .expect("the session is usable after the cancel");
    assert_eq!(row.get::<_, String>(0), s.role);
    assert_eq!(row.get::<_, i32>(1), s.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_renew_revoke_cleanup_and_pgbench() {
    let h = instance_a().await;
    let mut b = h.spawn_serve(&extra("b"), &[]).await;
    let c = h.spawn_serve(&extra("c"), &[]).await;

    // 30 sessions, 10 on each instance.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    let mut on_c = Vec::new();
    for _ in 0..10 {
        on_a.push(session_on(&h, None, "readonly").await);
        on_b.push(session_on(&h, Some(&b), "readonly").await);
        on_c.push(session_on(&h, Some(&c), "readonly").await);
    }
    assert_eq!(h.managed_roles().await.len(), 30);

    // Renew through A a lease C holds: C's session outlives its 4 s TTL,
    // because C re-reads the expiry from the catalog at its deadline.
    let short = session_on(&h, Some(&c), "short").await;
    let renewed_to = SystemTime::now() + Duration::from_secs(3600);
    let comment_row = h
        .superuser()
        .await
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&short.role],
        )
        .await
        .unwrap();
    let mut comment: rolemint::pg::LeaseComment =
        serde_json::from_str(comment_row.get::<_, &str>(0)).expect("lease comment is JSON");
    comment.expires_at = rolemint::pg::rfc3339(renewed_to);
    assert_eq!(comment.instance, "c");
    h.shared
        .admin_client
        .renew(&short.role, "appdb", renewed_to, &comment)
        .await
        .expect("A renews C's lease in the catalog");
    assert!(
        wait_until(Duration::from_secs(15), || async {
            c.log().contains("deadline re-armed")
        })
        .await,
        "C never re-read the renewed expiry:\n{}",
        c.log()
    );
    short
        .client
        .simple_query("SELECT 1")
        .await
        .expect("the renewed session outlived its first deadline");
    assert!(role_exists(&h, &short.role).await);

    // Revoke through A (its revocation service) the lease C holds: the
    // backend is terminated, the client told so, the role dropped.
    h.shared.revoker.schedule(
        &short.role,
        "appdb",
        Some("short"),
        EndReason::RevokedByOperator,
    );
    let revoked = wait_until(Duration::from_secs(10), || async {
        !role_exists(&h, &short.role).await
    })
    .await;
    assert!(revoked, "A's revocation did not drop C's role");
    let err = short
        .client
        .simple_query("SELECT 1")
        .await
        .expect_err("the revoked session is over");
    assert!(
        sqlstate(&err).as_deref() == Some("57P01") || err.is_closed(),
        "{err:?}"
    );

    // SIGKILL B with its 10 sessions open: A's or C's reaper drops all of
    // B's roles once their backends are gone; A's and C's sessions go on.
    b.kill().await;
    let b_roles: Vec<String> = on_b.iter().map(|s| s.role.clone()).collect();
    let reaped = wait_until(Duration::from_secs(30), || async {
        let left = h.managed_roles().await;
        !b_roles.iter().any(|r| left.contains(r))
    })
    .await;
    assert!(
        reaped,
        "B's roles are still there: {:?}",
        h.managed_roles().await
    );
    for s in on_a.iter().chain(&on_c) {
        let row = s
            .client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("A's and C's sessions go on after B died");
        assert_eq!(row.get::<_, String>(0), s.role);
    }
    assert_eq!(h.managed_roles().await.len(), 20);
    drop(on_b);
    drop(on_a);
    drop(on_c);
    assert!(
        h.wait_no_managed_roles(Duration::from_secs(30))
            .await
            .is_empty(),
        "sessions closed, roles left"
    );

    // pgbench -C through A and C at once (B is gone; a restarted B joins).
    let b = h.spawn_serve(&extra("b"), &[]).await;
    let ports = [h.addr.port(), b.addr.port(), c.addr.port()];
    let runs = ports.map(|port| pgbench_connect_per_transaction(&h, port));
    let outputs = futures_join3(runs).await;
    for out in &outputs {
        let text = output_text(out);
        assert!(out.status.success(), "pgbench -C failed:\n{text}");
        assert!(
            !text.contains("number of failed transactions: ")
                || text.contains("number of failed transactions: 0 "),
            "{text}"
        );
    }
    assert!(
        h.wait_no_managed_roles(Duration::from_secs(30))
            .await
            .is_empty(),
        "pgbench's roles were left behind"
    );
}

/// `pgbench -C -S` through the instance on `port`.
async fn pgbench_connect_per_transaction(h: &Harness, port: u16) -> std::process::Output {
    let token = h.token("bench");
    tokio::process::Command::new(h.cluster.pgbench())
        .args([
            "-n", "-C", "-S", "-c", "2", "-t", "40", "-U", "readonly", "appdb",
        ])
        .env("PGPASSWORD", token.expose())
        .env("PGSSLMODE", "disable")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output()
        .await
        .expect("pgbench runs")
}

async fn futures_join3<F: std::future::Future>(runs: [F; 3]) -> [F::Output; 3] {
    let [x, y, z] = runs;
    let (x, y, z) = tokio::join!(x, y, z);
    [x, y, z]
}

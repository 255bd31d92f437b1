//! Faults survived: the proxy SIGKILLed with live sessions (and at the two
//! failpoints of a session), two instances on one database, churn. After
//! each, PostgreSQL itself is asked what is left: members of
//! `rolemint_managed`, and backends of minted roles.
//!
//! `rolemint serve` runs as a child process here (so it can be SIGKILLed),
//! with a short reap interval and grace; the in-process proxy of the
//! harness keeps the defaults (30 s / 2 m), too slow to be the one that
//! cleans up within these tests' waits.

mod common;

use std::time::Duration;

use common::{connect_owned, output_text, wait_until, Harness, Options, ServeProcess};

/// `[mint]` of a short-reaping `rolemint serve` named `instance`.
fn fast_reaper(instance: &str) -> String {
    format!("[mint]\ninstance = \"{instance}\"\nreap_interval = \"1s\"\nreap_grace = \"2s\"\n")
}

/// Longest wait for a restarted proxy to reap: the grace, a few sweeps,
/// and slack for a loaded 2-CPU machine.
const REAP_WITHIN: Duration = Duration::from_secs(20);

async fn managed_count(h: &Harness) -> usize {
    h.managed_roles().await.len()
}

/// Waits until nothing minted is left in PostgreSQL: no member of
/// `rolemint_managed`, no backend of one.
async fn assert_all_reaped(h: &Harness, by: &ServeProcess) {
    let clean = wait_until(REAP_WITHIN, || async {
        h.managed_roles().await.is_empty() && h.minted_backends().await == 0
    })
    .await;
    assert!(
        clean,
        "left: roles {:?}, backends {}\nreaper log:\n{}",
        h.managed_roles().await,
        h.minted_backends().await,
        by.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_live_sessions_then_a_new_proxy_reaps_every_role() {
    let h = Harness::start().await;
    // Not rolemint's: an idle role shaped like a minted one but not in the
    // marker, and the admin (a member of the marker WITH ADMIN OPTION).
    h.superuser()
        .await
        .batch_execute("CREATE ROLE \"v-not-ours-abcdefgh-1\" LOGIN VALID UNTIL '2000-01-01'")
        .await
        .expect("create a foreign role");
    let mut a = h.spawn_serve(&fast_reaper("a"), &[]).await;
    let token = h.token("alice");
    let mut clients = Vec::new();
    for _ in 0..20 {
        let c = a
            .connect("readonly", token.expose())
            .await
            .expect("session");
        c.simple_query("SELECT 1").await.expect("query");
        clients.push(c);
    }
    assert_eq!(managed_count(&h).await, 20);
    assert_eq!(h.minted_backends().await, 20);

    a.kill().await;
    // The backends notice their client (the proxy) is gone and exit; the
    // roles stay, nobody is left to drop them.
    assert!(wait_until(REAP_WITHIN, || async { h.minted_backends().await == 0 }).await);
    assert_eq!(
        managed_count(&h).await,
        20,
        "roles dropped without a reaper"
    );
    for c in &clients {
        assert!(c.simple_query("SELECT 1").await.is_err());
    }

    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    assert_all_reaped(&h, &b).await;
    assert!(b.log().contains("reaper: role revoked"), "{}", b.log());
    let su = h.superuser().await;
    let survivors = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('v-not-ours-abcdefgh-1', $1)",
            &[&h.demo.admin_user],
        )
        .await
        .expect("count survivors");
    assert_eq!(
        survivors.get::<_, i64>(0),
        2,
        "the reaper dropped a role not its own"
    );
}

/// Starts `count` sessions that stop at `failpoint`, waits until PostgreSQL
/// shows them there (`ready`), SIGKILLs the proxy, and checks a new proxy
/// reaps everything.
async fn killed_at_failpoint(failpoint: &str, count: usize) {
    let h = Harness::start().await;
    let mut a = h
        .spawn_serve(&fast_reaper("a"), &[("ROLEMINT_FAILPOINT", failpoint)])
        .await;
    let token = h.token("bob");
    let mut pending = Vec::new();
    for _ in 0..count {
        let conn = connect_owned(a.conn_string("readonly", token.expose()));
        pending.push(tokio::spawn(async move { conn.await.map(drop) }));
    }
    let logged_in = failpoint == "after_login";
    let reached = wait_until(REAP_WITHIN, || async {
        managed_count(&h).await == count
            && (!logged_in || h.minted_backends().await == count as i64)
    })
    .await;
    assert!(reached, "sessions did not reach {failpoint}:\n{}", a.log());
    if !logged_in {
        assert_eq!(h.minted_backends().await, 0);
    }

    a.kill().await;
    for p in pending {
        let outcome = p.await.expect("client task");
        assert!(outcome.is_err(), "a session got through a failpoint");
    }
    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    assert_all_reaped(&h, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_create_role_and_login_leaves_nothing_after_restart() {
    killed_at_failpoint("after_mint", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_login_and_splice_leaves_nothing_after_restart() {
    killed_at_failpoint("after_login", 5).await;
}

/// Sweeps `serve` has finished (its debug log line per sweep).
fn sweeps(serve: &ServeProcess) -> usize {
    serve.log().matches("reaper: sweep done").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_never_reaps_live_sessions_but_reaps_a_dead_instances_roles() {
    let h = Harness::start().await;
    let mut a = h.spawn_serve(&fast_reaper("a"), &[]).await;
    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    let token = h.token("carol");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(
            a.connect("readonly", token.expose())
                .await
                .expect("session"),
        );
    }
    let roles = h.managed_roles().await;
    assert_eq!(roles.len(), 5);

    // Across B's sweeps, well past the grace, A's sessions keep working
    // and their roles stay.
    let start = sweeps(&b);
    for round in 1..=4 {
        let swept = wait_until(REAP_WITHIN, || async { sweeps(&b) >= start + round }).await;
        assert!(swept, "B does not sweep:\n{}", b.log());
        for c in &clients {
            c.simple_query("SELECT 1")
                .await
                .expect("A's session survives B's sweep");
        }
        assert_eq!(h.managed_roles().await, roles);
    }
    assert!(!b.log().contains("reaper: role revoked"), "{}", b.log());

    a.kill().await;
    assert_all_reaped(&h, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_2000_sessions_and_200_concurrent_logins_leaves_pg_authid_as_it_was() {
    let h = Harness::with(Options {
        max_connections: 300,
        cluster: rolemint::pgcluster::ClusterOptions {
            max_connections: 300,
            ..Default::default()
        },
        capture_log: false,
        ..Options::default()
    })
    .await;
    let su = h.superuser().await;
    let authid = || async {
        su.query_one("SELECT count(*) FROM pg_authid", &[])
            .await
            .expect("count pg_authid")
            .get::<_, i64>(0)
    };
    let before = authid().await;

    let token = h.token("churn");
    let pgbench = h.cluster.pgbench().to_owned();
    let out = h
        .run_client(
            &pgbench,
            &[
                "-U", "readonly", "-n", "-C", "-S", "-c", "8", "-t", "250", "appdb",
            ],
            &token,
            "require",
        )
        .await;
    let text = output_text(&out);
    assert!(out.status.success(), "pgbench -C:\n{text}");
    assert!(
        text.contains("number of transactions actually processed: 2000/2000"),
        "{text}"
    );
    if let Some(failed) = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
    {
        assert!(failed.starts_with("0 "), "{text}");
    }

    // 200 logins of one identity at once: 200 roles, no collision.
    let conn_string = h.conn_string("readonly", "appdb", token.expose());
    let logins: Vec<_> = (0..200)
        .map(|_| {
            let conn_string = conn_string.clone();
            tokio::spawn(async move {
                let (c, conn) =
                    tokio_postgres::connect(&conn_string, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                c.simple_query("SELECT 1").await.map(|_| c)
            })
        })
        .collect();
    let mut sessions = Vec::new();
    for login in logins {
        sessions.push(login.await.expect("login task"));
    }
    let ok = sessions.iter().filter(|s| s.is_ok()).count();
    let first_error = sessions
        .iter()
        .find_map(|s| s.as_ref().err())
        .map(|e| format!("{e:?}"));
    assert_eq!(ok, 200, "failed logins, first: {first_error:?}");
    assert_eq!(managed_count(&h).await, 200);
    drop(sessions);

    let left = h.wait_no_managed_roles(Duration::from_secs(30)).await;
    assert!(left.is_empty(), "roles left: {left:?}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            authid().await == before
        })
        .await
    );
    assert_eq!(h.wait_no_leases().await, 0);
}

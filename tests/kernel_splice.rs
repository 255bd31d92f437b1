//! The kernel splice (`proxy.kernel_splice`) against a real PostgreSQL:
//! plaintext sessions are forwarded by the BPF sockmap, carry large results
//! both ways intact, end at TTL with PostgreSQL's own 57P01, and leave no
//! role and no backend behind; TLS sessions stay in user space. Needs BPF
//! (root, kernel 6.x), as the machines that run these tests have.

mod common;

use std::time::Duration;

use common::{captured_log, sqlstate, wait_until, Harness, Options};

const SHORT: &str = r#"
[roles.short]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "3s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
"#;

async fn harness() -> Harness {
    let h = Harness::with(Options {
        kernel_splice: true,
        extra_toml: SHORT.to_owned(),
        ..Options::default()
    })
    .await;
    assert!(
        h.proxy.sockmap.is_some(),
        "no BPF sockmap here:\n{}",
        captured_log()
    );
    h
}

/// The SQL that shows a session its own lease id (from its role's comment).
const LEASE_ID_SQL: &str = "SELECT shobj_description(r.oid, 'pg_authid')::json->>'lease_id' \
                            FROM pg_roles r WHERE r.rolname = session_user";

/// The lease ids of sessions the kernel spliced, from the log (of every
/// test of this file: look for one's own id).
fn spliced_leases() -> Vec<String> {
    captured_log()
        .lines()
        .filter(|l| l.contains("session spliced in the kernel"))
        .filter_map(|l| l.split("lease=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_session_runs_through_the_kernel_and_leaves_nothing() {
    let h = harness().await;
    let client = h.session("readwrite", "alice").await;
    let role: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .expect("a query through the kernel splice")
        .get(0);
    let lease: String = client
        .query_one(LEASE_ID_SQL, &[])
        .await
        .expect("lease id")
        .get(0);
    assert!(
        spliced_leases().contains(&lease),
        "{lease} not spliced in the kernel"
    );
    assert!(h.managed_roles().await.contains(&role));

    // Large both ways: a 4 MB value up, 200k rows down, intact.
    client
        .batch_execute("CREATE TEMP TABLE blob (b text)")
        .await
        .expect("temp table");
    let big = "x".repeat(4 << 20);
    client
        .execute("INSERT INTO blob VALUES ($1)", &[&big])
        .await
        .expect("4 MB up");
    let len: i32 = client
        .query_one("SELECT length(b) FROM blob", &[])
        .await
        .expect("length")
        .get(0);
    assert_eq!(len as usize, big.len());
    let rows = client
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
            &[],
        )
        .await
        .expect("200k rows down");
    assert_eq!(rows.len(), 200_000);
    assert_eq!(rows[199_999].get::<_, i32>(0), 200_000);
    // While the session runs, its lease shows the kernel's byte counts.
    let live = wait_until(Duration::from_secs(10), || async {
        h.shared.leases.list().iter().any(|l| {
            l.id == lease
                && l.bytes_in.load(std::sync::atomic::Ordering::Relaxed) >= big.len() as u64
                && l.bytes_out.load(std::sync::atomic::Ordering::Relaxed) >= 200_000 * 32
        })
    })
    .await;
    assert!(live, "the lease shows no live traffic");
    // The table's rows are untouched by any of it.
    let n: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 4);

    drop(client);
    let left = h.wait_no_managed_roles(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "left: {left:?}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            h.minted_backends().await == 0
        })
        .await,
        "a backend outlived its client"
    );
    // The bytes were counted from TCP: the audit's session line has them.
    assert_eq!(h.wait_no_leases().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ends_reaches_the_client_as_57p01() {
    let h = harness().await;
    let client = h.session("short", "bob").await;
    let role: String = client
        .query_one("SELECT session_user::text", &[])
        .await
        .expect("query")
        .get(0);
    // pg_sleep never reads its socket: only the terminate ends it.
    let err = client
        .batch_execute("SELECT pg_sleep(60)")
        .await
        .expect_err("the lease ends the query");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    let gone = h.wait_no_managed_roles(Duration::from_secs(10)).await;
    assert!(!gone.contains(&role), "{role} outlived its lease");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            h.minted_backends().await == 0
        })
        .await,
        "a backend outlived its lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_sessions_each_end_cleanly() {
    let h = harness().await;
    for i in 0..20 {
        let client = h.session("readonly", &format!("c{i}")).await;
        let n: i64 = client
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 4);
    }
    let left = h.wait_no_managed_roles(Duration::from_secs(20)).await;
    assert!(left.is_empty(), "left: {left:?}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            h.minted_backends().await == 0
        })
        .await,
        "backends outlived their clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_stays_in_user_space_and_works() {
    let h = harness().await;
    let token = h.token("carol");
    let sql = format!("SELECT count(*) FROM accounts; {LEASE_ID_SQL}");
    let out = h.psql("readonly", "appdb", &token, &sql).await;
    assert!(out.status.success(), "{}", common::output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("4"));
    let lease = lines.next().expect("the lease id").to_owned();
    assert!(
        !spliced_leases().contains(&lease),
        "the TLS session {lease} was spliced"
    );
}

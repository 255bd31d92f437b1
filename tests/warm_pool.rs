//! The warm pool against a real PostgreSQL: pooled roles wait with their
//! backends logged in and no way to log in as them; a session claims one,
//! runs as it with its own identity and TTL, and the role is dropped after
//! it and replaced by a new one; shutdown revokes the unclaimed ones, and
//! after a SIGKILL the reaper of the next proxy drops them.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{sqlstate, wait_until, Harness, Options};

/// A pooled copy of the demo's readonly template.
const WARM: &str = r#"
[roles.warm]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "24h"
warm_pool = 2
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
"#;

/// Longest wait for the filler on a loaded 2-CPU machine.
const FILL_WITHIN: Duration = Duration::from_secs(20);

/// What PostgreSQL says about the pooled roles: `(name, can_login,
/// has_password, backends)` of each minted `v-warm-` role.
async fn pooled(h: &Harness) -> Vec<(String, bool, bool, i64)> {
    let su = h.superuser().await;
    su.query(
        "SELECT a.rolname, a.rolcanlogin, a.rolpassword IS NOT NULL, \
         (SELECT count(*) FROM pg_stat_activity s WHERE s.usename = a.rolname) \
         FROM pg_authid a WHERE a.rolname LIKE 'v-warm-%' ORDER BY 1",
        &[],
    )
    .await
    .expect("list pooled roles")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// The names of `n` ready pooled roles: NOLOGIN, no password, one idle
/// backend each. Fails the test when they are not there in time.
async fn wait_ready(h: &Harness, n: usize) -> BTreeSet<String> {
    let ready = |rows: &[(String, bool, bool, i64)]| {
        rows.iter()
            .filter(|(_, login, password, backends)| !login && !password && *backends == 1)
            .count()
    };
    let filled = wait_until(FILL_WITHIN, || async { ready(&pooled(h).await) >= n }).await;
    let rows = pooled(h).await;
    assert!(filled, "the pool did not fill to {n}: {rows:?}");
    rows.into_iter()
        .filter(|(_, login, password, backends)| !login && !password && *backends == 1)
        .map(|(name, ..)| name)
        .collect()
}

fn options() -> Options {
    Options {
        extra_toml: WARM.to_owned(),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_claims_a_pooled_role_which_is_dropped_after_it_and_replaced() {
    let h = Harness::with(options()).await;
    let first = wait_ready(&h, 2).await;

    // Nobody can log in as a pooled role: it is NOLOGIN with no password
    // (checked above), and PostgreSQL says so to a client that tries.
    let name = first.iter().next().expect("a pooled role").clone();
    let direct = format!(
        "host=127.0.0.1 port={} user={name} dbname=appdb password=guess sslmode=disable",
        h.cluster.port()
    );
    let refused = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a pooled role cannot log in");
    assert_eq!(sqlstate(&refused).as_deref(), Some("28P01"), "{refused:?}");

    let client = h.session("warm", "alice").await;
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query through a claimed role")
        .get(0);
    assert!(first.contains(&user), "{user} is not one of {first:?}");
    // It reads what readonly reads.
    let n: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("read through a claimed role")
        .get(0);
    assert!(n > 0);

    // The lease is the session's: identity and kind in the comment, VALID
    // UNTIL an hour from the claim, LOGIN back (with still no password).
    let su = h.superuser().await;
    let row = su
        .query_one(
            "SELECT shobj_description(a.oid, 'pg_authid'), a.rolcanlogin, \
             a.rolpassword IS NULL, \
             extract(epoch FROM a.rolvaliduntil - now())::float8 \
             FROM pg_authid a WHERE a.rolname = $1",
            &[&user],
        )
        .await
        .expect("the claimed role");
    let comment: serde_json::Value =
        serde_json::from_str(&row.get::<_, String>(0)).expect("the comment is JSON");
    assert_eq!(comment["identity"], "alice", "{comment}");
    assert_eq!(comment["kind"], "session", "{comment}");
    assert_eq!(comment["template"], "warm", "{comment}");
    assert!(row.get::<_, bool>(1), "a claimed role has LOGIN");
    assert!(row.get::<_, bool>(2), "a claimed role has no password");
    let valid_for: f64 = row.get(3);
    assert!(
        (3500.0..=3601.0).contains(&valid_for),
        "VALID UNTIL is {valid_for} s away, not an hour"
    );
    assert_eq!(h.shared.leases.len(), 1, "one lease, the session's");

    // The pool refills with new roles while the session runs.
    let refilled = wait_ready(&h, 2).await;
    assert!(!refilled.contains(&user), "{user} went back into the pool");

    // The session ends: its role is dropped, and not reused.
    drop(client);
    let gone = wait_until(Duration::from_secs(10), || async {
        !pooled(&h).await.iter().any(|(name, ..)| *name == user)
    })
    .await;
    assert!(gone, "{user} outlived its session: {:?}", pooled(&h).await);
    assert_eq!(h.wait_no_leases().await, 0);

    // Two sessions at once get two different roles.
    let a = h.session("warm", "bob").await;
    let b = h.session("warm", "carol").await;
    let who = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get::<_, String>(0)
    };
    let (ua, ub) = (who(a).await, who(b).await);
    assert_ne!(ua, ub);
    assert_ne!(ua, user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_revokes_every_unclaimed_role() {
    let mut h = Harness::with(options()).await;
    wait_ready(&h, 2).await;
    h.stop().await.expect("clean shutdown");
    let left = pooled(&h).await;
    assert!(left.is_empty(), "left after shutdown: {left:?}");
    assert!(h.managed_roles().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_startup_parameters_gets_them_on_a_pooled_backend() {
    let h = Harness::with(options()).await;
    wait_ready(&h, 2).await;
    let token = h.token("dave");
    let conn = format!(
        "{} application_name=warm-app",
        h.conn_string("warm", "appdb", token.expose())
    );
    let client = common::connect_owned(conn).await.expect("connect");
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_user::text",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "warm-app");
    assert!(row.get::<_, String>(1).starts_with("v-warm-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_the_next_proxy_reaps_the_pooled_roles() {
    let h = Harness::start().await;
    let reaper = |instance: &str| {
        format!("[mint]\ninstance = \"{instance}\"\nreap_interval = \"1s\"\nreap_grace = \"2s\"\n")
    };
    let mut a = h
        .spawn_serve(&format!("{WARM}\n{}", reaper("a")), &[])
        .await;
    let filled = wait_until(FILL_WITHIN, || async {
        let rows = pooled(&h).await;
        rows.len() >= 2
            && rows
                .iter()
                .all(|(_, login, _, backends)| !login && *backends == 1)
    })
    .await;
    assert!(filled, "not filled: {:?}\n{}", pooled(&h).await, a.log());
    a.kill().await;

    let b = h.spawn_serve(&reaper("b"), &[]).await;
    let clean = wait_until(Duration::from_secs(30), || async {
        pooled(&h).await.is_empty() && h.minted_backends().await == 0
    })
    .await;
    assert!(
        clean,
        "left: {:?}\nreaper log:\n{}",
        pooled(&h).await,
        b.log()
    );
}

/// Sessions one right after the other, as a client's reconnect loop opens
/// them: each is served from the pool while the pool has roles, however
/// busy the filler is replacing the ones just claimed (a filler that took
/// the pool's entries out to look at them made most of these mint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_sessions_are_all_served_from_a_full_pool() {
    let h = Harness::with(Options {
        extra_toml: WARM.replace("warm_pool = 2", "warm_pool = 4"),
        ..Options::default()
    })
    .await;
    let ready = wait_ready(&h, 4).await;
    for i in 0..4 {
        let client = h.session("warm", "erin").await;
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get(0);
        assert!(
            ready.contains(&user),
            "session {i} ran as {user}, not one of the pooled {ready:?}"
        );
        drop(client);
    }
}

/// The claim's guard (plain SQL, no PL/pgSQL on the connect path) binds a
/// managed role and refuses any other, leaving it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_binds_a_managed_role_and_refuses_a_foreign_one() {
    let h = Harness::start().await;
    let su = h.superuser().await;
    su.batch_execute(
        "CREATE ROLE \"v-claim-ours\" NOLOGIN; GRANT rolemint_managed TO \"v-claim-ours\"; \
         CREATE ROLE \"v-claim-foreign\" NOLOGIN;",
    )
    .await
    .unwrap();
    let comment = |role: &str| rolemint::pg::LeaseComment {
        lease_id: format!("database/sessions/warm/{role}"),
        identity: "erin".into(),
        issuer: "local".into(),
        template: "warm".into(),
        database: "appdb".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
        instance: "test".into(),
        issued_at: "2029-12-31T23:00:00Z".into(),
        kind: "session".into(),
    };
    let until = std::time::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    let admin_client = &h.shared.admin_client;
    admin_client
        .claim_warm("v-claim-ours", "appdb", until, &comment("v-claim-ours"))
        .await
        .expect("a managed role is bound");
    let refused = admin_client
        .claim_warm(
            "v-claim-foreign",
            "appdb",
            until,
            &comment("v-claim-foreign"),
        )
        .await
        .expect_err("a foreign role is refused");
    assert!(refused.to_string().contains("not managed"), "{refused}");
    let gone = admin_client
        .claim_warm("v-claim-gone", "appdb", until, &comment("v-claim-gone"))
        .await;
    assert!(gone.is_err(), "a role that is gone cannot be bound");
    let rows = su
        .query(
            "SELECT rolname::text, rolcanlogin, rolvaliduntil IS NOT NULL, \
             shobj_description(oid, 'pg_authid') IS NOT NULL \
             FROM pg_roles WHERE rolname LIKE 'v-claim-%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, bool, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("v-claim-foreign".into(), false, false, false),
            ("v-claim-ours".into(), true, true, true),
        ]
    );
}

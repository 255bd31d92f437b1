//! Leases that never leak and never lose data: owned objects handed to the
//! template's owner (or the role retained with them), revocation that
//! finishes whatever the error, custom revocation statements that still end
//! running queries, mints that fail after their COMMIT was sent, renewal.
//! Each test looks at PostgreSQL itself afterwards.

mod common;

use std::time::{Duration, SystemTime};

use common::{sqlstate, wait_until, Harness, Options};

/// A template whose sessions own what they create (member of app_owner,
/// which may create in `public`, but acting as themselves), with `extra`
/// lines (an `owner`, a TTL...).
fn creating_template(name: &str, extra: &str) -> String {
    format!(
        r#"
[roles.{name}]
allow_identities = ["*"]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_owner TO \"{{{{name}}}}\"",
]
{extra}
"#
    )
}

async fn harness_with(extra_toml: String) -> Harness {
    Harness::with(Options {
        extra_toml,
        ..Options::default()
    })
    .await
}

async fn session_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Owner and row count of `public.<table>`, as the superuser sees them.
async fn table_facts(su: &tokio_postgres::Client, table: &str) -> (String, i64) {
    let owner: String = su
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'public' AND tablename = $1",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    let rows: i64 = su
        .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
        .await
        .unwrap()
        .get(0);
    (owner, rows)
}

async fn role_exists(su: &tokio_postgres::Client, role: &str) -> bool {
    su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_owner_inherits_what_the_session_created() {
    let h = harness_with(creating_template("builder", "owner = \"app_owner\"")).await;
    let client = h.session("builder", "olga").await;
    let role = session_user(&client).await;
    client
        .batch_execute(
            "CREATE TABLE public.built (x int); INSERT INTO public.built SELECT generate_series(1, 3);",
        )
        .await
        .unwrap();
    let su = h.superuser().await;
    assert_eq!(table_facts(&su, "built").await, (role.clone(), 3));
    drop(client);

    let left = h.wait_no_managed_roles(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(!role_exists(&su, &role).await);
    assert_eq!(
        table_facts(&su, "built").await,
        ("app_owner".to_owned(), 3),
        "the table went to the owner with its rows"
    );
    assert!(h.shared.revoker.retained().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_owner_a_role_that_owns_a_table_is_retained_with_its_rows() {
    let h = harness_with(creating_template("maker", "")).await;
    let client = h.session("maker", "pavel").await;
    let role = session_user(&client).await;
    client
        .batch_execute(
            "CREATE TABLE public.made (x int); INSERT INTO public.made SELECT generate_series(1, 5);",
        )
        .await
        .unwrap();
    drop(client);

    let retained = || async {
        h.shared
            .revoker
            .retained()
            .iter()
            .any(|r| r.role == role && r.reason.contains("appdb"))
    };
    assert!(
        wait_until(Duration::from_secs(10), retained).await,
        "retained: {:?}, pending: {}",
        h.shared.revoker.retained(),
        h.shared.revoker.pending()
    );
    assert_eq!(h.shared.revoker.retained_total(), 1);
    assert_eq!(h.shared.revoker.pending(), 0, "not retried forever");
    let su = h.superuser().await;
    let can_login: bool = su
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("the role is still there")
        .get(0);
    assert!(!can_login, "retained roles are NOLOGIN");
    assert_eq!(table_facts(&su, "made").await, (role.clone(), 5));
    let log = common::captured_log();
    assert!(
        log.lines()
            .any(|l| l.contains("role retained") && l.contains(&role)),
        "the retained role is reported in the log"
    );
    // Scheduling it again (the reaper would) does not queue it again.
    h.shared.revoker.schedule(
        &role,
        "appdb",
        Some("maker"),
        rolemint::lease::end::EndReason::ReapedOrphaned,
    );
    assert_eq!(h.shared.revoker.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_revocation_statements_still_end_running_queries() {
    let h = harness_with(
        r#"
[roles.custom]
allow_identities = ["*"]
databases = ["appdb"]
default_ttl = "2s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
revocation_statements = ["DROP ROLE IF EXISTS \"{{name}}\""]
"#
        .into(),
    )
    .await;
    let client = h.session("custom", "quinn").await;
    let role = session_user(&client).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // pg_sleep never looks at its client socket: only a terminate ends it.
    let err = client
        .batch_execute("SELECT pg_sleep(60)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");

    let su = h.superuser().await;
    let gone = || async {
        let backend = su
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap();
        backend.is_none() && !role_exists(&su, &role).await
    };
    assert!(
        wait_until(Duration::from_secs(10), gone).await,
        "backend {pid} or role {role} outlived the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_that_commits_after_its_timeout_leaves_no_role() {
    // Each statement stays under the server's statement_timeout, the batch
    // does not: rolemint stops waiting at 1 s, the server commits at 1.6 s.
    let h = harness_with(
        r#"
[mint]
statement_timeout = "1s"

[roles.slow]
allow_identities = ["*"]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "SELECT pg_catalog.pg_sleep(0.8)",
  "SELECT pg_catalog.pg_sleep(0.8)",
]
"#
        .into(),
    )
    .await;
    let token = h.token("rita");
    let err = h
        .connect("slow", "appdb", token.expose())
        .await
        .expect_err("the mint timed out");
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");

    let su = h.superuser().await;
    let slow_roles = || async {
        su.query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-rita-slow-%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let settled = || async { h.shared.revoker.pending() == 0 && slow_roles().await == 0 };
    assert!(
        wait_until(Duration::from_secs(20), settled).await,
        "{} role(s) left, {} pending",
        slow_roles().await,
        h.shared.revoker.pending()
    );
    // It did exist: the commit landed after rolemint gave up, and the
    // revoker dropped it rather than finding nothing.
    let log = common::captured_log();
    assert!(
        log.lines().any(|l| l.contains("role revoked")
            && l.contains("v-rita-slow-")
            && l.contains("mint_failed")
            && l.contains("outcome=\"dropped\"")),
        "no late-committed role was dropped:\n{}",
        log.lines()
            .filter(|l| l.contains("v-rita-slow-"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_keeps_retrying_until_the_admin_can_log_in_again() {
    let h = Harness::start().await;
    let client = h.session("readonly", "sam").await;
    let role = session_user(&client).await;
    let su = h.superuser().await;
    // The admin's password changes underneath rolemint, and its pooled
    // connections go: every revocation attempt now fails with 28P01.
    let wrong = postgres_protocol::password::scram_sha_256(b"not-the-configured-password");
    su.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD '{wrong}'",
        h.demo.admin_user
    ))
    .await
    .unwrap();
    su.query(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = $1",
        &[&h.demo.admin_user],
    )
    .await
    .unwrap();
    drop(client);

    let refusals = || {
        h.cluster
            .read_log()
            .matches("password authentication failed for user \"rolemint_admin\"")
            .count()
    };
    let failing = || async { h.shared.revoker.failing() == 1 && refusals() >= 4 };
    assert!(
        wait_until(Duration::from_secs(20), failing).await,
        "failing: {}, refusals: {}",
        h.shared.revoker.failing(),
        refusals()
    );
    assert!(role_exists(&su, &role).await);
    assert_eq!(h.shared.revoker.pending(), 1, "still pending, not given up");
    assert!(h.shared.revoker.oldest_pending_age().is_some());

    let right =
        postgres_protocol::password::scram_sha_256(h.demo.admin_password.expose().as_bytes());
    su.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD '{right}'",
        h.demo.admin_user
    ))
    .await
    .unwrap();
    let left = h.wait_no_managed_roles(Duration::from_secs(30)).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(h.shared.revoker.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_moves_valid_until_the_comment_and_the_deadline() {
    let h = harness_with(
        r#"
[roles.brief]
allow_identities = ["*"]
databases = ["appdb"]
default_ttl = "3s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#
        .into(),
    )
    .await;
    let client = h.session("brief", "tara").await;
    let role = session_user(&client).await;
    let leases = h.shared.leases.list();
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert!(
        lease.id.starts_with("database/sessions/brief/"),
        "{}",
        lease.id
    );
    assert_eq!(lease.role, role);
    assert!(lease.client_addr.is_some());
    assert!(h.shared.holds_role(&role));
    let first_expiry = lease.expires_at();

    let new_expiry = SystemTime::now() + Duration::from_secs(120);
    let comment = lease.comment(h.shared.admin_client.instance(), new_expiry);
    h.shared
        .admin_client
        .renew(&lease.role, &lease.database, new_expiry, &comment)
        .await
        .expect("renewed in PostgreSQL");
    h.shared
        .leases
        .renew(&lease.id, new_expiry)
        .expect("renewed in the registry");
    assert!(lease.last_renewal().is_some());

    let su = h.superuser().await;
    let row = su
        .query_one(
            "SELECT extract(epoch from rolvaliduntil)::bigint, shobj_description(oid, 'pg_authid') \
             FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let valid_until: i64 = row.get(0);
    let want = new_expiry
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((valid_until - want).abs() <= 1, "{valid_until} vs {want}");
    let comment: serde_json::Value = serde_json::from_str(&row.get::<_, String>(1)).unwrap();
    assert_eq!(comment["lease_id"], lease.id.as_str());
    assert_eq!(comment["kind"], "session");
    assert!(comment["issued_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));

    // Past the first deadline the session goes on.
    let past_first = || async { SystemTime::now() > first_expiry + Duration::from_secs(1) };
    assert!(wait_until(Duration::from_secs(10), past_first).await);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(lease.end_reason(), None);

    drop(client);
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
    assert_eq!(h.wait_no_leases().await, 0);
    assert_eq!(h.shared.leases.deadlines_len(), 0, "no timer left behind");
    let traffic = lease.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
    assert!(traffic > 0, "the session's traffic was recorded");
}

/// A role made by hand the way rolemint marks its own: a member of
/// `rolemint_managed`, owning a table in `database`.
async fn managed_role_owning_a_table(h: &Harness, role: &str, database: &str, table: &str) {
    let su = h.superuser().await;
    su.batch_execute(&format!(
        "CREATE ROLE \"{role}\" NOLOGIN; GRANT rolemint_managed TO \"{role}\";"
    ))
    .await
    .unwrap();
    let (client, conn) = tokio_postgres::connect(
        &h.cluster.superuser_conn_string(database),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE TABLE public.{table} (x int); INSERT INTO public.{table} VALUES (1), (2); \
             ALTER TABLE public.{table} OWNER TO \"{role}\";"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_in_every_database_go_to_the_owner() {
    let h = harness_with(creating_template("builder", "owner = \"app_owner\"")).await;
    let su = h.superuser().await;
    su.batch_execute("CREATE DATABASE otherdb").await.unwrap();
    let role = "v-handmade-builder-abcdefgh-1";
    managed_role_owning_a_table(&h, role, "otherdb", "elsewhere").await;
    managed_role_owning_a_table(&h, "v-handmade-builder-ijklmnop-2", "appdb", "here").await;

    // Minted for appdb; it also owns a table in otherdb.
    h.shared.revoker.schedule(
        role,
        "appdb",
        Some("builder"),
        rolemint::lease::end::EndReason::ReapedOrphaned,
    );
    h.shared.revoker.schedule(
        "v-handmade-builder-ijklmnop-2",
        "appdb",
        Some("builder"),
        rolemint::lease::end::EndReason::ReapedOrphaned,
    );
    let left = h.wait_no_managed_roles(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(table_facts(&su, "here").await, ("app_owner".to_owned(), 2));
    let (other, conn) = tokio_postgres::connect(
        &h.cluster.superuser_conn_string("otherdb"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        table_facts(&other, "elsewhere").await,
        ("app_owner".to_owned(), 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_database_does_not_stop_a_revocation_and_foreign_roles_are_refused() {
    let h = Harness::start().await;
    let su = h.superuser().await;
    su.batch_execute(
        "CREATE ROLE \"v-orphan-readonly-abcdefgh-1\" NOLOGIN; \
         GRANT rolemint_managed TO \"v-orphan-readonly-abcdefgh-1\"; \
         CREATE ROLE \"v-not-ours\" LOGIN;",
    )
    .await
    .unwrap();
    let revoker = &h.shared.revoker;
    // Its database is gone: roles are cluster-wide, so it is dropped from
    // the admin database instead of failing forever with 3D000.
    revoker.schedule(
        "v-orphan-readonly-abcdefgh-1",
        "no_such_database",
        Some("readonly"),
        rolemint::lease::end::EndReason::ReapedOrphaned,
    );
    revoker.schedule(
        "v-not-ours",
        "appdb",
        None,
        rolemint::lease::end::EndReason::ReapedOrphaned,
    );
    let settled = || async { revoker.pending() == 0 };
    assert!(wait_until(Duration::from_secs(10), settled).await);
    assert!(!role_exists(&su, "v-orphan-readonly-abcdefgh-1").await);
    assert!(
        role_exists(&su, "v-not-ours").await,
        "a role outside rolemint_managed is never touched"
    );
    let can_login: bool = su
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'v-not-ours'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can_login, "not even NOLOGIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_a_bounded_time_for_revocations_and_says_what_it_leaves() {
    // A second proxy on the harness's cluster, with a short revoke wait.
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    common::write_self_signed_cert(dir.path());
    let text = common::config_toml(&h.cluster, &h.demo, &Options::default()).replace(
        "shutdown_grace = \"2s\"",
        "shutdown_grace = \"1s\"\nshutdown_revoke_timeout = \"2s\"",
    );
    let mut config = rolemint::config::Config::parse(&text).unwrap();
    config.resolve(dir.path()).unwrap();
    config.validate().unwrap();
    let server = rolemint::proxy::server::Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let shared = server.shared();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.run(stop.clone()));

    let token = h.token("uma");
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=readonly dbname=appdb password={} sslmode=disable",
            addr.port(),
            token.expose()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let role = session_user(&client).await;
    let su = h.superuser().await;
    let wrong = postgres_protocol::password::scram_sha_256(b"rotated-away");
    su.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD '{wrong}'",
        h.demo.admin_user
    ))
    .await
    .unwrap();
    su.query(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = $1",
        &[&h.demo.admin_user],
    )
    .await
    .unwrap();
    drop(client);
    let failing = || async { shared.revoker.failing() == 1 };
    assert!(wait_until(Duration::from_secs(10), failing).await);

    stop.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(30), running).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "shutdown did not finish"
    );
    assert!(
        role_exists(&su, &role).await,
        "left marked for the next reaper"
    );
    let log = common::captured_log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("exiting with 1 role(s) not revoked")),
        "shutdown says what it leaves behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_roles_are_revoked_in_one_round_trip_each_with_its_own_outcome() {
    use rolemint::pg::{Outcome, Target};
    let h = Harness::start().await;
    let su = h.superuser().await;
    su.batch_execute(
        "CREATE ROLE \"v-batch-a\" LOGIN; GRANT rolemint_managed TO \"v-batch-a\"; \
         CREATE ROLE \"v-batch-b\" LOGIN; GRANT rolemint_managed TO \"v-batch-b\"; \
         CREATE ROLE \"v-batch-foreign\" LOGIN;",
    )
    .await
    .unwrap();
    managed_role_owning_a_table(&h, "v-batch-owner", "appdb", "kept").await;
    let target = |role: &str| Target {
        role: role.into(),
        owner: None,
        custom: None,
    };
    let targets = [
        target("v-batch-a"),
        target("v-batch-gone"),
        target("v-batch-foreign"),
        target("v-batch-owner"),
        target("v-batch-b"),
    ];
    let outcomes: Vec<Outcome> = h
        .shared
        .admin_client
        .revoke_batch("appdb", &targets)
        .await
        .expect("the batch ran")
        .into_iter()
        .map(|o| o.expect("an outcome per role"))
        .collect();
    assert_eq!(outcomes[0], Outcome::Dropped);
    assert_eq!(outcomes[1], Outcome::Gone);
    assert_eq!(outcomes[2], Outcome::NotManaged);
    assert!(
        matches!(&outcomes[3], Outcome::Retained(why) if why.contains("appdb")),
        "{:?}",
        outcomes[3]
    );
    assert_eq!(outcomes[4], Outcome::Dropped);
    for (role, exists) in [
        ("v-batch-a", false),
        ("v-batch-b", false),
        ("v-batch-foreign", true),
        ("v-batch-owner", true),
    ] {
        assert_eq!(role_exists(&su, role).await, exists, "{role}");
    }
    assert_eq!(table_facts(&su, "kept").await, ("v-batch-owner".into(), 2));
    // One simple query carried all five.
    let log = h.cluster.read_log();
    let statements = log.split("LOG:  statement: ").filter(|s| {
        s.contains("'rolemint.outcome_4'") && s.contains("'v-batch-a'") && s.contains("'v-batch-b'")
    });
    assert_eq!(statements.count(), 1, "one round trip for the batch");
}

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
        cluster: rolemint::cli::dev::cluster::ClusterOptions {
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

/// pgbench through the harness's proxy as a task of its own (so the
/// cluster can be restarted under it); the token in PGPASSWORD.
fn spawn_pgbench(
    h: &Harness,
    token: &rolemint::secret::Secret,
    args: &[&str],
) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = tokio::process::Command::new(h.cluster.pgbench());
    cmd.args(args)
        .env("PGPASSWORD", token.expose())
        .env("PGSSLMODE", "require")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", h.addr.port().to_string())
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .kill_on_drop(true);
    tokio::spawn(async move { cmd.output().await.expect("pgbench runs") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_pgbench_load_clients_get_an_error_then_sessions_work_and_nothing_leaks(
) {
    let mut h = Harness::with(Options {
        extra_toml: fast_reaper("h"),
        ..Options::default()
    })
    .await;
    let token = h.token("restart");
    let bench = spawn_pgbench(
        &h,
        &token,
        &["-U", "readonly", "-n", "-S", "-c", "4", "-T", "20", "appdb"],
    );
    let loaded = wait_until(REAP_WITHIN, || async { h.minted_backends().await == 4 }).await;
    assert!(loaded, "pgbench sessions did not start");

    tokio::task::block_in_place(|| h.cluster.restart()).expect("restart PostgreSQL");

    // The sessions were ended by the server: pgbench stops with the
    // server's FATAL relayed, long before its 20 s are up.
    let out = tokio::time::timeout(Duration::from_secs(15), bench)
        .await
        .expect("pgbench hangs after the restart")
        .expect("pgbench task");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("terminating connection due to administrator command"),
        "{text}"
    );

    // New sessions work once the database is back: the admin pool dropped
    // its dead connections and opened new ones by itself.
    let back = wait_until(REAP_WITHIN, || async {
        match h.connect("readonly", "appdb", token.expose()).await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(back, "no session succeeds after the restart");

    let left = h.wait_no_managed_roles(REAP_WITHIN).await;
    assert!(left.is_empty(), "roles left: {left:?}");
    assert_eq!(h.minted_backends().await, 0);
    assert_eq!(h.wait_no_leases().await, 0);
}

/// Waits until an admin backend of rolemint is blocked on a lock running a
/// statement that contains `marker`, and terminates it. Runs on `su`, the
/// connection whose transaction holds the lock (another connection could
/// not even log in while `pg_authid` is locked).
async fn terminate_blocked_admin(su: &tokio_postgres::Client, marker: &str) {
    let pattern = format!("%{marker}%");
    let killed = wait_until(REAP_WITHIN, || async {
        su.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .expect("clear snapshot");
        su.query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'rolemint' AND wait_event_type = 'Lock' \
             AND query LIKE $1",
            &[&pattern],
        )
        .await
        .expect("terminate the admin backend")
        .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(killed, "no admin backend blocked in {marker}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connection_killed_during_a_mint_and_during_a_revoke_leaks_nothing() {
    let h = Harness::with(Options {
        extra_toml: fast_reaper("h"),
        ..Options::default()
    })
    .await;
    let token = h.token("dave");
    // The pool now holds an admin connection to appdb, which the locked
    // pg_authid below would keep a new one from opening.
    drop(h.session("readonly", "dave").await);
    assert!(h.wait_no_managed_roles(REAP_WITHIN).await.is_empty());
    let su = h.superuser().await;
    let lock = "BEGIN; LOCK TABLE pg_catalog.pg_authid IN ACCESS EXCLUSIVE MODE";

    // During a mint: CREATE ROLE waits for the lock; its admin backend is
    // killed. The client gets 08006, and the mint's transaction is gone
    // with its backend.
    su.batch_execute(lock).await.expect("lock pg_authid");
    let login = tokio::spawn(connect_owned(h.conn_string(
        "readonly",
        "appdb",
        token.expose(),
    )));
    terminate_blocked_admin(&su, "CREATE ROLE").await;
    su.batch_execute("ROLLBACK").await.expect("unlock");
    let refused = login.await.expect("login task").map(drop).unwrap_err();
    assert_eq!(
        common::sqlstate(&refused).as_deref(),
        Some("08006"),
        "{refused:?}"
    );
    assert!(h.managed_roles().await.is_empty());

    // During a revoke: the session ends, its revocation waits for the
    // lock, its admin backend is killed; the retry (or the reaper) drops
    // the role.
    let session = h.session("readonly", "dave").await;
    let role = h.managed_roles().await;
    assert_eq!(role.len(), 1);
    su.batch_execute(lock).await.expect("lock pg_authid");
    drop(session);
    terminate_blocked_admin(&su, "NOLOGIN").await;
    su.batch_execute("ROLLBACK").await.expect("unlock");
    let left = h.wait_no_managed_roles(REAP_WITHIN).await;
    assert!(left.is_empty(), "roles left: {left:?}");
    assert_eq!(h.minted_backends().await, 0);
    assert_eq!(h.wait_no_leases().await, 0);
    // And the pool works again.
    h.session("readonly", "dave")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("a session after the faults");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_password_changed_underneath_revocations_fail_loudly_then_a_restart_with_it_reaps() {
    let mut h = Harness::start().await;
    let mut a = h.spawn_serve(&fast_reaper("a"), &[]).await;
    let token = h.token("erin");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            a.connect("readonly", token.expose())
                .await
                .expect("session"),
        );
    }
    assert_eq!(managed_count(&h).await, 3);

    // The password changes (as a verifier: no plaintext in the server
    // log), and the admin's open connections end, as after a rotation.
    let new_password = "rotated-0123456789abcdef0123456789abcdef";
    let verifier = postgres_protocol::password::scram_sha_256(new_password.as_bytes());
    let su = h.superuser().await;
    su.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD '{verifier}'; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'rolemint'",
        h.demo.admin_user
    ))
    .await
    .expect("rotate the admin password");
    drop(clients);

    let logged = wait_until(REAP_WITHIN, || async {
        let log = a.log();
        log.contains("revocation failed") && log.contains("password authentication failed")
    })
    .await;
    assert!(logged, "revocation failures not logged:\n{}", a.log());
    assert_eq!(
        managed_count(&h).await,
        3,
        "roles dropped without the admin"
    );

    a.kill().await;
    h.demo.admin_password = rolemint::secret::Secret::new(new_password);
    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    assert_all_reaped(&h, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_drops_marked_orphans_whatever_their_comment_ends_expired_sessions_and_touches_nothing_else(
) {
    let h = Harness::start().await;
    let su = h.superuser().await;
    let password = "expired-role-password-0123456789abcdef";
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    su.batch_execute(&format!(
        r#"
        CREATE ROLE "v-broken-readonly-aaaaaaaa-1" LOGIN IN ROLE rolemint_managed;
        COMMENT ON ROLE "v-broken-readonly-aaaaaaaa-1" IS 'not json';
        CREATE ROLE "v-nocomment-bbbbbbbb-1" LOGIN IN ROLE rolemint_managed;
        CREATE ROLE "v-stale-cccccccc-1" LOGIN IN ROLE rolemint_managed;
        COMMENT ON ROLE "v-stale-cccccccc-1" IS
          '{{"database":"dropped_db","template":"removed_template","lease_id":"x"}}';
        CREATE ROLE "v-expired-dddddddd-1" LOGIN PASSWORD '{verifier}' IN ROLE rolemint_managed;
        CREATE ROLE "v-operator-eeeeeeee-1" NOLOGIN;
        GRANT rolemint_managed TO "v-operator-eeeeeeee-1" WITH ADMIN OPTION;
        CREATE ROLE "v-stranger-ffffffff-1" LOGIN VALID UNTIL '2000-01-01';
        "#
    ))
    .await
    .expect("create the roles");
    // A session of the soon-expired role, straight to PostgreSQL: VALID
    // UNTIL only blocks new logins, so it outlives its expiry...
    let expired = connect_owned(format!(
        "host=127.0.0.1 port={} user=v-expired-dddddddd-1 password={password} dbname=postgres",
        h.cluster.port()
    ))
    .await
    .expect("log in as the role");
    su.batch_execute(r#"ALTER ROLE "v-expired-dddddddd-1" VALID UNTIL '2000-01-01'"#)
        .await
        .expect("expire it");
    expired
        .simple_query("SELECT 1")
        .await
        .expect("still running");

    // ...until the reaper ends it and drops the role.
    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    assert_all_reaped(&h, &b).await;
    assert!(expired.simple_query("SELECT 1").await.is_err());
    let survivors: Vec<String> = su
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname IN \
             ('v-operator-eeeeeeee-1', 'v-stranger-ffffffff-1', $1) ORDER BY 1",
            &[&h.demo.admin_user],
        )
        .await
        .expect("list survivors")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        survivors,
        [
            h.demo.admin_user.as_str(),
            "v-operator-eeeeeeee-1",
            "v-stranger-ffffffff-1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sweep_while_another_holds_the_sweep_lock() {
    let h = Harness::start().await;
    let su = h.superuser().await;
    su.batch_execute(r#"CREATE ROLE "v-orphan-aaaaaaaa-1" LOGIN IN ROLE rolemint_managed"#)
        .await
        .expect("create an orphan");
    // The lock lives in the admin database, as every instance takes it.
    let holder = connect_owned(h.cluster.superuser_conn_string("postgres"))
        .await
        .expect("connect to the admin database");
    holder
        .query_one(
            "SELECT pg_advisory_lock($1)",
            &[&rolemint::pg::SWEEP_LOCK_KEY],
        )
        .await
        .expect("take the sweep lock");

    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    let skipped = |n: usize| {
        let b = &b;
        async move { b.log().matches("another instance is sweeping").count() >= n }
    };
    // Several intervals, well past the grace: not swept.
    assert!(wait_until(REAP_WITHIN, || skipped(4)).await, "{}", b.log());
    assert_eq!(h.managed_roles().await, ["v-orphan-aaaaaaaa-1"]);
    assert_eq!(sweeps(&b), 0, "{}", b.log());

    drop(holder);
    assert_all_reaped(&h, &b).await;
}

/// A marked role whose `VALID UNTIL` someone set to `infinity` (or
/// removed) is still expired by its lease comment: the catalog read lists
/// it without failing on `infinity`, and the reaper drops it at the
/// comment's expiry, ending its session, while a live one is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_a_finite_valid_until_expires_by_its_lease_comment() {
    let h = Harness::start().await;
    let su = h.superuser().await;
    let password = "infinite-role-password-0123456789abcdef";
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    // Issued now: a session role's idle time counts from its issue, and one
    // issued long ago with no backend yet is reaped by the harness's own
    // sweep before the logins below (it was, once, in CI).
    let issued = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let comment = |id: &str, kind: &str, expires: &str| {
        format!(
            r#"{{"lease_id":"database/{kind}s/readonly/{id}","identity":"alice","issuer":"local","template":"readonly","database":"appdb","expires_at":"{expires}","instance":"gone","issued_at":"{issued}","kind":"{kind}"}}"#
        )
    };
    su.batch_execute(&format!(
        r#"
        CREATE ROLE "v-inf-readonly-aaaaaaaa-1" LOGIN PASSWORD '{verifier}' VALID UNTIL 'infinity' IN ROLE rolemint_managed;
        COMMENT ON ROLE "v-inf-readonly-aaaaaaaa-1" IS '{inf}';
        CREATE ROLE "v-null-readonly-bbbbbbbb-1" LOGIN PASSWORD '{verifier}' IN ROLE rolemint_managed;
        COMMENT ON ROLE "v-null-readonly-bbbbbbbb-1" IS '{null}';
        CREATE ROLE "v-live-readonly-cccccccc-1" LOGIN PASSWORD '{verifier}' VALID UNTIL 'infinity' IN ROLE rolemint_managed;
        COMMENT ON ROLE "v-live-readonly-cccccccc-1" IS '{live}';
        "#,
        // Live until its session is open: a reaper (the harness's own)
        // must not drop it before the login below.
        inf = comment("aaaa", "session", "2999-01-01T00:00:00Z"),
        null = comment("bbbb", "creds", "2000-01-01T01:00:00Z"),
        live = comment("cccc", "session", "2999-01-01T00:00:00Z"),
    ))
    .await
    .expect("create the roles");
    let login = |role: &str| {
        connect_owned(format!(
            "host=127.0.0.1 port={} user={role} password={password} dbname=appdb",
            h.cluster.port()
        ))
    };
    let infinite = login("v-inf-readonly-aaaaaaaa-1").await.expect("log in");
    let live = login("v-live-readonly-cccccccc-1").await.expect("log in");
    su.batch_execute(&format!(
        r#"COMMENT ON ROLE "v-inf-readonly-aaaaaaaa-1" IS '{}'"#,
        comment("aaaa", "session", "2000-01-01T01:00:00Z")
    ))
    .await
    .expect("expire the lease by its comment");

    // The catalog read survives `infinity` and falls back to the comment.
    let page = h
        .shared
        .admin_client
        .catalog_page(&rolemint::pg::CatalogFilter::default(), None, 100)
        .await
        .expect("the catalog read survives VALID UNTIL 'infinity'");
    let live_lease = page
        .leases
        .iter()
        .find(|l| l.role == "v-live-readonly-cccccccc-1")
        .expect("the live lease is listed");
    assert_eq!(live_lease.valid_until, None);
    assert_eq!(
        live_lease.expires_at(),
        humantime::parse_rfc3339("2999-01-01T00:00:00Z").ok()
    );

    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    let reaped = wait_until(REAP_WITHIN, || async {
        h.managed_roles().await == ["v-live-readonly-cccccccc-1"]
    })
    .await;
    assert!(
        reaped,
        "left: {:?}\nreaper log:\n{}",
        h.managed_roles().await,
        b.log()
    );
    assert!(infinite.simple_query("SELECT 1").await.is_err());
    live.simple_query("SELECT 1")
        .await
        .expect("a live lease's session is kept");
}

/// PostgreSQL stopped under a client retry loop: the revoker's queue holds
/// the roles of the sessions that were live when it went down (and of a
/// mint caught on an admin connection that died with the server), and no
/// more. A mint that found no admin connection never reached PostgreSQL,
/// so its role is not queued (each retry used to add one); past
/// `mint.max_pending_revocations` clients get 53300 without a mint. Once
/// PostgreSQL is back, the queue drains and pg_roles ends clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_a_retry_loop_leaves_the_revocation_queue_bounded() {
    const LIVE: usize = 4;
    // The sessions, the one pooled admin connection's mint, and one more.
    const LIMIT: usize = LIVE + 2;
    let mut h = Harness::with(Options {
        extra_toml: format!("[mint]\ninstance = \"h\"\nmax_pending_revocations = {LIMIT}\n"),
        admin_pool_size: 1,
        ..Options::default()
    })
    .await;
    let token = h.token("retry");
    let mut sessions = Vec::new();
    for _ in 0..LIVE {
        let session = h.connect("readonly", "appdb", token.expose()).await;
        sessions.push(session.expect("session"));
    }
    assert_eq!(h.managed_roles().await.len(), LIVE);

    tokio::task::block_in_place(|| h.cluster.stop_server());
    // The live sessions end with their backends; their roles wait.
    let queued = wait_until(REAP_WITHIN, || async { h.shared.revoker.pending() == LIVE }).await;
    assert!(queued, "pending {}", h.shared.revoker.pending());

    let attempt = || async {
        match h.connect("readonly", "appdb", token.expose()).await {
            Ok(_) => "connected".to_owned(),
            Err(e) => common::sqlstate(&e).unwrap_or_else(|| e.to_string()),
        }
    };
    // The first mint may take the pooled admin connection, which died with
    // the server after the batch was written: that role is queued, as it
    // must be (the batch may have landed).
    for _ in 0..3 {
        assert_eq!(attempt().await, "08006");
    }
    let base = h.shared.revoker.pending();
    assert!((LIVE..LIMIT).contains(&base), "pending {base}");
    // A client retrying against the down database: every attempt fails,
    // and the queue does not grow.
    for i in 0..40 {
        assert_eq!(attempt().await, "08006", "attempt {i}");
        assert_eq!(
            h.shared.revoker.pending(),
            base,
            "attempt {i} queued a role"
        );
    }

    // More roles waiting (other sessions ended) reach the limit: from then
    // on nothing is minted, and the queue stays where it is.
    for n in base..LIMIT {
        h.shared.revoker.schedule(
            &format!("v-gone-readonly-ffffffff-{n}"),
            "appdb",
            None,
            rolemint::lease::end::EndReason::ReapedOrphaned,
        );
    }
    for i in 0..40 {
        assert_eq!(attempt().await, "53300", "attempt {i}");
        assert_eq!(h.shared.revoker.pending(), LIMIT);
    }

    tokio::task::block_in_place(|| h.cluster.restart()).expect("restart PostgreSQL");
    let drained = wait_until(Duration::from_secs(60), || async {
        h.shared.revoker.pending() == 0
    })
    .await;
    assert!(drained, "pending {}", h.shared.revoker.pending());
    let left = h.managed_roles().await;
    assert!(left.is_empty(), "{left:?}");
    let back = h.connect("readonly", "appdb", token.expose()).await;
    let back = back.expect("a session again");
    back.simple_query("SELECT 1").await.expect("it works");
    drop(sessions);
}

/// Live credential roles (members of `rolemint_direct`, kept until their
/// expiry) that expire before an orphaned session role.
const CREDENTIALS_AHEAD: usize = 10_001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_behind_ten_thousand_live_credential_leases_is_reaped() {
    let h = Harness::with(Options {
        // No statement log: the roles are created in a loop.
        cluster: rolemint::cli::dev::cluster::ClusterOptions::default(),
        capture_log: false,
        ..Options::default()
    })
    .await;
    let su = h.superuser().await;
    // The sweep reads at most 10,000 roles, by expiry: these come first.
    su.batch_execute(&format!(
        r#"DO $$ BEGIN FOR i IN 1..{CREDENTIALS_AHEAD} LOOP
             EXECUTE format('CREATE ROLE %I LOGIN VALID UNTIL %L IN ROLE rolemint_managed, rolemint_direct',
                            'v-app-readonly-' || i || '-1', '2099-01-01');
             EXECUTE format('COMMENT ON ROLE %I IS %L', 'v-app-readonly-' || i || '-1',
                            '{{"lease_id":"database/creds/readonly/' || i || '","kind":"creds"}}');
           END LOOP; END $$;
           CREATE ROLE "v-orphan-readonly-aaaaaaaa-1" LOGIN VALID UNTIL '2100-01-01'
             IN ROLE rolemint_managed;"#
    ))
    .await
    .expect("create the roles");

    let b = h.spawn_serve(&fast_reaper("b"), &[]).await;
    let orphan_gone = wait_until(REAP_WITHIN, || async {
        !h.managed_roles()
            .await
            .iter()
            .any(|r| r == "v-orphan-readonly-aaaaaaaa-1")
    })
    .await;
    assert!(orphan_gone, "the orphan was never swept:\n{}", b.log());
    // The credentials are live: kept.
    let kept: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-app-readonly-%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(kept, CREDENTIALS_AHEAD as i64);
}

/// Root rotation with several instances on one database and one password
/// file: concurrent rotations take turns (an advisory lock), every one
/// succeeds, the file ends with the password PostgreSQL has, and each
/// instance's next new admin connection, refused with 28P01, reads the
/// file again and logs in, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_on_several_instances_take_turns_and_the_others_follow_the_file() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-password");
    let first = h.demo.admin_password.expose().to_owned();
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let mut config = h.config.clone();
    config.backend.admin_password_file = Some(file.clone());
    let instances: Vec<rolemint::pg::AdminClient> = (0..3)
        .map(|_| rolemint::pg::AdminClient::new(&config).expect("admin client"))
        .collect();
    for admin in &instances {
        admin.ping("postgres").await.expect("logged in before");
    }

    // Another instance mid-rotation (the lock held here): a rotation waits
    // for it, touching neither the file nor the password meanwhile.
    let holder = connect_owned(
        h.cluster
            .superuser_conn_string(&config.backend.admin_database),
    )
    .await
    .expect("superuser");
    let key = rolemint::pg::rotate::ROTATE_LOCK_KEY;
    holder
        .batch_execute(&format!("SELECT pg_advisory_lock({key})"))
        .await
        .unwrap();
    let instances = std::sync::Arc::new(instances);
    let waiting = {
        let (instances, backend) = (instances.clone(), config.backend.clone());
        tokio::spawn(
            async move { rolemint::pg::rotate::rotate_admin(&instances[0], &backend).await },
        )
    };
    let queued = wait_until(Duration::from_secs(10), || async {
        let row = holder
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 1
    })
    .await;
    assert!(queued, "the rotation does not wait for the lock");
    assert!(!waiting.is_finished());
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), first);
    assert!(!dir.path().join("admin-password.rotating").exists());
    holder
        .batch_execute(&format!("SELECT pg_advisory_unlock({key})"))
        .await
        .unwrap();
    waiting
        .await
        .unwrap()
        .expect("the rotation goes on once the lock is free");
    assert_ne!(std::fs::read_to_string(&file).unwrap().trim_end(), first);

    let rotate = |i: usize| rolemint::pg::rotate::rotate_admin(&instances[i], &config.backend);
    let (a, b, c) = tokio::join!(rotate(0), rotate(1), rotate(2));
    for (i, result) in [a, b, c].into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("rotation {i}: {e}"));
    }
    let last = std::fs::read_to_string(&file)
        .unwrap()
        .trim_end()
        .to_owned();
    assert_ne!(last, first);
    assert!(!dir.path().join("admin-password.rotating").exists());
    let login = |password: String| {
        connect_owned(format!(
            "host=127.0.0.1 port={} user={} password={password} dbname=postgres",
            h.cluster.port(),
            h.demo.admin_user
        ))
    };
    login(last)
        .await
        .expect("the file's password is PostgreSQL's");
    let Err(old) = login(first).await else {
        panic!("the first password still logs in");
    };
    assert_eq!(common::sqlstate(&old).as_deref(), Some("28P01"));

    // Two of the three hold a password they set and lost: a new admin
    // connection (a database none of them has one to) reads the file.
    for (i, admin) in instances.iter().enumerate() {
        admin
            .ping("appdb")
            .await
            .unwrap_or_else(|e| panic!("instance {i} after the rotations: {e}"));
    }
}

/// A login in the window of another instance's rotation between its
/// `ALTER ROLE` and its rename (PostgreSQL has the new password, the file
/// still the old one, `<file>.rotating` the new one) logs in with the
/// pending file's password rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_mid_rotation_uses_the_pending_password() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-password");
    let first = h.demo.admin_password.expose().to_owned();
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let mut config = h.config.clone();
    config.backend.admin_password_file = Some(file.clone());
    let admin = rolemint::pg::AdminClient::new(&config).expect("admin client");
    admin.ping("postgres").await.expect("logged in before");

    // The other instance, stopped between steps 2 and 3.
    let next = "a-password-set-mid-rotation";
    std::fs::write(dir.path().join("admin-password.rotating"), next).unwrap();
    let superuser = connect_owned(h.cluster.superuser_conn_string("postgres"))
        .await
        .expect("superuser");
    superuser
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD '{next}'",
            h.demo.admin_user
        ))
        .await
        .unwrap();

    // A database this client has no open connection to: a new login.
    admin
        .ping("appdb")
        .await
        .expect("the pending file's password logs in");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), first);

    // And with neither file holding PostgreSQL's password, 28P01 stays.
    superuser
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD 'neither-file-has-this'",
            h.demo.admin_user
        ))
        .await
        .unwrap();
    let other = rolemint::pg::AdminClient::new(&config).expect("admin client");
    let refused = other.ping("postgres").await.expect_err("no password works");
    assert_eq!(refused.sqlstate(), Some("28P01"), "{refused}");
}

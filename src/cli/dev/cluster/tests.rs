//! The throwaway cluster against the machine's PostgreSQL: it starts,
//! proves passwords, provisions the demo, and leaves nothing behind.

use super::*;

fn process_exists(pid: u32) -> bool {
    // Signal 0 checks for existence; a zombie would still count, but
    // `stop` reaps the postmaster.
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn starts_answers_and_leaves_nothing_behind() {
    let mut cluster =
        TempCluster::start(ClusterOptions::default().setting("log_statement", "all")).unwrap();
    let out = cluster
        .psql_as_superuser("postgres", "SELECT 40 + 2;")
        .unwrap();
    assert_eq!(out, "42");

    let hba = fs::read_to_string(cluster.data_dir().join("pg_hba.conf")).unwrap();
    assert!(
        !hba.contains("trust"),
        "pg_hba.conf must not allow password-free logins:\n{hba}"
    );
    let method = cluster
        .psql_as_superuser(
            "postgres",
            "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules \
             WHERE error IS NULL;",
        )
        .unwrap();
    assert_eq!(method, "reject,scram-sha-256");

    // A wrong password is refused: the cluster really asks for one.
    let mut wrong = cluster.superuser_client(cluster.psql(), "postgres");
    wrong
        .env("PGPASSWORD", "wrong")
        .args(["-X", "-c", "SELECT 1"]);
    let err = run_capturing(wrong, None, "psql").unwrap_err().to_string();
    assert!(err.contains("password authentication failed"), "{err}");

    assert!(
        cluster.read_log().contains("SELECT 40 + 2"),
        "log_statement = 'all' is applied"
    );

    let pid = cluster.pid().unwrap();
    let dir = cluster.dir().to_owned();
    assert!(process_exists(pid));
    cluster.stop().unwrap();
    assert!(!process_exists(pid), "postmaster {pid} still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
    cluster.stop().unwrap(); // idempotent
    assert!(cluster.pid().is_none());
}

#[test]
fn drop_stops_the_server_even_on_panic() {
    let cluster = TempCluster::start(ClusterOptions::default()).unwrap();
    let (pid, dir) = (cluster.pid().unwrap(), cluster.dir().to_owned());
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _cluster = cluster;
        panic!("a failing test");
    }));
    assert!(unwound.is_err());
    assert!(!process_exists(pid));
    assert!(!dir.exists());
}

#[test]
fn provisions_the_demo() {
    let cluster =
        TempCluster::start(ClusterOptions::default().setting("log_statement", "all")).unwrap();
    let demo = provision_demo(&cluster).unwrap();
    assert_eq!(demo.database, "appdb");

    // The admin logs in with its password and holds what rolemint needs.
    let mut admin = Command::new(cluster.psql());
    admin
        .args(["-X", "-At", "-h", HOST, "-p", &cluster.port().to_string()])
        .args(["-U", &demo.admin_user, "-d", "appdb", "-c"])
        .arg(
            "SELECT rolcreaterole, pg_has_role('pg_signal_backend', 'MEMBER'), \
             pg_has_role('app_read', 'USAGE WITH ADMIN OPTION'), \
             pg_has_role('app_owner', 'USAGE WITH ADMIN OPTION'), \
             rolsuper \
             FROM pg_roles WHERE rolname = current_user",
        )
        .env("PGPASSWORD", demo.admin_password.expose())
        .env_remove("PGOPTIONS");
    assert_eq!(
        run_capturing(admin, None, "psql as admin").unwrap().trim(),
        "t|t|t|t|f"
    );

    let owners = cluster
        .psql_as_superuser(
            "appdb",
            "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'public';",
        )
        .unwrap();
    assert_eq!(owners, "app_owner");
    let readable = cluster
        .psql_as_superuser(
            "appdb",
            "SELECT count(*) FILTER (WHERE NOT has_table_privilege('app_read', oid, 'SELECT')), count(*) \
             FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r';",
        )
        .unwrap();
    assert_eq!(readable, "0|5", "every table readable by app_read");
    let rows = cluster
        .psql_as_superuser("appdb", "SELECT count(*) FROM pgbench_accounts;")
        .unwrap();
    assert_eq!(rows, "100000");

    // Only a verifier reached the server.
    assert!(!cluster.read_log().contains(demo.admin_password.expose()));
}

#[test]
fn demo_templates_are_valid_config() {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_plaintext = true\n\
         [backend]\nhost = \"127.0.0.1\"\nadmin_user = \"a\"\nadmin_password = \"p\"\n\
         [auth]\nhs256_secret = \"{}\"\n{}",
        "k".repeat(32),
        demo_templates_toml()
    );
    let config = crate::config::Config::parse(&text).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.roles.keys().collect::<Vec<_>>(),
        ["readonly", "readwrite"]
    );
}

#[test]
fn a_cluster_can_live_in_a_static() {
    fn check<T: Send + Sync>() {}
    check::<TempCluster>();
}

#[test]
fn random_hex_is_random() {
    let (a, b) = (random_hex(32).unwrap(), random_hex(32).unwrap());
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
}

//! Vault's admin persona against rolemint and a real PostgreSQL (issue
//! 20): the database tutorial's two personas with real hvac and requests
//! (`examples/vault/admin_tutorial.py`), then what Vault's single server
//! cannot show: a second instance serves a role (and honours a token)
//! written through the first within a second, a restarted instance still
//! has them, and a deleted
//! role's running lease ends normally and is revoked with its statements.
//!
//! The Python part runs when `ROLEMINT_TEST_PYTHON` names an interpreter
//! with hvac, psycopg and requests (`.ci/run` makes one); the rest always.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::vault::{self, role_exists};
use common::{wait_until, Harness, Options, ServeProcess};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OPERATOR_TOKEN: &str = "rmo_vault-admin-test-operator-token";

fn admin_toml(listen: &str) -> String {
    vault::admin_table(listen, OPERATOR_TOKEN) + "\n[audit]\npath = \"audit.jsonl\"\n"
}

async fn with_admin() -> (Harness, SocketAddr) {
    vault::serve(admin_toml("127.0.0.1:0")).await
}

/// A free port on 127.0.0.1 (for a spawned instance's admin listener).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Another `rolemint serve` on the harness's database, with its admin
/// listener; returns once that listener answers.
async fn another_instance(h: &Harness) -> (ServeProcess, SocketAddr) {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let serve = h.spawn_serve(&admin_toml(&admin.to_string()), &[]).await;
    let up = wait_until(Duration::from_secs(30), || async {
        reqwest::get(format!("http://{admin}/v1/sys/health"))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the second instance's admin listener:\n{}", serve.log());
    (serve, admin)
}

async fn call(method: &str, url: String, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    vault::call(method, url, Some(token), body).await
}

const CREATE: &str = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT app_read TO \"{{name}}\"";

/// [`call`], asserting the status; the body.
async fn expect(
    method: &str,
    url: String,
    token: &str,
    body: Option<Value>,
    status: StatusCode,
) -> Value {
    let (s, answer) = call(method, url.clone(), token, body).await;
    assert_eq!(s, status, "{method} {url}: {answer}");
    answer
}

/// Logs in to PostgreSQL directly as a credential role.
async fn direct(h: &Harness, user: &str, password: &str) -> Result<(), tokio_postgres::Error> {
    let client = common::connect_owned(format!(
        "host=127.0.0.1 port={} dbname=appdb user={user} password={password} sslmode=disable connect_timeout=10",
        h.cluster.port()
    ))
    .await?;
    client
        .query_one("SELECT count(*) FROM public.accounts", &[])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorials_admin_and_app_personas_with_hvac_and_requests() {
    let Ok(python) = std::env::var("ROLEMINT_TEST_PYTHON") else {
        eprintln!("ROLEMINT_TEST_PYTHON is unset: skipping the hvac tutorial");
        return;
    };
    // The config file has `readwrite` only: the tutorial writes `readonly`.
    let h = Harness::with(Options {
        extra_toml: format!(
            "{}\n[roles.readwrite]\ndatabases = [\"appdb\"]\nallow_identities = [\"*\"]\n\
             default_ttl = \"1h\"\nmax_ttl = \"2h\"\ncreation_statements = [\"{}\"]\n",
            admin_toml("127.0.0.1:0"),
            CREATE.replace('"', "\\\""),
        ),
        demo_templates: false,
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/vault/admin_tutorial.py"
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("VAULT_ADDR", format!("http://{admin}"))
        .env("VAULT_TOKEN", OPERATOR_TOKEN)
        .env("APP_TOKEN", h.token("app1").expose())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", h.cluster.port().to_string())
        .env("PGDATABASE", "appdb")
        .env("PGADMIN", &h.demo.admin_user)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run python");
    let text = common::output_text(&out);
    assert!(out.status.success(), "admin_tutorial.py failed:\n{text}");
    assert!(text.contains("credentials no longer log in"), "{text}");
    let user = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("username=").map(str::to_owned))
        .expect("the script prints the username");
    assert!(
        !role_exists(&h, &user).await,
        "the revoked role {user} is left"
    );

    // In PostgreSQL: the connection, the policy and the role, written by
    // the operator.
    let su = h.superuser_on("postgres").await;
    let rows = su
        .query(
            "SELECT kind, name, written_by FROM rolemint.objects ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("read rolemint.objects");
    let rows: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            ("connection".into(), "postgresql".into(), "operator".into()),
            ("policy".into(), "apps".into(), "operator".into()),
            ("template".into(), "readonly".into(), "operator".into()),
        ]
    );
    let body: Value = serde_json::from_str(
        &su.query_one(
            "SELECT body::text FROM rolemint.objects WHERE kind = 'connection'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0),
    )
    .unwrap();
    assert!(!body.to_string().contains("root-password"), "{body}");
    // Audited with who wrote them: role written twice, the connection once.
    let audit = std::fs::read_to_string(h.cert_path().with_file_name("audit.jsonl")).unwrap();
    let written: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "store.written")
        .collect();
    let of = |kind: &str| written.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!((of("template"), of("connection")), (2, 1), "{written:?}");
    assert!(written.iter().all(|e| e["written_by"] == "operator"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_written_through_one_instance_is_served_by_another_and_after_a_restart() {
    let (h, a) = with_admin().await;
    let (mut b_process, b) = another_instance(&h).await;
    let role_url =
        |admin: SocketAddr, name: &str| format!("http://{admin}/v1/database/roles/{name}");

    // Written through A (db_name: a database rolemint serves, by name).
    let (s, body) = call(
        "POST",
        role_url(a, "shared"),
        OPERATOR_TOKEN,
        Some(json!({"db_name": "appdb", "creation_statements": CREATE,
                    "default_ttl": "10m", "allow_identities": ["*"]})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let written = std::time::Instant::now();
    // And a Vault token created through A.
    let (s, created) = call(
        "POST",
        format!("http://{a}/v1/auth/token/create"),
        OPERATOR_TOKEN,
        Some(json!({"policies": ["default"], "ttl": "1h"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    // B serves it within a second: its API shows it ...
    let seen = wait_until(Duration::from_secs(1), || async {
        call("GET", role_url(b, "shared"), OPERATOR_TOKEN, None)
            .await
            .0
            == StatusCode::OK
    })
    .await;
    assert!(
        seen,
        "B did not serve the role within 1 s:\n{}",
        b_process.log()
    );
    eprintln!("B served the role {:?} after the write", written.elapsed());
    let lookup = |admin: SocketAddr| {
        let token = token.clone();
        async move {
            call(
                "GET",
                format!("http://{admin}/v1/auth/token/lookup-self"),
                &token,
                None,
            )
            .await
            .0
        }
    };
    assert!(
        wait_until(Duration::from_secs(1), || async {
            lookup(b).await == StatusCode::OK
        })
        .await,
        "B does not honour the token created through A within 1 s"
    );
    // ... and mints from it, on the Vault door and on the proxy door.
    let jwt = h.token("carol");
    let creds = expect(
        "GET",
        format!("http://{b}/v1/database/creds/shared"),
        jwt.expose(),
        None,
        StatusCode::OK,
    )
    .await;
    let user = creds["data"]["username"].as_str().unwrap();
    direct(&h, user, creds["data"]["password"].as_str().unwrap())
        .await
        .expect("B's credentials log in");
    let session = b_process
        .connect("shared", jwt.expose())
        .await
        .expect("a session through B's proxy with the written template");
    let who: String = session
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(who.contains("shared"), "{who}");
    drop(session);

    // A restarted instance still has it, from its first request.
    b_process.kill().await;
    let (c_process, c) = another_instance(&h).await;
    let (s, role) = call("GET", role_url(c, "shared"), OPERATOR_TOKEN, None).await;
    assert_eq!(s, StatusCode::OK, "{role}\n{}", c_process.log());
    assert_eq!(role["data"]["default_ttl"], 600);
    assert_eq!(role["data"]["db_name"], "appdb");
    assert_eq!(
        lookup(c).await,
        StatusCode::OK,
        "the restarted instance lost the token"
    );
    drop(c_process);
}

/// A table the `brief` roles' revocation statements write to: a trace the
/// default statements would not leave. Returns the superuser's client.
async fn trace_table(h: &Harness) -> tokio_postgres::Client {
    let su = h.superuser().await;
    su.batch_execute(&format!(
        "CREATE TABLE public.revoked (name text); GRANT INSERT ON public.revoked TO {}",
        h.demo.admin_user
    ))
    .await
    .unwrap();
    su
}

/// Reads credentials of role `brief` through `at`: (username, password,
/// lease id).
async fn brief_creds(at: SocketAddr, token: &str) -> (String, String, String) {
    let creds = expect(
        "GET",
        format!("http://{at}/v1/database/creds/brief"),
        token,
        None,
        StatusCode::OK,
    )
    .await;
    let field = |v: &Value| v.as_str().unwrap().to_owned();
    (
        field(&creds["data"]["username"]),
        field(&creds["data"]["password"]),
        field(&creds["lease_id"]),
    )
}

/// Waits until `user`'s role is gone; how many times the traced
/// revocation statements ran for it.
async fn dropped_and_traced(h: &Harness, su: &tokio_postgres::Client, user: &str) -> i64 {
    let gone = wait_until(Duration::from_secs(10), || async {
        !role_exists(h, user).await
    })
    .await;
    assert!(gone, "the role of the revoked lease is still there");
    su.query_one(
        "SELECT count(*) FROM public.revoked WHERE name = $1",
        &[&user],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_role_stops_new_leases_and_revokes_running_ones_with_its_statements() {
    let (h, a) = with_admin().await;
    let su = trace_table(&h).await;
    let (s, body) = call(
        "POST",
        format!("http://{a}/v1/database/roles/brief"),
        OPERATOR_TOKEN,
        Some(json!({
            "db_name": "appdb",
            "creation_statements": [CREATE],
            "revocation_statements": ["INSERT INTO public.revoked VALUES ('{{name}}')", "DROP ROLE \"{{name}}\""],
            "default_ttl": 3600,
            "allow_identities": "*",
        })),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let jwt = h.token("dave");
    let (user, password, lease) = brief_creds(a, jwt.expose()).await;

    // A config template cannot be deleted; the written one can.
    let body = expect(
        "DELETE",
        format!("http://{a}/v1/database/roles/readonly"),
        OPERATOR_TOKEN,
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        body["errors"][0].as_str().unwrap().contains("config file"),
        "{body}"
    );
    expect(
        "DELETE",
        format!("http://{a}/v1/database/roles/brief"),
        OPERATOR_TOKEN,
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect(
        "GET",
        format!("http://{a}/v1/database/roles/brief"),
        OPERATOR_TOKEN,
        None,
        StatusCode::NOT_FOUND,
    )
    .await;

    // No new lease; the running one still logs in.
    expect(
        "GET",
        format!("http://{a}/v1/database/creds/brief"),
        jwt.expose(),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    direct(&h, &user, &password)
        .await
        .expect("the running lease still works");

    // Revoked: with the deleted template's statements.
    let (s, body) = call(
        "PUT",
        format!("http://{a}/v1/sys/leases/revoke"),
        jwt.expose(),
        Some(json!({"lease_id": lease})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let traced = dropped_and_traced(&h, &su, &user).await;
    assert_eq!(
        traced, 1,
        "the deleted template's revocation statements ran"
    );
    // The workload revoked its own lease, and the audit line says so.
    let revoked = |by: &'static str| {
        let audit = h.cert_path().with_file_name("audit.jsonl");
        let user = user.clone();
        async move {
            std::fs::read_to_string(audit)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|l| {
                    l["event"] == "lease.revoked" && l["role"] == user.as_str() && l["by"] == by
                })
        }
    };
    assert!(
        wait_until(Duration::from_secs(10), || revoked("workload")).await,
        "no lease.revoked line with by = workload for {user}"
    );
}

/// A deleted role's statements outlive the instance that knew it: an
/// instance started after the delete (a restart, a new replica) revokes
/// the role's running lease with them, and still mints nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_after_a_delete_revokes_its_leases_with_the_deleted_statements() {
    let (h, a) = with_admin().await;
    let su = trace_table(&h).await;
    let (s, body) = call(
        "POST",
        format!("http://{a}/v1/database/roles/brief"),
        OPERATOR_TOKEN,
        Some(json!({
            "db_name": "appdb",
            "creation_statements": CREATE,
            "revocation_statements": "INSERT INTO public.revoked VALUES ('{{name}}'); DROP ROLE \"{{name}}\"",
            "default_ttl": "1h",
            "allow_identities": ["*"],
        })),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let jwt = h.token("erin");
    let (user, _, lease) = brief_creds(a, jwt.expose()).await;
    expect(
        "DELETE",
        format!("http://{a}/v1/database/roles/brief"),
        OPERATOR_TOKEN,
        None,
        StatusCode::NO_CONTENT,
    )
    .await;

    // B never saw the role: it neither lists nor mints it ...
    let (b_process, b) = another_instance(&h).await;
    expect(
        "GET",
        format!("http://{b}/v1/database/roles/brief"),
        OPERATOR_TOKEN,
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect(
        "GET",
        format!("http://{b}/v1/database/creds/brief"),
        jwt.expose(),
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // ... and revokes the running lease with the deleted role's statements.
    let (s, body) = call(
        "PUT",
        format!("http://{b}/v1/sys/leases/revoke"),
        OPERATOR_TOKEN,
        Some(json!({"lease_id": lease})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}\n{}", b_process.log());
    let traced = dropped_and_traced(&h, &su, &user).await;
    assert_eq!(
        traced,
        1,
        "B revoked {user} without the deleted role's statements:\n{}",
        b_process.log()
    );
}

/// A connection's `allowed_roles` is asked when credentials are read, as
/// in Vault, not only when the role is written: narrowing it (or deleting
/// the connection) stops the role on both doors, widening it opens it
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_allowed_roles_decide_at_every_mint() {
    let (h, a) = with_admin().await;
    let config = |allowed: &str| {
        json!({
            "plugin_name": "postgresql-database-plugin",
            "allowed_roles": allowed,
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/appdb",
                h.cluster.port()
            ),
            "username": h.demo.admin_user,
        })
    };
    let write_config = |allowed: &'static str| {
        let body = config(allowed);
        async move {
            let (s, body) = call(
                "POST",
                format!("http://{a}/v1/database/config/pg"),
                OPERATOR_TOKEN,
                Some(body),
            )
            .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
        }
    };
    write_config("fenced").await;
    let (s, body) = call(
        "POST",
        format!("http://{a}/v1/database/roles/fenced"),
        OPERATOR_TOKEN,
        Some(json!({"db_name": "pg", "creation_statements": CREATE,
                    "default_ttl": "10m", "allow_identities": ["*"]})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let jwt = h.token("frank");
    let creds = || async {
        call(
            "GET",
            format!("http://{a}/v1/database/creds/fenced"),
            jwt.expose(),
            None,
        )
        .await
    };
    let (s, body) = creds().await;
    assert_eq!(s, StatusCode::OK, "{body}");
    h.connect("fenced", "appdb", jwt.expose())
        .await
        .expect("the proxy door opens the admitted role");

    // Only allowed_roles changes: the role is fenced off on both doors.
    write_config("other").await;
    let (s, body) = creds().await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let error = body["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains("not an allowed role"), "{body}");
    let session = h.connect("fenced", "appdb", jwt.expose()).await;
    assert!(
        session.is_err(),
        "the proxy door still opens the fenced role"
    );

    // Admitted again (a glob), and then the connection deleted.
    write_config("fen*").await;
    let (s, body) = creds().await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let user = body["data"]["username"].as_str().unwrap().to_owned();
    expect(
        "DELETE",
        format!("http://{a}/v1/database/config/pg"),
        OPERATOR_TOKEN,
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let (s, body) = creds().await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap_or_default()
            .contains("deleted"),
        "{body}"
    );
    // The lease minted before runs on.
    assert!(role_exists(&h, &user).await, "{user} was dropped");
}

/// `vault write -force database/rotate-root/postgresql`, as the tutorial
/// runs it after `database/config/postgresql`: the connection's name is
/// taken, and reaches the rotation (refused here only because the
/// harness keeps the admin password inline, saying so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_takes_a_connections_name() {
    let (h, a) = with_admin().await;
    let rotate = |name: &'static str| async move {
        call(
            "POST",
            format!("http://{a}/v1/database/rotate-root/{name}"),
            OPERATOR_TOKEN,
            None,
        )
        .await
    };
    let (s, body) = rotate("postgresql").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("unknown database"), "{body}");
    let (s, body) = call(
        "POST",
        format!("http://{a}/v1/database/config/postgresql"),
        OPERATOR_TOKEN,
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "allowed_roles": "*",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/appdb",
                h.cluster.port()
            ),
            "username": h.demo.admin_user,
        })),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body) = rotate("postgresql").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string().contains("admin_password_file"),
        "the connection's name did not reach the rotation: {body}"
    );
}

/// `vault write auth/kubernetes/config kubernetes_host=...` (the step
/// before the auth roles in Vault's tutorial) is told where rolemint keeps
/// that, not "unknown path".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_mounts_config_write_names_the_config_keys() {
    let (_h, a) = with_admin().await;
    for mount in ["kubernetes", "jwt"] {
        let (s, body) = call(
            "POST",
            format!("http://{a}/v1/auth/{mount}/config"),
            OPERATOR_TOKEN,
            Some(json!({"kubernetes_host": "https://10.0.0.1:443"})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains("[auth]"), "{body}");
    }
    // A workload is refused before the answer, as on every admin route.
    let (s, _) = call(
        "POST",
        format!("http://{a}/v1/auth/kubernetes/config"),
        "rmv.not-a-token",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

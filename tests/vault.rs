//! The Vault-compatible door against a real PostgreSQL: login, credentials
//! that log in to PostgreSQL directly, the roles listing, sys/health, the
//! client quirks Vault's clients depend on, and no role left behind after
//! expiry or a crash. `examples/vault/` (Python, hvac) runs when
//! `ROLEMINT_TEST_PYTHON` names an interpreter with hvac, psycopg and
//! requests (`.ci/run` makes one).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::vault::role_exists;
use common::{wait_until, Harness, Options};
use reqwest::{Method, StatusCode};
use rolemint::control::auth::sha256_hex;
use serde_json::{json, Value};

const OPERATOR_TOKEN: &str = "rmo_vault-test-operator-token";

/// `[admin]` on a free port, an audit file, and a template whose leases
/// last two seconds.
fn admin_toml(listen: &str) -> String {
    common::vault::admin_table(listen, OPERATOR_TOKEN)
        + r#"

[audit]
path = "audit.jsonl"

[roles.brief]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "2s"
max_ttl = "10s"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]

[roles.only_bob]
databases = ["appdb"]
allow_identities = ["local:bob"]
default_ttl = "1h"
max_ttl = "2h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#
}

async fn with_vault() -> (Harness, SocketAddr) {
    common::vault::serve(admin_toml("127.0.0.1:0")).await
}

/// One request: status, content type, Cache-Control, JSON body (Null when
/// empty).
async fn call(
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String, String, Value) {
    let mut req =
        reqwest::Client::new().request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, ctype, cache) = (
        resp.status(),
        header("content-type"),
        header("cache-control"),
    );
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, ctype, cache, json)
}

async fn login(admin: SocketAddr, mount: &str, jwt: &str) -> (StatusCode, Value) {
    let (s, ct, _, body) = call(
        "POST",
        format!("http://{admin}/v1/auth/{mount}/login"),
        None,
        Some(json!({"role": "app", "jwt": jwt})),
    )
    .await;
    assert_eq!(ct, "application/json");
    (s, body)
}

async fn creds(admin: SocketAddr, template: &str, token: &str) -> (StatusCode, String, Value) {
    let (s, ct, cache, body) = call(
        "GET",
        format!("http://{admin}/v1/database/creds/{template}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(ct, "application/json");
    (s, cache, body)
}

/// A direct connection to PostgreSQL (not through rolemint).
async fn direct(
    h: &Harness,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    common::connect_owned(format!(
        "host=127.0.0.1 port={} dbname=appdb user={user} password={password} sslmode=disable connect_timeout=10",
        h.cluster.port()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_credentials_that_log_in_to_postgresql_directly() {
    let (h, admin) = with_vault().await;
    let jwt = h.token("alice");
    let (s, body) = login(admin, "kubernetes", jwt.expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let auth = &body["auth"];
    let client_token = auth["client_token"].as_str().unwrap().to_owned();
    assert!(client_token.starts_with("rmv."));
    assert!(auth["lease_duration"].as_u64().unwrap() <= 600);
    let policies: Vec<&str> = auth["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(policies.contains(&"readonly") && policies.contains(&"brief"));
    assert!(!policies.contains(&"only_bob"), "{policies:?}");
    assert_eq!(auth["metadata"]["identity"], "alice");
    // The other mount answers too.
    assert_eq!(login(admin, "jwt", jwt.expose()).await.0, StatusCode::OK);

    // lookup-self: 200 for the client token, the JWT and the operator;
    // 403 with the errors shape otherwise.
    let lookup = format!("http://{admin}/v1/auth/token/lookup-self");
    for t in [client_token.as_str(), jwt.expose(), OPERATOR_TOKEN] {
        let (s, ct, _, _) = call("GET", lookup.clone(), Some(t), None).await;
        assert_eq!((s, ct.as_str()), (StatusCode::OK, "application/json"));
    }
    let (s, _, _, body) = call("GET", lookup.clone(), Some("rmv.forged"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body, json!({"errors": ["permission denied"]}));
    assert_eq!(
        call("GET", lookup, None, None).await.0,
        StatusCode::FORBIDDEN
    );

    let (s, cache, body) = creds(admin, "readonly", &client_token).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(cache, "no-store");
    let lease_id = body["lease_id"].as_str().unwrap();
    assert!(
        lease_id.starts_with("database/creds/readonly/"),
        "{lease_id}"
    );
    assert_eq!(body["renewable"], true);
    assert_eq!(body["lease_duration"], 3600);
    let user = body["data"]["username"].as_str().unwrap().to_owned();
    let password = body["data"]["password"].as_str().unwrap().to_owned();
    assert!(password.len() >= 43, "256 bits of password");

    // The role as PostgreSQL knows it: both markers, a creds comment, the
    // lease's expiry.
    let su = h.superuser().await;
    let row = su
        .query_one(
            "SELECT pg_has_role(r.oid, 'rolemint_managed', 'MEMBER'), \
                    pg_has_role(r.oid, 'rolemint_direct', 'MEMBER'), \
                    shobj_description(r.oid, 'pg_authid'), \
                    r.rolvaliduntil IS NOT NULL \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&user],
        )
        .await
        .expect("the credential role exists");
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1) && row.get::<_, bool>(3));
    let comment: Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap();
    assert_eq!(comment["kind"], "creds");
    assert_eq!(comment["lease_id"], lease_id);
    assert_eq!(comment["identity"], "alice");

    // The workload logs in to PostgreSQL itself and reads.
    let client = direct(&h, &user, &password).await.expect("direct login");
    let n: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("read as the credential role")
        .get(0);
    assert!(n > 0);
    // The lease is in the registry, as a credential lease.
    let lease = h.shared.leases.get(lease_id).expect("registered");
    assert_eq!(lease.kind, rolemint::lease::registry::LeaseKind::Creds);

    // The identity JWT works as X-Vault-Token directly, too.
    let (s, _, body) = creds(admin, "readonly", jwt.expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // The password is in no log and no audit line; the lease is audited.
    let audit_path = h.cert_path().with_file_name("audit.jsonl");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            std::fs::read_to_string(&audit_path)
                .unwrap_or_default()
                .contains(lease_id)
        })
        .await
    );
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(audit.contains("lease.minted"));
    for secret in [&password, &client_token] {
        assert!(
            !audit.contains(secret.as_str()),
            "a secret in the audit log"
        );
        assert!(
            !common::captured_log().contains(secret.as_str()),
            "a secret in the log"
        );
    }
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_vault_client_quirks() {
    let (h, admin) = with_vault().await;
    let base = format!("http://{admin}/v1");
    // No token, a wrong token, a bad JWT: 403 (never 401), errors shape.
    for t in [None, Some("nope"), Some("eyJhbGciOiJIUzI1NiJ9.e30.bad")] {
        let (s, ct, _, body) =
            call("GET", format!("{base}/database/creds/readonly"), t, None).await;
        assert_eq!(
            (s, ct.as_str()),
            (StatusCode::FORBIDDEN, "application/json")
        );
        assert_eq!(body, json!({"errors": ["permission denied"]}));
    }
    let (s, body) = login(admin, "kubernetes", "eyJhbGciOiJIUzI1NiJ9.e30.bad").await;
    assert_eq!(
        (s, &body),
        (
            StatusCode::FORBIDDEN,
            &json!({"errors": ["permission denied"]})
        )
    );
    let (s, body) = login(admin, "jwt", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // A mount not configured is unknown.
    assert_eq!(
        login(admin, "github", h.token("alice").expose()).await.0,
        StatusCode::NOT_FOUND
    );

    let alice = h.token("alice");
    let (s, _, body) = creds(admin, "nosuch", alice.expose()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0], "unknown role: nosuch");
    let (s, _, body) = creds(admin, "only_bob", alice.expose()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        h.managed_roles().await.is_empty(),
        "a refused request minted"
    );
    let (s, _, body) = creds(admin, "only_bob", h.token("bob").expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Roles: LIST and GET ?list=true; one role in Vault's shape; writes to
    // a config file template 400.
    for (method, url) in [
        ("LIST", format!("{base}/database/roles")),
        ("GET", format!("{base}/database/roles?list=true")),
        ("LIST", format!("{base}/database/roles/")),
    ] {
        let (s, ct, _, body) = call(method, url, Some(alice.expose()), None).await;
        assert_eq!((s, ct.as_str()), (StatusCode::OK, "application/json"));
        let keys = body["data"]["keys"].as_array().unwrap();
        assert!(keys.contains(&json!("readonly")) && keys.contains(&json!("brief")));
    }
    let (s, _, _, body) = call(
        "GET",
        format!("{base}/database/roles/brief"),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["db_name"], "appdb");
    assert_eq!(body["data"]["default_ttl"], 2);
    assert_eq!(body["data"]["max_ttl"], 10);
    assert_eq!(
        body["data"]["creation_statements"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (s, _, _, _) = call("GET", format!("{base}/database/roles/readonly"), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for method in ["POST", "PUT", "DELETE"] {
        let (s, _, _, body) = call(
            method,
            format!("{base}/database/roles/readonly"),
            Some(OPERATOR_TOKEN),
            Some(json!({"db_name": "appdb"})),
        )
        .await;
        // A config file template is read-only over the API.
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body["errors"][0].as_str().unwrap().contains("config file"));
    }

    // sys/health, GET and HEAD, no token.
    let (s, ct, _, body) = call("GET", format!("{base}/sys/health"), None, None).await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, "application/json"));
    assert_eq!(body["initialized"], true);
    assert_eq!(body["sealed"], false);
    assert_eq!(body["standby"], false);
    assert_eq!(body["cluster_name"], "rolemint");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let head = reqwest::Client::new()
        .head(format!("{base}/sys/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_expiry_the_direct_session_is_terminated_and_the_role_dropped() {
    let (h, admin) = with_vault().await;
    let (s, _, body) = creds(admin, "brief", h.token("alice").expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["lease_duration"], 2);
    let user = body["data"]["username"].as_str().unwrap().to_owned();
    let password = body["data"]["password"].as_str().unwrap();
    let client = direct(&h, &user, password).await.expect("direct login");
    client.simple_query("SELECT 1").await.expect("query");

    assert!(
        wait_until(Duration::from_secs(30), || async {
            !role_exists(&h, &user).await
        })
        .await,
        "the expired credential role is still there"
    );
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the expired credential's session is still open"
    );
    assert!(direct(&h, &user, password).await.is_err());
    assert_eq!(h.wait_no_leases().await, 0);
    // The audit trail names the lease that ended, not only its role.
    let lease_id = body["lease_id"].as_str().unwrap().to_owned();
    let audit = h
        .config
        .audit
        .path
        .clone()
        .expect("the test config has an audit file");
    let revoked_line = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["event"] == "lease.revoked" && l["role"] == user.as_str())
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            revoked_line().is_some()
        })
        .await,
        "no lease.revoked line for {user}"
    );
    let line = revoked_line().unwrap();
    assert_eq!(line["lease_id"], lease_id.as_str(), "{line}");
    assert_eq!(line["by"], "ttl", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_next_instance_reaps_expired_credentials() {
    let h = Harness::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let reaper = "[mint]\nreap_interval = \"1s\"\nreap_grace = \"2s\"\n";
    let extra = format!("{reaper}{}", admin_toml(&listen));
    let mut a = h.spawn_serve(&extra, &[]).await;
    let admin: SocketAddr = listen.parse().unwrap();
    let up = wait_until(Duration::from_secs(10), || async {
        reqwest::get(format!("http://{admin}/v1/sys/health"))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "{}", a.log());
    // A long-lived credential survives the crash and the next instance's
    // sweeps (it has no backend, but is no orphan); a short one is reaped.
    let (s, _, long) = creds(admin, "readonly", h.token("alice").expose()).await;
    assert_eq!(s, StatusCode::OK, "{long}");
    let (s, _, brief) = creds(admin, "brief", h.token("alice").expose()).await;
    assert_eq!(s, StatusCode::OK, "{brief}");
    let long_role = long["data"]["username"].as_str().unwrap().to_owned();
    let brief_role = brief["data"]["username"].as_str().unwrap().to_owned();
    a.kill().await;
    drop(a);

    let b = h.spawn_serve(&extra, &[]).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            !role_exists(&h, &brief_role).await
        })
        .await,
        "the expired credential role was not reaped:\n{}",
        b.log()
    );
    assert!(
        role_exists(&h, &long_role).await,
        "a live credential role was reaped"
    );
    // Still usable: the credentials outlive the instance that issued them.
    let password = long["data"]["password"].as_str().unwrap();
    direct(&h, &long_role, password)
        .await
        .expect("the long-lived credential still logs in");
}

/// The interpreter for the Python programs of `examples/vault/`.
fn python() -> Option<String> {
    common::vault::python("the Python Vault clients")
}

async fn run_example(python: &str, script: &str, env: &[(&str, String)]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vault/");
    let out = tokio::process::Command::new(python)
        .arg(format!("{path}{script}"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run python");
    let text = common::output_text(&out);
    assert!(out.status.success(), "{script} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_reads_credentials_with_a_vault_token_header() {
    let Some(python) = python() else { return };
    let (h, admin) = with_vault().await;
    let out = run_example(
        &python,
        "requests_creds.py",
        &[
            ("VAULT_ADDR", format!("http://{admin}")),
            ("VAULT_TOKEN", h.token("alice").expose().to_owned()),
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", h.cluster.port().to_string()),
            ("PGDATABASE", "appdb".into()),
        ],
    )
    .await;
    let user = out
        .lines()
        .find_map(|l| l.strip_prefix("username="))
        .expect("the example prints the username")
        .to_owned();
    assert!(role_exists(&h, &user).await, "{out}");
}

/// A Kubernetes-style service-account token, RS256, and the JWKS file that
/// verifies it.
mod service_account {
    use jsonwebtoken::{Algorithm, Header};
    use serde_json::json;

    pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    pub const SUBJECT: &str = "system:serviceaccount:apps:billing";

    /// (the signed token, the JWKS JSON).
    pub fn token_and_jwks() -> (String, String) {
        let key = super::common::keys::rsa();
        let jwks = json!({"keys": [super::common::keys::rsa_jwk(&key, "sa-1")]});
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "iss": ISSUER, "sub": SUBJECT, "aud": ["rolemint"],
            "iat": now, "nbf": now, "exp": now + 600,
            "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "billing"}},
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("sa-1".into());
        let token = jsonwebtoken::encode(&header, &claims, &key.signing).unwrap();
        (token, jwks.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hvac_logs_in_reads_connects_renews_and_revokes() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (sa_token, jwks) = service_account::token_and_jwks();
    let jwks_path = dir.path().join("jwks.json");
    let token_path = dir.path().join("token");
    std::fs::write(&jwks_path, jwks).unwrap();
    std::fs::write(&token_path, &sa_token).unwrap();
    let h = Harness::with(Options {
        extra_toml: format!(
            "{}\n[[auth.issuers]]\nname = \"kubernetes\"\nissuer = \"{}\"\naudiences = [\"rolemint\"]\nalgorithms = [\"RS256\"]\njwks_file = \"{}\"\n",
            admin_toml("127.0.0.1:0"),
            service_account::ISSUER,
            jwks_path.display()
        ),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.unwrap();
    let out = run_example(
        &python,
        "hvac_workflow.py",
        &[
            ("VAULT_ADDR", format!("http://{admin}")),
            ("SA_TOKEN_PATH", token_path.display().to_string()),
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", h.cluster.port().to_string()),
            ("PGDATABASE", "appdb".into()),
        ],
    )
    .await;
    assert!(out.contains("credentials no longer log in"), "{out}");
    let user = out
        .lines()
        .find_map(|l| l.strip_prefix("username="))
        .expect("the example prints the username")
        .to_owned();
    assert!(user.starts_with("v-system_serviceaccount"), "{user}");
    assert!(
        !role_exists(&h, &user).await,
        "the revoked role is still there"
    );
    assert!(h.managed_roles().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_moves_the_admin_onto_a_new_password_without_failing_a_session() {
    let (h, admin) = with_vault().await;
    // The harness's password is inline: refused, saying why.
    let url = format!("http://{admin}/v1/database/rotate-root/appdb");
    let (s, _, _, body) = call("POST", url.clone(), Some(OPERATOR_TOKEN), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .contains("admin_password_file"));
    let alice = h.token("alice");
    assert_eq!(
        call("POST", url, Some(alice.expose()), None).await.0,
        StatusCode::FORBIDDEN,
        "a workload rotated root"
    );

    // The same cluster, with the password in a file.
    let dir = tempfile::tempdir().unwrap();
    common::write_self_signed_cert(dir.path());
    let file = dir.path().join("admin-password");
    let old = h.demo.admin_password.expose().to_owned();
    std::fs::write(&file, &old).unwrap();
    let text = common::config_toml(
        &h.cluster,
        &h.demo,
        &Options {
            extra_toml: admin_toml("127.0.0.1:0"),
            ..Options::default()
        },
    )
    .replace(
        &format!("admin_password = \"{old}\""),
        &format!("admin_password_file = \"{}\"", file.display()),
    );
    let mut config = rolemint::config::Config::parse(&text).unwrap();
    config.resolve(dir.path()).unwrap();
    config.validate().unwrap();
    let server = rolemint::proxy::server::Server::bind(config.clone())
        .await
        .unwrap();
    let (proxy, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let session = |token: String| {
        common::connect_owned(format!(
            "host=127.0.0.1 port={} user=readonly dbname=appdb password={token} sslmode=disable",
            proxy.port()
        ))
    };
    let before = session(alice.expose().to_owned()).await.expect("session");

    let url = format!("http://{admin}/v1/database/rotate-root/appdb");
    let (s, _, _, body) = call("POST", url, Some(OPERATOR_TOKEN), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let new = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_ne!(new, old);
    assert!(new.len() >= 43);
    assert!(!dir.path().join("admin-password.rotating").exists());
    let admin_login = |password: String| {
        common::connect_owned(format!(
            "host=127.0.0.1 port={} user={} dbname=postgres password={password} sslmode=disable",
            h.cluster.port(),
            h.demo.admin_user
        ))
    };
    assert!(
        admin_login(old.clone()).await.is_err(),
        "the old password still works"
    );
    admin_login(new.clone())
        .await
        .expect("the new password works");

    // The session in flight is untouched; with every admin connection
    // gone, a new session mints over a connection made with the new
    // password.
    before
        .simple_query("SELECT 1")
        .await
        .expect("in-flight session");
    h.superuser()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&h.demo.admin_user],
        )
        .await
        .unwrap();
    // (An idle pooled connection that was killed may fail one mint first;
    // a new connection with a stale password would fail every one.)
    let carol = h.token("carol").expose().to_owned();
    let minted_after = wait_until(Duration::from_secs(10), || async {
        match session(carol.clone()).await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(
        minted_after,
        "no session could be minted after the rotation"
    );
    drop(before);
    stop.cancel();
    task.await.unwrap().unwrap();

    // `rolemint rotate-admin` does the same from the command line.
    let config_path = dir.path().join("rolemint.toml");
    std::fs::write(&config_path, &text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
        .args(["rotate-admin", "--config"])
        .arg(&config_path)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let newer = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_ne!(newer, new);
    admin_login(newer).await.expect("the CLI's password works");
    assert!(admin_login(new).await.is_err());
    // Secrets stay out of the output.
    assert!(!common::output_text(&out).contains(&old));
}

/// Ready, always (the scoping test needs no backend probe).
struct Ready;

impl rolemint::control::health::Probe for Ready {
    fn ping<'a>(&'a self, _: &'a str) -> rolemint::control::BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn managed_roles(&self) -> rolemint::control::BoxFuture<'_, Result<u64, String>> {
        Box::pin(async { Ok(0) })
    }
}

fn creds_lease(id: &str, identity: &str) -> rolemint::control::leases::LeaseView {
    let now = std::time::SystemTime::now();
    rolemint::control::leases::LeaseView {
        id: id.into(),
        issue_time: now,
        expire_time: now + Duration::from_secs(3600),
        last_renewal: None,
        renewable: true,
        ttl: 3600,
        identity: identity.into(),
        issuer: "local".into(),
        role: format!("v-{identity}-readonly-1"),
        template: "readonly".into(),
        database: "appdb".into(),
        client_addr: None,
        bytes_in: 0,
        bytes_out: 0,
        instance: "test".into(),
        kind: rolemint::lease::registry::LeaseKind::Creds,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_tokens_act_on_their_own_leases_only() {
    use rolemint::control::{door::VaultDoor, memory::MemoryDirectory, AdminListener, AdminState};
    use rolemint::lease::end::EndReason;
    use rolemint::observe::audit::Audit;
    let (h, _) = with_vault().await;
    let directory = Arc::new(MemoryDirectory::default());
    let hour = Duration::from_secs(3600);
    let (mine, theirs) = (
        "database/creds/readonly/alice1",
        "database/creds/readonly/bob1",
    );
    directory.insert(creds_lease(mine, "alice"), hour, 2 * hour);
    directory.insert(creds_lease(theirs, "bob"), hour, 2 * hour);
    let state = AdminState {
        operator: rolemint::control::auth::OperatorToken::from_hex(&sha256_hex(OPERATOR_TOKEN)),
        directory: directory.clone(),
        probe: Arc::new(Ready),
        databases: vec!["appdb".into()],
        shutdown: tokio_util::sync::CancellationToken::new(),
        audit: Audit::disabled(),
        request_timeout: Duration::from_secs(10),
        ready_timeout: Duration::from_secs(5),
        max_body_bytes: 65536,
        vault: Some(Arc::new(VaultDoor::new(Arc::clone(&h.shared)))),
        people: None,
        failures: Arc::new(rolemint::auth::identity::FailureLimiter::new(
            &Default::default(),
        )),
        probes: Default::default(),
        policies: Arc::new(rolemint::auth::acl::BuiltinOnly),
        policy_cache: Default::default(),
        jwt_mounts: vec!["jwt".into(), "kubernetes".into()],
        database_mount: "database".into(),
        webhook: None,
    };
    let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), None, 16)
        .await
        .unwrap();
    let api = listener.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rolemint::control::serve(listener, state, stop.clone()));

    // A client token from a login, as hvac holds it.
    let (_, body) = login(api, "jwt", h.token("alice").expose()).await;
    let alice = body["auth"]["client_token"].as_str().unwrap().to_owned();
    let base = format!("http://{api}/v1/sys/leases");

    let (s, _, _, body) = call(
        "LIST",
        format!("{base}/lookup/database/creds/readonly/"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["keys"], json!(["alice1"]));
    let (s, _, _, body) = call(
        "PUT",
        format!("{base}/lookup"),
        Some(&alice),
        Some(json!({"lease_id": theirs})),
    )
    .await;
    assert_eq!(
        (s, &body["errors"][0]),
        (StatusCode::BAD_REQUEST, &json!("lease not found"))
    );
    let (s, _, _, body) = call(
        "PUT",
        format!("{base}/lookup"),
        Some(&alice),
        Some(json!({"lease_id": mine})),
    )
    .await;
    assert_eq!((s, &body["data"]["id"]), (StatusCode::OK, &json!(mine)));

    // Renew: own lease, `"increment": null` is the default TTL; not bob's.
    let (s, _, _, body) = call(
        "PUT",
        format!("{base}/renew"),
        Some(&alice),
        Some(json!({"lease_id": mine, "increment": null})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["lease_id"], mine);
    let (s, _, _, _) = call("PUT", format!("{base}/renew/{theirs}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Revoke: bob's is "not found", so 204, and stays; her own goes, by
    // a workload; revoke-prefix is for operators.
    let (s, _, _, _) = call("PUT", format!("{base}/revoke/{theirs}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(directory.live().contains(&theirs.to_owned()));
    let (s, _, _, _) = call(
        "PUT",
        format!("{base}/revoke"),
        Some(&alice),
        Some(json!({"lease_id": mine, "sync": false})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(!directory.live().contains(&mine.to_owned()));
    assert_eq!(
        directory.revoked_by(mine),
        Some(EndReason::RevokedByWorkload)
    );
    let (s, _, _, _) = call(
        "PUT",
        format!("{base}/revoke-prefix/database/creds"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(directory.live().contains(&theirs.to_owned()));

    // rolemint's own list: hers only; the operator sees all.
    let list = format!("http://{api}/v1/rolemint/leases");
    let (_, _, _, body) = call("GET", list.clone(), Some(&alice), None).await;
    assert_eq!(body["data"]["leases"].as_array().unwrap().len(), 0);
    let (_, _, _, body) = call("GET", list, Some(OPERATOR_TOKEN), None).await;
    assert_eq!(body["data"]["leases"][0]["id"], theirs);
    stop.cancel();
}

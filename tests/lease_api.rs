//! The lease API on a running proxy in front of a real PostgreSQL: revoke
//! and renew act on live sessions (this instance's, and another instance's
//! through the catalog), lookups and lists show them, and `rolemint leases`
//! drives it all. Each test checks PostgreSQL itself afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{output_text, sqlstate, wait_until, Harness, Options};
use reqwest::{Method, StatusCode};
use rolemint::control::auth::sha256_hex;
use rolemint::secret::Secret;
use serde_json::{json, Value};

const ROLEMINT: &str = env!("CARGO_BIN_EXE_rolemint");
const OPERATOR_TOKEN: &str = "rmo_lease-api-test-operator-token";

/// `[admin]` on, with the operators' token, and `extra` appended.
fn admin_toml(extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n\n{extra}\n",
        sha256_hex(OPERATOR_TOKEN)
    )
}

async fn with_admin(extra: &str) -> (Harness, SocketAddr) {
    let h = Harness::with(Options {
        extra_toml: admin_toml(extra),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    (h, admin)
}

/// `PUT /v1/sys/leases/revoke` of `id` with the operator token (synchronous:
/// answered once the role is gone).
async fn revoke(admin: SocketAddr, id: &str) -> (StatusCode, Value) {
    api(
        admin,
        "PUT",
        "/v1/sys/leases/revoke",
        Some(json!({"lease_id": id})),
    )
    .await
}

/// One request to the admin API with the operator token; status and JSON
/// body (`null` when there is none).
async fn api(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{admin}{path}"))
        .header("X-Vault-Token", OPERATOR_TOKEN)
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("admin API answers");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, value)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `rolemint <args>` against the admin API at `admin`.
async fn rolemint(admin: SocketAddr, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(ROLEMINT)
        .args(args)
        .env("ROLEMINT_ADDR", format!("http://{admin}"))
        .env("ROLEMINT_TOKEN", OPERATOR_TOKEN)
        .env_remove("ROLEMINT_CONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn session_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

/// `rolvaliduntil` (Unix seconds) and the lease comment of `role`.
async fn valid_until_and_comment(h: &Harness, role: &str) -> (i64, Value) {
    let row = h
        .superuser()
        .await
        .query_one(
            "SELECT extract(epoch from rolvaliduntil)::bigint, shobj_description(oid, 'pg_authid') \
             FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let comment = serde_json::from_str(&row.get::<_, String>(1)).unwrap();
    (row.get(0), comment)
}

/// Backends running `pg_sleep` now, as the superuser sees them.
async fn sleeping_backends(h: &Harness) -> i64 {
    h.superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%' \
             AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A long query on `client` on its own task: what it ends with.
fn sleep_on(
    client: tokio_postgres::Client,
) -> tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>> {
    tokio::spawn(async move { client.execute("SELECT pg_sleep(120)", &[]).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_identity_ends_its_sessions_and_no_one_elses() {
    let (h, admin) = with_admin("[audit]\npath = \"audit.jsonl\"\n").await;

    // mallory: one tokio-postgres session and one psql, both mid-query.
    let app = h.session("readonly", "mallory").await;
    let app_role = session_user(&app).await;
    let app_query = sleep_on(app);
    let token: Secret = h.token("mallory");
    let psql = {
        let psql = h.cluster.psql().to_owned();
        let port = h.addr.port().to_string();
        let token = token.expose().to_owned();
        tokio::spawn(async move {
            tokio::process::Command::new(psql)
                .args(["-X", "-At", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1"])
                .args(["-p", &port, "-U", "readonly", "-d", "appdb"])
                .args(["-c", "SELECT pg_sleep(120)"])
                .env("PGPASSWORD", token)
                .env("PGSSLMODE", "require")
                .env("PGCONNECT_TIMEOUT", "10")
                .kill_on_drop(true)
                .output()
                .await
                .unwrap()
        })
    };
    // alice: a third session that must keep running.
    let alice = h.session("readonly", "alice").await;
    let alice_role = session_user(&alice).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sleeping_backends(&h).await == 2
        })
        .await,
        "both of mallory's queries are running"
    );
    let mallory_roles: Vec<String> = h
        .shared
        .leases
        .list()
        .iter()
        .filter(|l| l.identity == "mallory")
        .map(|l| l.role.clone())
        .collect();
    assert_eq!(mallory_roles.len(), 2);
    assert!(mallory_roles.contains(&app_role));

    let run = rolemint(admin, &["leases", "list"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().count(),
        4,
        "header and three leases:\n{}",
        run.stdout
    );

    let run = rolemint(admin, &["leases", "revoke-identity", "mallory"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "revoked 2 lease(s) of mallory");

    // The revoke is synchronous: the roles are gone once it has answered,
    // and the audit log says who revoked them.
    for role in &mallory_roles {
        assert!(!role_exists(&h, role).await, "{role} was dropped");
    }
    let audit = std::fs::read_to_string(h.config.audit.path.clone().unwrap()).unwrap();
    let mut revoked: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["event"] == "lease.revoked" && l["by"] == "operator")
        .map(|l| l["role"].as_str().unwrap().to_owned())
        .collect();
    revoked.sort();
    let mut want = mallory_roles.clone();
    want.sort();
    assert_eq!(revoked, want, "{audit}");
    let err = app_query
        .await
        .unwrap()
        .expect_err("the query was ended by the revoke");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.starts_with("lease revoked")),
        "{err:?}"
    );
    let out = psql.await.unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("57P01") && text.contains("lease revoked"),
        "{text}"
    );

    // alice's session goes on, her role intact.
    let one: i32 = alice.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(role_exists(&h, &alice_role).await);
    let (status, body) = api(admin, "GET", "/v1/rolemint/leases", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let leases = body["data"]["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{body}");
    assert_eq!(leases[0]["identity"], "alice");

    // Revoking what is gone is a success, as in Vault.
    let (status, _) = api(
        admin,
        "PUT",
        "/v1/rolemint/leases/revoke",
        Some(json!({"identity": "mallory"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // `"sync": false`: 202 at once, and the revocation still happens.
    let alice_id = leases[0]["id"].as_str().unwrap().to_owned();
    let query = sleep_on(alice);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sleeping_backends(&h).await == 1
        })
        .await
    );
    let (status, _) = api(
        admin,
        "PUT",
        "/v1/sys/leases/revoke",
        Some(json!({"lease_id": alice_id, "sync": false})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let err = query.await.unwrap().expect_err("revoked");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}

const BRIEF: &str = r#"
[roles.brief]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "4s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_list_and_a_renewal_capped_at_max_ttl() {
    let (h, admin) = with_admin(&format!("{BRIEF}\n[mint]\ninstance = \"node-a\"\n")).await;
    let client = h.session("brief", "tara").await;
    let role = session_user(&client).await;
    let lease = h.shared.leases.list().pop().unwrap();
    let id = lease.id.clone();
    let first_expiry = lease.expires_at();

    // Lookup: Vault's fields and rolemint's.
    let (status, body) = api(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = &body["data"];
    assert_eq!(data["id"], id.as_str());
    for key in ["issue_time", "expire_time"] {
        assert!(data[key].as_str().unwrap().ends_with('Z'), "{key}: {body}");
    }
    assert!(data["last_renewal"].is_null());
    assert_eq!(data["renewable"], true);
    assert!(data["ttl"].as_u64().unwrap() <= 4, "{body}");
    assert_eq!(data["identity"], "tara");
    assert_eq!(data["role"], role.as_str());
    assert_eq!(data["template"], "brief");
    assert_eq!(data["database"], "appdb");
    assert_eq!(data["instance"], "node-a");
    assert_eq!(data["kind"], "session");
    assert!(data["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    for key in ["bytes_in", "bytes_out"] {
        assert!(data[key].is_u64(), "{key}: {body}");
    }

    // LIST, with the method and with ?list=true.
    let folder = "/v1/sys/leases/lookup/database/sessions/brief/";
    let (status, body) = api(admin, "LIST", folder, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let random = id.rsplit('/').next().unwrap();
    assert_eq!(body["data"]["keys"], json!([random]));
    let (status, body) = api(admin, "GET", &format!("{folder}?list=true"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["keys"], json!([random]));
    let (status, body) = api(admin, "LIST", "/v1/sys/leases/lookup/database/", None).await;
    assert_eq!(
        (status, &body["data"]["keys"]),
        (StatusCode::OK, &json!(["sessions/"]))
    );

    // Renewal past max_ttl: capped, with Vault's warning.
    let (status, body) = api(
        admin,
        "PUT",
        "/v1/sys/leases/renew",
        Some(json!({"lease_id": id, "increment": "2h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let granted = body["lease_duration"].as_u64().unwrap();
    assert!((3590..3600).contains(&granted), "{body}");
    let warning = body["warnings"][0].as_str().unwrap();
    assert!(warning.contains("exceeded the effective max_ttl"), "{body}");
    let (valid_until, comment) = valid_until_and_comment(&h, &role).await;
    let issued = unix(lease.issued_at);
    assert!(
        (valid_until - (issued + 3600)).abs() <= 1,
        "VALID UNTIL at the cap: {valid_until} vs {}",
        issued + 3600
    );
    let comment_expiry = humantime::parse_rfc3339(comment["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(unix(comment_expiry), valid_until, "{comment}");
    assert_eq!(comment["instance"], "node-a");
    assert_eq!(
        unix(lease.expires_at()),
        valid_until,
        "the registry's deadline moved"
    );
    assert!(lease.last_renewal().is_some());

    // At the cap: refused.
    let run = rolemint(admin, &["leases", "renew", &id, "--increment", "1h"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("past the max TTL, cannot renew"),
        "{}",
        run.stderr
    );
    let run = rolemint(admin, &["leases", "lookup", &id]).await;
    assert!(
        run.ok && run.stdout.contains("identity      tara"),
        "{}{}",
        run.stdout,
        run.stderr
    );

    // The session outlives its first deadline.
    let past_first = || async { SystemTime::now() > first_expiry + Duration::from_secs(1) };
    assert!(wait_until(Duration::from_secs(15), past_first).await);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(lease.end_reason(), None);

    // Unknown leases: lookup 400, renew 400, revoke 204.
    let unknown = "database/sessions/brief/nope";
    let (status, _) = api(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(json!({"lease_id": unknown})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api(
        admin,
        "PUT",
        "/v1/sys/leases/renew",
        Some(json!({"lease_id": unknown})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api(
        admin,
        "PUT",
        &format!("/v1/sys/leases/revoke/{unknown}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Revoke by id: the client is told, the role dropped before the answer.
    let query = sleep_on(client);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sleeping_backends(&h).await == 1
        })
        .await
    );
    let (status, _) = revoke(admin, &id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!role_exists(&h, &role).await);
    let err = query.await.unwrap().expect_err("revoked");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    assert_eq!(h.wait_no_leases().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_revokes_and_renews_the_sessions_of_another() {
    let (h, admin) = with_admin("[mint]\ninstance = \"node-a\"\n").await;
    let b = h.spawn_serve("[mint]\ninstance = \"node-b\"\n", &[]).await;
    let kept_token = h.token("bea");
    let kept = b
        .connect("readonly", kept_token.expose())
        .await
        .expect("B session");
    let kept_role = session_user(&kept).await;
    let doomed_token = h.token("bob");
    let doomed = b
        .connect("readonly", doomed_token.expose())
        .await
        .expect("B session");
    let doomed_role = session_user(&doomed).await;
    assert!(h.shared.leases.is_empty(), "no session is A's");

    // Listing through A shows B's leases, with B named.
    let (status, body) = api(admin, "GET", "/v1/rolemint/leases?template=readonly", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let leases = body["data"]["leases"].as_array().unwrap().clone();
    assert_eq!(leases.len(), 2, "{body}");
    assert!(leases.iter().all(|l| l["instance"] == "node-b"), "{body}");
    let id_of = |role: &str| {
        leases
            .iter()
            .find(|l| l["role"] == role)
            .and_then(|l| l["id"].as_str())
            .unwrap_or_else(|| panic!("{role} listed: {leases:?}"))
            .to_owned()
    };
    let (kept_id, doomed_id) = (id_of(&kept_role), id_of(&doomed_role));
    let (status, body) = api(
        admin,
        "LIST",
        "/v1/sys/leases/lookup/database/sessions/readonly",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["keys"].as_array().unwrap().len(), 2, "{body}");

    // Renew through A: VALID UNTIL and the comment move; B's lease stays B's.
    let (before, _) = valid_until_and_comment(&h, &kept_role).await;
    let (status, body) = api(
        admin,
        "PUT",
        &format!("/v1/sys/leases/renew/{kept_id}"),
        Some(json!({"increment": "2h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lease_duration"], 7200, "{body}");
    let (after, comment) = valid_until_and_comment(&h, &kept_role).await;
    assert!(
        after >= before + 3590,
        "VALID UNTIL moved: {before} -> {after}"
    );
    assert_eq!(
        unix(humantime::parse_rfc3339(comment["expires_at"].as_str().unwrap()).unwrap()),
        after
    );
    assert_eq!(comment["instance"], "node-b");
    assert_eq!(comment["lease_id"], kept_id.as_str());

    // Revoke through A: B's client is terminated, the role dropped.
    let query = sleep_on(doomed);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sleeping_backends(&h).await == 1
        })
        .await
    );
    let (status, _) = api(
        admin,
        "PUT",
        &format!("/v1/sys/leases/revoke/{doomed_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        !role_exists(&h, &doomed_role).await,
        "dropped before the answer"
    );
    let err = query.await.unwrap().expect_err("terminated");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");

    // B's other session is untouched.
    let one: i32 = kept.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let (status, body) = api(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(json!({"lease_id": kept_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["instance"], "node-b");
    assert!(body["data"]["ttl"].as_u64().unwrap() > 7000, "{body}");
    drop(kept);
    assert!(
        h.wait_no_managed_roles(Duration::from_secs(15))
            .await
            .is_empty(),
        "{}",
        b.log()
    );
}

/// A running session's traffic shows in its lease lookup as it flows, not
/// only once the session has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_shows_a_running_sessions_bytes() {
    let (h, admin) = with_admin("").await;
    let client = h.session("readonly", "uma").await;
    let id = h.shared.leases.list().pop().unwrap().id.clone();
    let lookup = || async {
        let (status, body) = api(
            admin,
            "PUT",
            "/v1/sys/leases/lookup",
            Some(json!({"lease_id": id})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let bytes = |key: &str| {
            body["data"][key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key}: {body}"))
        };
        (bytes("bytes_in"), bytes("bytes_out"))
    };
    let (before_in, before_out) = lookup().await;
    let sql = "SELECT repeat('x', 100000) AS payload /* a query of some length */";
    let row = client.query_one(sql, &[]).await.expect("query");
    assert_eq!(row.get::<_, String>(0).len(), 100_000);
    let (after_in, after_out) = lookup().await;
    assert!(
        after_in >= before_in + sql.len() as u64,
        "{before_in} -> {after_in}"
    );
    assert!(
        after_out >= before_out + 100_000,
        "{before_out} -> {after_out}"
    );
    drop(client);
}

/// The lease index's row of `lease_id` (its role), as PostgreSQL has it:
/// `rolemint.leases` in the admin database.
async fn index_row(h: &Harness, lease_id: &str) -> Option<String> {
    h.superuser_on(&h.config.backend.admin_database)
        .await
        .query_opt(
            "SELECT role FROM rolemint.leases WHERE lease_id = $1",
            &[&lease_id],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Waits (up to 15 s) until the index row of `lease_id` names `want`
/// (`None`: no row); whether it did.
async fn index_row_becomes(h: &Harness, lease_id: &str, want: Option<&str>) -> bool {
    wait_until(Duration::from_secs(15), || async {
        index_row(h, lease_id).await.as_deref() == want
    })
    .await
}

/// A session through `b` as `identity` on `template`: the client, its role
/// and its lease id (from the role's comment).
async fn session_on(
    h: &Harness,
    b: &common::ServeProcess,
    template: &str,
    identity: &str,
) -> (tokio_postgres::Client, String, String) {
    let token = h.token(identity);
    let client = b
        .connect(template, token.expose())
        .await
        .expect("B session");
    let role = session_user(&client).await;
    let (_, comment) = valid_until_and_comment(h, &role).await;
    let id = comment["lease_id"].as_str().unwrap().to_owned();
    (client, role, id)
}

/// The lease index (`rolemint.leases`, lease id -> role) has a lease's row
/// while the lease lives and none once it is revoked, expired or reaped;
/// another instance looks up, renews and revokes through it; and a lease
/// whose row is gone is still found (through the catalog) and revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_index_has_a_row_exactly_while_the_lease_lives() {
    let (h, admin) = with_admin(&format!(
        "{BRIEF}\n[mint]\ninstance = \"node-a\"\nreap_interval = \"1s\"\nreap_grace = \"2s\"\n"
    ))
    .await;
    // Neither instance tidies the index (which adds the row of any lease
    // without one) within this test (the first tidy waits a minute): the
    // rows below are B's writer's.
    let b = h
        .spawn_serve(
            &format!("{BRIEF}\n[mint]\ninstance = \"node-b\"\nreap_interval = \"1h\"\n"),
            &[],
        )
        .await;

    // Minted on B: B writes the row.
    let (client, role, id) = session_on(&h, &b, "readonly", "bob").await;
    assert!(
        index_row_becomes(&h, &id, Some(&role)).await,
        "no row for {id}: {:?}\n{}",
        index_row(&h, &id).await,
        b.log()
    );
    // A finds it through the row: with the comment rewritten in jsonb's
    // spacing (`"lease_id": "..."`), the catalog's substring read cannot,
    // but the index's check parses the comment.
    let su = h.superuser().await;
    su.batch_execute(&format!(
        "COMMENT ON ROLE \"{role}\" IS '{}'",
        serde_json::to_string(&valid_until_and_comment(&h, &role).await.1)
            .unwrap()
            .replace("\":", "\": ")
    ))
    .await
    .unwrap();
    let (status, body) = api(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["role"], role.as_str(), "{body}");
    assert_eq!(body["data"]["instance"], "node-b", "{body}");
    let (status, body) = api(
        admin,
        "PUT",
        "/v1/sys/leases/renew",
        Some(json!({"lease_id": id, "increment": "2h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lease_duration"], 7200, "{body}");
    let (status, body) = revoke(admin, &id).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(!role_exists(&h, &role).await, "dropped before the answer");
    assert!(
        index_row_becomes(&h, &id, None).await,
        "the revoked lease's row is left: {:?}",
        index_row(&h, &id).await
    );
    drop(client);

    // A row deleted by hand: A still finds the lease (reading comments)
    // and revokes it.
    let (client, role, id) = session_on(&h, &b, "readonly", "carol").await;
    assert!(
        index_row_becomes(&h, &id, Some(&role)).await,
        "no row for {id}:\n{}",
        b.log()
    );
    h.superuser_on(&h.config.backend.admin_database)
        .await
        .execute("DELETE FROM rolemint.leases WHERE lease_id = $1", &[&id])
        .await
        .unwrap();
    let (status, body) = api(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "found without its row: {body}");
    assert_eq!(body["data"]["role"], role.as_str(), "{body}");
    let (status, body) = revoke(admin, &id).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(!role_exists(&h, &role).await, "dropped before the answer");
    assert_eq!(index_row(&h, &id).await, None);
    drop(client);

    // The tidy pass puts a lost row back and deletes one whose role is gone.
    let (client, role, id) = session_on(&h, &b, "readonly", "frank").await;
    assert!(
        index_row_becomes(&h, &id, Some(&role)).await,
        "no row for {id}:\n{}",
        b.log()
    );
    let admin_db = h.superuser_on(&h.config.backend.admin_database).await;
    admin_db
        .batch_execute(&format!(
            "DELETE FROM rolemint.leases WHERE lease_id = '{id}';
             INSERT INTO rolemint.leases VALUES ('database/sessions/readonly/gone', 'v-gone-1')"
        ))
        .await
        .unwrap();
    let (removed, added) = h.shared.admin_client.tidy_lease_index_now().await.unwrap();
    assert!(
        removed >= 1 && added >= 1,
        "removed {removed}, added {added}"
    );
    assert_eq!(index_row(&h, &id).await.as_deref(), Some(role.as_str()));
    assert_eq!(index_row(&h, "database/sessions/readonly/gone").await, None);
    drop(client);

    // Expired on B (brief: 4 s): B's revoker drops the role and its row.
    let (client, role, id) = session_on(&h, &b, "brief", "dave").await;
    assert!(
        index_row_becomes(&h, &id, Some(&role)).await,
        "no row for {id}:\n{}",
        b.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            !role_exists(&h, &role).await
        })
        .await,
        "the expired role is dropped"
    );
    assert!(
        index_row_becomes(&h, &id, None).await,
        "expired lease's row"
    );
    drop(client);

    // Reaped: B dies with a live session; its role is an orphan, and A's
    // reaper drops it and its row.
    let (_client, role, id) = session_on(&h, &b, "readonly", "erin").await;
    assert!(
        index_row_becomes(&h, &id, Some(&role)).await,
        "no row for {id}:\n{}",
        b.log()
    );
    let mut b = b;
    b.kill().await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            !role_exists(&h, &role).await
        })
        .await,
        "the orphan is reaped"
    );
    assert!(index_row_becomes(&h, &id, None).await, "reaped lease's row");
}

/// Backends waiting on a lock in an insert into the lease index.
async fn inserts_waiting(h: &Harness) -> i64 {
    h.superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO rolemint.leases%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Rows of the lease index whose role is gone, counted in PostgreSQL.
async fn rows_of_gone_roles(h: &Harness) -> i64 {
    h.superuser_on(&h.config.backend.admin_database)
        .await
        .query_one(
            "SELECT count(*) FROM rolemint.leases l \
              WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = l.role)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The tidy pass adds the row of a live lease that has none, reading the
/// catalog in its statement's snapshot and committing later. A lease that
/// ends in between (its role dropped, and its row's delete written before
/// the tidy's insert committed, so deleting nothing) must keep no row.
/// The window is held open by a transaction that has inserted the same
/// lease id and not committed: the tidy pass's insert waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ends_while_the_tidy_pass_adds_its_row_keeps_no_row() {
    // No reaper sweep (and so no tidy pass of the server's own) meanwhile;
    // the tidy pass's statement waits through the revocation below, which
    // a loaded machine may stretch past the default statement timeout.
    let (h, admin) =
        with_admin("[mint]\nreap_interval = \"1h\"\nstatement_timeout = \"60s\"\n").await;
    let admin_db = h.config.backend.admin_database.clone();

    // A live lease whose row is lost: the tidy pass adds it again.
    let client = h.session("readonly", "alice").await;
    let role = session_user(&client).await;
    let (_, comment) = valid_until_and_comment(&h, &role).await;
    let id = comment["lease_id"].as_str().unwrap().to_owned();
    assert!(
        index_row_becomes(&h, &id, Some(&role)).await,
        "no row for {id}"
    );
    let su = h.superuser_on(&admin_db).await;
    su.execute("DELETE FROM rolemint.leases WHERE lease_id = $1", &[&id])
        .await
        .unwrap();
    let blocker = h.superuser_on(&admin_db).await;
    blocker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO rolemint.leases VALUES ('{id}', '{role}')"
        ))
        .await
        .unwrap();

    let tidy = h.shared.admin_client.tidy_lease_index_now();
    let meanwhile = async {
        assert!(
            wait_until(Duration::from_secs(8), || async {
                inserts_waiting(&h).await > 0
            })
            .await,
            "the tidy pass's insert waits on the uncommitted row"
        );
        // The lease ends: revoked, its role dropped, its row forgotten.
        let (status, body) = revoke(admin, &id).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert!(!role_exists(&h, &role).await, "dropped before the answer");
        // The writer writes in order: once a later lease's row is in, the
        // delete queued before it has been written.
        let later = h.session("readonly", "bob").await;
        let later_role = session_user(&later).await;
        let (_, later_comment) = valid_until_and_comment(&h, &later_role).await;
        let later_id = later_comment["lease_id"].as_str().unwrap().to_owned();
        assert!(
            index_row_becomes(&h, &later_id, Some(&later_role)).await,
            "no row for {later_id}"
        );
        blocker.batch_execute("ROLLBACK").await.unwrap();
        later
    };
    let (tidied, _later) = tokio::join!(tidy, meanwhile);
    let (removed, added) = tidied.expect("the tidy pass");
    eprintln!("tidy pass: removed {removed}, added {added}");
    assert_eq!(
        index_row(&h, &id).await,
        None,
        "a row for a lease whose role is gone"
    );
    assert_eq!(rows_of_gone_roles(&h).await, 0);
    drop(client);
}

//! Quotas per principal (issue 18, §3): one workload at its quota leaves
//! another's `database/creds` and sessions working, against a real
//! PostgreSQL; refusals are 429 in Vault's shape on HTTP and 53300 on the
//! proxy door, audited and counted. A template's own caps
//! (`max_leases_per_principal`, `max_leases`) likewise, and the place of a
//! lease is given back however it ends: session close, revocation, TTL,
//! a failed mint.

mod common;

use std::net::SocketAddr;

use common::{sqlstate, Harness, Options};
use reqwest::StatusCode;
use rolemint::control::auth::sha256_hex;
use serde_json::Value;

const OPERATOR_TOKEN: &str = "rmo_quotas-test-operator-token";

async fn with_quotas(quotas: &str) -> (Harness, SocketAddr) {
    with_templates(quotas, "").await
}

/// A harness with `[quotas]` keys and more templates.
async fn with_templates(quotas: &str, templates: &str) -> (Harness, SocketAddr) {
    let h = Harness::with(Options {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n\n\
             [audit]\npath = \"audit.jsonl\"\n\n{templates}",
            sha256_hex(OPERATOR_TOKEN)
        ),
        quotas: quotas.to_owned(),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    (h, admin)
}

async fn creds(admin: SocketAddr, token: &str) -> (StatusCode, Value) {
    creds_of(admin, "readonly", token).await
}

/// `GET database/creds/TEMPLATE` with `token`.
async fn creds_of(admin: SocketAddr, template: &str, token: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://{admin}/v1/database/creds/{template}"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn audit_lines(h: &Harness) -> Vec<Value> {
    let text = std::fs::read_to_string(h.config.audit.path.clone().unwrap()).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn quota_refusals(admin: SocketAddr, quota: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("rolemint_quota_refusals_total{{quota=\"{quota}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workload_at_its_credential_quota_leaves_anothers_creds_working() {
    let (h, admin) = with_quotas("max_credential_leases_per_principal = 3").await;
    assert_eq!(quota_refusals(admin, "credential_leases").await, 0.0);
    let alice = h.token("alice");
    for _ in 0..3 {
        let (s, body) = creds(admin, alice.expose()).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    // The fourth: 429 in Vault's shape, and no role minted for it.
    let roles_before = h.managed_roles().await.len();
    let (s, body) = creds(admin, alice.expose()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"errors": ["quota exceeded: at most 3 live credential leases per identity"]})
    );
    assert_eq!(h.managed_roles().await.len(), roles_before);
    // Bob is another principal: his credentials work, and log in.
    let (s, body) = creds(admin, h.token("bob").expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let user = body["data"]["username"].as_str().unwrap();
    let password = body["data"]["password"].as_str().unwrap();
    let direct = common::connect_owned(format!(
        "host=127.0.0.1 port={} dbname=appdb user={user} password={password} sslmode=disable",
        h.cluster.port()
    ))
    .await
    .expect("bob's credentials log in");
    let me: String = direct
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(me, user);
    // Alice's proxy sessions are another quota: still open to her.
    let session = h.session("readonly", "alice").await;
    session.simple_query("SELECT 1").await.unwrap();
    // Audited and counted.
    let refused: Vec<Value> = audit_lines(&h)
        .into_iter()
        .filter(|l| l["event"] == "quota.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["identity"], "alice");
    assert_eq!(refused[0]["quota"], "credential_leases");
    assert_eq!(refused[0]["limit"], 3);
    assert_eq!(quota_refusals(admin, "credential_leases").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workload_at_its_session_quota_gets_53300_and_another_connects() {
    let (h, admin) = with_quotas("max_sessions_per_principal = 2").await;
    let alice = h.token("alice");
    let a1 = h
        .connect("readonly", "appdb", alice.expose())
        .await
        .unwrap();
    let a2 = h
        .connect("readonly", "appdb", alice.expose())
        .await
        .unwrap();
    let e = h
        .connect("readonly", "appdb", alice.expose())
        .await
        .expect_err("a third session of alice");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned());
    assert_eq!(
        message.as_deref(),
        Some("quota exceeded: at most 2 concurrent sessions per identity")
    );
    // Bob connects; the refused session minted nothing.
    let bob = h.session("readonly", "bob").await;
    bob.simple_query("SELECT 1").await.unwrap();
    assert_eq!(h.managed_roles().await.len(), 3);
    // Counted now: the wait below may be refused again until a1 is gone.
    assert_eq!(quota_refusals(admin, "sessions").await, 1.0);
    // A session that ends gives its place back.
    drop(a1);
    let back = common::wait_until(std::time::Duration::from_secs(10), || async {
        h.connect("readonly", "appdb", alice.expose()).await.is_ok()
    })
    .await;
    assert!(back, "alice's quota was not given back");
    drop(a2);
    assert!(audit_lines(&h)
        .iter()
        .any(|l| l["event"] == "quota.refused" && l["quota"] == "sessions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mint_rate_is_per_principal() {
    let (h, admin) = with_quotas("mints_per_minute_per_principal = 2").await;
    let alice = h.token("alice");
    for _ in 0..2 {
        let (s, body) = creds(admin, alice.expose()).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let (s, body) = creds(admin, alice.expose()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // Sessions count in the same minute: 53300 on the proxy door.
    let e = h
        .connect("readonly", "appdb", alice.expose())
        .await
        .expect_err("a third mint of alice within the minute");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    let (s, body) = creds(admin, h.token("bob").expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(quota_refusals(admin, "mints_per_minute").await, 2.0);
}

/// A request to the Vault door: status and JSON body (Null when empty).
async fn vault(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{admin}/v1/{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A Vault token for `subject`'s JWT, from `auth/jwt/login`; the status
/// and the token.
async fn login(h: &Harness, admin: SocketAddr, subject: &str) -> (StatusCode, Value) {
    let jwt = h.token(subject);
    vault(
        admin,
        "auth/jwt/login",
        None,
        serde_json::json!({ "jwt": jwt.expose() }),
    )
    .await
}

/// Tokens `rolemint.tokens` (in the admin database) holds for `subject`.
async fn stored_tokens(h: &Harness, subject: &str) -> i64 {
    h.superuser_on("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM rolemint.tokens WHERE subject = $1",
            &[&subject],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_at_its_token_quota_gets_429_and_another_still_gets_tokens() {
    let (h, admin) = with_quotas("max_tokens_per_principal = 3").await;
    assert_eq!(quota_refusals(admin, "tokens").await, 0.0);
    let quota_error =
        serde_json::json!({"errors": ["quota exceeded: at most 3 live tokens per identity"]});
    // Alice logs in three times: three live tokens, her quota.
    let mut alice = Vec::new();
    for _ in 0..3 {
        let (s, body) = login(&h, admin, "alice").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        alice.push(body["auth"]["client_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(stored_tokens(&h, "alice").await, 3);
    // The fourth: 429 in Vault's shape, and no row for it.
    let (s, body) = login(&h, admin, "alice").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body, quota_error);
    assert_eq!(stored_tokens(&h, "alice").await, 3);
    // Bob is another principal.
    let (s, body) = login(&h, admin, "bob").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(stored_tokens(&h, "bob").await, 1);
    // Alice revokes one of hers: her place is given back.
    let (s, _) = vault(
        admin,
        "auth/token/revoke-self",
        Some(&alice[0]),
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(stored_tokens(&h, "alice").await, 2);
    let (s, body) = login(&h, admin, "alice").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(stored_tokens(&h, "alice").await, 3);

    // auth/token/create counts too: a child acts as its parent's
    // principal, so a token and its two children fill a quota of 3.
    let (s, body) = vault(
        admin,
        "sys/policy/maker",
        Some(OPERATOR_TOKEN),
        serde_json::json!({"policy": "path \"auth/token/create\" { capabilities = [\"update\"] }"}),
    )
    .await;
    assert!(s.is_success(), "{s} {body}");
    let (s, body) = vault(
        admin,
        "auth/token/create",
        Some(OPERATOR_TOKEN),
        serde_json::json!({"policies": ["maker"], "display_name": "maker"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let maker = body["auth"]["client_token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let (s, body) = vault(
            admin,
            "auth/token/create",
            Some(&maker),
            serde_json::json!({"policies": ["maker"]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let (s, body) = vault(
        admin,
        "auth/token/create",
        Some(&maker),
        serde_json::json!({"policies": ["maker"]}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body, quota_error);
    let makers: i64 = h
        .superuser_on("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM rolemint.tokens WHERE issuer = 'token'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(makers, 3);

    // Audited and counted, as the other quotas.
    let refused: Vec<Value> = audit_lines(&h)
        .into_iter()
        .filter(|l| l["event"] == "quota.refused")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["identity"], "alice");
    assert_eq!(refused[0]["quota"], "tokens");
    assert_eq!(refused[0]["limit"], 3);
    assert_eq!(refused[1]["issuer"], "token");
    assert_eq!(quota_refusals(admin, "tokens").await, 2.0);
}

/// A template like the demo's `readonly` with `more` keys.
fn template(name: &str, more: &str) -> String {
    format!(
        "[roles.{name}]\ndatabases = [\"appdb\"]\nallow_identities = [\"*\"]\n\
         default_ttl = \"1h\"\nmax_ttl = \"24h\"\n{more}\n\
         creation_statements = [\n  \
         \"CREATE ROLE \\\"{{{{name}}}}\\\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'\",\n  \
         \"GRANT app_read TO \\\"{{{{name}}}}\\\"\",\n]\n\n"
    )
}

/// The metrics are the process's, and both template tests refuse on the
/// same two series: they take turns, and each counts its own refusals.
static TEMPLATE_REFUSALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `rolemint_quota_refusals_total` of the two template quotas, exported
/// (at 0) from startup.
async fn template_refusals(admin: SocketAddr) -> (f64, f64) {
    (
        quota_refusals(admin, "template_leases_per_principal").await,
        quota_refusals(admin, "template_leases").await,
    )
}

fn since(before: (f64, f64), now: (f64, f64)) -> (f64, f64) {
    (now.0 - before.0, now.1 - before.1)
}

/// `admin`: two leases per principal, three in all. `brief`: one per
/// principal, living 2 s. `probe`: one per principal, and its mint fails
/// until the role `quota_probe` exists.
fn capped_templates() -> String {
    let probe = template("probe", "max_leases_per_principal = 1")
        .replace("\"GRANT app_read TO", "\"GRANT quota_probe TO");
    template("admin", "max_leases_per_principal = 2\nmax_leases = 3")
        + &template("brief", "max_leases_per_principal = 1")
            .replace("default_ttl = \"1h\"", "default_ttl = \"2s\"")
        + &probe
}

/// Whether `role` is in `pg_roles`.
async fn role_exists(h: &Harness, role: &str) -> bool {
    let n: i64 = h
        .superuser()
        .await
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    n > 0
}

/// Waits (up to `within`) until `role` is gone from `pg_roles`.
async fn gone(h: &Harness, role: &str, within: std::time::Duration) -> bool {
    common::wait_until(within, || async { !role_exists(h, role).await }).await
}

/// The quota.refused audit lines, as (quota, template, identity, limit).
fn refusals(h: &Harness) -> Vec<(String, String, String, u64)> {
    audit_lines(h)
        .into_iter()
        .filter(|l| l["event"] == "quota.refused")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (
                s("quota"),
                s("template"),
                s("identity"),
                l["limit"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn refusal(
    quota: &str,
    template: &str,
    identity: &str,
    limit: u64,
) -> (String, String, String, u64) {
    (quota.into(), template.into(), identity.into(), limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_cap_refuses_a_third_session_with_53300_until_one_ends() {
    let _counting = TEMPLATE_REFUSALS.lock().await;
    let (h, admin) = with_templates("", &capped_templates()).await;
    let before = template_refusals(admin).await;
    let alice = h.token("alice");
    let a1 = h.connect("admin", "appdb", alice.expose()).await.unwrap();
    let a1_role: String = a1
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let _a2 = h.connect("admin", "appdb", alice.expose()).await.unwrap();
    let e = h
        .connect("admin", "appdb", alice.expose())
        .await
        .expect_err("a third admin session of alice");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some("quota exceeded: at most 2 leases of template admin per identity")
    );
    // Another template is not capped by it; bob takes the template's third
    // lease; carol finds the template full.
    let readonly = h.session("readonly", "alice").await;
    readonly.simple_query("SELECT 1").await.unwrap();
    let bob = h.session("admin", "bob").await;
    bob.simple_query("SELECT 1").await.unwrap();
    let e = h
        .connect("admin", "appdb", h.token("carol").expose())
        .await
        .expect_err("a fourth admin session");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some("quota exceeded: at most 3 leases of template admin at once")
    );
    // The refusals minted nothing: alice's two, her readonly, bob's.
    assert_eq!(h.managed_roles().await.len(), 4);
    assert_eq!(
        refusals(&h),
        vec![
            refusal("template_leases_per_principal", "admin", "alice", 2),
            refusal("template_leases", "admin", "carol", 3),
        ]
    );
    assert_eq!(since(before, template_refusals(admin).await), (1.0, 1.0));

    // A session that ends gives its place back: once its role is gone,
    // alice gets in again.
    drop(a1);
    assert!(gone(&h, &a1_role, std::time::Duration::from_secs(10)).await);
    let again = h.connect("admin", "appdb", alice.expose()).await;
    let again = again.expect("alice's place was given back");
    again.simple_query("SELECT 1").await.unwrap();

    // A failed mint gives its place back at once: the second try fails
    // the same way (58000), not on the quota; once the mint can succeed,
    // the cap holds again.
    for _ in 0..2 {
        let e = h
            .connect("probe", "appdb", alice.expose())
            .await
            .expect_err("quota_probe does not exist yet");
        assert_eq!(sqlstate(&e).as_deref(), Some("58000"), "{e}");
    }
    h.superuser()
        .await
        .batch_execute("CREATE ROLE quota_probe NOLOGIN")
        .await
        .unwrap();
    let _probe = h.connect("probe", "appdb", alice.expose()).await.unwrap();
    let e = h
        .connect("probe", "appdb", alice.expose())
        .await
        .expect_err("a second probe session of alice");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
}

/// `PUT sys/leases/revoke` of `lease_id` with the holder's own token.
async fn revoke(admin: SocketAddr, token: &str, lease_id: &str) -> StatusCode {
    reqwest::Client::new()
        .put(format!("http://{admin}/v1/sys/leases/revoke"))
        .header("X-Vault-Token", token)
        .json(&serde_json::json!({ "lease_id": lease_id }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_vault_door_a_template_cap_answers_429_until_a_lease_is_revoked_or_expires() {
    let _counting = TEMPLATE_REFUSALS.lock().await;
    let (h, admin) = with_templates("", &capped_templates()).await;
    let before = template_refusals(admin).await;
    let alice = h.token("alice");
    let mut leases = Vec::new();
    for _ in 0..2 {
        let (s, body) = creds_of(admin, "admin", alice.expose()).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        leases.push(body);
    }
    let roles_before = h.managed_roles().await.len();
    let (s, body) = creds_of(admin, "admin", alice.expose()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"errors": ["quota exceeded: at most 2 leases of template admin per identity"]})
    );
    // Sessions and credential leases of a template count together.
    let e = h
        .connect("admin", "appdb", alice.expose())
        .await
        .expect_err("alice holds two admin leases already");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    assert_eq!(h.managed_roles().await.len(), roles_before);
    // Other templates and other principals, as configured.
    let (s, body) = creds_of(admin, "readonly", alice.expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = creds_of(admin, "admin", h.token("bob").expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = creds_of(admin, "admin", h.token("carol").expose()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"errors": ["quota exceeded: at most 3 leases of template admin at once"]})
    );

    // Revoked: alice revokes one of hers; once its role is gone she gets
    // another.
    let first = &leases[0];
    let lease_id = first["lease_id"].as_str().unwrap();
    let role = first["data"]["username"].as_str().unwrap();
    assert_eq!(
        revoke(admin, alice.expose(), lease_id).await,
        StatusCode::NO_CONTENT
    );
    assert!(gone(&h, role, std::time::Duration::from_secs(10)).await);
    let back = common::wait_until(std::time::Duration::from_secs(5), || async {
        creds_of(admin, "admin", alice.expose()).await.0 == StatusCode::OK
    })
    .await;
    assert!(back, "a revoked lease's place was not given back");

    // Expired: a lease of `brief` lives 2 s; once its role is gone, the
    // place is free again.
    let (s, body) = creds_of(admin, "brief", alice.expose()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let role = body["data"]["username"].as_str().unwrap().to_owned();
    let (s, _) = creds_of(admin, "brief", alice.expose()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(gone(&h, &role, std::time::Duration::from_secs(30)).await);
    let back = common::wait_until(std::time::Duration::from_secs(5), || async {
        creds_of(admin, "brief", alice.expose()).await.0 == StatusCode::OK
    })
    .await;
    assert!(back, "an expired lease's place was not given back");

    // A failed mint holds nothing: 500 twice, never 429.
    for _ in 0..2 {
        let (s, body) = creds_of(admin, "probe", alice.expose()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    }

    assert_eq!(
        refusals(&h),
        vec![
            refusal("template_leases_per_principal", "admin", "alice", 2),
            refusal("template_leases_per_principal", "admin", "alice", 2),
            refusal("template_leases", "admin", "carol", 3),
            refusal("template_leases_per_principal", "brief", "alice", 1),
        ]
    );
    assert_eq!(since(before, template_refusals(admin).await), (3.0, 1.0));
}

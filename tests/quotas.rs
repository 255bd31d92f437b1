//! Quotas per principal (issue 18, §3): one workload at its quota leaves
//! another's `database/creds` and sessions working, against a real
//! PostgreSQL; refusals are 429 in Vault's shape on HTTP and 53300 on the
//! proxy door, audited and counted.

mod common;

use std::net::SocketAddr;

use common::{sqlstate, Harness, Options};
use reqwest::StatusCode;
use rolemint::control::auth::sha256_hex;
use serde_json::Value;

const OPERATOR_TOKEN: &str = "rmo_quotas-test-operator-token";

async fn with_quotas(quotas: &str) -> (Harness, SocketAddr) {
    let h = Harness::with(Options {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n\n\
             [audit]\npath = \"audit.jsonl\"\n",
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
    let resp = reqwest::Client::new()
        .get(format!("http://{admin}/v1/database/creds/readonly"))
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
    // A session that ends gives its place back.
    drop(a1);
    let back = common::wait_until(std::time::Duration::from_secs(10), || async {
        h.connect("readonly", "appdb", alice.expose()).await.is_ok()
    })
    .await;
    assert!(back, "alice's quota was not given back");
    drop(a2);
    assert_eq!(quota_refusals(admin, "sessions").await, 1.0);
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

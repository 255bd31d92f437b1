//! The HTTP requests Terraform's Vault provider sends, replayed against
//! rolemint and a real PostgreSQL (the provider itself is not installable
//! here). Each request is the one the provider's source makes, through
//! Vault's Go API client (`X-Vault-Token`, `X-Vault-Request: true`, a JSON
//! body): method, path and body shape; each answer is checked for what the
//! provider reads from it.
//!
//! - Provider configure (`internal/provider/meta.go`): `GET
//!   auth/token/lookup-self`, then `POST auth/token/create` of a child
//!   token (`display_name`, `ttl` and `explicit_max_ttl` of
//!   `max_lease_ttl_seconds`, `renewable: false`) used for everything
//!   after.
//! - `vault_policy` (`vault/resource_policy.go`, `api/sys_policy.go`):
//!   create and update `PUT sys/policies/acl/NAME {"policy"}`, read `GET`
//!   (the provider keeps `data.policy`, and a 404 means gone), delete
//!   `DELETE`.
//! - `vault_database_secret_backend_role`: below, at its test.

mod common;

use std::net::SocketAddr;

use common::{Harness, Options};
use reqwest::StatusCode;
use rolemint::control::auth::sha256_hex;
use serde_json::{json, Value};

const OPERATOR: &str = "rmo_terraform-replay-operator";

/// rolemint's admin listener, and one HTTP client for the run that keeps
/// its connections, as the provider's does.
struct Api {
    admin: SocketAddr,
    http: reqwest::Client,
}

/// One request as Vault's Go client sends it: status and JSON body (Null
/// when empty).
async fn vault(
    api: &Api,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = api
        .http
        .request(
            method.parse().unwrap(),
            format!("http://{}/v1/{path}", api.admin),
        )
        .header("X-Vault-Token", token)
        .header("X-Vault-Request", "true");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, json)
}

async fn harness() -> (Harness, Api) {
    let h = Harness::with(Options {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n",
            sha256_hex(OPERATOR)
        ),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    let http = reqwest::Client::new();
    (h, Api { admin, http })
}

/// The provider's configure step: the token it is given looks itself up,
/// then a short-lived child token is made for the run.
async fn provider_token(api: &Api) -> String {
    let (s, body) = vault(api, "GET", "auth/token/lookup-self", OPERATOR, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["data"].is_object(), "{body}");
    let (s, body) = vault(
        api,
        "POST",
        "auth/token/create",
        OPERATOR,
        Some(json!({
            "display_name": "terraform",
            "ttl": "1200s",
            "explicit_max_ttl": "1200s",
            "renewable": false,
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let auth = &body["auth"];
    assert!(
        auth["policies"].is_array(),
        "the provider logs the child's policies: {body}"
    );
    auth["client_token"]
        .as_str()
        .expect("a child token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_policy_create_read_update_delete_as_terraform_sends_them() {
    let (_h, api) = harness().await;
    let token = provider_token(&api).await;
    let path = "sys/policies/acl/apps";
    let v1 = "# apps may read credentials\npath \"database/creds/readonly\" {\n  capabilities = [\"read\"]\n}\n";
    let v2 = "path \"database/creds/*\" {\n  capabilities = [\"read\"]\n}\n";

    // Create: PutPolicy, then Read (policyWrite ends with policyRead).
    let (s, body) = vault(&api, "PUT", path, &token, Some(json!({"policy": v1}))).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body) = vault(&api, "GET", path, &token, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Byte for byte: Terraform diffs its state against this text, and any
    // change would show as a drift on every plan.
    assert_eq!(body["data"]["policy"], v1, "{body}");
    assert_eq!(body["data"]["name"], "apps");

    // Refresh (plan): the same read.
    let (s, again) = vault(&api, "GET", path, &token, None).await;
    assert_eq!((s, &again["data"]["policy"]), (StatusCode::OK, &json!(v1)));

    // Update: the same PUT with the new text.
    let (s, body) = vault(&api, "PUT", path, &token, Some(json!({"policy": v2}))).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body) = vault(&api, "GET", path, &token, None).await;
    assert_eq!((s, &body["data"]["policy"]), (StatusCode::OK, &json!(v2)));

    // A policy Vault would refuse: the provider shows the error.
    let (s, body) = vault(
        &api,
        "PUT",
        path,
        &token,
        Some(json!({"policy": "path \"x\" { capabilities = [\"raed\"] }"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let error = body["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains("invalid capability"), "{body}");

    // Delete, then the refresh of a destroyed resource: 404, no error.
    let (s, body) = vault(&api, "DELETE", path, &token, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, _) = vault(&api, "GET", path, &token, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Deleting again (a retried destroy) succeeds, as in Vault.
    let (s, _) = vault(&api, "DELETE", path, &token, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // `terraform import vault_policy.x apps` of a missing policy: 404.
    let (s, _) = vault(&api, "GET", "sys/policies/acl/missing", &token, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// `vault_database_secret_backend_role` (`vault/resource_database_secret_backend_role.go`):
/// create and update `PUT <backend>/roles/NAME` through `Logical().Write`
/// with `db_name`, `creation_statements` and every field that changed
/// (on create that includes `key_bits` and `signature_bits`, whose schema
/// defaults count as changes), read `GET` (a 404 means gone), delete
/// `DELETE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_secret_backend_role_create_read_update_delete_as_terraform_sends_them() {
    let (h, api) = harness().await;
    let token = provider_token(&api).await;
    let path = "database/roles/tfreadonly";
    // Statements without a trailing ';': rolemint splits statements on ';'
    // and reads them back without it, where Vault echoes a list as sent,
    // so a configuration that ends them with ';' would show a drift on
    // every plan (a known difference, in the README).
    let creation = json!([
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
        "GRANT app_read TO \"{{name}}\"",
    ]);
    let revocation = json!(["DROP ROLE IF EXISTS \"{{name}}\""]);

    // Create, then the read that ends databaseSecretBackendRoleWrite.
    let (s, body) = vault(
        &api,
        "PUT",
        path,
        &token,
        Some(json!({
            "db_name": "appdb",
            "creation_statements": creation,
            "default_ttl": 3600,
            "max_ttl": 86400,
            "revocation_statements": revocation,
            "key_bits": 2048,
            "signature_bits": 256,
        })),
    )
    .await;
    assert!(
        s == StatusCode::NO_CONTENT || s == StatusCode::OK,
        "{s}: {body}"
    );
    let (s, body) = vault(&api, "GET", path, &token, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let data = &body["data"];
    // What the provider sets in its state: any difference is a drift.
    assert_eq!(data["db_name"], "appdb", "{body}");
    assert_eq!(data["creation_statements"], creation, "{body}");
    assert_eq!(data["revocation_statements"], revocation, "{body}");
    assert_eq!(
        (&data["default_ttl"], &data["max_ttl"]),
        (&json!(3600), &json!(86400))
    );

    // The role works: a token whose policy grants its creds gets some.
    let (s, _) = vault(
        &api,
        "PUT",
        "sys/policies/acl/tf",
        &token,
        Some(json!({"policy": "path \"database/creds/tfreadonly\" { capabilities = [\"read\"] }"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = vault(
        &api,
        "POST",
        "auth/token/create",
        OPERATOR,
        Some(json!({"policies": ["tf"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let app = body["auth"]["client_token"].as_str().unwrap().to_owned();
    let (s, creds) = vault(&api, "GET", "database/creds/tfreadonly", &app, None).await;
    assert_eq!(s, StatusCode::OK, "{creds}");
    let role = creds["data"]["username"].as_str().unwrap().to_owned();
    let found: i64 = h
        .superuser()
        .await
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1, "the credential role is in pg_roles");

    // Update: what changed, with db_name and creation_statements.
    let (s, body) = vault(
        &api,
        "PUT",
        path,
        &token,
        Some(json!({"db_name": "appdb", "creation_statements": creation, "default_ttl": 1800})),
    )
    .await;
    assert!(
        s == StatusCode::NO_CONTENT || s == StatusCode::OK,
        "{s}: {body}"
    );
    let (s, body) = vault(&api, "GET", path, &token, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["data"]["default_ttl"], &body["data"]["max_ttl"]),
        (&json!(1800), &json!(86400))
    );

    // Delete, then the refresh of a destroyed resource: 404.
    let (s, body) = vault(&api, "DELETE", path, &token, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, _) = vault(&api, "GET", path, &token, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

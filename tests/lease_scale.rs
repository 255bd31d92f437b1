//! The lease API over many pages of leases: 25,000 credential leases, then
//! `LIST` must name every one and `revoke-prefix` must drop every matching
//! role (checked in `pg_roles`), leaving the leases of another template
//! alone.
//!
//! The catalog is read a page at a time (`CATALOG_PAGE` leases, keyset by
//! role name). Before it was, one read returned at most 10,000 leases: a
//! revoke-prefix of 20,000 answered 204 and left 10,000 roles able to log
//! in, and LIST stopped at 10,000 keys without saying so.
//!
//! Most leases are minted with the very SQL of a credential mint
//! (`AdminClient::render_mint`, the template plus `rolemint_direct`), many to a
//! round trip, as the admin: through the door they would take minutes of
//! CI on two shared cores. To this instance those are leases of the
//! catalog only (as another instance's are); a thousand more go through
//! the Vault door and live in its registry, so both kinds are listed and
//! revoked.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Harness, Options};
use reqwest::{Method, StatusCode};
use rolemint::auth::identity::Identity;
use rolemint::cli::dev::cluster::ClusterOptions;
use rolemint::control::auth::sha256_hex;
use rolemint::lease::registry::{new_lease_id, LeaseKind};
use rolemint::pg::{MintRequest, DIRECT_MARKER_ROLE};
use serde_json::Value;

const OPERATOR_TOKEN: &str = "rmo_lease-scale-operator-token";

/// Leases under the prefix that is revoked: 25 catalog pages.
const LEASES: usize = 25_000;
/// Of them, minted through the Vault door (the rest by their mint SQL).
const THROUGH_DOOR: usize = 1_000;
/// Mints per round trip of the SQL path.
const PER_BATCH: usize = 250;
/// Leases of another template, which must outlive the revoke.
const OTHERS: usize = 20;
/// Identities the leases are spread over.
const IDENTITIES: usize = 8;
/// Mint requests in flight at once.
const IN_FLIGHT: usize = 16;

fn admin_toml() -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
operator_token_sha256 = "{hash}"
request_timeout = "5m"

[vault]
max_credential_leases = {max}
"#,
        hash = sha256_hex(OPERATOR_TOKEN),
        max = LEASES + OTHERS + 100,
    )
}

/// `GET /v1/database/creds/<template>` with `token`; the lease id.
async fn mint(client: &reqwest::Client, admin: SocketAddr, template: &str, token: &str) -> String {
    let resp = client
        .get(format!("http://{admin}/v1/database/creds/{template}"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .expect("creds request");
    let status = resp.status();
    let body: Value = resp.json().await.expect("creds answer is JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    body["lease_id"].as_str().expect("a lease id").to_owned()
}

/// Mints `count` credential leases of `template`, `IN_FLIGHT` at a time,
/// spread over `IDENTITIES` principals; their lease ids.
async fn mint_many(h: &Harness, admin: SocketAddr, template: &str, count: usize) -> Vec<String> {
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..IDENTITIES)
            .map(|i| h.token(&format!("app-{i}")).expose().to_owned())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT.min(count) {
        let (tokens, next, client, template) = (
            Arc::clone(&tokens),
            Arc::clone(&next),
            client.clone(),
            template.to_owned(),
        );
        workers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return ids;
                }
                let token = &tokens[i % tokens.len()];
                ids.push(mint(&client, admin, &template, token).await);
            }
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(done) = workers.join_next().await {
        ids.extend(done.expect("mint worker"));
    }
    ids
}

/// Mints `count` credential leases of `template` with the mint SQL of the
/// Vault door, `PER_BATCH` to a round trip, two connections at once, as
/// the admin role; their lease ids.
async fn mint_by_sql(h: &Harness, template: &str, count: usize) -> Vec<String> {
    let mut creds = h.config.template(template).expect("template").clone();
    // As `lease::creds` does: a credential role may log in directly.
    creds.creation_statements.push(format!(
        "GRANT \"{DIRECT_MARKER_ROLE}\" TO \"{{{{name}}}}\""
    ));
    let mut batches = Vec::new();
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(PER_BATCH) {
        let mut sql = String::new();
        for i in chunk {
            let identity = Identity {
                subject: format!("app-{}", i % IDENTITIES),
                groups: Vec::new(),
                expires_at: std::time::SystemTime::now() + Duration::from_secs(3600),
                issuer: "local".into(),
            };
            let lease_id = new_lease_id(LeaseKind::Creds, template);
            let prepared = h
                .shared
                .admin_client
                .render_mint(&MintRequest {
                    identity: &identity,
                    template_name: template,
                    template: &creds,
                    database: "appdb",
                    ttl: Duration::from_secs(3600),
                    lease_id: &lease_id,
                })
                .expect("render a mint");
            sql.push_str(prepared.sql());
            sql.push_str(";\n");
            ids.push(lease_id);
        }
        batches.push(sql);
    }
    let conn = format!(
        "host=127.0.0.1 port={} dbname=appdb user={} password={} sslmode=disable",
        h.cluster.port(),
        h.demo.admin_user,
        h.demo.admin_password.expose()
    );
    let batches = Arc::new(std::sync::Mutex::new(batches));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (batches, conn) = (Arc::clone(&batches), conn.clone());
        workers.spawn(async move {
            let admin = common::connect_owned(conn).await.expect("admin connects");
            loop {
                let Some(sql) = batches.lock().unwrap().pop() else {
                    return;
                };
                admin.batch_execute(&sql).await.expect("mint batch");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("mint worker");
    }
    ids
}

/// An operator request; status and JSON body (Null when empty).
async fn operator(admin: SocketAddr, method: &str, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{admin}{path}"),
        )
        .bearer_auth(OPERATOR_TOKEN)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("admin request");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

/// Roles that are members of `rolemint_managed` now, by the lease id in
/// their comment starting with `prefix`, counted in PostgreSQL itself.
async fn roles_under(h: &Harness, prefix: &str) -> i64 {
    h.superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_roles r \
               JOIN pg_auth_members m ON m.member = r.oid \
               JOIN pg_roles g ON g.oid = m.roleid \
              WHERE g.rolname = 'rolemint_managed' AND NOT m.admin_option \
                AND starts_with(shobj_description(r.oid, 'pg_authid')::jsonb ->> 'lease_id', $1)",
            &[&prefix],
        )
        .await
        .expect("count roles")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_revoke_prefix_reach_every_one_of_25000_leases() {
    let h = Harness::with(Options {
        extra_toml: admin_toml(),
        quotas: format!(
            "max_credential_leases_per_principal = {}\n",
            LEASES + OTHERS + 100
        ),
        // No statement log: 25,000 mints would write 100,000 lines of it.
        cluster: ClusterOptions::default(),
        capture_log: false,
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");

    let start = Instant::now();
    let mut ids = mint_many(&h, admin, "readonly", THROUGH_DOOR).await;
    let others = mint_many(&h, admin, "readwrite", OTHERS).await;
    eprintln!(
        "minted {} leases through the door in {:.1} s",
        ids.len() + others.len(),
        start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    ids.extend(mint_by_sql(&h, "readonly", LEASES - THROUGH_DOOR).await);
    eprintln!(
        "minted {} leases by their SQL in {:.1} s",
        LEASES - THROUGH_DOOR,
        start.elapsed().as_secs_f64()
    );
    let prefix = "database/creds/readonly/";
    assert_eq!(roles_under(&h, prefix).await, LEASES as i64);

    // LIST names every lease under the prefix, each once.
    let start = Instant::now();
    let (status, body) = operator(admin, "LIST", &format!("/v1/sys/leases/lookup/{prefix}")).await;
    eprintln!("LIST took {:.2} s", start.elapsed().as_secs_f64());
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: BTreeSet<&str> = body["data"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("a key"))
        .collect();
    let minted: BTreeSet<&str> = ids
        .iter()
        .map(|id| id.strip_prefix(prefix).expect("under the prefix"))
        .collect();
    assert_eq!(minted.len(), LEASES, "lease ids are unique");
    assert_eq!(listed.len(), LEASES, "LIST returned every key");
    assert_eq!(listed, minted);

    // revoke-prefix drops every matching role, and only those.
    let start = Instant::now();
    let (status, body) = operator(
        admin,
        "PUT",
        "/v1/sys/leases/revoke-prefix/database/creds/readonly",
    )
    .await;
    eprintln!("revoke-prefix took {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        roles_under(&h, prefix).await,
        0,
        "every revoked role is gone"
    );
    assert_eq!(
        roles_under(&h, "database/creds/readwrite/").await,
        OTHERS as i64,
        "the other template's leases are untouched"
    );
    let (status, _) = operator(admin, "LIST", &format!("/v1/sys/leases/lookup/{prefix}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no lease is left to list");

    // The lease index keeps no row of a revoked lease. Its writer writes
    // in order: once a lease minted now has its row, every delete the
    // revocations queued before it is written.
    let later = mint_many(&h, admin, "readwrite", 1).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            index_rows(&h, &later[0]).await == 1
        })
        .await,
        "no row for {}",
        later[0]
    );
    assert_eq!(
        index_rows(&h, prefix).await,
        0,
        "rows of revoked leases in rolemint.leases"
    );
    assert_eq!(
        index_rows(&h, "database/creds/readwrite/").await,
        OTHERS as i64 + 1,
        "the other template's leases keep theirs"
    );
}

/// Rows of the lease index (`rolemint.leases`) whose lease id starts with
/// `prefix`, counted in PostgreSQL.
async fn index_rows(h: &Harness, prefix: &str) -> i64 {
    h.superuser_on(&h.config.backend.admin_database)
        .await
        .query_one(
            "SELECT count(*) FROM rolemint.leases WHERE starts_with(lease_id, $1)",
            &[&prefix],
        )
        .await
        .expect("count index rows")
        .get(0)
}

//! Access requests end to end, on two instances of rolemint over one
//! PostgreSQL: a template that needs approval refuses alice (28000, naming
//! `rolemint request`); alice asks with `rolemint request create`; her own
//! approval is refused; bob (an approver) approves; alice connects through
//! both instances; the grant is revoked and both of her open sessions end
//! with 57P01, her roles are gone, and she is refused again. Every step is
//! in the audit log and reaches the webhook, signed.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{output_text, sqlstate, wait_until, Harness, ServeProcess};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";

fn extra(admin_port: u16, audit: &Path, webhook: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[audit]
path = "{audit}"

[access]
pending_ttl = "10m"
webhook_url = "{webhook}"
webhook_secret = "{WEBHOOK_SECRET}"

[roles.dba]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "2h"
approval = {{ approver_groups = ["dba"], max_duration = "1h" }}
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_owner TO \"{{{{name}}}}\"",
]
"#,
        audit = audit.display()
    )
}

/// What the webhook receiver got: (timestamp, signature, body).
type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

async fn webhook_receiver() -> (String, Calls) {
    use axum::http::HeaderMap;
    let calls: Calls = Arc::default();
    let seen = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let seen = Arc::clone(&seen);
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                seen.lock().unwrap().push((
                    h("x-rolemint-timestamp"),
                    h("x-rolemint-signature"),
                    body,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

async fn request_cli(admin: &str, token: &str, args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
        .arg("request")
        .args(args)
        .args(["--proxy", admin, "--token", token])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("rolemint request finishes")
        .expect("runs")
}

async fn role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .expect("pg_roles")
        .is_some()
}

/// Seconds until the session's own role stops being valid (`VALID UNTIL`).
async fn valid_for(session: &tokio_postgres::Client) -> f64 {
    session
        .query_one(
            "SELECT extract(epoch FROM rolvaliduntil - now())::float8 FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .await
        .expect("rolvaliduntil")
        .get(0)
}

/// alice's session on `serve`: the client and its role.
async fn session(serve: &ServeProcess, token: &str) -> (tokio_postgres::Client, String) {
    let client = serve.connect("dba", token).await.expect("alice connects");
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    (client, role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_person_approves_and_a_revoked_grant_ends_sessions_on_every_instance() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (hook, calls) = webhook_receiver().await;
    let (port_a, port_b) = (free_port(), free_port());
    let audit = dir.path().join("a-audit.jsonl");
    let a = h.spawn_serve(&extra(port_a, &audit, &hook), &[]).await;
    let b = h
        .spawn_serve(
            &extra(port_b, &dir.path().join("b-audit.jsonl"), &hook),
            &[],
        )
        .await;
    let admin_a = format!("http://127.0.0.1:{port_a}");
    let admin_b = format!("http://127.0.0.1:{port_b}");
    let ttl = Duration::from_secs(600);
    let issue = |sub: &str, groups: &[&str]| {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        rolemint::auth::identity::issue(&h.config.auth, sub, &groups, ttl)
            .expect("token")
            .expose()
            .to_owned()
    };
    let alice = issue("alice", &[]);
    let bob = issue("bob", &["dba"]);
    let carol = issue("carol", &[]);
    // Alice is also an approver: even so, never of her own request.
    let alice_dba = issue("alice", &["dba"]);

    // Without a grant: 28000, and the message says what to do.
    let err = a.connect("dba", &alice).await.expect_err("needs approval");
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");
    assert!(
        format!("{err:?}").contains("rolemint request create dba"),
        "{err:?}"
    );

    // alice asks.
    let out = request_cli(
        &admin_a,
        &alice,
        &[
            "create", "dba", "--reason", "INC-123", "--for", "30m", "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let created: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["state"], "pending");

    // Her own approval is refused, even holding the approvers' group;
    // carol, no approver, is not even told the request exists.
    for (token, want) in [(&alice_dba, "own request"), (&carol, "404")] {
        let out = request_cli(&admin_a, token, &["approve", &id]).await;
        let text = output_text(&out);
        assert!(!out.status.success() && text.contains(want), "{text}");
    }
    assert!(a.connect("dba", &alice).await.is_err(), "still pending");

    // bob approves, on the other instance.
    let out = request_cli(&admin_b, &bob, &["approve", &id]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("approved"),
        "{}",
        output_text(&out)
    );

    // alice connects through A at once (its store saw the write within a
    // second) and through B.
    let granted = wait_until(Duration::from_secs(5), || async {
        a.connect("dba", &alice).await.is_ok()
    })
    .await;
    assert!(granted, "A did not see the grant");
    let (on_a, role_a) = session(&a, &alice).await;
    let (on_b, role_b) = session(&b, &alice).await;
    assert!(role_exists(&h, &role_a).await && role_exists(&h, &role_b).await);
    // The lease is capped at the grant (30m), not the template's 1h.
    let left = valid_for(&on_a).await;
    assert!(left <= 30.0 * 60.0 + 5.0, "VALID UNTIL is {left} s away");

    // Nor can a renewal carry it past the grant: alice's own token asks A's
    // lease API for an hour more.
    let http = reqwest::Client::new();
    let leases: Value = http
        .get(format!("{admin_a}/v1/rolemint/leases"))
        .header("X-Vault-Token", &alice)
        .send()
        .await
        .expect("lease list")
        .json()
        .await
        .expect("JSON");
    let lease_id = leases["data"]["leases"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["role"] == role_a.as_str()))
        .and_then(|l| l["id"].as_str())
        .unwrap_or_else(|| panic!("alice's lease on A: {leases}"))
        .to_owned();
    let renewed = http
        .put(format!("{admin_a}/v1/sys/leases/renew"))
        .header("X-Vault-Token", &alice)
        .json(&serde_json::json!({ "lease_id": lease_id, "increment": 3600 }))
        .send()
        .await
        .expect("renew");
    let answer = format!(
        "{} {}",
        renewed.status(),
        renewed.text().await.unwrap_or_default()
    );
    assert!(answer.contains("access grant"), "{answer}");
    let left = valid_for(&on_a).await;
    assert!(
        left <= 30.0 * 60.0 + 5.0,
        "renewed past the grant: {left} s away"
    );

    // Both sessions are busy when the grant is revoked (on A).
    let busy_a = tokio::spawn(async move { on_a.simple_query("SELECT pg_sleep(60)").await });
    let busy_b = tokio::spawn(async move { on_b.simple_query("SELECT pg_sleep(60)").await });
    let out = request_cli(&admin_a, &alice, &["revoke", &id, "--reason", "done"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    for (busy, which) in [(busy_a, "A"), (busy_b, "B")] {
        let ended = tokio::time::timeout(Duration::from_secs(10), busy)
            .await
            .unwrap_or_else(|_| panic!("the session on {which} outlived the grant"))
            .expect("task");
        let err = ended.expect_err("the query was ended");
        assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{which}: {err:?}");
        // A's own session is told why (B's gets PostgreSQL's terminate).
        if which == "A" {
            assert!(
                format!("{err:?}").contains("access grant revoked"),
                "{err:?}"
            );
        }
    }
    for role in [&role_a, &role_b] {
        let gone = wait_until(Duration::from_secs(10), || async {
            !role_exists(&h, role).await
        })
        .await;
        assert!(gone, "{role} outlived the grant");
    }
    let err = b.connect("dba", &alice).await.expect_err("revoked");
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:?}");

    // The audit log of A has each step; the webhook got them, signed.
    let steps: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["event"] == "access.request")
        .map(|l| l["step"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(steps, ["created", "revoked"], "A's audit: {steps:?}");
    // Her lease was revoked with the grant, not by an operator.
    let revoked_by = || -> Vec<String> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["event"] == "lease.revoked" && l["role"] == role_a.as_str())
            .map(|l| l["by"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    wait_until(Duration::from_secs(10), || async {
        !revoked_by().is_empty()
    })
    .await;
    assert_eq!(revoked_by(), ["grant"], "A's lease.revoked of {role_a}");
    let delivered = wait_until(Duration::from_secs(10), || async {
        calls.lock().unwrap().len() >= 3
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert!(delivered, "webhook calls: {calls:?}");
    let mut steps = Vec::new();
    for (timestamp, signature, body) in &calls {
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
        let want = rolemint::control::webhook::sign(&key, timestamp, body);
        assert_eq!(
            signature,
            &format!("sha256={want}"),
            "a forged call? {body}"
        );
        let v: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(v["request"]["id"], id.as_str());
        steps.push(v["step"].as_str().unwrap_or("").to_owned());
    }
    steps.sort();
    assert_eq!(steps, ["approved", "created", "revoked"]);
    drop((a, b));
}

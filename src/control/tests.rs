//! Every route of the admin API, over HTTP on loopback, against an
//! in-memory directory: status codes, content types and bodies exactly.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::health::Probe;
use super::leases::LeaseView;
use super::memory::MemoryDirectory;
use super::*;
use crate::lease::end::EndReason;
use crate::lease::registry::LeaseKind;
use crate::observe::audit::{Audit, Target};

const TOKEN: &str = "operator-test-token";

/// Fails for the database named "down".
struct FakeProbe;

impl Probe for FakeProbe {
    fn ping<'a>(&'a self, database: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match database {
                "down" => Err("connection refused".into()),
                _ => Ok(()),
            }
        })
    }
    fn managed_roles(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async { Ok(7) })
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
    directory: Arc<MemoryDirectory>,
    shutdown: CancellationToken,
    stop: CancellationToken,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) fn lease(id: &str, identity: &str, issued_ago: Duration, ttl: Duration) -> LeaseView {
    let now = SystemTime::now();
    let template = id.split('/').nth(2).unwrap_or("readonly").to_owned();
    LeaseView {
        id: id.into(),
        issue_time: now - issued_ago,
        expire_time: now + ttl,
        last_renewal: None,
        renewable: true,
        ttl: ttl.as_secs(),
        identity: identity.into(),
        issuer: "local".into(),
        role: format!("v-{identity}-{template}-x-1"),
        template,
        database: "appdb".into(),
        client_addr: Some("127.0.0.1:50000".into()),
        bytes_in: 10,
        bytes_out: 20,
        instance: "test".into(),
        kind: LeaseKind::Session,
    }
}

async fn start(databases: &[&str]) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let directory = Arc::new(MemoryDirectory::default());
    let hour = Duration::from_secs(3600);
    for (id, who) in [
        ("database/sessions/readonly/aaaa", "alice"),
        ("database/sessions/readonly/bbbb", "alice"),
        ("database/sessions/readwrite/cccc", "bob"),
    ] {
        directory.insert(lease(id, who, Duration::ZERO, hour), hour, 2 * hour);
    }
    let shutdown = CancellationToken::new();
    let state = AdminState {
        operator: OperatorToken::from_hex(&auth::sha256_hex(TOKEN)),
        directory: directory.clone(),
        probe: Arc::new(FakeProbe),
        databases: databases.iter().map(|d| d.to_string()).collect(),
        shutdown: shutdown.clone(),
        audit: Audit::open(Target::File(audit_path.clone())).unwrap(),
        request_timeout: Duration::from_secs(10),
        ready_timeout: Duration::from_secs(5),
        max_body_bytes: 4096,
        vault: None,
        people: None,
        failures: Arc::new(crate::auth::identity::FailureLimiter::new(
            &Default::default(),
        )),
        probes: Default::default(),
        policies: Arc::new(crate::auth::acl::BuiltinOnly),
        policy_cache: Default::default(),
        jwt_mounts: vec!["jwt".into(), "kubernetes".into()],
        database_mount: "database".into(),
        webhook: None,
    };
    let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), None, 16)
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, state, stop.clone()));
    Api {
        base,
        http: reqwest::Client::new(),
        directory,
        shutdown,
        stop,
        audit_path,
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        let mut req = self.http.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, ctype, json)
    }

    async fn op(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        self.call(method, path, Some(TOKEN), body).await
    }

    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

const JSON: &str = "application/json";

#[tokio::test]
async fn an_error_answered_before_the_body_was_read_closes_the_connection_saying_so() {
    let api = start(&["appdb"]).await;
    // Refused (no token, no such route here) before any handler reads the body:
    // the connection cannot carry another request, and the answer says so,
    // so a pooling client does not send its next request into a close.
    let refused = api
        .http
        .post(format!("{}/v1/sys/policy/mine", api.base))
        .json(&serde_json::json!({ "policy": "path \"x\" {}" }))
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    assert_eq!(
        refused
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // A refusal without a body keeps the connection.
    let plain = api
        .http
        .get(format!("{}/v1/sys/policy/mine", api.base))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("connection").is_none());
    // Answers that read their body keep the connection too.
    let ok = api
        .http
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    let api = start(&["appdb", "postgres"]).await;
    let (s, ct, body) = api.call("GET", "/healthz", None, None).await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, JSON));
    assert_eq!(body["status"], "ok");
    let (s, _, body) = api.call("GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, ct, body) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = body.as_str().unwrap();
    assert!(text.contains("rolemint_build_info"), "{text}");
    assert!(text.contains("rolemint_managed_roles 7"), "{text}");
    // Probes are not audited.
    assert!(api.audit_lines().is_empty());
}

#[tokio::test]
async fn readiness_names_the_failing_database_and_fails_at_once_on_shutdown() {
    let api = start(&["appdb", "down"]).await;
    let (s, ct, body) = api.call("GET", "/readyz", None, None).await;
    assert_eq!((s, ct.as_str()), (StatusCode::SERVICE_UNAVAILABLE, JSON));
    assert_eq!(
        body,
        json!({"errors": ["database \"down\": admin connection failed"]})
    );

    let api = start(&["appdb"]).await;
    api.shutdown.cancel();
    let (s, _, body) = api.call("GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{body}"
    );
    // The listener itself still serves during the drain.
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_paths_methods_and_tokens_answer_errors_json() {
    let api = start(&["appdb"]).await;
    let (s, ct, body) = api.op("GET", "/v1/nothing/here", None).await;
    assert_eq!(
        (s, ct.as_str(), body),
        (
            StatusCode::NOT_FOUND,
            JSON,
            json!({"errors": ["unknown path"]})
        )
    );
    let (s, ct, body) = api.op("GET", "/v1/sys/leases/renew", None).await;
    assert_eq!(
        (s, ct.as_str(), body),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            JSON,
            json!({"errors": ["unsupported operation"]})
        )
    );
    let (s, ct, _) = api
        .op("DELETE", "/v1/sys/leases/lookup/database/", None)
        .await;
    assert_eq!((s, ct.as_str()), (StatusCode::METHOD_NOT_ALLOWED, JSON));

    for token in [None, Some("wrong")] {
        let (s, ct, body) = api
            .call("LIST", "/v1/sys/leases/lookup/database/", token, None)
            .await;
        assert_eq!(
            (s, ct.as_str(), body),
            (
                StatusCode::FORBIDDEN,
                JSON,
                json!({"errors": ["permission denied"]})
            )
        );
    }
    // Bearer works as well as X-Vault-Token.
    let resp = api
        .http
        .get(format!("{}/v1/rolemint/leases", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A body past max_body_bytes, and one that is not JSON.
    let big = json!({"lease_id": "x".repeat(8192)});
    let (s, ct, body) = api.op("PUT", "/v1/sys/leases/lookup", Some(big)).await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, JSON),
        "{body}"
    );
    let resp = api
        .http
        .put(format!("{}/v1/sys/leases/lookup", api.base))
        .header("X-Vault-Token", TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Every refused request is audited with who asked.
    let lines = api.audit_lines();
    let denied = lines
        .iter()
        .find(|l| l["status"] == 403 && l["caller"] == "invalid-token");
    assert!(denied.is_some(), "{lines:?}");
    assert!(lines.iter().all(|l| l["event"] == "admin.request"));
    assert!(!std::fs::read_to_string(&api.audit_path)
        .unwrap()
        .contains(TOKEN));
}

#[tokio::test]
async fn list_answers_the_next_path_segment_with_list_or_get() {
    let api = start(&["appdb"]).await;
    let (s, ct, body) = api
        .op("LIST", "/v1/sys/leases/lookup/database/sessions/", None)
        .await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, JSON));
    assert_eq!(body["data"]["keys"], json!(["readonly/", "readwrite/"]));
    for key in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(body.get(key).is_some(), "envelope lacks {key}: {body}");
    }
    let (s, _, body) = api
        .op(
            "GET",
            "/v1/sys/leases/lookup/database/sessions/readonly?list=true",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["keys"], json!(["aaaa", "bbbb"]));
    let (s, _, body) = api.op("LIST", "/v1/sys/leases/lookup/", None).await;
    assert_eq!(
        (s, &body["data"]["keys"]),
        (StatusCode::OK, &json!(["database/"]))
    );
    let (s, ct, body) = api
        .op("LIST", "/v1/sys/leases/lookup/database/creds/", None)
        .await;
    assert_eq!(
        (s, ct.as_str(), body),
        (StatusCode::NOT_FOUND, JSON, json!({"errors": []}))
    );
    // GET without list=true on a prefix is not a lookup.
    assert_eq!(
        api.op("GET", "/v1/sys/leases/lookup/database/", None)
            .await
            .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn lookup_shows_vault_fields_and_rolemints_own() {
    let api = start(&["appdb"]).await;
    let id = "database/sessions/readonly/aaaa";
    for method in ["PUT", "POST"] {
        let (s, ct, body) = api
            .op(
                method,
                "/v1/sys/leases/lookup",
                Some(json!({"lease_id": id})),
            )
            .await;
        assert_eq!((s, ct.as_str()), (StatusCode::OK, JSON));
        let data = &body["data"];
        assert_eq!(data["id"], id);
        assert_eq!(data["identity"], "alice");
        assert_eq!(data["template"], "readonly");
        assert_eq!(data["renewable"], true);
        assert_eq!(data["last_renewal"], Value::Null);
        assert_eq!(data["kind"], "session");
        assert!(data["ttl"].as_u64().unwrap() > 3500);
        assert!(data["expire_time"].as_str().unwrap().ends_with('Z'));
        for key in [
            "issue_time",
            "role",
            "database",
            "client_addr",
            "bytes_in",
            "bytes_out",
            "instance",
        ] {
            assert!(data.get(key).is_some(), "lookup lacks {key}: {data}");
        }
    }
    let (s, ct, body) = api
        .op(
            "PUT",
            "/v1/sys/leases/lookup",
            Some(json!({"lease_id": "database/sessions/readonly/none"})),
        )
        .await;
    assert_eq!(
        (s, ct.as_str(), body),
        (
            StatusCode::BAD_REQUEST,
            JSON,
            json!({"errors": ["lease not found"]})
        )
    );
    let (s, _, body) = api
        .op("PUT", "/v1/sys/leases/lookup", Some(json!({})))
        .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["missing lease ID"]})
        )
    );
}

#[tokio::test]
async fn renew_extends_caps_at_max_ttl_and_refuses_at_the_cap() {
    let api = start(&["appdb"]).await;
    let id = "database/sessions/readonly/aaaa";
    let (s, ct, body) = api
        .op(
            "PUT",
            "/v1/sys/leases/renew",
            Some(json!({"lease_id": id, "increment": 1800})),
        )
        .await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, JSON), "{body}");
    assert_eq!(body["lease_id"], id);
    assert_eq!(body["renewable"], true);
    assert_eq!(body["lease_duration"], 1800);
    assert_eq!(body["warnings"], Value::Null);

    // max_ttl is 2h from issue: asking for 5h is capped, with Vault's warning.
    let (s, _, body) = api
        .op(
            "PUT",
            "/v1/sys/leases/renew",
            Some(json!({"lease_id": id, "increment": "5h"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let granted = body["lease_duration"].as_u64().unwrap();
    assert!((7190..=7200).contains(&granted), "{body}");
    let warning = body["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("exceeded the effective max_ttl"),
        "{warning}"
    );

    let (s, ct, body) = api
        .op(
            "PUT",
            "/v1/sys/leases/renew",
            Some(json!({"lease_id": id, "increment": null})),
        )
        .await;
    assert_eq!(
        (s, ct.as_str(), body),
        (
            StatusCode::BAD_REQUEST,
            JSON,
            json!({"errors": ["past the max TTL, cannot renew"]})
        )
    );

    // By path, with the template's default TTL (1h).
    let other = "database/sessions/readonly/bbbb";
    let (s, _, body) = api
        .op("POST", &format!("/v1/sys/leases/renew/{other}"), None)
        .await;
    assert_eq!(
        (s, body["lease_duration"].as_u64()),
        (StatusCode::OK, Some(3600)),
        "{body}"
    );
    let (s, _, body) = api
        .op(
            "PUT",
            "/v1/sys/leases/renew",
            Some(json!({"lease_id": "nope"})),
        )
        .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["lease not found"]})
        )
    );
    let (s, _, _) = api
        .op(
            "PUT",
            "/v1/sys/leases/renew",
            Some(json!({"lease_id": id, "increment": "soon"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let renewed: Vec<Value> = api
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "lease.renewed")
        .collect();
    assert_eq!(renewed.len(), 3, "{renewed:?}");
    assert_eq!(renewed[1]["capped"], true);
    assert_eq!(renewed[0]["caller"], "operator");
}

#[tokio::test]
async fn revoke_by_body_path_prefix_and_selector() {
    let api = start(&["appdb"]).await;
    let (s, _, body) = api
        .op(
            "PUT",
            "/v1/sys/leases/revoke",
            Some(json!({"lease_id": "database/sessions/readonly/aaaa"})),
        )
        .await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(
        api.directory.revoked_by("database/sessions/readonly/aaaa"),
        Some(EndReason::RevokedByOperator)
    );
    // Unknown (and already revoked) leases: 204, as in Vault.
    let (s, _, _) = api
        .op(
            "PUT",
            "/v1/sys/leases/revoke/database/sessions/readonly/aaaa",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = api
        .op(
            "PUT",
            "/v1/sys/leases/revoke/database/sessions/readonly/bbbb",
            Some(json!({"sync": false})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(api.directory.live(), ["database/sessions/readwrite/cccc"]);
    let (s, _, _) = api
        .op(
            "PUT",
            "/v1/sys/leases/revoke-prefix/database/sessions/readwrite",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(api.directory.live().is_empty());
    let (s, _, body) = api
        .op("PUT", "/v1/sys/leases/revoke", Some(json!({})))
        .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"errors": ["missing lease ID"]})
        )
    );

    // Revoke-prefix is for operators only.
    let (s, _, _) = api
        .call("PUT", "/v1/sys/leases/revoke-prefix/database/", None, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The mutating requests were audited (durably, before the answer).
    let lines = api.audit_lines();
    let puts = lines
        .iter()
        .filter(|l| l["method"] == "PUT" && l["caller"] == "operator")
        .count();
    assert!(puts >= 5, "{lines:?}");
}

#[tokio::test]
async fn rolemint_routes_list_with_filters_and_revoke_by_identity() {
    let api = start(&["appdb"]).await;
    let (s, ct, body) = api
        .op("GET", "/v1/rolemint/leases?identity=alice", None)
        .await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, JSON));
    let leases = body["data"]["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().all(|l| l["identity"] == "alice"));
    let (_, _, body) = api
        .op(
            "GET",
            "/v1/rolemint/leases?template=readwrite&database=appdb",
            None,
        )
        .await;
    assert_eq!(
        body["data"]["leases"][0]["id"],
        "database/sessions/readwrite/cccc"
    );
    let (s, _, _) = api.op("GET", "/v1/rolemint/leases?colour=red", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, ct, body) = api
        .op(
            "PUT",
            "/v1/rolemint/leases/revoke",
            Some(json!({"identity": "alice"})),
        )
        .await;
    assert_eq!(
        (s, ct.as_str(), body),
        (StatusCode::OK, JSON, json!({"revoked": 2}))
    );
    assert_eq!(api.directory.live(), ["database/sessions/readwrite/cccc"]);
    let (s, _, body) = api
        .op("PUT", "/v1/rolemint/leases/revoke", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _, _) = api
        .call(
            "PUT",
            "/v1/rolemint/leases/revoke",
            Some("wrong"),
            Some(json!({"identity": "bob"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(api.directory.live().len(), 1);
}

#[tokio::test]
async fn lists_read_every_page_and_the_full_listing_pages_explicitly() {
    use super::leases::MAX_PAGE;
    let api = start(&["appdb"]).await;
    let hour = Duration::from_secs(3600);
    // Two and a half pages of one template's leases.
    let many = MAX_PAGE * 5 / 2;
    for i in 0..many {
        let id = format!("database/creds/bulk/{i:06}");
        api.directory
            .insert(lease(&id, "carol", Duration::ZERO, hour), hour, 2 * hour);
    }

    // LIST answers every key at once, as Vault's clients expect.
    let (s, _, body) = api
        .op("LIST", "/v1/sys/leases/lookup/database/creds/bulk/", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let keys = body["data"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), many);
    assert_eq!(keys[many - 1], format!("{:06}", many - 1));

    // rolemint's own listing pages, `next` leading to the page after.
    let mut seen = Vec::new();
    let mut path = "/v1/rolemint/leases?identity=carol&limit=700".to_owned();
    loop {
        let (s, _, body) = api.op("GET", &path, None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let leases = body["data"]["leases"].as_array().unwrap();
        assert!(leases.len() <= 700);
        seen.extend(leases.iter().map(|l| l["id"].as_str().unwrap().to_owned()));
        match body["data"]["next"].as_str() {
            Some(next) => {
                path = format!("/v1/rolemint/leases?identity=carol&limit=700&after={next}")
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), many, "every lease, each once");
    seen.dedup();
    assert_eq!(seen.len(), many);
    for bad in ["limit=0", &format!("limit={}", MAX_PAGE + 1)] {
        let (s, _, _) = api
            .op("GET", &format!("/v1/rolemint/leases?{bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }

    // A revoke reaches every match, not one page.
    let (s, _, body) = api
        .op(
            "PUT",
            "/v1/rolemint/leases/revoke",
            Some(json!({"identity": "carol"})),
        )
        .await;
    assert_eq!((s, body), (StatusCode::OK, json!({"revoked": many})));
    assert_eq!(api.directory.live().len(), 3);
}

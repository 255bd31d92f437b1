//! The security review's points against a real PostgreSQL: every number a
//! request carries is checked, and no request to the admin listener, however
//! shaped, panics a handler, answers an undocumented 5xx, or changes a lease
//! its caller may not act on.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Harness, Options};
use reqwest::{Method, StatusCode};
use rolemint::control::auth::sha256_hex;
use serde_json::{json, Value};

const OPERATOR_TOKEN: &str = "rmo_security-test-operator-token";

/// `[admin]` on (with the Vault routes), the operators' token, and `extra`.
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

/// One request: status and body text, or the transport error (a handler
/// that panics drops the connection without an answer).
async fn send(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<(StatusCode, String), String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{admin}{path}"))
        .timeout(Duration::from_secs(30));
    for (name, value) in headers {
        req = req.header(name, value);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_vec());
    }
    let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    Ok((status, resp.text().await.unwrap_or_default()))
}

fn token_header(token: &str) -> Vec<(String, String)> {
    vec![("X-Vault-Token".into(), token.into())]
}

/// The session leases of `identity`, as the operator sees them:
/// `(lease id, expire_time)`.
async fn leases_of(admin: SocketAddr, identity: &str) -> Vec<(String, String)> {
    let (status, text) = send(
        admin,
        "GET",
        &format!("/v1/rolemint/leases?identity={identity}"),
        &token_header(OPERATOR_TOKEN),
        None,
    )
    .await
    .expect("the operator lists leases");
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut out: Vec<(String, String)> = body["data"]["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "session")
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["expire_time"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn valid_until(pg: &tokio_postgres::Client, role_like: &str) -> Vec<(String, Option<i64>)> {
    pg.query(
        "SELECT rolname::text, extract(epoch from rolvaliduntil)::bigint FROM pg_roles \
             WHERE rolname LIKE $1 ORDER BY 1",
        &[&role_like],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// §5: `increment` = 2^64-1 seconds (as a number, as a string, as a
/// duration) is a 400 for the workload and the operator alike, the handler
/// survives, and the role's VALID UNTIL is what it was. Before the check,
/// `now + increment` overflowed the clock and the handler task panicked:
/// the client saw its connection dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_with_an_increment_past_the_clock_is_a_400() {
    let (h, admin) = with_admin("").await;
    let alice = h.token("alice");
    let _session = h.session("readonly", "alice").await;
    let leases = leases_of(admin, "alice").await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let (id, expire_time) = leases[0].clone();
    let pg = h.superuser().await;
    let before = valid_until(&pg, "v-alice-%").await;
    let huge = [
        json!({"lease_id": id, "increment": u64::MAX}),
        json!({"lease_id": id, "increment": u64::MAX.to_string()}),
        json!({"lease_id": id, "increment": "500000000000y"}),
    ];
    for token in [alice.expose(), OPERATOR_TOKEN] {
        for body in &huge {
            let body = serde_json::to_vec(body).unwrap();
            let answer = send(
                admin,
                "PUT",
                "/v1/sys/leases/renew",
                &token_header(token),
                Some(&body),
            )
            .await;
            let (status, text) = answer.expect("an answer, not a dropped connection");
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert!(text.contains("increment must be at most"), "{text}");
        }
    }
    assert_eq!(valid_until(&pg, "v-alice-%").await, before);
    assert_eq!(leases_of(admin, "alice").await, vec![(id, expire_time)]);
}

/// What a generated request is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Garbage,
    Alice,
    Operator,
}

#[derive(Debug, Clone)]
struct Request {
    who: Who,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

/// Leases the property watches: bob's must never change for anyone but
/// the operator, alice's never for anyone but alice and the operator.
struct Watched {
    alice: String,
    bob: String,
}

/// Markers in generated requests for the watched leases' ids: a revoked
/// watched lease is replaced by a new session with a new id, and the
/// requests keep naming the live one.
const ALICE: &str = "@ALICE@";
const BOB: &str = "@BOB@";

impl Watched {
    async fn now(admin: SocketAddr) -> Watched {
        Watched {
            alice: leases_of(admin, "alice").await[0].0.clone(),
            bob: leases_of(admin, "bob").await[0].0.clone(),
        }
    }

    fn fill(&self, text: &str) -> String {
        text.replace(ALICE, &self.alice).replace(BOB, &self.bob)
    }
}

mod gen {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, a few levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(".{0,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A lease id: one of the watched ones (a marker the sender replaces
    /// by the current id, see [`Watched::fill`]), or any text.
    fn lease_ref() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just(ALICE.to_owned()),
            3 => Just(BOB.to_owned()),
            1 => Just("database/sessions/".to_owned()),
            1 => Just("database/sessions/readonly/".to_owned()),
            1 => Just("database/".to_owned()),
            1 => Just(String::new()),
            2 => "[a-zA-Z0-9/._~-]{0,60}",
        ]
    }

    /// A body: a JSON object with the keys the routes read (values from
    /// the watched leases, huge and negative numbers, wrong types), any
    /// JSON, or any bytes.
    fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
        let value = prop_oneof![
            lease_ref().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(Value::from(u64::MAX.to_string())),
            "[0-9]{1,30}[smhdy]?".prop_map(Value::from),
            Just(Value::from("alice")),
            Just(Value::from("bob")),
            any_json(),
        ];
        let keys = prop::sample::select(vec![
            "lease_id",
            "increment",
            "sync",
            "identity",
            "template",
            "database",
            "role",
            "jwt",
            "list",
        ]);
        let object = prop::collection::btree_map(keys, value, 0..4).prop_map(|m| {
            let m: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            Some(serde_json::to_vec(&Value::Object(m)).unwrap())
        });
        // Shaped like a lookup, renew or revoke, so the numbers reach the
        // handlers behind the lease-id check.
        let lease_call = (
            lease_ref(),
            prop_oneof![
                any::<u64>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "[0-9]{1,25}[smhdy]?".prop_map(Value::from),
                Just(Value::Null),
            ],
            any::<bool>(),
        )
            .prop_map(|(id, increment, sync)| {
                let v = json!({"lease_id": id, "increment": increment, "sync": sync});
                Some(serde_json::to_vec(&v).unwrap())
            });
        prop_oneof![
            6 => lease_call,
            3 => object,
            1 => any_json().prop_map(|v| Some(serde_json::to_vec(&v).unwrap())),
            1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Some),
            1 => Just(None),
        ]
    }

    /// A route with the method it answers, weighted towards the lease
    /// routes (where the numbers and the ids are read).
    fn route() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop_oneof![
            6 => Just(("PUT", "/v1/sys/leases/renew")),
            4 => Just(("PUT", "/v1/sys/leases/renew/{}")),
            3 => Just(("PUT", "/v1/sys/leases/lookup")),
            1 => Just(("LIST", "/v1/sys/leases/lookup/")),
            1 => Just(("LIST", "/v1/sys/leases/lookup/{}")),
            3 => Just(("PUT", "/v1/sys/leases/revoke")),
            2 => Just(("PUT", "/v1/sys/leases/revoke/{}")),
            2 => Just(("PUT", "/v1/sys/leases/revoke-prefix/{}")),
            1 => Just(("GET", "/v1/rolemint/leases?identity={}")),
            1 => Just(("GET", "/v1/rolemint/leases?template={}&list=true")),
            2 => Just(("PUT", "/v1/rolemint/leases/revoke")),
            1 => Just(("POST", "/v1/auth/jwt/login")),
            1 => Just(("GET", "/v1/auth/token/lookup-self")),
            1 => Just(("GET", "/v1/database/creds/{}")),
            1 => Just(("LIST", "/v1/database/roles")),
            1 => Just(("GET", "/v1/database/roles/{}")),
            1 => Just(("POST", "/v1/database/roles/{}")),
            1 => Just(("DELETE", "/v1/database/roles/{}")),
            1 => Just(("POST", "/v1/database/config/{}")),
            1 => Just(("GET", "/v1/database/config/{}")),
            1 => Just(("POST", "/v1/database/reset/{}")),
            1 => Just(("POST", "/v1/sys/mounts/{}")),
            1 => Just(("GET", "/v1/sys/mounts")),
            1 => Just(("POST", "/v1/database/rotate-root/{}")),
            1 => Just(("GET", "/v1/sys/health")),
            1 => Just(("GET", "/healthz")),
            1 => Just(("GET", "/readyz")),
            1 => Just(("GET", "/metrics")),
            1 => Just(("GET", "/{}")),
        ]
    }

    fn path() -> impl Strategy<Value = (&'static str, String)> {
        let segment = prop_oneof![
            lease_ref(),
            Just("readonly".to_owned()),
            Just("appdb".to_owned()),
            Just("alice".to_owned()),
            Just("bob".to_owned()),
            "[a-zA-Z0-9%._~-]{0,20}",
        ];
        (route(), segment).prop_map(|((method, route), seg)| (method, route.replace("{}", &seg)))
    }

    pub fn request(alice: String) -> impl Strategy<Value = Request> {
        let who = prop_oneof![
            1 => Just(Who::Nobody),
            1 => Just(Who::Garbage),
            3 => Just(Who::Alice),
            2 => Just(Who::Operator),
        ];
        // Mostly the route's own method; any method the rest of the time.
        let method = prop_oneof![
            4 => Just(None),
            1 => prop::sample::select(vec![
                "GET", "PUT", "POST", "DELETE", "LIST", "HEAD", "PATCH", "OPTIONS",
            ])
            .prop_map(Some),
        ];
        let extra = prop::collection::vec(
            (
                prop::sample::select(vec![
                    "content-type",
                    "authorization",
                    "x-forwarded-for",
                    "accept",
                    "x-vault-request",
                    "x-vault-namespace",
                ]),
                "[ -~]{0,60}",
            ),
            0..3,
        );
        (who, method, path(), extra, body()).prop_filter_map(
            "the operator does not rotate the harness's admin password",
            move |(who, method, (own_method, path), extra, body)| {
                let method = method.unwrap_or(own_method);
                if who == Who::Operator && path.contains("rotate-root") {
                    return None;
                }
                let mut headers: Vec<(String, String)> = extra
                    .into_iter()
                    // The generated authorization header stands in for the
                    // caller's token only when there is none.
                    .filter(|(name, _)| who == Who::Nobody || *name != "authorization")
                    .map(|(n, v)| (n.to_owned(), v))
                    .collect();
                match who {
                    Who::Nobody => {}
                    Who::Garbage => headers.push(("X-Vault-Token".into(), "rmc_garbage".into())),
                    Who::Alice => headers.push(("X-Vault-Token".into(), alice.clone())),
                    Who::Operator => {
                        headers.push(("Authorization".into(), format!("Bearer {OPERATOR_TOKEN}")))
                    }
                }
                Some(Request {
                    who,
                    method: method.to_owned(),
                    path,
                    headers,
                    body,
                })
            },
        )
    }
}

/// §5: arbitrary methods, paths, headers and JSON bodies at every admin
/// route, as nobody, a wrong token, the workload alice and the operator.
/// Every request is answered (no handler panics), with no 5xx but the
/// documented 503, and no lease the caller may not act on changes: bob's
/// session lease keeps its expiry (and its role, its VALID UNTIL) unless
/// the operator acted; alice's unless alice or the operator did.
#[test]
fn arbitrary_admin_requests_change_only_what_the_caller_may_act_on() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Wrong tokens are most of the cases: the failure limiter (which would
    // answer 429 to the whole address after ten) is opened wide here.
    let (h, admin) = rt.block_on(with_admin(
        "[auth.failure_rate]\nburst = 1000000\nper_minute = 1000000\n",
    ));
    let pg = rt.block_on(h.superuser());
    let alice_token = h.token("alice").expose().to_owned();
    // Sessions held open for the whole run; one is opened again whenever
    // the operator (or alice, her own) revoked a watched identity's last.
    let sessions = std::cell::RefCell::new(Vec::new());
    let refill = || {
        rt.block_on(async {
            for who in ["alice", "bob"] {
                if leases_of(admin, who).await.is_empty() {
                    let session = h.session("readonly", who).await;
                    sessions.borrow_mut().push(session);
                }
            }
        })
    };
    refill();

    let mut runner = TestRunner::new(Config {
        cases: 120,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = gen::request(alice_token.clone());
    let result = runner.run(&strategy, |req| {
        rt.block_on(async {
            let watched = Watched::now(admin).await;
            let path = watched.fill(&req.path);
            let body = req
                .body
                .as_deref()
                .map(|b| watched.fill(&String::from_utf8_lossy(b)).into_bytes());
            let bob_before = leases_of(admin, "bob").await;
            let alice_before = leases_of(admin, "alice").await;
            let bob_roles = valid_until(&pg, "v-bob-%").await;
            let answer = send(admin, &req.method, &path, &req.headers, body.as_deref()).await;
            let (status, text) = answer.map_err(|e| {
                TestCaseError::fail(format!("no answer (a panic drops the connection): {e}"))
            })?;
            if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                return Err(TestCaseError::fail(format!(
                    "undocumented {status}: {text}"
                )));
            }
            if req.who != Who::Operator {
                if leases_of(admin, "bob").await != bob_before {
                    return Err(TestCaseError::fail("bob's lease changed"));
                }
                if valid_until(&pg, "v-bob-%").await != bob_roles {
                    return Err(TestCaseError::fail("bob's role changed"));
                }
            }
            if req.who != Who::Operator
                && req.who != Who::Alice
                && leases_of(admin, "alice").await != alice_before
            {
                return Err(TestCaseError::fail("alice's lease changed"));
            }
            // A renewed watched lease is revoked and replaced: renewing
            // one already at its max TTL stops before the increment is
            // looked at, so the next cases need a fresh one.
            for (who, before) in [("alice", alice_before), ("bob", bob_before)] {
                for (id, expiry) in leases_of(admin, who).await {
                    if before.iter().any(|(i, e)| *i == id && *e != expiry) {
                        let body = serde_json::to_vec(&json!({ "lease_id": id })).unwrap();
                        let headers = token_header(OPERATOR_TOKEN);
                        let revoked =
                            send(admin, "PUT", "/v1/sys/leases/revoke", &headers, Some(&body));
                        assert_eq!(revoked.await.map(|a| a.0), Ok(StatusCode::NO_CONTENT));
                    }
                }
            }
            Ok(())
        })?;
        refill();
        Ok(())
    });
    drop(sessions);
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        // The proxy still works after all that.
        let token = h.token("carol");
        assert!(h.connect("readonly", "appdb", token.expose()).await.is_ok());
    });
    drop(h);
}

/// A second issuer, `other`, beside the harness's `local`; a template only
/// local's alice may use.
const OTHER_ISSUER: &str = r#"
[[auth.issuers]]
name = "other"
issuer = "https://other.example"
algorithms = ["HS256"]
hs256_secret = "other-secret-0123456789abcdef0123456789"

[roles.alices]
databases = ["appdb"]
allow_identities = ["local:alice"]
default_ttl = "1h"
max_ttl = "2h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#;

/// A token of the `other` issuer for `subject`.
fn other_token(h: &Harness, subject: &str) -> String {
    let mut auth = h.config.auth.clone();
    auth.issuer = Some("https://other.example".into());
    auth.audience = None;
    auth.hs256_secret = Some(rolemint::secret::Secret::new(
        "other-secret-0123456789abcdef0123456789",
    ));
    rolemint::auth::identity::issue(&auth, subject, &[], Duration::from_secs(600))
        .unwrap()
        .expose()
        .to_owned()
}

/// §1: a principal is (issuer, identity). The `other` issuer's alice
/// cannot open local alice's template (28000) and cannot see, renew or
/// revoke local alice's lease over the lease API; the lease comment in
/// PostgreSQL records the issuer. Before, policy matched the raw `sub`
/// and `may_act_on` compared the subject only: other's alice was alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_issuers_alice_is_not_alice() {
    let (h, admin) = with_admin(OTHER_ISSUER).await;
    let local_alice = h.token("alice");
    let _session = h
        .connect("alices", "appdb", local_alice.expose())
        .await
        .expect("local alice opens her template");
    let other_alice = other_token(&h, "alice");
    let Err(refused) = h.connect("alices", "appdb", &other_alice).await else {
        panic!("other's alice opened local alice's template");
    };
    assert_eq!(common::sqlstate(&refused).as_deref(), Some("28000"));
    // Other's alice may use a template open to everyone: the token is good.
    let _hers = h
        .connect("readonly", "appdb", &other_alice)
        .await
        .expect("other's alice opens a template open to all");

    let leases = leases_of(admin, "alice").await;
    assert_eq!(leases.len(), 2, "{leases:?}");
    let (status, text) = send(
        admin,
        "GET",
        "/v1/rolemint/leases?identity=alice&issuer=local",
        &token_header(OPERATOR_TOKEN),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let local = &body["data"]["leases"].as_array().unwrap()[0];
    assert_eq!(
        (&local["issuer"], &local["template"]),
        (&json!("local"), &json!("alices"))
    );
    let id = local["id"].as_str().unwrap().to_owned();
    let role = local["role"].as_str().unwrap().to_owned();
    let comment: String = h
        .superuser()
        .await
        .query_one(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    let comment: Value = serde_json::from_str(&comment).unwrap();
    assert_eq!(
        (&comment["issuer"], &comment["identity"]),
        (&json!("local"), &json!("alice"))
    );

    // Other's alice, with her own token, on local alice's lease.
    let as_other = token_header(&other_alice);
    let lease_body = serde_json::to_vec(&json!({ "lease_id": id })).unwrap();
    for path in ["/v1/sys/leases/lookup", "/v1/sys/leases/renew"] {
        let (status, text) = send(admin, "PUT", path, &as_other, Some(&lease_body))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
    }
    let (status, _) = send(
        admin,
        "PUT",
        "/v1/sys/leases/revoke",
        &as_other,
        Some(&lease_body),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, text) = send(admin, "GET", "/v1/rolemint/leases", &as_other, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&text).unwrap();
    let seen: Vec<&Value> = body["data"]["leases"].as_array().unwrap().iter().collect();
    assert!(seen.iter().all(|l| l["issuer"] == "other"), "{text}");
    assert_eq!(seen.len(), 1, "{text}");
    // Local alice's lease and role are untouched.
    assert_eq!(leases_of(admin, "alice").await, leases);
    let pg = h.superuser().await;
    assert_eq!(valid_until(&pg, &role).await.len(), 1);
}

/// §1: a lease minted before leases recorded their issuer (a comment
/// without `issuer`, here another instance's) is no workload's, not even
/// an alice's; the operator still sees it and revokes it, and its role is
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_from_before_issuers_is_the_operators() {
    let (h, admin) = with_admin("").await;
    let pg = h.superuser().await;
    let id = "database/sessions/readonly/legacy0000000000000000000";
    let comment = json!({
        "lease_id": id,
        "identity": "alice",
        "template": "readonly",
        "database": "appdb",
        "expires_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600)).to_string(),
        "instance": "old-instance",
        "issued_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    pg.batch_execute(&format!(
        "CREATE ROLE \"v-alice-legacy\" LOGIN VALID UNTIL '2099-01-01'; \
         GRANT rolemint_managed TO \"v-alice-legacy\"; \
         COMMENT ON ROLE \"v-alice-legacy\" IS '{comment}'"
    ))
    .await
    .unwrap();
    let alice = h.token("alice");
    let body = serde_json::to_vec(&json!({ "lease_id": id })).unwrap();
    let (status, _) = send(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        &token_header(alice.expose()),
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, text) = send(
        admin,
        "PUT",
        "/v1/sys/leases/lookup",
        &token_header(OPERATOR_TOKEN),
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["data"]["issuer"], "");
    let (status, text) = send(
        admin,
        "PUT",
        "/v1/sys/leases/revoke",
        &token_header(OPERATOR_TOKEN),
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert!(valid_until(&pg, "v-alice-legacy").await.is_empty());
}

/// §2: a workload reads a template's names and TTLs, never its SQL or its
/// owner role; the operator reads all of it. Before, any workload token
/// got `creation_statements` (which grants, which owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_see_template_names_and_ttls_only() {
    let (h, admin) = with_admin("").await;
    let alice = h.token("alice");
    let get = |token: String| async move {
        let (status, text) = send(
            admin,
            "GET",
            "/v1/database/roles/readwrite",
            &token_header(&token),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["data"].clone()
    };
    let seen = get(alice.expose().to_owned()).await;
    assert_eq!(
        (&seen["db_name"], &seen["default_ttl"]),
        (&json!("appdb"), &json!(3600))
    );
    for hidden in ["creation_statements", "revocation_statements", "owner"] {
        assert!(
            seen.get(hidden).is_none(),
            "a workload sees {hidden}: {seen}"
        );
    }
    let seen = get(OPERATOR_TOKEN.to_owned()).await;
    assert!(
        seen["creation_statements"][0]
            .as_str()
            .unwrap()
            .contains("CREATE ROLE"),
        "{seen}"
    );
    assert!(seen.get("owner").is_some(), "{seen}");
}

/// §7: every counter whose labels are known is exported from startup at
/// 0, so `increase(...)` alerts see the series before its first event.
/// Before, `rolemint_roles_reaped_total`, the audit error counters and
/// each failure result appeared only once one happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exported_from_startup() {
    let (_h, admin) = with_admin("").await;
    let (status, text) = send(admin, "GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    for series in [
        "rolemint_roles_reaped_total",
        "rolemint_reaper_runs_total",
        "rolemint_audit_lines_dropped_total 0",
        "rolemint_audit_write_errors_total 0",
        "rolemint_cancel_requests_total{result=\"failed\"}",
        "rolemint_revocations_total{result=\"failed\"}",
        "rolemint_connections_total{result=\"too_many\"}",
        "rolemint_config_reloads_total{result=\"failed\"}",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

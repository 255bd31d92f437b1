//! Identities from real issuers: RSA keys behind a JWKS served over HTTPS
//! by the test itself, EC P-256 and Ed25519 public keys, HMAC secrets,
//! Kubernetes-shaped tokens and static tokens, each through the real proxy
//! into the real PostgreSQL; and every kind of bad token refused with the
//! same 28P01 before any role is minted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::keys::{pem, rsa, rsa_jwk};
use common::{captured_log, sqlstate, wait_until, Harness, Options};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rolemint::secret::Secret;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Keys of every type, made here.
// ---------------------------------------------------------------------------

struct Ec {
    signing: EncodingKey,
    public_pem: String,
}

fn ec_p256() -> Ec {
    let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let pkcs8 = kp.to_pkcs8v1().unwrap();
    Ec {
        signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({"iss": iss, "sub": sub, "aud": "rolemint", "iat": now(), "exp": now() + 600})
}

// ---------------------------------------------------------------------------
// A JWKS served over HTTPS, with a self-signed certificate.
// ---------------------------------------------------------------------------

const SERVE_OK: usize = 0;
const SERVE_ERROR: usize = 1;
/// A 2 MiB document, above rolemint's 1 MiB cap.
const SERVE_HUGE: usize = 2;

struct JwksServer {
    port: u16,
    /// GET /jwks requests served.
    hits: Arc<AtomicUsize>,
    jwks: Arc<Mutex<Value>>,
    /// What GET /jwks answers: [`SERVE_OK`], [`SERVE_ERROR`] or [`SERVE_HUGE`].
    mode: Arc<AtomicUsize>,
    ca: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(dir: &Path, jwks: Value) -> JwksServer {
        let (cert, key) = rolemint::cli::dev::write_self_signed_cert(dir).unwrap();
        let tls = rolemint::tls::server_config(&cert, &key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let jwks = Arc::new(Mutex::new(jwks));
        let mode = Arc::new(AtomicUsize::new(SERVE_OK));
        let (h, j, m) = (Arc::clone(&hits), Arc::clone(&jwks), Arc::clone(&mode));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, hits, jwks, mode) = (
                    acceptor.clone(),
                    Arc::clone(&h),
                    Arc::clone(&j),
                    Arc::clone(&m),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&request);
                    let body = if line.starts_with("GET /jwks ") {
                        hits.fetch_add(1, Ordering::SeqCst);
                        match mode.load(Ordering::SeqCst) {
                            SERVE_OK => jwks.lock().unwrap().to_string(),
                            SERVE_HUGE => {
                                format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(2 << 20))
                            }
                            _ => {
                                let _ = tls.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                                let _ = tls.shutdown().await;
                                return;
                            }
                        }
                    } else if line.starts_with("GET /.well-known/openid-configuration ") {
                        json!({"issuer": format!("https://127.0.0.1:{port}"),
                               "jwks_uri": format!("https://127.0.0.1:{port}/jwks")})
                        .to_string()
                    } else {
                        let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                        let _ = tls.shutdown().await;
                        return;
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        JwksServer {
            port,
            hits,
            jwks,
            mode,
            ca: cert,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Failures from one address are rate limited; these tests send many bad
/// tokens on purpose, from 127.0.0.1.
const GENEROUS_FAILURE_RATE: &str = "\n[auth.failure_rate]\nburst = 1000\nper_minute = 1000\n";

/// Every template open to everyone, and the extra config.
async fn harness(extra: &str) -> Harness {
    Harness::with(Options {
        extra_toml: format!("{GENEROUS_FAILURE_RATE}\n{extra}"),
        ..Options::default()
    })
    .await
}

/// `SELECT current_user` through the proxy with `token`.
async fn login(h: &Harness, token: &str) -> Result<String, tokio_postgres::Error> {
    let client = h.connect("readonly", "appdb", token).await?;
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    Ok(row.get(0))
}

async fn refused_28p01(h: &Harness, token: &str, what: &str) -> String {
    match h.connect("readonly", "appdb", token).await {
        Ok(_) => panic!("{what}: the token was accepted"),
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{what}: {e:?}");
            e.as_db_error().unwrap().message().to_owned()
        }
    }
}

/// The role `name` exists in PostgreSQL (checked as superuser).
async fn role_exists(h: &Harness, name: &str) -> bool {
    let su = h.superuser().await;
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    n == 1
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_via_a_jwks_url_logs_in_and_an_unknown_kid_refreshes_once() {
    rolemint::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (rsa(), rsa());
    let server = JwksServer::start(dir.path(), json!({"keys": [rsa_jwk(&k1, "k1")]})).await;
    let iss = "https://idp.test/realms/corp";
    let h = harness(&format!(
        r#"
[[auth.issuers]]
name = "corp"
issuer = "{iss}"
audiences = ["rolemint"]
algorithms = ["RS256"]
jwks_url = "https://127.0.0.1:{port}/jwks"
jwks_ca_file = "{ca}"
"#,
        port = server.port,
        ca = server.ca.display()
    ))
    .await;

    // The startup fetch, in the background.
    assert!(
        wait_until(Duration::from_secs(10), || async { server.hits() >= 1 }).await,
        "the JWKS was never fetched"
    );
    let fetched = server.hits();

    let token = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(iss, "alice"),
        &k1.signing,
    );
    let client = h.connect("readonly", "appdb", &token).await.unwrap();
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(role.starts_with("v-alice-readonly-"), "{role}");
    assert!(
        role_exists(&h, &role).await,
        "the minted role exists during the session"
    );
    // A cached key: no fetch on the connect path.
    assert_eq!(server.hits(), fetched);
    drop(client);
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());

    // The IdP rotates in k2; a token signed with it triggers one refresh.
    server.jwks.lock().unwrap()["keys"] = json!([rsa_jwk(&k1, "k1"), rsa_jwk(&k2, "k2")]);
    let token = sign(
        Algorithm::RS256,
        Some("k2"),
        &claims(iss, "bob"),
        &k2.signing,
    );
    let role = login(&h, &token).await.unwrap();
    assert!(role.starts_with("v-bob-readonly-"), "{role}");
    assert_eq!(
        server.hits(),
        fetched + 1,
        "exactly one refresh for the new kid"
    );

    // Another unknown kid right after: no second fetch within 30 s, 28P01.
    let k3 = rsa();
    let token = sign(
        Algorithm::RS256,
        Some("k3"),
        &claims(iss, "eve"),
        &k3.signing,
    );
    refused_28p01(&h, &token, "unknown kid").await;
    assert_eq!(server.hits(), fetched + 1, "unknown kids are rate limited");
    assert!(captured_log().contains("reason=unknown_key"));

    // k1 still works from the cache while the JWKS endpoint is gone.
    drop(server);
    let token = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(iss, "carol"),
        &k1.signing,
    );
    assert!(login(&h, &token).await.unwrap().starts_with("v-carol-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_unusable_at_startup_is_retried_until_it_loads() {
    rolemint::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let k = rsa();
    let server = JwksServer::start(dir.path(), json!({"keys": [rsa_jwk(&k, "k1")]})).await;
    // First a document above the 1 MiB cap, then an error status.
    server.mode.store(SERVE_HUGE, Ordering::SeqCst);
    let iss = "https://idp.test/late";
    let h = harness(&format!(
        r#"
[[auth.issuers]]
name = "late"
issuer = "{iss}"
audiences = ["rolemint"]
algorithms = ["RS256"]
jwks_url = "https://127.0.0.1:{port}/jwks"
jwks_ca_file = "{ca}"
"#,
        port = server.port,
        ca = server.ca.display()
    ))
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            captured_log().contains("larger than 1048576 bytes")
        })
        .await,
        "the oversized JWKS was not refused"
    );
    server.mode.store(SERVE_ERROR, Ordering::SeqCst);
    let fetched = server.hits();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            server.hits() > fetched
        })
        .await
    );

    // No keys yet: the issuer's tokens get 28P01, the proxy keeps serving.
    let token = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims(iss, "lara"),
        &k.signing,
    );
    refused_28p01(&h, &token, "before the first successful fetch").await;
    let local = h.token("local-user");
    assert!(h.connect("readonly", "appdb", local.expose()).await.is_ok());

    // The IdP recovers: the background retry (with backoff) loads the keys.
    server.mode.store(SERVE_OK, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            login(&h, &token).await.is_ok()
        })
        .await,
        "the keys were never loaded after the JWKS recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_jwks() {
    rolemint::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let k = rsa();
    let server = JwksServer::start(dir.path(), json!({"keys": [rsa_jwk(&k, "d1")]})).await;
    let iss = format!("https://127.0.0.1:{}", server.port);
    let h = harness(&format!(
        r#"
[[auth.issuers]]
name = "discovered"
issuer = "{iss}"
audiences = ["rolemint"]
algorithms = ["RS256"]
discovery = true
jwks_ca_file = "{ca}"
"#,
        ca = server.ca.display()
    ))
    .await;
    assert!(wait_until(Duration::from_secs(10), || async { server.hits() >= 1 }).await);
    let token = sign(
        Algorithm::RS256,
        Some("d1"),
        &claims(&iss, "dora"),
        &k.signing,
    );
    assert!(login(&h, &token)
        .await
        .unwrap()
        .starts_with("v-dora-readonly-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_ed25519_hmac_kubernetes_and_static_tokens_log_in() {
    rolemint::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ec = ec_p256();
    let ec_pem = dir.path().join("ec.pem");
    std::fs::write(&ec_pem, &ec.public_pem).unwrap();
    let ed = rolemint::auth::identity::keygen::ed25519().unwrap();
    let ed_jwks = dir.path().join("ed.json");
    std::fs::write(&ed_jwks, &ed.jwks).unwrap();
    let k8s = rsa();
    let k8s_jwks = dir.path().join("k8s.json");
    std::fs::write(
        &k8s_jwks,
        json!({"keys": [rsa_jwk(&k8s, "kube-1")]}).to_string(),
    )
    .unwrap();
    let hmac_secret = "hmac-secret-0123456789abcdef-0123456789";
    let static_token = rolemint::auth::identity::keygen::random_token("rmt_").unwrap();

    let h = harness(&format!(
        r#"
[[auth.issuers]]
name = "ec"
issuer = "ec-issuer"
audiences = ["rolemint"]
algorithms = ["ES256"]
public_key_file = "{ec_pem}"

[[auth.issuers]]
name = "ed"
issuer = "ed-issuer"
audiences = ["rolemint"]
algorithms = ["EdDSA"]
jwks_file = "{ed_jwks}"

[[auth.issuers]]
name = "hmac"
issuer = "hmac-issuer"
audiences = ["rolemint"]
algorithms = ["HS512"]
hs256_secret = "{hmac_secret}"

[[auth.issuers]]
name = "k8s"
issuer = "https://kubernetes.default.svc.cluster.local"
audiences = ["rolemint"]
algorithms = ["RS256"]
jwks_file = "{k8s_jwks}"
identity_claim = "/kubernetes.io/serviceaccount/name"
max_token_lifetime = "2h"

[[auth.static_tokens]]
identity = "ci"
groups = ["ci"]
sha256 = "{hash}"
"#,
        ec_pem = ec_pem.display(),
        ed_jwks = ed_jwks.display(),
        k8s_jwks = k8s_jwks.display(),
        hash = rolemint::auth::identity::keygen::sha256_hex(&static_token),
    ))
    .await;

    let token = sign(
        Algorithm::ES256,
        None,
        &claims("ec-issuer", "erin"),
        &ec.signing,
    );
    assert!(login(&h, &token)
        .await
        .unwrap()
        .starts_with("v-erin-readonly-"));

    // Ed25519, signed as `rolemint token --key` signs.
    let token = rolemint::auth::identity::issue_ed25519(
        ed.private_pem.expose(),
        Some(&ed.kid),
        &rolemint::auth::identity::IssueClaims {
            subject: "edna",
            groups: &[],
            issuer: Some("ed-issuer"),
            audience: Some("rolemint"),
            ttl: Duration::from_secs(300),
        },
    )
    .unwrap();
    assert!(login(&h, token.expose())
        .await
        .unwrap()
        .starts_with("v-edna-readonly-"));

    let token = sign(
        Algorithm::HS512,
        None,
        &claims("hmac-issuer", "hank"),
        &EncodingKey::from_secret(hmac_secret.as_bytes()),
    );
    assert!(login(&h, &token)
        .await
        .unwrap()
        .starts_with("v-hank-readonly-"));

    // A projected service-account token, shaped as the kubelet writes it.
    let kube = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:billing:invoice-worker",
        "aud": ["rolemint"],
        "iat": now(), "nbf": now(), "exp": now() + 3600,
        "kubernetes.io": {
            "namespace": "billing",
            "serviceaccount": {"name": "invoice-worker", "uid": "0b6c7c57-1b1f-4a8e-9f0e-3f4d0c1f2a3b"},
            "pod": {"name": "invoice-worker-7d9f", "uid": "5e0f4a56-9b0b-4c4e-8a53-0d0f6f1e2a7c"}
        }
    });
    let token = sign(Algorithm::RS256, Some("kube-1"), &kube, &k8s.signing);
    let role = login(&h, &token).await.unwrap();
    assert!(role.starts_with("v-invoice-worker-readonly-"), "{role}");

    let client = h
        .connect("readonly", "appdb", static_token.expose())
        .await
        .unwrap();
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(role.starts_with("v-ci-readonly-"), "{role}");
    // While the session runs, its role's lease comment names "ci".
    let su = h.superuser().await;
    let comment: String = su
        .query_one(
            "SELECT pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(comment.contains("\"identity\":\"ci\""), "{comment}");
    drop(client);
    // A near miss of the static token is refused.
    let mut wrong = static_token.expose().to_owned();
    wrong.push('x');
    refused_28p01(&h, &wrong, "a static token with one more byte").await;
    assert!(!captured_log().contains(static_token.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_confused_and_out_of_bounds_tokens_get_the_same_28p01() {
    rolemint::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let k = rsa();
    let pem_path = dir.path().join("rsa.pem");
    std::fs::write(&pem_path, &k.public_pem).unwrap();
    let iss = "https://idp.test/realms/corp";
    let h = harness(&format!(
        r#"
[[auth.issuers]]
name = "corp"
issuer = "{iss}"
audiences = ["rolemint"]
algorithms = ["RS256"]
public_key_file = "{pem}"
max_token_lifetime = "1h"
"#,
        pem = pem_path.display()
    ))
    .await;

    // The good token works: the refusals below are about the token alone.
    let good = sign(Algorithm::RS256, None, &claims(iss, "alice"), &k.signing);
    assert!(login(&h, &good).await.unwrap().starts_with("v-alice-"));
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let payload = b64(&claims(iss, "mallory"));
    let mut bad: Vec<(&str, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        bad.push(("alg=none", format!("{header}.{payload}.")));
    }
    // RS/HS confusion: HS256 with the RSA public key PEM as the secret.
    bad.push((
        "HS256 signed with the public key",
        sign(
            Algorithm::HS256,
            None,
            &claims(iss, "mallory"),
            &EncodingKey::from_secret(k.public_pem.as_bytes()),
        ),
    ));
    // A valid signature by another RSA key.
    bad.push((
        "another key",
        sign(
            Algorithm::RS256,
            None,
            &claims(iss, "mallory"),
            &rsa().signing,
        ),
    ));
    // The issuer's key, a family it does not use.
    bad.push((
        "an EC key",
        sign(
            Algorithm::ES256,
            None,
            &claims(iss, "mallory"),
            &ec_p256().signing,
        ),
    ));
    let mut c = claims(iss, "mallory");
    c["iss"] = json!("https://evil.test/realms/corp");
    bad.push(("wrong issuer", sign(Algorithm::RS256, None, &c, &k.signing)));
    let mut c = claims(iss, "mallory");
    c["aud"] = json!("someone-else");
    bad.push((
        "wrong audience",
        sign(Algorithm::RS256, None, &c, &k.signing),
    ));
    let mut c = claims(iss, "mallory");
    c.as_object_mut().unwrap().remove("aud");
    bad.push(("no audience", sign(Algorithm::RS256, None, &c, &k.signing)));
    let mut c = claims(iss, "mallory");
    c["exp"] = json!(now() + 3 * 3600);
    bad.push((
        "lifetime above max_token_lifetime",
        sign(Algorithm::RS256, None, &c, &k.signing),
    ));
    let mut c = claims(iss, "mallory");
    c["iat"] = json!(now() + 3600);
    bad.push((
        "iat in the future",
        sign(Algorithm::RS256, None, &c, &k.signing),
    ));
    let mut c = claims(iss, "mallory");
    c["exp"] = json!(now() - 3600);
    c["iat"] = json!(now() - 3700);
    bad.push(("expired", sign(Algorithm::RS256, None, &c, &k.signing)));
    let mut c = claims(iss, "mallory");
    c.as_object_mut().unwrap().remove("exp");
    bad.push(("no exp", sign(Algorithm::RS256, None, &c, &k.signing)));
    bad.push((
        "RS512 is not pinned",
        sign(Algorithm::RS512, None, &claims(iss, "mallory"), &k.signing),
    ));
    bad.push(("garbage", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA".into()));

    let mut messages = std::collections::BTreeSet::new();
    for (what, token) in &bad {
        messages.insert(refused_28p01(&h, token, what).await);
    }
    assert_eq!(
        messages.len(),
        1,
        "one message for every reason: {messages:?}"
    );
    assert!(h.managed_roles().await.is_empty(), "no role was minted");
    // The reasons are in rolemint's log.
    let log = captured_log();
    for reason in [
        "reason=wrong_algorithm",
        "reason=wrong_issuer",
        "reason=wrong_audience",
        "reason=lifetime_too_long",
        "reason=not_yet_valid",
        "reason=expired",
        "reason=bad_signature",
    ] {
        assert!(log.contains(reason), "{reason} not logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_rate_limited_per_address() {
    let h = Harness::with(Options {
        extra_toml: "\n[auth.failure_rate]\nburst = 3\nper_minute = 1\n".into(),
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        refused_28p01(&h, "not-a-token", "a bad token").await;
    }
    // Over the limit: even a good token is refused, without being looked at.
    let good = h.token("alice");
    refused_28p01(&h, good.expose(), "a good token while limited").await;
    assert!(captured_log().contains("reason=rate_limited"));
    assert!(h.managed_roles().await.is_empty());

    // Another address is not limited: from 127.0.0.2 the same good token
    // authenticates (the first reply to the password is AuthenticationOk).
    let first = password_reply_from("127.0.0.2", h.addr, good.expose()).await;
    assert_eq!(first, (b'R', 0), "127.0.0.2 was limited too");
    let first = password_reply_from("127.0.0.1", h.addr, good.expose()).await;
    assert_eq!(first.0, b'E', "127.0.0.1 is still limited");
}

/// Speaks the startup protocol from `source` (plaintext) and returns the
/// type and first int32 of the message answering the password: (b'R', 0)
/// is AuthenticationOk.
async fn password_reply_from(source: &str, proxy: std::net::SocketAddr, token: &str) -> (u8, i32) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(proxy).await.unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    for s in ["user", "readonly", "database", "appdb", ""] {
        startup.extend_from_slice(s.as_bytes());
        startup.push(0);
    }
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    tcp.write_all(&packet).await.unwrap();

    // AuthenticationCleartextPassword.
    assert_eq!(read_message(&mut tcp).await, (b'R', 3));
    let mut password = vec![b'p'];
    password.extend_from_slice(&((token.len() + 5) as i32).to_be_bytes());
    password.extend_from_slice(token.as_bytes());
    password.push(0);
    tcp.write_all(&password).await.unwrap();
    read_message(&mut tcp).await
}

#[test]
fn token_and_keygen_commands_print_credentials_the_config_accepts() {
    let bin = env!("CARGO_BIN_EXE_rolemint");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_plaintext = true\n\
                [backend]\nhost = \"127.0.0.1\"\nadmin_user = \"a\"\nadmin_password = \"p\"\n\
                [auth]\n";
    let roles = "\n[roles.r]\ndatabases = [\"d\"]\ndefault_ttl = \"1h\"\nmax_ttl = \"1h\"\n\
                 allow_identities = [\"*\"]\n\
                 creation_statements = [\"CREATE ROLE \\\"{{name}}\\\" LOGIN VALID UNTIL '{{expiration}}'\"]\n";

    // --static: the printed lines are config, the last line the token.
    let out = run(&["token", "--static", "--sub", "ci", "--groups", "ci,deploy"]);
    let token = out.lines().last().unwrap();
    let lines: String = out
        .lines()
        .filter(|l| !l.starts_with('#') && *l != token)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!lines.contains(token), "the token itself is not config");
    let config = rolemint::config::Config::parse(&format!("{base}\n{lines}{roles}")).unwrap();
    config.validate().unwrap();
    let v = rolemint::auth::identity::Verifier::from_config(&config.auth).unwrap();
    let id = v.verify(token).unwrap();
    assert_eq!((id.subject.as_str(), id.groups.len()), ("ci", 2));

    // --operator: a hash line and a token that hashes to it.
    let out = run(&["token", "--operator"]);
    let token = out.lines().last().unwrap();
    let hash_line = out
        .lines()
        .find(|l| l.starts_with("operator_token_sha256"))
        .unwrap();
    let expected = rolemint::auth::identity::keygen::sha256_hex(&Secret::new(token));
    assert_eq!(hash_line, format!("operator_token_sha256 = \"{expected}\""));

    // keygen, then token --key: verified by the JWKS keygen wrote.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = run(&["keygen", "--out", keys.to_str().unwrap()]);
    let issuer: String = out
        .lines()
        .skip_while(|l| !l.starts_with("[[auth.issuers]]"))
        .take_while(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let key = keys.join("ed25519.key.pem");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = run(&[
        "token",
        "--key",
        key.to_str().unwrap(),
        "--sub",
        "bob",
        "--issuer",
        "rolemint-ed25519",
        "--audience",
        "rolemint",
    ]);
    let token = out.lines().last().unwrap();
    let config = rolemint::config::Config::parse(&format!("{base}\n{issuer}{roles}")).unwrap();
    config.validate().unwrap();
    let v = rolemint::auth::identity::Verifier::from_config(&config.auth).unwrap();
    assert_eq!(v.verify(token).unwrap().subject, "bob");
    // keygen never overwrites a key.
    let again = std::process::Command::new(bin)
        .args(["keygen", "--out", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// One backend message: its type and the first int32 of its body.
async fn read_message(tcp: &mut tokio::net::TcpStream) -> (u8, i32) {
    let kind = tcp.read_u8().await.unwrap();
    let len = tcp.read_i32().await.unwrap();
    assert!((8..65536).contains(&len), "message length {len}");
    let mut body = vec![0u8; (len - 4) as usize];
    tcp.read_exact(&mut body).await.unwrap();
    (kind, i32::from_be_bytes(body[..4].try_into().unwrap()))
}

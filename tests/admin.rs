//! The admin HTTP listener on a running proxy in front of a real
//! PostgreSQL, and `rolemint leases` / `health` / `token --operator`
//! against the listener.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Harness, Options};
use reqwest::StatusCode;
use rolemint::control::auth::{sha256_hex, OperatorToken};
use rolemint::control::health::Probe;
use rolemint::control::leases::LeaseView;
use rolemint::control::memory::MemoryDirectory;
use rolemint::control::{AdminListener, AdminState, BoxFuture};
use rolemint::lease::end::EndReason;
use rolemint::lease::registry::LeaseKind;
use rolemint::observe::audit::Audit;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ROLEMINT: &str = env!("CARGO_BIN_EXE_rolemint");
const OPERATOR_TOKEN: &str = "rmo_integration-test-operator-token";

async fn with_admin() -> Harness {
    Harness::with(Options {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n\n[audit]\npath = \"audit.jsonl\"\n",
            sha256_hex(OPERATOR_TOKEN)
        ),
        ..Options::default()
    })
    .await
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

/// The value of an unlabelled metric in a scrape.
fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_errors_on_a_running_proxy() {
    let mut h = with_admin().await;
    let admin = h.admin_addr.expect("the admin listener is on");

    let (s, ct, body) = get(admin, "/healthz").await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::OK, "application/json"),
        "{body}"
    );
    let (s, _, body) = get(admin, "/readyz").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["databases"], serde_json::json!(["appdb", "postgres"]));

    // rolemint_managed_roles follows the catalog: 0, 1 during a session, 0.
    let scrape = get(admin, "/metrics").await.2;
    assert_eq!(
        metric(&scrape, "rolemint_managed_roles"),
        Some(0.0),
        "{scrape}"
    );
    assert!(
        scrape.contains("# TYPE rolemint_build_info gauge"),
        "{scrape}"
    );
    // The gauge is the background check's (every 2 s): polled.
    let managed = |n: f64| async move {
        wait_until(Duration::from_secs(10), || async {
            metric(&get(admin, "/metrics").await.2, "rolemint_managed_roles") == Some(n)
        })
        .await
    };
    let client = h.session("readonly", "alice").await;
    client.simple_query("SELECT 1").await.unwrap();
    assert!(managed(1.0).await, "rolemint_managed_roles never showed 1");
    drop(client);
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
    assert!(
        managed(0.0).await,
        "rolemint_managed_roles never went back to 0"
    );
    let scrape = get(admin, "/metrics").await.2;
    assert!(
        scrape.contains("rolemint_admin_requests_total{route=\"/readyz\",status=\"200\"}"),
        "{scrape}"
    );

    // Errors are {"errors": [...]} as application/json.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("http://{admin}/v1/rolemint/leases"))
        .header("X-Vault-Token", "not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"errors": ["permission denied"]}));
    let (s, ct, body) = get(admin, "/v1/secret/data/x").await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::NOT_FOUND, "application/json"),
        "{body}"
    );
    let resp = http
        .put(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["content-type"], "application/json");

    // The audit log: one JSON object per line, the refused request with
    // who asked, never the token. A request's line is written after its
    // answer: wait for the last one's.
    let path = h.config.audit.path.clone().unwrap();
    let last_written = wait_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"status\":405"))
    })
    .await;
    assert!(last_written, "no audit line for the PUT answered 405");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = lines
        .iter()
        .find(|l| l["event"] == "admin.request" && l["status"] == 403)
        .unwrap_or_else(|| panic!("no audited 403 in {text}"));
    assert_eq!(refused["caller"], "invalid-token");
    assert_eq!(refused["method"], "GET");
    assert_eq!(refused["path"], "/v1/rolemint/leases");
    assert!(refused["time"].as_str().unwrap().ends_with('Z'));
    assert!(refused["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 405 && l["method"] == "PUT"),
        "{text}"
    );
    assert!(!text.contains("not-the-token") && !text.contains(OPERATOR_TOKEN));

    // PostgreSQL goes away: /readyz names every database it cannot reach.
    // The background check sees it within a round or two.
    h.cluster.stop().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            get(admin, "/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let (s, ct, body) = get(admin, "/readyz").await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "application/json")
    );
    let errors: Value = serde_json::from_str(&body).unwrap();
    let errors: Vec<&str> = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        [
            "database \"appdb\": admin connection failed",
            "database \"postgres\": admin connection failed"
        ]
    );
    assert_eq!(get(admin, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_as_soon_as_the_drain_begins() {
    let mut h = with_admin().await;
    let admin = h.admin_addr.unwrap();
    assert_eq!(get(admin, "/readyz").await.0, StatusCode::OK);
    // A live session keeps the drain going for shutdown_grace (2 s).
    let client = h.session("readonly", "alice").await;
    let probe = async {
        let draining = wait_until(Duration::from_secs(5), || async {
            let (s, _, body) = get(admin, "/readyz").await;
            s == StatusCode::SERVICE_UNAVAILABLE && body.contains("shutting down")
        })
        .await;
        // Still serving while the session drains.
        let (health, _, _) = get(admin, "/healthz").await;
        (draining, health)
    };
    let (stopped, (draining, health)) = tokio::join!(h.stop(), probe);
    stopped.unwrap();
    assert!(draining, "/readyz never said the server was draining");
    assert_eq!(health, StatusCode::OK);
    drop(client);
    // After the drain the listener is gone.
    assert!(reqwest::get(format!("http://{admin}/healthz"))
        .await
        .is_err());
}

/// Ready, with seven managed roles.
struct AlwaysReady;

impl Probe for AlwaysReady {
    fn ping<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn managed_roles(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async { Ok(7) })
    }
}

fn lease(id: &str, identity: &str) -> LeaseView {
    let now = std::time::SystemTime::now();
    LeaseView {
        id: id.into(),
        issue_time: now,
        expire_time: now + Duration::from_secs(3600),
        last_renewal: None,
        renewable: true,
        ttl: 3600,
        identity: identity.into(),
        issuer: "local".into(),
        role: format!("v-{identity}-x-1"),
        template: id.split('/').nth(2).unwrap().into(),
        database: "appdb".into(),
        client_addr: None,
        bytes_in: 0,
        bytes_out: 0,
        instance: "test".into(),
        kind: LeaseKind::Session,
    }
}

/// The admin API over an in-memory directory, on a free port.
async fn api_with_directory() -> (SocketAddr, Arc<MemoryDirectory>, CancellationToken) {
    let directory = Arc::new(MemoryDirectory::default());
    let hour = Duration::from_secs(3600);
    for (id, who) in [
        ("database/sessions/readonly/aaaa", "alice"),
        ("database/sessions/readonly/bbbb", "bob"),
        ("database/sessions/readwrite/cccc", "carol"),
    ] {
        directory.insert(lease(id, who), hour, 2 * hour);
    }
    let state = AdminState {
        operator: OperatorToken::from_hex(&sha256_hex(OPERATOR_TOKEN)),
        directory: directory.clone(),
        probe: Arc::new(AlwaysReady),
        databases: vec!["appdb".into()],
        shutdown: CancellationToken::new(),
        audit: Audit::disabled(),
        request_timeout: Duration::from_secs(10),
        ready_timeout: Duration::from_secs(5),
        max_body_bytes: 65536,
        vault: None,
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
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    tokio::spawn(rolemint::control::serve(listener, state, stop.clone()));
    (addr, directory, stop)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn rolemint(addr: SocketAddr, token: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(ROLEMINT)
        .args(args)
        .env("ROLEMINT_ADDR", format!("http://{addr}"))
        .env("ROLEMINT_TOKEN", token)
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

#[tokio::test]
async fn the_leases_command_drives_the_api() {
    let (addr, directory, stop) = api_with_directory().await;
    let t = OPERATOR_TOKEN;

    let run = rolemint(addr, t, &["leases", "list"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.starts_with("LEASE ID"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);
    let run = rolemint(
        addr,
        t,
        &["leases", "list", "--identity", "alice", "--json"],
    )
    .await;
    let body: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["data"]["leases"].as_array().unwrap().len(), 1);

    let run = rolemint(
        addr,
        t,
        &["leases", "lookup", "database/sessions/readonly/aaaa"],
    )
    .await;
    assert!(
        run.ok && run.stdout.contains("identity      alice"),
        "{}{}",
        run.stdout,
        run.stderr
    );

    let run = rolemint(
        addr,
        t,
        &[
            "leases",
            "renew",
            "database/sessions/readonly/aaaa",
            "--increment",
            "5h",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("renewed database/sessions/readonly/aaaa for 7"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("exceeded the effective max_ttl"),
        "{}",
        run.stderr
    );
    let run = rolemint(
        addr,
        t,
        &["leases", "renew", "database/sessions/readonly/aaaa"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("past the max TTL, cannot renew"),
        "{}",
        run.stderr
    );

    let run = rolemint(
        addr,
        t,
        &["leases", "revoke", "database/sessions/readonly/aaaa"],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        directory.revoked_by("database/sessions/readonly/aaaa"),
        Some(EndReason::RevokedByOperator)
    );
    let run = rolemint(addr, t, &["leases", "revoke-identity", "bob"]).await;
    assert_eq!(run.stdout.trim(), "revoked 1 lease(s) of bob");
    let run = rolemint(
        addr,
        t,
        &["leases", "revoke-prefix", "database/sessions/readwrite/"],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(directory.live().is_empty());

    // Errors: the server's message, a non-zero exit.
    let run = rolemint(
        addr,
        t,
        &["leases", "lookup", "database/sessions/readonly/none"],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("400 Bad Request: lease not found"),
        "{}",
        run.stderr
    );
    let run = rolemint(addr, "wrong", &["leases", "list"]).await;
    assert!(
        !run.ok && run.stderr.contains("permission denied"),
        "{}",
        run.stderr
    );

    // The address from a config's [admin] listen.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rolemint.toml");
    std::fs::write(&config, format!("[admin]\nlisten = \"{addr}\"\n")).unwrap();
    let out = tokio::process::Command::new(ROLEMINT)
        .args(["leases", "--config"])
        .arg(&config)
        .args(["list", "--json"])
        .env("ROLEMINT_TOKEN", t)
        .env_remove("ROLEMINT_ADDR")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The container probe.
    let run = rolemint(addr, "", &["health", "--addr", &addr.to_string()]).await;
    assert!(
        run.ok && run.stdout.contains("/healthz: ok"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let run = rolemint(addr, "", &["health", "--ready"]).await;
    assert!(run.ok, "{}", run.stderr);
    stop.cancel();
}

#[test]
fn token_operator_prints_a_token_and_its_hash() {
    let out = std::process::Command::new(ROLEMINT)
        .args(["token", "--operator"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let token = lines.last().unwrap();
    assert!(token.starts_with("rmo_") && token.len() > 40, "{stdout}");
    let hash = lines
        .iter()
        .find_map(|l| l.strip_prefix("operator_token_sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no operator_token_sha256 line:\n{stdout}"));
    assert_eq!(hash, sha256_hex(token));
    assert!(OperatorToken::from_hex(hash).unwrap().matches(token));
}

#[tokio::test]
async fn sighup_reopens_the_audit_log_after_rotation() {
    use rolemint::cli::dev::cluster::{self, ClusterOptions, TempCluster};
    let (cluster, demo) = tokio::task::spawn_blocking(|| {
        let cluster = TempCluster::start(ClusterOptions::default()).expect("start PostgreSQL");
        let demo = cluster::provision_demo(&cluster).expect("demo");
        (cluster, demo)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    common::write_self_signed_cert(dir.path());
    // A free port for the admin listener (the proxy takes port 0).
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = Options {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[audit]\npath = \"audit.jsonl\"\n"
        ),
        ..Options::default()
    };
    let config = dir.path().join("rolemint.toml");
    std::fs::write(&config, common::config_toml(&cluster, &demo, &options)).unwrap();
    let mut child = tokio::process::Command::new(ROLEMINT)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let up = wait_until(Duration::from_secs(30), || async {
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "rolemint serve did not start its admin listener");

    let audit = dir.path().join("audit.jsonl");
    assert_eq!(
        get(admin, "/v1/before-rotation").await.0,
        StatusCode::NOT_FOUND
    );
    let rotated = dir.path().join("audit.jsonl.1");
    // A GET is audited through the queue, not before its answer: wait for it.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("/v1/before-rotation"))
        })
        .await
    );
    std::fs::rename(&audit, &rotated).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    // The reopen creates the file anew; then new lines land there.
    assert!(
        wait_until(Duration::from_secs(5), || async { audit.exists() }).await,
        "not reopened"
    );
    assert_eq!(
        get(admin, "/v1/after-rotation").await.0,
        StatusCode::NOT_FOUND
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("/v1/after-rotation"))
        })
        .await
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("/v1/before-rotation") && !old.contains("/v1/after-rotation"),
        "{old}"
    );

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("rolemint serve stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

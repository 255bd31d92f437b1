//! Observing and steering a running `rolemint serve`: its `/metrics` scraped
//! before and after sessions, its audit log parsed line by line for every
//! event kind, and SIGHUP reloading certificates and templates (or refusing
//! a broken config) while sessions keep running. Each test runs the real
//! binary (its metrics are its own, not this test process's) against a
//! PostgreSQL cluster of its own, and checks PostgreSQL itself.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{connect_owned, sqlstate, wait_until, Options};
use rolemint::cli::dev::cluster::{self, ClusterOptions, Demo, TempCluster};
use rolemint::config::Config;
use rolemint::secret::Secret;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(30);

/// A role template whose sessions own what they create and whose template
/// names no owner: its roles are retained at revocation.
const MAKER: &str = r#"
[roles.maker]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_owner TO \"{{name}}\"",
]
"#;

/// A template whose leases run out after two seconds.
const BRIEF: &str = r#"
[roles.brief]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "2s"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
"#;

/// A template a reload adds.
const ADDED: &str = r#"
[roles.added]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
"#;

/// A PostgreSQL cluster, and `rolemint serve` on it with the admin
/// listener and an audit file.
struct Serve {
    cluster: TempCluster,
    config: Config,
    config_text: String,
    child: tokio::process::Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn cluster() -> (TempCluster, Demo) {
    rolemint::tls::install_crypto_provider();
    tokio::task::spawn_blocking(|| {
        let cluster = TempCluster::start(ClusterOptions::default()).expect("start PostgreSQL");
        let demo = cluster::provision_demo(&cluster).expect("provision the demo");
        (cluster, demo)
    })
    .await
    .expect("cluster task")
}

impl Serve {
    /// Starts `rolemint serve` with `options` (its `extra_toml` appended);
    /// returns once both listeners answer.
    async fn start(cluster: TempCluster, demo: Demo, options: Options) -> Serve {
        let dir = tempfile::tempdir().expect("temp dir");
        common::write_self_signed_cert(dir.path());
        let (port, admin_port) = (free_port(), free_port());
        let audit = dir.path().join("audit.jsonl");
        let options = Options {
            extra_toml: format!(
                "{}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[audit]\npath = \"{}\"\n",
                options.extra_toml,
                audit.display()
            ),
            ..options
        };
        let config_text = common::config_toml(&cluster, &demo, &options)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        let config_path = dir.path().join("rolemint.toml");
        std::fs::write(&config_path, &config_text).expect("write config");
        let config = Config::load(&config_path).expect("the test config loads");
        let log = std::fs::File::create(dir.path().join("rolemint.log")).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("ROLEMINT_LOG", "debug")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("rolemint serve starts");
        let mut serve = Serve {
            cluster,
            config,
            config_text,
            child,
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            dir,
        };
        let admin = serve.admin;
        let up = wait_until(WAIT, || async {
            tokio::net::TcpStream::connect(admin).await.is_ok()
        })
        .await;
        assert!(
            up && matches!(serve.child.try_wait(), Ok(None)),
            "rolemint serve did not start:\n{}",
            serve.log()
        );
        serve
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("rolemint.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rolemint.log")).unwrap_or_default()
    }

    fn token(&self, subject: &str) -> Secret {
        rolemint::auth::identity::issue(&self.config.auth, subject, &[], Duration::from_secs(600))
            .expect("issue token")
    }

    async fn connect(
        &self,
        template: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect_owned(format!(
            "host=127.0.0.1 port={} user={template} dbname=appdb password={password} \
             sslmode=disable connect_timeout=10",
            self.addr.port()
        ))
        .await
    }

    async fn session(&self, template: &str, identity: &str) -> tokio_postgres::Client {
        let token = self.token(identity);
        self.connect(template, token.expose())
            .await
            .unwrap_or_else(|e| panic!("{template} session for {identity}: {e:?}"))
    }

    async fn superuser(&self) -> tokio_postgres::Client {
        connect_owned(self.cluster.superuser_conn_string("appdb"))
            .await
            .expect("superuser connects")
    }

    /// Whether PostgreSQL has a role of that name.
    async fn role_exists(&self, role: &str) -> bool {
        self.superuser()
            .await
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .expect("look up the role")
            .get::<_, i64>(0)
            == 1
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The audit log's lines, each parsed.
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    fn hangup(&self) {
        let pid = self.child.id().expect("rolemint serve runs") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("rolemint serve runs") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let exited = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        assert!(
            matches!(exited, Ok(Ok(status)) if status.success()),
            "rolemint serve did not stop cleanly: {exited:?}\n{}",
            self.log()
        );
    }
}

/// The sum of the samples of `name` whose labels include every `labels`
/// pair (0 when there is none).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn events<'a>(lines: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

async fn session_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT session_user::text", &[])
        .await
        .expect("session_user")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_audit_follow_every_session_and_revocation() {
    let (cluster, demo) = cluster().await;
    // An orphan from a crashed instance, past its VALID UNTIL: the startup
    // sweep reaps it. That instance had created the marker role, as the
    // admin (so the admin holds it WITH ADMIN OPTION on PostgreSQL 16+).
    let orphan = "v-orphan-readonly-abcdefgh-1";
    {
        let su = connect_owned(cluster.superuser_conn_string("appdb"))
            .await
            .expect("superuser connects");
        su.batch_execute(&format!(
            r#"SET ROLE rolemint_admin; CREATE ROLE rolemint_managed NOLOGIN; RESET ROLE;
               CREATE ROLE "{orphan}" LOGIN VALID UNTIL '2000-01-01' IN ROLE rolemint_managed;
               COMMENT ON ROLE "{orphan}" IS
                 '{{"lease_id":"database/sessions/readonly/abcdefgh","template":"readonly","database":"appdb"}}';"#
        ))
        .await
        .expect("create the orphan");
    }
    let serve = Serve::start(
        cluster,
        demo,
        Options {
            max_connections: 2,
            extra_toml: format!("{MAKER}\n{BRIEF}\n[mint]\nreap_interval = \"1s\"\n"),
            ..Options::default()
        },
    )
    .await;
    let before = serve.metrics().await;

    // Two sessions at once fill max_connections; a third is refused.
    let alice = serve.session("readonly", "alice").await;
    let bob = serve.session("readonly", "bob").await;
    for client in [&alice, &bob] {
        let n: i64 = client
            .query_one("SELECT count(*) FROM generate_series(1, 1000)", &[])
            .await
            .expect("query through the proxy")
            .get(0);
        assert_eq!(n, 1000);
    }
    let roles = [session_user(&alice).await, session_user(&bob).await];
    assert!(serve.role_exists(&roles[0]).await && serve.role_exists(&roles[1]).await);
    let two_active = wait_until(WAIT, || async {
        sample(
            &serve.metrics().await,
            "rolemint_sessions_active",
            &[("template", "readonly")],
        ) == 2.0
    })
    .await;
    assert!(two_active, "{}", serve.metrics().await);
    // Both spliced on relay threads: packed, on the first one.
    let metrics = serve.metrics().await;
    assert_eq!(
        sample(&metrics, "rolemint_relay_thread_sessions", &[]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "rolemint_relay_thread_sessions",
            &[("thread", "0")]
        ),
        2.0,
        "{metrics}"
    );
    let carol = serve.token("carol");
    let refused = serve
        .connect("readonly", carol.expose())
        .await
        .expect_err("over max_connections");
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"), "{refused:?}");
    drop((alice, bob));
    let idle = wait_until(WAIT, || async {
        let metrics = serve.metrics().await;
        sample(&metrics, "rolemint_sessions_active", &[]) == 0.0
            && sample(&metrics, "rolemint_relay_thread_sessions", &[]) == 0.0
    })
    .await;
    assert!(idle, "{}", serve.metrics().await);

    // A bad token (no dot: looked up as a static token): 28P01, counted
    // with its reason.
    let bad = serve
        .connect("readonly", "not-a-token")
        .await
        .expect_err("a bad token is refused");
    assert_eq!(sqlstate(&bad).as_deref(), Some("28P01"), "{bad:?}");

    // A lease that runs out: the client gets 57P01.
    let brief = serve.session("brief", "dora").await;
    let brief_role = session_user(&brief).await;
    // The query outlasts the lease; the lease's end ends it.
    let err = brief
        .simple_query("SELECT pg_catalog.pg_sleep(20)")
        .await
        .expect_err("the lease ends the query");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");

    // A role that owns a table, and a template without an owner: retained.
    let maker = serve.session("maker", "erin").await;
    let maker_role = session_user(&maker).await;
    maker
        .batch_execute("CREATE TABLE public.kept (x int); INSERT INTO public.kept VALUES (1)")
        .await
        .expect("create a table");
    drop(maker);

    // Every minted role but the retained one is gone from PostgreSQL.
    for role in roles.iter().chain([&brief_role, &orphan.to_owned()]) {
        let gone = wait_until(WAIT, || async { !serve.role_exists(role).await }).await;
        assert!(gone, "{role} still exists");
    }
    let retained = wait_until(WAIT, || async {
        !events(&serve.audit(), "lease.retained").is_empty()
    })
    .await;
    assert!(retained, "no lease.retained line: {:?}", serve.audit());
    assert!(serve.role_exists(&maker_role).await, "retained roles stay");
    let rows: i64 = serve
        .superuser()
        .await
        .query_one("SELECT count(*) FROM public.kept", &[])
        .await
        .expect("the retained role's table is intact")
        .get(0);
    assert_eq!(rows, 1);

    let after = serve.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    // alice, bob, the brief session and the maker session.
    assert_eq!(
        delta("rolemint_connections_total", &[("result", "ok")]),
        4.0,
        "{after}"
    );
    assert_eq!(
        delta("rolemint_connections_total", &[("result", "too_many")]),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("rolemint_mint_duration_seconds_count", &[]),
        4.0,
        "{after}"
    );
    assert_eq!(
        delta("rolemint_backend_login_duration_seconds_count", &[]),
        4.0,
        "{after}"
    );
    assert_eq!(
        delta("rolemint_connect_duration_seconds_count", &[]),
        4.0,
        "{after}"
    );
    // Every decision names the configured issuer that vouched (the local
    // one here), and none before one did; never the identity.
    assert_eq!(
        delta(
            "rolemint_auth_total",
            &[("result", "ok"), ("issuer", "local")]
        ),
        4.0,
        "{after}"
    );
    assert_eq!(
        delta(
            "rolemint_auth_total",
            // No static tokens are configured: a password without a dot
            // is simply not a JWT.
            &[
                ("result", "failed"),
                ("reason", "malformed"),
                ("issuer", "none")
            ]
        ),
        1.0,
        "{after}"
    );
    for line in after
        .lines()
        .filter(|l| l.starts_with("rolemint_auth_total{"))
    {
        assert!(
            ["alice", "bob", "carol"]
                .iter()
                .all(|who| !line.contains(who)),
            "{line}"
        );
    }
    // alice, bob and the brief role at least (the orphan's may have gone
    // before the first scrape).
    assert!(
        delta("rolemint_revocations_total", &[("result", "ok")]) >= 3.0,
        "{after}"
    );
    assert!(
        sample(&after, "rolemint_roles_retained", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        sample(&after, "rolemint_reaper_runs_total", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        sample(&after, "rolemint_roles_reaped_total", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        delta(
            "rolemint_relay_bytes_total",
            &[("direction", "client_to_backend")]
        ) > 0.0,
        "{after}"
    );
    assert!(
        delta(
            "rolemint_relay_bytes_total",
            &[("direction", "backend_to_client")]
        ) > 0.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "rolemint_admin_pool_connections",
            &[("state", "idle")]
        ) >= 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "rolemint_revocations_pending", &[]),
        0.0,
        "{after}"
    );
    // No label names an identity or a role.
    for secretish in ["alice", "bob", "v-"] {
        assert!(
            !after
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(secretish)),
            "{secretish} in a label:\n{after}"
        );
    }

    // The audit log: every event kind, with who and why.
    let lines = serve.audit();
    let kinds: BTreeSet<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    for kind in [
        "connection.refused",
        "auth.failed",
        "auth.ok",
        "lease.minted",
        "session.ended",
        "lease.revoked",
        "lease.retained",
        "lease.reaped",
    ] {
        assert!(kinds.contains(kind), "no {kind} line in {lines:#?}");
    }
    let refused = events(&lines, "connection.refused");
    assert_eq!(refused[0]["reason"], "too_many_connections", "{refused:?}");
    let failed = events(&lines, "auth.failed");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("malformed: malformed token: not a JWT"),
        "{failed:?}"
    );
    assert!(failed[0]["client_addr"]
        .as_str()
        .unwrap_or("")
        .starts_with("127.0.0.1:"));
    let minted = events(&lines, "lease.minted");
    assert_eq!(minted.len(), 4, "{minted:?}");
    assert!(minted
        .iter()
        .any(|m| m["role"] == roles[0] && m["identity"] == "alice"));
    let ended = events(&lines, "session.ended");
    let brief_end = ended
        .iter()
        .find(|e| e["role"] == brief_role)
        .expect("the brief session ended");
    assert_eq!(brief_end["reason"], "ttl", "{brief_end}");
    let alice_end = ended
        .iter()
        .find(|e| e["role"] == roles[0])
        .expect("alice ended");
    assert_eq!(alice_end["reason"], "client", "{alice_end}");
    assert!(
        alice_end["bytes_out"].as_u64().unwrap_or(0) > 0,
        "{alice_end}"
    );
    let revoked = events(&lines, "lease.revoked");
    let by = |role: &str| {
        revoked
            .iter()
            .find(|r| r["role"] == role)
            .map(|r| r["by"].clone())
    };
    assert_eq!(by(&roles[0]), Some("client".into()), "{revoked:?}");
    assert_eq!(by(&brief_role), Some("ttl".into()), "{revoked:?}");
    assert_eq!(by(orphan), Some("reaper".into()), "{revoked:?}");
    let reaped = events(&lines, "lease.reaped");
    assert!(
        reaped.iter().any(|r| r["role"] == orphan
            && r["reason"] == "expired"
            && r["lease_id"] == "database/sessions/readonly/abcdefgh"),
        "{reaped:?}"
    );
    let kept = events(&lines, "lease.retained");
    assert_eq!(kept[0]["role"], maker_role.as_str(), "{kept:?}");
    // Never a token or a verifier.
    let raw = std::fs::read_to_string(serve.dir.path().join("audit.jsonl")).unwrap_or_default();
    let token = serve.token("alice");
    assert!(!raw.contains("SCRAM-SHA-256$") && !raw.contains(&token.expose()[..20]));
    assert!(
        !raw.contains("not-a-token"),
        "a refused password was logged"
    );
    serve.stop().await;
}

/// The DER of the certificate a TLS client is shown on `addr`, after a
/// PostgreSQL SSLRequest.
async fn peer_certificate(addr: SocketAddr, backend: &rolemint::config::BackendConfig) -> Vec<u8> {
    let mut backend = backend.clone();
    backend.tls_setting = Some(rolemint::config::BackendTls::Require);
    // `require` does not verify: we only want to see the certificate.
    let config = rolemint::tls::backend_client_config(&backend)
        .expect("TLS client config")
        .expect("TLS is on");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .expect("SSLRequest answer");
    assert_eq!(&answer, b"S");
    let name = rustls_pki_types::ServerName::try_from("localhost".to_owned()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("a certificate")
        .to_vec()
}

fn certificate_file(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .expect("certificate PEM")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_certificates_and_templates_and_keeps_the_old_config_when_broken() {
    let (cluster, demo) = cluster().await;
    let serve = Serve::start(cluster, demo, Options::default()).await;
    let cert_path = serve.dir.path().join("cert.pem");
    let first = peer_certificate(serve.addr, &serve.config.backend).await;
    assert_eq!(first, certificate_file(&cert_path));

    let old = serve.session("readonly", "olga").await;
    let old_role = session_user(&old).await;
    assert!(serve
        .connect("added", serve.token("pia").expose())
        .await
        .is_err());

    // A new certificate and a new template, then SIGHUP.
    let fresh = tempfile::tempdir().expect("temp dir");
    common::write_self_signed_cert(fresh.path());
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(fresh.path().join(file), serve.dir.path().join(file)).expect("copy");
    }
    let second = certificate_file(&cert_path);
    assert_ne!(first, second, "two self-signed certificates differ");
    std::fs::write(
        serve.config_path(),
        format!("{}\n{ADDED}", serve.config_text),
    )
    .expect("write config");
    serve.hangup();
    let swapped = wait_until(WAIT, || async {
        peer_certificate(serve.addr, &serve.config.backend).await == second
    })
    .await;
    assert!(
        swapped,
        "new clients still see the old certificate:\n{}",
        serve.log()
    );
    let metrics = serve.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "rolemint_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );

    // The old session runs on, as the same role.
    assert_eq!(session_user(&old).await, old_role);
    // The added template takes sessions, minted into rolemint_managed.
    let added = serve.session("added", "pia").await;
    let added_role = session_user(&added).await;
    let managed: bool = serve
        .superuser()
        .await
        .query_one(
            "SELECT pg_catalog.pg_has_role($1, 'rolemint_managed', 'MEMBER')",
            &[&added_role],
        )
        .await
        .expect("membership")
        .get(0);
    assert!(managed && added_role.contains("-added-"), "{added_role}");

    // A config that does not parse: refused, counted, the running one stays.
    std::fs::write(serve.config_path(), "[proxy\nlisten = ").expect("write config");
    serve.hangup();
    let counted = wait_until(WAIT, || async {
        sample(
            &serve.metrics().await,
            "rolemint_config_reloads_total",
            &[("result", "failed")],
        ) == 1.0
    })
    .await;
    assert!(counted, "{}", serve.metrics().await);
    assert!(
        serve.log().contains("config reload refused"),
        "{}",
        serve.log()
    );
    let again = serve.session("added", "quinn").await;
    assert_eq!(session_user(&old).await, old_role);
    assert_eq!(session_user(&added).await, added_role);
    assert_eq!(
        peer_certificate(serve.addr, &serve.config.backend).await,
        second
    );
    drop((old, added, again));
    let gone = wait_until(WAIT, || async { !serve.role_exists(&old_role).await }).await;
    assert!(gone, "{old_role} was not revoked");
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tries_every_issuer_and_warns_about_an_owner_the_admin_cannot_use() {
    let (cluster, demo) = cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    common::write_self_signed_cert(dir.path());
    // Nothing listens there: the JWKS fetch fails at once.
    let closed = free_port();
    let extra = format!(
        r#"
[[auth.issuers]]
name = "unreachable"
issuer = "https://idp.test"
audiences = ["rolemint"]
algorithms = ["RS256"]
jwks_url = "https://127.0.0.1:{closed}/jwks"

[roles.handed]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "1h"
owner = "no_such_owner"
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
]
"#
    );
    let text = common::config_toml(
        &cluster,
        &demo,
        &Options {
            extra_toml: extra,
            ..Options::default()
        },
    );
    let path = dir.path().join("rolemint.toml");
    std::fs::write(&path, text).expect("write config");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .expect("rolemint check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok    issuer local: keys loaded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  issuer unreachable: GET https://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warn  template handed: owner \"no_such_owner\" does not exist"),
        "{stdout}"
    );
    // The role does exist once created, and the admin is not a member yet.
    let su = connect_owned(cluster.superuser_conn_string("appdb"))
        .await
        .expect("superuser connects");
    su.batch_execute("CREATE ROLE no_such_owner NOLOGIN")
        .await
        .expect("create the owner");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolemint"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .expect("rolemint check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "warn  template handed: the admin cannot REASSIGN OWNED to owner \"no_such_owner\": \
             GRANT \"no_such_owner\" TO \"{}\";",
            demo.admin_user
        )),
        "{stdout}"
    );
}

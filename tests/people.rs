//! A person's login, against a real OpenID Connect provider: `oidc-provider`
//! (Node.js) with the device flow and PKCE, its own sign-in pages filled in
//! by `tests/oidc/browser.py` as a person would, and `rolemint login`,
//! `status`, `psql`, `env`, `logout` as the person runs them.
//!
//! Needs `node`, the provider's package (`ROLEMINT_TEST_OIDC_PROVIDER`
//! names its `node_modules`, as `.ci/oidc-provider` installs it) and a
//! Python with `requests` (`ROLEMINT_TEST_PYTHON`); skipped with a notice
//! when either variable is unset.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{output_text, Harness, ServeProcess};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

struct Provider {
    _child: Child,
    issuer: String,
    ca: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn tools() -> Option<(String, String)> {
    let modules = std::env::var("ROLEMINT_TEST_OIDC_PROVIDER").ok();
    let python = std::env::var("ROLEMINT_TEST_PYTHON").ok();
    match (modules, python) {
        (Some(m), Some(p)) => Some((m, p)),
        _ => {
            eprintln!(
                "ROLEMINT_TEST_OIDC_PROVIDER or ROLEMINT_TEST_PYTHON is unset: \
                 skipping the login tests (.ci/run sets both)"
            );
            None
        }
    }
}

/// Starts oidc-provider over HTTPS with a certificate of its own.
async fn provider(modules: &str, dir: &Path) -> Provider {
    let (cert, key) = rolemint::cli::dev::write_self_signed_cert(dir).expect("provider cert");
    let port = free_port();
    let mut child = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oidc/provider.mjs"
        ))
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .env("OIDC_PROVIDER_MODULES", modules)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("provider.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the provider starts within 30 s")
        .expect("provider stdout");
    let issuer = ready
        .as_deref()
        .and_then(|l| l.strip_prefix("ready "))
        .unwrap_or_else(|| panic!("provider said {ready:?}"))
        .to_owned();
    // The provider keeps writing notices to stdout: drained, or its next
    // write fails with EPIPE and ends it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Provider {
        _child: child,
        issuer,
        ca: cert,
    }
}

/// rolemint serve with `corp` (the provider) as an issuer and `[login]`.
async fn serve(h: &Harness, p: &Provider, admin_port: u16) -> ServeProcess {
    let extra = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"
tls_cert = "cert.pem"
tls_key = "key.pem"

[login]
issuer = "corp"
client_id = "rolemint-cli"
scopes = ["openid", "offline_access", "groups"]
proxy_ca_file = "cert.pem"

[[auth.issuers]]
name = "corp"
issuer = "{issuer}"
audiences = ["rolemint-cli"]
algorithms = ["RS256"]
discovery = true
jwks_ca_file = "{ca}"
identity_claim = "sub"
groups_claim = "groups"

[roles.oncall]
databases = ["appdb"]
allow_groups = ["corp:oncall"]
default_ttl = "30m"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_read TO \"{{{{name}}}}\"",
]

[roles.dba]
databases = ["appdb"]
allow_groups = ["corp:dba"]
default_ttl = "30m"
max_ttl = "1h"
approval = {{ approver_groups = ["corp:dba"], max_duration = "1h" }}
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_owner TO \"{{{{name}}}}\"",
]
"#,
        issuer = p.issuer,
        ca = p.ca.display(),
    );
    h.spawn_serve(&extra, &[]).await
}

/// `rolemint ARGS` with the person's config directory.
fn rolemint(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rolemint"));
    cmd.args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .kill_on_drop(true);
    cmd
}

/// Runs `rolemint login ARGS`, hands the URL (and code) it prints to the
/// "browser" signing in as `login`, and waits for the login to finish.
async fn log_in(home: &Path, args: &[&str], ca: &Path, python: &str, login: &str) -> String {
    let mut child = rolemint(home, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rolemint login starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut said = String::new();
    let (mut url, mut code) = (None, None);
    while url.is_none() || (args.contains(&"--device") && code.is_none()) {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("rolemint login prints where to sign in")
            .expect("stderr")
            .unwrap_or_else(|| panic!("rolemint login ended early:\n{said}"));
        said.push_str(&line);
        said.push('\n');
        if let Some(u) = line.strip_prefix("To sign in, open ") {
            url = Some(u.to_owned());
        }
        if let Some(c) = line.strip_prefix("and enter the code ") {
            code = Some(c.to_owned());
        }
    }
    let url = url.expect("a URL");
    let mut browser = Command::new(python);
    browser
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oidc/browser.py"
        ))
        .arg(ca)
        .arg(&url)
        .arg(login);
    if let Some(code) = &code {
        browser.arg(code);
    }
    let out = browser.output().await.expect("browser.py runs");
    assert!(
        out.status.success(),
        "signing in failed: {}\nprovider log:\n{}",
        output_text(&out),
        std::fs::read_to_string(ca.with_file_name("provider.log")).unwrap_or_default()
    );
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            said.push_str(&line);
            said.push('\n');
        }
        child.wait().await
    })
    .await
    .expect("rolemint login finishes once signed in")
    .expect("wait");
    assert!(status.success(), "rolemint login failed:\n{said}");
    said
}

async fn run(cmd: &mut Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("finishes within 60 s")
        .expect("runs")
}

fn credentials(home: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(home.join("rolemint/credentials.json")).expect("credentials");
    serde_json::from_str(&text).expect("JSON")
}

/// A provider, a proxy that signs people in at it, and a person's home.
struct World {
    h: Harness,
    dir: tempfile::TempDir,
    p: Provider,
    serve: ServeProcess,
    home: PathBuf,
    /// The admin listener's URL (`--proxy`), HTTPS.
    admin: String,
    /// The CA of the admin listener's certificate (`--ca-cert`).
    admin_ca: String,
    /// The provider's CA (`--issuer-ca-cert`).
    ca: String,
    python: String,
}

/// The [`World`] of a login test; `None` (skip) without the tools.
async fn world() -> Option<World> {
    let (modules, python) = tools()?;
    let h = Harness::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let p = provider(&modules, dir.path()).await;
    let admin_port = free_port();
    let serve = serve(&h, &p, admin_port).await;
    Some(World {
        home: dir.path().join("home"),
        admin: format!("https://127.0.0.1:{admin_port}"),
        admin_ca: serve.dir().join("cert.pem").display().to_string(),
        ca: p.ca.display().to_string(),
        h,
        dir,
        p,
        serve,
        python,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_with_the_device_flow_and_connects_with_one_command() {
    let Some(World {
        h,
        dir: _dir,
        p,
        serve: _serve,
        home,
        admin,
        admin_ca,
        ca: _,
        python,
    }) = world().await
    else {
        return;
    };

    // Nothing but the proxy (and the CA of its HTTPS, given once): the
    // provider's private CA comes from the proxy's login metadata.
    let said = log_in(
        &home,
        &[
            "login",
            "--proxy",
            &admin,
            "--device",
            "--ca-cert",
            &admin_ca,
        ],
        &p.ca,
        &python,
        "alice",
    )
    .await;

    // Kept private, one profile for this proxy, never printed.
    let path = home.join("rolemint/credentials.json");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path)
        .expect("credentials")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(home.join("rolemint"))
        .expect("config dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "the config directory is private");
    let creds = credentials(&home);
    let profile = &creds["profiles"][&admin];
    let id_token = profile["id_token"]
        .as_str()
        .expect("an ID token")
        .to_owned();
    assert!(
        profile["refresh_token"].is_string(),
        "offline_access gave a refresh token"
    );
    assert!(!said.contains(&id_token), "the token was printed:\n{said}");

    // status: who, and what the proxy's own policy lets alice use.
    let out = run(&mut rolemint(&home, &["status"])).await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("identity   alice") && text.contains("issuer     corp"),
        "{text}"
    );
    assert!(
        text.contains("oncall") && text.contains("readonly"),
        "{text}"
    );
    assert!(!text.contains("dba "), "alice is not in group dba:\n{text}");

    // psql as the template, over verify-full against the published CA; the
    // minted role is alice's (its lease comment names issuer and identity).
    // psql's flags follow the database as a person types them, no `--`.
    let psql = h.cluster.psql().display().to_string();
    let out = run(rolemint(
        &home,
        &[
            "psql",
            "oncall",
            "appdb",
            "-X",
            "-At",
            "-c",
            "SELECT current_user, shobj_description(r.oid, 'pg_authid'), \
         (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) \
         FROM pg_roles r WHERE r.rolname = current_user",
        ],
    )
    .env("ROLEMINT_PSQL", &psql))
    .await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let row = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!(fields.len(), 3, "{text}");
    assert_ne!(fields[0], "alice", "a minted role, not the person");
    assert!(
        fields[1].contains("alice") && fields[1].contains("corp"),
        "the lease comment names corp's alice: {row}"
    );
    let role = fields[0].to_owned();
    let su = h.superuser().await;
    let gone = common::wait_until(Duration::from_secs(10), || async {
        su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .expect("pg_roles")
            .is_none()
    })
    .await;
    assert!(gone, "role {role} outlived its psql session");

    // env, for scripts: no database named, the template's only one is used.
    let out = run(&mut rolemint(&home, &["env", "readonly"])).await;
    let exports = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(exports.contains("export PGDATABASE='appdb'"), "{exports}");
    assert!(
        exports.contains("export PGSSLMODE='verify-full'"),
        "{exports}"
    );
    let script = format!("{exports}\n{psql} -X -At -c 'SELECT 42'");
    let out = run(Command::new("sh").arg("-c").arg(&script)).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        output_text(&out)
    );

    // A token past its time is refreshed with the refresh token, silently.
    let mut creds = credentials(&home);
    creds["profiles"][&admin]["expires_at"] = 0.into();
    std::fs::write(&path, creds.to_string()).expect("rewrite");
    let out = run(&mut rolemint(&home, &["status"])).await;
    assert!(out.status.success(), "{}", output_text(&out));
    // Only a refresh writes the profile back, with the new token's `exp`.
    let expires_at = credentials(&home)["profiles"][&admin]["expires_at"]
        .as_u64()
        .expect("expires_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        expires_at > now + 60,
        "the token was refreshed: exp {expires_at}, now {now}"
    );

    // logout: the profile is gone, and so is the refresh token at the
    // provider (a refresh with it is refused).
    let old_refresh = credentials(&home)["profiles"][&admin]["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let out = run(&mut rolemint(&home, &["logout"])).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(credentials(&home)["profiles"].get(&admin).is_none());
    let refused = reqwest_refresh(&p, &old_refresh).await;
    assert!(refused.contains("invalid_grant"), "{refused}");
    let out = run(&mut rolemint(&home, &["status", "--proxy", &admin])).await;
    assert!(!out.status.success());
}

/// A refresh grant sent straight to the provider: its answer's text.
async fn reqwest_refresh(p: &Provider, refresh_token: &str) -> String {
    let pem = std::fs::read(&p.ca).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    client
        .post(format!("{}/token", p.issuer))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", "rolemint-cli"),
        ])
        .send()
        .await
        .expect("token endpoint")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_in_a_browser_with_pkce_and_sees_their_groups_templates() {
    let Some(World {
        // Bound, not dropped: it owns the cluster.
        h: _h,
        dir: _dir,
        p,
        serve: _serve,
        home,
        admin,
        admin_ca,
        ca,
        python,
    }) = world().await
    else {
        return;
    };
    log_in(
        &home,
        &[
            "login",
            "--proxy",
            &admin,
            "--ca-cert",
            &admin_ca,
            "--browser",
            "--no-open",
            "--issuer-ca-cert",
            &ca,
        ],
        &p.ca,
        &python,
        "bob",
    )
    .await;
    let out = run(&mut rolemint(&home, &["status"])).await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("identity   bob") && text.contains("dba"),
        "{text}"
    );
    // dba needs an approved request first: status says so, not only that
    // bob's groups allow it.
    assert!(
        text.lines()
            .any(|l| l.contains("dba") && l.contains("rolemint request create dba")),
        "{text}"
    );

    // The connect string names everything but the token.
    let out = run(&mut rolemint(&home, &["connect-string", "dba"])).await;
    let dsn = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dsn.contains("user=dba dbname=appdb sslmode=verify-full"),
        "{dsn}"
    );
    assert!(!dsn.contains("password"), "{dsn}");
    let creds = credentials(&home);
    assert!(creds["profiles"][&admin]["id_token"].is_string());
    // offline_access in the code flow too: a refresh token, so the next
    // commands refresh silently rather than send bob to the browser again.
    assert!(
        creds["profiles"][&admin]["refresh_token"].is_string(),
        "no refresh token from the code flow"
    );

    // The well-known document is public; whoami is not.
    let pem = std::fs::read(&admin_ca).expect("admin CA");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let meta: serde_json::Value = http
        .get(format!("{admin}/.well-known/rolemint-login"))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("JSON");
    assert_eq!(meta["issuer"], p.issuer.as_str());
    assert_eq!(meta["client_id"], "rolemint-cli");
    assert!(meta["proxy_ca_pem"]
        .as_str()
        .is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
    let status = http
        .get(format!("{admin}/v1/rolemint/whoami"))
        .send()
        .await
        .expect("whoami")
        .status();
    assert_eq!(status, 403);
}

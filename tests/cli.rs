//! The binary as a user runs it: `token`, `check`, `dev`, `login`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rolemint::cli::dev::cluster::{self, ClusterOptions, Demo, TempCluster};

const ROLEMINT: &str = env!("CARGO_BIN_EXE_rolemint");

/// A `serve` config for `cluster`, with `extra` appended, written to `dir`.
fn write_config(dir: &Path, cluster: &TempCluster, demo: &Demo, extra: &str) -> std::path::PathBuf {
    common::write_self_signed_cert(dir);
    let options = common::Options {
        extra_toml: extra.to_owned(),
        ..common::Options::default()
    };
    let path = dir.join("rolemint.toml");
    std::fs::write(&path, common::config_toml(cluster, demo, &options)).unwrap();
    path
}

fn cluster() -> (TempCluster, Demo) {
    let cluster = TempCluster::start(ClusterOptions::default()).expect("start PostgreSQL");
    let demo = cluster::provision_demo(&cluster).expect("demo");
    (cluster, demo)
}

/// `ROLEMINT_CONFIG` exported (as for `leases` and `check`) does not stop
/// the kinds of token that need no config: the bootstrap's `token
/// --operator` among them.
#[test]
fn token_operator_static_and_key_run_with_rolemint_config_exported() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keygen = Command::new(ROLEMINT)
        .args(["keygen", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let key = keys.join("ed25519.key.pem");
    let key = key.to_str().unwrap();
    for args in [
        vec!["token", "--operator"],
        vec!["token", "--static", "--sub", "ci"],
        vec!["token", "--key", key, "--sub", "bob"],
    ] {
        let out = Command::new(ROLEMINT)
            .args(&args)
            .env("ROLEMINT_CONFIG", dir.path().join("rolemint.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} with ROLEMINT_CONFIG set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn token_prints_a_verifiable_token_on_its_last_line() {
    let (cluster, demo) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &cluster, &demo, "");
    let out = Command::new(ROLEMINT)
        .args(["token", "--config"])
        .arg(&config)
        .args(["--sub", "alice", "--ttl", "5m", "--groups", "dev,ops"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().expect("a line");
    let config = rolemint::config::Config::load(&config).unwrap();
    let verifier = rolemint::auth::identity::Verifier::from_config(&config.auth).unwrap();
    let identity = verifier.verify(token).expect("the printed token verifies");
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.groups, vec!["dev".to_string(), "ops".to_string()]);
}

#[test]
fn check_passes_on_a_working_setup_and_names_what_is_wrong_otherwise() {
    let (cluster, demo) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &cluster, &demo, "");
    let out = Command::new(ROLEMINT)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("template readonly in database appdb: dry-run mint"),
        "{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // A template granting a role that does not exist fails here, not at
    // every client's login; and the dry run left no role behind.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        bad_dir.path(),
        &cluster,
        &demo,
        r#"
[roles.typo]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_reader TO \"{{name}}\"",
]
"#,
    );
    let out = Command::new(ROLEMINT)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL  template typo in database appdb") && stdout.contains("app_reader"),
        "{stdout}"
    );
    let roles = cluster
        .psql_as_superuser(
            "appdb",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'",
        )
        .unwrap();
    assert_eq!(roles.trim(), "0", "the dry run left a role");

    // A config error is reported before anything is contacted.
    std::fs::write(dir.path().join("broken.toml"), "[proxy]\nlisten = 1\n").unwrap();
    let out = Command::new(ROLEMINT)
        .args(["check", "--config"])
        .arg(dir.path().join("broken.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.toml"));

    // [admin] and [audit]: a listener with an operator hash passes; an audit
    // file in a directory that does not exist fails, by name.
    let admin_dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n\n[audit]\npath = \"missing/audit.jsonl\"\n",
        "ab".repeat(32)
    );
    let config = write_config(admin_dir.path(), &cluster, &demo, &extra);
    let out = Command::new(ROLEMINT)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok    admin listener: http://127.0.0.1:0 (loopback)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    admin operator token: SHA-256 configured"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  audit log: ") && stdout.contains("missing/audit.jsonl: directory"),
        "{stdout}"
    );
    std::fs::create_dir(admin_dir.path().join("missing")).unwrap();
    let out = Command::new(ROLEMINT)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("audit.jsonl is writable"), "{stdout}");
    assert!(
        !admin_dir.path().join("missing/audit.jsonl").exists(),
        "check created the audit file"
    );
}

/// Runs `rolemint check`; (success, stdout).
fn check(config: &Path) -> (bool, String) {
    let out = Command::new(ROLEMINT)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// PostgreSQL 16 lets a CREATEROLE admin grant only roles it holds WITH
/// ADMIN OPTION. A marker role a superuser created beforehand and a role a
/// template grants, neither granted to the admin: on 16+ `rolemint check`
/// fails and names the exact statement for each; after running them it
/// passes. On 14 and 15 CREATEROLE is enough and check passes as it is.
#[test]
fn check_names_the_admin_option_a_server_16_needs_and_the_statement_that_adds_it() {
    let (cluster, demo) = cluster();
    cluster
        .psql_as_superuser(
            "postgres",
            "CREATE ROLE rolemint_direct NOLOGIN; CREATE ROLE app_extra NOLOGIN;",
        )
        .unwrap();
    let version: u32 = cluster
        .psql_as_superuser("postgres", "SHOW server_version_num")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &cluster,
        &demo,
        r#"
[roles.extra]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_extra TO \"{{name}}\"",
]
"#,
    );
    let marker_fix = r#"GRANT "rolemint_direct" TO "rolemint_admin" WITH ADMIN OPTION;"#;
    let grant_fix = r#"GRANT "app_extra" TO "rolemint_admin" WITH ADMIN OPTION;"#;
    let (ok, stdout) = check(&config);
    eprintln!("{stdout}");
    if version < 160_000 {
        assert!(ok, "{version}: {stdout}");
        assert!(!stdout.contains("ADMIN OPTION"), "{version}: {stdout}");
        return;
    }
    assert!(!ok, "{version}: {stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 2, "{stdout}");
    assert!(
        fails[0].contains("marker role \"rolemint_direct\"") && fails[0].ends_with(marker_fix),
        "{stdout}"
    );
    assert!(
        fails[1].starts_with("FAIL  template extra in database appdb")
            && fails[1].ends_with(grant_fix),
        "{stdout}"
    );
    // The statements, as check printed them, are the whole fix.
    cluster
        .psql_as_superuser("postgres", &format!("{marker_fix} {grant_fix}"))
        .unwrap();
    let (ok, stdout) = check(&config);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("ok    template extra in database appdb: dry-run mint"),
        "{stdout}"
    );
}

/// rolemint keeps what the Vault API writes in its schema `rolemint` of
/// the admin database: `rolemint check` says whether the admin can create
/// it (or use it), and names the GRANT when it cannot.
#[test]
fn check_names_the_grant_the_store_schema_needs() {
    let (cluster, demo) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &cluster, &demo, "");
    let (ok, stdout) = check(&config);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("ok    store: schema rolemint will be created in database postgres"),
        "{stdout}"
    );
    cluster
        .psql_as_superuser(
            "postgres",
            &format!(
                "REVOKE CREATE ON DATABASE postgres FROM {}",
                demo.admin_user
            ),
        )
        .unwrap();
    let (ok, stdout) = check(&config);
    assert!(!ok, "{stdout}");
    let fail = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  store:"))
        .unwrap_or_else(|| panic!("no store failure:\n{stdout}"));
    assert!(
        fail.contains("GRANT CREATE ON DATABASE postgres TO <admin_user>"),
        "{fail}"
    );
    // A schema a DBA created and handed over is enough.
    cluster
        .psql_as_superuser(
            "postgres",
            &format!("CREATE SCHEMA rolemint AUTHORIZATION {}", demo.admin_user),
        )
        .unwrap();
    let (ok, stdout) = check(&config);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("ok    store: schema rolemint in database postgres"),
        "{stdout}"
    );
}

/// Runs a pasted command line with `sh -c`; its stdout, after checking it
/// succeeded.
fn shell(line: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{line}\n{stdout}{stderr}");
    stdout
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn dev_prints_working_command_lines_and_cleans_up_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // Below the temp dir so that the postgres user can reach it when root.
    let dev_dir = dir.path().join("dev");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut child = Command::new(ROLEMINT)
        .args(["dev", "--port", "0", "--sub", "dana", "--dir"])
        .arg(&dev_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut psql_line = None;
    let mut pgbench_line = None;
    let (mut admin_addr, mut admin_token) = (None, None);
    let mut vault_lines: Vec<String> = Vec::new();
    while psql_line.is_none()
        || pgbench_line.is_none()
        || admin_addr.is_none()
        || admin_token.is_none()
        || vault_lines.len() < 3
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("rolemint dev printed its command lines");
        let line = line.trim().to_owned();
        if line.starts_with("psql ") && psql_line.is_none() {
            psql_line = Some(line);
        } else if line.contains("pgbench ") {
            pgbench_line = Some(line);
        } else if let Some(addr) = line.strip_prefix("export ROLEMINT_ADDR=") {
            admin_addr = Some(addr.to_owned());
        } else if let Some(token) = line.strip_prefix("export ROLEMINT_TOKEN=") {
            admin_token = Some(token.to_owned());
        } else if line.starts_with("export VAULT_") || line.contains("/v1/database/creds/") {
            vault_lines.push(line);
        }
    }
    let psql_line = psql_line.unwrap();
    let pgbench_line = pgbench_line.unwrap();

    // The psql line works as pasted (through a shell, as a user would).
    let text = shell(&format!(
        "{psql_line} -XAt -c 'SELECT current_user, count(*) FROM accounts GROUP BY 1'"
    ));
    assert!(text.starts_with("v-dana-readonly-"), "{text}");

    // The pgbench line too, shortened.
    let text = shell(&pgbench_line.replace("-T 10", "-T 2"));
    assert!(text.contains("tps = "), "{text}");

    // The admin listener is on, and the printed operator token is accepted.
    let (admin_addr, admin_token) = (admin_addr.unwrap(), admin_token.unwrap());
    let health = Command::new(ROLEMINT)
        .args(["health", "--ready", "--addr", &admin_addr])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let leases = Command::new(ROLEMINT)
        .args(["leases", "list"])
        .env("ROLEMINT_ADDR", &admin_addr)
        .env("ROLEMINT_TOKEN", &admin_token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&leases.stderr);
    assert!(!stderr.contains("permission denied"), "{stderr}");
    let refused = Command::new(ROLEMINT)
        .args(["leases", "list"])
        .env("ROLEMINT_ADDR", &admin_addr)
        .env("ROLEMINT_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("permission denied"));

    // The Vault lines work as pasted: credentials for a direct login.
    let text = shell(&vault_lines.join("\n"));
    let creds: serde_json::Value = serde_json::from_str(&text).expect(&text);
    assert!(
        creds["data"]["username"]
            .as_str()
            .is_some_and(|u| u.starts_with("v-dana-readonly-")),
        "{text}"
    );

    // Ctrl-C: everything it started stops.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rolemint dev did not exit on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let needle = dev_dir.to_string_lossy().into_owned();
    let start = Instant::now();
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "left running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dev_dir.join("rolemint.toml").exists(),
        "--dir keeps the config"
    );
}

#[test]
fn dev_without_postgresql_binaries_says_how_to_get_them() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(ROLEMINT)
        .args(["dev", "--port", "0"])
        .env("ROLEMINT_PG_BIN", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ROLEMINT_PG_BIN") && stderr.contains("initdb"),
        "{stderr}"
    );
    // And the message for a machine with none at all names the packages.
    let message = rolemint::cli::dev::cluster::ClusterError::not_installed().to_string();
    assert!(
        message.contains("apt-get install -y postgresql"),
        "{message}"
    );
}

#[test]
fn login_at_a_bare_host_port_of_a_plain_http_listener_says_to_write_http() {
    use std::io::{Read as _, Write as _};
    // A plain-HTTP "admin listener": whatever comes, a 400 in clear text.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = conn.read(&mut [0u8; 1024]);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(ROLEMINT)
        .args(["login", "--proxy", &format!("127.0.0.1:{port}"), "--device"])
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--proxy http://127.0.0.1:{port}")),
        "{stderr}"
    );
}

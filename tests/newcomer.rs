//! The front door as a newcomer finds it: the binary run as a user runs it
//! (a closed pipe, a mistyped lease id, flags where people type them, a
//! SIGHUP to `dev`), and what a refused client is told.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{captured_log, sqlstate, Harness, Options};

const ROLEMINT: &str = env!("CARGO_BIN_EXE_rolemint");
const OPERATOR_TOKEN: &str = "rmo_newcomer-test-operator-token";

fn rolemint(args: &[&str]) -> Output {
    Command::new(ROLEMINT)
        .args(args)
        .env_remove("ROLEMINT_CONFIG")
        .env_remove("ROLEMINT_ADDR")
        .env_remove("ROLEMINT_TOKEN")
        .output()
        .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A config that loads without any file or backend: enough for `check`
/// to start printing.
fn minimal_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("rolemint.toml");
    std::fs::write(
        &path,
        format!(
            r#"[proxy]
listen = "127.0.0.1:0"
allow_plaintext = true

[backend]
host = "127.0.0.1"
port = 1
admin_user = "rolemint_admin"
admin_password = "not-used"
{extra}
[roles.readonly]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
]
"#
        ),
    )
    .unwrap();
    path
}

/// `[admin]` with a known operator token (the Vault door is on with it).
fn admin_toml() -> String {
    format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\noperator_token_sha256 = \"{}\"\n",
        rolemint::control::auth::sha256_hex(OPERATOR_TOKEN)
    )
}

// ---------------------------------------------------------------------------
// 1. `rolemint dev` reloads on SIGHUP (and the lines it prints work).

/// A running `rolemint dev` and the lines it printed.
struct Dev {
    child: Child,
    lines: Receiver<String>,
    printed: Vec<String>,
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let mut child = Command::new(ROLEMINT)
            .args(["dev", "--port", "0", "--sub", "erin", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            child,
            lines,
            printed: Vec::new(),
        };
        // The Vault banner is the last one.
        dev.wait_for_line(|l| l.contains("user=USERNAME password=PASSWORD"));
        dev
    }

    fn wait_for_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "rolemint dev did not print it; so far:\n{:#?}",
                    self.printed
                )
            });
            let line = line.trim().to_owned();
            self.printed.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    fn line(&self, prefix: &str) -> String {
        self.printed
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in {:#?}", self.printed))
            .clone()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Ctrl-C, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGINT);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "dev did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs a shell line; its output.
fn shell(line: &str) -> Output {
    Command::new("sh").arg("-c").arg(line).output().unwrap()
}

#[test]
fn dev_reloads_its_config_on_sighup_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    make_reachable(dir.path());
    let dev_dir = dir.path().join("dev");
    let mut dev = Dev::start(&dev_dir);
    let psql = dev.line("psql ");
    let extra = psql.replace("user=readonly", "user=extra");
    let query = " -XAt -c 'SELECT current_user'";

    // Not there yet: the template is unknown.
    let before = shell(&format!("{extra}{query}"));
    assert!(!before.status.success(), "{}", text(&before.stdout));
    assert!(
        text(&before.stderr).contains("\"extra\" does not exist"),
        "{}",
        text(&before.stderr)
    );

    // Edit the config, as its header invites, and send SIGHUP.
    let config = dev_dir.join("rolemint.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(
        r#"
[roles.extra]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#,
    );
    std::fs::write(&config, toml).unwrap();
    dev.signal(nix::sys::signal::Signal::SIGHUP);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            dev.child.try_wait().unwrap().is_none(),
            "rolemint dev exited on SIGHUP"
        );
        let after = shell(&format!("{extra}{query}"));
        if after.status.success() {
            assert!(text(&after.stdout).starts_with("v-erin-extra-"));
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&after.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The banner says how, and what Ctrl-C does with which leases.
    let banner = dev.printed.join("\n");
    assert!(banner.contains("kill -HUP "), "{banner}");
    assert!(
        banner.contains("credential leases are left to\nexpire"),
        "{banner}"
    );
    assert!(dev.stop().success());
}

/// Lets the `postgres` user (when the tests run as root) reach below `dir`.
fn make_reachable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------
// 3. Credentials from the Vault door: where to connect, said twice.

#[test]
fn dev_says_where_credential_leases_connect() {
    let dir = tempfile::tempdir().unwrap();
    make_reachable(dir.path());
    let dev = Dev::start(&dir.path().join("dev"));
    let vault: Vec<String> = dev
        .printed
        .iter()
        .filter(|l| l.starts_with("export VAULT_") || l.contains("/v1/database/creds/"))
        .cloned()
        .collect();
    let out = shell(&vault.join("\n"));
    let creds: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stdout)));
    let user = creds["data"]["username"].as_str().unwrap();
    let password = creds["data"]["password"].as_str().unwrap();

    // The printed direct line works with them.
    let direct = dev
        .printed
        .iter()
        .find(|l| l.contains("user=USERNAME"))
        .unwrap()
        .replace("USERNAME", user)
        .replace("PASSWORD", password);
    let out = shell(&format!("{direct} -XAt -c 'SELECT current_user'"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), user);

    // On the proxy's port they are refused with the way to go.
    let proxy = dev
        .line("psql ")
        .replace("user=readonly", &format!("user={user}"))
        .split(" password=")
        .next()
        .unwrap()
        .to_owned();
    let out = shell(&format!(
        "{proxy} password={password} sslmode=require\" -XAt -c 'SELECT 1'"
    ));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "this is a credential lease's password; connect to PostgreSQL directly at 127.0.0.1:"
        ),
        "{stderr}"
    );
    assert!(dev.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_password_on_the_proxy_door_is_told_where_to_connect() {
    let h = Harness::with(Options {
        extra_toml: admin_toml(),
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.unwrap();
    let token = h.token("frank");
    let creds: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{admin}/v1/database/creds/readonly"))
        .header("X-Vault-Token", token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = creds["data"]["username"].as_str().unwrap();
    let password = creds["data"]["password"].as_str().unwrap();

    let e = h.connect(user, "appdb", password).await.err().unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    let message = e.as_db_error().unwrap().message().to_owned();
    let direct = format!("127.0.0.1:{}", h.cluster.port());
    assert!(
        message.contains("credential lease's password") && message.contains(&direct),
        "{message}"
    );
    assert!(captured_log().contains("credential lease's password"));

    // Any other user name with a non-token password: the plain answer.
    let e = h
        .connect("readonly", "appdb", password)
        .await
        .err()
        .unwrap();
    let message = e.as_db_error().unwrap().message().to_owned();
    assert_eq!(
        message,
        "password authentication failed: invalid or expired token"
    );
}

// ---------------------------------------------------------------------------
// 4. A rate-limited client is told so.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_client_is_told_so_and_when_to_retry() {
    let h = Harness::with(Options {
        extra_toml: "\n[auth.failure_rate]\nburst = 2\nper_minute = 1\n".into(),
        ..Options::default()
    })
    .await;
    for _ in 0..2 {
        let e = h.connect("readonly", "appdb", "bad").await.err().unwrap();
        let message = e.as_db_error().unwrap().message().to_owned();
        assert!(message.contains("invalid or expired token"), "{message}");
    }
    // A good token now: refused without being looked at, and told why.
    let good = h.token("gina");
    let e = h
        .connect("readonly", "appdb", good.expose())
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    let message = e.as_db_error().unwrap().message().to_owned();
    let secs: u64 = message
        .strip_prefix("too many failed attempts from this address; retry in ")
        .and_then(|rest| rest.strip_suffix(" s"))
        .unwrap_or_else(|| panic!("{message}"))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{message}");
    assert!(h.managed_roles().await.is_empty());
}

// ---------------------------------------------------------------------------
// 2 and 7. `rolemint leases`: a wrong lease id, flags after the subcommand.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_lease_that_does_not_exist_fails_and_says_so() {
    let h = Harness::with(Options {
        extra_toml: admin_toml(),
        ..Options::default()
    })
    .await;
    let addr = format!("http://{}", h.admin_addr.unwrap());
    let leases = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(ROLEMINT)
            .arg("leases")
            .args(args)
            .env_remove("ROLEMINT_ADDR")
            .env_remove("ROLEMINT_TOKEN")
            .output()
            .await
            .unwrap();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let flags = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // After the subcommand, where people type them.
        v.extend(["--addr".into(), addr.clone()]);
        v.extend(["--token".into(), OPERATOR_TOKEN.into()]);
        v
    };

    let (ok, _, stderr) = leases(flags(&["revoke", "database/sessions/readonly/nope"])).await;
    assert!(!ok, "a missing lease was reported revoked");
    assert!(
        stderr.contains("no such lease: database/sessions/readonly/nope"),
        "{stderr}"
    );

    // A live one is revoked, and its session ended.
    let session = h.session("readonly", "hana").await;
    let (ok, table, stderr) = leases(flags(&["list", "--identity", "hana"])).await;
    assert!(ok, "{stderr}");
    let id = table
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{table}"))
        .to_owned();
    assert!(id.starts_with("database/sessions/readonly/"), "{table}");
    let (ok, stdout, stderr) = leases(flags(&["revoke", &id])).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), format!("revoked: {id}"));
    assert!(session.simple_query("SELECT 1").await.is_err());
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}

#[test]
fn flags_go_where_people_type_them_and_help_says_what_they_do() {
    // Global options of `leases`, after the subcommand: parsed (the
    // error is about the address, which has nothing listening).
    let out = rolemint(&[
        "leases",
        "list",
        "--addr",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--identity",
        "x",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");

    // `rotate-admin` takes -c and ROLEMINT_CONFIG like the others.
    let out = rolemint(&["rotate-admin", "-c", "/nonexistent/r.toml"]);
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/r.toml"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(ROLEMINT)
        .arg("rotate-admin")
        .env("ROLEMINT_CONFIG", "/nonexistent/r.toml")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/r.toml"),
        "{}",
        text(&out.stderr)
    );

    // `--ttl` is refused where it means nothing.
    let out = rolemint(&["token", "--operator", "--ttl", "1h"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );

    // Every argument has help text.
    let help = |args: &[&str]| text(&rolemint(args).stdout);
    let check = help(&["check", "--help"]);
    assert!(check.contains("The TOML config file to check"), "{check}");
    let list = help(&["leases", "list", "--help"]);
    assert!(
        list.contains("Only the leases of this identity")
            && list.contains("role template")
            && list.contains("in this database"),
        "{list}"
    );
    let revoke = help(&["leases", "revoke", "--help"]);
    assert!(revoke.contains("The lease id"), "{revoke}");
    let leases = help(&["leases", "--help"]);
    assert!(leases.contains("its own leases only"), "{leases}");
    let token = help(&["token", "--help"]);
    assert!(token.contains("auth.leeway"), "{token}");
}

// ---------------------------------------------------------------------------
// 5. `keygen` prints lines that paste into any config.

#[test]
fn keygen_prints_paths_that_work_from_any_config() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(ROLEMINT)
        .args(["keygen", "--out", "keys"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let block: String = stdout
        .lines()
        .skip_while(|l| *l != "[[auth.issuers]]")
        .take_while(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("jwks_file = \"/"), "{stdout}");

    // Pasted into a config elsewhere, it loads, and verifies a token
    // signed as the printed line says.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = minimal_config(elsewhere.path(), &format!("\n[auth]\n{block}"));
    let config = rolemint::config::Config::load(&config).unwrap();
    let verifier = rolemint::auth::identity::Verifier::from_config(&config.auth)
        .expect("the printed jwks_file loads");
    let sign = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# Sign: "))
        .unwrap()
        .replace("NAME", "ivy");
    let signed = Command::new("sh")
        .arg("-c")
        .arg(sign.replacen("rolemint", ROLEMINT, 1))
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let token = text(&signed.stdout);
    let identity = verifier.verify(token.trim()).unwrap();
    assert_eq!(identity.subject, "ivy");
}

// ---------------------------------------------------------------------------
// 6. A closed pipe ends a command quietly.

#[test]
fn every_printing_command_ends_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(
        dir.path(),
        "\n[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
    );
    let config = config.to_str().unwrap();
    let keys = dir.path().join("keys");
    let keys = keys.to_str().unwrap();
    for args in [
        vec!["check", "--config", config],
        vec!["token", "--config", config, "--sub", "a"],
        vec!["token", "--static", "--sub", "a"],
        vec!["token", "--operator"],
        vec!["keygen", "--out", keys],
        vec!["--help"],
        vec!["leases", "--help"],
    ] {
        // The reader is gone before the first byte is written, as with
        // `| head -0`; every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(ROLEMINT)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc_sigpipe()),
            "{args:?}: {:?}",
            out.status
        );
    }
}

fn libc_sigpipe() -> i32 {
    nix::sys::signal::Signal::SIGPIPE as i32
}

// ---------------------------------------------------------------------------
// 8. Errors said once, and all of them.

#[test]
fn check_says_each_error_once_and_lists_every_failure() {
    let out = rolemint(&["check", "--config", "/nonexistent/nope.toml"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    // The example config names secret files this machine does not have:
    // every one of them is reported, not only the first.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rolemint.example.toml");
    let out = rolemint(&["check", "--config", example]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success());
    for file in [
        "/etc/rolemint/admin-password",
        "/etc/rolemint/hs256.key",
        "/etc/rolemint/cluster/secret",
    ] {
        assert!(
            stdout.contains(&format!("FAIL  config: cannot read {file}")),
            "{file} not reported:\n{stdout}"
        );
    }
    // And the checks that need no backend still ran.
    assert!(stdout.contains("client TLS"), "{stdout}");
}

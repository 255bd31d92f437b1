//! What the tests of the Vault-compatible door share: a harness with the
//! admin listener on, Python with hvac (`ROLEMINT_TEST_PYTHON`), a script
//! run with hvac, one HTTP request, a role's presence in `pg_roles`.

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::Value;

use super::{Harness, Options};

/// A harness with `extra_toml` (which turns the admin listener on), and
/// the admin listener's address.
pub async fn serve(extra_toml: String) -> (Harness, SocketAddr) {
    let h = Harness::with(Options {
        extra_toml,
        ..Options::default()
    })
    .await;
    let admin = h.admin_addr.expect("the admin listener is on");
    (h, admin)
}

/// The interpreter of `ROLEMINT_TEST_PYTHON`; `None` (and a notice that
/// `what` is skipped) when it is unset.
pub fn python(what: &str) -> Option<String> {
    match std::env::var("ROLEMINT_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!("ROLEMINT_TEST_PYTHON is unset: skipping {what}");
            None
        }
    }
}

/// What every hvac script starts with: `ADDR`, `DIR` (a scratch
/// directory), `root` (a client with the operator token), `client(token)`,
/// and `status(f)`: 200, 403 or 400 (printing `invalid=` the message).
const PRELUDE: &str = "import hvac, json, os, sys\n\
    ADDR = os.environ['VAULT_ADDR']\n\
    DIR = os.environ['DIR']\n\
    root = hvac.Client(url=ADDR, token=os.environ['OPERATOR'])\n\
    def client(token):\n    return hvac.Client(url=ADDR, token=token)\n\
    def status(f):\n    try:\n        f()\n        return 200\n\
    \x20   except hvac.exceptions.Forbidden:\n        return 403\n\
    \x20   except hvac.exceptions.InvalidRequest as e:\n        print('invalid=' + str(e).replace('\\n', ' '))\n        return 400\n";

/// Runs `script` after [`PRELUDE`] with `VAULT_ADDR`, `OPERATOR` and
/// `env` set; its stdout. Fails the test when the script fails.
pub async fn hvac(
    python: &str,
    admin: SocketAddr,
    operator: &str,
    script: &str,
    env: &[(&str, String)],
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.py");
    std::fs::write(&path, format!("{PRELUDE}{script}")).unwrap();
    let out = tokio::process::Command::new(python)
        .arg(&path)
        .env("VAULT_ADDR", format!("http://{admin}"))
        .env("OPERATOR", operator)
        .env("DIR", dir.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run python");
    let text = super::output_text(&out);
    assert!(out.status.success(), "hvac script failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `key=value` printed by a script: the value.
pub fn printed(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
        .to_owned()
}

/// Whether `role` is in `pg_roles`.
pub async fn role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// One request with reqwest, with `token` as `X-Vault-Token`: the status
/// and the JSON body (`Null` when empty).
pub async fn call(
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, json)
}

/// `[admin]` on `listen`, with `operator` as the operator token.
pub fn admin_table(listen: &str, operator: &str) -> String {
    format!(
        "\n[admin]\nlisten = \"{listen}\"\noperator_token_sha256 = \"{}\"\n",
        rolemint::control::auth::sha256_hex(operator)
    )
}

/// A template `[roles.NAME]` on `appdb` that grants `app_read`, with TTLs
/// of 1h (at most 2h) and the allow rules `allow` (TOML lines; empty: no
/// allow list opens it).
pub fn template_table(name: &str, allow: &str) -> String {
    format!(
        r#"
[roles.{name}]
databases = ["appdb"]
{allow}
default_ttl = "1h"
max_ttl = "2h"
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_read TO \"{{{{name}}}}\"",
]
"#
    )
}

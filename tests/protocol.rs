//! Protocol versions through the proxy: libpq 18 clients that ask for the
//! newest protocol (`max_protocol_version=latest`) connect and get an
//! answer they accept.
//!
//! The clients are psycopg 3 with its bundled libpq 18, from the interpreter
//! `ROLEMINT_TEST_PYTHON` names (`.ci/run` sets it up).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Harness;

/// The test interpreter, or `None` (and a notice) when it is unset.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("ROLEMINT_TEST_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists());
    if python.is_none() {
        eprintln!(
            "skipped: set ROLEMINT_TEST_PYTHON to a python with psycopg[binary]; .ci/run does"
        );
    }
    python
}

/// Runs `script` with `args`, the token in PGPASSWORD and `env` on top;
/// its combined output, after asserting it succeeded.
async fn run_python(
    python: &PathBuf,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    token: &str,
) -> String {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .env("PGPASSWORD", token)
        .env_remove("PGMAXPROTOCOLVERSION")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("python finished")
        .expect("python runs");
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// Connects, prints the libpq version, the negotiated protocol and who the
/// session runs as.
const CONNECT: &str = r#"
import sys, psycopg
from psycopg import pq
print("libpq", pq.version(), flush=True)
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    print("protocol", conn.pgconn.full_protocol_version, flush=True)
    row = conn.execute("SELECT current_user, pg_has_role(current_user, 'rolemint_managed', 'MEMBER')").fetchone()
    print("user", row[0], row[1], flush=True)
"#;

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line: {text}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_18_asking_for_the_latest_protocol_connects() {
    let Some(python) = python() else { return };
    let h = Harness::start().await;
    let token = h.token("alice");
    let base = format!(
        "host=127.0.0.1 port={} dbname=appdb user=readonly sslmode=require connect_timeout=10",
        h.addr.port()
    );
    // Once in the conninfo, once through the environment.
    let cases = [
        (format!("{base} max_protocol_version=latest"), vec![]),
        (base.clone(), vec![("PGMAXPROTOCOLVERSION", "latest")]),
    ];
    for (conninfo, env) in cases {
        let text = run_python(&python, CONNECT, &[&conninfo], &env, token.expose()).await;
        let libpq: u32 = line(&text, "libpq ").parse().expect("libpq version");
        assert!(libpq >= 180_000, "libpq {libpq} cannot ask for 3.2: {text}");
        let protocol: u32 = line(&text, "protocol ").parse().expect("protocol");
        assert!(protocol >= 30_000, "{text}");
        let user = line(&text, "user ");
        assert!(user.starts_with("v-alice-readonly-"), "{text}");
        assert!(user.ends_with(" True"), "not a managed role: {text}");
    }
    assert!(h
        .wait_no_managed_roles(Duration::from_secs(10))
        .await
        .is_empty());
}

/// `scripts/pg-matrix` names the major version it means to test
/// (`ROLEMINT_TEST_PG_MAJOR`): the harness's cluster must be that version,
/// so a matrix run never passes on the wrong server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_version_is_the_server_the_harness_starts() {
    let h = Harness::start().await;
    let su = h.superuser().await;
    let num: i32 = su
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("server_version_num {num}");
    assert!(num >= 140_000, "{num}");
    if let Ok(major) = std::env::var("ROLEMINT_TEST_PG_MAJOR") {
        assert_eq!(num / 10_000, major.parse::<i32>().unwrap(), "{num}");
    }
}

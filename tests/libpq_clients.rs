//! What libpq-based drivers see through rolemint, checked with psycopg 3:
//! the backend pid they are given is the backend's own, and a response
//! relayed over TLS reaches them whole, even with libpq 18.0, which polls
//! the socket and never looks inside OpenSSL's buffer.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{output_text, Harness};

/// The Python with psycopg[binary] that `.ci/run` sets up, or None (skip).
fn python(var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.exists());
    if found.is_none() {
        eprintln!("skipped: set {var} to a python with psycopg[binary]; .ci/run does");
    }
    found
}

/// Runs `script` with `args`, the token in PGPASSWORD, under a deadline so a
/// hang is a failure with a name, not a stuck suite.
async fn run(python: &PathBuf, script: &str, args: &[&str], token: &str) -> String {
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PGPASSWORD", token)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("the python client finished: a hang means a response stuck in the proxy")
        .expect("python runs");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

fn conninfo(h: &Harness, sslmode: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=appdb user=readwrite sslmode={sslmode} connect_timeout=10",
        h.addr.port()
    )
}

/// psycopg2's suite found this: a client filters its own NOTIFYs and joins
/// `pg_stat_activity` by the pid of BackendKeyData, so it must be the real
/// one, with and without `[cluster] secret`, over TLS and in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_pid_a_client_sees_is_the_backends_own() {
    let Some(python) = python("ROLEMINT_TEST_PYTHON") else {
        return;
    };
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
real = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
conn.execute("LISTEN rolemint_pid")
conn.execute("NOTIFY rolemint_pid, 'mine'")
note = next(conn.notifies(timeout=10, stop_after=1))
print("given", conn.info.backend_pid, "real", real, "notify", note.pid, flush=True)
assert conn.info.backend_pid == real == note.pid
"#;
    for cluster in [false, true] {
        let options = common::Options {
            extra_toml: if cluster {
                "[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\n".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        let h = Harness::with(options).await;
        let token = h.token("alice");
        for sslmode in ["require", "disable"] {
            let text = run(&python, script, &[&conninfo(&h, sslmode)], token.expose()).await;
            assert!(
                text.contains("given"),
                "cluster={cluster} {sslmode}: {text}"
            );
        }
    }
}

/// The shape of psycopg's own `test_copy_to_leaks` and `test_leak`: rows of
/// random sizes up to 40 KiB read back one at a time with COPY (text and
/// binary) and with plain SELECTs, over TLS. With 16 KiB TLS records
/// libpq 18.0 hung in the first few dozen iterations; `.ci/run` provides a
/// psycopg that bundles it (ROLEMINT_TEST_PYTHON_LIBPQ18_0), and the
/// current one is tried as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_of_any_size_reach_libpq_whole_over_tls() {
    let pythons: Vec<PathBuf> = ["ROLEMINT_TEST_PYTHON_LIBPQ18_0", "ROLEMINT_TEST_PYTHON"]
        .iter()
        .filter_map(|v| python(v))
        .collect();
    if pythons.is_empty() {
        return;
    }
    let script = r#"
import os, random, sys, psycopg
from psycopg import pq
rnd = random.Random(int(sys.argv[2]))
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("CREATE TEMP TABLE t (id int, a text, b bytea, c int8, d text)")
with conn.cursor() as cur:
    for i in range(200):
        cur.execute("INSERT INTO t VALUES (%s, %s, %s, %s, %s)",
                    (i, "x" * rnd.randint(0, 40000), os.urandom(rnd.randint(0, 20000)),
                     rnd.randint(-2**60, 2**60), "y" * rnd.randint(0, 3000)))
for it in range(150):
    n = rnd.randint(1, 200)
    with conn.cursor() as cur:
        if it % 2:
            fmt = rnd.choice(["text", "binary"])
            with cur.copy(f"COPY (SELECT * FROM t WHERE id < {n}) TO STDOUT (FORMAT {fmt})") as copy:
                if fmt == "binary":
                    copy.set_types(["int4", "text", "bytea", "int8", "text"])
                rows = sum(1 for _ in copy.rows())
        else:
            cur.execute("SELECT * FROM t WHERE id < %s", (n,))
            rows = 0
            while cur.fetchone() is not None:
                rows += 1
    assert rows == n, (it, rows, n)
print("libpq", pq.version(), "ok", flush=True)
"#;
    let h = Harness::start().await;
    let token = h.token("alice");
    for python in &pythons {
        for seed in ["1", "2", "3"] {
            let text = run(
                python,
                script,
                &[&conninfo(&h, "require"), seed],
                token.expose(),
            )
            .await;
            assert!(text.contains(" ok"), "{text}");
        }
    }
}

//! What a session ran: a template with `audit_queries = true` writes one
//! `session.statement` line per simple Query and per Parse, in order, with
//! no parameter value unless `audit_parameters = true`; with the kernel
//! splice on, such sessions stay in the user-space relay and are audited.
//! Real psql, pgbench -M extended and psycopg against a real PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{captured_log, output_text, wait_until, Harness, Options};
use serde_json::Value;

/// Two audited templates (readwrite's grants), and the audit file.
fn extra_toml(audit: &Path) -> String {
    let template = |name: &str, params: bool| {
        format!(
            r#"
[roles.{name}]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "1h"
audit_queries = true
audit_parameters = {params}
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_owner TO \"{{{{name}}}}\"",
  "ALTER ROLE \"{{{{name}}}}\" SET role = 'app_owner'",
]
"#
        )
    };
    format!(
        "{}{}\n[audit]\npath = \"{}\"\n",
        template("audited", false),
        template("audited_params", true),
        audit.display()
    )
}

struct Audited {
    h: Harness,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Audited {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = Harness::with(Options {
        kernel_splice: true,
        extra_toml: extra_toml(&audit),
        ..Options::default()
    })
    .await;
    Audited {
        h,
        audit,
        _dir: dir,
    }
}

impl Audited {
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
            .collect()
    }

    /// The `session.statement` lines of the sessions of `template`, once
    /// `count` of them are on disk (the writer is a thread).
    async fn statements(&self, template: &str, count: usize) -> Vec<Value> {
        let of_template = || {
            self.lines()
                .into_iter()
                .filter(|l| l["event"] == "session.statement" && l["template"] == template)
                .collect::<Vec<_>>()
        };
        wait_until(Duration::from_secs(10), || async {
            of_template().len() >= count
        })
        .await;
        of_template()
    }
}

fn texts(lines: &[Value]) -> Vec<(u64, String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["seq"].as_u64().unwrap(),
                l["kind"].as_str().unwrap().to_owned(),
                l["statement"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_statements_are_audited_in_order_even_with_the_kernel_splice_on() {
    let a = start().await;
    let token = a.h.token("alice");
    let psql = a.h.cluster.psql().to_owned();
    // Plaintext, where the kernel splice would take an unaudited session.
    let out =
        a.h.run_client(
            &psql,
            &[
                "-X",
                "-At",
                "-U",
                "audited",
                "-d",
                "appdb",
                "-c",
                "SELECT 1",
                "-c",
                "SELECT 'two'",
                "-c",
                "SELECT current_user",
            ],
            &token,
            "disable",
        )
        .await;
    assert!(out.status.success(), "{}", output_text(&out));
    let lines = a.statements("audited", 3).await;
    let seen: Vec<_> = texts(&lines)
        .into_iter()
        .filter(|(_, _, t)| {
            t.starts_with("SELECT 1") || t.contains("two") || t.contains("current_user")
        })
        .collect();
    assert_eq!(
        seen.iter()
            .map(|(_, k, t)| (k.as_str(), t.as_str()))
            .collect::<Vec<_>>(),
        [
            ("query", "SELECT 1"),
            ("query", "SELECT 'two'"),
            ("query", "SELECT current_user")
        ],
        "{lines:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in order: {seen:?}"
    );
    let first = &lines[0];
    assert_eq!(first["identity"], "alice");
    // The principal is (issuer, identity), as in lease.minted.
    let minted = a
        .lines()
        .into_iter()
        .find(|l| l["event"] == "lease.minted" && l["lease_id"] == first["lease_id"])
        .expect("the session's lease.minted line");
    assert!(first["issuer"].is_string(), "{first}");
    assert_eq!(first["issuer"], minted["issuer"]);
    assert_eq!(first["database"], "appdb");
    assert!(first["lease_id"]
        .as_str()
        .unwrap()
        .starts_with("database/sessions/audited/"));
    assert_eq!(first["truncated"], false);
    // The same config splices sessions that are not audited, where BPF is
    // permitted; the audited one never went to the kernel.
    let log = captured_log();
    let audited_lease = first["lease_id"].as_str().unwrap();
    assert!(
        !log.lines()
            .any(|l| l.contains("session spliced in the kernel") && l.contains(audited_lease)),
        "an audited session went to the kernel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_parses_are_audited_without_their_values() {
    let a = start().await;
    let token = a.h.token("bob");
    let pgbench = a.h.cluster.pgbench().to_owned();
    let out =
        a.h.run_client(
            &pgbench,
            &[
                "-n", "-S", "-M", "extended", "-t", "20", "-c", "1", "-U", "audited", "appdb",
            ],
            &token,
            "require",
        )
        .await;
    assert!(out.status.success(), "{}", output_text(&out));
    // pgbench's own queries (a session of its own) and one Parse per
    // transaction of the benchmark's session.
    let lines = a.statements("audited", 22).await;
    let selects: Vec<_> = texts(&lines)
        .into_iter()
        .filter(|(_, k, _)| k == "parse")
        .collect();
    assert_eq!(selects.len(), 20, "{lines:?}");
    assert!(selects
        .iter()
        .all(|(_, _, t)| t == "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"));
    assert!(selects.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(lines.iter().all(|l| l.get("params").is_none()), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_bind_values_appear_only_when_the_template_asks() {
    let Some(python) = std::env::var_os("ROLEMINT_TEST_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        eprintln!(
            "skipped: set ROLEMINT_TEST_PYTHON to a python with psycopg[binary]; .ci/run does"
        );
        return;
    };
    let a = start().await;
    let token = a.h.token("carol");
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    conn.execute("SELECT %s::text AS secret_marker", ("hunter2-value",)).fetchone()
    conn.execute("SELECT %s::int + 1 AS second_marker", (41,)).fetchone()
"#;
    for template in ["audited", "audited_params"] {
        let conninfo = format!(
            "host=127.0.0.1 port={} dbname=appdb user={template} sslmode=require connect_timeout=10",
            a.h.addr.port()
        );
        let out = tokio::process::Command::new(&python)
            .args(["-c", script, &conninfo])
            .env("PGPASSWORD", token.expose())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("psycopg finished")
            .expect("python runs");
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let plain = a.statements("audited", 2).await;
    let markers: Vec<_> = texts(&plain)
        .into_iter()
        .filter(|(_, _, t)| t.contains("_marker"))
        .collect();
    assert_eq!(markers.len(), 2, "{plain:?}");
    assert!(markers[0].2.contains("secret_marker") && markers[1].2.contains("second_marker"));
    let with_params = a.statements("audited_params", 4).await;
    let binds: Vec<&Value> = with_params.iter().filter(|l| l["kind"] == "bind").collect();
    assert!(
        binds.iter().any(|l| l["params"][0] == "hunter2-value"),
        "{with_params:?}"
    );
    // Without audit_parameters, the value is nowhere in the audit log.
    let raw = std::fs::read_to_string(&a.audit).unwrap();
    let leaked = raw
        .lines()
        .filter(|l| l.contains("hunter2-value"))
        .any(|l| !l.contains("\"audited_params\""));
    assert!(
        !leaked,
        "a bind value of an audited (no parameters) session was written"
    );
}

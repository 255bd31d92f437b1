//! A real driver's own test suite, run three ways against the same
//! PostgreSQL: directly (the control, as a login role with the grants of
//! the `readwrite` template), through rolemint over TLS, and through
//! rolemint in plaintext over the kernel splice. A test that passes
//! directly and fails, is skipped or hangs through rolemint fails this test;
//! the tests no mode runs are listed, each with its reason, in
//! `tests/driver_suites/deselect.txt`. See docs/driver-suites.md.
//!
//! The suite is psycopg2's (its PyPI sdist ships `tests/`), driven by
//! pytest with pytest-timeout, so a hang is a named test. `.ci/driver-suites`
//! fetches it and makes the interpreter: it sets `ROLEMINT_DRIVERS_PYTHON`
//! (psycopg2-binary, pytest, pytest-timeout) and `ROLEMINT_PSYCOPG2_SRC`
//! (the unpacked sdist). Without them the test says so and passes.
//! The kernel splice needs BPF (root, kernel 6.x), as tests/kernel_splice.rs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{captured_log, Harness, Options};
use rolemint::pgcluster::ClusterOptions;

/// The psycopg2 test modules run (the suite's core: connection, cursor,
/// COPY, async, notifications, cancel, transactions, types).
const PSYCOPG2_MODULES: &[&str] = &[
    "tests/test_connection.py",
    "tests/test_cursor.py",
    "tests/test_copy.py",
    "tests/test_async.py",
    "tests/test_notify.py",
    "tests/test_cancel.py",
    "tests/test_transaction.py",
    "tests/test_types_basic.py",
    "tests/test_types_extras.py",
];

/// One test's limit: longer than psycopg2's slowest test (a few seconds),
/// short enough that a hang costs CI a minute, not the job.
const PER_TEST_TIMEOUT_SECS: u32 = 60;

/// A whole run's limit, should pytest-timeout itself not act.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// How often a run is resumed after a hang (each resumption skips the
/// tests already done and the hung one).
const MAX_RESUMES: usize = 5;

/// The control's login role and password (the cluster is throwaway).
const CONTROL_ROLE: &str = "driver_control";
const CONTROL_PASSWORD: &str = "driver-control-password";

/// What became of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
    /// Still running when pytest-timeout ended the process.
    Hung,
}

/// One way of reaching PostgreSQL.
struct Mode {
    name: &'static str,
    port: u16,
    user: String,
    password: String,
    sslmode: &'static str,
}

struct Suite {
    python: String,
    src: PathBuf,
}

fn suite() -> Option<Suite> {
    match (
        std::env::var("ROLEMINT_DRIVERS_PYTHON"),
        std::env::var("ROLEMINT_PSYCOPG2_SRC"),
    ) {
        (Ok(python), Ok(src)) if !python.is_empty() && !src.is_empty() => Some(Suite {
            python,
            src: PathBuf::from(src),
        }),
        _ => {
            eprintln!(
                "ROLEMINT_DRIVERS_PYTHON / ROLEMINT_PSYCOPG2_SRC are unset: skipping the \
                 driver suites (`eval \"$(.ci/driver-suites)\"` sets them)"
            );
            None
        }
    }
}

fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/driver_suites")
}

/// Runs `modules` of the suite in `mode`, resuming after each hang;
/// returns every test's outcome.
async fn run_suite(suite: &Suite, mode: &Mode) -> BTreeMap<String, Outcome> {
    let dir = tempfile::tempdir().expect("temp dir");
    let outcomes_path = dir.path().join("outcomes.tsv");
    let mut last_output = String::new();
    for _ in 0..=MAX_RESUMES {
        let out = pytest(suite, mode, &outcomes_path).await;
        last_output = common::output_text(&out);
        let outcomes = read_outcomes(&outcomes_path);
        let hung = outcomes.values().any(|o| *o == Outcome::Hung);
        // Exit 0: all passed; 1: some failed (or pytest-timeout ended a
        // hang); 5: nothing left to run after a hang on the last test.
        // Anything else (2, 3, 4: interrupted, internal or usage error) is
        // the runner's failure.
        let finished = match out.status.code() {
            Some(0) | Some(1) => true,
            Some(5) => hung,
            _ => false,
        };
        if finished && !ended_in_hang(&outcomes_path) {
            return outcomes;
        }
        assert!(
            hung,
            "{}: pytest did not run the suite:\n{last_output}",
            mode.name
        );
    }
    panic!(
        "{}: more than {MAX_RESUMES} hangs; last run:\n{last_output}",
        mode.name
    );
}

/// True when the last line of the outcomes file is a `start`.
fn ended_in_hang(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().last().map(|l| l.starts_with("start\t")))
        .unwrap_or(false)
}

async fn pytest(suite: &Suite, mode: &Mode, outcomes: &Path) -> std::process::Output {
    let support = support_dir();
    let mut cmd = tokio::process::Command::new(&suite.python);
    cmd.current_dir(&suite.src)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "outcomes"])
        .arg(format!("--timeout={PER_TEST_TIMEOUT_SECS}"))
        .args(["--timeout-method=thread", "-o", "addopts="])
        .args(["-W", "ignore::pytest.PytestReturnNotNoneWarning"])
        .args(PSYCOPG2_MODULES)
        .env("PYTHONPATH", &support)
        .env("DRIVER_SUITE", "psycopg2")
        .env("DRIVER_OUTCOMES", outcomes)
        .env("DRIVER_DESELECT", support.join("deselect.txt"))
        .env("PSYCOPG2_TESTDB", "appdb")
        .env("PSYCOPG2_TESTDB_HOST", "127.0.0.1")
        .env("PSYCOPG2_TESTDB_PORT", mode.port.to_string())
        .env("PSYCOPG2_TESTDB_USER", &mode.user)
        .env("PSYCOPG2_TESTDB_PASSWORD", &mode.password)
        .env("PGSSLMODE", mode.sslmode)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PSYCOPG2_TEST_REPL_DSN")
        .env_remove("PSYCOPG2_TEST_GREEN")
        .kill_on_drop(true);
    for var in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE"] {
        cmd.env_remove(var);
    }
    match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("pytest runs"),
        Err(_) => panic!(
            "{}: the suite did not finish within {RUN_TIMEOUT:?} (pytest-timeout did not act)",
            mode.name
        ),
    }
}

/// The outcomes file: the last word on each test; a `start` with no
/// outcome after it is a hang.
fn read_outcomes(path: &Path) -> BTreeMap<String, Outcome> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut outcomes = BTreeMap::new();
    for line in text.lines() {
        let Some((what, nodeid)) = line.split_once('\t') else {
            continue;
        };
        let outcome = match what {
            "start" => Outcome::Hung,
            "passed" => Outcome::Passed,
            "failed" => Outcome::Failed,
            "skipped" => Outcome::Skipped,
            other => panic!("unknown outcome {other:?} in {}", path.display()),
        };
        outcomes.insert(nodeid.to_owned(), outcome);
    }
    outcomes
}

fn count(outcomes: &BTreeMap<String, Outcome>, which: Outcome) -> usize {
    outcomes.values().filter(|o| **o == which).count()
}

fn summary(name: &str, outcomes: &BTreeMap<String, Outcome>) -> String {
    format!(
        "{name}: {} passed, {} failed, {} skipped, {} hung",
        count(outcomes, Outcome::Passed),
        count(outcomes, Outcome::Failed),
        count(outcomes, Outcome::Skipped),
        count(outcomes, Outcome::Hung)
    )
}

/// The tests that passed in the control and did not in `other`.
fn regressions(
    control: &BTreeMap<String, Outcome>,
    other: &BTreeMap<String, Outcome>,
) -> Vec<String> {
    control
        .iter()
        .filter(|(_, o)| **o == Outcome::Passed)
        .filter_map(|(id, _)| match other.get(id) {
            Some(Outcome::Passed) => None,
            Some(o) => Some(format!("{id}: {o:?}")),
            None => Some(format!("{id}: not run")),
        })
        .collect()
}

/// The number of sessions the kernel spliced so far in this process.
fn spliced_sessions() -> usize {
    captured_log()
        .lines()
        .filter(|l| l.contains("session spliced in the kernel"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_suite_passes_through_rolemint_as_it_does_directly() {
    let Some(suite) = suite() else { return };
    let h = Harness::with(Options {
        kernel_splice: true,
        // Without the harness's statement log: at client_min_messages =
        // debug1 (test_notices_*) its LOG lines reach the client as notices.
        cluster: ClusterOptions::default(),
        ..Options::default()
    })
    .await;
    assert!(
        h.shared.sockmap.is_some(),
        "no BPF sockmap here:\n{}",
        captured_log()
    );
    // The control: what a `readwrite` session is granted, as a login role.
    h.superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {CONTROL_ROLE} LOGIN PASSWORD '{CONTROL_PASSWORD}'; \
             GRANT app_owner TO {CONTROL_ROLE}; \
             ALTER ROLE {CONTROL_ROLE} SET role = 'app_owner';"
        ))
        .await
        .expect("create the control role");

    let direct = Mode {
        name: "direct",
        port: h.cluster.port(),
        user: CONTROL_ROLE.into(),
        password: CONTROL_PASSWORD.into(),
        sslmode: "disable",
    };
    let control = run_suite(&suite, &direct).await;
    let tls = Mode {
        name: "rolemint TLS",
        port: h.addr.port(),
        user: "readwrite".into(),
        password: h.token("psycopg2-tls").expose().to_owned(),
        sslmode: "require",
    };
    let through_tls = run_suite(&suite, &tls).await;
    let before = spliced_sessions();
    let splice = Mode {
        name: "rolemint kernel splice",
        port: h.addr.port(),
        user: "readwrite".into(),
        password: h.token("psycopg2-splice").expose().to_owned(),
        sslmode: "disable",
    };
    let through_splice = run_suite(&suite, &splice).await;
    let spliced = spliced_sessions() - before;

    let report = [
        summary("direct", &control),
        summary("rolemint TLS", &through_tls),
        format!(
            "{} ({spliced} sessions spliced)",
            summary("rolemint kernel splice", &through_splice)
        ),
    ]
    .join("\n");
    eprintln!("{report}");
    // Every test that failed in the control is worth a look (a new
    // deselection or a broken control); they are listed, not failed on.
    let control_failures: Vec<_> = control
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Passed | Outcome::Skipped))
        .collect();
    if !control_failures.is_empty() {
        eprintln!("failing in the control too: {control_failures:?}");
    }
    // A control that ran nearly nothing would make every comparison pass.
    assert!(
        count(&control, Outcome::Passed) >= 300,
        "the control ran too little:\n{report}"
    );
    assert!(spliced > 0, "no session was spliced in the kernel:\n{report}");
    let mut differences = Vec::new();
    for (name, other) in [("TLS", &through_tls), ("splice", &through_splice)] {
        for r in regressions(&control, other) {
            differences.push(format!("{name}: {r}"));
        }
    }
    assert!(
        differences.is_empty(),
        "passed directly, not through rolemint:\n{}\n{report}",
        differences.join("\n")
    );
}

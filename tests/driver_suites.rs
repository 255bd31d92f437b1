//! Real drivers' own test suites, each run three ways against the same
//! PostgreSQL: directly (the control, as a login role with the grants of
//! the `readwrite` template), through rolemint over TLS, and through
//! rolemint in plaintext over the kernel splice. A test that passes
//! directly and fails, is skipped or hangs through rolemint fails this test,
//! unless `tests/driver_suites/known.txt` names it as a known bug of that
//! mode (and then it must still fail there). The tests no mode runs are
//! listed, each with its reason, in `tests/driver_suites/deselect.txt`.
//! See docs/driver-suites.md.
//!
//! The suites are psycopg2's and asyncpg's (their PyPI sdists ship
//! `tests/`), driven by pytest with pytest-timeout, so a hang is a named
//! test. `.ci/driver-suites` fetches them and makes the interpreter: it sets
//! `ROLEMINT_DRIVERS_PYTHON` (the drivers, pytest, pytest-timeout),
//! `ROLEMINT_PSYCOPG2_SRC` and `ROLEMINT_ASYNCPG_SRC` (the unpacked sdists).
//! Without them the tests say so and pass. The kernel splice needs BPF
//! (root, kernel 6.x), as tests/kernel_splice.rs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{captured_log, Harness, Options};
use rolemint::cli::dev::cluster::ClusterOptions;

/// psycopg2's test modules run: the suite's core (connection, cursor,
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

/// asyncpg's test modules run: those that need no cluster of their own
/// (test_connect, test_pool and test_introspection restart servers, edit
/// pg_hba.conf or create roles and databases).
const ASYNCPG_MODULES: &[&str] = &[
    "tests/test_adversity.py",
    "tests/test_cancellation.py",
    "tests/test_codecs.py",
    "tests/test_copy.py",
    "tests/test_cursor.py",
    "tests/test_exceptions.py",
    "tests/test_execute.py",
    "tests/test_listeners.py",
    "tests/test_prepare.py",
    "tests/test_record.py",
    "tests/test_timeout.py",
    "tests/test_transaction.py",
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
    /// The mode's name in `known.txt`.
    key: &'static str,
    port: u16,
    user: String,
    password: String,
    sslmode: &'static str,
}

/// One external suite: where it is, what of it runs, how it is told
/// where the database is.
struct Suite {
    name: &'static str,
    python: String,
    src: PathBuf,
    modules: &'static [&'static str],
    /// Fewer passes than this in the control means it did not really run.
    min_passed: usize,
}

impl Suite {
    /// The environment that points the suite at `mode`.
    fn env(&self, mode: &Mode) -> Vec<(&'static str, String)> {
        let port = mode.port.to_string();
        let mut env = vec![("PGSSLMODE", mode.sslmode.to_owned())];
        if self.name == "psycopg2" {
            env.extend([
                ("PSYCOPG2_TESTDB", "appdb".to_owned()),
                ("PSYCOPG2_TESTDB_HOST", "127.0.0.1".to_owned()),
                ("PSYCOPG2_TESTDB_PORT", port),
                ("PSYCOPG2_TESTDB_USER", mode.user.clone()),
                ("PSYCOPG2_TESTDB_PASSWORD", mode.password.clone()),
            ]);
        } else {
            // asyncpg's tests use a running server when PGHOST is set, and
            // connect with the PG* variables.
            env.extend([
                ("PGHOST", "127.0.0.1".to_owned()),
                ("PGPORT", port),
                ("PGUSER", mode.user.clone()),
                ("PGPASSWORD", mode.password.clone()),
                ("PGDATABASE", "appdb".to_owned()),
            ]);
        }
        env
    }
}

/// The suite named `name` (`ROLEMINT_<NAME>_SRC`), or None and a notice.
fn suite(name: &'static str, modules: &'static [&'static str], min_passed: usize) -> Option<Suite> {
    let src_var = format!("ROLEMINT_{}_SRC", name.to_uppercase());
    match (
        std::env::var("ROLEMINT_DRIVERS_PYTHON"),
        std::env::var(&src_var),
    ) {
        (Ok(python), Ok(src)) if !python.is_empty() && !src.is_empty() => Some(Suite {
            name,
            python,
            src: PathBuf::from(src),
            modules,
            min_passed,
        }),
        _ => {
            eprintln!(
                "ROLEMINT_DRIVERS_PYTHON / {src_var} are unset: skipping the {name} suite \
                 (`eval \"$(.ci/driver-suites)\"` sets them)"
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
            "{} {}: pytest did not run the suite:\n{last_output}",
            suite.name, mode.name
        );
    }
    panic!(
        "{} {}: more than {MAX_RESUMES} hangs; last run:\n{last_output}",
        suite.name, mode.name
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
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGSERVICE",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(&suite.src)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "outcomes",
        ])
        .arg(format!("--timeout={PER_TEST_TIMEOUT_SECS}"))
        .args(["--timeout-method=thread", "-o", "addopts="])
        .args(["-W", "ignore::pytest.PytestReturnNotNoneWarning"])
        .args(suite.modules)
        .env("PYTHONPATH", &support)
        .env("DRIVER_SUITE", suite.name)
        .env("DRIVER_OUTCOMES", outcomes)
        .env("DRIVER_DESELECT", support.join("deselect.txt"))
        .envs(suite.env(mode))
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PSYCOPG2_TEST_REPL_DSN")
        .env_remove("PSYCOPG2_TEST_GREEN")
        .kill_on_drop(true);
    match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("pytest runs"),
        Err(_) => panic!(
            "{} {}: the suite did not finish within {RUN_TIMEOUT:?} (pytest-timeout did not act)",
            suite.name, mode.name
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

/// The tests that passed in the control and did not in `other`: (nodeid,
/// what became of it).
fn regressions(
    control: &BTreeMap<String, Outcome>,
    other: &BTreeMap<String, Outcome>,
) -> Vec<(String, String)> {
    control
        .iter()
        .filter(|(_, o)| **o == Outcome::Passed)
        .filter_map(|(id, _)| match other.get(id) {
            Some(Outcome::Passed) => None,
            Some(o) => Some((id.clone(), format!("{id}: {o:?}"))),
            None => Some((id.clone(), format!("{id}: not run"))),
        })
        .collect()
}

/// The known differences of `suite` in mode `key` (`known.txt`): nodeid ->
/// the bug.
fn known_differences(suite: &str, key: &str) -> BTreeMap<String, String> {
    let path = support_dir().join("known.txt");
    let text = std::fs::read_to_string(&path).expect("read known.txt");
    let mut known = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (entry, reason) = line
            .split_once(" # ")
            .unwrap_or_else(|| panic!("known.txt: no reason in {line:?}"));
        let parts: Vec<&str> = entry.split_whitespace().collect();
        let [s, mode, nodeid] = parts[..] else {
            panic!("known.txt: want `SUITE MODE NODEID  # bug`, got {line:?}");
        };
        assert!(
            matches!(mode, "tls" | "splice"),
            "known.txt: unknown mode in {line:?}"
        );
        if s == suite && mode == key {
            known.insert(nodeid.to_owned(), reason.trim().to_owned());
        }
    }
    known
}

/// The number of sessions the kernel spliced so far in this process.
fn spliced_sessions() -> usize {
    captured_log()
        .lines()
        .filter(|l| l.contains("session spliced in the kernel"))
        .count()
}

/// One test for both suites, one after the other: each counts the
/// sessions spliced during its own run from the process's log, and two
/// suites at once would also share the two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_suites_pass_through_rolemint_as_they_do_directly() {
    let suites = [
        suite("psycopg2", PSYCOPG2_MODULES, 300),
        suite("asyncpg", ASYNCPG_MODULES, 150),
    ];
    for suite in suites.iter().flatten() {
        three_ways(suite).await;
    }
}

/// Runs `suite` directly, over TLS and over the splice, and fails on every
/// test that passed directly but not through rolemint.
async fn three_ways(suite: &Suite) {
    let h = Harness::with(Options {
        kernel_splice: true,
        // Without the harness's statement log: at client_min_messages =
        // debug1 (psycopg2's test_notices_*) its LOG lines reach the client
        // as notices.
        cluster: ClusterOptions::default(),
        ..Options::default()
    })
    .await;
    assert!(
        h.proxy.sockmap.is_some(),
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
        key: "direct",
        port: h.cluster.port(),
        user: CONTROL_ROLE.into(),
        password: CONTROL_PASSWORD.into(),
        sslmode: "disable",
    };
    let control = run_suite(suite, &direct).await;
    let tls = Mode {
        name: "rolemint TLS",
        key: "tls",
        port: h.addr.port(),
        user: "readwrite".into(),
        password: h.token(&format!("{}-tls", suite.name)).expose().to_owned(),
        sslmode: "require",
    };
    let through_tls = run_suite(suite, &tls).await;
    let before = spliced_sessions();
    let splice = Mode {
        name: "rolemint kernel splice",
        key: "splice",
        port: h.addr.port(),
        user: "readwrite".into(),
        password: h
            .token(&format!("{}-splice", suite.name))
            .expose()
            .to_owned(),
        sslmode: "disable",
    };
    let through_splice = run_suite(suite, &splice).await;
    let spliced = spliced_sessions() - before;

    let name = suite.name;
    let report = [
        summary(&format!("{name} direct"), &control),
        summary(&format!("{name} rolemint TLS"), &through_tls),
        format!(
            "{} ({spliced} sessions spliced)",
            summary(&format!("{name} rolemint kernel splice"), &through_splice)
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
        eprintln!("{name}: failing in the control too: {control_failures:?}");
    }
    // A control that ran nearly nothing would make every comparison pass.
    assert!(
        count(&control, Outcome::Passed) >= suite.min_passed,
        "the control ran too little:\n{report}"
    );
    assert!(
        spliced > 0,
        "no session was spliced in the kernel:\n{report}"
    );
    let mut differences = Vec::new();
    for (mode, other) in [(&tls, &through_tls), (&splice, &through_splice)] {
        let known = known_differences(name, mode.key);
        for (id, r) in regressions(&control, other) {
            if !known.contains_key(&id) {
                differences.push(format!("{}: {r}", mode.key));
            }
        }
        // A known difference that passes now: its bug is fixed.
        for (id, bug) in &known {
            if other.get(id) == Some(&Outcome::Passed) {
                differences.push(format!(
                    "{}: {id} passes now; remove it from known.txt ({bug})",
                    mode.key
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{name}: passed directly, not through rolemint:\n{}\n{report}",
        differences.join("\n")
    );
}

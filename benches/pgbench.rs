//! rolemint against PostgreSQL directly (and PgBouncer, when installed),
//! measured with the real `pgbench`.
//!
//! # Running it
//!
//! ```text
//! cargo bench --bench pgbench
//! ROLEMINT_BENCH_SECONDS=30 cargo bench --bench pgbench   # longer, steadier runs
//! ```
//!
//! It needs what the integration tests need: PostgreSQL's `initdb`,
//! `postgres` and `pgbench` (see `rolemint::pgcluster::find_binaries`).
//! PgBouncer is optional: when a `pgbouncer` binary is on `PATH` or in
//! `/usr/sbin` it is measured too, otherwise its rows are skipped with a note
//! (`apt-get install pgbouncer` on Debian/Ubuntu).
//!
//! One run starts one throwaway cluster (`TempCluster`, demo schema, pgbench
//! scale 1), and measures three workloads, each for `ROLEMINT_BENCH_SECONDS`
//! (default 10) per target:
//!
//! - `select-only`: `pgbench -S -c 8 -j 2`, one long session per client;
//! - `tpc-b`: default pgbench script, `-c 8 -j 2`;
//! - `connect`: `pgbench -C -S -c 4 -j 2`, a new connection for every
//!   transaction. Through rolemint that is a role minted, logged in as and
//!   dropped per transaction, so this row shows rolemint's per-session cost.
//!
//! Targets, all on loopback:
//!
//! - `direct`: PostgreSQL itself, as a static LOGIN role (`bench_direct`,
//!   member of `app_owner` with `role = app_owner`, SCRAM with PostgreSQL's
//!   default 4096 iterations);
//! - `pgbouncer`: PgBouncer in session pooling mode, SCRAM for clients, in
//!   front of the same role;
//! - `rolemint`: the proxy in-process, templates `readonly` (select-only,
//!   connect) and `readwrite` (tpc-b), the token as password;
//! - `rolemint+tls`: the same with `sslmode=require` (client TLS to rolemint;
//!   rolemint to PostgreSQL stays plaintext).
//!
//! All but the last use `sslmode=disable`, so the first three are comparable.
//! Passwords and tokens travel in `PGPASSWORD`, never on a command line.
//!
//! # Reading the table
//!
//! `tps` and `latency ms` are pgbench's own figures. For `connect`, tps
//! includes the connection time of every transaction, and `conn ms` is
//! pgbench's average connection time; for the others `conn ms` is the
//! one-off initial connection time and tps excludes it.
//!
//! `vs direct` is the row's tps divided by `direct`'s tps for the same
//! workload: `1.00x` is no overhead, `0.80x` means 20% fewer transactions per
//! second than talking to PostgreSQL directly. `vs pgbouncer` divides by
//! PgBouncer's tps instead (`-` without PgBouncer): it compares rolemint with
//! another proxy doing a similar job, which is usually the fairer yardstick
//! for the long-session rows. PgBouncer reuses server connections, so in the
//! `connect` row it pays no PostgreSQL backend start-up per transaction,
//! while direct and rolemint do (rolemint also mints and drops a role).
//! Also in that row, every `direct` login makes libpq derive the SCRAM key
//! over the role's 4096 iterations, whereas a rolemint client sends its
//! token in a password message and rolemint logs in with
//! `mint.scram_iterations` (16): `connect` can show rolemint above `1.00x`
//! vs direct, which says more about SCRAM cost than about the proxy.
//!
//! All processes share one machine, so a loaded or small machine
//! compresses the differences; compare ratios from the same run, and prefer
//! longer runs (30 s or more) for numbers worth quoting. Workloads run in the
//! order listed, targets in the order above; before each run
//! `pgbench_history` is truncated and the branches and tellers vacuumed, as
//! pgbench itself would do.
//!
//! Afterwards the bench checks that no role is left in `rolemint_managed`
//! and that no transaction failed; otherwise it prints why and exits
//! non-zero. Everything it started (cluster, proxy, PgBouncer) is stopped.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use common::{Harness, Options};
use rolemint::pgcluster::{self, ClusterOptions};
use rolemint::secret::Secret;

// The integration tests' harness: cluster, demo schema, rolemint in-process.
#[path = "../tests/common/mod.rs"]
mod common;

const SECONDS_ENV: &str = "ROLEMINT_BENCH_SECONDS";
const DEFAULT_SECONDS: u64 = 10;
const DATABASE: &str = pgcluster::DEMO_DATABASE;
/// The static role of the `direct` and `pgbouncer` targets.
const BENCH_ROLE: &str = "bench_direct";
/// How long minted roles may take to be dropped after the last session.
const ROLE_DROP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    SelectOnly,
    TpcB,
    Connect,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::SelectOnly, Workload::TpcB, Workload::Connect];

    fn label(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only (-S -c8)",
            Workload::TpcB => "tpc-b (-c8)",
            Workload::Connect => "connect (-C -S -c4)",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Workload::SelectOnly => &["-S", "-c", "8", "-j", "2"],
            Workload::TpcB => &["-c", "8", "-j", "2"],
            Workload::Connect => &["-C", "-S", "-c", "4", "-j", "2"],
        }
    }

    /// The rolemint template that can run this workload.
    fn template(self) -> &'static str {
        match self {
            Workload::TpcB => "readwrite",
            Workload::SelectOnly | Workload::Connect => "readonly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    PgBouncer,
    Rolemint,
}

struct Target {
    name: &'static str,
    kind: Kind,
    port: u16,
    sslmode: &'static str,
}

impl Target {
    fn user(&self, workload: Workload) -> &'static str {
        match self.kind {
            Kind::Direct | Kind::PgBouncer => BENCH_ROLE,
            Kind::Rolemint => workload.template(),
        }
    }
}

/// What pgbench reported for one run.
#[derive(Debug, Default)]
struct Figures {
    tps: f64,
    latency_ms: Option<f64>,
    conn_ms: Option<f64>,
    failed: u64,
}

struct Row {
    workload: Workload,
    target: &'static str,
    kind: Kind,
    result: Result<Figures, String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    rolemint::tls::install_crypto_provider();
    // `cargo bench` passes `--bench` (and maybe filters): ignored.
    let seconds = match std::env::var(SECONDS_ENV) {
        Err(_) => DEFAULT_SECONDS,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => s,
            _ => {
                eprintln!("error: {SECONDS_ENV} must be a positive number of seconds, not {v:?}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(seconds).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` when a check failed (already printed).
async fn run(seconds: u64) -> anyhow::Result<bool> {
    // The integration tests' harness: one cluster (without statement
    // logging, which would dominate the numbers) and rolemint in-process.
    let mut h = Harness::with(Options {
        cluster: ClusterOptions {
            max_connections: 300,
            ..ClusterOptions::default()
        },
        capture_log: false,
        max_connections: 1000,
        ..Options::default()
    })
    .await;
    let su = h.superuser().await;

    // The static role of the baseline, its password only as a verifier.
    let password = Secret::new(random_hex(24)?);
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    su.batch_execute(&format!(
        "CREATE ROLE {BENCH_ROLE} LOGIN PASSWORD '{verifier}';
         GRANT app_owner TO {BENCH_ROLE};
         ALTER ROLE {BENCH_ROLE} SET role = 'app_owner';"
    ))
    .await
    .context("creating the bench role")?;

    let token = rolemint::identity::issue(
        &h.config.auth,
        "bench",
        &[],
        Duration::from_secs(seconds * 10 + 3600),
    )
    .context("issuing a token")?;
    let cluster = &h.cluster;

    let mut notes = Vec::new();
    let bouncer = match PgBouncer::find() {
        None => {
            notes.push(
                "pgbouncer: not found on PATH or in /usr/sbin; its rows are skipped".to_owned(),
            );
            None
        }
        Some(bin) => match PgBouncer::start(&bin, cluster.port(), &verifier).await {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!(
                    "pgbouncer: {} would not start, skipped: {e:#}",
                    bin.display()
                ));
                None
            }
        },
    };

    let mut targets = vec![Target {
        name: "direct",
        kind: Kind::Direct,
        port: cluster.port(),
        sslmode: "disable",
    }];
    if let Some(b) = &bouncer {
        targets.push(Target {
            name: "pgbouncer",
            kind: Kind::PgBouncer,
            port: b.port,
            sslmode: "disable",
        });
    }
    targets.push(Target {
        name: "rolemint",
        kind: Kind::Rolemint,
        port: h.addr.port(),
        sslmode: "disable",
    });
    targets.push(Target {
        name: "rolemint+tls",
        kind: Kind::Rolemint,
        port: h.addr.port(),
        sslmode: "require",
    });

    let pgbench = cluster.pgbench().to_owned();
    let server_version: String = su.query_one("SHOW server_version", &[]).await?.get(0);
    println!(
        "rolemint pgbench: PostgreSQL {server_version}, {}, {seconds} s per run, {} CPUs",
        tool_version(&pgbench).await,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for note in &notes {
        println!("note: {note}");
    }

    // Warm the caches and check every target answers (not reported).
    for target in &targets {
        let secret = if target.kind == Kind::Rolemint {
            &token
        } else {
            &password
        };
        run_pgbench(
            &pgbench,
            target,
            target.user(Workload::SelectOnly),
            secret,
            &["-S", "-c", "1"],
            1,
        )
        .await
        .with_context(|| format!("warm-up against {}", target.name))?;
    }

    let mut rows = Vec::new();
    for workload in Workload::ALL {
        for target in &targets {
            reset_tables(&su).await?;
            let secret = if target.kind == Kind::Rolemint {
                &token
            } else {
                &password
            };
            eprint!("running {} against {} ... ", workload.label(), target.name);
            let result = run_pgbench(
                &pgbench,
                target,
                target.user(workload),
                secret,
                workload.args(),
                seconds,
            )
            .await
            .map_err(|e| format!("{e:#}"));
            match &result {
                Ok(f) => eprintln!("{:.0} tps", f.tps),
                Err(_) => eprintln!("FAILED"),
            }
            rows.push(Row {
                workload,
                target: target.name,
                kind: target.kind,
                result,
            });
        }
    }

    if let Some(b) = bouncer {
        b.stop().await;
    }

    print_table(&rows);

    // Checks.
    let mut ok = true;
    for row in &rows {
        match &row.result {
            Err(e) => {
                ok = false;
                println!(
                    "error: {} against {} failed: {e}",
                    row.workload.label(),
                    row.target
                );
            }
            Ok(f) if f.failed > 0 => {
                ok = false;
                println!(
                    "error: {} against {}: {} failed transactions",
                    row.workload.label(),
                    row.target,
                    f.failed
                );
            }
            Ok(_) => {}
        }
    }
    let left = h.wait_no_managed_roles(ROLE_DROP_WAIT).await.len();
    if left > 0 {
        ok = false;
        println!(
            "error: {left} roles are still members of rolemint_managed {}s after the last session",
            ROLE_DROP_WAIT.as_secs()
        );
    }
    let leases = h.wait_no_leases().await;
    if leases > 0 {
        ok = false;
        println!("error: {leases} leases left in rolemint's registry");
    }
    h.stop().await?;
    let left = h.managed_roles().await.len();
    if left > 0 {
        ok = false;
        println!("error: {left} roles are members of rolemint_managed after shutdown");
    }
    if ok {
        println!("checks: 0 failed transactions, 0 roles left in rolemint_managed");
    }
    Ok(ok)
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

/// Runs pgbench for `seconds` against `target` and parses its summary.
async fn run_pgbench(
    pgbench: &Path,
    target: &Target,
    user: &str,
    secret: &Secret,
    args: &[&str],
    seconds: u64,
) -> anyhow::Result<Figures> {
    let child = tokio::process::Command::new(pgbench)
        .arg("-n") // the roles may not VACUUM; reset_tables does it
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &target.port.to_string(),
            "-U",
            user,
        ])
        .args(args)
        .args(["-T", &seconds.to_string(), DATABASE])
        .env("PGPASSWORD", secret.expose())
        .env("PGSSLMODE", target.sslmode)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "pgbench")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", pgbench.display()))?;
    let out = tokio::time::timeout(Duration::from_secs(seconds + 60), child.wait_with_output())
        .await
        .map_err(|_| anyhow!("pgbench did not finish within {} s", seconds + 60))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let figures = parse(&text);
    match figures {
        Some(f) if out.status.success() => Ok(f),
        _ => bail!("pgbench exited with {}:\n{}", out.status, tail(&text, 15)),
    }
}

/// The figures of pgbench's summary; `None` without a tps line or with no
/// transaction processed.
fn parse(text: &str) -> Option<Figures> {
    let number = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let processed = number("number of transactions actually processed:")?;
    if processed <= 0.0 {
        return None;
    }
    Some(Figures {
        tps: number("tps =")?,
        latency_ms: number("latency average ="),
        conn_ms: number("average connection time =")
            .or_else(|| number("initial connection time =")),
        failed: number("number of failed transactions:").map_or(0, |n| n as u64),
    })
}

/// What pgbench's own pre-run housekeeping does (skipped with `-n`, since
/// the minted roles may not vacuum), so every run starts alike.
async fn reset_tables(su: &tokio_postgres::Client) -> anyhow::Result<()> {
    for sql in [
        "VACUUM pgbench_branches",
        "VACUUM pgbench_tellers",
        "TRUNCATE pgbench_history",
        "CHECKPOINT",
    ] {
        su.batch_execute(sql)
            .await
            .with_context(|| sql.to_owned())?;
    }
    Ok(())
}

async fn tool_version(program: &Path) -> String {
    match tokio::process::Command::new(program)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => program.display().to_string(),
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn print_table(rows: &[Row]) {
    let tps_of = |workload: Workload, kind: Kind| {
        rows.iter()
            .find(|r| r.workload == workload && r.kind == kind)
            .and_then(|r| r.result.as_ref().ok())
            .map(|f| f.tps)
    };
    let ratio = |tps: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}x", tps / b),
        _ => "-".to_owned(),
    };
    let header = [
        "mode",
        "target",
        "tps",
        "latency ms",
        "vs direct",
        "vs pgbouncer",
        "conn ms",
    ];
    let mut lines: Vec<[String; 7]> = Vec::new();
    for row in rows {
        let cells = match &row.result {
            Ok(f) => [
                row.workload.label().to_owned(),
                row.target.to_owned(),
                format!("{:.0}", f.tps),
                f.latency_ms.map_or("-".into(), |l| format!("{l:.3}")),
                ratio(f.tps, tps_of(row.workload, Kind::Direct)),
                ratio(f.tps, tps_of(row.workload, Kind::PgBouncer)),
                f.conn_ms.map_or("-".into(), |c| format!("{c:.3}")),
            ],
            Err(_) => [
                row.workload.label().to_owned(),
                row.target.to_owned(),
                "FAILED".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        };
        lines.push(cells);
    }
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.len());
        }
    }
    let print = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            // Text left, numbers right.
            if i < 2 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("{cell:>w$}"));
            }
        }
        println!("{}", out.trim_end());
    };
    println!();
    print(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("{}", rule.join("-|-"));
    let mut previous = None;
    for (row, line) in rows.iter().zip(&lines) {
        if previous.is_some_and(|p| p != row.workload) {
            println!();
        }
        previous = Some(row.workload);
        print(&line.each_ref().map(String::as_str));
    }
    println!();
    println!(
        "sslmode=disable everywhere except rolemint+tls (require); tps/vs columns: higher is better"
    );
}

// ---------------------------------------------------------------------------
// PgBouncer
// ---------------------------------------------------------------------------

struct PgBouncer {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    }

    /// Session pooling on a free loopback port, SCRAM for clients with the
    /// bench role's verifier (which PgBouncer then also uses to log in to
    /// PostgreSQL). As the `postgres` user when we are root.
    async fn start(bin: &Path, pg_port: u16, verifier: &str) -> anyhow::Result<PgBouncer> {
        let run_as = if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .ok_or_else(|| anyhow!("running as root and there is no postgres user"))?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("rolemint-bench-pgbouncer-")
            .tempdir()
            .context("temp dir")?;
        let mut last = anyhow!("no attempt");
        // The free port may be taken before PgBouncer binds it: retry.
        for _ in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let ini = dir.path().join("pgbouncer.ini");
            let users = dir.path().join("userlist.txt");
            let log = dir.path().join("pgbouncer.log");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     {DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE}\n\
                     \n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = scram-sha-256\n\
                     auth_file = {users}\n\
                     pool_mode = session\n\
                     max_client_conn = 200\n\
                     default_pool_size = 20\n\
                     client_tls_sslmode = disable\n\
                     server_tls_sslmode = disable\n\
                     logfile = {log}\n\
                     log_connections = 0\n\
                     log_disconnections = 0\n",
                    users = users.display(),
                    log = log.display(),
                ),
            )?;
            std::fs::write(&users, format!("\"{BENCH_ROLE}\" \"{verifier}\"\n"))?;
            std::fs::write(&log, "")?;
            if let Some((uid, gid)) = run_as {
                for path in [dir.path(), &ini, &users, &log] {
                    nix::unistd::chown(path, Some(uid), Some(gid))
                        .with_context(|| format!("chown {}", path.display()))?;
                }
            }
            let mut cmd = tokio::process::Command::new(bin);
            cmd.arg(&ini)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if let Some((uid, gid)) = run_as {
                cmd.uid(uid.as_raw()).gid(gid.as_raw());
            }
            let mut child = cmd.spawn().context("spawning pgbouncer")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last = anyhow!("pgbouncer exited with {status}:\n{}", tail(&log, 10));
                    break;
                }
                if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .await
                    .is_ok()
                {
                    return Ok(PgBouncer {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    bail!("pgbouncer did not listen on port {port} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(last)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0_u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| anyhow!("the system RNG failed"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

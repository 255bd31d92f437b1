//! rolemint against PostgreSQL directly (and PgBouncer, when installed),
//! measured with the real `pgbench`, a client loop for connect latency, and
//! the proxy's resident memory.
//!
//! # Running it
//!
//! ```text
//! cargo bench --bench pgbench                      # the full run (~15 min)
//! ROLEMINT_BENCH_RUNS=1 ROLEMINT_BENCH_SECONDS=2 ROLEMINT_BENCH_IDLE=100 \
//!   ROLEMINT_BENCH_CHURN=500 ROLEMINT_BENCH_CONNECTS=50 cargo bench --bench pgbench  # a smoke run
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ROLEMINT_BENCH_SECONDS` | 10 | length of each pgbench run |
//! | `ROLEMINT_BENCH_RUNS` | 3 | runs per workload and target; medians are reported |
//! | `ROLEMINT_BENCH_CONNECTS` | 500 | connections per target for connect latency |
//! | `ROLEMINT_BENCH_IDLE` | 1000 | idle sessions held open for RSS per session |
//! | `ROLEMINT_BENCH_CHURN` | 10000 | sessions opened and closed for RSS over churn |
//! | `ROLEMINT_BENCH_JSON` | `target/bench/pgbench.json` | where the results go as JSON |
//! | `ROLEMINT_BENCH_WORKLOADS` | all | comma-separated workloads to run (`select-only,tpc-b,churn,latency`) |
//! | `ROLEMINT_BENCH_TARGETS` | all | comma-separated targets to run (`direct,pgbouncer,rolemint+kernel,rolemint+audit`, ...) |
//! | `ROLEMINT_BENCH_PROXY_LOG` | `warn` | the proxies' `ROLEMINT_LOG`; when set, their logs are kept in `target/bench/` |
//!
//! The two filters are for profiling one row (`perf record` beside it);
//! a filtered run prints `n/a` for the ratios it has no baseline for.
//!
//! It needs what the integration tests need: PostgreSQL's `initdb`,
//! `postgres` and `pgbench` (see `rolemint::cli::dev::cluster::find_binaries`).
//! PgBouncer is optional: when a `pgbouncer` binary is on `PATH` or in
//! `/usr/sbin` it is measured too, otherwise its rows are skipped with a note
//! (`apt-get install pgbouncer`; `.ci/run` installs it).
//!
//! 1,000 idle sessions hold ~2,000 sockets in the proxy and 1,000 in the
//! bench: raise `ulimit -n` first where the soft limit is 1024.
//!
//! # What runs
//!
//! One throwaway cluster (`TempCluster`, demo schema, pgbench scale 8, TLS
//! on with a self-signed certificate), and rolemint as its own `rolemint
//! serve` process (the release binary, so its RSS is its own). Workloads:
//!
//! - `select-only`: `pgbench -S -c 8 -j 2`, one long session per client;
//! - `tpc-b`: default pgbench script, `-c 8 -j 2`;
//! - `churn`: `pgbench -C -S -c 8 -j 2`, a new connection for every
//!   transaction. Through rolemint that is a role minted, logged in as and
//!   dropped per transaction, so this row shows rolemint's per-session cost;
//! - `latency`: `pgbench -S -c 1`, for the latency rolemint adds.
//!
//! Targets, all on loopback: `direct` (PostgreSQL, a static LOGIN role
//! `bench_direct` with SCRAM at PostgreSQL's default 4096 iterations),
//! `direct+tls` (the same, `sslmode=require`), `pgbouncer` (session pooling,
//! SCRAM for clients, same role), `rolemint` (templates `readonly` and
//! `readwrite`, the token as password) and `rolemint+tls` (client leg
//! `sslmode=require`; rolemint to PostgreSQL stays plaintext). Each run of
//! each pair is interleaved with the others (run 1 of everything, then run 2,
//! ...), so a slow spell of the machine does not land on one target only.
//!
//! Latency percentiles are exact, from pgbench's per-transaction log (`-l`);
//! connect latency is a tokio-postgres loop, one connection at a time, TCP
//! connect to the first ReadyForQuery; TLS targets over rustls twice, with
//! full handshakes (as libpq makes them) and with the client resuming its
//! session (PostgreSQL turns resumption off; rolemint issues tickets).
//! Memory is VmRSS of the proxy process, before and after
//! `ROLEMINT_BENCH_IDLE` idle sessions, then sampled every tenth of
//! `ROLEMINT_BENCH_CHURN` sessions that connect, run `SELECT 1` and close, 8
//! at a time.
//!
//! # Reading the table
//!
//! `tps` is the median of the runs, `min..max` their spread. `vs direct` is
//! the row's tps over direct's (`direct+tls`'s for `+tls` rows): `1.00x` is no
//! overhead. `vs pgbouncer` divides by PgBouncer's. `p50 ms`/`p99 ms` are
//! per-transaction latencies. `conn ms` is pgbench's average connection time
//! (per transaction with `-C`). PgBouncer reuses server connections, so in
//! the churn rows it pays no backend start-up per transaction; direct pays a
//! 4096-iteration SCRAM derivation in libpq per login where a rolemint client
//! sends its token and rolemint logs in with `mint.scram_iterations`.
//!
//! The five performance targets are then checked against these
//! numbers and printed as met / NOT met. They are not assertions: a loaded or
//! small machine compresses the differences. The bench fails (exit 1) only
//! when a run failed, a transaction failed, or a minted role was left behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use rolemint::cli::dev::cluster::{self, ClusterOptions};
use rolemint::secret::Secret;

#[path = "pgbench/report.rs"]
mod report;
#[path = "shared/mod.rs"]
mod shared;

use report::{Connects, Report, Series};
use shared::common::{Harness, Options};
use shared::pgbouncer::PgBouncer;
use shared::proxy::{self, Proxy};
use shared::runner::{self, Endpoint};
use shared::{
    bench_dir, env_list, env_number, random_hex, tool_version, write_json, ClusterTls, BENCH_ROLE,
};
/// pgbench's scale factor: at least the client count of the TPC-B row.
const TPCB_SCALE: u32 = 8;
/// How long minted roles may take to be dropped after the last session.
const ROLE_DROP_WAIT: Duration = Duration::from_secs(60);

/// The knobs, from the environment.
struct Settings {
    seconds: u64,
    runs: usize,
    connects: usize,
    idle: usize,
    churn: usize,
    json: PathBuf,
    /// Workload keys to run; empty: all.
    workloads: Vec<String>,
    /// Target names to run; empty: all.
    targets: Vec<String>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let (number, list) = (env_number, env_list);
        Ok(Settings {
            seconds: number("ROLEMINT_BENCH_SECONDS", 10)?.max(1),
            runs: number("ROLEMINT_BENCH_RUNS", 3)?.max(1) as usize,
            connects: number("ROLEMINT_BENCH_CONNECTS", 500)? as usize,
            idle: number("ROLEMINT_BENCH_IDLE", 1000)? as usize,
            churn: number("ROLEMINT_BENCH_CHURN", 10_000)? as usize,
            json: std::env::var_os("ROLEMINT_BENCH_JSON")
                .map(PathBuf::from)
                .unwrap_or_else(|| bench_dir().join("pgbench.json")),
            workloads: list("ROLEMINT_BENCH_WORKLOADS"),
            targets: list("ROLEMINT_BENCH_TARGETS"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    SelectOnly,
    TpcB,
    Churn,
    Latency,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::SelectOnly,
        Workload::TpcB,
        Workload::Churn,
        Workload::Latency,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only (-S -c8)",
            Workload::TpcB => "tpc-b (-c8)",
            Workload::Churn => "churn (-C -S -c8)",
            Workload::Latency => "latency (-S -c1)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only",
            Workload::TpcB => "tpc-b",
            Workload::Churn => "churn",
            Workload::Latency => "latency",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Workload::SelectOnly => &["-S", "-c", "8", "-j", "2"],
            Workload::TpcB => &["-c", "8", "-j", "2"],
            Workload::Churn => &["-C", "-S", "-c", "8", "-j", "2"],
            Workload::Latency => &["-S", "-c", "1", "-j", "1"],
        }
    }

    /// The rolemint template that can run this workload.
    fn template(self) -> &'static str {
        match self {
            Workload::TpcB => "readwrite",
            _ => "readonly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    PgBouncer,
    Rolemint,
    /// rolemint with a warm pool on the template (`readonly_pool`).
    RolemintPool,
    /// rolemint with `kernel_splice` (its own process).
    RolemintKernel,
    /// rolemint with every statement audited (`readonly_audit`,
    /// `readwrite_audit`): the cost of `audit_queries`.
    RolemintAudit,
}

/// The pooled template of the `rolemint+pool` target: the demo's readonly,
/// with roles minted and logged in ahead.
const POOL_TEMPLATE: &str = r#"
[roles.readonly_pool]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "24h"
warm_pool = 16
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
"#;

/// The demo's templates with `audit_queries = true`, for the
/// `rolemint+audit` target; its proxy writes them to a file.
const AUDIT_TEMPLATES: &str = r#"
[roles.readonly_audit]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "24h"
audit_queries = true
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]

[roles.readwrite_audit]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "24h"
audit_queries = true
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_owner TO \"{{name}}\"",
  "ALTER ROLE \"{{name}}\" SET role = 'app_owner'",
]
"#;

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
            Kind::Rolemint | Kind::RolemintKernel => workload.template(),
            Kind::RolemintPool => "readonly_pool",
            Kind::RolemintAudit => match workload {
                Workload::TpcB => "readwrite_audit",
                _ => "readonly_audit",
            },
        }
    }

    /// Whether this target runs `workload`: the pool only changes how a
    /// session starts, so it runs the churn only.
    fn runs(&self, workload: Workload) -> bool {
        match self.kind {
            Kind::RolemintPool => workload == Workload::Churn,
            // The splice changes the steady state only.
            Kind::RolemintKernel => workload != Workload::Churn,
            // The audit is a steady-state cost of each statement.
            Kind::RolemintAudit => matches!(workload, Workload::SelectOnly | Workload::TpcB),
            _ => true,
        }
    }

    fn tls(&self) -> bool {
        self.sslmode != "disable"
    }

    fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            port: self.port,
            sslmode: self.sslmode,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    rolemint::tls::install_crypto_provider();
    // `cargo bench` passes `--bench` (and maybe filters): ignored.
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&settings).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The harness options of the bench: no statement logging (it would
/// dominate the numbers), room for the idle sessions, TLS on the cluster.
fn options(settings: &Settings, cluster_tls: &ClusterTls) -> Options {
    let max = settings.idle + 100;
    Options {
        cluster: ClusterOptions {
            max_connections: max as u32 + 50,
            ..ClusterOptions::default()
        }
        .setting("ssl", "on")
        .setting("ssl_cert_file", cluster_tls.cert.display().to_string())
        .setting("ssl_key_file", cluster_tls.key.display().to_string()),
        capture_log: false,
        max_connections: max,
        ..Options::default()
    }
}

/// Runs everything; `Ok(false)` when a check failed (already printed).
async fn run(settings: &Settings) -> anyhow::Result<bool> {
    let cluster_tls = ClusterTls::new()?;
    let mut h = Harness::with(options(settings, &cluster_tls)).await;
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

    // One branch per client (pgbench's own advice): at scale 1 all eight
    // TPC-B clients queue on one branch row, and the row would measure
    // that lock (and how long each round trip holds it), not throughput.
    cluster::init_pgbench_tables(&h.cluster, TPCB_SCALE).context("pgbench -i")?;

    let total = settings.seconds * (settings.runs as u64) * 20 + 3600;
    let token =
        rolemint::auth::identity::issue(&h.config.auth, "bench", &[], Duration::from_secs(total))
            .context("issuing a token")?;
    // The pool is the proxy's only: the harness's in-process server
    // (which the bench does not use) must not hold pooled backends too.
    let audit_dir = tempfile::tempdir().context("a directory for the audit log")?;
    let proxy_options = Options {
        extra_toml: format!(
            "{POOL_TEMPLATE}{AUDIT_TEMPLATES}\n[audit]\npath = \"{}\"\n",
            audit_dir.path().join("audit.jsonl").display()
        ),
        ..options(settings, &cluster_tls)
    };
    let proxy = Proxy::start(&h, &proxy_options).await?;
    let kernel_proxy = Proxy::start(
        &h,
        &Options {
            kernel_splice: true,
            ..options(settings, &cluster_tls)
        },
    )
    .await?;

    let mut notes = Vec::new();
    if kernel_proxy.log().contains("kernel_splice is set, but") {
        notes.push(
            "rolemint+kernel: BPF is not permitted here; its rows are the user-space relay"
                .to_owned(),
        );
    }
    let bouncer = match PgBouncer::find() {
        None => {
            notes.push(
                "pgbouncer: not found on PATH or in /usr/sbin; its rows are skipped".to_owned(),
            );
            None
        }
        Some(bin) => match PgBouncer::start(&bin, h.cluster.port(), &verifier).await {
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
    let targets: Vec<Target> = targets(
        h.cluster.port(),
        bouncer.as_ref().map(|b| b.port),
        proxy.port,
        kernel_proxy.port,
    )
    .into_iter()
    .filter(|t| settings.targets.is_empty() || settings.targets.iter().any(|n| n == t.name))
    .collect();
    let secret_of = |t: &Target| {
        if matches!(
            t.kind,
            Kind::Rolemint | Kind::RolemintPool | Kind::RolemintKernel | Kind::RolemintAudit
        ) {
            &token
        } else {
            &password
        }
    };

    let pgbench = h.cluster.pgbench().to_owned();
    let server_version: String = su.query_one("SHOW server_version", &[]).await?.get(0);
    let pgbench_version = tool_version(&pgbench).await;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "rolemint pgbench: PostgreSQL {server_version}, {pgbench_version}, {} s per run, {} runs, {cpus} CPUs",
        settings.seconds, settings.runs
    );
    for note in &notes {
        println!("note: {note}");
    }

    // Warm the caches and check every target answers (not reported).
    for target in &targets {
        let user = target.user(Workload::SelectOnly);
        runner::run(
            &pgbench,
            target.endpoint(),
            user,
            secret_of(target),
            &["-S", "-c", "1"],
            1,
        )
        .await
        .with_context(|| format!("warm-up against {}", target.name))?;
    }

    let mut series: Vec<Series> = Vec::new();
    let chosen = |w: Workload| {
        settings.workloads.is_empty() || settings.workloads.iter().any(|k| k == w.key())
    };
    for workload in Workload::ALL.into_iter().filter(|w| chosen(*w)) {
        for target in targets.iter().filter(|t| t.runs(workload)) {
            series.push(Series {
                workload,
                target: target.name,
                kind: target.kind,
                tls: target.tls(),
                runs: Vec::new(),
                errors: Vec::new(),
            });
        }
    }
    for run in 1..=settings.runs {
        for s in series.iter_mut() {
            let target = targets
                .iter()
                .find(|t| t.name == s.target)
                .expect("known target");
            reset_tables(&su).await?;
            eprint!(
                "run {run}: {} against {} ... ",
                s.workload.label(),
                target.name
            );
            let user = target.user(s.workload);
            let args = s.workload.args();
            match runner::run(
                &pgbench,
                target.endpoint(),
                user,
                secret_of(target),
                args,
                settings.seconds,
            )
            .await
            {
                Ok(f) => {
                    eprintln!("{:.0} tps", f.tps);
                    s.runs.push(f);
                }
                Err(e) => {
                    eprintln!("FAILED");
                    s.errors.push(format!("{e:#}"));
                }
            }
        }
    }

    let mut connects = Vec::new();
    if settings.connects > 0 {
        for target in &targets {
            // TLS targets twice: full handshakes (as libpq makes them) and
            // with the client resuming its session. PostgreSQL turns
            // resumption off, so only rolemint's row can differ.
            let ca = match target.kind {
                Kind::Direct => cluster_tls.cert.clone(),
                _ => proxy.cert(),
            };
            let modes: &[(Option<bool>, &str)] = if target.tls() {
                &[
                    (Some(false), " (full handshakes)"),
                    (Some(true), " (resumed)"),
                ]
            } else {
                &[(None, "")]
            };
            for (resume, how) in modes {
                let tls = resume
                    .map(|resume| proxy::tls_client(&ca, resume))
                    .transpose()?;
                let name = format!("{}{how}", target.name);
                eprintln!("connect latency against {name} ...");
                let user = target.user(Workload::SelectOnly);
                let mut samples = proxy::connect_latencies(
                    target.port,
                    user,
                    secret_of(target),
                    settings.connects,
                    tls.as_ref(),
                )
                .await
                .with_context(|| format!("connect latency against {name}"))?;
                connects.push(Connects {
                    target: name,
                    count: samples.len(),
                    p50_us: runner::percentile(&mut samples, 0.50).unwrap_or(0.0),
                    p99_us: runner::percentile(&mut samples, 0.99).unwrap_or(0.0),
                });
            }
        }
    }
    if let Some(b) = bouncer {
        b.stop().await;
    }

    let idle = if settings.idle > 0 {
        eprintln!("{} idle sessions ...", settings.idle);
        Some(proxy::idle_memory(&proxy, "readonly", &token, settings.idle).await?)
    } else {
        None
    };
    let churn = if settings.churn > 0 {
        eprintln!("{} churned sessions ...", settings.churn);
        Some(proxy::churn_memory(&proxy, "readonly", &token, settings.churn, 8).await?)
    } else {
        None
    };
    // Every session is closed: every session's role must go, without a
    // restart (the pool's unclaimed roles stay until shutdown).
    let roles_left = session_roles_left(&h, ROLE_DROP_WAIT).await?;
    let stopped = proxy.stop().await;
    let kernel_stopped = kernel_proxy.stop().await;

    let report = Report {
        series: &series,
        connects: &connects,
        idle: idle.as_ref(),
        churn: churn.as_ref(),
        roles_left,
    };
    report.print();
    let meta = serde_json::json!({
        "postgresql": server_version,
        "pgbench": pgbench_version,
        "cpus": cpus,
        "seconds_per_run": settings.seconds,
        "runs": settings.runs,
        "notes": notes,
    });
    write_json(&settings.json, &report.to_json(meta))?;
    println!("results written to {}", settings.json.display());

    // Checks.
    let mut ok = true;
    for s in &series {
        for e in &s.errors {
            ok = false;
            println!(
                "error: {} against {} failed: {e}",
                s.workload.label(),
                s.target
            );
        }
        let failed: u64 = s.runs.iter().map(|f| f.failed).sum();
        if failed > 0 {
            ok = false;
            println!(
                "error: {} against {}: {failed} failed transactions",
                s.workload.label(),
                s.target
            );
        }
    }
    if roles_left > 0 {
        ok = false;
        println!(
            "error: {roles_left} roles still in rolemint_managed {} s after the last session",
            ROLE_DROP_WAIT.as_secs()
        );
    }
    for e in [stopped, kernel_stopped]
        .into_iter()
        .filter_map(Result::err)
    {
        ok = false;
        println!("error: {e:#}");
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

/// Minted roles that are not waiting in a warm pool, once none is left or
/// `within` has passed: the roles of sessions that have ended.
async fn session_roles_left(h: &Harness, within: Duration) -> anyhow::Result<usize> {
    let su = h.superuser().await;
    let count = || async {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'rolemint_managed' \
                 AND NOT m.admin_option AND r.rolname LIKE 'v-%' \
                 AND coalesce(shobj_description(r.oid, 'pg_authid'), '') NOT LIKE '%\"kind\":\"warm\"%'",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, i64>(0))
    };
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = count().await?;
        if left == 0 || std::time::Instant::now() > deadline {
            return Ok(left as usize);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn targets(
    pg_port: u16,
    bouncer_port: Option<u16>,
    proxy_port: u16,
    kernel_port: u16,
) -> Vec<Target> {
    let mut targets = vec![
        Target {
            name: "direct",
            kind: Kind::Direct,
            port: pg_port,
            sslmode: "disable",
        },
        Target {
            name: "direct+tls",
            kind: Kind::Direct,
            port: pg_port,
            sslmode: "require",
        },
    ];
    if let Some(port) = bouncer_port {
        targets.push(Target {
            name: "pgbouncer",
            kind: Kind::PgBouncer,
            port,
            sslmode: "disable",
        });
    }
    targets.push(Target {
        name: "rolemint",
        kind: Kind::Rolemint,
        port: proxy_port,
        sslmode: "disable",
    });
    targets.push(Target {
        name: "rolemint+kernel",
        kind: Kind::RolemintKernel,
        port: kernel_port,
        sslmode: "disable",
    });
    targets.push(Target {
        name: "rolemint+pool",
        kind: Kind::RolemintPool,
        port: proxy_port,
        sslmode: "disable",
    });
    targets.push(Target {
        name: "rolemint+audit",
        kind: Kind::RolemintAudit,
        port: proxy_port,
        sslmode: "disable",
    });
    targets.push(Target {
        name: "rolemint+tls",
        kind: Kind::Rolemint,
        port: proxy_port,
        sslmode: "require",
    });
    targets
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

//! Cost as the work grows (issue 22): many live credential leases on one
//! instance, a catalog of a million unrelated roles, a storm of clients at
//! once, CPU per transaction and per connection, and a soak. Every target
//! of the issue is printed as met / NOT met with its numbers, and written
//! to JSON.
//!
//! # Running it
//!
//! ```text
//! cargo bench --bench scale                  # the full sizes (~30 min on two free cores)
//! ROLEMINT_SCALE_LEASES=10000 ROLEMINT_SCALE_ROLES=100000 ROLEMINT_SCALE_CLIENTS=300 \
//!   ROLEMINT_SCALE_RUNS=1 ROLEMINT_SCALE_SECONDS=5 cargo bench --bench scale   # a quick run
//! ROLEMINT_BENCH_SOAK=30m ROLEMINT_SCALE_PARTS=soak cargo bench --bench scale  # the soak
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ROLEMINT_SCALE_LEASES` | 100000 | credential leases minted through the Vault door (item 1) |
//! | `ROLEMINT_SCALE_ROLES` | 1000000 | unrelated roles created in `pg_authid` (item 2) |
//! | `ROLEMINT_SCALE_CLIENTS` | 1000 | clients connecting at once (item 3) |
//! | `ROLEMINT_SCALE_IN_FLIGHT` | 32 | mint requests in flight at once |
//! | `ROLEMINT_SCALE_CONNECTS` | 200 | sequential connects behind a connect p50 |
//! | `ROLEMINT_SCALE_SECONDS` | 10 | length of each pgbench run, and of the idle connect loop |
//! | `ROLEMINT_SCALE_RUNS` | 3 | runs of each CPU row; medians and spreads are reported |
//! | `ROLEMINT_SCALE_PARTS` | all but the soak | comma-separated: `cpu-tx,cpu-conn,storm,leases,soak` |
//! | `ROLEMINT_BENCH_SOAK` | unset | soak length (`30m`); set, the soak runs |
//! | `ROLEMINT_BENCH_JSON` | `target/bench/scale.json` | where the results go |
//!
//! It needs what `benches/pgbench.rs` needs (PostgreSQL's binaries,
//! PgBouncer optional) and a soft `ulimit -n` above three times the client
//! count.
//!
//! # What runs
//!
//! One throwaway cluster (`max_connections` raised to fit the storm), and
//! rolemint as its own `rolemint serve` process with the admin listener
//! and the Vault door, so its RSS and CPU are its own. The parts, in order:
//!
//! - `cpu-tx` (item 4): pgbench select-only and TPC-B, `-c 8 -j 2`,
//!   against rolemint, rolemint with `kernel_splice` (a second process) and
//!   PgBouncer; the proxy's user+system time from `/proc/<pid>/stat` per
//!   1,000 transactions.
//! - `cpu-conn` (item 5): pgbench `-C -S` (a connection per transaction)
//!   against PostgreSQL with SCRAM, PgBouncer, rolemint and rolemint with a
//!   warm pool; the CPU time of every process of the cluster (postmaster,
//!   ended and live backends: see `shared/procfs.rs`) plus the proxy's, per
//!   connection, read once every role of the run is dropped and the pool
//!   is full again.
//! - `storm` (item 3): the client count connecting at the same instant to
//!   PostgreSQL (SCRAM), rolemint, rolemint's warm pool and rolemint over
//!   TLS with resumption; each a session or a clean 53300, all held open
//!   until every client has its answer. The bench's tokio-postgres clients
//!   derive SCRAM keys on the same two cores, so the direct row carries the
//!   clients' PBKDF2 too, as a real storm's hosts would, elsewhere.
//! - `leases` (items 1 and 2), on a freshly started proxy: mint through
//!   `GET /v1/database/creds`
//!   spread over 64 principals; RSS per lease; LIST and the paged listing;
//!   lookup, renew and revoke of single leases; the unrelated roles, connect
//!   p50 against the empty catalog's (measured at the start), `EXPLAIN
//!   ANALYZE` of the directory's and reaper's queries; a new instance over
//!   the same catalog (time to serve a lease it never minted, its first
//!   reaper pass); `revoke-prefix` of every lease while four loops of
//!   another template's sessions connect, against the same loops idle.
//! - `soak` (item 6): pgbench `-C` at 20 connections/s, and every minute
//!   20 credential leases minted and revoked by prefix and a SIGHUP; RSS and
//!   open files every 10 s.
//!
//! Nothing here is an assertion: the bench fails (exit 1) only when a step
//! could not run or a minted role is left behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use rolemint::cli::dev::cluster::{self, ClusterOptions};
use rolemint::secret::Secret;
use serde_json::json;

#[path = "scale/http.rs"]
mod http;
#[path = "scale/leases.rs"]
mod leases;
#[path = "scale/load.rs"]
mod load;
#[path = "scale/report.rs"]
mod report;
#[path = "shared/mod.rs"]
mod shared;

use http::Admin;
use load::{CpuTarget, Door};
use report::{quantile_ms, Results};
use shared::common::{Harness, Options};
use shared::pgbouncer::PgBouncer;
use shared::proxy::{self, Proxy};
use shared::{bench_dir, env_list, env_number, random_hex, tool_version, write_json, BENCH_ROLE};

/// The pooled template: the demo's readonly with roles minted ahead.
const POOL_SIZE: usize = 16;

struct Settings {
    leases: usize,
    roles: usize,
    clients: usize,
    in_flight: usize,
    connects: usize,
    seconds: u64,
    runs: usize,
    parts: Vec<String>,
    soak: Option<Duration>,
    json: PathBuf,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let soak = match std::env::var("ROLEMINT_BENCH_SOAK") {
            Err(_) => None,
            Ok(v) => Some(
                humantime::parse_duration(v.trim())
                    .map_err(|e| anyhow!("ROLEMINT_BENCH_SOAK={v:?}: {e}"))?,
            ),
        };
        let mut parts = env_list("ROLEMINT_SCALE_PARTS");
        if parts.is_empty() {
            parts = ["cpu-tx", "cpu-conn", "storm", "leases"]
                .map(str::to_owned)
                .to_vec();
            if soak.is_some() {
                parts.push("soak".into());
            }
        }
        Ok(Settings {
            leases: env_number("ROLEMINT_SCALE_LEASES", 100_000)?.max(100) as usize,
            roles: env_number("ROLEMINT_SCALE_ROLES", 1_000_000)? as usize,
            clients: env_number("ROLEMINT_SCALE_CLIENTS", 1_000)?.max(1) as usize,
            in_flight: env_number("ROLEMINT_SCALE_IN_FLIGHT", 32)?.max(1) as usize,
            connects: env_number("ROLEMINT_SCALE_CONNECTS", 200)?.max(1) as usize,
            seconds: env_number("ROLEMINT_SCALE_SECONDS", 10)?.max(1),
            runs: env_number("ROLEMINT_SCALE_RUNS", 3)?.max(1) as usize,
            parts,
            soak,
            json: std::env::var_os("ROLEMINT_BENCH_JSON")
                .map(PathBuf::from)
                .unwrap_or_else(|| bench_dir().join("scale.json")),
        })
    }

    fn runs_part(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// What every part works with.
pub struct Ctx {
    settings: Settings,
    h: Harness,
    /// The cluster's superuser, for counting roles and plans.
    su: tokio_postgres::Client,
    /// rolemint under test (admin listener, Vault door, warm pool).
    proxy: Proxy,
    admin: Admin,
    /// A session token of the identity `bench`.
    token: Secret,
    /// The password of the static role of the direct rows.
    password: Secret,
    /// The warm pool's size: settling waits until it is full again.
    pool_size: usize,
    results: Results,
}

impl Ctx {
    /// A door of the proxy under test, for sessions of `user`.
    fn door(&self, name: &'static str, user: &'static str) -> Door {
        Door {
            name,
            port: self.proxy.port,
            user,
            secret: self.token.clone(),
            tls: None,
        }
    }

    /// The options of another proxy of this bench (admin port of its own).
    fn proxy_options(&self) -> anyhow::Result<(Options, u16)> {
        proxy_options(&self.settings)
    }
}

fn pool_template() -> String {
    format!(
        r#"
[roles.readonly_pool]
databases = ["appdb"]
allow_identities = ["*"]
default_ttl = "1h"
max_ttl = "24h"
warm_pool = {POOL_SIZE}
creation_statements = [
  "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}'",
  "GRANT app_read TO \"{{{{name}}}}\"",
]
"#
    )
}

/// Harness options: room for the storm, no statement log.
fn options(settings: &Settings) -> Options {
    Options {
        cluster: ClusterOptions {
            max_connections: settings.clients as u32 + 200,
            ..ClusterOptions::default()
        },
        capture_log: false,
        max_connections: settings.clients + 100,
        ..Options::default()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    rolemint::tls::install_crypto_provider();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(settings).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<bool> {
    // The harness's own in-process server sweeps once at its start (an
    // empty catalog) and then stays out of the figures.
    let h = Harness::with(Options {
        extra_toml: "[mint]\nreap_interval = \"7d\"\n".into(),
        ..options(&settings)
    })
    .await;
    let su = h.superuser().await;
    let password = Secret::new(random_hex(24)?);
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    su.batch_execute(&format!(
        "CREATE ROLE {BENCH_ROLE} LOGIN PASSWORD '{verifier}';
         GRANT app_owner TO {BENCH_ROLE};
         ALTER ROLE {BENCH_ROLE} SET role = 'app_owner';"
    ))
    .await
    .context("creating the bench role")?;
    cluster::init_pgbench_tables(&h.cluster, 8).context("pgbench -i")?;
    let token = rolemint::auth::identity::issue(
        &h.config.auth,
        "bench",
        &[],
        Duration::from_secs(12 * 3600),
    )?;

    let (opts, admin_port) = proxy_options(&settings)?;
    let proxy = Proxy::start(&h, &opts).await?;
    let mut ctx = Ctx {
        admin: Admin::new(admin_port)?,
        settings,
        su,
        proxy,
        h,
        token,
        password,
        pool_size: POOL_SIZE,
        results: Results::default(),
    };
    let server_version: String = ctx.su.query_one("SHOW server_version", &[]).await?.get(0);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let s = &ctx.settings;
    println!(
        "rolemint scale: PostgreSQL {server_version}, {cpus} CPUs; {} leases, {} roles, {} clients, {} runs of {} s; parts {}",
        s.leases, s.roles, s.clients, s.runs, s.seconds, s.parts.join(",")
    );
    load::settle_sessions(&ctx).await?;

    // Connect p50 on the empty catalog: item 2's yardstick.
    let door = ctx.door("rolemint", "readonly");
    let empty = load::sequential(&door, ctx.settings.connects).await?;
    let empty_p50 = quantile_ms(&empty, 0.5);
    ctx.results.figure(
        "catalog",
        "empty",
        json!({"connect_p50_ms": empty_p50, "connect_p99_ms": quantile_ms(&empty, 0.99)}),
    );

    let mut kernel = None;
    let mut bouncer = None;
    if ctx.settings.runs_part("cpu-tx") || ctx.settings.runs_part("cpu-conn") {
        bouncer = start_bouncer(&mut ctx, &verifier).await;
    }
    if ctx.settings.runs_part("cpu-tx") {
        let k = Proxy::start(
            &ctx.h,
            &Options {
                kernel_splice: true,
                ..options(&ctx.settings)
            },
        )
        .await?;
        if k.log().contains("kernel_splice is set, but") {
            ctx.results.notes.push(
                "rolemint+kernel: BPF is not permitted here; its row is the user-space relay"
                    .into(),
            );
        }
        let mut targets = vec![
            cpu_target(&ctx, "rolemint", ctx.proxy.port, ctx.proxy.pid),
            cpu_target(&ctx, "rolemint+kernel", k.port, k.pid),
        ];
        if let Some(b) = &bouncer {
            targets.push(CpuTarget {
                name: "pgbouncer",
                port: b.port,
                secret: ctx.password.clone(),
                users: (BENCH_ROLE, BENCH_ROLE),
                pid: b.pid,
            });
        }
        load::cpu_per_transaction(&mut ctx, &targets).await?;
        kernel = Some(k);
    }
    if ctx.settings.runs_part("cpu-conn") {
        let pg_port = ctx.h.cluster.port();
        let mut targets = vec![(
            CpuTarget {
                name: "direct",
                port: pg_port,
                secret: ctx.password.clone(),
                users: (BENCH_ROLE, BENCH_ROLE),
                pid: 0,
            },
            false,
        )];
        if let Some(b) = &bouncer {
            targets.push((
                CpuTarget {
                    name: "pgbouncer",
                    port: b.port,
                    secret: ctx.password.clone(),
                    users: (BENCH_ROLE, BENCH_ROLE),
                    pid: b.pid,
                },
                true,
            ));
        }
        targets.push((
            cpu_target(&ctx, "rolemint", ctx.proxy.port, ctx.proxy.pid),
            true,
        ));
        let mut pool = cpu_target(&ctx, "rolemint+pool", ctx.proxy.port, ctx.proxy.pid);
        pool.users = ("readonly_pool", "readonly_pool");
        targets.push((pool, true));
        load::cpu_per_connection(&mut ctx, &targets).await?;
    }
    if let Some(b) = bouncer {
        b.stop().await;
    }
    if let Some(k) = kernel {
        k.stop().await?;
    }
    if ctx.settings.runs_part("storm") {
        let direct = Door {
            name: "direct",
            port: ctx.h.cluster.port(),
            user: BENCH_ROLE,
            secret: ctx.password.clone(),
            tls: None,
        };
        let tls = Door {
            name: "rolemint+tls (resumed)",
            tls: Some(proxy::tls_client(&ctx.proxy.cert(), true)?),
            ..ctx.door("rolemint+tls", "readonly")
        };
        // One handshake first, so the storm's clients have a ticket.
        load::sequential(&tls, 1).await?;
        let doors = [
            direct,
            ctx.door("rolemint", "readonly"),
            ctx.door("rolemint+pool", "readonly_pool"),
            tls,
        ];
        load::storm(&mut ctx, &doors).await?;
    }
    if ctx.settings.runs_part("leases") {
        // A fresh instance, so the memory the storm's sessions left behind
        // in the allocator does not hide the leases' own.
        let (opts, admin_port) = ctx.proxy_options()?;
        let fresh = Proxy::start(&ctx.h, &opts).await?;
        std::mem::replace(&mut ctx.proxy, fresh).stop().await?;
        ctx.admin = Admin::new(admin_port)?;
        load::settle_sessions(&ctx).await?;
        leases::run(&mut ctx, empty_p50).await?;
    }
    if ctx.settings.runs_part("soak") {
        let length = ctx.settings.soak.unwrap_or(Duration::from_secs(300));
        load::soak(&mut ctx, length).await?;
    }

    load::settle_sessions(&ctx).await?;
    let (sessions_left, _) = session_roles(&ctx.su).await?;
    let stopped = ctx.proxy.stop().await;
    ctx.results.print();
    let meta = json!({
        "postgresql": server_version,
        "pgbench": tool_version(ctx.h.cluster.pgbench()).await,
        "cpus": cpus,
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "sizes": {"leases": ctx.settings.leases, "roles": ctx.settings.roles,
                  "clients": ctx.settings.clients, "runs": ctx.settings.runs,
                  "seconds": ctx.settings.seconds, "soak_s": ctx.settings.soak.map(|d| d.as_secs())},
        "parts": ctx.settings.parts,
    });
    write_json(&ctx.settings.json, &ctx.results.to_json(meta))?;
    println!("results written to {}", ctx.settings.json.display());

    let mut ok = true;
    if sessions_left > 0 {
        ok = false;
        println!("error: {sessions_left} session roles left after the last session");
    }
    if let Err(e) = stopped {
        ok = false;
        println!("error: {e:#}");
    }
    ctx.h.stop().await?;
    let left = ctx.h.managed_roles().await.len();
    if left > 0 {
        ok = false;
        println!("error: {left} roles are members of rolemint_managed after shutdown");
    }
    Ok(ok)
}

fn cpu_target(ctx: &Ctx, name: &'static str, port: u16, pid: u32) -> CpuTarget {
    CpuTarget {
        name,
        port,
        secret: ctx.token.clone(),
        users: ("readonly", "readwrite"),
        pid,
    }
}

async fn start_bouncer(ctx: &mut Ctx, verifier: &str) -> Option<PgBouncer> {
    let Some(bin) = PgBouncer::find() else {
        ctx.results
            .notes
            .push("pgbouncer: not found on PATH or in /usr/sbin; its rows are skipped".into());
        return None;
    };
    match PgBouncer::start(&bin, ctx.h.cluster.port(), verifier).await {
        Ok(b) => Some(b),
        Err(e) => {
            ctx.results
                .notes
                .push(format!("pgbouncer would not start, skipped: {e:#}"));
            None
        }
    }
}

/// Minted roles now: (of sessions and leases, waiting in a warm pool).
async fn session_roles(su: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let row = su
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT warm), count(*) FILTER (WHERE warm) FROM (
               SELECT coalesce(shobj_description(r.oid, 'pg_authid'), '') LIKE '%\"kind\":\"warm\"%' AS warm
                 FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid
                 JOIN pg_roles g ON g.oid = m.roleid
                WHERE g.rolname = 'rolemint_managed' AND NOT m.admin_option
                  AND r.rolname LIKE 'v-%') s",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Minted roles whose lease id starts with `prefix`.
async fn roles_under(su: &tokio_postgres::Client, prefix: &str) -> anyhow::Result<i64> {
    Ok(su
        .query_one(
            "SELECT count(*) FROM pg_roles r \
               JOIN pg_auth_members m ON m.member = r.oid \
               JOIN pg_roles g ON g.oid = m.roleid \
              WHERE g.rolname = 'rolemint_managed' AND NOT m.admin_option \
                AND starts_with(shobj_description(r.oid, 'pg_authid')::jsonb ->> 'lease_id', $1)",
            &[&prefix],
        )
        .await?
        .get(0))
}

/// The options of a proxy of this bench with its own admin port.
fn proxy_options(settings: &Settings) -> anyhow::Result<(Options, u16)> {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let options = Options {
        extra_toml: format!(
            "{}{}",
            http::admin_toml(admin_port, settings.leases + 10_000),
            pool_template()
        ),
        ..options(settings)
    };
    Ok((options, admin_port))
}

//! Sessions as load: connect loops, the storm of clients at once (item 3),
//! CPU per transaction (item 4) and per connection (item 5), the soak
//! (item 6).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rolemint::secret::Secret;
use serde_json::json;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use super::report::{quantile_ms, show, spread};
use super::shared::procfs;
use super::shared::proxy;
use super::shared::runner::{self, Endpoint};
use super::Ctx;

/// Where sessions connect, as whom.
#[derive(Clone)]
pub struct Door {
    pub name: &'static str,
    pub port: u16,
    pub user: &'static str,
    pub secret: Secret,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Connect latencies and failures of a loop.
#[derive(Default)]
pub struct Loop {
    pub latencies: Vec<Duration>,
    pub failures: Vec<String>,
}

/// `workers` loops of connect, `SELECT 1`, close against `door` until
/// `stop`; each connect bounded by 30 s.
pub async fn connect_loop(door: &Door, workers: usize, stop: CancellationToken) -> Loop {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (door, stop) = (door.clone(), stop.clone());
        tasks.spawn(async move {
            let mut out = Loop::default();
            while !stop.is_cancelled() {
                let started = Instant::now();
                match one_session(&door).await {
                    Ok(()) => out.latencies.push(started.elapsed()),
                    Err(e) => out.failures.push(e),
                }
            }
            out
        });
    }
    let mut all = Loop::default();
    while let Some(Ok(one)) = tasks.join_next().await {
        all.latencies.extend(one.latencies);
        all.failures.extend(one.failures);
    }
    all
}

/// One session: connect (the latency sample), one query, close.
async fn one_session(door: &Door) -> Result<(), String> {
    let connect = proxy::connect(door.port, door.user, &door.secret, door.tls.as_ref());
    match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Err(_) => Err("no session within 30 s".into()),
        Ok(Err(e)) => Err(describe(&e)),
        Ok(Ok(client)) => client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("{e}")),
    }
}

fn describe(e: &anyhow::Error) -> String {
    match e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
    {
        Some(code) => format!("SQLSTATE {}", code.code()),
        None => format!("{e:#}"),
    }
}

/// `count` sequential connects; their latencies (failures are errors).
pub async fn sequential(door: &Door, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        one_session(door)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", door.name))?;
        out.push(started.elapsed());
    }
    Ok(out)
}

/// How one client of a storm fared.
enum Fate {
    Session(Duration),
    TooMany,
    Other(String),
}

/// Item 3: `clients` connect at the same moment to each door; every one
/// must get a session or a clean 53300. Sessions stay open until every
/// client has its answer, so all are open at once.
pub async fn storm(ctx: &mut Ctx, doors: &[Door]) -> anyhow::Result<()> {
    let clients = ctx.settings.clients;
    let mut p50s = Vec::new();
    for door in doors {
        eprintln!("storm: {clients} clients at once against {} ...", door.name);
        let start = Arc::new(Barrier::new(clients));
        let answered = Arc::new(Barrier::new(clients));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (door, start, answered) = (door.clone(), start.clone(), answered.clone());
            tasks.spawn(async move {
                start.wait().await;
                let started = Instant::now();
                let connect = proxy::connect(door.port, door.user, &door.secret, door.tls.as_ref());
                let (fate, client) =
                    match tokio::time::timeout(Duration::from_secs(60), connect).await {
                        Err(_) => (Fate::Other("no answer within 60 s".into()), None),
                        Ok(Ok(client)) => (Fate::Session(started.elapsed()), Some(client)),
                        Ok(Err(e)) => match describe(&e) {
                            s if s == "SQLSTATE 53300" => (Fate::TooMany, None),
                            s => (Fate::Other(s), None),
                        },
                    };
                let fate = match (fate, &client) {
                    (Fate::Session(d), Some(c)) => match c.simple_query("SELECT 1").await {
                        Ok(_) => Fate::Session(d),
                        Err(e) => Fate::Other(format!("session did not answer: {e}")),
                    },
                    (fate, _) => fate,
                };
                answered.wait().await;
                drop(client);
                fate
            });
        }
        let (mut ok, mut too_many, mut other) = (Vec::new(), 0, Vec::new());
        while let Some(joined) = tasks.join_next().await {
            match joined.context("storm client")? {
                Fate::Session(d) => ok.push(d),
                Fate::TooMany => too_many += 1,
                Fate::Other(e) => other.push(e),
            }
        }
        let (p50, p99) = (quantile_ms(&ok, 0.50), quantile_ms(&ok, 0.99));
        p50s.push((door.name, p50, p99));
        let mut kinds: Vec<String> = other.clone();
        kinds.sort();
        kinds.dedup();
        ctx.results.figure(
            "storm",
            door.name,
            json!({"clients": clients, "sessions": ok.len(), "53300": too_many,
                   "other": other.len(), "other_kinds": kinds.iter().take(5).collect::<Vec<_>>(),
                   "p50_ms": p50, "p99_ms": p99}),
        );
        ctx.results.check(
            3,
            format!("{clients} clients at once, {}", door.name),
            "each a session or a clean 53300",
            format!(
                "{} sessions, {too_many} × 53300, {} other{}; p50 {p50:.0} ms, p99 {p99:.0} ms",
                ok.len(),
                other.len(),
                kinds
                    .first()
                    .map(|k| format!(" (e.g. {k})"))
                    .unwrap_or_default()
            ),
            Some(other.is_empty()),
        );
        settle_sessions(ctx).await?;
    }
    if let Some((_, direct_p50, direct_p99)) = p50s.iter().find(|(n, ..)| *n == "direct").copied() {
        for (name, p50, p99) in p50s.iter().filter(|(n, ..)| *n != "direct") {
            ctx.results.check(
                3,
                format!("storm p50/p99 vs direct SCRAM, {name}"),
                "reported",
                format!(
                    "{:.2}x / {:.2}x",
                    p50 / direct_p50.max(0.001),
                    p99 / direct_p99.max(0.001)
                ),
                None,
            );
        }
    }
    Ok(())
}

/// Waits until no session role is left (the pool's waiting roles aside)
/// and the pool is full again, at most 60 s.
pub async fn settle_sessions(ctx: &Ctx) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (sessions, warm) = super::session_roles(&ctx.su).await?;
        let pool_full = ctx.pool_size == 0 || warm >= ctx.pool_size as i64;
        if (sessions == 0 && pool_full) || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One target of the CPU rows: a door for pgbench and the process whose
/// CPU counts.
pub struct CpuTarget {
    pub name: &'static str,
    pub port: u16,
    pub secret: Secret,
    /// The user for select-only and for TPC-B.
    pub users: (&'static str, &'static str),
    pub pid: u32,
}

/// Item 4: the proxy's own CPU time per 1,000 transactions, select-only and
/// TPC-B, `runs` interleaved runs of `seconds`.
pub async fn cpu_per_transaction(ctx: &mut Ctx, targets: &[CpuTarget]) -> anyhow::Result<()> {
    let workloads: [(&str, &[&str]); 2] = [
        ("select-only", &["-S", "-c", "8", "-j", "2"]),
        ("tpc-b", &["-c", "8", "-j", "2"]),
    ];
    let pgbench = ctx.h.cluster.pgbench().to_owned();
    for (workload, args) in workloads {
        let mut per_k: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let mut tps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        for run in 1..=ctx.settings.runs {
            for (i, t) in targets.iter().enumerate() {
                eprintln!(
                    "cpu per transaction: run {run}, {workload} against {} ...",
                    t.name
                );
                let user = if workload == "tpc-b" {
                    t.users.1
                } else {
                    t.users.0
                };
                let before = procfs::cpu(t.pid)?;
                let f = runner::run(
                    &pgbench,
                    Endpoint {
                        port: t.port,
                        sslmode: "disable",
                    },
                    user,
                    &t.secret,
                    args,
                    ctx.settings.seconds,
                )
                .await
                .with_context(|| format!("{workload} against {}", t.name))?;
                let used = procfs::cpu(t.pid)?.saturating_sub(before);
                per_k[i].push(used.as_secs_f64() * 1e3 / (f.transactions.max(1) as f64 / 1e3));
                tps[i].push(f.tps);
            }
        }
        for (i, t) in targets.iter().enumerate() {
            ctx.results.figure(
                "cpu_per_1000_tx",
                &format!("{workload} {}", t.name),
                json!({"ms_per_1000_tx": per_k[i], "tps": tps[i]}),
            );
        }
        let median = |name: &str| {
            targets
                .iter()
                .position(|t| t.name == name)
                .map(|i| spread(&per_k[i]).0)
        };
        let bouncer = median("pgbouncer");
        for (i, t) in targets.iter().enumerate() {
            let (goal, met) = match (t.name, bouncer) {
                ("rolemint", Some(b)) => {
                    ("≤ PgBouncer's".to_owned(), Some(spread(&per_k[i]).0 <= b))
                }
                ("rolemint+kernel", Some(b)) => (
                    "≤ 0.25x PgBouncer's".to_owned(),
                    Some(spread(&per_k[i]).0 <= 0.25 * b),
                ),
                _ => ("reported".to_owned(), None),
            };
            let ratio = bouncer
                .map(|b| format!(", {:.2}x PgBouncer", spread(&per_k[i]).0 / b.max(1e-9)))
                .unwrap_or_default();
            ctx.results.check(
                4,
                format!("proxy CPU per 1,000 tx, {workload}, {}", t.name),
                goal,
                format!(
                    "{} ms{ratio} (at {} tps)",
                    show(&per_k[i], 1),
                    show(&tps[i], 0)
                ),
                met,
            );
        }
    }
    Ok(())
}

/// Item 5: CPU per connection, PostgreSQL's (every process of the cluster)
/// plus the proxy's, with pgbench `-C -S`: a connection per transaction.
pub async fn cpu_per_connection(
    ctx: &mut Ctx,
    targets: &[(CpuTarget, bool)],
) -> anyhow::Result<()> {
    let postmaster = ctx
        .h
        .cluster
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the cluster is not running"))?;
    let pgbench = ctx.h.cluster.pgbench().to_owned();
    let mut per_conn: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut pg_share: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for run in 1..=ctx.settings.runs {
        for (i, (t, has_proxy)) in targets.iter().enumerate() {
            eprintln!("cpu per connection: run {run} against {} ...", t.name);
            settle_sessions(ctx).await?;
            let proxy_cpu = || {
                if *has_proxy {
                    procfs::cpu(t.pid)
                } else {
                    Ok(Duration::ZERO)
                }
            };
            let (pg0, px0) = (procfs::cluster_cpu(postmaster)?, proxy_cpu()?);
            let f = runner::run(
                &pgbench,
                Endpoint {
                    port: t.port,
                    sslmode: "disable",
                },
                t.users.0,
                &t.secret,
                &["-C", "-S", "-c", "8", "-j", "2"],
                ctx.settings.seconds,
            )
            .await
            .with_context(|| format!("churn against {}", t.name))?;
            // Every role of these sessions dropped, the pool refilled: the
            // work a connection caused is done.
            settle_sessions(ctx).await?;
            let pg = procfs::cluster_cpu(postmaster)?.saturating_sub(pg0);
            let px = proxy_cpu()?.saturating_sub(px0);
            let n = f.transactions.max(1) as f64;
            per_conn[i].push((pg + px).as_secs_f64() * 1e3 / n);
            pg_share[i].push(pg.as_secs_f64() * 1e3 / n);
        }
    }
    let median = |name: &str| {
        targets
            .iter()
            .position(|(t, _)| t.name == name)
            .map(|i| spread(&per_conn[i]).0)
    };
    let (direct, plain) = (median("direct"), median("rolemint"));
    for (i, (t, _)) in targets.iter().enumerate() {
        ctx.results.figure(
            "cpu_per_connection",
            t.name,
            json!({"ms_total": per_conn[i], "ms_postgresql": pg_share[i]}),
        );
        let m = spread(&per_conn[i]).0;
        let (goal, met) = match (t.name, direct, plain) {
            ("rolemint", Some(d), _) => ("≤ 0.6x direct SCRAM".to_owned(), Some(m <= 0.6 * d)),
            ("rolemint+pool", _, Some(p)) => ("≤ rolemint's".to_owned(), Some(m <= p)),
            _ => ("reported".to_owned(), None),
        };
        let ratio = direct
            .map(|d| format!(", {:.2}x direct", m / d.max(1e-9)))
            .unwrap_or_default();
        ctx.results.check(
            5,
            format!("CPU per connection (cluster + proxy), {}", t.name),
            goal,
            format!(
                "{} ms{ratio}; PostgreSQL's part {} ms",
                show(&per_conn[i], 2),
                show(&pg_share[i], 2)
            ),
            met,
        );
    }
    Ok(())
}

/// Item 6: pgbench `-C` at a fixed rate for `length`, a revoke-prefix of
/// fresh credential leases and a SIGHUP every minute; RSS and open files
/// sampled every 10 s; every role gone at the end.
pub async fn soak(ctx: &mut Ctx, length: Duration) -> anyhow::Result<()> {
    let pid = ctx.proxy.pid;
    let pgbench = ctx.h.cluster.pgbench().to_owned();
    let (port, token) = (ctx.proxy.port, ctx.token.clone());
    eprintln!("soak: {} s ...", length.as_secs());
    let load = tokio::spawn(async move {
        runner::run(
            &pgbench,
            Endpoint {
                port,
                sslmode: "disable",
            },
            "readonly",
            &token,
            &["-C", "-S", "-c", "2", "-j", "2", "-R", "20"],
            length.as_secs().max(1),
        )
        .await
    });
    let started = Instant::now();
    let mut samples: Vec<(u64, u64, usize)> = Vec::new();
    let mut next_minute = started + Duration::from_secs(60);
    let mut revoke_failures = Vec::new();
    let mut hups = 0;
    while started.elapsed() < length {
        samples.push((
            started.elapsed().as_secs(),
            procfs::rss_kib(pid)?,
            procfs::open_fds(pid)?,
        ));
        if Instant::now() >= next_minute {
            next_minute += Duration::from_secs(60);
            let tokens = [ctx.token.expose().to_owned()];
            if let Err(e) = super::leases::mint(&ctx.admin, &tokens, "readwrite", 20, 4).await {
                revoke_failures.push(format!("mint: {e:#}"));
            }
            let a = ctx
                .admin
                .operator(
                    "PUT",
                    "/v1/sys/leases/revoke-prefix/database/creds/readwrite",
                    None,
                )
                .await?;
            if a.status != reqwest::StatusCode::NO_CONTENT {
                revoke_failures.push(format!("revoke-prefix: {} {}", a.status, a.body));
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )?;
            hups += 1;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let figures = load.await.context("soak load task")??;
    settle_sessions(ctx).await?;
    let (sessions, _) = super::session_roles(&ctx.su).await?;
    samples.push((
        started.elapsed().as_secs(),
        procfs::rss_kib(pid)?,
        procfs::open_fds(pid)?,
    ));
    // Flat: the last third against the first third after the first minute.
    let steady: Vec<_> = samples.iter().filter(|s| s.0 >= 60).collect();
    let third = (steady.len() / 3).max(1);
    let med = |xs: Vec<f64>| spread(&xs).0;
    let (rss_a, rss_b) = (
        med(steady.iter().take(third).map(|s| s.1 as f64).collect()),
        med(steady
            .iter()
            .rev()
            .take(third)
            .map(|s| s.1 as f64)
            .collect()),
    );
    let (fds_a, fds_b) = (
        med(steady.iter().take(third).map(|s| s.2 as f64).collect()),
        med(steady
            .iter()
            .rev()
            .take(third)
            .map(|s| s.2 as f64)
            .collect()),
    );
    ctx.results.figure(
        "soak",
        "samples",
        json!({"seconds_rss_kib_fds": samples, "transactions": figures.transactions,
               "failed": figures.failed, "sighups": hups, "revoke_failures": revoke_failures}),
    );
    let flat = steady.len() >= 2 && rss_b <= rss_a * 1.10 && fds_b <= fds_a + 10.0;
    ctx.results.check(
        6,
        format!("soak {} s: RSS and open files", length.as_secs()),
        "flat (last third ≤ first third + 10% RSS, + 10 fds)",
        format!(
            "RSS {:.1} → {:.1} MiB, fds {fds_a:.0} → {fds_b:.0}; {} connections, {} failed, {hups} SIGHUPs",
            rss_a / 1024.0,
            rss_b / 1024.0,
            figures.transactions,
            figures.failed
        ),
        Some(flat && figures.failed == 0 && revoke_failures.is_empty()),
    );
    ctx.results.check(
        6,
        "soak: roles left after the load",
        "0",
        sessions.to_string(),
        Some(sessions == 0),
    );
    Ok(())
}

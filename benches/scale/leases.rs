//! Item 1 (many live credential leases on one instance) and item 2 (a
//! catalog of many unrelated roles): mint through the Vault door, list,
//! single-lease operations, a new instance over the same catalog, and the
//! mass revocation under a connect load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::http::Admin;
use super::load;
use super::report::{quantile_ms, show};
use super::shared::procfs;
use super::shared::proxy::Proxy;
use super::Ctx;

/// Principals the leases are spread over.
const IDENTITIES: usize = 64;
const PREFIX: &str = "database/creds/readonly/";

/// Mints `count` credential leases of `template` through the door,
/// `in_flight` at once, round-robin over `tokens`; the lease ids and the
/// moment each was answered.
pub async fn mint(
    admin: &Admin,
    tokens: &[String],
    template: &str,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<(Vec<String>, Vec<Instant>)> {
    let tokens = Arc::new(tokens.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let stamps = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.clamp(1, count.max(1)) {
        let (admin, tokens, next, stamps, template) = (
            admin.clone(),
            tokens.clone(),
            next.clone(),
            stamps.clone(),
            template.to_owned(),
        );
        workers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(ids);
                }
                ids.push(admin.creds(&template, &tokens[i % tokens.len()]).await?);
                let mut s = stamps.lock().expect("stamps");
                s.push(Instant::now());
                if count >= 10_000 && s.len() % (count / 10) == 0 {
                    eprintln!("  minted {} of {count}", s.len());
                }
            }
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(done) = workers.join_next().await {
        ids.extend(done.context("mint worker")??);
    }
    let stamps = std::mem::take(&mut *stamps.lock().expect("stamps"));
    Ok((ids, stamps))
}

/// Leases per second over each tenth of `stamps` (sorted): the slowest
/// tenth is the sustained rate.
fn decile_rates(start: Instant, stamps: &mut [Instant]) -> Vec<f64> {
    stamps.sort();
    let n = stamps.len();
    let mut rates = Vec::new();
    let mut from = start;
    for d in 1..=10 {
        let end = n * d / 10;
        let begin = n * (d - 1) / 10;
        if end == begin {
            continue;
        }
        let to = stamps[end - 1];
        let secs = to.saturating_duration_since(from).as_secs_f64().max(1e-6);
        rates.push((end - begin) as f64 / secs);
        from = to;
    }
    rates
}

/// Item 1 and 2, in order: mint, list, single-lease operations, the
/// unrelated roles and the connect p50 against `empty_p50_ms`, the plans,
/// a new instance, revoke-prefix under load.
pub async fn run(ctx: &mut Ctx, empty_p50_ms: f64) -> anyhow::Result<()> {
    let n = ctx.settings.leases;
    let ttl = Duration::from_secs(6 * 3600);
    let tokens: Vec<String> = (0..IDENTITIES)
        .map(|i| {
            rolemint::auth::identity::issue(&ctx.h.config.auth, &format!("app-{i}"), &[], ttl)
                .map(|s| s.expose().to_owned())
        })
        .collect::<Result<_, _>>()?;

    let rss_before = ctx.proxy.rss_kib()?;
    let parts_before = ctx.proxy.rss_parts_kib()?;
    eprintln!("minting {n} credential leases through the door ...");
    let start = Instant::now();
    let (mut ids, mut stamps) = mint(&ctx.admin, &tokens, "readonly", n, ctx.settings.in_flight)
        .await
        .context("minting")?;
    let took = start.elapsed();
    let rates = decile_rates(start, &mut stamps);
    let overall = n as f64 / took.as_secs_f64();
    let sustained = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let rss_after = ctx.proxy.rss_kib()?;
    let per_lease = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / n.max(1) as f64;
    ctx.results.figure(
        "leases",
        "mint",
        json!({"leases": n, "seconds": took.as_secs_f64(), "per_s": overall,
               "per_s_by_tenth": rates, "rss_before_kib": rss_before, "rss_after_kib": rss_after}),
    );
    ctx.results.check(
        1,
        format!("proxy RSS with {n} credential leases"),
        "≤ 256 MiB",
        format!(
            "{:.1} MiB ({:.1} before), {per_lease:.0} bytes per lease",
            rss_after as f64 / 1024.0,
            rss_before as f64 / 1024.0
        ),
        Some(rss_after <= 256 * 1024),
    );
    ctx.results.check(
        1,
        format!("mint rate, {n} leases through the door"),
        "≥ 1,000/s sustained",
        format!(
            "{overall:.0}/s overall, slowest tenth {sustained:.0}/s ({} in flight)",
            ctx.settings.in_flight
        ),
        Some(sustained >= 1000.0),
    );

    list(ctx, n).await?;
    let singles = pick(&ids, 20);
    single_ops(
        ctx,
        &ctx.admin.clone(),
        &singles,
        "this instance (registry)",
    )
    .await?;
    ids.retain(|id| !singles.contains(id));

    let probe = ids.first().cloned().unwrap_or_default();
    catalog(ctx, empty_p50_ms, &probe).await?;
    restarted(ctx, &ids).await?;
    revoke_prefix(ctx, ids.len(), rss_before, parts_before).await
}

/// Every `ids.len() / k`-th id: spread over the whole set.
fn pick(ids: &[String], k: usize) -> Vec<String> {
    let step = (ids.len() / k.max(1)).max(1);
    ids.iter().step_by(step).take(k).cloned().collect()
}

/// The Vault LIST (every key) and the paged listing, page by page.
async fn list(ctx: &mut Ctx, n: usize) -> anyhow::Result<()> {
    eprintln!("LIST and pages ...");
    let a = ctx
        .admin
        .operator("LIST", &format!("/v1/sys/leases/lookup/{PREFIX}"), None)
        .await?;
    let keys = a.body["data"]["keys"].as_array().map_or(0, Vec::len);
    let mut pages = Vec::new();
    let mut listed = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/v1/rolemint/leases?template=readonly&limit=1000".to_owned(),
            Some(a) => format!("/v1/rolemint/leases?template=readonly&limit=1000&after={a}"),
        };
        let page = ctx.admin.operator("GET", &path, None).await?;
        if page.status != StatusCode::OK {
            bail!("a page answered {}: {}", page.status, page.body);
        }
        pages.push(page.took);
        listed += page.body["data"]["leases"].as_array().map_or(0, Vec::len);
        match page.body["data"]["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let first = pages.first().copied().unwrap_or_default();
    let worst = pages.iter().max().copied().unwrap_or_default();
    ctx.results.figure(
        "leases",
        "list",
        json!({"list_keys": keys, "list_s": a.took.as_secs_f64(), "pages": pages.len(),
               "paged_leases": listed, "page_ms": pages.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()}),
    );
    ctx.results.check(
        1,
        format!("LIST of {n} leases"),
        "every key",
        format!("{keys} keys in {:.2} s", a.took.as_secs_f64()),
        Some(keys == n),
    );
    ctx.results.check(
        1,
        "LIST in pages of 1,000 (/v1/rolemint/leases)",
        "each page ≤ 1 s",
        format!(
            "{} pages, {listed} leases; first {:.0} ms, p50 {:.0} ms, slowest {:.0} ms",
            pages.len(),
            first.as_secs_f64() * 1e3,
            quantile_ms(&pages, 0.5),
            worst.as_secs_f64() * 1e3
        ),
        Some(worst <= Duration::from_secs(1) && listed == n),
    );
    Ok(())
}

/// Lookup, renew and revoke of each of `ids` through `admin`; latencies.
async fn single_ops(
    ctx: &mut Ctx,
    admin: &Admin,
    ids: &[String],
    whose: &str,
) -> anyhow::Result<()> {
    let mut times: [Vec<Duration>; 3] = Default::default();
    for id in ids {
        let ops = [
            (
                "/v1/sys/leases/lookup",
                json!({"lease_id": id}),
                StatusCode::OK,
            ),
            (
                "/v1/sys/leases/renew",
                json!({"lease_id": id, "increment": 7200}),
                StatusCode::OK,
            ),
            (
                "/v1/sys/leases/revoke",
                json!({"lease_id": id}),
                StatusCode::NO_CONTENT,
            ),
        ];
        for (k, (path, body, want)) in ops.into_iter().enumerate() {
            let a = admin.operator("PUT", path, Some(body)).await?;
            if a.status != want {
                bail!("{path} of {id} answered {}: {}", a.status, a.body);
            }
            times[k].push(a.took);
        }
    }
    let ms = |v: &Vec<Duration>| v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>();
    ctx.results.figure(
        "leases",
        &format!("single {whose}"),
        json!({"lookup_ms": ms(&times[0]), "renew_ms": ms(&times[1]), "revoke_ms": ms(&times[2])}),
    );
    let worst = times.iter().flatten().max().copied().unwrap_or_default();
    ctx.results.check(
        1,
        format!("lookup / renew / revoke of one lease, {whose}"),
        "no catalog scan (each ≤ 50 ms, flat in the lease count)",
        format!(
            "p50 {} / {} / {} ms, slowest {:.1} ms ({} leases)",
            show(&ms(&times[0]), 1),
            show(&ms(&times[1]), 1),
            show(&ms(&times[2]), 1),
            worst.as_secs_f64() * 1e3,
            ids.len()
        ),
        Some(worst <= Duration::from_millis(50)),
    );
    Ok(())
}

/// Item 2: unrelated roles into `pg_authid`, then connect p50 against the
/// empty catalog's, and the plans of the directory's and reaper's queries.
async fn catalog(ctx: &mut Ctx, empty_p50_ms: f64, probe: &str) -> anyhow::Result<()> {
    let m = ctx.settings.roles;
    eprintln!("creating {m} unrelated roles ...");
    let start = Instant::now();
    let chunk = 20_000;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (next, conn) = (
            next.clone(),
            ctx.h.cluster.superuser_conn_string("postgres"),
        );
        workers.spawn(async move {
            let su = super::shared::common::connect_owned(conn).await?;
            loop {
                let from = next.fetch_add(chunk, Ordering::Relaxed);
                if from >= m {
                    return anyhow::Ok(());
                }
                let to = (from + chunk).min(m) - 1;
                su.batch_execute(&format!(
                    "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
                     EXECUTE format('CREATE ROLE %I NOLOGIN', 'unrelated_' || i); \
                     END LOOP; END $$"
                ))
                .await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("role creator")??;
    }
    let created = start.elapsed();
    ctx.su
        .batch_execute("ANALYZE pg_authid; ANALYZE pg_auth_members; ANALYZE pg_shdescription")
        .await?;
    let roles: i64 = ctx
        .su
        .query_one("SELECT count(*) FROM pg_authid", &[])
        .await?
        .get(0);
    let door = ctx.door("rolemint", "readonly");
    let p50 = quantile_ms(&load::sequential(&door, ctx.settings.connects).await?, 0.5);
    ctx.results.figure(
        "catalog",
        "roles",
        json!({"pg_authid_rows": roles, "created_s": created.as_secs_f64(),
               "connect_p50_ms": p50, "empty_connect_p50_ms": empty_p50_ms}),
    );
    ctx.results.check(
        2,
        format!("connect p50 with {roles} roles in pg_authid (live leases included)"),
        "≤ 1.25x the empty catalog's",
        format!(
            "{p50:.1} ms vs {empty_p50_ms:.1} ms: {:.2}x",
            p50 / empty_p50_ms.max(1e-9)
        ),
        Some(p50 <= 1.25 * empty_p50_ms),
    );

    let filter = rolemint::pg::CatalogFilter {
        prefix: Some(PREFIX.to_owned()),
        ..Default::default()
    };
    let queries = [
        (
            "directory first page",
            rolemint::pg::queries::directory_page(&filter, None, rolemint::pg::CATALOG_PAGE),
        ),
        (
            "directory later page",
            rolemint::pg::queries::directory_page(
                &filter,
                Some("v-app-3"),
                rolemint::pg::CATALOG_PAGE,
            ),
        ),
        (
            "reaper sweep",
            format!(
                "{};\nEXPLAIN (ANALYZE, COSTS OFF) {}",
                rolemint::pg::queries::reaper_sweep_settings,
                rolemint::pg::queries::reaper_sweep()
            ),
        ),
        (
            "lease index lookup",
            format!(
                "EXPLAIN (ANALYZE, COSTS OFF) {}",
                rolemint::pg::queries::lease_index_lookup(probe)
            ),
        ),
        (
            "lease index page",
            format!(
                "EXPLAIN (ANALYZE, COSTS OFF) {}",
                rolemint::pg::queries::lease_index_page(
                    Some(PREFIX),
                    Some(probe),
                    rolemint::pg::CATALOG_PAGE
                )
            ),
        ),
    ];
    // In the admin database, where rolemint's schema (the lease index)
    // is; the catalogs are the cluster's, the same from any database.
    let admin_db = ctx
        .h
        .superuser_on(&ctx.h.config.backend.admin_database)
        .await;
    for (name, sql) in queries {
        let sql = if sql.contains("EXPLAIN") {
            sql
        } else {
            format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}")
        };
        let rows = admin_db.simple_query(&sql).await?;
        admin_db.batch_execute("RESET ALL").await?;
        let plan: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        let ms = plan
            .iter()
            .find_map(|l| l.trim().strip_prefix("Execution Time: "))
            .and_then(|t| t.trim_end_matches(" ms").parse::<f64>().ok())
            .unwrap_or(0.0);
        let seq_scan_authid = plan.iter().any(|l| l.contains("Seq Scan on pg_authid"));
        ctx.results
            .figure("plans", name, json!({"ms": ms, "plan": plan}));
        ctx.results.check(
            2,
            format!("plan: {name}, {roles} roles"),
            "no sequential scan of pg_authid",
            format!(
                "{ms:.0} ms, {}",
                if seq_scan_authid {
                    "Seq Scan on pg_authid"
                } else {
                    "index scans"
                }
            ),
            Some(!seq_scan_authid),
        );
    }
    Ok(())
}

/// A new instance over the same catalog: how soon it answers for a lease
/// it never minted, its first reaper pass, its single-lease operations.
async fn restarted(ctx: &mut Ctx, ids: &[String]) -> anyhow::Result<()> {
    eprintln!("a new instance over {} leases ...", ids.len());
    let (options, admin_port) = ctx.proxy_options()?;
    let probe = ids.last().ok_or_else(|| anyhow!("no lease"))?.clone();
    let start = Instant::now();
    let proxy = Proxy::start(&ctx.h, &options).await?;
    let admin = Admin::new(admin_port)?;
    let listening = start.elapsed();
    let deadline = start + Duration::from_secs(120);
    let mut served = None;
    let mut swept = None;
    while Instant::now() < deadline && (served.is_none() || swept.is_none()) {
        if served.is_none() {
            let a = admin
                .operator(
                    "PUT",
                    "/v1/sys/leases/lookup",
                    Some(json!({"lease_id": probe})),
                )
                .await?;
            if a.status == StatusCode::OK {
                served = Some(start.elapsed());
            }
        }
        if swept.is_none() && admin.metric("rolemint_reaper_runs_total").await? >= 1.0 {
            swept = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    ctx.results.figure(
        "restart",
        "new instance",
        json!({"listening_s": listening.as_secs_f64(), "first_lookup_s": secs(served),
               "first_sweep_done_s": secs(swept), "rss_kib": proxy.rss_kib()?}),
    );
    ctx.results.check(
        1,
        "a new instance serves a lease it never minted",
        "within 10 s of start",
        format!(
            "{:.2} s (listening after {:.2} s)",
            secs(served),
            listening.as_secs_f64()
        ),
        Some(served.is_some_and(|d| d <= Duration::from_secs(10))),
    );
    ctx.results.check(
        1,
        "its first reaper pass",
        "≤ 2 s",
        format!("done {:.2} s after start", secs(swept)),
        Some(swept.is_some_and(|d| d <= Duration::from_secs(2))),
    );
    let singles = pick(ids, 5);
    single_ops(ctx, &admin, &singles, "a new instance (lease index)").await?;
    // The lease index's tidy pass follows the first sweep: its time, as
    // the new instance logged it.
    let tidy_ms = wait_for_tidy(&proxy, Duration::from_secs(60)).await;
    ctx.results
        .figure("restart", "lease index tidy", json!({"ms": tidy_ms}));
    ctx.results.check(
        1,
        "its lease index tidy pass (after the first sweep)",
        "reported",
        match tidy_ms {
            Some(ms) => format!("{ms} ms"),
            None => "not logged within 60 s".to_owned(),
        },
        None,
    );
    proxy.stop().await?;
    Ok(())
}

/// The lease index's rows (`rolemint.leases`, through `admin_db`), counted
/// by lease kind and template (`sessions/readwrite`) and by whether the
/// row's role exists ("role exists", "role gone"); `-1` under "error" when
/// the count failed.
async fn index_rows_by_kind(admin_db: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    let rows = admin_db
        .query(
            "SELECT pg_catalog.split_part(l.lease_id, '/', 2) || '/' \
                    || pg_catalog.split_part(l.lease_id, '/', 3) \
                    || CASE WHEN r.oid IS NULL THEN ' role gone' ELSE ' role exists' END, \
                    pg_catalog.count(*) \
               FROM rolemint.leases l \
               LEFT JOIN pg_catalog.pg_roles r ON r.rolname = l.role::pg_catalog.name \
              GROUP BY 1",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(_) => BTreeMap::from([("error".to_owned(), -1)]),
    }
}

/// The milliseconds of the first "lease index tidied" line `proxy` logs,
/// waiting up to `within` for it.
async fn wait_for_tidy(proxy: &Proxy, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    loop {
        let log = proxy.log();
        let ms = log
            .lines()
            .find(|l| l.contains("lease index tidied"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ms=")))
            .and_then(|ms| ms.parse().ok());
        if ms.is_some() || Instant::now() >= deadline {
            return ms;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU time so far of the cluster (every process) and of the proxy.
fn cpu_now(ctx: &Ctx) -> anyhow::Result<(Duration, Duration)> {
    let postmaster = ctx
        .h
        .cluster
        .pid()
        .ok_or_else(|| anyhow!("the cluster is not running"))?;
    Ok((
        procfs::cluster_cpu(postmaster)?,
        procfs::cpu(ctx.proxy.pid)?,
    ))
}

/// revoke-prefix of every lease left, while sessions of another template
/// connect; then the proxy's RSS against `rss_before` the leases.
async fn revoke_prefix(
    ctx: &mut Ctx,
    n: usize,
    rss_before: u64,
    parts_before: (u64, u64),
) -> anyhow::Result<()> {
    let door = ctx.door("rolemint", "readwrite");
    let workers = 4;
    eprintln!("idle connect loop ...");
    let stop = CancellationToken::new();
    let idle_cpu0 = cpu_now(ctx)?;
    let idle_start = Instant::now();
    let idle = {
        let (door, stop2) = (door.clone(), stop.clone());
        let task = tokio::spawn(async move { load::connect_loop(&door, workers, stop2).await });
        tokio::time::sleep(Duration::from_secs(ctx.settings.seconds)).await;
        stop.cancel();
        task.await?
    };
    // The connect loop's own CPU per second (cluster and proxy), to take
    // out of the revocation's.
    let idle_cpu1 = cpu_now(ctx)?;
    let idle_secs = idle_start.elapsed().as_secs_f64();
    let loop_rate = (idle_cpu1.0 + idle_cpu1.1)
        .saturating_sub(idle_cpu0.0 + idle_cpu0.1)
        .as_secs_f64()
        / idle_secs.max(1e-9);
    eprintln!("revoke-prefix of {n} leases under a connect load ...");
    let stop = CancellationToken::new();
    let busy = {
        let (door, stop2) = (door.clone(), stop.clone());
        tokio::spawn(async move { load::connect_loop(&door, workers, stop2).await })
    };
    let cpu0 = cpu_now(ctx)?;
    let start = Instant::now();
    let a = ctx
        .admin
        .operator(
            "PUT",
            "/v1/sys/leases/revoke-prefix/database/creds/readonly",
            None,
        )
        .await?;
    let answered = start.elapsed();
    // A 503 means it goes on in the background: wait for the roles.
    let deadline = start + Duration::from_secs(1200);
    let mut left = super::roles_under(&ctx.su, PREFIX).await?;
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = super::roles_under(&ctx.su, PREFIX).await?;
    }
    let done = start.elapsed();
    let cpu1 = cpu_now(ctx)?;
    stop.cancel();
    let busy = busy.await?;
    let (pg_cpu, proxy_cpu) = (
        cpu1.0.saturating_sub(cpu0.0).as_secs_f64(),
        cpu1.1.saturating_sub(cpu0.1).as_secs_f64(),
    );
    // Every row of the index at that moment, by lease kind and template
    // and by whether its role still exists: the connect loop's session
    // leases are in the table too, and those whose session has ended wait
    // in the revoker's queue behind the mass revocation (their roles
    // exist), so the total alone does not say whether a row is stale.
    let admin_db = ctx
        .h
        .superuser_on(&ctx.h.config.backend.admin_database)
        .await;
    let index_rows = index_rows_by_kind(&admin_db).await;
    let index_total: i64 = index_rows.values().sum();
    // Then until the table is empty (the loop's last sessions revoked and
    // the writer flushed), up to 120 s: rows whose role is gone by then
    // are stale.
    let settle_start = Instant::now();
    let mut settled = index_rows.clone();
    while settled.values().sum::<i64>() > 0 && settle_start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        settled = index_rows_by_kind(&admin_db).await;
    }
    let settled_s = settle_start.elapsed().as_secs_f64();
    let stale = settled
        .iter()
        .filter(|(k, _)| k.ends_with("role gone"))
        .map(|(_, n)| n)
        .sum::<i64>();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rss_after = {
        // The registry lets go of a lease once the revoker has it: give
        // the process a moment to return what it freed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        ctx.proxy.rss_kib()?
    };
    let parts_after = ctx.proxy.rss_parts_kib()?;
    let (idle_p99, busy_p99) = (
        quantile_ms(&idle.latencies, 0.99),
        quantile_ms(&busy.latencies, 0.99),
    );
    ctx.results.figure(
        "revoke_prefix",
        "all",
        json!({"leases": n, "status": a.status.as_u16(), "answered_s": answered.as_secs_f64(),
               "done_s": done.as_secs_f64(), "left": left, "rss_before_mint_kib": rss_before,
               "rss_after_kib": rss_after, "rss_anon_file_before_mint_kib": parts_before,
               "rss_anon_file_after_kib": parts_after, "idle_connects": idle.latencies.len(),
               "idle_p50_ms": quantile_ms(&idle.latencies, 0.5), "idle_p99_ms": idle_p99,
               "busy_connects": busy.latencies.len(), "busy_p50_ms": quantile_ms(&busy.latencies, 0.5),
               "busy_p99_ms": busy_p99, "busy_failures": busy.failures.len(),
               "idle_failures": idle.failures.len(),
               "failure_kinds": busy.failures.iter().take(5).collect::<Vec<_>>(),
               "cluster_cpu_s": pg_cpu, "proxy_cpu_s": proxy_cpu,
               "idle_loop_cpu_per_s": loop_rate,
               "lease_index_rows_after": index_total, "lease_index_rows_after_by": index_rows,
               "lease_index_rows_settled": settled, "lease_index_settled_s": settled_s,
               "load_average": load.trim()}),
    );
    // Not the revocation's alone: the connect loop runs meanwhile (alone
    // it used `loop_rate` CPU-seconds a second), and shares the two cores.
    ctx.results.check(
        1,
        format!("CPU during the revoke-prefix of {n} leases (cluster + proxy, connect loop included)"),
        "reported",
        format!(
            "cluster {pg_cpu:.1} s + proxy {proxy_cpu:.1} s in {:.1} s (the loop alone: {loop_rate:.2} CPU-s/s); load average {}; lease index rows when the last role was gone: {index_total} {index_rows:?}; {stale} stale after {settled_s:.1} s {settled:?}",
            done.as_secs_f64(),
            load.split_whitespace().next().unwrap_or("?"),
        ),
        None,
    );
    ctx.results.check(
        1,
        format!("revoke-prefix of {n} leases"),
        "all gone ≤ 60 s",
        format!(
            "{:.1} s ({:.0} roles/s), answered {} after {:.1} s, {left} left",
            done.as_secs_f64(),
            n as f64 / done.as_secs_f64(),
            a.status.as_u16(),
            answered.as_secs_f64()
        ),
        Some(left == 0 && done <= Duration::from_secs(60)),
    );
    ctx.results.check(
        1,
        "proxy RSS after the revoke-prefix",
        "within 10% of before the leases",
        format!(
            "{:.1} MiB vs {:.1} MiB (anonymous {:.1} vs {:.1}, file-backed {:.1} vs {:.1})",
            rss_after as f64 / 1024.0,
            rss_before as f64 / 1024.0,
            parts_after.0 as f64 / 1024.0,
            parts_before.0 as f64 / 1024.0,
            parts_after.1 as f64 / 1024.0,
            parts_before.1 as f64 / 1024.0,
        ),
        Some((rss_after as f64) <= rss_before as f64 * 1.10),
    );
    ctx.results.check(
        1,
        "another template's sessions during the revoke-prefix",
        "0 failures, connect p99 ≤ 3x idle",
        format!(
            "{} connects, {} failed; p99 {busy_p99:.0} ms vs idle {idle_p99:.0} ms: {:.2}x",
            busy.latencies.len() + busy.failures.len(),
            busy.failures.len(),
            busy_p99 / idle_p99.max(1e-9)
        ),
        Some(busy.failures.is_empty() && busy_p99 <= 3.0 * idle_p99),
    );
    Ok(())
}

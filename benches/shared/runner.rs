//! One `pgbench` run: the command line, its summary, and the exact latency
//! percentiles from its per-transaction log (`-l`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rolemint::secret::Secret;

use super::DATABASE;

/// What one pgbench run measured.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub tps: f64,
    /// pgbench's average connection time (`-C`: per transaction; else the
    /// one-off initial connection time).
    pub conn_ms: Option<f64>,
    pub failed: u64,
    /// Per-transaction latency percentiles, from the `-l` log.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub transactions: u64,
}

/// Where pgbench connects: a loopback port and libpq's `sslmode`.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub port: u16,
    pub sslmode: &'a str,
}

/// Runs pgbench for `seconds` against `target` as `user`, with `args`.
pub async fn run(
    pgbench: &Path,
    target: Endpoint<'_>,
    user: &str,
    secret: &Secret,
    args: &[&str],
    seconds: u64,
) -> anyhow::Result<Figures> {
    let logs = tempfile::Builder::new()
        .prefix("rolemint-bench-log-")
        .tempdir()
        .context("temp dir for pgbench logs")?;
    let prefix = logs.path().join("tx");
    let child = tokio::process::Command::new(pgbench)
        .arg("-n") // the roles may not VACUUM; the bench resets the tables itself
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &target.port.to_string(),
            "-U",
            user,
        ])
        .args(args)
        .arg("-l")
        .arg(format!("--log-prefix={}", prefix.display()))
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
    let Some(mut figures) = parse_summary(&text).filter(|_| out.status.success()) else {
        bail!(
            "pgbench exited with {}:\n{}",
            out.status,
            super::tail(&text, 15)
        );
    };
    let mut latencies = read_latencies(logs.path())?;
    figures.p50_us = percentile(&mut latencies, 0.50);
    figures.p99_us = percentile(&mut latencies, 0.99);
    Ok(figures)
}

/// The figures of pgbench's summary; `None` without a tps line or with no
/// transaction processed.
fn parse_summary(text: &str) -> Option<Figures> {
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
        conn_ms: number("average connection time =")
            .or_else(|| number("initial connection time =")),
        failed: number("number of failed transactions:").map_or(0, |n| n as u64),
        transactions: processed as u64,
        ..Figures::default()
    })
}

/// Every transaction's latency in µs from the `-l` logs in `dir`: one line
/// per transaction, `client_id transaction_no time script_no time_epoch
/// time_us`, `time` being the latency (`failed`/`skipped` otherwise).
fn read_latencies(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        all.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|t| t.parse::<u32>().ok()),
        );
    }
    Ok(all)
}

/// The `q` quantile (nearest rank); `None` for no samples.
pub fn percentile<T: Copy + Ord + Into<f64>>(samples: &mut [T], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1].into())
}

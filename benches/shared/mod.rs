//! What the benches share: the integration tests' harness (cluster, demo
//! schema), rolemint as its own `serve` process, PgBouncer, one pgbench
//! run, and what `/proc` says about a process (CPU time, memory, open
//! files). `benches/pgbench.rs` and `benches/scale.rs` each include it as
//! `mod shared`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};

// The integration tests' harness: cluster, demo schema.
#[path = "../../tests/common/mod.rs"]
pub mod common;
pub mod pgbouncer;
pub mod procfs;
pub mod proxy;
pub mod runner;

pub const DATABASE: &str = rolemint::cli::dev::cluster::DEMO_DATABASE;
/// The static role of the `direct` and `pgbouncer` targets.
pub const BENCH_ROLE: &str = "bench_direct";

/// A certificate for the cluster's own TLS (the `direct+tls` baseline),
/// readable by the server: owned by `postgres` when we are root.
pub struct ClusterTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl ClusterTls {
    pub fn new() -> anyhow::Result<ClusterTls> {
        let dir = tempfile::Builder::new()
            .prefix("rolemint-bench-pgtls-")
            .tempdir()?;
        let (cert, key) = rolemint::cli::dev::write_self_signed_cert(dir.path())?;
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .ok_or_else(|| anyhow!("running as root and there is no postgres user"))?;
            for path in [dir.path(), &cert, &key] {
                nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
        }
        Ok(ClusterTls {
            cert,
            key,
            _dir: dir,
        })
    }
}

/// `target/bench` (under `CARGO_TARGET_DIR` when set): what a run leaves.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench")
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub async fn tool_version(program: &Path) -> String {
    match tokio::process::Command::new(program)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => program.display().to_string(),
    }
}

pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0_u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| anyhow!("the system RNG failed"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A whole-number knob from the environment, `default` when unset.
pub fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| anyhow!("{name} must be a whole number, not {v:?}")),
    }
}

/// A comma-separated list from the environment; empty when unset.
pub fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

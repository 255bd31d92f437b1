//! How many mint + drop cycles a PostgreSQL sustains: the ceiling of new
//! sessions per second for all rolemint instances together, since every
//! instance mints and drops in the one database they share.
//!
//! Starts a throwaway cluster (as the tests do), then runs `--workers`
//! concurrent loops, each minting a role through the [`AdminClient`] (one round
//! trip, one commit) and revoking it (NOLOGIN, terminate, drop: one round
//! trip, one commit), for `--seconds`. No client logs in: this is the
//! database's share of a session's cost, not the proxy's.
//!
//! ```sh
//! cargo run --release --example mint_rate -- --workers 8 --seconds 10
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rolemint::auth::identity::Identity;
use rolemint::cli::dev::cluster::{self, ClusterOptions, TempCluster};
use rolemint::config::Config;
use rolemint::lease::registry::{new_lease_id, LeaseKind};
use rolemint::pg::{AdminClient, MintRequest};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rolemint::tls::install_crypto_provider();
    let workers = arg("--workers", 8).clamp(1, 64);
    let seconds = arg("--seconds", 10).clamp(1, 600);

    let (cluster, demo) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let cluster = TempCluster::start(ClusterOptions::default())?;
        let demo = cluster::provision_demo(&cluster)?;
        Ok((cluster, demo))
    })
    .await??;
    let toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
allow_plaintext = true

[backend]
host = "127.0.0.1"
port = {port}
admin_user = "{admin}"
admin_password = "{password}"
admin_pool_size = {workers}

[auth]
hs256_secret = "measurement-only-secret-0123456789abcdef"

{templates}
"#,
        port = cluster.port(),
        admin = demo.admin_user,
        password = demo.admin_password.expose(),
        templates = cluster::demo_templates_toml(),
    );
    let config = Config::parse(&toml)?;
    config.validate()?;
    let admin_client = Arc::new(AdminClient::new(&config)?);
    admin_client.prepare().await?;
    let template = Arc::new(config.roles["readonly"].clone());
    let identity = Arc::new(Identity {
        subject: "bench".into(),
        groups: Vec::new(),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        issuer: "local".into(),
    });

    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (admin_client, template, identity, done) = (
            Arc::clone(&admin_client),
            Arc::clone(&template),
            Arc::clone(&identity),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let lease_id = new_lease_id(LeaseKind::Session, "readonly");
                let request = MintRequest {
                    identity: &identity,
                    template_name: "readonly",
                    template: &template,
                    database: "appdb",
                    ttl: Duration::from_secs(3600),
                    lease_id: &lease_id,
                };
                let role = admin_client.mint(&request).await?;
                admin_client.revoke(&role.name, "appdb", &template).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{workers} workers, {elapsed:.1} s: {n} mint+drop cycles, {:.0} per second ({:.2} ms each per worker)",
        n as f64 / elapsed,
        1000.0 * elapsed * workers as f64 / n.max(1) as f64,
    );
    drop(cluster);
    Ok(())
}

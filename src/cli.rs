//! The command line: `serve`, `dev`, `token`, `check`, `leases`, `health`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rolemint",
    version,
    about = "A PostgreSQL proxy that mints a short-lived role for every session"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML config file.
        #[arg(long, short, env = "ROLEMINT_CONFIG")]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL and a proxy in front of it, and print
    /// ready-to-paste psql and pgbench command lines.
    Dev {
        /// Write the config, certificate and key here and keep them on exit
        /// (default: a temporary directory, removed). The cluster's data is
        /// deleted on exit either way.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Port for the proxy; the next free one is taken if it is busy.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Identity of the printed token.
        #[arg(long, default_value = "alice")]
        sub: String,
    },
    /// Print a token signed by the config's local issuer key; with
    /// `--operator`, a random operator token and its SHA-256 for
    /// `[admin] operator_token_sha256`.
    Token {
        #[arg(
            long,
            short,
            env = "ROLEMINT_CONFIG",
            required_unless_present = "operator"
        )]
        config: Option<PathBuf>,
        /// The identity (`sub` claim).
        #[arg(long, required_unless_present = "operator")]
        sub: Option<String>,
        /// Make an operator token for the admin API instead.
        #[arg(long, conflicts_with_all = ["sub", "groups"])]
        operator: bool,
        /// Groups, comma separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime of the token.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Validate the config, reach the backend as admin and verify the
    /// privileges rolemint needs.
    Check {
        #[arg(long, short, env = "ROLEMINT_CONFIG")]
        config: PathBuf,
    },
    /// List, look up, renew and revoke leases through the admin API.
    Leases(crate::leases_cli::LeasesArgs),
    /// Probe the admin listener: exit 0 when /healthz (or /readyz) is 200
    /// (the container HEALTHCHECK).
    Health {
        #[command(flatten)]
        api: crate::leases_cli::ApiArgs,
        /// Probe /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Accept any certificate (a probe over loopback sends no token).
        #[arg(long)]
        insecure: bool,
    },
}

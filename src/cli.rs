//! The command line: `serve`, `dev`, `token`, `check`.

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
    /// Print a token signed by the config's local issuer key.
    Token {
        #[arg(long, short, env = "ROLEMINT_CONFIG")]
        config: PathBuf,
        /// The identity (`sub` claim).
        #[arg(long)]
        sub: String,
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
}

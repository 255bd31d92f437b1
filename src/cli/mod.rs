//! The command line: `serve`, `dev`, `token`, `keygen`, `check`, `leases`, `health`,
//! `rotate-admin`, and a person's `login`, `logout`, `status`, `psql`, `env`,
//! `connect-string`, `request`.
//!
//! The folder holds every subcommand: [`check`] (preflight), [`dev`]
//! (`rolemint dev` and its throwaway cluster, [`dev::cluster`]), [`leases`]
//! (`leases` and `health`, clients of the admin API), [`token`] (`token`
//! and `keygen`), [`login`] (a person signing in at the identity provider
//! and connecting with the token). It is the top of the crate: it may use any folder, and
//! nothing below may use it.

pub mod check;
pub mod dev;
pub mod leases;
pub mod login;
pub mod request;
pub mod token;

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
    /// Print a token: signed by the config's local issuer key (default),
    /// signed with an Ed25519 key (`--key`), or a new random static token
    /// (`--static`) or operator token (`--operator`) with its config lines.
    Token(TokenArgs),
    /// Write an Ed25519 key pair (PEM) and its JWKS, for an issuer whose
    /// tokens `rolemint token --key` signs.
    Keygen {
        /// Directory to write `ed25519.key.pem` (private, mode 0600),
        /// `ed25519.pub.pem` and `jwks.json` to; created if missing.
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate the config, reach the backend as admin and verify the
    /// privileges rolemint needs.
    Check {
        /// The TOML config file to check (as `serve` would load it).
        #[arg(long, short, env = "ROLEMINT_CONFIG")]
        config: PathBuf,
    },
    /// List, look up, renew and revoke leases through the admin API.
    Leases(crate::cli::leases::LeasesArgs),
    /// Probe the admin listener: exit 0 when /healthz (or /readyz) is 200
    /// (the container HEALTHCHECK).
    Health {
        #[command(flatten)]
        api: crate::cli::leases::ApiArgs,
        /// Probe /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Accept any certificate (a probe over loopback sends no token).
        #[arg(long)]
        insecure: bool,
    },
    /// Sign in at the identity provider the proxy names (device flow, or a
    /// browser with PKCE) and keep the token for psql, env and status.
    Login(crate::cli::login::LoginArgs),
    /// Forget the login of a proxy (and revoke its refresh token).
    Logout(crate::cli::login::ProxyArgs),
    /// Who you are signed in as, until when, and which templates and
    /// databases you may use (asked of the proxy).
    Status(crate::cli::login::ProxyArgs),
    /// Run psql against the proxy as TEMPLATE, the token in its environment
    /// (never on its command line) and sslmode=verify-full. Arguments after
    /// `--` go to psql.
    Psql {
        #[command(flatten)]
        target: crate::cli::login::ConnectArgs,
        /// Arguments for psql: everything after TEMPLATE and DBNAME
        /// (`-c 'select 1'`), or after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        psql_args: Vec<String>,
    },
    /// Print `export PG...` lines (token included) for scripts and pgbench.
    Env(crate::cli::login::ConnectArgs),
    /// Print a libpq connection string (without the token) for GUI tools.
    ConnectString(crate::cli::login::ConnectArgs),
    /// Access requests: ask for a template that needs approval, approve,
    /// deny, revoke, list.
    Request(crate::cli::request::RequestArgs),
    /// Set a new random password for the admin role (as a SCRAM verifier)
    /// and write it to `backend.admin_password_file`, as Vault's
    /// rotate-root does. A running rolemint picks it up on restart (or use
    /// `POST /v1/database/rotate-root/<db>` on it instead).
    RotateAdmin {
        /// The TOML config file.
        #[arg(long, short, env = "ROLEMINT_CONFIG")]
        config: PathBuf,
    },
}

/// `rolemint token`: what the token is for and who signs it.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The config whose local issuer signs (not needed with --static,
    /// --operator or --key, which leave it unread: `ROLEMINT_CONFIG`
    /// exported for the other commands must not stop them).
    #[arg(long, short, env = "ROLEMINT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The identity (`sub` claim, or the static token's identity).
    #[arg(long, required_unless_present = "operator")]
    pub sub: Option<String>,
    /// Groups, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Lifetime of a signed token (its `exp`). rolemint accepts a token up
    /// to `auth.leeway` (default 30s) past its `exp`, for clock skew, so a
    /// `--ttl 1s` token still connects for about 30 s. Static and operator
    /// tokens do not expire.
    #[arg(
        long,
        default_value = "15m",
        value_parser = humantime::parse_duration,
        conflicts_with_all = ["static_token", "operator"]
    )]
    pub ttl: Duration,
    /// Print a new random static token and its `[[auth.static_tokens]]`
    /// lines.
    #[arg(long = "static", conflicts_with_all = ["operator", "key"])]
    pub static_token: bool,
    /// Print a new random operator token and its `operator_token_sha256`
    /// line.
    #[arg(long, conflicts_with_all = ["key", "sub"])]
    pub operator: bool,
    /// Sign with this Ed25519 private key (PKCS#8 PEM, as `rolemint
    /// keygen` writes it) instead of the config's local issuer.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The `iss` claim of a token signed with --key.
    #[arg(long, requires = "key")]
    pub issuer: Option<String>,
    /// The `aud` claim of a token signed with --key.
    #[arg(long, requires = "key")]
    pub audience: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The psql arguments of `rolemint psql TEMPLATE [DBNAME] ...`, or
    /// the error clap gives.
    fn psql_args(args: &[&str]) -> Result<(String, Option<String>, Vec<String>), String> {
        let argv = ["rolemint", "psql"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Psql { target, psql_args } => Ok((target.template, target.dbname, psql_args)),
            other => Err(format!("not psql: {other:?}")),
        }
    }

    /// `rolemint psql readonly appdb -c 'select current_user'`, as a
    /// person types it (and as issue 21 names it): psql's own flags go to
    /// psql with or without `--`, rolemint's own flags before them stay
    /// rolemint's.
    #[test]
    fn psql_takes_psqls_flags_with_or_without_a_double_dash() {
        let select = ["-c".to_owned(), "select current_user".to_owned()];
        for args in [
            &["readonly", "appdb", "-c", "select current_user"][..],
            &["readonly", "appdb", "--", "-c", "select current_user"][..],
            &[
                "--proxy",
                "http://x",
                "readonly",
                "appdb",
                "-c",
                "select current_user",
            ][..],
        ] {
            let (template, dbname, rest) = psql_args(args).expect("parses");
            assert_eq!(template, "readonly", "{args:?}");
            assert_eq!(dbname.as_deref(), Some("appdb"), "{args:?}");
            assert_eq!(rest, select, "{args:?}");
        }
        let (_, dbname, rest) = psql_args(&["readonly"]).expect("parses");
        assert_eq!((dbname, rest), (None, vec![]));
        // After the database, a flag rolemint also has is psql's.
        let (_, _, rest) = psql_args(&["readonly", "appdb", "-X", "--proxy", "p"]).expect("parses");
        assert_eq!(rest, ["-X", "--proxy", "p"]);
    }

    #[test]
    fn a_token_on_the_command_line_never_reaches_debug_output() {
        let cli = Cli::parse_from([
            "rolemint",
            "request",
            "--proxy",
            "http://x",
            "--token",
            "tok-secret",
            "list",
        ]);
        let text = format!("{cli:?}");
        assert!(!text.contains("tok-secret"), "{text}");
        let cli = Cli::parse_from(["rolemint", "leases", "--token", "tok-secret", "list"]);
        let text = format!("{cli:?}");
        assert!(!text.contains("tok-secret"), "{text}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}

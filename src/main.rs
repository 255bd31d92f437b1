//! The `rolemint` binary: parse the command line, set up logging and the TLS
//! provider, run the subcommand.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use rolemint::cli::{Cli, Command};
use rolemint::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before anything builds a rustls config.
    rolemint::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rolemint: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rolemint: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            rolemint::observe::logging::init(config.log.format);
            // Before anything can report ready: SIGHUP's default action
            // ends the process.
            let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("listening for SIGHUP")?;
            let server = rolemint::proxy::server::Server::bind(config).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            tokio::spawn(reload_on_hangup(hangups, server.shared(), path));
            server.run(shutdown).await
        }
        Command::Dev { dir, port, sub } => {
            rolemint::observe::logging::init(LogFormat::Text);
            rolemint::cli::dev::run(rolemint::cli::dev::DevArgs {
                dir,
                port,
                subject: sub,
            })
            .await
        }
        Command::Token {
            config,
            sub,
            groups,
            ttl,
            static_token,
            operator,
            key,
            issuer,
            audience,
        } => {
            let subject = sub.unwrap_or_default();
            if operator {
                return rolemint::cli::token::operator();
            }
            if static_token {
                return rolemint::cli::token::static_token(&subject, &groups);
            }
            if let Some(key) = key {
                let claims = rolemint::auth::identity::IssueClaims {
                    subject: &subject,
                    groups: &groups,
                    issuer: issuer.as_deref(),
                    audience: audience.as_deref(),
                    ttl,
                };
                return rolemint::cli::token::signed_with_key(&key, &claims);
            }
            let config = config.context("--config is required (or --static, --operator, --key)")?;
            let config = Config::load(&config)?;
            let token = rolemint::auth::identity::issue(&config.auth, &subject, &groups, ttl)
                .context("signing the token")?;
            println!("{}", token.expose());
            Ok(())
        }
        Command::Keygen { out } => rolemint::cli::token::keygen(&out),
        Command::Check { config } => {
            rolemint::observe::logging::init(LogFormat::Text);
            let config = Config::load(&config)?;
            println!("config: ok");
            rolemint::cli::check::run(&config).await
        }
        Command::Leases(args) => rolemint::cli::leases::run(args).await,
        Command::Health {
            api,
            ready,
            insecure,
        } => rolemint::cli::leases::health(api, ready, insecure).await,
        Command::RotateAdmin { config } => {
            rolemint::observe::logging::init(LogFormat::Text);
            let config = Config::load(&config)?;
            rolemint::pg::rotate::password_file(&config.backend)?;
            let minter = rolemint::pg::Minter::new(&config)?;
            rolemint::pg::rotate::rotate_admin(&minter, &config.backend).await?;
            println!(
                "admin password rotated; new password in {}",
                config
                    .backend
                    .admin_password_file
                    .as_deref()
                    .unwrap_or_else(|| std::path::Path::new("?"))
                    .display()
            );
            Ok(())
        }
    }
}

/// Reloads the config (and reopens the audit log) on every SIGHUP; the
/// reload logs and counts its own outcome.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    shared: std::sync::Arc<rolemint::runtime::state::Shared>,
    path: std::path::PathBuf,
) {
    while hangups.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let _ = rolemint::runtime::reload::reload(&shared, &path).await;
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    rolemint::runtime::signal::terminated().await;
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}

//! The `rolemint` binary: parse the command line, set up logging and the TLS
//! provider, run the subcommand.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use rolemint::cli::{Cli, Command};
use rolemint::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

mod token;

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
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            rolemint::logging::init(config.log.format);
            let server = rolemint::server::Server::bind(config).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            tokio::spawn(reopen_audit_on_hangup(server.audit()));
            server.run(shutdown).await
        }
        Command::Dev { dir, port, sub } => {
            rolemint::logging::init(LogFormat::Text);
            rolemint::dev::run(rolemint::dev::DevArgs {
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
                return token::operator();
            }
            if static_token {
                return token::static_token(&subject, &groups);
            }
            if let Some(key) = key {
                let claims = rolemint::identity::IssueClaims {
                    subject: &subject,
                    groups: &groups,
                    issuer: issuer.as_deref(),
                    audience: audience.as_deref(),
                    ttl,
                };
                return token::signed_with_key(&key, &claims);
            }
            let config = config.context("--config is required (or --static, --operator, --key)")?;
            let config = Config::load(&config)?;
            let token = rolemint::identity::issue(&config.auth, &subject, &groups, ttl)
                .context("signing the token")?;
            println!("{}", token.expose());
            Ok(())
        }
        Command::Keygen { out } => token::keygen(&out),
        Command::Check { config } => {
            rolemint::logging::init(LogFormat::Text);
            let config = Config::load(&config)?;
            println!("config: ok");
            rolemint::check::run(&config).await
        }
        Command::Leases(args) => rolemint::leases_cli::run(args).await,
        Command::Health {
            api,
            ready,
            insecure,
        } => rolemint::leases_cli::health(api, ready, insecure).await,
    }
}

/// Reopens the audit log on every SIGHUP, so logrotate can move it away.
async fn reopen_audit_on_hangup(audit: rolemint::audit::Audit) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the audit log will not be reopened");
        return;
    };
    while hangups.recv().await.is_some() {
        match audit.reopen().await {
            Ok(()) => tracing::info!("SIGHUP: audit log reopened"),
            Err(e) => tracing::error!("SIGHUP: {e}"),
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    rolemint::signal::terminated().await;
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}

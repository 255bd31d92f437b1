//! The `rolemint` binary: parse the command line, set up logging and the TLS
//! provider, run the subcommand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use nix::sys::signal::{SigHandler, Signal};
use rolemint::cli::{Cli, Command, TokenArgs};
use rolemint::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before anything builds a rustls config.
    rolemint::tls::install_crypto_provider();
    // Before clap prints help or an error: it may be piped too.
    set_sigpipe(SigHandler::SigDfl);
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. } | Command::Dev { .. }) {
        set_sigpipe(SigHandler::SigIgn);
    }
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

/// Rust ignores SIGPIPE, so `println!` into a closed pipe (`rolemint check
/// | head -1`) panics. The short commands only print: like any Unix tool
/// they end at once, and quietly, when the reader goes away (SIG_DFL).
/// `serve` and `dev` ignore it again (SIG_IGN, Rust's default): their
/// sockets must fail with EPIPE, not kill the process, and `dev` must stop
/// its PostgreSQL before it exits.
fn set_sigpipe(handler: SigHandler) {
    // SAFETY: called before the runtime starts any thread, with one of the
    // two handlers that run no code of ours.
    if let Err(e) = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, handler) } {
        eprintln!("rolemint: cannot set the SIGPIPE action: {e}");
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Login(args) => rolemint::cli::login::login(args).await,
        Command::Logout(args) => rolemint::cli::login::logout(args).await,
        Command::Status(args) => rolemint::cli::login::status(args).await,
        Command::Psql { target, psql_args } => rolemint::cli::login::psql(target, psql_args).await,
        Command::Env(args) => rolemint::cli::login::env(args).await,
        Command::ConnectString(args) => rolemint::cli::login::connect_string(args).await,
        Command::Request(args) => rolemint::cli::request::run(args).await,
        Command::Dev { dir, port, sub } => {
            rolemint::observe::logging::init(LogFormat::Text);
            rolemint::cli::dev::run(rolemint::cli::dev::DevArgs {
                dir,
                port,
                subject: sub,
            })
            .await
        }
        Command::Token(args) => token(args),
        Command::Keygen { out } => rolemint::cli::token::keygen(&out),
        Command::Check { config } => check(&config).await,
        Command::Leases(args) => rolemint::cli::leases::run(args).await,
        Command::Health {
            api,
            ready,
            insecure,
        } => rolemint::cli::leases::health(api, ready, insecure).await,
        Command::RotateAdmin { config } => rotate_admin(&config).await,
    }
}

/// `rolemint serve`: the proxy until SIGTERM, reloading on SIGHUP.
async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    rolemint::observe::logging::init(config.log.format);
    // Before anything can report ready: SIGHUP's default action ends the
    // process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let server = rolemint::proxy::server::Server::bind(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    tokio::spawn(rolemint::runtime::reload::reload_on_hangup(
        hangups,
        server.shared(),
        path,
    ));
    server.run(shutdown).await
}

/// `rolemint token`: one of four kinds, chosen by the flags.
fn token(args: TokenArgs) -> anyhow::Result<()> {
    let subject = args.sub.unwrap_or_default();
    if args.operator {
        return rolemint::cli::token::operator();
    }
    if args.static_token {
        return rolemint::cli::token::static_token(&subject, &args.groups);
    }
    if let Some(key) = args.key {
        let claims = rolemint::auth::identity::IssueClaims {
            subject: &subject,
            groups: &args.groups,
            issuer: args.issuer.as_deref(),
            audience: args.audience.as_deref(),
            ttl: args.ttl,
        };
        return rolemint::cli::token::signed_with_key(&key, &claims);
    }
    let config = args
        .config
        .context("--config is required (or --static, --operator, --key)")?;
    let config = Config::load(&config)?;
    let token = rolemint::auth::identity::issue(&config.auth, &subject, &args.groups, args.ttl)
        .context("signing the token")?;
    println!("{}", token.expose());
    Ok(())
}

/// `rolemint check`: the config is loaded with every secret file tried, so
/// that all of them are reported at once, then the backend is checked.
async fn check(path: &Path) -> anyhow::Result<()> {
    rolemint::observe::logging::init(LogFormat::Text);
    rolemint::cli::check::run_file(path).await
}

/// `rolemint rotate-admin`: a new admin password, written to its file.
async fn rotate_admin(path: &Path) -> anyhow::Result<()> {
    rolemint::observe::logging::init(LogFormat::Text);
    let config = Config::load(path)?;
    rolemint::pg::rotate::password_file(&config.backend)?;
    let admin_client = rolemint::pg::AdminClient::new(&config)?;
    rolemint::pg::rotate::rotate_admin(&admin_client, &config.backend).await?;
    let file = config.backend.admin_password_file.as_deref();
    println!(
        "admin password rotated; new password in {}",
        file.unwrap_or_else(|| Path::new("?")).display()
    );
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    rolemint::runtime::signal::terminated().await;
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}

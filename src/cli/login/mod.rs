//! A person's side of rolemint: `login` signs in at the identity provider
//! the proxy names, `psql` / `env` / `connect-string` use the token it
//! got, `status` asks the proxy who that is and what they may use,
//! `logout` forgets (and revokes) it.
//!
//! ```text
//! rolemint login --proxy URL
//!   GET URL/.well-known/rolemint-login   issuer, client id, scopes, proxy address, CA
//!   GET <issuer>/.well-known/openid-configuration            oidc.rs
//!   device flow (prints a URL and a code)  or  code + PKCE (loopback.rs)
//!   -> ID token (+ refresh token) in credentials.json, 0600 cache.rs
//! rolemint psql TEMPLATE [DB] [-- psql args]
//!   refresh when the token ends within a minute, then exec psql with
//!   PGPASSWORD in its environment (never on a command line), verify-full
//! ```

pub mod cache;
pub mod loopback;
pub mod oidc;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

use self::cache::Profile;
use crate::secret::Secret;

/// Refresh a token that ends sooner than this.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// Longest a person has to finish a browser sign-in.
const BROWSER_WAIT: Duration = Duration::from_secs(300);
/// Longest one request to the admin listener may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The proxy's admin listener, e.g. https://rolemint.example.com:8200
    /// (a bare HOST:PORT means https). Default: the proxy of the last login.
    #[arg(long, env = "ROLEMINT_PROXY", global = true)]
    pub proxy: Option<String>,
    /// PEM CA certificate to verify an HTTPS admin listener with.
    #[arg(long, env = "ROLEMINT_CACERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Sign in with the device flow: print a URL and a code to enter in any
    /// browser (over SSH, in a headless terminal). The default without a
    /// display.
    #[arg(long, conflicts_with = "browser")]
    pub device: bool,
    /// Sign in in a browser on this machine (authorization code with PKCE,
    /// redirected to 127.0.0.1). The default with a display.
    #[arg(long)]
    pub browser: bool,
    /// With --browser: print the URL instead of opening a browser.
    #[arg(long)]
    pub no_open: bool,
    /// PEM CA certificate(s) to verify the identity provider with, instead
    /// of the system's roots.
    #[arg(long, env = "ROLEMINT_ISSUER_CACERT")]
    pub issuer_ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The role template (the `user` of the connection).
    pub template: String,
    /// The database; default: the template's only database you may use.
    pub dbname: Option<String>,
}

/// Where a login's things live.
fn home() -> anyhow::Result<PathBuf> {
    cache::dir()
}

/// `https://` unless a scheme is given; no trailing slash.
pub fn admin_url(proxy: &str) -> String {
    let p = proxy.trim().trim_end_matches('/');
    if p.contains("://") {
        p.to_owned()
    } else {
        format!("https://{p}")
    }
}

impl ProxyArgs {
    /// The CA to verify the admin listener with: `--ca-cert`, else the one
    /// `profile`'s login was given.
    pub(crate) fn ca_for<'a>(&'a self, profile: &'a Profile) -> Option<&'a std::path::Path> {
        self.ca_cert.as_deref().or(profile.admin_ca_file.as_deref())
    }
}

/// The admin listener's HTTP client, verifying its HTTPS with `ca_cert`
/// (PEM) when given, else the system's roots.
pub(crate) fn admin_client(ca_cert: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(ADMIN_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not PEM certificates", ca.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("building the HTTP client")
}

/// What `/.well-known/rolemint-login` publishes.
#[derive(Debug, Deserialize)]
struct LoginMetadata {
    issuer: String,
    client_id: String,
    scopes: Vec<String>,
    proxy_address: Option<String>,
    proxy_ca_pem: Option<String>,
    /// The CA the proxy verifies the issuer's TLS with, when not the
    /// system's (a private provider): the CLI trusts it for the provider.
    #[serde(default)]
    issuer_ca_pem: Option<String>,
}

/// `rolemint login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let proxy = args
        .proxy
        .proxy
        .as_deref()
        .context("which proxy? --proxy https://HOST:PORT (its admin listener)")?;
    let admin = admin_url(proxy);
    let meta: LoginMetadata = admin_client(args.proxy.ca_cert.as_deref())?
        .get(format!("{admin}/.well-known/rolemint-login"))
        .send()
        .await
        .with_context(|| {
            // A TLS hello answered in plain HTTP reads as a "corrupt
            // message": say what the bare form meant.
            let bare = !proxy.contains("://");
            let hint = if bare {
                format!(" (a bare HOST:PORT means https://; for a plain-HTTP admin listener write --proxy http://{proxy})")
            } else {
                String::new()
            };
            format!("reaching {admin}{hint}")
        })?
        .error_for_status()
        .with_context(|| format!("{admin} publishes no login (is [login] configured?)"))?
        .json()
        .await
        .context("reading the login metadata")?;
    let dir = home()?;
    cache::make_dir(&dir)?;
    let stem = cache::file_stem(&admin);
    // --issuer-ca-cert, else the provider's CA as the proxy publishes it.
    let issuer_ca_file = match (args.issuer_ca_cert, &meta.issuer_ca_pem) {
        (Some(path), _) => Some(path),
        (None, Some(pem)) => {
            let path = dir.join(format!("{stem}-issuer-ca.pem"));
            cache::write_private(&path, pem.as_bytes())?;
            Some(path)
        }
        (None, None) => None,
    };
    let http = oidc::client(issuer_ca_file.as_deref())?;
    let discovery = oidc::discover(&http, &meta.issuer).await?;
    let scopes = meta.scopes.join(" ");
    let use_browser = args.browser || (!args.device && has_display());
    let tokens = if use_browser {
        browser_flow(&http, &discovery, &meta.client_id, &scopes, args.no_open).await?
    } else {
        device_flow(&http, &discovery, &meta.client_id, &scopes).await?
    };
    let proxy_ca_file = match &meta.proxy_ca_pem {
        Some(pem) => {
            let path = dir.join(format!("{stem}-proxy-ca.pem"));
            cache::write_private(&path, pem.as_bytes())?;
            Some(path)
        }
        None => None,
    };
    let proxy_address = meta
        .proxy_address
        .context("the proxy publishes no proxy_address; set [login] proxy_address")?;
    let profile = Profile {
        admin_url: admin.clone(),
        client_id: meta.client_id,
        scopes,
        discovery,
        proxy_address,
        proxy_ca_file,
        admin_ca_file: args.proxy.ca_cert.as_deref().map(absolute),
        issuer_ca_file: issuer_ca_file.as_deref().map(absolute),
        id_token: String::new(),
        refresh_token: None,
        expires_at: 0,
    };
    let profile = with_tokens(profile, tokens);
    let mut creds = cache::load(&dir)?;
    creds.profiles.insert(admin.clone(), profile.clone());
    creds.current = Some(admin);
    cache::save(&dir, &creds)?;
    eprintln!(
        "Signed in at {}; the token is good until {}.",
        profile.discovery.issuer,
        rfc3339(profile.expires_at)
    );
    eprintln!("Next: rolemint status, or rolemint psql TEMPLATE [DBNAME]");
    Ok(())
}

/// `path` made absolute, so the profile works from any directory.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn has_display() -> bool {
    cfg!(target_os = "macos")
        || std::env::var_os("DISPLAY").is_some_and(|v| !v.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|v| !v.is_empty())
}

async fn device_flow(
    http: &reqwest::Client,
    d: &oidc::Discovery,
    client_id: &str,
    scopes: &str,
) -> anyhow::Result<oidc::Tokens> {
    let start = oidc::device_start(http, d, client_id, scopes).await?;
    eprintln!("To sign in, open {}", start.verification_uri);
    eprintln!("and enter the code {}", start.user_code);
    if let Some(complete) = &start.verification_uri_complete {
        eprintln!("(or open {complete})");
    }
    eprintln!("Waiting for the sign-in...");
    Ok(oidc::device_finish(http, d, client_id, &start).await?)
}

async fn browser_flow(
    http: &reqwest::Client,
    d: &oidc::Discovery,
    client_id: &str,
    scopes: &str,
    no_open: bool,
) -> anyhow::Result<oidc::Tokens> {
    let loopback = loopback::Loopback::bind().await?;
    let redirect_uri = loopback.redirect_uri()?;
    let pkce = oidc::Pkce::new()?;
    let state = oidc::random_string()?;
    let url = oidc::authorize_url(d, client_id, scopes, &redirect_uri, &state, &pkce)?;
    eprintln!("To sign in, open {url}");
    if !no_open {
        open_browser(&url);
    }
    let redirect = loopback
        .wait(state, BROWSER_WAIT)
        .await
        .context("the sign-in was not completed in time")?;
    if let Some(error) = redirect.error {
        anyhow::bail!(
            "the identity provider refused: {error} {}",
            redirect.error_description.unwrap_or_default()
        );
    }
    let code = redirect.code.context("the redirect carried no code")?;
    Ok(oidc::exchange_code(http, d, client_id, &code, &redirect_uri, &pkce).await?)
}

/// Opens `url` in the person's browser; a failure leaves the printed URL.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

fn with_tokens(mut p: Profile, t: oidc::Tokens) -> Profile {
    p.id_token = t.id_token.expose().to_owned();
    p.refresh_token = t.refresh_token.map(|r| r.expose().to_owned());
    p.expires_at = unix(t.expires_at);
    p
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs))
        .to_string()
}

/// The signed-in profile with a token good for at least a minute more:
/// refreshed (and saved) when needed.
pub async fn fresh_profile(args: &ProxyArgs) -> anyhow::Result<Profile> {
    let dir = home()?;
    let mut creds = cache::load(&dir)?;
    let key = args.proxy.as_deref().map(admin_url);
    let profile = creds
        .profile(key.as_deref())
        .cloned()
        .context("not signed in: run rolemint login --proxy https://HOST:PORT")?;
    if profile.expires_at > unix(SystemTime::now() + REFRESH_AHEAD) {
        return Ok(profile);
    }
    let refresh_token = profile.refresh_token.clone().with_context(|| {
        format!(
            "the token has expired: run rolemint login --proxy {}",
            profile.admin_url
        )
    })?;
    let http = oidc::client(profile.issuer_ca_file.as_deref())?;
    let tokens = oidc::refresh(
        &http,
        &profile.discovery,
        &profile.client_id,
        &Secret::new(refresh_token),
    )
    .await
    .with_context(|| {
        format!(
            "refreshing the token failed: run rolemint login --proxy {}",
            profile.admin_url
        )
    })?;
    let profile = with_tokens(profile, tokens);
    creds
        .profiles
        .insert(profile.admin_url.clone(), profile.clone());
    cache::save(&dir, &creds)?;
    Ok(profile)
}

/// `rolemint logout`: revokes the refresh token where the provider can,
/// and forgets the profile.
pub async fn logout(args: ProxyArgs) -> anyhow::Result<()> {
    let dir = home()?;
    let mut creds = cache::load(&dir)?;
    let key = args
        .proxy
        .as_deref()
        .map(admin_url)
        .or_else(|| creds.current.clone())
        .context("not signed in")?;
    let Some(profile) = creds.profiles.remove(&key) else {
        anyhow::bail!("not signed in at {key}");
    };
    if let Some(refresh) = &profile.refresh_token {
        let revoked = async {
            let http = oidc::client(profile.issuer_ca_file.as_deref())?;
            oidc::revoke(
                &http,
                &profile.discovery,
                &profile.client_id,
                &Secret::new(refresh.clone()),
            )
            .await
        }
        .await;
        match revoked {
            Ok(true) => eprintln!("Refresh token revoked at the identity provider."),
            Ok(false) => eprintln!("The identity provider has no revocation endpoint."),
            Err(e) => eprintln!("Revoking the refresh token failed ({e}); forgetting it anyway."),
        }
    }
    // The CA files this login wrote (not one named by --issuer-ca-cert).
    let stem = cache::file_stem(&key);
    for ca in [&profile.proxy_ca_file, &profile.issuer_ca_file]
        .into_iter()
        .flatten()
        .filter(|ca| ca.starts_with(&dir) && ca.to_string_lossy().contains(&stem))
    {
        let _ = std::fs::remove_file(ca);
    }
    if creds.current.as_deref() == Some(key.as_str()) {
        creds.current = None;
    }
    cache::save(&dir, &creds)?;
    eprintln!("Signed out of {key}.");
    Ok(())
}

/// What `/v1/rolemint/whoami` answers.
#[derive(Debug, Deserialize)]
pub struct Whoami {
    pub issuer: String,
    pub identity: String,
    pub groups: Vec<String>,
    pub expire_time: String,
    pub templates: Vec<Usable>,
}

#[derive(Debug, Deserialize)]
pub struct Usable {
    pub name: String,
    pub databases: Vec<String>,
    pub default_ttl: u64,
    /// Set for a template that needs an approved access request.
    #[serde(default)]
    pub approval: Option<GrantView>,
}

/// The grant that opens a template with an `approval` rule, if any.
#[derive(Debug, Deserialize)]
pub struct GrantView {
    pub granted_until: Option<String>,
}

async fn whoami(args: &ProxyArgs, profile: &Profile) -> anyhow::Result<Whoami> {
    #[derive(Deserialize)]
    struct Envelope {
        data: Whoami,
    }
    let answer = admin_client(args.ca_for(profile))?
        .get(format!("{}/v1/rolemint/whoami", profile.admin_url))
        .bearer_auth(&profile.id_token)
        .send()
        .await
        .with_context(|| format!("reaching {}", profile.admin_url))?;
    if answer.status() == reqwest::StatusCode::FORBIDDEN {
        anyhow::bail!("the proxy does not accept this token: run rolemint login again");
    }
    let envelope: Envelope = answer
        .error_for_status()?
        .json()
        .await
        .context("reading whoami")?;
    Ok(envelope.data)
}

/// `rolemint status`.
pub async fn status(args: ProxyArgs) -> anyhow::Result<()> {
    let profile = fresh_profile(&args).await?;
    let me = whoami(&args, &profile).await?;
    println!(
        "proxy      {} (psql: {})",
        profile.admin_url, profile.proxy_address
    );
    println!("issuer     {}", me.issuer);
    println!("identity   {}", me.identity);
    println!("groups     {}", me.groups.join(", "));
    println!("expires    {}", me.expire_time);
    if me.templates.is_empty() {
        println!("templates  (none: no template allows you)");
    }
    for (i, t) in me.templates.iter().enumerate() {
        let label = if i == 0 { "templates" } else { "" };
        let grant = match &t.approval {
            None => String::new(),
            Some(GrantView {
                granted_until: Some(until),
            }) => format!("; approved until {until}"),
            Some(GrantView {
                granted_until: None,
            }) => format!(
                "; needs approval: rolemint request create {} --reason ...",
                t.name
            ),
        };
        println!(
            "{label:<10} {:<16} {}  (lease {}{grant})",
            t.name,
            t.databases.join(", "),
            humantime::format_duration(Duration::from_secs(t.default_ttl))
        );
    }
    Ok(())
}

/// The libpq settings of a connection: everything but the password.
pub struct Target {
    pub host: String,
    pub port: String,
    pub user: String,
    pub dbname: String,
    pub sslrootcert: Option<PathBuf>,
}

impl Target {
    /// `PG*` variables, the password last.
    pub fn env(&self, token: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.clone()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGSSLMODE", "verify-full".to_owned()),
        ];
        if let Some(ca) = &self.sslrootcert {
            env.push(("PGSSLROOTCERT", ca.display().to_string()));
        }
        env.push(("PGPASSWORD", token.to_owned()));
        env
    }

    /// A libpq keyword/value string, without the password.
    pub fn dsn(&self) -> String {
        let mut parts = vec![
            format!("host={}", dsn_value(&self.host)),
            format!("port={}", dsn_value(&self.port)),
            format!("user={}", dsn_value(&self.user)),
            format!("dbname={}", dsn_value(&self.dbname)),
            "sslmode=verify-full".to_owned(),
        ];
        if let Some(ca) = &self.sslrootcert {
            parts.push(format!(
                "sslrootcert={}",
                dsn_value(&ca.display().to_string())
            ));
        }
        parts.join(" ")
    }
}

/// A value quoted as libpq's keyword/value syntax wants.
fn dsn_value(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A value quoted for a POSIX shell.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// `host:port` split; `[v6]:port` too.
fn split_address(addr: &str) -> anyhow::Result<(String, String)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("proxy address {addr}: not host:port"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port.to_owned(),
    ))
}

/// The connection `args` names, with a fresh token.
async fn target(args: &ConnectArgs) -> anyhow::Result<(Target, Profile)> {
    let profile = fresh_profile(&args.proxy).await?;
    let dbname = match &args.dbname {
        Some(db) => db.clone(),
        None => {
            let me = whoami(&args.proxy, &profile).await?;
            let t = me
                .templates
                .iter()
                .find(|t| t.name == args.template)
                .with_context(|| {
                    format!(
                        "template {} does not allow you (rolemint status lists those that do)",
                        args.template
                    )
                })?;
            match t.databases.as_slice() {
                [one] => one.clone(),
                many => anyhow::bail!(
                    "template {} opens several databases ({}): name one",
                    args.template,
                    many.join(", ")
                ),
            }
        }
    };
    let (host, port) = split_address(&profile.proxy_address)?;
    Ok((
        Target {
            host,
            port,
            user: args.template.clone(),
            dbname,
            sslrootcert: profile.proxy_ca_file.clone(),
        },
        profile,
    ))
}

/// `rolemint psql`: runs psql (or `$ROLEMINT_PSQL`) in place of this
/// process, the token in its environment only.
pub async fn psql(args: ConnectArgs, psql_args: Vec<String>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let (target, profile) = target(&args).await?;
    let program = std::env::var_os("ROLEMINT_PSQL").unwrap_or_else(|| "psql".into());
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&psql_args);
    // A PGSERVICE or PGSSLCERT of the person's shell must not redirect the
    // connection or the token.
    for var in [
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGPASSFILE",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(target.env(&profile.id_token));
    let err = cmd.exec();
    Err(anyhow::anyhow!(
        "running {}: {err}",
        program.to_string_lossy()
    ))
}

/// `rolemint env`: `export PG...=...` lines for a shell, scripts and pgbench.
pub async fn env(args: ConnectArgs) -> anyhow::Result<()> {
    let (target, profile) = target(&args).await?;
    for (k, v) in target.env(&profile.id_token) {
        println!("export {k}={}", shell_quote(&v));
    }
    Ok(())
}

/// `rolemint connect-string`: a libpq DSN for GUI tools (the password is
/// the token: `rolemint env` prints it).
pub async fn connect_string(args: ConnectArgs) -> anyhow::Result<()> {
    let (target, _) = target(&args).await?;
    println!("{}", target.dsn());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            host: "db.example.com".into(),
            port: "6432".into(),
            user: "readonly".into(),
            dbname: "app db".into(),
            sslrootcert: Some("/home/a/.config/rolemint/x-proxy-ca.pem".into()),
        }
    }

    #[test]
    fn the_dsn_quotes_what_libpq_would_split_and_carries_no_password() {
        let dsn = target().dsn();
        assert_eq!(
            dsn,
            "host=db.example.com port=6432 user=readonly dbname='app db' sslmode=verify-full \
             sslrootcert=/home/a/.config/rolemint/x-proxy-ca.pem"
        );
        assert_eq!(dsn_value("it's"), r"'it\'s'");
    }

    #[test]
    fn the_environment_asks_for_verify_full_and_puts_the_token_only_in_pgpassword() {
        let env = target().env("tok");
        assert!(env.contains(&("PGSSLMODE", "verify-full".into())));
        assert_eq!(env.last(), Some(&("PGPASSWORD", "tok".into())));
        assert_eq!(env.iter().filter(|(_, v)| v == "tok").count(), 1);
    }

    #[test]
    fn addresses_and_urls() {
        assert_eq!(
            admin_url("rm.example.com:8200/"),
            "https://rm.example.com:8200"
        );
        assert_eq!(admin_url("http://127.0.0.1:8200"), "http://127.0.0.1:8200");
        assert_eq!(
            split_address("[::1]:6432").unwrap(),
            ("::1".to_owned(), "6432".to_owned())
        );
        assert!(split_address("nohost").is_err());
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}

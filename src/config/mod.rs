//! The TOML configuration: what the operator writes, checked before anything
//! listens.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`), so a typo is an
//! error at startup instead of a silently ignored setting. Durations are
//! humantime strings (`"90s"`, `"15m"`, `"1h"`). Relative paths are taken
//! relative to the config file's own directory, so a config and its certs can
//! move together. `config/rolemint.example.toml` documents every key.
//!
//! The folder owns the config's shape, defaults and validation, and
//! [`placeholder`], the one parser of `{{...}}`. It must not open sockets
//! or build running services (the verifier, the admin client, TLS): those
//! are built from it, by `runtime::state::Runtime::build` and the server.
//! (Validation still calls `auth` to compile issuers and allow lists; see
//! `tests/module_graph.rs`.) This file is over 700 lines because it is the
//! schema: one struct per TOML table, each with its defaults and checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

pub mod approval;
pub mod login;
pub mod placeholder;

/// Longest duration any TTL may be configured to; a guard against typos such
/// as `"3650d"` that would make a minted role effectively permanent.
const MAX_CONFIGURABLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not `source`: the message holds the OS error already, and a chain
    /// printed with `{:#}` would say it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub backend: BackendConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub mint: MintConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The admin HTTP listener (health, metrics, lease API); off by default.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The JSON audit log; off by default.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The Vault-compatible routes on the admin listener.
    #[serde(default)]
    pub vault: VaultConfig,
    /// What the instances of one deployment share; off by default.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// What one principal may hold of this instance at once.
    #[serde(default)]
    pub quotas: QuotaConfig,
    /// Access requests: how long one waits, the webhook.
    #[serde(default)]
    pub access: approval::AccessConfig,
    /// What `rolemint login` signs people in with; off by default.
    #[serde(default)]
    pub login: Option<login::LoginConfig>,
    /// Role templates by name: the `user` a client connects as.
    pub roles: BTreeMap<String, RoleTemplate>,
}

/// `[quotas]`: per-principal limits (see `lease/quota.rs`). Unset limits
/// default to a tenth of the global limit they divide.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sessions one principal may have open at once; default a tenth of
    /// `proxy.max_connections`.
    pub max_sessions_per_principal: Option<usize>,
    /// Live credential leases one principal may hold; default a tenth of
    /// `vault.max_credential_leases`.
    pub max_credential_leases_per_principal: Option<usize>,
    /// New sessions and credential leases one principal may start in a
    /// minute; 0 (the default): no rate limit.
    #[serde(default)]
    pub mints_per_minute_per_principal: usize,
    /// Principals tracked at once (the quota table's bound).
    #[serde(default = "default_quota_max_principals")]
    pub max_principals: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_sessions_per_principal: None,
            max_credential_leases_per_principal: None,
            mints_per_minute_per_principal: 0,
            max_principals: default_quota_max_principals(),
        }
    }
}

fn default_quota_max_principals() -> usize {
    100_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the PostgreSQL-protocol listener binds.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key for client TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Accept clients without TLS. The token travels as a cleartext password
    /// message, so this is for loopback development and benchmarks only.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Sessions open at once; one more gets SQLSTATE 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections still in the handshake (before their token is checked)
    /// at once; more wait in the accept queue for up to `handshake_timeout`,
    /// then are closed. Kept apart from `max_connections` so that idle
    /// sockets cannot take session slots.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Handshakes one source (an IPv4 address, an IPv6 /64) may have in
    /// flight at once, so one client cannot take every handshake slot;
    /// more from it wait (holding no slot, up to `handshake_timeout`, in a
    /// waiting room of 4 x `max_handshakes` shared by all sources) for one
    /// of its own, and are closed only past that.
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
    /// Time a client has from TCP connect to sending its token: one
    /// deadline for the whole handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// On SIGTERM / Ctrl-C: how long running sessions may go on before they
    /// are ended and their leases revoked.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After the sessions have ended at shutdown: how long rolemint waits
    /// for their revocations before it exits and leaves the rest to the
    /// reaper of the next start.
    #[serde(default = "default_shutdown_revoke_timeout", with = "humantime_serde")]
    pub shutdown_revoke_timeout: Duration,
    /// Largest password message (the identity token) accepted, in bytes.
    /// Tokens from identity providers carrying many groups can be large.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Forward the bytes of sessions whose two legs are plaintext TCP in
    /// the kernel (a BPF sockmap, see `sockmap/`): nothing of their steady
    /// state crosses into user space. Needs CAP_BPF and CAP_NET_ADMIN;
    /// without them rolemint warns and relays in user space. Read at start.
    #[serde(default)]
    pub kernel_splice: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener; unset: no listener.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key for HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address. The operator token
    /// travels in a header, so this is for a network you trust (a pod's
    /// own interface behind a mesh, say).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Hex SHA-256 of the operators' bearer token; unset: the lease API
    /// answers 403 to everyone.
    pub operator_token_sha256: Option<String>,
    /// The same hash, read from a file (a mounted Secret).
    pub operator_token_sha256_file: Option<PathBuf>,
    /// Longest an admin request may take before it is answered 503.
    #[serde(default = "default_admin_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_admin_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Admin HTTP connections open at once; more wait to be accepted.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Admin connections one source (an IPv4 address, an IPv6 /64) may
    /// hold at once; more from it are closed at accept.
    #[serde(default = "default_admin_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// From the moment the listener waits for a request (a new connection,
    /// or the end of the previous response) to the end of its headers;
    /// also how long a kept-alive connection may sit idle.
    #[serde(
        default = "default_admin_header_read_timeout",
        with = "humantime_serde"
    )]
    pub header_read_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            tls_cert: None,
            tls_key: None,
            allow_plaintext: false,
            operator_token_sha256: None,
            operator_token_sha256_file: None,
            request_timeout: default_admin_request_timeout(),
            max_body_bytes: default_admin_max_body_bytes(),
            max_connections: default_admin_max_connections(),
            max_connections_per_source: default_admin_max_connections_per_source(),
            header_read_timeout: default_admin_header_read_timeout(),
        }
    }
}

/// The Vault-compatible door: logins, credentials and role listings on the
/// admin listener, so clients written for Vault's database secrets engine
/// run unchanged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Serve the Vault routes (when the admin listener is on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Auth mounts taking `{"role", "jwt"}` logins: `/v1/auth/<mount>/login`.
    #[serde(default = "default_jwt_mounts")]
    pub jwt_mounts: Vec<String>,
    /// The database secrets mount: `/v1/<mount>/creds/<template>`.
    #[serde(default = "default_database_mount")]
    pub database_mount: String,
    /// Longest life of a login's token on a mount without auth roles (also
    /// capped at the JWT's expiry), and the default TTL of created tokens.
    #[serde(default = "default_client_token_ttl", with = "humantime_serde")]
    pub client_token_ttl: Duration,
    /// Vault tokens stored at once (every instance's); a login or token
    /// create beyond it answers 503.
    #[serde(default = "default_max_client_tokens")]
    pub max_client_tokens: usize,
    /// Credential leases of this instance live at once; more answer 503.
    #[serde(default = "default_max_credential_leases")]
    pub max_credential_leases: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            enabled: true,
            jwt_mounts: default_jwt_mounts(),
            database_mount: default_database_mount(),
            client_token_ttl: default_client_token_ttl(),
            max_client_tokens: default_max_client_tokens(),
            max_credential_leases: default_max_credential_leases(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_jwt_mounts() -> Vec<String> {
    vec!["jwt".into(), "kubernetes".into()]
}
fn default_database_mount() -> String {
    "database".into()
}
fn default_client_token_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_client_tokens() -> usize {
    10_000
}
fn default_max_credential_leases() -> usize {
    10_000
}

/// A mount name as a path segment: `[a-z0-9_-]`, 1 to 64 bytes.
fn is_mount_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl VaultConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self
            .jwt_mounts
            .iter()
            .chain([&self.database_mount])
            .find(|m| !is_mount_name(m))
        {
            return Err(invalid(format!(
                "vault: mount {bad:?} must be 1 to 64 characters of [a-z0-9_-]"
            )));
        }
        if self.max_client_tokens == 0 || self.max_credential_leases == 0 {
            return Err(invalid(
                "vault.max_client_tokens and vault.max_credential_leases must be at least 1",
            ));
        }
        if self.client_token_ttl < Duration::from_secs(1) {
            return Err(invalid("vault.client_token_ttl must be at least 1s"));
        }
        Ok(())
    }
}
/// `[cluster]`: what the instances behind one load balancer share, besides
/// the database.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Keys the MAC in the cancel keys clients get, so that any instance
    /// can verify a CancelRequest for a session another instance holds.
    /// Unset: cancel keys are known only to the instance that issued them.
    pub secret: Option<Secret>,
    /// The same, read from a file (a mounted Kubernetes Secret).
    pub secret_file: Option<PathBuf>,
}

/// The shortest cluster secret accepted: a MAC key should be as strong as
/// the MAC (SHA-256), and a short one could be guessed offline from one
/// observed cancel key.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file appended to, or `"stdout"`; unset: no audit log.
    pub path: Option<PathBuf>,
    /// Lines a second (a burst of as many) for refusals before
    /// authentication: refused connections, tokens nobody accepts, admin
    /// requests without a valid token. A flood of them cannot fill the
    /// disk; the lines left out are counted and summed up in an
    /// `audit.suppressed` line.
    #[serde(default = "default_audit_pre_auth_lines_per_second")]
    pub pre_auth_lines_per_second: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            pre_auth_lines_per_second: default_audit_pre_auth_lines_per_second(),
        }
    }
}

fn default_audit_pre_auth_lines_per_second() -> u32 {
    50
}

/// TLS to the backend. Unset, it is `verify-full` for a backend that is
/// not on this machine and `disable` for a loopback address or a Unix
/// socket ([`BackendConfig::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTls {
    /// Plain TCP to the backend.
    Disable,
    /// TLS, without verifying the server certificate (like libpq's
    /// `sslmode=require`).
    Require,
    /// TLS, certificate verified against `tls_ca_file` and `host`.
    VerifyFull,
}

/// SCRAM channel binding to the backend (libpq's `channel_binding`): the
/// `tls-server-end-point` binding of SCRAM-SHA-256-PLUS ties the password
/// exchange to the TLS connection, so a man in the middle who terminates
/// TLS cannot relay the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// Bind whenever the connection is TLS and the server offers
    /// SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse a login that is not SCRAM-SHA-256-PLUS (needs TLS).
    Require,
    /// Never bind: plain SCRAM-SHA-256.
    Disable,
}

/// How TLS to the backend begins (libpq's `sslnegotiation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslNegotiation {
    /// SSLRequest first, TLS after the server's 'S': every version.
    #[default]
    Postgres,
    /// TLS from the first byte, with ALPN `postgresql`: PostgreSQL 17+,
    /// one round trip fewer per backend connection.
    Direct,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role rolemint mints and drops roles as: needs CREATEROLE and
    /// membership in pg_signal_backend.
    pub admin_user: String,
    pub admin_password: Option<Secret>,
    pub admin_password_file: Option<PathBuf>,
    pub admin_password_env: Option<String>,
    #[serde(default = "default_admin_database")]
    pub admin_database: String,
    /// Admin connections per database, busy or idle; mints and revokes
    /// queue for one when all are busy.
    #[serde(default = "default_admin_pool_size")]
    pub admin_pool_size: usize,
    /// Unset: see [`BackendConfig::tls`], which every reader uses.
    #[serde(default, rename = "tls")]
    pub tls_setting: Option<BackendTls>,
    pub tls_ca_file: Option<PathBuf>,
    /// SCRAM-SHA-256-PLUS with the admin pool and the minted roles' logins.
    #[serde(default)]
    pub channel_binding: ChannelBinding,
    /// `postgres` (SSLRequest first) or `direct` (PostgreSQL 17+).
    #[serde(default)]
    pub sslnegotiation: SslNegotiation,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Allow a backend that asks a minted role for a cleartext or MD5
    /// password, or that lets it in without asking. Off: only SCRAM-SHA-256
    /// is accepted, so a misconfigured pg_hba.conf is noticed.
    #[serde(default)]
    pub allow_weak_auth: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss` claim of the local issuer, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim of the local issuer, when set.
    pub audience: Option<String>,
    /// HS256 key of the local issuer (`rolemint token` signs with it).
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// Claim that names the identity (`sub` by default), for the local
    /// issuer.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Claim holding the identity's groups, for the local issuer.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` / `nbf` / `iat`, for every issuer.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Further token issuers (identity providers, Kubernetes clusters),
    /// routed to by the token's `iss`.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Opaque tokens for service accounts without an identity provider;
    /// only their SHA-256 is configured.
    #[serde(default)]
    pub static_tokens: Vec<StaticTokenConfig>,
    /// How many failed authentications one client address may have.
    #[serde(default)]
    pub failure_rate: FailureRateConfig,
}

/// One `[[auth.issuers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Shown in logs and audit events.
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// The token's `aud` must contain one of these; empty: the token must
    /// carry no `aud` (RFC 7519 §4.1.3).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithms accepted, pinned here: the token header never chooses.
    pub algorithms: Vec<String>,
    /// JWKS over HTTPS.
    pub jwks_url: Option<String>,
    /// JWKS from a file.
    pub jwks_file: Option<PathBuf>,
    /// A PEM public key (RSA, EC or Ed25519).
    pub public_key_file: Option<PathBuf>,
    /// A shared HMAC secret.
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// Read `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// PEM CA certificates trusted for `jwks_url` / discovery instead of
    /// the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// How often a JWKS URL is fetched again.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Claim naming the identity: a top-level name, or a JSON pointer
    /// (`/kubernetes.io/serviceaccount/name`) for a nested one.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Claim holding the groups (name or JSON pointer).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Tokens whose `exp - iat` exceeds this are refused.
    #[serde(default = "default_max_token_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
}

/// One `[[auth.static_tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenConfig {
    /// The identity the token stands for.
    pub identity: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of the token; the token itself is never configured.
    pub sha256: String,
}

/// `[auth.failure_rate]`: a token bucket per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRateConfig {
    /// Failures an address may have in a burst.
    #[serde(default = "default_failure_burst")]
    pub burst: u32,
    /// Failures per minute an address earns back.
    #[serde(default = "default_failure_per_minute")]
    pub per_minute: u32,
    /// Addresses tracked at once; the stalest is forgotten first.
    #[serde(default = "default_failure_max_addresses")]
    pub max_addresses: usize,
}

impl Default for FailureRateConfig {
    fn default() -> Self {
        FailureRateConfig {
            burst: default_failure_burst(),
            per_minute: default_failure_per_minute(),
            max_addresses: default_failure_max_addresses(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintConfig {
    /// Name of minted roles. Placeholders: `{{identity}}`, `{{template}}`,
    /// `{{random}}` (required), `{{unix_time}}`.
    #[serde(default = "default_name_template")]
    pub name_template: String,
    /// PBKDF2 iterations of the SCRAM verifier given to PostgreSQL. The
    /// minted password is 256 random bits, which stretching cannot make any
    /// harder to guess; every iteration is paid by PostgreSQL on CREATE ROLE
    /// and by rolemint on every login.
    #[serde(default = "default_scram_iterations")]
    pub scram_iterations: u32,
    /// This instance's name in lease comments (defaults to the host name).
    pub instance: Option<String>,
    /// Longest wait for a mint or revoke statement batch.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// A revocation that has kept failing for this long is logged at ERROR
    /// (it is retried for as long as the process lives either way).
    #[serde(default = "default_revoke_error_after", with = "humantime_serde")]
    pub revoke_error_after: Duration,
    /// Roles waiting to be revoked past which new sessions (53300) and
    /// credentials (503) are refused: while PostgreSQL is down, every
    /// ended session adds one, and nothing drains them.
    #[serde(default = "default_max_pending_revocations")]
    pub max_pending_revocations: usize,
    /// How often the reaper sweeps `rolemint_managed` for orphaned roles
    /// (it also sweeps once at startup).
    #[serde(default = "default_reap_interval", with = "humantime_serde")]
    pub reap_interval: Duration,
    /// How long a minted role may have no backend session before the
    /// reaper drops it. Longer than a mint plus a backend login, so a role
    /// that is about to log in is never taken for an orphan.
    #[serde(default = "default_reap_grace", with = "humantime_serde")]
    pub reap_grace: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleTemplate {
    /// Databases a session of this template may connect to.
    pub databases: Vec<String>,
    /// Lease TTL of a session.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest a lease may be renewed to.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// SQL run as one transaction to create the role (Vault placeholders).
    pub creation_statements: Vec<String>,
    /// SQL run to drop the role; a safe default is used when absent.
    /// rolemint sets NOLOGIN and terminates the role's backends first
    /// either way.
    pub revocation_statements: Option<Vec<String>>,
    /// Role that inherits what a minted role owns when it is revoked
    /// (`REASSIGN OWNED`). Without it, a role that owns objects is left
    /// NOLOGIN and reported, never dropped with its objects.
    pub owner: Option<String>,
    /// Identities (raw claim values, glob patterns) allowed this template.
    #[serde(default)]
    pub allow_identities: Vec<String>,
    /// Groups (raw claim values, glob patterns) allowed this template.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Cap the lease at the token's `exp`.
    #[serde(default)]
    pub bind_to_token_expiry: bool,
    /// `ALTER ROLE .. SET name = value` in the mint batch; values may use
    /// `{{identity}}` and `{{groups}}`.
    #[serde(default)]
    pub session_settings: BTreeMap<String, String>,
    /// Roles minted ahead, per database of the template, each with a
    /// backend already logged in as it (see `warm_pool.rs`): a session
    /// that finds one skips the mint and the login. 0 (the default) turns
    /// the pool off; at most [`MAX_WARM_POOL`] per template and database.
    #[serde(default)]
    pub warm_pool: usize,
    /// Sessions and credential leases need an access request others
    /// approved (`auth/access.rs`); off when absent.
    #[serde(default)]
    pub approval: Option<approval::Approval>,
    /// The name template of pooled roles. They are minted before any
    /// client is known, so it may not use `{{identity}}`; default
    /// [`DEFAULT_WARM_NAME_TEMPLATE`].
    pub warm_name_template: Option<String>,
    /// How long a pooled role waits to be claimed before it is revoked and
    /// replaced (its `VALID UNTIL` is a little later, so PostgreSQL itself
    /// refuses it after that even if rolemint dies).
    #[serde(default = "default_warm_lifetime", with = "humantime_serde")]
    pub warm_lifetime: Duration,
    /// Write every statement of this template's sessions to the audit log
    /// (`session.statement`: each simple Query and each Parse, in order).
    /// Such sessions always use the user-space relay, never the kernel
    /// splice, which would not show rolemint their bytes.
    #[serde(default)]
    pub audit_queries: bool,
    /// With `audit_queries`, also write the values of every Bind. Off by
    /// default: parameter values are where personal data and secrets are.
    #[serde(default)]
    pub audit_parameters: bool,
    /// `allow_identities` and `allow_groups` compiled, on first use (see
    /// `policy.rs`): once per loaded config, not once per connection.
    #[serde(skip)]
    pub allow_compiled: std::sync::OnceLock<crate::auth::policy::AllowSets>,
}

impl Default for MintConfig {
    fn default() -> Self {
        MintConfig {
            name_template: default_name_template(),
            scram_iterations: default_scram_iterations(),
            instance: None,
            statement_timeout: default_statement_timeout(),
            revoke_error_after: default_revoke_error_after(),
            max_pending_revocations: default_max_pending_revocations(),
            reap_interval: default_reap_interval(),
            reap_grace: default_reap_grace(),
        }
    }
}

fn default_max_connections() -> usize {
    1000
}
fn default_max_handshakes() -> usize {
    256
}
fn default_max_handshakes_per_source() -> usize {
    64
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_revoke_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_pending_revocations() -> usize {
    10_000
}
fn default_revoke_error_after() -> Duration {
    Duration::from_secs(60)
}
fn default_max_token_bytes() -> usize {
    64 * 1024
}
fn default_admin_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_admin_max_body_bytes() -> usize {
    64 * 1024
}
fn default_admin_max_connections() -> usize {
    256
}
fn default_admin_max_connections_per_source() -> usize {
    32
}
fn default_admin_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pg_port() -> u16 {
    5432
}
fn default_admin_database() -> String {
    "postgres".into()
}
fn default_admin_pool_size() -> usize {
    8
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_identity_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_failure_burst() -> u32 {
    10
}
fn default_failure_per_minute() -> u32 {
    10
}
fn default_failure_max_addresses() -> usize {
    10_000
}
/// Most pooled roles per template and database: each holds a backend
/// connection, which counts against PostgreSQL's `max_connections`.
pub const MAX_WARM_POOL: usize = 1000;

/// The name template of pooled roles when `warm_name_template` is unset:
/// `mint.name_template` without the identity, which is not known yet.
pub const DEFAULT_WARM_NAME_TEMPLATE: &str = "v-{{template}}-{{random}}-{{unix_time}}";

fn default_warm_lifetime() -> Duration {
    Duration::from_secs(10 * 60)
}

impl RoleTemplate {
    /// The name template of this template's pooled roles.
    pub fn warm_name_template(&self) -> &str {
        self.warm_name_template
            .as_deref()
            .unwrap_or(DEFAULT_WARM_NAME_TEMPLATE)
    }
}

pub fn default_name_template() -> String {
    "v-{{identity}}-{{template}}-{{random}}-{{unix_time}}".into()
}
fn default_scram_iterations() -> u32 {
    16
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reap_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_reap_grace() -> Duration {
    Duration::from_secs(120)
}

impl Config {
    /// Reads, parses, resolves secrets and relative paths, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (config, mut problems) = Config::load_checking(path)?;
        match problems.is_empty() {
            true => Ok(config),
            false => Err(problems.swap_remove(0)),
        }
    }

    /// [`Config::load`] for `rolemint check`: a file that does not read or
    /// parse is an error, but every secret that cannot be resolved is
    /// returned as a problem (the secret left unset) and the rest is still
    /// resolved, so that all of them are reported at once. Validation runs
    /// only when there is no such problem (an unset secret would fail it).
    pub fn load_checking(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = config.resolve_all(base);
        if problems.is_empty() {
            problems.extend(config.validate().err());
        }
        Ok((config, problems))
    }

    /// Parses TOML text without touching the file system.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })
    }

    /// Makes relative paths absolute against `base` and reads the secrets
    /// that live in files or the environment.
    pub fn resolve(&mut self, base: &Path) -> Result<(), ConfigError> {
        match self.resolve_all(base).into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// [`Config::resolve`], going on past a secret that cannot be read:
    /// every problem, in the order of the file.
    fn resolve_all(&mut self, base: &Path) -> Vec<ConfigError> {
        self.rebase_paths(base);
        let mut problems = Vec::new();
        let mut note = |r: Result<(), ConfigError>| problems.extend(r.err());
        note(self.backend.resolve_password());
        note(self.auth.resolve_secrets());
        note(self.cluster.resolve_secret());
        note(self.admin.resolve_operator_hash());
        problems
    }

    /// Every relative path, made relative to the config file's directory.
    fn rebase_paths(&mut self, base: &Path) {
        let rebase = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        rebase(&mut self.proxy.tls_cert);
        rebase(&mut self.proxy.tls_key);
        rebase(&mut self.backend.tls_ca_file);
        rebase(&mut self.backend.admin_password_file);
        rebase(&mut self.auth.hs256_secret_file);
        rebase(&mut self.admin.tls_cert);
        rebase(&mut self.admin.tls_key);
        rebase(&mut self.admin.operator_token_sha256_file);
        rebase(&mut self.cluster.secret_file);
        if let Some(path) = &self.audit.path {
            if path.as_os_str() != "stdout" {
                rebase(&mut self.audit.path);
            }
        }
        for i in &mut self.auth.issuers {
            rebase(&mut i.jwks_file);
            rebase(&mut i.public_key_file);
            rebase(&mut i.hs256_secret_file);
            rebase(&mut i.jwks_ca_file);
        }
        if let Some(l) = &mut self.login {
            rebase(&mut l.proxy_ca_file);
        }
        rebase(&mut self.access.webhook_secret_file);
    }

    /// Checks what the types cannot: combinations, ranges, placeholders.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(l) = &self.login {
            login::validate(l, &self.auth.issuers).map_err(invalid)?;
        }
        approval::validate_access(&self.access).map_err(invalid)?;
        let p = &self.proxy;
        if p.tls_cert.is_some() != p.tls_key.is_some() {
            return Err(invalid("proxy: tls_cert and tls_key go together"));
        }
        if p.tls_cert.is_none() && !p.allow_plaintext {
            return Err(invalid(
                "proxy: no tls_cert/tls_key and allow_plaintext = false: no client could connect",
            ));
        }
        if p.max_connections == 0 {
            return Err(invalid("proxy.max_connections must be at least 1"));
        }
        if p.max_handshakes == 0 {
            return Err(invalid("proxy.max_handshakes must be at least 1"));
        }
        if p.max_handshakes_per_source == 0 {
            return Err(invalid(
                "proxy.max_handshakes_per_source must be at least 1",
            ));
        }
        if self.audit.pre_auth_lines_per_second == 0 {
            return Err(invalid(
                "audit.pre_auth_lines_per_second must be at least 1",
            ));
        }
        let q = &self.quotas;
        if q.max_sessions_per_principal == Some(0)
            || q.max_credential_leases_per_principal == Some(0)
            || !(1..=10_000_000).contains(&q.max_principals)
        {
            return Err(invalid(
                "quotas: a per-principal limit must be at least 1, max_principals 1..10000000 \
                 (mints_per_minute_per_principal = 0 turns the rate off)",
            ));
        }
        if !(1024..=1024 * 1024).contains(&p.max_token_bytes) {
            return Err(invalid(
                "proxy.max_token_bytes must be between 1024 and 1048576",
            ));
        }
        let b = &self.backend;
        if b.admin_password.as_ref().is_none_or(|s| s.is_empty()) {
            return Err(invalid(
                "backend: admin_password (or admin_password_file / admin_password_env) is required",
            ));
        }
        if !(1..=1_000_000).contains(&self.mint.max_pending_revocations) {
            return Err(invalid(
                "mint.max_pending_revocations must be between 1 and 1000000",
            ));
        }
        if b.admin_pool_size == 0 || b.admin_pool_size > 64 {
            return Err(invalid("backend.admin_pool_size must be between 1 and 64"));
        }
        if b.sslnegotiation == SslNegotiation::Direct && b.tls() == BackendTls::Disable {
            return Err(invalid(
                "backend: sslnegotiation = \"direct\" needs tls = \"require\" or \"verify-full\"",
            ));
        }
        if b.channel_binding == ChannelBinding::Require && b.tls() == BackendTls::Disable {
            return Err(invalid(
                "backend: channel_binding = \"require\" needs tls = \"require\" or \"verify-full\"",
            ));
        }
        if b.tls() == BackendTls::VerifyFull && b.tls_ca_file.is_none() {
            return Err(invalid(if b.tls_setting.is_none() {
                format!(
                    "backend: host {:?} is not on this machine, so tls defaults to \"verify-full\", \
                     which needs tls_ca_file (the CA that signed the server's certificate); to reach \
                     it without verifying who answers, set tls = \"require\" (or \"disable\") explicitly",
                    b.host
                )
            } else {
                "backend: tls = \"verify-full\" needs tls_ca_file".to_owned()
            }));
        }
        self.check_durations()?;
        crate::auth::identity::validate_config(&self.auth).map_err(invalid)?;
        self.validate_admin()?;
        self.vault.validate()?;
        if let Some(secret) = &self.cluster.secret {
            if secret.expose().len() < MIN_CLUSTER_SECRET_BYTES {
                return Err(invalid(format!(
                    "cluster.secret must be at least {MIN_CLUSTER_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                )));
            }
        }
        if self
            .audit
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("audit.path is empty (a file path or \"stdout\")"));
        }
        let m = &self.mint;
        if !placeholder::uses(&m.name_template, "random") {
            return Err(invalid(
                "mint.name_template must contain {{random}}: two sessions must never collide",
            ));
        }
        check_placeholders(
            "mint.name_template",
            &m.name_template,
            &["identity", "template", "random", "unix_time"],
        )?;
        if !(1..=100_000).contains(&m.scram_iterations) {
            return Err(invalid(
                "mint.scram_iterations must be between 1 and 100000",
            ));
        }
        if m.reap_interval < Duration::from_millis(100) || m.reap_interval > MAX_CONFIGURABLE_TTL {
            return Err(invalid(
                "mint.reap_interval must be between 100ms and 7 days",
            ));
        }
        if m.reap_grace < Duration::from_secs(1) || m.reap_grace > MAX_CONFIGURABLE_TTL {
            return Err(invalid("mint.reap_grace must be between 1s and 7 days"));
        }
        if self.roles.is_empty() {
            return Err(invalid("no [roles.NAME] template is defined"));
        }
        let issuers = crate::auth::policy::issuer_names(&self.auth);
        for (name, t) in &self.roles {
            validate_template(name, t, &issuers)?;
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        if a.tls_cert.is_some() != a.tls_key.is_some() {
            return Err(invalid("admin: tls_cert and tls_key go together"));
        }
        if let Some(listen) = a.listen {
            if a.tls_cert.is_none() && !a.allow_plaintext && !listen.ip().is_loopback() {
                return Err(invalid(format!(
                    "admin: listen = \"{listen}\" is not loopback and there is no tls_cert/tls_key: \
                     the operator token would cross the network in plaintext (set allow_plaintext = true to accept that)"
                )));
            }
        }
        if let Some(hash) = &a.operator_token_sha256 {
            if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    "admin.operator_token_sha256 must be 64 hex digits (the SHA-256 of the token; `rolemint token --operator` prints one)",
                ));
            }
        }
        if a.request_timeout.is_zero() || a.request_timeout > Duration::from_secs(600) {
            return Err(invalid(
                "admin.request_timeout must be positive and at most 10m",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&a.max_body_bytes) {
            return Err(invalid(
                "admin.max_body_bytes must be between 1024 and 16777216",
            ));
        }
        if !(1..=65_536).contains(&a.max_connections) {
            return Err(invalid("admin.max_connections must be between 1 and 65536"));
        }
        if a.max_connections_per_source == 0 {
            return Err(invalid(
                "admin.max_connections_per_source must be at least 1",
            ));
        }
        if a.header_read_timeout < Duration::from_millis(100)
            || a.header_read_timeout > Duration::from_secs(600)
        {
            return Err(invalid(
                "admin.header_read_timeout must be between 100ms and 10m",
            ));
        }
        Ok(())
    }

    /// Every duration of the config at most [`MAX_CONFIGURABLE_TTL`]:
    /// deadlines are `now + duration`, and a number near `u64::MAX` seconds
    /// (which humantime reads without complaint) would overflow the clock
    /// where it is added, far from the config that caused it.
    fn check_durations(&self) -> Result<(), ConfigError> {
        let (p, b, m) = (&self.proxy, &self.backend, &self.mint);
        let mut all = vec![
            ("proxy.handshake_timeout", p.handshake_timeout),
            ("proxy.shutdown_grace", p.shutdown_grace),
            ("proxy.shutdown_revoke_timeout", p.shutdown_revoke_timeout),
            ("backend.connect_timeout", b.connect_timeout),
            ("auth.leeway", self.auth.leeway),
            ("vault.client_token_ttl", self.vault.client_token_ttl),
            ("mint.statement_timeout", m.statement_timeout),
            ("mint.revoke_error_after", m.revoke_error_after),
        ];
        for i in &self.auth.issuers {
            all.push(("auth.issuers.jwks_refresh", i.jwks_refresh));
            all.push(("auth.issuers.max_token_lifetime", i.max_token_lifetime));
        }
        match all.into_iter().find(|(_, d)| *d > MAX_CONFIGURABLE_TTL) {
            Some((key, _)) => Err(invalid(format!("{key} may be at most 7 days"))),
            None => Ok(()),
        }
    }

    /// Longest a mint or revoke may take as a whole: a fresh admin
    /// connection, then one statement batch.
    pub fn admin_operation_timeout(&self) -> Duration {
        self.backend.connect_timeout + self.mint.statement_timeout
    }

    /// The template a client names as its `user`.
    pub fn template(&self, name: &str) -> Option<&RoleTemplate> {
        self.roles.get(name)
    }
}

/// Checks one role template: its name, databases, TTLs, owner, the
/// placeholders of its statements, the `VALID UNTIL '{{expiration}}'` every
/// minted role must carry, its allow rules against the configured
/// `issuers`, its warm pool. The one check of a template, whether it comes
/// from the config file or was written through the API (`database/roles`).
pub fn validate_template(
    name: &str,
    t: &RoleTemplate,
    issuers: &[String],
) -> Result<(), ConfigError> {
    let ctx = |msg: &str| invalid(format!("roles.{name}: {msg}"));
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return Err(ctx("template names use only [a-z0-9_-], at most 63 bytes"));
    }
    if t.databases.is_empty() {
        return Err(ctx("databases is empty: no session could connect"));
    }
    if t.default_ttl.is_zero() || t.default_ttl > t.max_ttl {
        return Err(ctx("default_ttl must be positive and at most max_ttl"));
    }
    if t.owner
        .as_ref()
        .is_some_and(|o| o.trim().is_empty() || o.len() > 63)
    {
        return Err(ctx("owner must be a role name of 1 to 63 bytes"));
    }
    if t.max_ttl > MAX_CONFIGURABLE_TTL {
        return Err(ctx("max_ttl may be at most 7 days"));
    }
    if !t
        .creation_statements
        .iter()
        .any(|s| placeholder::uses(s, "name"))
    {
        return Err(ctx("creation_statements must create the role {{name}}"));
    }
    for s in &t.creation_statements {
        check_placeholders(
            &format!("roles.{name}.creation_statements"),
            s,
            &["name", "password", "expiration"],
        )?;
    }
    if !t.creation_statements.iter().any(|s| sets_expiry(s)) {
        return Err(ctx(
            "creation_statements must give the role VALID UNTIL '{{expiration}}' \
                 (for example CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' \
                 VALID UNTIL '{{expiration}}'): a role minted without an expiry could log in \
                 forever if it were never dropped",
        ));
    }
    for s in t.revocation_statements.iter().flatten() {
        check_placeholders(&format!("roles.{name}.revocation_statements"), s, &["name"])?;
    }
    crate::auth::policy::validate_template(t, issuers).map_err(|e| ctx(&e))?;
    validate_warm_pool(name, t)?;
    Ok(())
}

/// Whether `statement` sets the role's `VALID UNTIL` to the lease's
/// expiry: `VALID UNTIL '{{expiration}}'`, in any case and spacing. Every
/// minted role carries its expiry in PostgreSQL itself, so even a role
/// rolemint never got to drop cannot log in after its lease.
fn sets_expiry(statement: &str) -> bool {
    let parts: Vec<placeholder::Part<'_>> = match placeholder::parts(statement).collect() {
        Ok(parts) => parts,
        Err(_) => return false,
    };
    parts.windows(3).any(|w| match w {
        [placeholder::Part::Text(before), placeholder::Part::Key("expiration"), placeholder::Part::Text(after)] => {
            let words: Vec<String> = before
                .trim_end()
                .strip_suffix('\'')
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_ascii_uppercase)
                .collect();
            words.ends_with(&["VALID".to_owned(), "UNTIL".to_owned()]) && after.starts_with('\'')
        }
        _ => false,
    })
}

/// A template's warm pool: bounded, and renderable before any identity is
/// known. Its roles are minted ahead of every client, so neither their
/// names nor their `session_settings` (an `ALTER ROLE .. SET`, in force
/// from the pooled backend's login) may depend on who claims them.
fn validate_warm_pool(name: &str, t: &RoleTemplate) -> Result<(), ConfigError> {
    let ctx = |msg: String| invalid(format!("roles.{name}: {msg}"));
    if t.warm_pool > MAX_WARM_POOL {
        return Err(ctx(format!(
            "warm_pool may be at most {MAX_WARM_POOL} (per database)"
        )));
    }
    if t.warm_pool.saturating_mul(t.databases.len()) > MAX_WARM_POOL {
        return Err(ctx(format!(
            "warm_pool x databases may be at most {MAX_WARM_POOL} pooled backends"
        )));
    }
    if t.warm_lifetime < Duration::from_secs(10) || t.warm_lifetime > Duration::from_secs(24 * 3600)
    {
        return Err(ctx("warm_lifetime must be between 10s and 24h".into()));
    }
    let names = t.warm_name_template();
    if placeholder::uses(names, "identity") {
        return Err(ctx(format!(
            "warm_name_template {names:?} uses {{{{identity}}}}, but pooled roles are minted \
             before any identity is known: use {{{{template}}}}, {{{{random}}}}, {{{{unix_time}}}} \
             (the default is {DEFAULT_WARM_NAME_TEMPLATE:?})"
        )));
    }
    if !placeholder::uses(names, "random") {
        return Err(ctx(
            "warm_name_template must contain {{random}}: two roles must never collide".into(),
        ));
    }
    check_placeholders(
        &format!("roles.{name}.warm_name_template"),
        names,
        &["template", "random", "unix_time"],
    )?;
    if t.warm_pool > 0 {
        for (setting, value) in &t.session_settings {
            if ["identity", "groups", "issuer"]
                .iter()
                .any(|k| placeholder::uses(value, k))
            {
                return Err(ctx(format!(
                    "session_settings.{setting} depends on the identity ({value:?}), but a \
                     warm_pool role's settings are fixed before any identity is known: set \
                     warm_pool = 0 or use only {{{{template}}}} in session_settings"
                )));
            }
        }
    }
    Ok(())
}

/// Rejects a malformed text and `{{x}}` placeholders other than the
/// allowed ones.
fn check_placeholders(
    what: &str,
    text: &str,
    allowed: &'static [&'static str],
) -> Result<(), ConfigError> {
    placeholder::check(text, allowed).map_err(|e| invalid(format!("{what}: {e}")))
}

impl BackendConfig {
    /// The TLS mode in force: as set, or by default `verify-full` unless
    /// the backend is on this machine (a loopback address, `localhost`, or
    /// a Unix socket directory), where a network path cannot be tapped and
    /// `disable` stays the default.
    pub fn tls(&self) -> BackendTls {
        match self.tls_setting {
            Some(tls) => tls,
            None if self.is_local() => BackendTls::Disable,
            None => BackendTls::VerifyFull,
        }
    }

    /// The backend is reached without crossing a network: `localhost`, a
    /// loopback address (an IPv4-mapped one too), or a socket directory.
    pub fn is_local(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.starts_with('/')
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// `admin_password`, from the one place it is set.
    fn resolve_password(&mut self) -> Result<(), ConfigError> {
        let sources = [
            self.admin_password.is_some(),
            self.admin_password_file.is_some(),
            self.admin_password_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "backend: set only one of admin_password, admin_password_file, admin_password_env",
            ));
        }
        if let Some(file) = &self.admin_password_file {
            self.admin_password = Some(read_secret_file(file)?);
        }
        if let Some(var) = &self.admin_password_env {
            let value = std::env::var(var).map_err(|_| {
                invalid(format!(
                    "backend.admin_password_env: environment variable {var} is not set"
                ))
            })?;
            self.admin_password = Some(Secret::new(value));
        }
        Ok(())
    }
}

impl AuthConfig {
    /// The local issuer's and every issuer's HS256 secret files.
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if self.hs256_secret.is_some() && self.hs256_secret_file.is_some() {
            return Err(invalid(
                "auth: set only one of hs256_secret, hs256_secret_file",
            ));
        }
        if let Some(file) = &self.hs256_secret_file {
            self.hs256_secret = Some(read_secret_file(file)?);
        }
        for i in &mut self.issuers {
            if i.hs256_secret.is_some() && i.hs256_secret_file.is_some() {
                return Err(invalid(format!(
                    "auth.issuers \"{}\": set only one of hs256_secret, hs256_secret_file",
                    i.name
                )));
            }
            if let Some(file) = &i.hs256_secret_file {
                i.hs256_secret = Some(read_secret_file(file)?);
            }
        }
        Ok(())
    }
}

impl ClusterConfig {
    fn resolve_secret(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = &self.secret_file {
            if self.secret.is_some() {
                return Err(invalid("cluster: set only one of secret, secret_file"));
            }
            self.secret = Some(read_secret_file(file)?);
        }
        Ok(())
    }
}

impl AdminConfig {
    fn resolve_operator_hash(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = &self.operator_token_sha256_file {
            if self.operator_token_sha256.is_some() {
                return Err(invalid(
                    "admin: set only one of operator_token_sha256, operator_token_sha256_file",
                ));
            }
            let hash = read_secret_file(file)?;
            self.operator_token_sha256 = Some(hash.expose().trim().to_owned());
        }
        Ok(())
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid config, for the tests of every module.
    pub(crate) fn example() -> Config {
        Config::parse(EXAMPLE).expect("the test config parses")
    }

    pub(crate) const EXAMPLE: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
allow_plaintext = true

[backend]
host = "127.0.0.1"
admin_user = "rolemint_admin"
admin_password = "pw"

[auth]
issuer = "rolemint-dev"
hs256_secret = "0123456789abcdef0123456789abcdef"

[roles.readonly]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#;

    #[test]
    fn a_duration_past_the_clock_is_refused_at_load() {
        let huge = EXAMPLE.replace(
            "allow_plaintext = true",
            "allow_plaintext = true\nhandshake_timeout = \"500000000000years\"",
        );
        let err = Config::parse(&huge).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("proxy.handshake_timeout"), "{err}");
    }

    #[test]
    fn parses_and_validates_a_minimal_config() {
        let c = Config::parse(EXAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.roles["readonly"].default_ttl, Duration::from_secs(3600));
        assert_eq!(c.backend.port, 5432);
        assert_eq!(c.mint.name_template, default_name_template());
    }

    /// Off this machine the backend is verified by default: without a CA
    /// the config is refused with what to write; less than verify-full
    /// must be asked for.
    #[test]
    fn a_remote_backend_defaults_to_verify_full() {
        let remote = EXAMPLE.replace("host = \"127.0.0.1\"", "host = \"db.internal\"");
        let err = Config::parse(&remote)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("defaults to \"verify-full\"") && err.contains("tls_ca_file"),
            "{err}"
        );
        let with = |keys: &str| {
            let text = remote.replace(
                "admin_password = \"pw\"",
                &format!("admin_password = \"pw\"\n{keys}"),
            );
            Config::parse(&text)
                .unwrap()
                .validate()
                .map(|()| Config::parse(&text).unwrap())
        };
        let c = with("tls_ca_file = \"/ca.pem\"").unwrap();
        assert_eq!(c.backend.tls(), BackendTls::VerifyFull);
        assert_eq!(c.backend.channel_binding, ChannelBinding::Prefer);
        let c = with("tls = \"require\"").unwrap();
        assert_eq!(c.backend.tls(), BackendTls::Require);
        let err = with("tls = \"disable\"\nchannel_binding = \"require\"").unwrap_err();
        assert!(err.to_string().contains("channel_binding"), "{err}");
        // Loopback keeps plaintext by default.
        assert_eq!(example().backend.tls(), BackendTls::Disable);
    }

    /// Every minted role carries its expiry in PostgreSQL: a template
    /// whose statements do not set `VALID UNTIL '{{expiration}}'` is
    /// refused at load, in any spacing or case that renders.
    #[test]
    fn a_template_without_valid_until_expiration_is_refused() {
        let statement = |sql: &str| {
            EXAMPLE.replace(
                "\"CREATE ROLE \\\"{{name}}\\\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'\"",
                &format!("{sql:?}"),
            )
        };
        for refused in [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'",
            "CREATE ROLE \"{{name}}\" LOGIN VALID UNTIL 'infinity'",
            "CREATE ROLE \"{{name}}\" LOGIN VALID UNTIL {{expiration}}",
            "CREATE ROLE \"{{name}}\" LOGIN /* VALID UNTIL */ COMMENT '{{expiration}}'",
        ] {
            let text = statement(refused);
            assert_ne!(text, EXAMPLE, "the test replaced the statement");
            let err = Config::parse(&text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains("VALID UNTIL"), "{refused}: {err}");
        }
        for accepted in [
            "CREATE ROLE \"{{name}}\" LOGIN valid   until '{{ expiration }}'",
            "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID\nUNTIL '{{expiration}}'",
        ] {
            Config::parse(&statement(accepted))
                .unwrap()
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn rejects_unknown_keys() {
        let text = EXAMPLE.replace("allow_plaintext = true", "allow_plaintxt = true");
        assert!(matches!(
            Config::parse(&text),
            Err(ConfigError::Parse { .. })
        ));
    }

    fn with_warm(extra: &str) -> Result<Config, ConfigError> {
        let text = EXAMPLE.replace(
            "[roles.readonly]\n",
            &format!("[roles.readonly]\n{extra}\n"),
        );
        let c = Config::parse(&text)?;
        c.validate().map(|()| c)
    }

    #[test]
    fn warm_pool_defaults_off_and_takes_a_name_without_identity() {
        let c = example();
        assert_eq!(c.roles["readonly"].warm_pool, 0);
        let c = with_warm("warm_pool = 2").unwrap();
        let t = &c.roles["readonly"];
        assert_eq!(t.warm_pool, 2);
        assert_eq!(t.warm_name_template(), DEFAULT_WARM_NAME_TEMPLATE);
        assert_eq!(t.warm_lifetime, Duration::from_secs(600));
        // The default mint.name_template has {{identity}}: it is not used.
        assert!(c.mint.name_template.contains("{{identity}}"));
        let c = with_warm("warm_pool = 1\nwarm_name_template = \"p-{{random}}\"").unwrap();
        assert_eq!(c.roles["readonly"].warm_name_template(), "p-{{random}}");
    }

    #[test]
    fn warm_pool_refuses_identity_in_names_and_settings() {
        for name in ["v-{{identity}}-{{random}}", "v-{{ identity }}-{{random}}"] {
            let err = with_warm(&format!("warm_pool = 2\nwarm_name_template = \"{name}\""))
                .unwrap_err()
                .to_string();
            assert!(err.contains("roles.readonly"), "{err}");
            assert!(
                err.contains("{{identity}}") && err.contains("before any identity is known"),
                "{err}"
            );
        }
        let err = with_warm("warm_pool = 2\nwarm_name_template = \"v-{{template}}\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("{{random}}"), "{err}");
        for key in ["identity", "groups", "issuer"] {
            let extra =
                format!("warm_pool = 1\nsession_settings = {{ \"app.who\" = \"{{{{{key}}}}}\" }}");
            let err = with_warm(&extra).unwrap_err().to_string();
            assert!(
                err.contains("session_settings.app.who depends on the identity"),
                "{err}"
            );
            // Without a pool the same settings are fine.
            let extra = format!("session_settings = {{ \"app.who\" = \"{{{{{key}}}}}\" }}");
            with_warm(&extra).unwrap();
        }
        with_warm("warm_pool = 1\nsession_settings = { \"app.t\" = \"{{template}}\" }").unwrap();
    }

    #[test]
    fn warm_pool_is_bounded() {
        with_warm("warm_pool = 1000").unwrap();
        let err = with_warm("warm_pool = 1001").unwrap_err().to_string();
        assert!(err.contains("at most 1000"), "{err}");
        let err = with_warm("warm_pool = 1\nwarm_lifetime = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("warm_lifetime"), "{err}");
    }

    #[test]
    fn spaced_placeholders_load_wherever_they_render() {
        // `{{ key }}` is `{{key}}` in every text that has placeholders, so
        // a config that loads renders as written.
        let text = EXAMPLE
            .replace("{{name}}", "{{ name }}")
            .replace("{{expiration}}", "{{ expiration }}")
            .replace(
                "[roles.readonly]\n",
                "[roles.readonly]\nwarm_pool = 1\nwarm_name_template = \"p-{{ random }}\"\n",
            );
        let mut c = Config::parse(&text).unwrap();
        c.mint.name_template = "v-{{ identity }}-{{ random }}".into();
        c.validate().unwrap();
        c.mint.name_template = "v-{{ identity }}".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("must contain {{random}}"), "{err}");
    }

    #[test]
    fn rejects_unknown_placeholders_and_bad_ttls() {
        let text = EXAMPLE.replace("{{expiration}}", "{{expires}}");
        let err = Config::parse(&text).unwrap().validate().unwrap_err();
        assert!(
            err.to_string().contains("unknown placeholder {{expires}}"),
            "{err}"
        );

        let text = EXAMPLE.replace("default_ttl = \"1h\"", "default_ttl = \"48h\"");
        assert!(Config::parse(&text).unwrap().validate().is_err());
    }

    #[test]
    fn refuses_plaintext_without_tls_unless_allowed() {
        let text = EXAMPLE.replace("allow_plaintext = true", "");
        let err = Config::parse(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("allow_plaintext"), "{err}");
    }

    #[test]
    fn the_example_config_uses_only_known_keys() {
        let c = Config::parse(include_str!("../../config/rolemint.example.toml")).unwrap();
        assert_eq!(c.mint.scram_iterations, default_scram_iterations());
        assert_eq!(c.mint.name_template, default_name_template());
        assert!(c.roles.contains_key("readonly") && c.roles.contains_key("readwrite"));
        // The issuers, static token and policy keys it shows are valid.
        crate::auth::identity::validate_config(&c.auth).unwrap();
        assert_eq!(c.auth.issuers.len(), 2);
        assert_eq!(c.auth.static_tokens.len(), 1);
        let issuers = crate::auth::policy::issuer_names(&c.auth);
        assert_eq!(issuers, ["local", "static", "corp", "k8s-prod"]);
        for t in c.roles.values() {
            crate::auth::policy::validate_template(t, &issuers).unwrap();
        }
        // A service account's name alone is never an identity: the
        // Kubernetes issuer names the namespace-qualified subject.
        assert_eq!(c.auth.issuers[1].identity_claim, "sub");
        // The example's operator token hash is that of "change-me".
        let hash = c.admin.operator_token_sha256.as_deref().unwrap();
        assert_eq!(hash, crate::control::auth::sha256_hex("change-me"));
        assert_eq!(c.admin.request_timeout, default_admin_request_timeout());
        assert_eq!(c.admin.max_body_bytes, default_admin_max_body_bytes());
        assert_eq!(c.admin.max_connections, default_admin_max_connections());
    }

    #[test]
    fn the_cluster_secret_comes_from_a_file_once_and_is_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let long = "c".repeat(MIN_CLUSTER_SECRET_BYTES);
        std::fs::write(dir.path().join("cluster.key"), format!("{long}\n")).unwrap();
        let from_file = format!("{EXAMPLE}\n[cluster]\nsecret_file = \"cluster.key\"\n");
        let mut c = Config::parse(&from_file).unwrap();
        c.resolve(dir.path()).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.cluster.secret.as_ref().map(Secret::expose),
            Some(long.as_str())
        );

        let both = format!("{from_file}secret = \"{long}\"\n");
        let err = Config::parse(&both)
            .unwrap()
            .resolve(dir.path())
            .unwrap_err();
        assert!(err.to_string().contains("only one"), "{err}");

        let short = format!("{EXAMPLE}\n[cluster]\nsecret = \"short\"\n");
        let err = Config::parse(&short).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        assert!(
            !err.to_string().contains("short\""),
            "the secret is not echoed"
        );
    }

    #[test]
    fn secrets_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.pw"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("hs.key"), "k".repeat(40)).unwrap();
        let text = EXAMPLE
            .replace(
                "admin_password = \"pw\"",
                "admin_password_file = \"admin.pw\"",
            )
            .replace(
                "hs256_secret = \"0123456789abcdef0123456789abcdef\"",
                "hs256_secret_file = \"hs.key\"",
            );
        let path = dir.path().join("rolemint.toml");
        std::fs::write(&path, &text).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.backend.admin_password.unwrap().expose(), "from-file");
        assert_eq!(c.auth.hs256_secret.unwrap().expose(), "k".repeat(40));

        let var = "ROLEMINT_TEST_ADMIN_PASSWORD_FROM_ENV";
        std::env::set_var(var, "from-env");
        let text = EXAMPLE.replace(
            "admin_password = \"pw\"",
            &format!("admin_password_env = \"{var}\""),
        );
        std::fs::write(&path, &text).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.backend.admin_password.unwrap().expose(), "from-env");

        let both = EXAMPLE.replace(
            "admin_password = \"pw\"",
            "admin_password = \"pw\"\nadmin_password_file = \"admin.pw\"",
        );
        std::fs::write(&path, &both).unwrap();
        assert!(Config::load(&path)
            .unwrap_err()
            .to_string()
            .contains("only one"));
    }

    #[test]
    fn admin_and_audit_are_off_by_default_and_checked_when_set() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert!(c.admin.listen.is_none() && c.audit.path.is_none());

        let with = |admin: &str| {
            Config::parse(&format!("{EXAMPLE}\n[admin]\n{admin}\n"))
                .unwrap()
                .validate()
        };
        with("listen = \"127.0.0.1:8200\"").unwrap();
        let err = with("listen = \"0.0.0.0:8200\"").unwrap_err();
        assert!(err.to_string().contains("plaintext"), "{err}");
        with("listen = \"0.0.0.0:8200\"\nallow_plaintext = true").unwrap();
        let err = with("operator_token_sha256 = \"abc\"").unwrap_err();
        assert!(err.to_string().contains("64 hex"), "{err}");
        with(&format!("operator_token_sha256 = \"{}\"", "a".repeat(64))).unwrap();
        assert!(with("tls_cert = \"c.pem\"").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rolemint.toml");
        std::fs::write(
            &path,
            format!("{EXAMPLE}\n[audit]\npath = \"audit.jsonl\"\n"),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.audit.path.unwrap(), dir.path().join("audit.jsonl"));
        std::fs::write(&path, format!("{EXAMPLE}\n[audit]\npath = \"stdout\"\n")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.audit.path.unwrap(), PathBuf::from("stdout"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Config::parse(EXAMPLE).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
    }
}

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
//! [`placeholder`], the one parser of `{{...}}`, and [`allow`], the one
//! parser of allow lists. It is plain data and imports none of the
//! modules built from it: it must not open sockets or build running
//! services (the verifier, the compiled policy, the admin client, TLS);
//! those are built from it, by `runtime::state::Runtime::build` and the
//! server.
//!
//! This file holds [`Config`], the whole file, and how it is loaded
//! (read, secrets resolved, paths rebased, validated); one file per table:
//! [`proxy`], [`backend`], [`auth`], [`mint`], [`templates`] (`[roles.NAME]`),
//! [`admin`], [`vault`], [`cluster`], [`quota`], [`observe`] (`[audit]`
//! and `[log]`), [`approval`] (`[access]` and a template's `approval`),
//! [`login`]; each table checks itself, and [`Config::validate`] calls
//! them in turn. Every type is re-exported here, so callers name
//! `config::RoleTemplate`, not its file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

pub mod admin;
pub mod allow;
pub mod approval;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod login;
pub mod mint;
pub mod observe;
pub mod placeholder;
pub mod proxy;
pub mod quota;
pub mod templates;
pub mod vault;

pub use admin::AdminConfig;
pub use auth::{AuthConfig, FailureRateConfig, IssuerConfig, StaticTokenConfig};
pub use backend::{BackendConfig, BackendTls, ChannelBinding, SslNegotiation};
pub use cluster::{ClusterConfig, MIN_CLUSTER_SECRET_BYTES};
pub use mint::{default_name_template, MintConfig};
pub use observe::{AuditConfig, LogConfig, LogFormat};
pub use proxy::ProxyConfig;
pub use quota::QuotaConfig;
pub use templates::{validate_template, RoleTemplate, DEFAULT_WARM_NAME_TEMPLATE, MAX_WARM_POOL};
pub use vault::VaultConfig;

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
    /// Section by section, each table by its own file's check; the first
    /// problem found is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(l) = &self.login {
            login::validate(l, &self.auth.issuers).map_err(invalid)?;
        }
        approval::validate_access(&self.access).map_err(invalid)?;
        self.proxy.validate()?;
        self.audit.validate()?;
        self.quotas.validate()?;
        self.backend.validate()?;
        self.check_durations()?;
        self.auth.validate().map_err(invalid)?;
        self.admin.validate()?;
        self.vault.validate()?;
        self.cluster.validate()?;
        self.mint.validate()?;
        self.validate_roles()
    }

    /// `[roles.NAME]`: at least one template, each valid against the
    /// configured issuers.
    fn validate_roles(&self) -> Result<(), ConfigError> {
        if self.roles.is_empty() {
            return Err(invalid("no [roles.NAME] template is defined"));
        }
        let issuers = self.auth.issuer_names();
        for (name, t) in &self.roles {
            validate_template(name, t, &issuers)?;
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

/// Rejects a malformed text and `{{x}}` placeholders other than the
/// allowed ones.
fn check_placeholders(
    what: &str,
    text: &str,
    allowed: &'static [&'static str],
) -> Result<(), ConfigError> {
    placeholder::check(text, allowed).map_err(|e| invalid(format!("{what}: {e}")))
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
    use super::admin::{
        default_admin_max_body_bytes, default_admin_max_connections, default_admin_request_timeout,
    };
    use super::mint::default_scram_iterations;
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
        c.auth.validate().unwrap();
        assert_eq!(c.auth.issuers.len(), 2);
        assert_eq!(c.auth.static_tokens.len(), 1);
        let issuers = c.auth.issuer_names();
        assert_eq!(issuers, ["local", "static", "corp", "k8s-prod"]);
        for t in c.roles.values() {
            templates::validate_policy_keys(t, &issuers).unwrap();
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

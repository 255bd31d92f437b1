//! Live reload (SIGHUP): re-read the config file, build what it describes,
//! and swap it in at once, or keep the old one.
//!
//! What changes live is what a session reads at its start, the
//! [`Runtime`]: role templates and their policy, `[auth]` (issuers, keys,
//! JWKS, static tokens), the client certificate and key, and the
//! per-connection `[proxy]` settings (`allow_plaintext`,
//! `handshake_timeout`, `max_token_bytes`). Everything is built before
//! anything is swapped, so a config that does not parse, does not
//! validate, or names a certificate or key that does not load is refused
//! with an ERROR line and counted as `rolemint_config_reloads_total
//! {result="failed"}`; the old runtime stays.
//!
//! What a reload does not change:
//! - live sessions: each keeps the runtime it took at its start until its
//!   role is minted, and its lease (template, deadline) to its end. A
//!   template removed by a reload takes no new sessions; its live sessions
//!   run to their expiry, and their roles are revoked with the removed
//!   template's `owner` and statements (the revoker keeps every template it
//!   was given, see `revoke`).
//! - settings bound at start: the listen address, `max_connections`,
//!   `kernel_splice`, the shutdown timings, `[backend]` (the admin pool),
//!   `[mint]`, `[admin]`, `[audit] path`, `[log]`, `[cluster]` and
//!   `[vault]`. When they differ, the reload logs which ones "need a
//!   restart" and applies the rest.
//!
//! The old runtime is dropped when the last session that took it has
//! minted its role; dropping its verifier stops the JWKS refresh tasks of
//! the issuers it had. Failed-authentication counts per address start over
//! with the new verifier.
//!
//! Every reload, successful or not, reopens the audit file: SIGHUP is also
//! how log rotation tells rolemint the file moved.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::runtime::state::{Runtime, Shared};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read, parsed or validated.
    #[error("the new config is invalid: {0}")]
    Config(#[from] ConfigError),
    /// A certificate, key, JWKS file or static token did not load.
    #[error("the new config cannot be applied: {0:#}")]
    Build(anyhow::Error),
}

/// What a successful reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Templates now configured that were not before.
    pub added: Vec<String>,
    /// Templates no longer configured (their live sessions run on).
    pub removed: Vec<String>,
    /// Sections that differ but apply only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Reloads the config (and reopens the audit log) on every SIGHUP, for
/// `serve` and `dev` alike; each reload logs and counts its own outcome.
/// `hangups` is made by the caller before it reports ready: SIGHUP's
/// default action ends the process.
pub async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    shared: Arc<Shared>,
    path: std::path::PathBuf,
) {
    while hangups.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let _ = reload(&shared, &path).await;
    }
}

/// Reloads from `path` and reopens the audit log; logs and counts the
/// outcome. The old runtime stays when the new config is refused.
pub async fn reload(shared: &Shared, path: &Path) -> Result<Reloaded, ReloadError> {
    let outcome = swap(shared, path);
    crate::observe::metrics::config_reload(outcome.is_ok());
    match &outcome {
        Ok(r) => {
            tracing::info!(
                added = ?r.added, removed = ?r.removed,
                "config reloaded: templates, policy, issuers, static tokens and certificates"
            );
            if !r.needs_restart.is_empty() {
                tracing::warn!(
                    sections = ?r.needs_restart,
                    "config reload: these settings changed but need a restart; the running \
                     values stay"
                );
            }
        }
        Err(e) => tracing::error!("config reload refused, the running config stays: {e}"),
    }
    match shared.audit.reopen().await {
        Ok(()) => tracing::debug!("audit log reopened"),
        Err(e) => tracing::error!("reopening the audit log: {e}"),
    }
    outcome
}

/// Builds the new runtime and swaps it in; nothing changes on error.
fn swap(shared: &Shared, path: &Path) -> Result<Reloaded, ReloadError> {
    let config = Config::load(path)?;
    let built = Runtime::build(config).map_err(ReloadError::Build)?;
    // With the templates written through the API, as the running one has.
    let runtime = super::templates::merged(&built, &shared.store.snapshot());
    drop(built);
    let old = shared.runtime();
    let reloaded = Reloaded {
        added: template_difference(&runtime.config, &old.config),
        removed: template_difference(&old.config, &runtime.config),
        needs_restart: needs_restart(&shared.config, &runtime.config),
    };
    // The revoker learns the new templates before any session can mint
    // from one of them.
    shared.revoker.update_templates(&runtime.config.roles);
    runtime.start();
    shared.runtime.store(Arc::new(runtime));
    // A store change merged meanwhile into the old runtime is merged again.
    super::templates::apply(shared);
    Ok(reloaded)
}

/// Template names in `a` and not in `b`.
fn template_difference(a: &Config, b: &Config) -> Vec<String> {
    a.roles
        .keys()
        .filter(|name| !b.roles.contains_key(*name))
        .cloned()
        .collect()
}

/// The settings bound at start that `new` changes. Compared through their
/// Debug form: every config type has one, and secrets print as `***` in
/// it, so a changed admin password alone is not noticed (it needs a
/// restart too, as `rolemint check` and the README say).
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (a, b) = (&running.proxy, &new.proxy);
    let mut changed = Vec::new();
    let checks: [(&'static str, bool); 11] = [
        ("proxy.listen", a.listen != b.listen),
        ("proxy.kernel_splice", a.kernel_splice != b.kernel_splice),
        (
            "proxy.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "proxy.shutdown_grace / shutdown_revoke_timeout",
            a.shutdown_grace != b.shutdown_grace
                || a.shutdown_revoke_timeout != b.shutdown_revoke_timeout,
        ),
        ("backend", differs(&running.backend, &new.backend)),
        ("mint", differs(&running.mint, &new.mint)),
        ("admin", differs(&running.admin, &new.admin)),
        ("audit", differs(&running.audit, &new.audit)),
        ("log", differs(&running.log, &new.log)),
        // The cancel keys and the Vault door are built once, at start.
        ("cluster", differs(&running.cluster, &new.cluster)),
        ("vault", differs(&running.vault, &new.vault)),
    ];
    for (name, differs) in checks {
        if differs {
            changed.push(name);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
allow_plaintext = true

[backend]
host = "127.0.0.1"
port = 5432
admin_user = "rolemint_admin"
admin_password = "x"

[auth]
hs256_secret = "0123456789abcdef0123456789abcdef"

[roles.readonly]
databases = ["appdb"]
default_ttl = "1h"
max_ttl = "1h"
creation_statements = ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text).expect("test config parses")
    }

    #[test]
    fn live_settings_do_not_need_a_restart() {
        let running = parse(BASE);
        let new = parse(&BASE.replace("readonly", "reporting"));
        assert!(needs_restart(&running, &new).is_empty());
        assert_eq!(template_difference(&new, &running), ["reporting"]);
        assert_eq!(template_difference(&running, &new), ["readonly"]);
    }

    #[test]
    fn bound_settings_are_named() {
        let running = parse(BASE);
        let new = parse(
            &BASE
                .replace("127.0.0.1:6432", "127.0.0.1:6433")
                .replace("port = 5432", "port = 5433"),
        );
        assert_eq!(needs_restart(&running, &new), ["proxy.listen", "backend"]);
        let new = parse(&format!(
            "{BASE}\n[cluster]\nsecret = \"{}\"\n\n[vault]\nenabled = false\n",
            "s".repeat(32)
        ));
        assert_eq!(needs_restart(&running, &new), ["cluster", "vault"]);
    }
}

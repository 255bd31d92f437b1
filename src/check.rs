//! `rolemint check`: everything `serve` would need, verified up front, with
//! the exact fix for what is missing.
//!
//! The config has been loaded and validated by the time this runs. Then:
//! TLS files, the token keys and every issuer's JWKS (fetched once), the
//! `[admin]` and `[audit]` sections, the admin connection, the admin's privileges,
//! the marker role (created if missing, as `serve` would), and for every
//! template and database a dry-run mint: the template's statements, the
//! marker grant and the lease comment run exactly as for a session, and are
//! rolled back; each template `owner` must be a role the admin may
//! `REASSIGN OWNED` to (a warning otherwise). A template that would fail for every client fails here.

use std::time::SystemTime;

use crate::config::Config;
use crate::identity::{Identity, Verifier};
use crate::mint::{MintRequest, Minter};

/// What went wrong, one line each.
#[derive(Debug, Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("ok    {what}");
    }
    fn warn(&self, what: &str) {
        println!("warn  {what}");
    }
    fn fail(&mut self, what: String) {
        println!("FAIL  {what}");
        self.failures.push(what);
    }
}

/// Runs every check; an error when any failed.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut report = Report::default();
    report.ok(&format!("config: {} role template(s)", config.roles.len()));

    match (&config.proxy.tls_cert, &config.proxy.tls_key) {
        (Some(cert), Some(key)) => match crate::tls::server_config(cert, key) {
            Ok(_) => report.ok(&format!("client TLS: {}", cert.display())),
            Err(e) => report.fail(format!("client TLS: {e}")),
        },
        _ => report.warn(
            "client TLS: not configured; clients connect in plaintext (allow_plaintext = true)",
        ),
    }
    if let Err(e) = crate::tls::backend_client_config(&config.backend) {
        report.fail(format!("backend TLS: {e}"));
    }
    check_admin(config, &mut report);
    check_audit(config, &mut report);
    check_issuers(config, &mut report).await;

    let minter = match Minter::new(config) {
        Ok(m) => m,
        Err(e) => {
            report.fail(format!("mint settings: {e}"));
            return finish(report);
        }
    };
    let b = &config.backend;
    let facts = match minter.admin_facts().await {
        Ok(facts) => facts,
        Err(e) => {
            report.fail(format!(
                "backend: cannot connect to {}:{} database \"{}\" as \"{}\": {e}",
                b.host, b.port, b.admin_database, b.admin_user
            ));
            return finish(report);
        }
    };
    report.ok(&format!(
        "backend: {}:{} PostgreSQL {} as \"{}\"",
        b.host, b.port, facts.server_version, b.admin_user
    ));
    if facts.superuser {
        report.warn("admin is a superuser: it works, but CREATEROLE plus pg_signal_backend is enough and safer");
    } else if facts.create_role {
        report.ok("admin has CREATEROLE");
    } else {
        report.fail(format!(
            "admin lacks CREATEROLE: ALTER ROLE \"{}\" CREATEROLE;",
            b.admin_user
        ));
    }
    if facts.superuser || facts.signal_backend {
        report.ok("admin may end sessions (pg_signal_backend)");
    } else {
        report.fail(format!(
            "admin cannot end a lease's sessions: GRANT pg_signal_backend TO \"{}\";",
            b.admin_user
        ));
    }
    match minter.prepare().await {
        Ok(()) if facts.marker_exists => report.ok("marker role rolemint_managed exists"),
        Ok(()) => report.ok("marker role rolemint_managed created"),
        Err(e) => report.fail(format!("marker role rolemint_managed: {e}")),
    }

    check_owners(config, &minter, &mut report).await;

    let identity = Identity {
        subject: "rolemint-check".into(),
        groups: Vec::new(),
        expires_at: SystemTime::now(),
        issuer: "check".into(),
    };
    for (name, template) in &config.roles {
        for database in &template.databases {
            let request = MintRequest {
                identity: &identity,
                template_name: name,
                template,
                database,
                ttl: template.default_ttl,
                lease_id: "check",
            };
            match minter.dry_run(&request).await {
                Ok(()) => report.ok(&format!(
                    "template {name} in database {database}: dry-run mint"
                )),
                Err(e) => report.fail(format!("template {name} in database {database}: {e}")),
            }
        }
    }
    finish(report)
}

/// `[auth]`: the keys load, and each issuer's JWKS URL answers with a
/// usable key set, tried once (a failing URL is a failure: sessions of that
/// issuer would all be refused until it answers).
async fn check_issuers(config: &Config, report: &mut Report) {
    let verifier = match Verifier::from_config(&config.auth) {
        Ok(v) => v,
        Err(e) => return report.fail(format!("token verification: {e}")),
    };
    report.ok("token verification keys load");
    for (name, result) in verifier.probe_issuers().await {
        match result {
            Ok(what) => report.ok(&format!("issuer {name}: {what}")),
            Err(e) => report.fail(format!("issuer {name}: {e}")),
        }
    }
}

/// Every template `owner` exists and the admin may `REASSIGN OWNED` to it;
/// otherwise a revocation of a role that owns objects fails and retries
/// forever. A warning, not a failure: roles that own nothing still go.
async fn check_owners(config: &Config, minter: &Minter, report: &mut Report) {
    let admin = &config.backend.admin_user;
    for (name, template) in &config.roles {
        let Some(owner) = &template.owner else {
            continue;
        };
        match minter.may_reassign_to(owner).await {
            Ok(Some(true)) => report.ok(&format!("template {name}: owner \"{owner}\"")),
            Ok(Some(false)) => report.warn(&format!(
                "template {name}: the admin cannot REASSIGN OWNED to owner \"{owner}\": \
                 GRANT \"{owner}\" TO \"{admin}\";"
            )),
            Ok(None) => report.warn(&format!(
                "template {name}: owner \"{owner}\" does not exist; revoking a role that owns \
                 objects will fail until it does"
            )),
            Err(e) => report.warn(&format!("template {name}: owner \"{owner}\": {e}")),
        }
    }
}

/// `[admin]`: the address (parsed and validated with the config), its TLS
/// files, and whether operators can authenticate.
fn check_admin(config: &Config, report: &mut Report) {
    let a = &config.admin;
    let Some(listen) = a.listen else {
        report.warn(
            "admin listener: off (no [admin] listen): no /healthz, /readyz, /metrics or lease API",
        );
        return;
    };
    match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => match crate::tls::server_config(cert, key) {
            Ok(_) => report.ok(&format!("admin listener: https://{listen}")),
            Err(e) => report.fail(format!("admin listener TLS: {e}")),
        },
        _ if listen.ip().is_loopback() => {
            report.ok(&format!("admin listener: http://{listen} (loopback)"))
        }
        _ => report.warn(&format!(
            "admin listener: http://{listen} in plaintext (allow_plaintext = true): the operator token crosses the network unencrypted"
        )),
    }
    match &a.operator_token_sha256 {
        Some(hash) if crate::admin::auth::OperatorToken::from_hex(hash).is_some() => {
            report.ok("admin operator token: SHA-256 configured")
        }
        Some(_) => report.fail(
            "admin.operator_token_sha256 is not 64 hex digits (`rolemint token --operator` prints one)"
                .into(),
        ),
        None => report.warn(
            "admin: no operator_token_sha256: the lease API answers 403 to everyone",
        ),
    }
}

/// `[audit]`: the file can be appended to (or its directory can hold it).
fn check_audit(config: &Config, report: &mut Report) {
    let Some(path) = &config.audit.path else {
        report.warn("audit log: off (no [audit] path)");
        return;
    };
    if path.as_os_str() == "stdout" {
        report.ok("audit log: stdout");
        return;
    }
    match audit_writable(path) {
        Ok(()) => report.ok(&format!("audit log: {} is writable", path.display())),
        Err(e) => report.fail(format!("audit log: {}: {e}", path.display())),
    }
}

/// Whether `path` exists and opens for appending, or its directory lets
/// rolemint create it; nothing is created or written here.
fn audit_writable(path: &std::path::Path) -> Result<(), String> {
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot append: {e}"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("cannot create it in {}: {e}", dir.display()))
}

fn finish(report: Report) -> anyhow::Result<()> {
    match report.failures.len() {
        0 => {
            println!("all checks passed");
            Ok(())
        }
        n => anyhow::bail!("{n} check(s) failed"),
    }
}

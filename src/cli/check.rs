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

use std::path::Path;
use std::time::SystemTime;

use crate::auth::identity::{Identity, Verifier};
use crate::config::Config;
use postgres_protocol::escape::escape_identifier;

use crate::pg::{
    AdminClient, AdminFacts, HbaRule, MintError, MintRequest, ADMIN_OPTION_NEEDED_FROM,
};

/// The marker role every minted role is a member of, as pg_hba.conf names
/// its members.
const MANAGED_GROUP: &str = "+rolemint_managed";
/// Credential roles of the Vault-compatible door: members of both groups,
/// they log in directly, so a line for them may come first.
const DIRECT_GROUP: &str = "+rolemint_direct";

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

/// Loads the config at `path` and runs every check. A secret file that
/// cannot be read does not stop the list: each is a failure, the checks
/// that need no backend still run, and the backend is left alone (its
/// password may be the missing one).
pub async fn run_file(path: &Path) -> anyhow::Result<()> {
    let (config, problems) = Config::load_checking(path)?;
    if problems.is_empty() {
        return run(&config).await;
    }
    let mut report = Report::default();
    for problem in problems {
        report.fail(format!("config: {problem}"));
    }
    check_local(&config, &mut report).await;
    finish(report)
}

/// Runs every check on a loaded config; an error when any failed.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut report = Report::default();
    report.ok(&format!("config: {} role template(s)", config.roles.len()));
    check_local(config, &mut report).await;
    let admin_client = match AdminClient::new(config) {
        Ok(m) => m,
        Err(e) => {
            report.fail(format!("mint settings: {e}"));
            return finish(report);
        }
    };
    if let Some(facts) = check_admin_role(config, &admin_client, &mut report).await {
        check_hba(&admin_client, &mut report).await;
        check_owners(config, &admin_client, &facts, &mut report).await;
        check_templates(config, &admin_client, &facts, &mut report).await;
        match crate::store::preflight(&admin_client).await {
            Ok(what) => report.ok(&format!("store: {what}")),
            Err(e) => report.fail(format!("store: {e}")),
        }
    }
    finish(report)
}

/// What needs no backend: certificates, `[admin]`, `[audit]`, `[cluster]`,
/// the backend's TLS mode, the issuers' keys.
async fn check_local(config: &Config, report: &mut Report) {
    match (&config.proxy.tls_cert, &config.proxy.tls_key) {
        (Some(cert), Some(key)) => match crate::tls::server_config(cert, key) {
            Ok(_) => report.ok(&format!("client TLS: {}", cert.display())),
            Err(e) => report.fail(format!("client TLS: {e}")),
        },
        _ => report.warn(
            "client TLS: not configured; clients connect in plaintext (allow_plaintext = true)",
        ),
    }
    match crate::tls::backend_client_config(&config.backend) {
        Err(e) => report.fail(format!("backend TLS: {e}")),
        Ok(_) => report.ok(&backend_tls_summary(&config.backend)),
    }
    check_admin(config, report);
    check_audit(config, report);
    check_cluster(config, report);
    if let Some(warning) = crate::tls::backend_tls_warning(&config.backend) {
        report.warn(&warning);
    }
    check_issuers(config, report).await;
}

/// The backend TLS mode in force, and where it came from.
fn backend_tls_summary(backend: &crate::config::BackendConfig) -> String {
    use crate::config::BackendTls;
    let how = match backend.tls() {
        BackendTls::Disable => "disabled".to_owned(),
        BackendTls::Require => "required, certificate not verified".to_owned(),
        BackendTls::VerifyFull => match &backend.tls_ca_file {
            Some(ca) => format!("verify-full against {}", ca.display()),
            None => "verify-full".to_owned(),
        },
    };
    let origin = if backend.tls_setting.is_some() {
        "as set"
    } else {
        "by default for this host"
    };
    let binding = match (backend.tls(), backend.channel_binding) {
        (BackendTls::Disable, _) => String::new(),
        (_, mode) => format!("; channel_binding = {mode:?}").to_lowercase(),
    };
    format!("backend TLS: {how} ({origin}){binding}")
}

/// The admin connection, its privileges and the marker role; `None` when
/// the backend cannot be reached (nothing further can be checked).
async fn check_admin_role(
    config: &Config,
    admin_client: &AdminClient,
    report: &mut Report,
) -> Option<AdminFacts> {
    let b = &config.backend;
    let facts = match admin_client.admin_facts().await {
        Ok(facts) => facts,
        Err(e) => {
            report.fail(format!(
                "backend: cannot connect to {}:{} database \"{}\" as \"{}\": {e}",
                b.host, b.port, b.admin_database, b.admin_user
            ));
            return None;
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
    check_marker_admin_option(&facts, &b.admin_user, report);
    match admin_client.prepare().await {
        Ok(()) if facts.marker_exists => report.ok("marker role rolemint_managed exists"),
        Ok(()) => report.ok("marker role rolemint_managed created"),
        Err(e) => report.fail(format!("marker role rolemint_managed: {e}")),
    }
    Some(facts)
}

/// PostgreSQL 16+: granting a marker role to a minted role needs ADMIN
/// OPTION on it. The admin has it on markers it created itself (`serve`
/// creates them); a marker a superuser created beforehand must be granted.
/// Before 16, CREATEROLE alone could grant it.
fn check_marker_admin_option(facts: &AdminFacts, admin: &str, report: &mut Report) {
    if facts.superuser || facts.server_version_num < ADMIN_OPTION_NEEDED_FROM {
        return;
    }
    for marker in &facts.markers_without_admin_option {
        report.fail(format!(
            "admin cannot grant the marker role \"{marker}\" (PostgreSQL 16+ needs ADMIN OPTION \
             on it); as a superuser: GRANT {} TO {} WITH ADMIN OPTION;",
            escape_identifier(marker),
            escape_identifier(admin)
        ));
    }
}

/// The statement that lets the admin grant the role a template's `GRANT`
/// was refused on: PostgreSQL 16+ refuses with 42501 "permission denied to
/// grant role "x"" when the admin lacks ADMIN OPTION on it. Empty for any
/// other error.
fn grant_fix(error: &MintError, facts: &AdminFacts, admin: &str) -> String {
    let MintError::Sql {
        sqlstate, message, ..
    } = error
    else {
        return String::new();
    };
    let role = message
        .strip_prefix("permission denied to grant role \"")
        .and_then(|rest| rest.strip_suffix('"'));
    match role {
        Some(role)
            if sqlstate == "42501" && facts.server_version_num >= ADMIN_OPTION_NEEDED_FROM =>
        {
            format!(
                "; as a superuser (or a holder of its ADMIN OPTION): GRANT {} TO {} WITH ADMIN OPTION;",
                escape_identifier(role),
                escape_identifier(admin)
            )
        }
        _ => String::new(),
    }
}

/// A dry-run mint of every template in every database it lists.
async fn check_templates(
    config: &Config,
    admin_client: &AdminClient,
    facts: &AdminFacts,
    report: &mut Report,
) {
    let admin = &config.backend.admin_user;
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
            match admin_client.dry_run(&request).await {
                Ok(()) => report.ok(&format!(
                    "template {name} in database {database}: dry-run mint"
                )),
                Err(e) => report.fail(format!(
                    "template {name} in database {database}: {e}{}",
                    grant_fix(&e, facts, admin)
                )),
            }
        }
    }
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
async fn check_owners(
    config: &Config,
    admin_client: &AdminClient,
    facts: &AdminFacts,
    report: &mut Report,
) {
    let admin = &config.backend.admin_user;
    // PostgreSQL 16+: REASSIGN needs the owner's privileges through an
    // INHERIT membership; a membership granted WITH INHERIT FALSE (or to a
    // NOINHERIT admin) is not enough, and a plain re-GRANT does not change it.
    let inherit = if facts.server_version_num >= ADMIN_OPTION_NEEDED_FROM {
        " WITH INHERIT TRUE"
    } else {
        ""
    };
    for (name, template) in &config.roles {
        let Some(owner) = &template.owner else {
            continue;
        };
        match admin_client.may_reassign_to(owner).await {
            Ok(Some(true)) => report.ok(&format!("template {name}: owner \"{owner}\"")),
            Ok(Some(false)) => report.warn(&format!(
                "template {name}: the admin cannot REASSIGN OWNED to owner \"{owner}\": \
                 GRANT {} TO {}{inherit};",
                escape_identifier(owner),
                escape_identifier(admin)
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
        Some(hash) if crate::control::auth::OperatorToken::from_hex(hash).is_some() => {
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
/// `[cluster]`: whether a CancelRequest that reaches another instance than
/// its session's can be verified there (the secret's length is checked with
/// the config).
fn check_cluster(config: &Config, report: &mut Report) {
    if config.cluster.secret.is_some() {
        report.ok(
            "cluster secret: set; every instance sharing it verifies any instance's cancel keys",
        );
    } else {
        report.warn(
            "cluster: no [cluster] secret: a cancel request works only on the instance that holds \
             the session (fine for one instance; behind a load balancer, set the same secret on all)",
        );
    }
}

fn check_audit(config: &Config, report: &mut Report) {
    check_statement_audit(config, report);
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

/// Templates whose statements are audited: their sessions never use the
/// kernel splice, and their lines need an audit log to go to.
fn check_statement_audit(config: &Config, report: &mut Report) {
    for (name, template) in &config.roles {
        if !template.audit_queries {
            continue;
        }
        if config.audit.path.is_none() {
            report.fail(format!(
                "template {name}: audit_queries = true, but there is no [audit] path to write the statements to"
            ));
        } else if config.proxy.kernel_splice {
            report.ok(&format!(
                "template {name}: statements audited; its sessions use the user-space relay, not the kernel splice"
            ));
        } else {
            report.ok(&format!("template {name}: statements audited"));
        }
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

/// pg_hba.conf must let members of rolemint_managed log in only from
/// rolemint's address: otherwise a session that gave its role a password
/// (`ALTER ROLE CURRENT_USER PASSWORD ...`) can log in around the proxy
/// until its VALID UNTIL.
async fn check_hba(admin_client: &AdminClient, report: &mut Report) {
    match admin_client.hba_rules().await {
        Ok((Some(address), rules)) => match hba_confines_managed_roles(&rules, &address) {
            Ok(()) => report.ok(&format!(
                "pg_hba.conf: members of rolemint_managed log in only from {address}"
            )),
            Err(problem) => report.fail(format!(
                "pg_hba.conf: {problem}. Minted roles must log in only from rolemint's address; \
                 put these lines before any other that matches them:\n\
                 \thost all {DIRECT_GROUP} all scram-sha-256\n\
                 \thost all {MANAGED_GROUP} {address}/32 scram-sha-256\n\
                 \thost all {MANAGED_GROUP} all reject"
            )),
        },
        Ok((None, _)) => {
            report.fail("pg_hba.conf: no rules readable (pg_hba_file_rules is empty)".to_owned())
        }
        Err(e) => report.fail(format!(
            "pg_hba.conf: cannot read pg_hba_file_rules ({e}); as a superuser run \
             GRANT SELECT ON pg_catalog.pg_hba_file_rules TO <admin>; \
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO <admin>;"
        )),
    }
}

/// Walks the rules as PostgreSQL would for a minted role (first match
/// wins): every line that can match it and lets it in must be for exactly
/// `rolemint_addr`, until a `reject` for every address ends the search.
/// Lines naming the role by name cannot match a minted role (its name is
/// fresh); lines for `+rolemint_direct` only match credential roles.
pub fn hba_confines_managed_roles(rules: &[HbaRule], rolemint_addr: &str) -> Result<(), String> {
    let mut local_closed = false;
    for rule in rules {
        let matches = rule.users.iter().any(|u| u == "all" || u == MANAGED_GROUP);
        if !matches || rule.users.iter().any(|u| u == DIRECT_GROUP) {
            continue;
        }
        let line = rule.line;
        let everywhere = rule.address.as_deref() == Some("all");
        match (rule.kind.as_str(), rule.method.as_str()) {
            ("local", "reject") => local_closed = true,
            ("local", _) if local_closed => {}
            ("local", method) => {
                return Err(format!(
                    "line {line} lets them log in over the Unix socket ({method})"
                ))
            }
            (_, "reject") if everywhere => return Ok(()),
            (_, "reject") => {}
            (_, _) if is_exactly(rule, rolemint_addr) => {}
            (_, method) => {
                let from = rule.address.as_deref().unwrap_or("anywhere");
                return Err(format!(
                    "line {line} lets them log in from {from} ({method})"
                ));
            }
        }
    }
    // No line matches the rest: PostgreSQL refuses them.
    Ok(())
}

/// The line is for one address, and it is `addr`.
fn is_exactly(rule: &HbaRule, addr: &str) -> bool {
    let single = matches!(
        rule.netmask.as_deref(),
        Some("255.255.255.255") | Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    );
    single && rule.address.as_deref() == Some(addr)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: u32, kind: &str, users: &str, address: Option<&str>, method: &str) -> HbaRule {
        let netmask = match address {
            Some(a) if a.contains(':') => Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some("all") | None => None,
            Some(_) => Some("255.255.255.255"),
        };
        HbaRule {
            line,
            kind: kind.into(),
            users: users.split(',').map(str::to_owned).collect(),
            address: address.map(str::to_owned),
            netmask: netmask.map(str::to_owned),
            method: method.into(),
        }
    }

    fn recommended() -> Vec<HbaRule> {
        vec![
            rule(1, "local", "+rolemint_managed", None, "reject"),
            rule(2, "local", "all", None, "scram-sha-256"),
            rule(3, "host", "+rolemint_direct", Some("all"), "scram-sha-256"),
            rule(
                4,
                "host",
                "+rolemint_managed",
                Some("10.0.0.5"),
                "scram-sha-256",
            ),
            rule(5, "host", "+rolemint_managed", Some("all"), "reject"),
            rule(6, "host", "all", Some("all"), "scram-sha-256"),
        ]
    }

    #[test]
    fn the_recommended_lines_pass() {
        assert_eq!(
            hba_confines_managed_roles(&recommended(), "10.0.0.5"),
            Ok(())
        );
    }

    #[test]
    fn a_wider_line_before_the_reject_fails() {
        let mut rules = recommended();
        rules.insert(0, rule(0, "host", "all", Some("all"), "scram-sha-256"));
        let e = hba_confines_managed_roles(&rules, "10.0.0.5").unwrap_err();
        assert!(e.contains("line 0"), "{e}");
        // The same lines, seen from another rolemint address.
        let e = hba_confines_managed_roles(&recommended(), "10.0.0.6").unwrap_err();
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn no_reject_line_fails_when_a_later_line_lets_them_in() {
        let rules = vec![
            rule(
                1,
                "host",
                "+rolemint_managed",
                Some("10.0.0.5"),
                "scram-sha-256",
            ),
            rule(2, "host", "all", Some("all"), "scram-sha-256"),
        ];
        assert!(hba_confines_managed_roles(&rules, "10.0.0.5").is_err());
        let unix = vec![rule(1, "local", "all", None, "peer")];
        assert!(hba_confines_managed_roles(&unix, "10.0.0.5").is_err());
    }
}

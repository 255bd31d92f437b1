//! `rolemint leases ...` and `rolemint health`: clients of the admin API.
//!
//! The address comes from `--addr`, else `ROLEMINT_ADDR`, else the
//! `[admin]` table of `--config` (only that table is read: an operator's
//! machine need not hold the proxy's secrets); the token from `--token` or
//! `ROLEMINT_TOKEN`. Answers print as a table, or as the server's JSON with
//! `--json`. Any error answer exits non-zero with the server's message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Longest wait for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the admin API is and how to reach it. Global, so that they go
/// before or after the subcommand (`leases list --addr ...`).
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The admin API, e.g. http://127.0.0.1:8200.
    #[arg(long, env = "ROLEMINT_ADDR", global = true)]
    pub addr: Option<String>,
    /// A rolemint config whose `[admin] listen` gives the address.
    #[arg(long, short, env = "ROLEMINT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PEM CA certificate to verify an HTTPS admin listener with.
    #[arg(long, env = "ROLEMINT_CACERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LeasesArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// An operator token (every lease), or a workload's token from the
    /// Vault-compatible login (its own leases only).
    #[arg(
        long,
        env = "ROLEMINT_TOKEN",
        hide_env_values = true,
        global = true,
        value_parser = crate::secret::Secret::parse
    )]
    pub token: Option<crate::secret::Secret>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: LeasesCommand,
}

#[derive(Debug, Subcommand)]
pub enum LeasesCommand {
    /// List live leases, optionally filtered.
    List {
        /// Only the leases of this identity (the token's `sub`).
        #[arg(long)]
        identity: Option<String>,
        /// Only the leases of identities this issuer vouched for (`local`,
        /// `static` or an [[auth.issuers]] name).
        #[arg(long)]
        issuer: Option<String>,
        /// Only the leases minted from this role template.
        #[arg(long)]
        template: Option<String>,
        /// Only the leases in this database.
        #[arg(long)]
        database: Option<String>,
    },
    /// Show one lease.
    Lookup {
        /// The lease id, e.g. database/sessions/readonly/<random>.
        lease_id: String,
    },
    /// Extend a lease (capped at its template's max_ttl from issue).
    Renew {
        /// The lease id, e.g. database/sessions/readonly/<random>.
        lease_id: String,
        /// Seconds or a duration such as "30m"; default: the template's default_ttl.
        #[arg(long)]
        increment: Option<String>,
    },
    /// End a lease now: its session gets 57P01, its role is dropped.
    Revoke {
        /// The lease id, e.g. database/sessions/readonly/<random>.
        lease_id: String,
        /// Return once the revocation has started, not when it is done.
        #[arg(long)]
        no_wait: bool,
    },
    /// End every lease whose id starts with PREFIX.
    RevokePrefix {
        /// A lease id prefix, e.g. database/sessions/readonly/.
        prefix: String,
    },
    /// End every lease of one identity.
    RevokeIdentity {
        /// The identity (the token's `sub`).
        identity: String,
        /// The issuer that vouched for it: a principal is (issuer,
        /// identity). Without it, that identity of every issuer.
        #[arg(long)]
        issuer: Option<String>,
    },
}

/// Runs `rolemint leases ...`.
pub async fn run(args: LeasesArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .as_ref()
        .map(crate::secret::Secret::expose)
        .filter(|t| !t.is_empty())
        .context("no operator token: pass --token or set ROLEMINT_TOKEN")?;
    let api = Api {
        http: http_client(&args.api, false)?,
        base: base_url(&args.api)?,
        token: token.to_owned(),
    };
    if let LeasesCommand::Revoke { lease_id, .. } = &args.command {
        // The API answers 204 for a lease that does not exist, as Vault
        // does; an operator who mistyped must not believe access was cut.
        if !api.lease_exists(lease_id).await? {
            bail!("no such lease: {lease_id} (nothing was revoked)");
        }
    }
    let call = request(&args.command);
    let body = match args.command {
        LeasesCommand::List { .. } => api.call_every_page(call).await?,
        _ => api.call(call).await?,
    };
    for w in body["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print!("{}", summary(&args.command, &body));
    }
    Ok(())
}

/// One API call: method, path, query, JSON body.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

/// The API call a subcommand makes.
fn request(command: &LeasesCommand) -> Call {
    let put = |path: &str, body: Value| Call {
        method: Method::PUT,
        path: path.to_owned(),
        query: Vec::new(),
        body: Some(body),
    };
    match command {
        LeasesCommand::List {
            identity,
            issuer,
            template,
            database,
        } => Call {
            method: Method::GET,
            path: "/v1/rolemint/leases".into(),
            query: [
                ("identity", identity),
                ("issuer", issuer),
                ("template", template),
                ("database", database),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.clone()?)))
            .collect(),
            body: None,
        },
        LeasesCommand::Lookup { lease_id } => {
            put("/v1/sys/leases/lookup", json!({ "lease_id": lease_id }))
        }
        LeasesCommand::Renew {
            lease_id,
            increment,
        } => put(
            "/v1/sys/leases/renew",
            json!({ "lease_id": lease_id, "increment": increment }),
        ),
        LeasesCommand::Revoke { lease_id, no_wait } => put(
            "/v1/sys/leases/revoke",
            json!({ "lease_id": lease_id, "sync": !no_wait }),
        ),
        LeasesCommand::RevokePrefix { prefix } => put(
            &format!(
                "/v1/sys/leases/revoke-prefix/{}",
                prefix.trim_start_matches('/')
            ),
            json!({}),
        ),
        LeasesCommand::RevokeIdentity { identity, issuer } => put(
            "/v1/rolemint/leases/revoke",
            json!({ "identity": identity, "issuer": issuer }),
        ),
    }
}

/// What a subcommand prints for a successful answer.
fn summary(command: &LeasesCommand, body: &Value) -> String {
    match command {
        LeasesCommand::List { .. } => lease_table(&body["data"]["leases"]),
        LeasesCommand::Lookup { .. } => lease_details(&body["data"]),
        LeasesCommand::Renew { lease_id, .. } => {
            format!("renewed {lease_id} for {}s\n", body["lease_duration"])
        }
        LeasesCommand::Revoke {
            lease_id,
            no_wait: true,
        } => format!("revocation started: {lease_id}\n"),
        LeasesCommand::Revoke { lease_id, .. } => format!("revoked: {lease_id}\n"),
        LeasesCommand::RevokePrefix { prefix } => {
            format!("revoked every lease under {prefix}\n")
        }
        LeasesCommand::RevokeIdentity { identity, issuer } => {
            let who = match issuer {
                Some(issuer) => format!("{issuer}:{identity}"),
                None => identity.clone(),
            };
            format!("revoked {} lease(s) of {who}\n", body["revoked"])
        }
    }
}

/// Runs `rolemint health`: exit 0 when `/healthz` (or `/readyz`) is 200.
pub async fn health(api: ApiArgs, ready: bool, insecure: bool) -> anyhow::Result<()> {
    let base = base_url(&api)?;
    let path = if ready { "/readyz" } else { "/healthz" };
    let resp = http_client(&api, insecure)?
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("{base}{path}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != StatusCode::OK {
        bail!("{path}: {status}: {}", error_text(&body));
    }
    println!("{path}: ok");
    Ok(())
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, call: Call) -> anyhow::Result<Value> {
        let mut url = reqwest::Url::parse(&format!("{}{}", self.base, call.path))
            .with_context(|| format!("{}: not a URL", self.base))?;
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let mut req = self.http.request(call.method, url);
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        self.finish(req).await
    }

    /// Whether a lookup finds `lease_id` (400 is the API's "invalid lease").
    async fn lease_exists(&self, lease_id: &str) -> anyhow::Result<bool> {
        let url = format!("{}/v1/sys/leases/lookup", self.base);
        let req = self.http.put(url).json(&json!({ "lease_id": lease_id }));
        match self.finish(req).await {
            Ok(_) => Ok(true),
            Err(e)
                if e.downcast_ref::<Refused>()
                    .is_some_and(|r| r.status == StatusCode::BAD_REQUEST) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A listing of `/v1/rolemint/leases`, every page of it (following
    /// `next`), as one answer.
    async fn call_every_page(&self, call: Call) -> anyhow::Result<Value> {
        let mut leases = Vec::new();
        let mut page = call.clone();
        loop {
            let body = self.call(page.clone()).await?;
            if let Some(more) = body["data"]["leases"].as_array() {
                leases.extend(more.iter().cloned());
            }
            let Some(next) = body["data"]["next"].as_str() else {
                return Ok(json!({ "data": { "leases": leases } }));
            };
            page = call.clone();
            page.query.push(("after", next.to_owned()));
        }
    }

    async fn finish(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            return Err(Refused {
                status,
                message: error_text(&body),
            }
            .into());
        }
        Ok(body)
    }
}

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
struct Refused {
    status: StatusCode,
    message: String,
}

/// The `errors` of an answer, joined; the body itself when it has none.
fn error_text(body: &Value) -> String {
    match body["errors"].as_array() {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("; "),
        Some(_) => "no such path or nothing listed".into(),
        None => body.to_string(),
    }
}

fn lease_table(leases: &Value) -> String {
    let rows: Vec<[String; 6]> = leases
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let s = |k: &str| match &l[k] {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                v => v.to_string(),
            };
            // The principal: ISSUER:IDENTITY (a lease minted before leases
            // recorded the issuer shows the identity alone).
            let principal = match l["issuer"].as_str() {
                Some(issuer) if !issuer.is_empty() => format!("{issuer}:{}", s("identity")),
                _ => s("identity"),
            };
            [
                s("id"),
                principal,
                s("template"),
                s("database"),
                format!("{}s", s("ttl")),
                s("expire_time"),
            ]
        })
        .collect();
    let header = [
        "LEASE ID", "IDENTITY", "TEMPLATE", "DATABASE", "TTL", "EXPIRES",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no leases)\n");
    }
    out
}

fn lease_details(lease: &Value) -> String {
    let mut out = String::new();
    for (k, v) in lease.as_object().into_iter().flatten() {
        let v = match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.push_str(&format!("{k:<13} {v}\n"));
    }
    out
}

fn http_client(api: &ApiArgs, insecure: bool) -> anyhow::Result<reqwest::Client> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if let Some(ca) = &api.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    if insecure {
        // Only for `rolemint health` against its own listener (a container
        // probe on loopback with a certificate for the service name); no
        // token is sent.
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().context("building the HTTP client")
}

/// `--addr`, `ROLEMINT_ADDR`, or `[admin] listen` of `--config`.
fn base_url(api: &ApiArgs) -> anyhow::Result<String> {
    if let Some(addr) = api.addr.as_deref().filter(|a| !a.is_empty()) {
        let addr = addr.trim_end_matches('/');
        return Ok(if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        });
    }
    match &api.config {
        Some(path) => addr_from_config(path),
        None => bail!("no admin address: pass --addr, set ROLEMINT_ADDR, or pass --config"),
    }
}

fn addr_from_config(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let admin = doc.get("admin").and_then(|a| a.as_table());
    let listen = admin
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .with_context(|| format!("{}: no [admin] listen", path.display()))?;
    let mut addr: std::net::SocketAddr = listen.parse().with_context(|| {
        format!(
            "{}: [admin] listen = {listen:?} is not an address",
            path.display()
        )
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if admin.is_some_and(|a| a.contains_key("tls_cert")) {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_flag_or_the_config() {
        let args = |addr: Option<&str>, config: Option<PathBuf>| ApiArgs {
            addr: addr.map(String::from),
            config,
            ca_cert: None,
        };
        assert_eq!(
            base_url(&args(Some("127.0.0.1:8200/"), None)).unwrap(),
            "http://127.0.0.1:8200"
        );
        assert_eq!(
            base_url(&args(Some("https://h:1"), None)).unwrap(),
            "https://h:1"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[admin]\nlisten = \"0.0.0.0:8201\"\ntls_cert = \"c.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            base_url(&args(None, Some(path.clone()))).unwrap(),
            "https://127.0.0.1:8201"
        );
        std::fs::write(&path, "[proxy]\n").unwrap();
        assert!(base_url(&args(None, Some(path)))
            .unwrap_err()
            .to_string()
            .contains("no [admin] listen"));
        assert!(base_url(&args(None, None)).is_err());
    }

    #[test]
    fn tables_align_and_errors_join() {
        let leases = json!([{"id": "database/sessions/readonly/a", "identity": "alice", "template": "readonly", "database": "appdb", "ttl": 60, "expire_time": "2026-01-01T00:00:00Z"}]);
        let t = lease_table(&leases);
        assert!(t.starts_with("LEASE ID"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("alice"), "{t}");
        assert_eq!(error_text(&json!({"errors": ["a", "b"]})), "a; b");
    }
}

//! `rolemint request`: access requests from the command line, over the
//! admin API (`/v1/rolemint/requests`), as the person signed in with
//! `rolemint login` (or with `--token`).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::login::{admin_client, admin_url, fresh_profile, ProxyArgs};

#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// A token to act with instead of the login's (an identity token, or
    /// the operator token to list or revoke any request).
    #[arg(
        long,
        env = "ROLEMINT_TOKEN",
        hide_env_values = true,
        global = true,
        value_parser = crate::secret::Secret::parse
    )]
    pub token: Option<crate::secret::Secret>,
    /// Print the server's JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: RequestCommand,
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Ask for a template that needs approval.
    Create {
        template: String,
        /// Why (the incident or ticket); approvers see it.
        #[arg(long)]
        reason: String,
        /// How long the grant should last (e.g. 30m); default 1h, at most
        /// the template's max_duration.
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// Your requests, and those you may approve.
    List,
    /// One request.
    Show { id: String },
    /// Approve a request (never your own).
    Approve { id: String },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// End a grant early: its sessions end at once.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `rolemint request ...`.
pub async fn run(args: RequestArgs) -> anyhow::Result<()> {
    let (base, token, ca) = credentials(&args).await?;
    let http = admin_client(ca.as_deref())?;
    let (method, path, body) = args.command.route();
    let url = format!("{base}/v1/rolemint/requests{path}");
    let mut req = http.request(method, url).bearer_auth(&token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let answer = req
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let data = answer_data(answer).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    print(&args.command, &data);
    Ok(())
}

/// The admin API's base URL, the token to act with and the CA to verify
/// it with: `--token` at `--proxy`, or the signed-in profile's (refreshed
/// when due).
async fn credentials(
    args: &RequestArgs,
) -> anyhow::Result<(String, String, Option<std::path::PathBuf>)> {
    match &args.token {
        Some(token) => {
            let proxy = args
                .proxy
                .proxy
                .as_deref()
                .context("with --token, say which proxy: --proxy https://HOST:PORT")?;
            Ok((
                admin_url(proxy),
                token.expose().to_owned(),
                args.proxy.ca_cert.clone(),
            ))
        }
        None => {
            let profile = fresh_profile(&args.proxy).await?;
            let ca = args.proxy.ca_for(&profile).map(ToOwned::to_owned);
            Ok((profile.admin_url.clone(), profile.id_token.clone(), ca))
        }
    }
}

impl RequestCommand {
    /// The request that carries the command: method, path under
    /// `/v1/rolemint/requests`, body.
    fn route(&self) -> (reqwest::Method, String, Option<Value>) {
        use reqwest::Method;
        match self {
            RequestCommand::Create {
                template,
                reason,
                duration,
            } => (
                Method::POST,
                String::new(),
                Some(json!({ "template": template, "reason": reason, "duration": duration })),
            ),
            RequestCommand::List => (Method::GET, String::new(), None),
            RequestCommand::Show { id } => (Method::GET, format!("/{id}"), None),
            RequestCommand::Approve { id } => (Method::POST, format!("/{id}/approve"), None),
            RequestCommand::Deny { id, reason } => (
                Method::POST,
                format!("/{id}/deny"),
                Some(json!({ "reason": reason })),
            ),
            RequestCommand::Revoke { id, reason } => (
                Method::POST,
                format!("/{id}/revoke"),
                Some(json!({ "reason": reason })),
            ),
        }
    }
}

/// The `data` of a successful answer; an error naming the status and the
/// server's `errors` otherwise.
async fn answer_data(answer: reqwest::Response) -> anyhow::Result<Value> {
    let status = answer.status();
    let mut value: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let errors = value["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        anyhow::bail!("{status}: {errors}");
    }
    Ok(value
        .get_mut("data")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

/// The answer to `command` for a person: one line a request.
fn print(command: &RequestCommand, data: &Value) {
    match command {
        RequestCommand::List => {
            let requests = data["requests"].as_array().cloned().unwrap_or_default();
            if requests.is_empty() {
                println!("(no requests)");
            }
            for r in &requests {
                println!("{}", line(r));
            }
        }
        RequestCommand::Create { .. } => {
            println!("{}", line(data));
            println!(
                "An approver runs: rolemint request approve {}",
                data["id"].as_str().unwrap_or("?")
            );
        }
        _ => println!("{}", line(data)),
    }
}

/// One request on one line: id, state, template, requester, reason.
fn line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
    let until = r["granted_until"]
        .as_u64()
        .map(|u| {
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u);
            format!(" until {}", humantime::format_rfc3339_seconds(t))
        })
        .unwrap_or_default();
    format!(
        "{:<20} {:<9} {:<14} {}:{}  \"{}\"{until}",
        s("id"),
        s("state"),
        s("template"),
        r["requester"]["issuer"].as_str().unwrap_or(""),
        r["requester"]["identity"].as_str().unwrap_or(""),
        printable(&s("reason")),
    )
}

/// `text` with its control characters escaped: a reason is anyone's text,
/// and printed raw an escape sequence in it would drive the approver's
/// terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_cannot_drive_the_terminal() {
        let r = json!({
            "id": "req-1", "state": "pending", "template": "dba",
            "requester": { "issuer": "corp", "identity": "alice" },
            "reason": "INC-1\u{1b}[2J\u{1b}]0;owned\u{7}\nnext line",
        });
        let shown = line(&r);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("INC-1\\u{1b}[2J"), "{shown}");
    }
}

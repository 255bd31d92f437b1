//! The admin listener of a `rolemint serve` under test, as an operator and
//! as a workload (the Vault door) use it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The operator's bearer token of the bench's proxies.
pub const OPERATOR_TOKEN: &str = "rmo_scale-bench-operator-token";

#[derive(Clone)]
pub struct Admin {
    base: String,
    client: reqwest::Client,
}

/// One answer: status, JSON body (`Null` when empty), how long it took.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub took: Duration,
}

impl Admin {
    pub fn new(port: u16) -> anyhow::Result<Admin> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Admin {
            base: format!("http://127.0.0.1:{port}"),
            client,
        })
    }

    /// An operator request with an optional JSON body.
    pub async fn operator(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let mut req = self
            .client
            .request(Method::from_bytes(method.as_bytes())?, self.url(path))
            .bearer_auth(OPERATOR_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    /// `GET /v1/database/creds/<template>` as the workload of `token`; the
    /// lease id.
    pub async fn creds(&self, template: &str, token: &str) -> anyhow::Result<String> {
        let req = self
            .client
            .get(self.url(&format!("/v1/database/creds/{template}")))
            .header("X-Vault-Token", token);
        let answer = self.send(req).await?;
        if answer.status != StatusCode::OK {
            return Err(anyhow!("creds answered {}: {}", answer.status, answer.body));
        }
        answer.body["lease_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("creds answer without a lease_id: {}", answer.body))
    }

    /// The value of an unlabelled counter on `/metrics`, 0 when absent.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .unwrap_or(0.0))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let resp = req.send().await.context("admin request")?;
        let status = resp.status();
        let text = resp.text().await?;
        let took = started.elapsed();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer { status, body, took })
    }
}

/// The `[admin]` and `[vault]` config of a bench proxy on `port`.
pub fn admin_toml(port: u16, max_credential_leases: usize) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{port}"
operator_token_sha256 = "{hash}"
request_timeout = "10m"
# The bench is one source with 32 requests in flight plus its probes: over
# the default 32 a source, a connection opened while another's slot is
# still being released is closed at accept (seen as a reset).
max_connections_per_source = 128

[vault]
max_credential_leases = {max_credential_leases}
"#,
        hash = rolemint::control::auth::sha256_hex(OPERATOR_TOKEN),
    )
}

//! A JWKS fetched over HTTPS: cached, refreshed, never on the hot path.
//!
//! - The keys live in an `ArcSwap`: verification reads them without a lock
//!   and never waits for the network while the token's key is cached.
//! - A background task ([`RemoteJwks::run`]) fetches at startup, retrying
//!   with backoff while the first fetch fails (tokens of this issuer fail
//!   with 28P01 meanwhile), then every `jwks_refresh`.
//! - A token whose `kid` is unknown may trigger one extra fetch, at most
//!   one per [`UNKNOWN_KID_INTERVAL`] per issuer: a key rotated in since
//!   the last refresh then works at once, and a flood of made-up kids
//!   cannot turn rolemint into a load generator against the IdP.
//! - A failed fetch keeps the cached keys: an IdP outage does not lock out
//!   sessions whose keys are known.
//! - Every fetch is HTTPS only (rustls, aws-lc-rs), bounded by connect and
//!   total timeouts and [`MAX_JWKS_BYTES`]; redirects are not followed.
//! - `discovery = true` reads `jwks_uri` from
//!   `<issuer>/.well-known/openid-configuration` first (OIDC Discovery 1.0
//!   §4), and requires it to be https too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::keys::{self, Key};
use crate::config::IssuerConfig;

/// Largest JWKS or discovery document read.
pub(super) const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Least time between two fetches caused by unknown `kid`s.
pub(super) const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed fetch; doubles up to `jwks_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: document larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {message}")]
    Document { url: String, message: String },
}

pub(super) struct RemoteJwks {
    issuer_name: String,
    /// The JWKS URL, or `None` to discover it from the issuer.
    jwks_url: Option<String>,
    issuer: String,
    client: reqwest::Client,
    refresh: Duration,
    keys: ArcSwap<Vec<Key>>,
    /// When a fetch for an unknown `kid` last ran; the mutex also makes
    /// concurrent sessions with the same new kid wait for one fetch.
    unknown_kid_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl RemoteJwks {
    pub(super) fn new(c: &IssuerConfig) -> Result<RemoteJwks, String> {
        Ok(RemoteJwks {
            issuer_name: c.name.clone(),
            jwks_url: c.jwks_url.clone(),
            issuer: c.issuer.clone(),
            client: http_client(c.jwks_ca_file.as_deref())?,
            refresh: c.jwks_refresh,
            keys: ArcSwap::from_pointee(Vec::new()),
            unknown_kid_fetch: tokio::sync::Mutex::new(None),
        })
    }

    /// The keys at hand (empty until the first fetch succeeds).
    pub(super) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.load_full()
    }

    /// Fetches once for a token with an unknown `kid`, unless that was done
    /// less than [`UNKNOWN_KID_INTERVAL`] ago. Returns whether new keys
    /// were loaded.
    pub(super) async fn refresh_for_unknown_kid(&self) -> bool {
        let mut last = self.unknown_kid_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(n) => {
                tracing::info!(issuer = %self.issuer_name, keys = n, "JWKS refreshed for an unknown kid");
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer_name, "JWKS refresh failed, cached keys kept: {e}");
                false
            }
        }
    }

    /// One fetch now, for `rolemint check`: the number of keys, or why
    /// none could be had.
    pub(super) async fn probe(&self) -> Result<usize, String> {
        self.fetch().await.map_err(|e| e.to_string())
    }

    /// The refresh loop; ends when `stop` is cancelled.
    pub(super) async fn run(this: Arc<RemoteJwks>, stop: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match this.fetch().await {
                Ok(n) => {
                    tracing::debug!(issuer = %this.issuer_name, keys = n, "JWKS fetched");
                    retry = FIRST_RETRY;
                    this.refresh
                }
                Err(e) => {
                    tracing::warn!(
                        issuer = %this.issuer_name, cached_keys = this.keys.load().len(),
                        "JWKS fetch failed, retrying in {retry:?}: {e}"
                    );
                    let wait = retry;
                    retry = (retry * 2).min(this.refresh);
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One fetch; replaces the cached keys only with a usable key set.
    async fn fetch(&self) -> Result<usize, FetchError> {
        let url = match &self.jwks_url {
            Some(url) => url.clone(),
            None => self.discover().await?,
        };
        let body = get(&self.client, &url).await?;
        let keys = keys::from_jwks(&body).map_err(|message| FetchError::Document {
            url: url.clone(),
            message,
        })?;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    /// `jwks_uri` from the issuer's OpenID configuration.
    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = get(&self.client, &url).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| FetchError::Document {
                url: url.clone(),
                message: "not JSON".into(),
            })?;
        match doc.get("jwks_uri").and_then(|v| v.as_str()) {
            Some(uri) if uri.starts_with("https://") => Ok(uri.to_owned()),
            _ => Err(FetchError::Document {
                url,
                message: "no https jwks_uri".into(),
            }),
        }
    }
}

/// The HTTPS client: rustls with the one crypto provider (aws-lc-rs), the
/// system's roots (reqwest's platform verifier) or the PEM CAs of
/// `jwks_ca_file`.
fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .user_agent(concat!("rolemint/", env!("CARGO_PKG_VERSION")));
    let builder = match ca_file {
        None => builder,
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            use rustls_pki_types::CertificateDer;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.tls_backend_preconfigured(tls)
        }
    };
    builder.build().map_err(|e| format!("HTTPS client: {e}"))
}

/// GET `url`, reading at most [`MAX_JWKS_BYTES`].
async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let http = |e: reqwest::Error| FetchError::Http {
        url: url.to_owned(),
        // Without the URL: reqwest's message repeats it.
        message: e.without_url().to_string(),
    };
    let mut response = client.get(url).send().await.map_err(http)?;
    if !response.status().is_success() {
        return Err(FetchError::Http {
            url: url.to_owned(),
            message: format!("status {}", response.status()),
        });
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

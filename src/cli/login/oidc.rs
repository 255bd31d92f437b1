//! The OpenID Connect client side of a person's login: discovery, the
//! device authorization grant (RFC 8628), the authorization code grant
//! with PKCE on a loopback redirect (RFC 7636, RFC 8252), refresh and
//! revocation (RFC 7009).
//!
//! What can be decided without a socket is plain functions (the PKCE pair,
//! the authorize URL, reading a token answer, what a device poll answer
//! means); the rest is one small async function per HTTP exchange, every
//! one bounded in time and size.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::secret::Secret;

/// Largest answer read from the provider.
const MAX_BODY: usize = 256 * 1024;
/// Longest one HTTP exchange with the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: answer larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("the identity provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("the identity provider has no {0} (see its .well-known/openid-configuration)")]
    Unsupported(&'static str),
    #[error("the identity provider's answer had no {0}")]
    Missing(&'static str),
    #[error("the sign-in was not completed in time")]
    Expired,
    #[error("{0}")]
    Local(String),
}

/// The endpoints of `<issuer>/.well-known/openid-configuration` a login uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Discovery {
    pub issuer: String,
    pub token_endpoint: String,
    pub authorization_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
}

/// Tokens from the token endpoint.
#[derive(Debug)]
pub struct Tokens {
    /// What the proxy takes as the password: the ID token.
    pub id_token: Secret,
    pub refresh_token: Option<Secret>,
    /// When the ID token's `exp` says it ends.
    pub expires_at: SystemTime,
}

/// The provider's HTTPS client: rustls with aws-lc-rs, the system's roots
/// or the PEM CAs of `ca_file`, no redirects followed.
pub fn client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, OidcError> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("rolemint/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| OidcError::Local(format!("{}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| OidcError::Local(format!("{}: {e}", path.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| OidcError::Local(format!("HTTP client: {e}")))
}

/// Reads `<issuer>/.well-known/openid-configuration`, whose `issuer` must be
/// the one asked for (OIDC Discovery 1.0 §4.3).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, OidcError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = read(http.get(&url), &url).await?;
    let d: Discovery = serde_json::from_slice(&body).map_err(|e| OidcError::Http {
        url: url.clone(),
        message: format!("not a discovery document: {e}"),
    })?;
    if d.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(OidcError::Http {
            url,
            message: format!("names issuer {} instead", d.issuer),
        });
    }
    Ok(d)
}

/// Sends `req` and reads at most [`MAX_BODY`] of a 2xx answer; a 4xx with
/// an OAuth error body becomes [`OidcError::Refused`].
async fn read(req: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, OidcError> {
    let http = |e: reqwest::Error| OidcError::Http {
        url: url.to_owned(),
        message: crate::observe::logging::error_chain(&e.without_url()),
    };
    let mut response = req.send().await.map_err(http)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(OidcError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    match serde_json::from_slice::<OAuthError>(&body) {
        Ok(e) => Err(OidcError::Refused {
            error: e.error,
            description: e.error_description,
        }),
        Err(_) => Err(OidcError::Http {
            url: url.to_owned(),
            message: format!("status {status}"),
        }),
    }
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    refresh_token: Option<String>,
}

/// Reads a token endpoint answer: the ID token (its `exp` read without
/// checking the signature — the proxy checks it; this is only for knowing
/// when to refresh) and the refresh token.
pub fn tokens_from(body: &[u8], old_refresh: Option<Secret>) -> Result<Tokens, OidcError> {
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|_| OidcError::Missing("JSON token answer"))?;
    let id_token = answer.id_token.ok_or(OidcError::Missing("id_token"))?;
    let expires_at = unverified_exp(&id_token).ok_or(OidcError::Missing("exp in the id_token"))?;
    Ok(Tokens {
        id_token: Secret::new(id_token),
        // A refresh answer may omit the refresh token: the old one stays.
        refresh_token: answer.refresh_token.map(Secret::new).or(old_refresh),
        expires_at,
    })
}

/// The `exp` of a JWT, unverified.
pub fn unverified_exp(jwt: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// What the device authorization endpoint answered.
#[derive(Deserialize)]
pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceStart {
    // By hand: the device code is what the token endpoint trades for
    // tokens, so it is not for a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStart")
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Starts the device flow (RFC 8628 §3.1).
pub async fn device_start(
    http: &reqwest::Client,
    d: &Discovery,
    client_id: &str,
    scopes: &str,
) -> Result<DeviceStart, OidcError> {
    let url = d
        .device_authorization_endpoint
        .as_deref()
        .ok_or(OidcError::Unsupported("device_authorization_endpoint"))?;
    let body = read(
        http.post(url)
            .form(&[("client_id", client_id), ("scope", scopes)]),
        url,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|_| OidcError::Missing("device_code"))
}

/// What one poll of the token endpoint means (RFC 8628 §3.5).
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Not yet: ask again after this long.
    Wait(Duration),
    /// The person refused, or the code expired.
    Stop(String),
}

/// The next step after a refused poll, given the current interval.
pub fn after_poll(error: &str, interval: Duration) -> Poll {
    match error {
        "authorization_pending" => Poll::Wait(interval),
        // §3.5: slow_down adds 5 seconds to every later poll.
        "slow_down" => Poll::Wait(interval + Duration::from_secs(5)),
        other => Poll::Stop(other.to_owned()),
    }
}

/// Polls until the person has signed in, refused, or the code expired.
pub async fn device_finish(
    http: &reqwest::Client,
    d: &Discovery,
    client_id: &str,
    start: &DeviceStart,
) -> Result<Tokens, OidcError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(start.expires_in.min(3600));
    let mut interval = Duration::from_secs(start.interval.unwrap_or(5).clamp(1, 60));
    loop {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", start.device_code.as_str()),
            ("client_id", client_id),
        ];
        match read(http.post(&d.token_endpoint).form(&form), &d.token_endpoint).await {
            Ok(body) => return tokens_from(&body, None),
            Err(OidcError::Refused { error, description }) => match after_poll(&error, interval) {
                Poll::Wait(next) => interval = next,
                Poll::Stop(_) => return Err(OidcError::Refused { error, description }),
            },
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() + interval > deadline {
            return Err(OidcError::Expired);
        }
        tokio::time::sleep(interval).await;
    }
}

/// A PKCE verifier and its S256 challenge (RFC 7636 §4.1–4.2).
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

/// 32 random bytes, base64url: the PKCE verifier, the `state` and the
/// `nonce` are each one.
pub fn random_string() -> Result<String, OidcError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| OidcError::Local("no random bytes".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Pkce {
    pub fn new() -> Result<Pkce, OidcError> {
        Ok(Pkce::from_verifier(random_string()?))
    }

    pub fn from_verifier(verifier: String) -> Pkce {
        use base64::Engine as _;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        Pkce {
            challenge: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
            verifier: Secret::new(verifier),
        }
    }
}

/// The URL the browser opens for the code flow.
pub fn authorize_url(
    d: &Discovery,
    client_id: &str,
    scopes: &str,
    redirect_uri: &str,
    state: &str,
    pkce: &Pkce,
) -> Result<String, OidcError> {
    let endpoint = d
        .authorization_endpoint
        .as_deref()
        .ok_or(OidcError::Unsupported("authorization_endpoint"))?;
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("scope", scopes),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    // OpenID Connect Core §11: a provider ignores offline_access (so gives
    // no refresh token, and no silent refresh) unless the person is asked
    // to consent.
    if scopes.split(' ').any(|s| s == "offline_access") {
        params.push(("prompt", "consent"));
    }
    let url = reqwest::Url::parse_with_params(endpoint, &params)
        .map_err(|e| OidcError::Local(format!("authorization_endpoint: {e}")))?;
    Ok(url.into())
}

/// Trades the code the loopback redirect brought for tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    d: &Discovery,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    pkce: &Pkce,
) -> Result<Tokens, OidcError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", client_id),
        ("code_verifier", pkce.verifier.expose()),
    ];
    let body = read(http.post(&d.token_endpoint).form(&form), &d.token_endpoint).await?;
    tokens_from(&body, None)
}

/// New tokens for a refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    d: &Discovery,
    client_id: &str,
    refresh_token: &Secret,
) -> Result<Tokens, OidcError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
        ("client_id", client_id),
    ];
    let body = read(http.post(&d.token_endpoint).form(&form), &d.token_endpoint).await?;
    tokens_from(&body, Some(refresh_token.clone()))
}

/// Revokes a refresh token where the provider has a revocation endpoint;
/// `Ok(false)` where it has none.
pub async fn revoke(
    http: &reqwest::Client,
    d: &Discovery,
    client_id: &str,
    refresh_token: &Secret,
) -> Result<bool, OidcError> {
    let Some(url) = d.revocation_endpoint.as_deref() else {
        return Ok(false);
    };
    let form = [
        ("token", refresh_token.expose()),
        ("token_type_hint", "refresh_token"),
        ("client_id", client_id),
    ];
    read(http.post(url).form(&form), url).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_carries_no_device_code() {
        let start: DeviceStart = serde_json::from_value(serde_json::json!({
            "device_code": "device-secret", "user_code": "ABCD-EFGH",
            "verification_uri": "https://idp/device", "expires_in": 300
        }))
        .unwrap();
        let text = format!("{start:?}");
        assert!(!text.contains("device-secret"), "{text}");
    }

    #[tokio::test]
    async fn a_failed_exchange_says_why() {
        // A port nobody listens on: the error names the refused connection,
        // not only "error sending request".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let e = discover(&client(None).unwrap(), &format!("https://127.0.0.1:{port}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_example() {
        // RFC 7636 Appendix B.
        let p = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn device_polls_wait_slow_down_and_stop() {
        let i = Duration::from_secs(5);
        assert_eq!(after_poll("authorization_pending", i), Poll::Wait(i));
        assert_eq!(
            after_poll("slow_down", i),
            Poll::Wait(Duration::from_secs(10))
        );
        assert_eq!(
            after_poll("access_denied", i),
            Poll::Stop("access_denied".into())
        );
        assert_eq!(
            after_poll("expired_token", i),
            Poll::Stop("expired_token".into())
        );
    }

    #[test]
    fn a_token_answer_keeps_the_old_refresh_token_when_it_sends_none() {
        use base64::Engine as _;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","exp":2000000000}"#);
        let jwt = format!("e30.{claims}.sig");
        let body = serde_json::json!({ "id_token": jwt }).to_string();
        let t = tokens_from(body.as_bytes(), Some(Secret::new("old"))).unwrap();
        assert_eq!(t.refresh_token.unwrap().expose(), "old");
        assert_eq!(
            t.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
        assert!(tokens_from(b"{}", None).is_err(), "no id_token");
        assert!(tokens_from(b"not json", None).is_err());
    }

    #[test]
    fn the_authorize_url_carries_the_challenge_not_the_verifier() {
        let d = Discovery {
            issuer: "https://idp".into(),
            token_endpoint: "https://idp/token".into(),
            authorization_endpoint: Some("https://idp/auth".into()),
            device_authorization_endpoint: None,
            revocation_endpoint: None,
        };
        let p = Pkce::from_verifier("v".repeat(43));
        let url = authorize_url(
            &d,
            "cli",
            "openid groups",
            "http://127.0.0.1:5/callback",
            "st",
            &p,
        )
        .unwrap();
        assert!(url.starts_with("https://idp/auth?response_type=code&client_id=cli"));
        assert!(url.contains(&p.challenge) && url.contains("code_challenge_method=S256"));
        assert!(!url.contains(&"v".repeat(43)));
        assert!(url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2Fcallback"));
        assert!(
            !url.contains("prompt="),
            "no offline_access, no consent asked"
        );
        let offline = authorize_url(
            &d,
            "cli",
            "openid offline_access",
            "http://127.0.0.1:5/callback",
            "st",
            &p,
        )
        .unwrap();
        assert!(offline.contains("&prompt=consent"), "{offline}");
    }
}

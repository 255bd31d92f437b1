//! `[login]`: what a person's `rolemint login` needs to sign in, published
//! by the admin listener at `/.well-known/rolemint-login`.
//!
//! The identity provider is one of `[[auth.issuers]]` (by name), so the
//! tokens a person's login yields are the tokens the proxy already
//! verifies: nothing here adds a way in.

use std::path::PathBuf;

use serde::Deserialize;

/// The `[login]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// Name of the `[[auth.issuers]]` entry people sign in at. Its
    /// `issuer` is the OpenID Connect issuer URL (https); its `audiences`
    /// must hold `client_id` (the ID token's `aud`).
    pub issuer: String,
    /// The OAuth client id registered at the provider for the CLI: a
    /// public client (no secret) allowed the device grant and/or the
    /// authorization code grant with a `http://127.0.0.1/...` redirect.
    pub client_id: String,
    /// Scopes asked for; `openid` is added when missing. `offline_access`
    /// lets the CLI refresh silently.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Where people point psql: `host:port` of the proxy as clients reach
    /// it. Default: the host the CLI reached the admin listener at, with
    /// the port of `proxy.listen`.
    pub proxy_address: Option<String>,
    /// PEM CA certificate(s) that sign the proxy's client TLS certificate,
    /// published so the CLI can connect with `sslmode=verify-full`. Unset:
    /// clients use the system roots.
    pub proxy_ca_file: Option<PathBuf>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "offline_access".into()]
}

/// Longest `client_id`, scope list and address accepted.
const MAX_FIELD: usize = 256;

/// Checks of `[login]` against the issuers it names.
pub fn validate(login: &LoginConfig, issuers: &[super::IssuerConfig]) -> Result<(), String> {
    let Some(issuer) = issuers.iter().find(|i| i.name == login.issuer) else {
        return Err(format!(
            "login.issuer \"{}\" names no [[auth.issuers]] entry",
            login.issuer
        ));
    };
    if !issuer.issuer.starts_with("https://") {
        return Err(format!(
            "login.issuer \"{}\": people sign in over https; its issuer is not an https:// URL",
            login.issuer
        ));
    }
    let printable =
        |s: &str| !s.is_empty() && s.len() <= MAX_FIELD && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(&login.client_id) {
        return Err("login.client_id: 1..256 printable ASCII characters".into());
    }
    if !issuer.audiences.iter().any(|a| a == &login.client_id) {
        return Err(format!(
            "login: the ID tokens people get carry aud = \"{}\"; add it to the audiences of issuer \"{}\"",
            login.client_id, login.issuer
        ));
    }
    if login.scopes.len() > 32 || !login.scopes.iter().all(|s| printable(s)) {
        return Err("login.scopes: at most 32 scopes of printable ASCII".into());
    }
    if let Some(addr) = &login.proxy_address {
        if !printable(addr) || !addr.contains(':') {
            return Err("login.proxy_address: host:port".into());
        }
    }
    Ok(())
}

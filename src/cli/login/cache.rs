//! Where a person's login is kept: `credentials.json` in the user's config
//! directory (`$XDG_CONFIG_HOME/rolemint`, else `~/.config/rolemint`),
//! one profile per proxy, the directory 0700 and the file 0600, replaced
//! atomically (written aside, then renamed) so a crash never leaves half a
//! file. The proxy's published CA is kept beside it for `sslrootcert`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::oidc::Discovery;

/// Largest credentials file read.
const MAX_FILE: u64 = 1024 * 1024;

/// One signed-in proxy.
#[derive(Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The admin listener it was reached at, e.g. `https://rolemint:8200`.
    pub admin_url: String,
    pub client_id: String,
    pub scopes: String,
    pub discovery: Discovery,
    /// Where psql connects: `host:port`.
    pub proxy_address: String,
    /// The proxy's CA as published at login, if any.
    pub proxy_ca_file: Option<PathBuf>,
    /// The CA the admin listener's HTTPS was verified with at login
    /// (`--ca-cert`), if not the system's: later commands use it too.
    #[serde(default)]
    pub admin_ca_file: Option<PathBuf>,
    /// The CA the identity provider's TLS was verified with, if not the
    /// system's.
    pub issuer_ca_file: Option<PathBuf>,
    pub id_token: String,
    pub refresh_token: Option<String>,
    /// Unix seconds of the ID token's `exp`.
    pub expires_at: u64,
}

impl std::fmt::Debug for Profile {
    // By hand: the tokens are not for a log line or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("admin_url", &self.admin_url)
            .field("proxy_address", &self.proxy_address)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The whole credentials file: a person's logins, one profile per proxy.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CredentialsFile {
    /// The profile of the last login: what commands use without `--proxy`.
    pub current: Option<String>,
    pub profiles: BTreeMap<String, Profile>,
}

impl CredentialsFile {
    /// The profile for `admin_url`, or the current one.
    pub fn profile(&self, admin_url: Option<&str>) -> Option<&Profile> {
        let key = admin_url
            .map(str::to_owned)
            .or_else(|| self.current.clone())?;
        self.profiles.get(&key)
    }
}

/// The directory: `$XDG_CONFIG_HOME/rolemint` or `~/.config/rolemint`.
pub fn dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow::anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("rolemint"))
}

/// Reads the credentials in `dir` (empty when there are none yet).
pub fn load(dir: &Path) -> anyhow::Result<CredentialsFile> {
    use std::io::Read as _;
    let path = dir.join("credentials.json");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CredentialsFile::default()),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text)?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e} (remove it and log in again)", path.display()))
}

/// Writes the credentials to `dir`, 0600, atomically.
pub fn save(dir: &Path, creds: &CredentialsFile) -> anyhow::Result<()> {
    make_dir(dir)?;
    let text = serde_json::to_vec_pretty(creds)?;
    write_private(&dir.join("credentials.json"), &text)
}

/// Writes `contents` to `path` with mode 0600: aside first, then renamed.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Creates `dir` (and its parents) with mode 0700.
pub fn make_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

/// A file name for `admin_url`'s things (the proxy CA): its SHA-256, short.
pub fn file_stem(admin_url: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, admin_url.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn profile(url: &str) -> Profile {
        Profile {
            admin_url: url.into(),
            client_id: "cli".into(),
            scopes: "openid".into(),
            discovery: Discovery {
                issuer: "https://idp".into(),
                token_endpoint: "https://idp/token".into(),
                authorization_endpoint: None,
                device_authorization_endpoint: None,
                revocation_endpoint: None,
            },
            proxy_address: "db:6432".into(),
            proxy_ca_file: None,
            admin_ca_file: None,
            issuer_ca_file: None,
            id_token: "eyJ.secret.token".into(),
            refresh_token: Some("refresh-secret".into()),
            expires_at: 1,
        }
    }

    #[test]
    fn the_file_is_private_and_round_trips_one_profile_per_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("rolemint");
        let mut creds = load(&dir).unwrap();
        assert!(creds.profiles.is_empty());
        creds
            .profiles
            .insert("http://a".into(), profile("http://a"));
        creds
            .profiles
            .insert("http://b".into(), profile("http://b"));
        creds.current = Some("http://b".into());
        save(&dir, &creds).unwrap();
        let mode = std::fs::metadata(dir.join("credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let back = load(&dir).unwrap();
        assert_eq!(back.profile(None).unwrap().admin_url, "http://b");
        assert_eq!(
            back.profile(Some("http://a")).unwrap().admin_url,
            "http://a"
        );
        assert!(back.profile(Some("http://c")).is_none());
    }

    #[test]
    fn debug_output_carries_no_token() {
        let text = format!("{:?}", profile("http://a"));
        assert!(!text.contains("secret"), "{text}");
    }
}

//! `rolemint token --static | --operator | --key` and `rolemint keygen`:
//! new credentials and the config lines that accept them.
//!
//! Tokens go to stdout alone on their line (the last line, so scripts can
//! take it); config lines hold only hashes and public keys.

use std::path::Path;

use crate::auth::identity::keygen;
use anyhow::Context as _;

/// A random static token and its `[[auth.static_tokens]]` entry.
pub fn static_token(identity: &str, groups: &[String]) -> anyhow::Result<()> {
    let token = keygen::random_token("rmt_").map_err(anyhow::Error::msg)?;
    let groups = serde_json::to_string(groups)?;
    let identity = serde_json::to_string(identity)?;
    println!("# Add to the config (only the hash; keep the token itself secret):");
    println!("[[auth.static_tokens]]");
    println!("identity = {identity}");
    println!("groups = {groups}");
    println!("sha256 = \"{}\"", keygen::sha256_hex(&token));
    println!("# The token:");
    println!("{}", token.expose());
    Ok(())
}

/// A random operator token (the admin API's bearer token) and its hash line.
pub fn operator() -> anyhow::Result<()> {
    let token = keygen::random_token("rmo_").map_err(anyhow::Error::msg)?;
    println!("# Add to the config's [admin] table:");
    println!("operator_token_sha256 = \"{}\"", keygen::sha256_hex(&token));
    println!("# The token:");
    println!("{}", token.expose());
    Ok(())
}

/// A token signed with an Ed25519 private key file.
pub fn signed_with_key(
    key: &Path,
    claims: &crate::auth::identity::IssueClaims<'_>,
) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let kid = keygen::kid_of_private_pem(&pem).map_err(anyhow::Error::msg)?;
    let token = crate::auth::identity::issue_ed25519(&pem, Some(&kid), claims)
        .context("signing the token")?;
    println!("{}", token.expose());
    Ok(())
}

/// Writes an Ed25519 key pair and its JWKS into `out`.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let files = keygen::ed25519().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Absolute: paths in a config resolve against the config file's
    // directory, not the one `keygen` ran in, so the printed lines paste
    // into any config.
    let out = &std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    let private = out.join("ed25519.key.pem");
    // create_new: never overwrite a key someone may depend on; 0600: the
    // signing key is a secret.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .and_then(|mut f| f.write_all(files.private_pem.expose().as_bytes()))
        .with_context(|| format!("writing {}", private.display()))?;
    let public = out.join("ed25519.pub.pem");
    std::fs::write(&public, &files.public_pem)
        .with_context(|| format!("writing {}", public.display()))?;
    let jwks = out.join("jwks.json");
    std::fs::write(&jwks, &files.jwks).with_context(|| format!("writing {}", jwks.display()))?;
    println!(
        "wrote {}, {}, {}",
        private.display(),
        public.display(),
        jwks.display()
    );
    println!("# An issuer that accepts tokens signed with this key:");
    println!("[[auth.issuers]]");
    println!("name = \"ed25519\"");
    println!("issuer = \"rolemint-ed25519\"");
    println!("audiences = [\"rolemint\"]");
    println!("algorithms = [\"EdDSA\"]");
    println!(
        "jwks_file = {}",
        serde_json::to_string(&jwks.display().to_string())?
    );
    println!(
        "# Sign: rolemint token --key {} --sub NAME --issuer rolemint-ed25519 --audience rolemint",
        private.display()
    );
    println!("# kid: {}", files.kid);
    Ok(())
}

//! Root rotation: a fresh random password for rolemint's own admin role
//! (`POST /v1/database/rotate-root/<db>`, `rolemint rotate-admin`), as
//! Vault's `rotate-root` does for its database connection.
//!
//! The new password must survive a restart, so it is only possible when
//! the config reads it from `backend.admin_password_file`: an inline
//! password would be lost with the process, and rolemint cannot write an
//! environment variable. The order keeps a crash at any point recoverable:
//!
//! 0. take the rotation lock (`pg_advisory_lock`, [`ROTATE_LOCK_KEY`]) on
//!    an admin connection of its own, held to the end: instances sharing
//!    the database (and the file) rotate one after the other, never
//!    interleaving their `.rotating` files and `ALTER ROLE`s;
//! 1. write the new password to `<file>.rotating` (mode 0600, synced);
//! 2. `ALTER ROLE CURRENT_USER PASSWORD '<SCRAM verifier>'` (PostgreSQL
//!    never sees the password itself);
//! 3. rename `<file>.rotating` over the file and sync the directory;
//! 4. new admin connections use the new password. Open ones stay logged in
//!    (PostgreSQL checks a password at login only), so no session in flight
//!    fails.
//!
//! A crash between 2 and 3 leaves the new password in `<file>.rotating`
//! for an operator to move into place; the error says so.
//!
//! The other instances: their open admin connections stay logged in, and
//! their next new one, refused with 28P01, reads the file again (and
//! `<file>.rotating`, for a login between steps 2 and 3) and logs in with
//! the password that works (`pool.rs`), so no restart is needed where they
//! read the same file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::pool::pending_password_file;
use crate::config::BackendConfig;
use crate::pg::{AdminClient, MintError};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The password does not come from a file rolemint can rewrite.
    #[error("{0}")]
    NotFromFile(&'static str),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting the admin password: {0}")]
    Backend(#[from] MintError),
    #[error(
        "the admin password was changed but {file} could not be replaced ({source}); \
         the new password is in {pending}: move it there before restarting"
    )]
    Rename {
        file: PathBuf,
        pending: PathBuf,
        source: std::io::Error,
    },
    #[error("no random bytes")]
    Random,
}

impl RotateError {
    /// Whether the caller asked for something the config cannot do (400),
    /// rather than something failing (500).
    pub fn is_refusal(&self) -> bool {
        matches!(self, RotateError::NotFromFile(_))
    }
}

/// The file the admin password lives in, or why rotation is refused.
pub fn password_file(backend: &BackendConfig) -> Result<&Path, RotateError> {
    if let Some(file) = &backend.admin_password_file {
        return Ok(file);
    }
    if backend.admin_password_env.is_some() {
        return Err(RotateError::NotFromFile(
            "the admin password comes from an environment variable (backend.admin_password_env), \
             which rolemint cannot rewrite; use backend.admin_password_file to rotate it",
        ));
    }
    Err(RotateError::NotFromFile(
        "the admin password is inline in the config (backend.admin_password), where a new one \
         would be lost on restart; use backend.admin_password_file to rotate it",
    ))
}

/// The `pg_advisory_lock` key of root rotation: the bytes of "rmrotate".
pub const ROTATE_LOCK_KEY: i64 = i64::from_be_bytes(*b"rmrotate");

/// Rotates the admin password as the module doc says.
pub async fn rotate_admin(
    admin_client: &AdminClient,
    backend: &BackendConfig,
) -> Result<(), RotateError> {
    let file = password_file(backend)?;
    // Held until dropped at the end: closing the connection releases it.
    let lock = admin_client
        .pool
        .connect(&admin_client.admin_database)
        .await?;
    run(
        admin_client,
        &lock,
        &format!("SELECT pg_catalog.pg_advisory_lock({ROTATE_LOCK_KEY})"),
    )
    .await?;
    let password = new_password()?;
    let verifier = Secret::new(postgres_protocol::password::scram_sha_256(
        password.expose().as_bytes(),
    ));
    let pending = pending_password_file(file);
    write_synced(&pending, password.expose()).map_err(|source| RotateError::Write {
        path: pending.clone(),
        source,
    })?;
    let alter = format!(
        "ALTER ROLE CURRENT_USER PASSWORD {}",
        postgres_protocol::escape::escape_literal(verifier.expose())
    );
    if let Err(e) = run(admin_client, &lock, &alter).await {
        let _ = std::fs::remove_file(&pending);
        return Err(e.into());
    }
    admin_client.use_admin_password(&password);
    std::fs::rename(&pending, file)
        .and_then(|()| sync_dir(file))
        .map_err(|source| RotateError::Rename {
            file: file.to_owned(),
            pending: pending.clone(),
            source,
        })?;
    drop(lock);
    tracing::info!(file = %file.display(), "admin password rotated");
    Ok(())
}

/// One statement on the rotation's own connection, bounded by
/// `mint.statement_timeout` (the server's `statement_timeout` is the same,
/// so a lock wait gives up there too).
async fn run(
    admin_client: &AdminClient,
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<(), MintError> {
    let database = &admin_client.admin_database;
    match tokio::time::timeout(admin_client.statement_timeout, client.batch_execute(sql)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(MintError::query(database, &e)),
        Err(_) => Err(MintError::Timeout {
            what: "rotating the admin password",
            database: database.clone(),
            after: admin_client.statement_timeout,
        }),
    }
}

/// 256 random bits, base64url: the same strength as a minted role's.
fn new_password() -> Result<Secret, RotateError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RotateError::Random)?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ))
}

fn write_synced(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Makes the rename durable.
fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_lock_is_not_the_sweep_lock() {
        assert_eq!(&ROTATE_LOCK_KEY.to_be_bytes(), b"rmrotate");
        assert_ne!(ROTATE_LOCK_KEY, crate::pg::SWEEP_LOCK_KEY);
    }

    #[test]
    fn only_a_password_file_can_be_rotated() {
        let mut b: BackendConfig = toml::from_str(
            "host = \"h\"\nport = 5432\nadmin_user = \"a\"\nadmin_database = \"postgres\"",
        )
        .unwrap();
        let why = password_file(&b).unwrap_err();
        assert!(why.is_refusal() && why.to_string().contains("inline"));
        b.admin_password_env = Some("PW".into());
        assert!(password_file(&b)
            .unwrap_err()
            .to_string()
            .contains("environment variable"));
        b.admin_password_file = Some("/etc/rolemint/admin".into());
        assert_eq!(password_file(&b).unwrap(), Path::new("/etc/rolemint/admin"));
        assert_eq!(
            pending_password_file(Path::new("/etc/rolemint/admin")),
            Path::new("/etc/rolemint/admin.rotating")
        );
    }
}

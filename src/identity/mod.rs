//! Who is connecting: an identity token in, an [`Identity`] out.
//! (Stub: being written.)

use std::time::{Duration, SystemTime};

use crate::config::AuthConfig;
use crate::secret::Secret;

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The identity claim (`sub` by default).
    pub subject: String,
    /// Groups from the groups claim; empty when absent.
    pub groups: Vec<String>,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("no usable key: {0}")]
    Key(String),
}

/// Checks tokens against the configured issuer keys.
pub struct Verifier {}

impl Verifier {
    pub fn from_config(_auth: &AuthConfig) -> Result<Verifier, IdentityError> {
        todo!()
    }
    pub fn verify(&self, _token: &str) -> Result<Identity, IdentityError> {
        todo!()
    }
}

/// Signs a token with the local issuer key (`rolemint token`, `rolemint dev`).
pub fn issue(
    _auth: &AuthConfig,
    _subject: &str,
    _groups: &[String],
    _ttl: Duration,
) -> Result<Secret, IdentityError> {
    todo!()
}

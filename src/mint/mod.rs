//! Minting and revoking roles. (Stub: being written.)

use std::time::{Duration, SystemTime};

use crate::config::{Config, RoleTemplate};
use crate::identity::Identity;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{0}")]
    Other(String),
}

/// What to mint.
pub struct MintRequest<'a> {
    pub identity: &'a Identity,
    pub template_name: &'a str,
    pub template: &'a RoleTemplate,
    pub database: &'a str,
    pub ttl: Duration,
    pub lease_id: &'a str,
}

/// A role that exists in the database now.
#[derive(Debug, Clone)]
pub struct MintedRole {
    pub name: String,
    /// Plaintext password, kept in memory only for the backend login.
    pub password: Secret,
    pub expires_at: SystemTime,
}

pub struct Minter {}

impl Minter {
    pub fn new(_config: &Config) -> Result<Minter, MintError> {
        todo!()
    }
    pub async fn prepare(&self) -> Result<(), MintError> {
        todo!()
    }
    pub async fn mint(&self, _req: &MintRequest<'_>) -> Result<MintedRole, MintError> {
        todo!()
    }
    pub async fn revoke(
        &self,
        _role: &str,
        _database: &str,
        _template: &RoleTemplate,
    ) -> Result<(), MintError> {
        todo!()
    }
}

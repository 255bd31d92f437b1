//! `[cluster]`: what the instances behind one load balancer share besides
//! the database: the secret that keys the cancel keys' MAC, so any
//! instance can verify a CancelRequest for a session another one holds.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, read_secret_file, ConfigError};
use crate::secret::Secret;

/// `[cluster]`: what the instances behind one load balancer share, besides
/// the database.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Keys the MAC in the cancel keys clients get, so that any instance
    /// can verify a CancelRequest for a session another instance holds.
    /// Unset: cancel keys are known only to the instance that issued them.
    pub secret: Option<Secret>,
    /// The same, read from a file (a mounted Kubernetes Secret).
    pub secret_file: Option<PathBuf>,
}

/// The shortest cluster secret accepted: a MAC key should be as strong as
/// the MAC (SHA-256), and a short one could be guessed offline from one
/// observed cancel key.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 32;

impl ClusterConfig {
    /// A secret long enough to key a MAC; never echoed.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.secret {
            if secret.expose().len() < MIN_CLUSTER_SECRET_BYTES {
                return Err(invalid(format!(
                    "cluster.secret must be at least {MIN_CLUSTER_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn resolve_secret(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = &self.secret_file {
            if self.secret.is_some() {
                return Err(invalid("cluster: set only one of secret, secret_file"));
            }
            self.secret = Some(read_secret_file(file)?);
        }
        Ok(())
    }
}

//! TLS toward clients and toward the backend. (Stub: being written.)

use std::sync::Arc;

use crate::config::BackendConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
}

/// rustls client config for connections to the backend (admin pool and
/// minted-role sessions), per `[backend] tls` / `tls_ca_file`.
pub fn backend_client_config(_backend: &BackendConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    todo!()
}

//! What every session shares: the config, TLS, the token verifier, the
//! minter, the lease registry, the revoker and the cancel keys.
//!
//! It lives apart from the accept loop (`server`) and from the sessions
//! (`session`) so that neither of those needs the other: the server builds
//! a [`Shared`] and hands it to each session it spawns.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelMap;
use crate::config::Config;
use crate::identity::Verifier;
use crate::lease::Leases;
use crate::mint::Minter;
use crate::revoke::Revoker;

/// What every session shares.
pub struct Shared {
    pub config: Config,
    /// TLS for clients; `None` when only plaintext is configured.
    pub client_tls: Option<TlsAcceptor>,
    /// TLS for backend connections; `None` for plaintext.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// Checks identity tokens.
    pub verifier: Verifier,
    /// Creates, renews and drops roles over the admin pool.
    pub minter: Arc<Minter>,
    /// Live leases and their deadlines.
    pub leases: Arc<Leases>,
    /// Where every role goes when its lease is over; retries until done.
    pub revoker: Revoker,
    /// Client-facing cancel keys.
    pub cancels: Arc<CancelMap>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Whether a live lease of this instance holds `role`: the question the
    /// reaper asks before it sweeps a role with no backend.
    pub fn holds_role(&self, role: &str) -> bool {
        self.leases.holds_role(role) || self.revoker.is_pending(role)
    }
}

//! What every session shares: the config, TLS, the token verifier, the
//! minter, the lease registry, the revoker and the cancel keys.
//!
//! It lives apart from the accept loop (`server`) and from the sessions
//! (`session`) so that neither of those needs the other: the server builds
//! a [`Shared`] and hands it to each session it spawns.

use std::sync::Arc;

use dashmap::DashSet;

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
    /// Roles whose mint is in flight on this instance: committed, perhaps,
    /// but not yet registered as a lease. The reaper must not take them for
    /// orphans (a mint slowed by a busy server can outlast a short
    /// `reap_grace`). At most one entry per session slot.
    pub minting: DashSet<String>,
}

impl Shared {
    /// Whether a live lease of this instance holds `role`: the question the
    /// reaper asks before it sweeps a role with no backend.
    pub fn holds_role(&self, role: &str) -> bool {
        self.minting.contains(role) || self.leases.holds_role(role) || self.revoker.is_pending(role)
    }

    /// Marks `role` as being minted here until the returned guard drops
    /// (after the lease is registered, or the failed mint handed to the
    /// revoker).
    pub fn minting(&self, role: &str) -> Minting<'_> {
        self.minting.insert(role.to_owned());
        Minting {
            shared: self,
            role: role.to_owned(),
        }
    }
}

/// See [`Shared::minting`].
pub struct Minting<'a> {
    shared: &'a Shared,
    role: String,
}

impl Drop for Minting<'_> {
    fn drop(&mut self) {
        self.shared.minting.remove(&self.role);
    }
}

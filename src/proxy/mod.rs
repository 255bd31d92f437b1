//! The data path: [`server`] (the accept loop, graceful shutdown, and the
//! start of the background tasks), [`admission`] (the handshake and
//! session limits, and the waiting room), [`session`]
//! (one client connection top to bottom), [`cancel`] (cancel keys, local
//! and cluster-wide), [`relay_threads`] (where sessions are spliced in
//! user space) and [`sockmap`] (the kernel splice).
//!
//! Owns every byte between a client and rolemint. Must not build SQL or
//! decide policy: it asks `auth` whether, `lease`/`pg` for a role, and
//! splices.

pub mod admission;
pub mod cancel;
pub mod relay_threads;
pub mod server;
pub mod session;
pub mod sockmap;

use std::sync::Arc;

use crate::runtime::state::Shared;

/// What the proxy's sessions share: [`Shared`] (what every door shares),
/// and the parts only the data path uses. Built by
/// [`server::Server::bind`]; each session gets it.
pub struct Proxy {
    /// The services every session and request shares.
    pub shared: Arc<Shared>,
    /// Client-facing cancel keys.
    pub cancels: Arc<cancel::CancelMap>,
    /// The kernel splice, when `proxy.kernel_splice` is on and BPF is
    /// permitted here.
    pub sockmap: Option<sockmap::Sockmap>,
    /// The threads that splice sessions in user space.
    pub relays: relay_threads::RelayThreads,
}

//! The way in. Every accepted connection takes a handshake slot (one of
//! `proxy.max_handshakes`, and one of its source's
//! `proxy.max_handshakes_per_source`) before its first byte is read, and
//! a session slot (`proxy.max_connections`) only once it has said who it
//! is (see [`crate::proxy::session::run`]), so idle sockets never hold
//! one.
//!
//! Over the limits a connection waits rather than meeting a closed
//! socket (an application host's reconnect storm is legitimate): over the
//! global limit in the kernel's accept queue, over its source's share in
//! a bounded waiting room, off the accept loop. Every wait ends within
//! `proxy.handshake_timeout`.
//!
//! Owns the limits only: [`crate::proxy::server`] accepts and spawns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::source::{SourceSlot, SourceSlots};
use crate::config::ProxyConfig;

/// Connections waiting for their source's handshake share, per handshake
/// slot: a storm of one host (1,000 clients at once against the default
/// 256 slots) waits instead of meeting closed sockets, and the room stays
/// bounded.
const WAITING_ROOM_FACTOR: usize = 4;

/// A connection's place among the handshakes in flight: one of
/// `proxy.max_handshakes`, and one of its source's
/// `proxy.max_handshakes_per_source`.
pub struct HandshakeSlot {
    pub _global: OwnedSemaphorePermit,
    pub _source: SourceSlot,
}

/// The two limits a connection passes through.
pub struct Admission {
    /// Held from accept until the token has been read: handshakes in flight
    /// are bounded by `proxy.max_handshakes` (and per source), apart from
    /// sessions.
    pub handshake: HandshakeSlot,
    /// Session slots (`proxy.max_connections`): one is taken only once the
    /// client has said who it is, so idle sockets never hold one.
    pub sessions: Arc<Semaphore>,
}

/// What becomes of a connection the accept loop asks about.
pub enum Entry {
    /// In, with its handshake slot.
    Admitted(Admission),
    /// Over its source's share, with a seat in the waiting room: it waits
    /// off the accept loop ([`Gate::wait`]).
    Wait(OwnedSemaphorePermit),
    /// Closed: the waiting room is full, or no slot came in time.
    Closed,
    /// Shutdown began while the accept loop waited for a slot.
    ShuttingDown,
}

/// The limits, shared by the accept loop and the connections waiting.
#[derive(Clone)]
pub struct Gate {
    /// `proxy.max_handshakes`.
    handshakes: Arc<Semaphore>,
    /// `proxy.max_handshakes_per_source`.
    sources: Arc<SourceSlots>,
    /// Connections over their source's share wait here.
    waiting_room: Arc<Semaphore>,
    /// `proxy.max_connections`, taken by the session itself.
    sessions: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl Gate {
    pub fn new(proxy: &ProxyConfig) -> Gate {
        Gate {
            handshakes: Arc::new(Semaphore::new(proxy.max_handshakes)),
            sources: SourceSlots::new(proxy.max_handshakes_per_source),
            waiting_room: Arc::new(Semaphore::new(
                proxy.max_handshakes.saturating_mul(WAITING_ROOM_FACTOR),
            )),
            sessions: Arc::new(Semaphore::new(proxy.max_connections)),
            handshake_timeout: proxy.handshake_timeout,
        }
    }

    /// Admits a connection just accepted. One source (an address, an IPv6
    /// /64) cannot take every handshake slot: over its share, it gets a
    /// seat in the waiting room, or is closed when the room is full. Over
    /// the global limit, accepting waits for a slot, and the kernel's
    /// accept queue holds the next connections meanwhile; every slot is
    /// back within one handshake deadline (idle sockets are cut at
    /// theirs), so the wait is bounded by it; past it the connection is
    /// closed.
    pub async fn enter(&self, peer: SocketAddr, shutdown: &CancellationToken) -> Entry {
        let Some(source) = self.sources.try_take(peer.ip()) else {
            let Ok(seat) = Arc::clone(&self.waiting_room).try_acquire_owned() else {
                tracing::debug!(%peer, "too many handshakes from this source and the waiting room is full: connection closed");
                return Entry::Closed;
            };
            return Entry::Wait(seat);
        };
        let global = match Arc::clone(&self.handshakes).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = tokio::time::timeout(
                    self.handshake_timeout,
                    Arc::clone(&self.handshakes).acquire_owned(),
                );
                let waited = tokio::select! {
                    _ = shutdown.cancelled() => return Entry::ShuttingDown,
                    waited = wait => waited,
                };
                match waited {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        tracing::debug!(%peer, "no handshake slot within the handshake timeout: connection closed");
                        return Entry::Closed;
                    }
                }
            }
        };
        Entry::Admitted(self.admission(global, source))
    }

    /// A connection in the waiting room, off the accept loop: waits for
    /// one of its own source's slots and a handshake slot, holding no
    /// handshake slot meanwhile. `None` (closed) past the handshake
    /// timeout.
    pub async fn wait(&self, peer: SocketAddr, seat: OwnedSemaphorePermit) -> Option<Admission> {
        let admitted = tokio::time::timeout(self.handshake_timeout, async {
            let source = self.sources.take(peer.ip()).await;
            let global = Arc::clone(&self.handshakes).acquire_owned().await.ok()?;
            Some((source, global))
        })
        .await;
        drop(seat);
        let Ok(Some((source, global))) = admitted else {
            tracing::debug!(%peer, "no handshake slot of its source within the handshake timeout: connection closed");
            return None;
        };
        Some(self.admission(global, source))
    }

    fn admission(&self, global: OwnedSemaphorePermit, source: SourceSlot) -> Admission {
        Admission {
            handshake: HandshakeSlot {
                _global: global,
                _source: source,
            },
            sessions: Arc::clone(&self.sessions),
        }
    }
}

//! The accept loop. (Stub: being written.)

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// A bound, not yet running proxy.
pub struct Server {
    #[allow(dead_code)]
    config: Arc<Config>,
    listener: TcpListener,
}

impl Server {
    /// Binds `proxy.listen`, builds TLS and the minter, and prepares the
    /// backend (marker role). Fails fast on a bad cert or unreachable backend.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.proxy.listen).await?;
        Ok(Server { config: Arc::new(config), listener })
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains sessions for
    /// `proxy.shutdown_grace`, ends the rest and revokes every lease.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        shutdown.cancelled().await;
        Ok(())
    }
}

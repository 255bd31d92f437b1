//! The accept loop, the connection limit and graceful shutdown.
//!
//! [`Server::bind`] does everything that can fail before a client is
//! accepted (certificates, keys, the backend and its marker role), so a bad
//! config stops `rolemint serve` at once instead of failing every session.
//! [`Server::run`] accepts until told to stop, then drains: sessions get
//! `proxy.shutdown_grace` to finish, after which their leases are ended (the
//! clients get 57P01) and every role is revoked before `run` returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelMap;
use crate::config::Config;
use crate::identity::Verifier;
use crate::lease::{EndReason, Leases};
use crate::mint::Minter;

/// Refusal tasks allowed at once beyond `max_connections`: enough to tell
/// a burst of clients why, bounded so a flood cannot grow memory.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Longest wait for revocations once sessions have been ended at shutdown.
const REVOKE_AT_SHUTDOWN: Duration = Duration::from_secs(60);

/// What every session shares.
pub struct Shared {
    pub config: Config,
    /// TLS for clients; `None` when only plaintext is configured.
    pub client_tls: Option<TlsAcceptor>,
    /// TLS for backend connections; `None` for plaintext.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// Checks identity tokens.
    pub verifier: Verifier,
    /// Creates and drops roles over the admin pool.
    pub minter: Minter,
    /// Live leases and their deadlines.
    pub leases: Arc<Leases>,
    /// Client-facing cancel keys.
    pub cancels: Arc<CancelMap>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
}

/// A bound, not yet running proxy.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// The admin HTTP listener, when `[admin] listen` is set.
    admin: Option<crate::admin::AdminListener>,
    /// The audit log (`[audit] path`), shared with the admin API.
    audit: crate::audit::Audit,
}

impl Server {
    /// Binds `proxy.listen`, loads TLS material and keys, and prepares the
    /// backend (creates the marker role if missing).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        crate::tls::install_crypto_provider();
        let client_tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsAcceptor::from(crate::tls::server_config(cert, key)?))
            }
            _ => None,
        };
        let backend_tls = crate::tls::backend_client_config(&config.backend)?;
        let verifier = Verifier::from_config(&config.auth)?;
        let minter = Minter::new(&config)?;
        minter.prepare().await.with_context(|| {
            format!(
                "preparing the backend at {}:{} as {}",
                config.backend.host, config.backend.port, config.backend.admin_user
            )
        })?;
        let listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("binding {}", config.proxy.listen))?;
        let (admin, audit) = crate::admin::wiring::bind(&config).await?;
        let shared = Arc::new(Shared {
            config,
            client_tls,
            backend_tls,
            verifier,
            minter,
            leases: Arc::new(Leases::default()),
            cancels: Arc::new(CancelMap::default()),
            shutdown: CancellationToken::new(),
        });
        Ok(Server {
            shared,
            listener,
            admin,
            audit,
        })
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.proxy.listen)
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// The audit log.
    pub fn audit(&self) -> crate::audit::Audit {
        self.audit.clone()
    }

    /// The shared state, for tests and the admin API.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until `shutdown` is cancelled, then drains and revokes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Server {
            shared,
            listener,
            admin,
            audit,
        } = self;
        let admin = crate::admin::wiring::start(admin, &shared, audit, &shutdown);
        let sessions = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(shared.config.proxy.max_connections));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
        // TTLs keep running while sessions drain, so the expiry task has its own stop.
        let expiry_stop = CancellationToken::new();
        let expiry = tokio::spawn(Arc::clone(&shared.leases).run_expiry(expiry_stop.clone()));
        tracing::info!(listen = %listener.local_addr()?, "rolemint accepting connections");

        let mut backoff = Duration::from_millis(10);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => { backoff = Duration::from_millis(10); conn }
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather
                        // than spin, and keep serving the sessions we have.
                        tracing::error!("accept failed: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let permit = match Arc::clone(&limit).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => match Arc::clone(&refusals).try_acquire_owned() {
                    // Told why by the session; the refusal permit lives as
                    // long as that takes.
                    Ok(refusal) => {
                        let shared = Arc::clone(&shared);
                        sessions.spawn(async move {
                            crate::session::run(shared, tcp, peer, None).await;
                            drop(refusal);
                        });
                        continue;
                    }
                    Err(_) => continue, // dropped: the flood gets a closed socket
                },
            };
            sessions.spawn(crate::session::run(Arc::clone(&shared), tcp, peer, permit));
        }

        drop(listener);
        sessions.close();
        shared.shutdown.cancel();
        let grace = shared.config.proxy.shutdown_grace;
        tracing::info!(
            sessions = shared.leases.len(),
            "shutting down: draining sessions for up to {grace:?}"
        );
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            tracing::info!(
                sessions = shared.leases.len(),
                "grace period over: ending sessions"
            );
            shared.leases.end_all(EndReason::Shutdown);
            if tokio::time::timeout(REVOKE_AT_SHUTDOWN, sessions.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    leases = shared.leases.len(),
                    "revocations still running at exit; the reaper will drop what is left"
                );
            }
        }
        expiry_stop.cancel();
        let _ = expiry.await;
        admin.stop().await;
        tracing::info!("rolemint stopped");
        Ok(())
    }
}

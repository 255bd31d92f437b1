//! The accept loop, the connection limit and graceful shutdown.
//!
//! [`Server::bind`] does everything that can fail before a client is
//! accepted (certificates, keys, the backend and its marker role), so a bad
//! config stops `rolemint serve` at once instead of failing every session.
//! [`Server::run`] accepts until told to stop, then drains: sessions get
//! `proxy.shutdown_grace` to finish, after which their leases are ended (the
//! clients get 57P01); then the revoker gets `proxy.shutdown_revoke_timeout`
//! to finish every revocation, and what it could not is counted at ERROR
//! and left to the reaper of the next start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lease::end::EndReason;
use crate::lease::registry::Leases;
use crate::lease::revoker::Revoker;
use crate::pg::AdminClient;
use crate::proxy::admission::{Entry, Gate};
use crate::proxy::cancel::CancelMap;
use crate::proxy::relay_threads::RelayThreads;
use crate::proxy::Proxy;
use crate::runtime::state::{Runtime, Shared};

/// Longest wait, once sessions have been told their leases ended at
/// shutdown, for them to close (each is bounded by its own short write
/// timeouts; this is the backstop).
const SESSIONS_AFTER_END: Duration = Duration::from_secs(15);

/// A bound, not yet running proxy.
pub struct Server {
    proxy: Arc<Proxy>,
    listener: TcpListener,
    /// The admin HTTP listener, when `[admin] listen` is set.
    admin: Option<crate::control::AdminListener>,
    /// The audit log (`[audit] path`), shared with the admin API.
    audit: crate::observe::audit::Audit,
}

/// The sockmap of `proxy.kernel_splice`, or why sessions stay in user space.
fn kernel_splice(config: &Config) -> Option<crate::proxy::sockmap::Sockmap> {
    if !config.proxy.kernel_splice {
        return None;
    }
    let sessions = u32::try_from(config.proxy.max_connections).unwrap_or(u32::MAX);
    match crate::proxy::sockmap::Sockmap::new(sessions) {
        Ok(map) => {
            tracing::info!("kernel splice on: plaintext sessions are forwarded by a BPF sockmap");
            Some(map)
        }
        Err(e) => {
            tracing::warn!("kernel_splice is set, but {e}; sessions are relayed in user space");
            None
        }
    }
}

impl Server {
    /// Binds `proxy.listen`, loads TLS material and keys, and prepares the
    /// backend (creates the marker role if missing).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        crate::tls::install_crypto_provider();
        let runtime = Runtime::build(config.clone())?;
        let backend_tls = crate::tls::backend_client_config(&config.backend)?;
        if let Some(warning) = crate::tls::backend_tls_warning(&config.backend) {
            tracing::warn!("{warning}");
        }
        let admin_client = Arc::new(AdminClient::new(&config)?);
        admin_client.prepare().await.with_context(|| {
            format!(
                "preparing the backend at {}:{} as {}",
                config.backend.host, config.backend.port, config.backend.admin_user
            )
        })?;
        // rolemint's own schema: created or migrated, and read once, before
        // the first session. A failure (the admin may lack CREATE on the
        // database) does not stop the proxy: config templates work without
        // it, and the store's task keeps trying.
        let store = crate::store::Store::new(Arc::clone(&admin_client));
        if let Err(e) = store.open().await {
            tracing::error!("{e}");
        }
        let runtime = crate::runtime::templates::merged(&runtime, &store.snapshot());
        let listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("binding {}", config.proxy.listen))?;
        let (admin, audit) = crate::control::wiring::bind(&config).await?;
        let revoker = Revoker::start_audited(Arc::clone(&admin_client), &config, audit.clone());
        revoker.update_templates(&crate::runtime::templates::revocable(&store.snapshot()));
        revoker.update_templates(&runtime.config.roles);
        runtime.start();
        let cancels = Arc::new(CancelMap::new(&config));
        let sockmap = kernel_splice(&config);
        let quotas =
            crate::lease::quota::Quotas::new(crate::lease::quota::Limits::from_config(&config));
        let shared = Arc::new(Shared {
            config,
            runtime: ArcSwap::from_pointee(runtime),
            backend_tls,
            admin_client,
            revoker: Arc::new(revoker),
            leases: Arc::new(Leases::default()),
            audit: audit.clone(),
            shutdown: CancellationToken::new(),
            quotas,
            minting: Default::default(),
            warm: Default::default(),
            store,
            policy_cache: Default::default(),
        });
        let relays = RelayThreads::start().context("starting the relay threads")?;
        let proxy = Arc::new(Proxy {
            shared,
            cancels,
            sockmap,
            relays,
        });
        Ok(Server {
            proxy,
            listener,
            admin,
            audit,
        })
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.proxy.shared.config.proxy.listen)
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// The audit log.
    pub fn audit(&self) -> crate::observe::audit::Audit {
        self.audit.clone()
    }

    /// The shared state, for tests and the admin API.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.proxy.shared)
    }

    /// What the proxy's sessions share (cancel keys, the kernel splice),
    /// for tests.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.proxy)
    }

    /// Serves until `shutdown` is cancelled, then drains and revokes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Server {
            proxy,
            listener,
            admin,
            audit,
        } = self;
        let shared = Arc::clone(&proxy.shared);
        let admin = crate::control::wiring::start(admin, &shared, audit, &shutdown);
        let background = Background::start(&shared);
        tracing::info!(listen = %listener.local_addr()?, "rolemint accepting connections");
        let sessions = TaskTracker::new();
        accept(&proxy, &listener, &sessions, &shutdown).await;
        drop(listener);
        sessions.close();
        shared.shutdown.cancel();
        drain(&shared, &sessions).await;
        background.stop(&shared).await;
        admin.stop().await;
        tracing::info!("rolemint stopped");
        Ok(())
    }
}

/// Accepts until `shutdown` is cancelled, each connection through the
/// [`Gate`], each session on a task of `sessions`.
async fn accept(
    proxy: &Arc<Proxy>,
    listener: &TcpListener,
    sessions: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let gate = Gate::new(&proxy.shared.config.proxy);
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
        match gate.enter(peer, shutdown).await {
            Entry::Admitted(admission) => {
                let proxy = Arc::clone(proxy);
                sessions.spawn(crate::proxy::session::run(proxy, tcp, peer, admission));
            }
            Entry::Wait(seat) => {
                let (proxy, gate) = (Arc::clone(proxy), gate.clone());
                sessions.spawn(async move {
                    if let Some(admission) = gate.wait(peer, seat).await {
                        crate::proxy::session::run(proxy, tcp, peer, admission).await;
                    }
                });
            }
            Entry::Closed => {}
            Entry::ShuttingDown => break,
        }
    }
}

/// Gives the sessions `proxy.shutdown_grace` to finish, then ends their
/// leases (the clients get 57P01); sessions that still do not close in
/// time get their roles handed to the revoker here.
async fn drain(shared: &Shared, sessions: &TaskTracker) {
    let grace = shared.config.proxy.shutdown_grace;
    tracing::info!(
        sessions = shared.leases.len(),
        "shutting down: draining sessions for up to {grace:?}"
    );
    if tokio::time::timeout(grace, sessions.wait()).await.is_ok() {
        return;
    }
    tracing::info!(
        sessions = shared.leases.len(),
        "grace period over: ending sessions"
    );
    shared.leases.end_all(EndReason::Shutdown);
    if tokio::time::timeout(SESSIONS_AFTER_END, sessions.wait())
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        leases = shared.leases.len(),
        "sessions still closing; revoking their roles anyway"
    );
    // Those sessions hand their roles over as they go; these are their
    // roles, in case they do not get that far.
    for lease in shared.leases.list() {
        shared.revoker.schedule_lease(
            &lease.id,
            &lease.role,
            &lease.database,
            Some(&lease.template),
            EndReason::Shutdown,
        );
    }
}

/// The tasks beside the sessions: lease expiry, the reaper, the store's
/// follower, the templates' follower and the warm pool's filler.
struct Background {
    /// TTLs keep running while sessions drain, so the expiry task (and
    /// the reaper) have their own stop.
    expiry_stop: CancellationToken,
    expiry: tokio::task::JoinHandle<()>,
    /// Stops with the shared shutdown token, handing every unclaimed
    /// pooled role to the revoker; awaited before the revoker drains.
    warm: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(shared: &Arc<Shared>) -> Background {
        let expiry_stop = CancellationToken::new();
        let expiry = tokio::spawn(
            Arc::clone(&shared.leases)
                .run_expiry_checked(Some(recorded_expiry(shared)), expiry_stop.clone()),
        );
        tokio::spawn(Arc::clone(shared).run_reaper(expiry_stop.clone()));
        shared.store.start(shared.shutdown.clone());
        tokio::spawn(crate::runtime::templates::follow(Arc::clone(shared)));
        let warm = tokio::spawn(run_warm_pool(Arc::clone(shared)));
        Background {
            expiry_stop,
            expiry,
            warm,
        }
    }

    /// Once the sessions are gone: the warm pool stops, the revoker gets
    /// `proxy.shutdown_revoke_timeout` to finish every revocation (what it
    /// could not is counted at ERROR and left to the reaper of the next
    /// start), then expiry and the reaper stop.
    async fn stop(self, shared: &Shared) {
        // Bounded inside (its fills have their own timeouts); this is the
        // backstop.
        if tokio::time::timeout(SESSIONS_AFTER_END * 4, self.warm)
            .await
            .is_err()
        {
            tracing::warn!("warm pool did not stop in time; the reaper drops what it left");
        }
        let within = shared.config.proxy.shutdown_revoke_timeout;
        let left = shared.revoker.drain(within).await;
        if left > 0 {
            tracing::error!(
                roles = left,
                "exiting with {left} role(s) not revoked after {within:?}; they stay marked \
                 rolemint_managed and the reaper of the next start drops them"
            );
        }
        shared.revoker.stop();
        self.expiry_stop.cancel();
        let _ = self.expiry.await;
    }
}

/// The warm pool's filler (`warm_pool.rs`) over this server's state, with
/// the templates read from the current runtime at every round.
async fn run_warm_pool(shared: Arc<Shared>) {
    let wants = || crate::lease::warm_pool::wants(&shared.runtime().config);
    crate::lease::warm_pool::Filler {
        pool: &shared.warm,
        admin_client: &shared.admin_client,
        revoker: &shared.revoker,
        config: &shared.config,
        backend_tls: shared.backend_tls.as_ref(),
        wants: &wants,
        stop: &shared.shutdown,
    }
    .run()
    .await
}

/// How the expiry task reads a lease's expiry from the catalog before it
/// ends the lease: another instance may have renewed it. Bounded by the
/// admin operation timeout; an error or timeout reads as "no later expiry",
/// so the lease ends on time.
fn recorded_expiry(shared: &Arc<Shared>) -> crate::lease::registry::RecordedExpiry {
    let admin_client = Arc::clone(&shared.admin_client);
    let timeout = shared.config.admin_operation_timeout();
    Arc::new(move |lease| {
        let admin_client = Arc::clone(&admin_client);
        Box::pin(async move {
            match tokio::time::timeout(timeout, admin_client.recorded_expiry(&lease.role)).await {
                Ok(Ok(expiry)) => expiry,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %lease.id, "reading the lease's recorded expiry failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(lease = %lease.id, "reading the lease's recorded expiry timed out");
                    None
                }
            }
        })
    })
}

//! How the server starts and stops the admin listener and the audit log:
//! the one place that knows both the server's shared state and the admin
//! API, so `server.rs` needs two calls.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::directory::RegistryDirectory;
use super::health::Probe;
use super::leases::LeaseDirectory;
use super::{AdminListener, AdminState, BoxFuture};
use crate::config::Config;
use crate::observe::audit::{Audit, Target};
use crate::runtime::state::Shared;

/// Opens the audit log and binds the admin listener (when configured), so
/// a bad path or a taken port stops startup.
pub async fn bind(config: &Config) -> anyhow::Result<(Option<AdminListener>, Audit)> {
    crate::observe::metrics::handle();
    let audit = match &config.audit.path {
        Some(path) => Audit::open(Target::from_config(path))
            .context("opening the audit log")?
            .with_pre_auth_limit(config.audit.pre_auth_lines_per_second),
        None => Audit::disabled(),
    };
    let admin = AdminListener::from_config(config).await?;
    if let Some(admin) = &admin {
        tracing::info!(listen = %admin.local_addr(), "admin listener on");
    }
    Ok((admin, audit))
}

/// The admin listener while it runs.
pub struct Running {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops the listener, letting requests in flight finish.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("admin listener failed: {e}"),
                Err(e) => tracing::error!("admin listener task failed: {e}"),
            }
        }
    }
}

/// Starts serving `admin` (if any). `shutdown` is the server's: when it is
/// cancelled `/readyz` turns 503, while the listener itself serves until
/// [`Running::stop`], after the drain.
pub fn start(
    admin: Option<AdminListener>,
    shared: &Arc<Shared>,
    audit: Audit,
    shutdown: &CancellationToken,
) -> Running {
    let stop = CancellationToken::new();
    let task = admin.map(|listener| {
        let mut state = AdminState::from_config(
            &shared.config,
            Arc::new(SharedProbe(Arc::clone(shared))),
            directory(shared),
            audit,
            shutdown.clone(),
        );
        state.webhook = match super::webhook::Webhook::from_config(&shared.config.access) {
            Ok(hook) => hook,
            Err(e) => {
                tracing::error!("access webhook off: {e}");
                None
            }
        };
        state.people = Some(Arc::new(super::people::People {
            shared: Arc::clone(shared),
        }));
        if shared.config.vault.enabled {
            let door = Arc::new(super::door::VaultDoor::new(Arc::clone(shared)));
            // Expired tokens go, with their children and leases, while the
            // server runs.
            tokio::spawn(super::door::tokens::sweep(
                door.tokens.clone(),
                Arc::clone(&state.directory),
                shutdown.clone(),
            ));
            state.policies = Arc::new(super::door::policy::StoredPolicies(shared.store.clone()));
            state.vault = Some(door);
        }
        tokio::spawn(super::serve(listener, state, stop.clone()))
    });
    Running { stop, task }
}

/// The lease directory the API acts on: this instance's registry and the
/// catalog of every instance.
pub fn directory(shared: &Arc<Shared>) -> Arc<dyn LeaseDirectory> {
    Arc::new(RegistryDirectory::new(Arc::clone(shared)))
}

/// Readiness through the server's admin pool.
struct SharedProbe(Arc<Shared>);

impl Probe for SharedProbe {
    fn ping<'a>(&'a self, database: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Probe::ping(&*self.0.admin_client, database)
    }
    fn managed_roles(&self) -> BoxFuture<'_, Result<u64, String>> {
        Probe::managed_roles(&*self.0.admin_client)
    }
}

//! Keeping the snapshot current on every instance.
//!
//! One connection of its own runs `LISTEN rolemint_store`; every write
//! notifies in its own transaction, so another instance hears of it as it
//! commits and re-reads the kinds whose generation moved. A lost
//! connection is reopened with backoff (1 s doubling to 10 s), and the
//! store re-read once it listens again (what was written meanwhile). As
//! the fallback for anything a notification could miss (a proxy between
//! rolemint and PostgreSQL that drops them, a connection half-open), the
//! generations (one row per kind) are compared every
//! [`PERIODIC_CHECK`] anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Store, CHANNEL};

/// How often the generations are compared without a notification.
pub const PERIODIC_CHECK: Duration = Duration::from_secs(3);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs until `shutdown`.
pub(super) async fn run(store: Store, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let wake = Arc::new(Notify::new());
        let listening = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = listen(&store, Arc::clone(&wake)) => l,
        };
        let client = match listening {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("store: cannot listen for changes ({e}); retrying in {backoff:?}");
                // Still read by polling while LISTEN fails.
                refresh(&store, &shutdown).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        tracing::debug!("store: listening for changes");
        // Listening from here on: what was written before is read now.
        refresh(&store, &shutdown).await;
        let mut tick = tokio::time::interval(PERIODIC_CHECK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {
                    if client.is_closed() {
                        tracing::warn!("store: the listening connection was lost; reconnecting");
                        break;
                    }
                    refresh(&store, &shutdown).await;
                }
                _ = tick.tick() => refresh(&store, &shutdown).await,
            }
        }
    }
}

/// The migrations (if not yet run), then a connection listening on [`CHANNEL`].
async fn listen(
    store: &Store,
    wake: Arc<Notify>,
) -> Result<tokio_postgres::Client, super::StoreError> {
    store.ensure_schema().await?;
    Ok(store.inner.admin.listen(CHANNEL, wake).await?)
}

/// One re-read of the kinds that changed; a failure is logged (the next
/// notification or tick tries again).
async fn refresh(store: &Store, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = store.refresh() => if let Err(e) = r {
            tracing::warn!("store: re-reading failed: {e}");
        }
    }
}

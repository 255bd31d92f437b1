//! A CancelRequest: forwarded to the backend whose key this instance
//! issued, verified against the database when another instance of the
//! cluster issued it, and otherwise ignored, as PostgreSQL does. The keys
//! themselves are [`crate::proxy::cancel`]'s.

use std::net::SocketAddr;

use super::refuse::CLOSE_TIMEOUT;
use crate::pg::backend::{self, CancelSecret};
use crate::proxy::Proxy;
use crate::tls::ClientStream;

/// Forwards a CancelRequest whose key is ours (any other is ignored, as
/// PostgreSQL does), then closes the client's connection. A cancel that came
/// inside TLS (libpq 17 sends it so) is closed with close_notify: libpq
/// reads an EOF without it as an SSL error and reports the cancel failed.
pub(super) async fn cancel(
    proxy: &Proxy,
    mut stream: ClientStream,
    process_id: i32,
    secret: CancelSecret,
    peer: SocketAddr,
) {
    let shared = &*proxy.shared;
    match proxy.cancels.lookup(process_id, &secret) {
        None if proxy.cancels.holds(process_id) => {
            tracing::debug!(%peer, "cancel request with a wrong key for our session ignored");
            crate::observe::metrics::cancel_request("unknown");
            proxy.cancels.verify_failed(peer.ip());
        }
        None => cancel_elsewhere(proxy, process_id, &secret, peer).await,
        Some(key) => {
            let config = &shared.config.backend;
            match backend::cancel(config, shared.backend_tls.as_ref(), key).await {
                Ok(()) => crate::observe::metrics::cancel_request("forwarded"),
                Err(e) => {
                    crate::observe::metrics::cancel_request("failed");
                    tracing::warn!(%peer, "forwarding cancel request failed: {e}");
                }
            }
        }
    }
    // Bounded: a client that does not read cannot hold the task.
    let close = tokio::io::AsyncWriteExt::shutdown(&mut stream);
    if let Err(e) = tokio::time::timeout(CLOSE_TIMEOUT, close).await {
        tracing::debug!(%peer, "closing a cancel connection: {e}");
    }
}

/// A key this instance did not issue: in a cluster, verifies it against the
/// database and cancels through the admin pool (see [`crate::proxy::cancel`]);
/// otherwise, or when it does not verify, ignores it silently, as
/// PostgreSQL does.
async fn cancel_elsewhere(proxy: &Proxy, process_id: i32, secret: &CancelSecret, peer: SocketAddr) {
    let shared = &*proxy.shared;
    let Some(cluster) = proxy.cancels.cluster() else {
        tracing::debug!(%peer, "cancel request with an unknown key ignored");
        crate::observe::metrics::cancel_request("unknown");
        return;
    };
    // Each check costs a query and is a guess at a 32-bit secret: an
    // address that keeps guessing wrong is no longer asked about.
    if process_id <= 0 || !proxy.cancels.may_verify(peer.ip()) {
        tracing::debug!(%peer, "cancel request ignored (invalid pid or rate limited)");
        crate::observe::metrics::cancel_request("unknown");
        return;
    }
    let admin_client = &shared.admin_client;
    let verify_and_cancel = async {
        let Some(role) = admin_client.minted_backend_role(process_id).await? else {
            return Ok(None);
        };
        if !cluster.verify(process_id, &role, secret) {
            return Ok(None);
        }
        admin_client
            .cancel_backend(process_id, &role)
            .await
            .map(Some)
    };
    match tokio::time::timeout(shared.config.admin_operation_timeout(), verify_and_cancel).await {
        Ok(Ok(Some(signalled))) => {
            crate::observe::metrics::cancel_request("forwarded");
            tracing::debug!(%peer, process_id, signalled, "cluster cancel key verified")
        }
        Ok(Ok(None)) => {
            crate::observe::metrics::cancel_request("unknown");
            proxy.cancels.verify_failed(peer.ip());
            tracing::debug!(%peer, "cancel request with an unknown key ignored");
        }
        Ok(Err(e)) => {
            crate::observe::metrics::cancel_request("failed");
            tracing::warn!(%peer, "cancelling through the admin pool failed: {e}")
        }
        Err(_) => {
            crate::observe::metrics::cancel_request("failed");
            tracing::warn!(%peer, "cancelling through the admin pool timed out")
        }
    }
}

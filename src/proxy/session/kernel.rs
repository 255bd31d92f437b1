//! A session spliced in the kernel (`proxy.kernel_splice`, `sockmap/`):
//! both legs plaintext TCP, handed to the sockmap before the client gets its
//! first ReadyForQuery, so that every byte after it is forwarded by the
//! kernel.
//!
//! What stays as in user space, and how:
//! - **The session ends when either side hangs up**, watched by
//!   [`HangUp`], which does not wake for the traffic.
//! - **A lease that ends** (TTL, revocation, shutdown) terminates the
//!   backend with `pg_terminate_backend`: rolemint does not see message
//!   boundaries here, PostgreSQL does, and its FATAL (57P01, the SQLSTATE
//!   rolemint's own lease-end FATAL carries) reaches the client through the
//!   kernel. The role is then revoked as for any session.
//! - **Nothing in flight is lost at the end**: before the pair leaves the
//!   map, [`settle`] waits (bounded) until each socket has sent on
//!   everything its peer received, counted by TCP (`TCP_INFO` and
//!   `SIOCOUTQ`).
//! - **Byte counts** are what TCP received on each leg while spliced.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio::time::Instant;

use super::relay::{End, Traffic};
use crate::lease::registry::Lease;
use crate::proxy::sockmap::{HangUp, Side, Sockmap, Spliced};
use crate::runtime::state::Shared;
use crate::tls::{BackendStream, ClientStream, MaybeTls};

/// Longest wait, once a lease has ended, for the terminated backend to
/// hang up (its FATAL forwarded); after it both legs are closed anyway.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait at the end for the kernel to forward what it still holds.
const SETTLE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a spliced session's byte counts reach its lease (a lookup
/// is at most this stale).
const LIVE_TRAFFIC_EVERY: Duration = Duration::from_secs(1);

/// A pair in the sockmap, and what was written to the client by rolemint
/// itself since (the forwarded startup), which TCP counts too.
pub struct Splice<'m> {
    spliced: Spliced<'m>,
    fds: (RawFd, RawFd),
    written_at_start: (u64, u64),
    ours_to_client: u64,
}

/// Puts the pair in the sockmap, when both legs are plaintext and nothing
/// of the backend's is waiting to be forwarded; `None` keeps the session in
/// user space.
pub fn begin<'m>(
    map: &'m Sockmap,
    client: &ClientStream,
    backend: &BackendStream,
    backend_leftover: usize,
) -> Option<Splice<'m>> {
    let (MaybeTls::Plain(c), MaybeTls::Plain(b)) = (client, backend) else {
        return None;
    };
    if backend_leftover > 0 {
        return None;
    }
    let fds = (c.as_raw_fd(), b.as_raw_fd());
    let written_at_start = (written(fds.0), written(fds.1));
    match map.splice(fds.0, fds.1) {
        Ok(spliced) => Some(Splice {
            spliced,
            fds,
            written_at_start,
            ours_to_client: 0,
        }),
        Err(e) => {
            tracing::debug!("relayed in user space: {e}");
            None
        }
    }
}

impl Splice<'_> {
    /// rolemint wrote `n` bytes to the client itself (the startup).
    pub fn wrote_to_client(&mut self, n: usize) {
        self.ours_to_client += n as u64;
    }

    /// Watches the pair until the session ends; closes both legs.
    pub async fn run(
        self,
        shared: &Shared,
        client: ClientStream,
        backend: BackendStream,
        lease: &Lease,
        backend_pid: i32,
    ) -> (End, Traffic) {
        let (MaybeTls::Plain(client), MaybeTls::Plain(backend)) = (client, backend) else {
            return (End::Failed, Traffic::default());
        };
        // Out of tokio's reactor, which would wake for every segment.
        let (Ok(client), Ok(backend)) = (client.into_std(), backend.into_std()) else {
            return (End::Failed, Traffic::default());
        };
        let hangup = match HangUp::new(client.as_raw_fd(), backend.as_raw_fd()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(lease = %lease.id, "kernel splice watch failed: {e}");
                return (End::Failed, Traffic::default());
            }
        };
        tracing::debug!(lease = %lease.id, "session spliced in the kernel");
        crate::observe::metrics::kernel_spliced(&lease.template);
        let end = tokio::select! {
            biased;
            reason = lease.ended() => {
                let finish = async {
                    if let Err(e) = shared
                        .admin_client
                        .terminate_session(&lease.role, &lease.database, backend_pid)
                        .await
                    {
                        tracing::warn!(lease = %lease.id, "terminating the backend failed: {e}");
                    }
                    hangup.wait().await
                };
                let _ = tokio::time::timeout(FINISH_TIMEOUT, finish).await;
                End::Lease(reason)
            }
            side = hangup.wait() => match side {
                Ok(Side::Client) => End::ClientClosed,
                Ok(Side::Backend) => End::BackendClosed,
                Err(_) => End::Failed,
            },
            never = self.publish_traffic(lease) => match never {},
        };
        self.settle(&end).await;
        let (client_to_backend, backend_to_client) = self.spliced.traffic();
        drop(hangup);
        // Out of the map first, then both sockets close.
        drop(self);
        drop((client, backend));
        (
            end,
            Traffic {
                client_to_backend,
                backend_to_client,
            },
        )
    }

    /// Copies the kernel's byte counts (`TCP_INFO`) to the lease every
    /// [`LIVE_TRAFFIC_EVERY`], so a lease lookup shows a running spliced
    /// session's traffic; never returns.
    async fn publish_traffic(&self, lease: &Lease) -> std::convert::Infallible {
        loop {
            let (up, down) = self.spliced.traffic();
            lease.set_traffic(up, down);
            tokio::time::sleep(LIVE_TRAFFIC_EVERY).await;
        }
    }

    /// Waits until each leg has sent on what the other received, or
    /// [`SETTLE_TIMEOUT`]. Not toward a side that hung up: what it would
    /// still be sent has nobody to read it (a backend that exited after
    /// the client's Terminate), and waiting for it would hold the client's
    /// EOF back for the whole timeout.
    async fn settle(&self, end: &End) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let (up, down) = self.spliced.traffic();
            let to_backend = written(self.fds.1).saturating_sub(self.written_at_start.1);
            let to_client = written(self.fds.0)
                .saturating_sub(self.written_at_start.0)
                .saturating_sub(self.ours_to_client);
            let up_done = *end == End::BackendClosed || to_backend >= up;
            let down_done = *end == End::ClientClosed || to_client >= down;
            if (up_done && down_done) || Instant::now() >= deadline {
                tracing::debug!(up, down, to_backend, to_client, "kernel splice settled");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Bytes written to a TCP socket so far: acknowledged plus still queued.
fn written(fd: RawFd) -> u64 {
    crate::proxy::sockmap::bytes_acked(fd) + crate::proxy::sockmap::unacked(fd)
}

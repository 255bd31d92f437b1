//! Turning a client away: counted, audited where the client is there to
//! be told, and sent an ErrorResponse whose detail stays in the log.

use std::net::SocketAddr;

use super::handshake::Refused;
use super::relay;
use crate::error::ClientError;
use crate::observe::audit::Event;
use crate::observe::logging::LogSafe;
use crate::observe::metrics::ConnectionResult;
use crate::runtime::state::Shared;
use crate::tls::ClientStream;

/// Longest wait to close a connection cleanly (TLS close_notify).
pub(super) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A handshake that failed: counted as a protocol error; audited when the
/// client is still there to be told (a bare TCP probe is not an event).
pub(super) async fn refuse(shared: &Shared, refused: Refused, peer: SocketAddr) {
    crate::observe::metrics::connection(ConnectionResult::ProtocolError);
    match refused.stream {
        Some(stream) => {
            shared.audit.record(Event::ConnectionRefused {
                client_addr: peer.to_string(),
                reason: "protocol".into(),
            });
            refuse_with(stream, refused.error, peer, &refused.detail).await
        }
        None => tracing::debug!(%peer, "handshake failed: {}", LogSafe(&refused.detail)),
    }
}

/// Turns a connection away before its token is read: counted, audited as
/// `connection.refused`, and told why.
pub(super) async fn refuse_early(
    shared: &Shared,
    stream: ClientStream,
    error: ClientError,
    peer: SocketAddr,
) {
    let result = match error {
        ClientError::TooManyConnections => ConnectionResult::TooMany,
        ClientError::ShuttingDown => ConnectionResult::ShuttingDown,
        ClientError::TlsRequired => ConnectionResult::TlsRequired,
        _ => ConnectionResult::Refused,
    };
    crate::observe::metrics::connection(result);
    shared.audit.record(Event::ConnectionRefused {
        client_addr: peer.to_string(),
        reason: error.kind().to_owned(),
    });
    refuse_with(stream, error, peer, "").await
}

/// Sends the client its error, and logs the reason with the detail the
/// client is not told.
pub(super) async fn refuse_with(
    mut stream: ClientStream,
    error: ClientError,
    peer: SocketAddr,
    detail: &str,
) {
    let detail = LogSafe(detail);
    tracing::info!(%peer, sqlstate = error.sqlstate(), kind = error.kind(), "refused: {detail}");
    relay::send_fatal(&mut stream, &error).await;
}

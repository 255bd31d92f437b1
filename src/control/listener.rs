//! The admin listener's sockets: accept, TLS, and HTTP/1.1 served by hyper
//! with every wait bounded, so no client can hold the listener down.
//!
//! A client that connects and says nothing, or trickles its headers, or
//! keeps a connection idle between requests, would otherwise hold one of
//! the `max_connections` slots for ever; a few hundred such sockets and
//! `/healthz` stops answering, and an orchestrator restarts a healthy
//! proxy. So:
//!
//! - `header_read_timeout`: from the moment hyper waits for a request (a
//!   new connection, or the end of the previous response on a kept-alive
//!   one) to the end of that request's headers. It is both the header
//!   read timeout and the idle keep-alive timeout: hyper starts the same
//!   timer for a kept-alive connection waiting for its next request.
//! - `max_connections_per_source`: connections one source (an IPv4
//!   address, an IPv6 /64) holds at once. Over it, a new connection is
//!   closed at once, so one client can never take every slot.
//! - TLS handshakes run concurrently, each within [`TLS_HANDSHAKE_TIMEOUT`].
//! - Headers are at most [`MAX_HEADER_BYTES`]; the body limit
//!   (`max_body_bytes`) and the request timeout are the router's.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AdminError, AdminState};
use crate::auth::source::{SourceSlot, SourceSlots};
use crate::config::Config;
use crate::tls::{ClientStream, MaybeTls};

/// Longest a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) read, in bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Longest a connection with a request in flight gets to finish it once
/// the listener stops, beyond the request timeout that bounds it anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The peer of an admin connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The limits every admin connection lives under.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one source holds at once; more are closed at once.
    pub per_source: usize,
    /// See the module doc: header read and keep-alive idle.
    pub header_read_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits of `[admin]`.
    pub fn from_config(config: &Config) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: config.admin.max_connections,
            per_source: config.admin.max_connections_per_source,
            header_read_timeout: config.admin.header_read_timeout,
        }
    }
}

/// The admin listener's socket: TCP, with TLS when configured.
pub struct AdminListener {
    tcp: TcpListener,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
}

impl AdminListener {
    /// Binds `addr`; `tls` makes it HTTPS. At most `max_connections` at
    /// once, with no cap per source and a 10 s header timeout, until
    /// [`AdminListener::with_limits`] says otherwise.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        max_connections: usize,
    ) -> Result<AdminListener, AdminError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(AdminListener {
            tcp,
            local,
            tls: tls.map(TlsAcceptor::from),
            limits: ConnectionLimits {
                max_connections: max_connections.max(1),
                per_source: max_connections.max(1),
                header_read_timeout: Duration::from_secs(10),
            },
        })
    }

    /// The same listener under `limits`.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> AdminListener {
        self.limits = ConnectionLimits {
            max_connections: limits.max_connections.max(1),
            per_source: limits.per_source.max(1),
            header_read_timeout: limits.header_read_timeout,
        };
        self
    }

    /// `[admin]` of `config`, when `listen` is set.
    pub async fn from_config(config: &Config) -> Result<Option<AdminListener>, AdminError> {
        let a = &config.admin;
        let Some(addr) = a.listen else {
            return Ok(None);
        };
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                let proxy = crate::tls::server_config(cert, key)
                    .map_err(|e| AdminError::Tls(e.to_string()))?;
                // The proxy's config offers only ALPN "postgresql"; an HTTPS
                // client offering "http/1.1" would be refused by it.
                let mut http = (*proxy).clone();
                http.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(http))
            }
            _ => None,
        };
        let listener = AdminListener::bind(addr, tls, a.max_connections).await?;
        Ok(Some(
            listener.with_limits(ConnectionLimits::from_config(config)),
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Serves `router(state)` on `listener` until `stop` is cancelled; requests
/// in flight then finish (bounded by the request timeout), idle
/// connections close.
pub async fn serve(
    listener: AdminListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    crate::observe::metrics::handle();
    let state = Arc::new(state);
    let refresher = tokio::spawn(super::health::refresh(Arc::clone(&state), stop.clone()));
    let app = super::router(state);
    let AdminListener {
        tcp, tls, limits, ..
    } = listener;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = SourceSlots::new(limits.per_source);
    let connections = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(conn) => {
                    backoff = Duration::from_millis(10);
                    conn
                }
                Err(e) => {
                    tracing::warn!("admin listener: accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Some(source) = sources.try_take(peer.ip()) else {
            tracing::debug!(%peer, "admin listener: too many connections from this source: closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            peer,
            held: Held {
                _permit: permit,
                _source: source,
            },
            tls: tls.clone(),
            header_read_timeout: limits.header_read_timeout,
        };
        connections.spawn(conn.run(stream, app.clone(), stop.clone()));
    }
    drop(tcp);
    connections.close();
    connections.wait().await;
    let _ = refresher.await;
    Ok(())
}

/// The slots an admin connection holds until it closes.
struct Held {
    _permit: OwnedSemaphorePermit,
    _source: SourceSlot,
}

/// One accepted admin connection.
struct Connection {
    peer: SocketAddr,
    held: Held,
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream, app: Router, stop: CancellationToken) {
        let Connection {
            peer,
            held,
            tls,
            header_read_timeout,
        } = self;
        let stream: ClientStream = match tls {
            None => MaybeTls::Plain(stream),
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
                    Ok(Err(e)) => return tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!(%peer, "admin TLS handshake timed out"),
                }
            }
        };
        let io = TokioIo::new(AdminIo {
            stream,
            _held: held,
        });
        let service = hyper::service::service_fn(move |mut request| {
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(peer)));
            // The router is always ready (axum's Router::poll_ready).
            tower_service::Service::call(&mut app.clone(), request)
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true);
        let connection = http.serve_connection(io, service);
        tokio::pin!(connection);
        let result = tokio::select! {
            r = connection.as_mut() => r,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(STOP_GRACE, connection.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        if let Err(e) = result {
            // Timeouts, resets and malformed requests: the client's doing.
            tracing::debug!(%peer, "admin connection ended: {e}");
        }
    }
}

/// One admin connection; holds its slots until closed.
struct AdminIo {
    stream: ClientStream,
    _held: Held,
}

// Forwards only read, write, flush and shutdown (no vectored writes), as
// the admin stream always has.
impl AsyncRead for AdminIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

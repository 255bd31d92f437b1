//! The admin listener's sockets: accept, TLS, and HTTP/1.1 served by hyper
//! with every wait bounded, so no client can hold the listener down.
//!
//! A client that connects and says nothing, or trickles its headers, or
//! keeps a connection idle between requests, would otherwise hold one of
//! the `max_connections` slots for ever; a few hundred such sockets and
//! `/healthz` stops answering, and an orchestrator restarts a healthy
//! proxy. So:
//!
//! - `header_read_timeout`: from a request head's first byte (on a new
//!   connection, from the accept) to the end of its headers. A client
//!   trickling a header line now and then is cut.
//! - `idle_timeout`: from the end of a response to the end of the next
//!   request's head, on a kept-alive connection. Usually longer than the
//!   head timeout, so a client's connection pool keeps its connections.
//!
//!   hyper has one timer for both (its `header_read_timeout` starts when
//!   it waits for a head, idle time included), so hyper's timer is set to
//!   `idle_timeout`, and the head timeout is [`Phase`]: the connection's
//!   reads say when a head begins (the first byte while no request runs)
//!   and hyper's call of the service says when it ended. Nothing here
//!   reads HTTP.
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
use std::time::{Duration, Instant};

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
use crate::tls::{ClientStream, MaybeTls, Socket};

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
    /// See the module doc: a request head's first byte to its end.
    pub header_read_timeout: Duration,
    /// See the module doc: a response's end to the next request's head.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits of `[admin]`.
    pub fn from_config(config: &Config) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: config.admin.max_connections,
            per_source: config.admin.max_connections_per_source,
            header_read_timeout: config.admin.header_read_timeout,
            idle_timeout: config.admin.idle_timeout,
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
    /// once, with no cap per source, a 10 s head and a 60 s idle timeout, until
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
                idle_timeout: Duration::from_secs(60),
            },
        })
    }

    /// The same listener under `limits`.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> AdminListener {
        self.limits = ConnectionLimits {
            max_connections: limits.max_connections.max(1),
            per_source: limits.per_source.max(1),
            ..limits
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
    let lapses = tokio::spawn(super::requests::sweep_lapsed(
        Arc::clone(&state),
        stop.clone(),
    ));
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
            limits,
        };
        connections.spawn(conn.run(stream, app.clone(), stop.clone()));
    }
    drop(tcp);
    connections.close();
    connections.wait().await;
    let _ = refresher.await;
    let _ = lapses.await;
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
    limits: ConnectionLimits,
}

impl Connection {
    async fn run(self, stream: TcpStream, app: Router, stop: CancellationToken) {
        let Connection {
            peer,
            held,
            tls,
            limits,
        } = self;
        // A new connection owes its first head within the head timeout,
        // counted from the accept (the TLS handshake included).
        let phase = Arc::new(Phase::new(limits.header_read_timeout));
        let stream: ClientStream = match tls {
            None => MaybeTls::Plain(stream),
            Some(acceptor) => {
                match tokio::time::timeout(
                    TLS_HANDSHAKE_TIMEOUT,
                    acceptor.accept(Socket::from(stream)),
                )
                .await
                {
                    Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
                    Ok(Err(e)) => return tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!(%peer, "admin TLS handshake timed out"),
                }
            }
        };
        let io = TokioIo::new(AdminIo {
            stream,
            phase: Arc::clone(&phase),
            _held: held,
        });
        let in_service = Arc::clone(&phase);
        let service = hyper::service::service_fn(move |mut request| {
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(peer)));
            // hyper calls the service once a head is complete.
            in_service.request_started();
            let phase = Arc::clone(&in_service);
            // The router is always ready (axum's Router::poll_ready).
            let answer = tower_service::Service::call(&mut app.clone(), request);
            async move {
                let response = answer.await;
                phase.request_done();
                response
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        // hyper's head timer runs from the moment it waits for a head, so
        // it is the idle timeout; `phase` times the head itself.
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true);
        let connection = http.serve_connection(io, service);
        tokio::pin!(connection);
        let result = tokio::select! {
            r = connection.as_mut() => r,
            () = phase.head_overdue() => {
                // Dropping the connection closes the socket.
                return tracing::debug!(%peer, "admin connection: request head timed out");
            }
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

/// Where a connection is between requests, for the head timeout: the
/// deadline of the head being read, if one is (see the module doc).
struct Phase {
    head_timeout: Duration,
    state: std::sync::Mutex<PhaseState>,
    /// Wakes [`Phase::head_overdue`] when a deadline is set.
    changed: tokio::sync::Notify,
}

#[derive(Clone, Copy)]
struct PhaseState {
    /// A request is in the service: bytes read now are its body.
    busy: bool,
    /// When the head being read must be complete.
    head_deadline: Option<Instant>,
}

impl Phase {
    /// A new connection's: its first head is due within `head_timeout`.
    fn new(head_timeout: Duration) -> Phase {
        Phase {
            head_timeout,
            state: std::sync::Mutex::new(PhaseState {
                busy: false,
                head_deadline: Some(Instant::now() + head_timeout),
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PhaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived: between requests, the first starts a head.
    fn bytes_read(&self) {
        let mut state = self.lock();
        if !state.busy && state.head_deadline.is_none() {
            state.head_deadline = Some(Instant::now() + self.head_timeout);
            drop(state);
            self.changed.notify_one();
        }
    }

    /// hyper has a whole head: the request runs, bounded by the router's
    /// request timeout.
    fn request_started(&self) {
        let mut state = self.lock();
        state.busy = true;
        state.head_deadline = None;
    }

    /// The answer is out: idle until the next head's first byte (hyper's
    /// idle timer runs meanwhile).
    fn request_done(&self) {
        self.lock().busy = false;
    }

    /// Resolves once a head has taken longer than the head timeout.
    async fn head_overdue(&self) {
        loop {
            // Registered before the state is read, so a deadline set in
            // between still wakes this loop (`notify_one` keeps a permit).
            let changed = self.changed.notified();
            let deadline = self.lock().head_deadline;
            match deadline {
                None => changed.await,
                Some(deadline) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(deadline.into()) => {
                            if self.lock().head_deadline == Some(deadline) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One admin connection; holds its slots until closed, and tells its
/// [`Phase`] when bytes arrive.
struct AdminIo {
    stream: ClientStream,
    phase: Arc<Phase>,
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
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.bytes_read();
        }
        polled
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

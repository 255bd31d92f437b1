//! After login: hand the backend's startup to the client, then splice bytes.
//!
//! The startup is forwarded in one write with the backend's BackendKeyData
//! replaced by rolemint's own, so a cancel request has to come through
//! rolemint. After that the two connections are spliced as opaque bytes; the
//! only thing watched is where backend messages begin and end, so that when
//! a lease ends mid-session the client gets a whole FATAL ErrorResponse
//! instead of half a DataRow followed by garbage.
//!
//! This is the relay of every TLS session, and of every session when
//! `proxy.kernel_splice` is off or BPF is not permitted; it runs on a relay
//! thread (`proxy/relay_threads.rs`). With the kernel splice on, a
//! session whose two legs are plaintext is forwarded by the kernel instead
//! (`kernel.rs`); rolemint then never sees its bytes, so a lease that ends
//! there is ended by PostgreSQL (`pg_terminate_backend`), which sends the
//! client its own FATAL at a message boundary.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::statements::{Statement, StatementTap};
use super::wire::{self, Framer};
use crate::error::ClientError;
use crate::lease::end::EndReason;
use crate::lease::registry::Lease;
use crate::pg::backend::BackendKey;
use crate::pg::backend::Login;
use crate::tls::{BackendStream, ClientStream};

/// Client-to-backend buffer. pgbench's queries are well under 1 KiB and
/// PostgreSQL itself reads in 8 KiB chunks; a larger buffer only adds idle
/// memory per session.
const UP_BUFFER: usize = 8 * 1024;
/// Backend-to-client buffer: a select-only reply is ~100 bytes, but result
/// sets stream in many rows, and 16 KiB (a TLS record's payload) moves a
/// burst of them per read and per write.
const DOWN_BUFFER: usize = 16 * 1024;
/// How many read/write rounds one direction may do per wakeup before it
/// yields, so a bulk transfer one way cannot starve the other way or the
/// lease watch (tokio's cooperative budget also applies to the sockets).
const ROUNDS_PER_WAKEUP: usize = 32;
/// Time allowed, once a lease has ended, to finish the backend message in
/// flight and tell the client. A client that does not read loses the
/// explanation, not the termination.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a splice ended: the relay's own outcome, or the lease's end when
/// that came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its connection (normally after Terminate).
    ClientClosed,
    /// The backend closed its connection (terminated, crashed, restarted).
    BackendClosed,
    /// The lease ended; the client was told why.
    Lease(EndReason),
    /// Reading or writing failed on either side.
    Failed,
}

impl End {
    /// Why the session's lease ended. A lease ended under the session wins
    /// even when the splice saw a close first (`signalled`, the lease's own
    /// [`Lease::end_reason`]): an expiry's terminated backend may close
    /// before the relay notices the lease. Otherwise its holder let go.
    pub fn reason(self, signalled: Option<EndReason>) -> EndReason {
        match self {
            End::Lease(reason) => reason,
            _ => signalled.unwrap_or(EndReason::SessionClosed),
        }
    }

    /// `session.ended`'s `reason` for a session whose lease ended for
    /// `reason` ([`End::reason`]): `ttl`, `revoked`, `shutdown`, or, when
    /// its holder let go, how the splice ended: `client`, `backend`,
    /// `error`.
    pub fn audit_reason(self, reason: EndReason) -> &'static str {
        reason.session_ended().unwrap_or(match self {
            End::ClientClosed => "client",
            End::BackendClosed => "backend",
            End::Lease(_) | End::Failed => "error",
        })
    }
}

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

/// Writes AuthenticationOk, the backend's ParameterStatus messages, our
/// BackendKeyData, ReadyForQuery and anything read past it, in one write.
pub async fn forward_startup(
    client: &mut ClientStream,
    login: &mut Login,
    our_key: &BackendKey,
) -> io::Result<(Framer, usize)> {
    let mut out = BytesMut::with_capacity(login.startup.len() + 64 + login.leftover.len());
    wire::auth_ok(&mut out);
    out.extend_from_slice(&login.startup);
    wire::backend_key_data(our_key.process_id, our_key.secret.as_bytes(), &mut out);
    out.extend_from_slice(&login.ready);
    let mut framer = Framer::default();
    framer.advance(&login.leftover);
    out.extend_from_slice(&login.leftover);
    login.leftover.clear();
    client.write_all(&out).await?;
    client.flush().await?;
    Ok((framer, out.len()))
}

/// The statements of a session whose template audits them: the tap that
/// finds them in the client's messages and where each one goes.
pub struct Audited<'a> {
    pub tap: StatementTap,
    pub sink: Box<dyn FnMut(Statement) + Send + 'a>,
}

/// Splices until either side closes or the lease ends.
pub async fn splice(
    client: ClientStream,
    backend: BackendStream,
    framer: Framer,
    lease: &Lease,
    audited: Option<Audited<'_>>,
) -> (End, Traffic) {
    let live = |t: Traffic| lease.set_traffic(t.client_to_backend, t.backend_to_client);
    splice_counted(client, backend, framer, lease.ended(), audited, live).await
}

/// Splices until either side closes or `ended` resolves with the reason the
/// session must end.
///
/// One future drives both directions over the two whole streams: no
/// `split` (whose halves take a lock on every poll), no task per direction
/// (no cross-task wakeups). Each wakeup reads whatever is ready and writes it
/// in one call, and flushes only when there is nothing more to read.
///
/// Generic over the streams so the same loop runs over in-memory pipes in
/// tests and in the relay's micro-benchmark.
///
/// With `audited`, the client's messages are followed too (the same
/// framing as the backend's), and each statement is handed to the audit
/// once forwarded. A client stream that cannot be split into messages ends
/// such a session with 08P01: nothing after it could be audited.
pub async fn splice_until<C, B, E>(
    client: C,
    backend: B,
    framer: Framer,
    ended: E,
    audited: Option<Audited<'_>>,
) -> (End, Traffic)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    E: Future<Output = EndReason>,
{
    splice_counted(client, backend, framer, ended, audited, |_| {}).await
}

/// [`splice_until`], telling `live` the bytes moved so far after every
/// wakeup that moved any: a lease lookup shows a running session's
/// traffic (two relaxed stores per wakeup, next to a read and a write).
async fn splice_counted<C, B, E>(
    mut client: C,
    mut backend: B,
    framer: Framer,
    ended: E,
    audited: Option<Audited<'_>>,
    live: impl Fn(Traffic),
) -> (End, Traffic)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    E: Future<Output = EndReason>,
{
    let mut up = Pump::new(UP_BUFFER, audited.is_some().then(Framer::default));
    up.audited = audited;
    let mut down = Pump::new(DOWN_BUFFER, Some(framer));

    let end = tokio::select! {
        // Biased: a lease that ended wins over traffic that keeps coming.
        biased;
        reason = ended => {
            let tell = async {
                if down.finish_message(&mut backend, &mut client).await? {
                    let mut out = BytesMut::new();
                    wire::fatal(&reason.client_error(), &mut out);
                    client.write_all(&out).await?;
                }
                client.shutdown().await
            };
            let _ = tokio::time::timeout(FINISH_TIMEOUT, tell).await;
            End::Lease(reason)
        }
        closed = std::future::poll_fn(|cx| {
            let before = (up.bytes, down.bytes);
            let polled = poll_both(cx, &mut up, &mut down, &mut client, &mut backend);
            if (up.bytes, down.bytes) != before {
                live(Traffic {
                    client_to_backend: up.bytes,
                    backend_to_client: down.bytes,
                });
            }
            polled
        }) => match closed {
            Ok(Closed::Client) => {
                let _ = backend.shutdown().await;
                End::ClientClosed
            }
            // A client's Terminate makes the backend exit at once, and its
            // EOF can beat the client's own: the session was still the
            // client's to end.
            Ok(Closed::Backend) if up.sent_terminate => {
                let _ = tokio::time::timeout(FINISH_TIMEOUT, client.shutdown()).await;
                End::ClientClosed
            }
            Ok(Closed::Backend) => {
                // What the backend said last (a FATAL, usually) is out;
                // close the client cleanly (TLS close_notify), boundedly.
                let _ = tokio::time::timeout(FINISH_TIMEOUT, client.shutdown()).await;
                End::BackendClosed
            }
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<MalformedClientMessage>()) => {
                // An audited client's stream lost its framing.
                send_fatal(&mut client, &ClientError::Protocol("malformed message")).await;
                let _ = backend.shutdown().await;
                End::Failed
            }
            Err(_) => End::Failed,
        },
    };
    let traffic = Traffic {
        client_to_backend: up.bytes,
        backend_to_client: down.bytes,
    };
    (end, traffic)
}

/// The Terminate message a client sends last.
const TERMINATE: &[u8] = &[b'X', 0, 0, 0, 4];

/// An audited client sent a message whose length word is below 4.
#[derive(Debug, thiserror::Error)]
#[error("a client message with a length below 4")]
struct MalformedClientMessage;

/// Which side closed first.
enum Closed {
    Client,
    Backend,
}

/// Polls both directions once; ready when either side reached EOF (with
/// everything before it delivered) or failed.
fn poll_both<C, B>(
    cx: &mut Context<'_>,
    up: &mut Pump<'_>,
    down: &mut Pump<'_>,
    client: &mut C,
    backend: &mut B,
) -> Poll<io::Result<Closed>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // The backend's replies first: they are what a waiting client needs.
    if down.poll_copy(cx, backend, client)?.is_ready() {
        return Poll::Ready(Ok(Closed::Backend));
    }
    if up.poll_copy(cx, client, backend)?.is_ready() {
        return Poll::Ready(Ok(Closed::Client));
    }
    Poll::Pending
}

/// Tells a client why its session ends, best effort and bounded.
pub async fn send_fatal<W: AsyncWrite + Unpin>(stream: &mut W, error: &ClientError) {
    let mut out = BytesMut::new();
    wire::fatal(error, &mut out);
    let write = async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(FINISH_TIMEOUT, write).await;
}

/// One direction of the splice. Its buffer and progress live outside the
/// copy future, so that when the future is dropped (the lease ended) it is
/// still known which bytes reached the other side.
///
/// The hot path is read into `buf`, write from `buf`, add to `bytes`: no
/// allocation, no parsing beyond the framer's few comparisons per backend
/// message. A live counter (an `AtomicU64` per direction) can be updated
/// where `bytes` is, once per write.
struct Pump<'a> {
    buf: Box<[u8]>,
    /// Read but not yet written: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes were written since the last flush (TLS may hold them back).
    unflushed: bool,
    framer: Option<Framer>,
    /// The client's direction of an audited session.
    audited: Option<Audited<'a>>,
    bytes: u64,
    /// The last write ended with a Terminate message (client to backend):
    /// the client is ending the session.
    sent_terminate: bool,
}

impl Pump<'_> {
    fn new<'a>(size: usize, framer: Option<Framer>) -> Pump<'a> {
        Pump {
            buf: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
            unflushed: false,
            framer,
            audited: None,
            bytes: 0,
            sent_terminate: false,
        }
    }

    /// Copies what `rx` has ready to `tx`; ready on EOF (after flushing) or
    /// on an error. Cancel-safe: every byte counted as written was accepted
    /// by `tx`.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut R,
        tx: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..ROUNDS_PER_WAKEUP {
            if self.start == self.end {
                let mut read = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *rx).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read: now push out what TLS may
                        // still hold, one flush per burst.
                        if self.unflushed {
                            ready!(Pin::new(&mut *tx).poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = read.filled().len();
                if n == 0 {
                    ready!(Pin::new(&mut *tx).poll_flush(cx))?;
                    self.unflushed = false;
                    return Poll::Ready(Ok(()));
                }
                self.start = 0;
                self.end = n;
            }
            let n = ready!(Pin::new(&mut *tx).poll_write(cx, &self.buf[self.start..self.end]))?;
            self.wrote(n)?;
        }
        // A long burst: let the other direction and the lease watch run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Accounts for `n` bytes of `buf[start..]` accepted by the writer.
    fn wrote(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let sent = &self.buf[self.start..self.start + n];
        self.sent_terminate = sent.ends_with(TERMINATE);
        match (&mut self.framer, &mut self.audited) {
            (Some(framer), Some(audited)) => {
                framer.advance_with(sent, |piece| audited.tap.see(piece));
                for statement in audited.tap.take() {
                    (audited.sink)(statement);
                }
                if framer.is_lost() {
                    return Err(io::Error::other(MalformedClientMessage));
                }
            }
            (Some(framer), None) => framer.advance(sent),
            (None, _) => {}
        }
        self.start += n;
        self.bytes += n as u64;
        self.unflushed = true;
        Ok(())
    }

    /// Forwards up to the end of the backend message in flight. False when
    /// that cannot be done (EOF, or a stream that cannot be followed).
    async fn finish_message<R, W>(&mut self, rx: &mut R, tx: &mut W) -> io::Result<bool>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match &self.framer {
                Some(framer) if framer.at_boundary() => return Ok(true),
                Some(_) => {}
                None => return Ok(false),
            }
            if self.start == self.end {
                tx.flush().await?;
                let n = rx.read(&mut self.buf).await?;
                if n == 0 {
                    return Ok(false);
                }
                self.start = 0;
                self.end = n;
            }
            let pending = &self.buf[self.start..self.end];
            let Some(take) = self.framer.as_ref().and_then(|f| f.until_boundary(pending)) else {
                return Ok(false);
            };
            let n = tx.write(&self.buf[self.start..self.start + take]).await?;
            self.wrote(n)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test]
    async fn pump_copies_and_counts() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut rx = &data[..];
        let mut tx = Vec::new();
        let mut pump = Pump::new(UP_BUFFER, None);
        std::future::poll_fn(|cx| pump.poll_copy(cx, &mut rx, &mut tx))
            .await
            .unwrap();
        assert_eq!(tx, data);
        assert_eq!(pump.bytes, data.len() as u64);
    }

    #[tokio::test]
    async fn finish_message_stops_exactly_at_the_boundary() {
        let mut stream = BytesMut::new();
        wire::error_response("NOTICE", "00000", "first", &mut stream);
        let first_len = stream.len();
        wire::error_response("NOTICE", "00000", "second", &mut stream);
        let mut pump = Pump::new(DOWN_BUFFER, Some(Framer::default()));
        let mut tx = Vec::new();
        // Three bytes of the first message already went out.
        pump.buf[..stream.len()].copy_from_slice(&stream);
        pump.end = stream.len();
        let n = tx.write(&pump.buf[..3]).await.unwrap();
        pump.wrote(n).unwrap();
        let mut rx: &[u8] = &[];
        assert!(pump.finish_message(&mut rx, &mut tx).await.unwrap());
        assert_eq!(&tx[..], &stream[..first_len]);
    }

    /// Both directions through one `splice`, each way a different size,
    /// counted exactly; the client's close ends it.
    #[tokio::test]
    async fn splice_relays_both_ways_and_counts() {
        let (client, mut client_peer) = tokio::io::duplex(4096);
        let (backend, mut backend_peer) = tokio::io::duplex(4096);
        let never = std::future::pending();
        let relay = tokio::spawn(splice_until(
            client,
            backend,
            Framer::default(),
            never,
            None,
        ));
        let mut reply = BytesMut::new();
        for i in 0..500 {
            wire::error_response("NOTICE", "00000", &format!("row {i}"), &mut reply);
        }
        let query = vec![b'Q'; 70_000];
        let backend_side = async {
            let mut got = vec![0; query.len()];
            backend_peer.read_exact(&mut got).await.unwrap();
            backend_peer.write_all(&reply).await.unwrap();
            got
        };
        let client_side = async {
            client_peer.write_all(&query).await.unwrap();
            let mut got = vec![0; reply.len()];
            client_peer.read_exact(&mut got).await.unwrap();
            got
        };
        let (at_backend, at_client) = tokio::join!(backend_side, client_side);
        assert_eq!(at_backend, query);
        assert_eq!(at_client, &reply[..]);
        drop(client_peer);
        let (end, traffic) = relay.await.unwrap();
        assert_eq!(end, End::ClientClosed);
        assert_eq!(traffic.client_to_backend, query.len() as u64);
        assert_eq!(traffic.backend_to_client, reply.len() as u64);
    }

    /// An audited session hands each statement to its sink once it is
    /// forwarded, and a client message that cannot be framed ends the
    /// session with 08P01 (what follows could not be audited).
    #[tokio::test]
    async fn an_audited_session_reports_statements_and_refuses_a_broken_frame() {
        let (client, mut client_peer) = tokio::io::duplex(4096);
        let (backend, mut backend_peer) = tokio::io::duplex(4096);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_seen = std::sync::Arc::clone(&seen);
        let audited = Audited {
            tap: StatementTap::new(false),
            sink: Box::new(move |s: Statement| sink_seen.lock().unwrap().push(s.text)),
        };
        let never = std::future::pending();
        let relay = tokio::spawn(splice_until(
            client,
            backend,
            Framer::default(),
            never,
            Some(audited),
        ));
        let mut query = BytesMut::new();
        wire::message_with_body(b'Q', b"SELECT 1\0", &mut query);
        client_peer.write_all(&query).await.unwrap();
        let mut at_backend = vec![0; query.len()];
        backend_peer.read_exact(&mut at_backend).await.unwrap();
        assert_eq!(at_backend, &query[..]);
        // A length word of 2: no message is that short.
        client_peer.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            client_peer.read_to_end(&mut answer),
        )
        .await
        .expect("the relay closes the client")
        .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.first() == Some(&b'E') && text.contains("08P01"),
            "{text}"
        );
        let (end, _) = relay.await.unwrap();
        assert_eq!(end, End::Failed);
        assert_eq!(*seen.lock().unwrap(), [Some("SELECT 1".to_owned())]);
    }

    /// A backend that exits on the client's Terminate, and whose EOF comes
    /// first, ends a session the client ended.
    #[tokio::test]
    async fn a_backend_gone_after_the_clients_terminate_is_the_clients_close() {
        let (client, mut client_peer) = tokio::io::duplex(4096);
        let (backend, mut backend_peer) = tokio::io::duplex(4096);
        let never = std::future::pending();
        let relay = tokio::spawn(splice_until(
            client,
            backend,
            Framer::default(),
            never,
            None,
        ));
        client_peer.write_all(TERMINATE).await.unwrap();
        let mut got = [0; 5];
        backend_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, TERMINATE);
        drop(backend_peer);
        let (end, _) = relay.await.unwrap();
        assert_eq!(end, End::ClientClosed);
    }

    /// A lease that ends while a backend message is half through: the
    /// client gets the rest of that message, then the FATAL 57P01.
    #[tokio::test]
    async fn ended_lease_finishes_the_message_then_sends_fatal() {
        let (client, mut client_peer) = tokio::io::duplex(4096);
        let (backend, mut backend_peer) = tokio::io::duplex(4096);
        let lease = CancellationToken::new();
        let ended = {
            let lease = lease.clone();
            async move {
                lease.cancelled().await;
                EndReason::Expired
            }
        };
        let relay = tokio::spawn(splice_until(
            client,
            backend,
            Framer::default(),
            ended,
            None,
        ));
        let mut message = BytesMut::new();
        wire::error_response("NOTICE", "00000", "half of me comes later", &mut message);
        backend_peer.write_all(&message[..7]).await.unwrap();
        let mut first = [0; 7];
        client_peer.read_exact(&mut first).await.unwrap();
        lease.cancel();
        backend_peer.write_all(&message[7..]).await.unwrap();
        let mut rest = Vec::new();
        // Bounded: a relay that ignored the lease would leave this open.
        tokio::time::timeout(Duration::from_secs(10), client_peer.read_to_end(&mut rest))
            .await
            .expect("the relay closes the client after the FATAL")
            .unwrap();
        assert_eq!(&rest[..message.len() - 7], &message[7..]);
        let fatal = &rest[message.len() - 7..];
        assert_eq!(fatal[0], b'E');
        let text = String::from_utf8_lossy(fatal);
        assert!(text.contains("FATAL") && text.contains("57P01"), "{text}");
        let (end, traffic) = relay.await.unwrap();
        assert_eq!(end, End::Lease(EndReason::Expired));
        assert_eq!(traffic.backend_to_client, message.len() as u64);
    }
}

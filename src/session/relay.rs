//! After login: hand the backend's startup to the client, then splice bytes.
//!
//! The startup is forwarded in one write with the backend's BackendKeyData
//! replaced by rolemint's own, so a cancel request has to come through
//! rolemint. After that the two connections are spliced as opaque bytes; the
//! only thing watched is where backend messages begin and end, so that when
//! a lease ends mid-session the client gets a whole FATAL ErrorResponse
//! instead of half a DataRow followed by garbage.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::backend::Login;
use super::wire::{self, Framer};
use crate::cancel::BackendKey;
use crate::error::ClientError;
use crate::lease::{EndReason, Lease};
use crate::tls::{BackendStream, ClientStream};

/// Per-direction buffer; large enough for a pgbench round trip in one read.
const BUFFER_SIZE: usize = 16 * 1024;
/// Time allowed, once a lease has ended, to finish the backend message in
/// flight and tell the client. A client that does not read loses the
/// explanation, not the termination.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a splice ended.
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
    our_key: BackendKey,
) -> io::Result<Framer> {
    let mut out = BytesMut::with_capacity(login.startup.len() + 64 + login.leftover.len());
    wire::auth_ok(&mut out);
    out.extend_from_slice(&login.startup);
    wire::backend_key_data(our_key.process_id, our_key.secret_key, &mut out);
    out.extend_from_slice(&login.ready);
    let mut framer = Framer::default();
    framer.advance(&login.leftover);
    out.extend_from_slice(&login.leftover);
    login.leftover.clear();
    client.write_all(&out).await?;
    client.flush().await?;
    Ok(framer)
}

/// Splices until either side closes or the lease ends.
pub async fn splice(
    client: ClientStream,
    backend: BackendStream,
    framer: Framer,
    lease: &Lease,
) -> (End, Traffic) {
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut backend_rx, mut backend_tx) = tokio::io::split(backend);
    let mut up = Pump::new(None);
    let mut down = Pump::new(Some(framer));

    let end = tokio::select! {
        r = up.run(&mut client_rx, &mut backend_tx) => match r {
            Ok(()) => {
                let _ = backend_tx.shutdown().await;
                End::ClientClosed
            }
            Err(_) => End::Failed,
        },
        r = down.run(&mut backend_rx, &mut client_tx) => match r {
            Ok(()) => {
                // What the backend said last (a FATAL, usually) is out;
                // close the client cleanly (TLS close_notify), boundedly.
                let _ = tokio::time::timeout(FINISH_TIMEOUT, client_tx.shutdown()).await;
                End::BackendClosed
            }
            Err(_) => End::Failed,
        },
        reason = lease.ended() => {
            let tell = async {
                if down.finish_message(&mut backend_rx, &mut client_tx).await? {
                    let mut out = BytesMut::new();
                    wire::fatal(&reason.client_error(), &mut out);
                    client_tx.write_all(&out).await?;
                }
                client_tx.shutdown().await
            };
            let _ = tokio::time::timeout(FINISH_TIMEOUT, tell).await;
            End::Lease(reason)
        }
    };
    let traffic = Traffic {
        client_to_backend: up.bytes,
        backend_to_client: down.bytes,
    };
    (end, traffic)
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
struct Pump {
    buf: Box<[u8]>,
    /// Read but not yet written: `buf[start..end]`.
    start: usize,
    end: usize,
    framer: Option<Framer>,
    bytes: u64,
}

impl Pump {
    fn new(framer: Option<Framer>) -> Pump {
        Pump {
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            framer,
            bytes: 0,
        }
    }

    /// Copies until EOF on `rx`. Cancel-safe: every byte counted as written
    /// was accepted by `tx`.
    async fn run<R, W>(&mut self, rx: &mut R, tx: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.start == self.end && !self.fill(rx, tx).await? {
                return Ok(());
            }
            self.write_some(tx, self.end).await?;
        }
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
            if self.start == self.end && !self.fill(rx, tx).await? {
                return Ok(false);
            }
            let pending = &self.buf[self.start..self.end];
            let Some(take) = self.framer.as_ref().and_then(|f| f.until_boundary(pending)) else {
                return Ok(false);
            };
            self.write_some(tx, self.start + take).await?;
        }
    }

    /// Flushes what was written, then reads; false on EOF.
    async fn fill<R, W>(&mut self, rx: &mut R, tx: &mut W) -> io::Result<bool>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        tx.flush().await?;
        let n = rx.read(&mut self.buf).await?;
        self.start = 0;
        self.end = n;
        Ok(n > 0)
    }

    /// Writes some of `buf[start..until]`, accounting for what was accepted.
    async fn write_some<W: AsyncWrite + Unpin>(
        &mut self,
        tx: &mut W,
        until: usize,
    ) -> io::Result<()> {
        let n = tx.write(&self.buf[self.start..until]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if let Some(framer) = &mut self.framer {
            framer.advance(&self.buf[self.start..self.start + n]);
        }
        self.start += n;
        self.bytes += n as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_copies_and_counts() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut rx = &data[..];
        let mut tx = Vec::new();
        let mut pump = Pump::new(None);
        pump.run(&mut rx, &mut tx).await.unwrap();
        assert_eq!(tx, data);
        assert_eq!(pump.bytes, data.len() as u64);
    }

    #[tokio::test]
    async fn finish_message_stops_exactly_at_the_boundary() {
        let mut stream = BytesMut::new();
        wire::error_response("NOTICE", "00000", "first", &mut stream);
        let first_len = stream.len();
        wire::error_response("NOTICE", "00000", "second", &mut stream);
        let mut pump = Pump::new(Some(Framer::default()));
        let mut tx = Vec::new();
        // Three bytes of the first message already went out.
        pump.buf[..stream.len()].copy_from_slice(&stream);
        pump.end = stream.len();
        pump.write_some(&mut tx, 3).await.unwrap();
        let mut rx: &[u8] = &[];
        assert!(pump.finish_message(&mut rx, &mut tx).await.unwrap());
        assert_eq!(&tx[..], &stream[..first_len]);
    }
}

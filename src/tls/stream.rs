//! The stream of a session, toward its client or its backend: a TCP
//! stream, encrypted or not ([`MaybeTls`]), and how it moves to another
//! runtime ([`MaybeTls::detach`], [`Detached::attach`]).
//!
//! A session's splice runs on a relay thread (`proxy/relay_threads.rs`),
//! and its sockets must leave the reactor of the runtime that accepted them
//! for that thread's. tokio-rustls keeps the TLS state around its socket
//! and offers no way to rebuild a stream from the two, so under TLS the
//! socket is a [`Socket`] that can be taken out from under the TLS state
//! and put back: the state, with anything it has buffered, never moves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls_server_end_point;

/// A TCP stream, encrypted or not. `T` is a tokio-rustls client or server
/// stream; boxed because TLS state is large and the plain case is common in
/// benchmarks.
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// A client connection.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<Socket>>;
/// A connection to the backend.
pub type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<Socket>>;

impl<T> MaybeTls<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl BackendStream {
    /// The `tls-server-end-point` channel binding of the backend's
    /// certificate; `None` in plaintext.
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(tls) => {
                tls_server_end_point(tls.get_ref().1.peer_certificates()?.first()?)
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The TCP stream under a TLS stream; empty only while the stream moves
/// between runtimes ([`MaybeTls::detach`]).
pub struct Socket(Option<TcpStream>);

impl From<TcpStream> for Socket {
    fn from(tcp: TcpStream) -> Socket {
        Socket(Some(tcp))
    }
}

/// The error of any I/O on a [`Socket`] whose stream is being moved: never
/// seen unless a detached stream is used, which the types prevent outside
/// this file.
fn moving() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket is moving between runtimes",
    )
}

impl Socket {
    fn tcp(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        self.get_mut().0.as_mut().map(Pin::new).ok_or_else(moving)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.tcp()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// A TLS stream over a [`Socket`].
pub trait OverSocket {
    fn socket(&mut self) -> &mut Socket;
}

impl OverSocket for tokio_rustls::server::TlsStream<Socket> {
    fn socket(&mut self) -> &mut Socket {
        self.get_mut().0
    }
}

impl OverSocket for tokio_rustls::client::TlsStream<Socket> {
    fn socket(&mut self) -> &mut Socket {
        self.get_mut().0
    }
}

/// A stream out of every runtime's reactor: the socket, and the TLS state
/// without it.
pub struct Detached<T> {
    tcp: std::net::TcpStream,
    tls: Option<Box<T>>,
}

impl<T: OverSocket> MaybeTls<T> {
    /// Takes the socket out of the current runtime's reactor, to be
    /// [attached](Detached::attach) in another's. Nothing buffered is lost:
    /// the kernel keeps what arrives meanwhile, the TLS state what it had.
    pub fn detach(self) -> io::Result<Detached<T>> {
        match self {
            MaybeTls::Plain(tcp) => Ok(Detached {
                tcp: tcp.into_std()?,
                tls: None,
            }),
            MaybeTls::Tls(mut tls) => {
                let tcp = tls.socket().0.take().ok_or_else(moving)?;
                Ok(Detached {
                    tcp: tcp.into_std()?,
                    tls: Some(tls),
                })
            }
        }
    }
}

impl<T: OverSocket> Detached<T> {
    /// Registers the socket with the current runtime's reactor: call it
    /// inside the runtime that will drive the stream.
    pub fn attach(self) -> io::Result<MaybeTls<T>> {
        let tcp = TcpStream::from_std(self.tcp)?;
        Ok(match self.tls {
            None => MaybeTls::Plain(tcp),
            Some(mut tls) => {
                tls.socket().0 = Some(tcp);
                MaybeTls::Tls(tls)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_tls_stream_moves_to_another_runtime_with_what_it_had_buffered() {
        let (_dir, server_config, client_config) = super::super::tests::configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client_config)
                .connect(name, Socket::from(tcp))
                .await
                .unwrap();
            tls.write_all(b"first second").await.unwrap();
            tls.flush().await.unwrap();
            tls
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(server_config)
                .accept(Socket::from(tcp))
                .await
                .unwrap()
        };
        let (mut client, server) = tokio::join!(connect, accept);
        let mut server: ClientStream = MaybeTls::Tls(Box::new(server));
        // One record came; half of its plaintext stays in the TLS state.
        let mut first = [0; 6];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"first ");
        let detached = server.detach().unwrap();
        let moved = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut server = detached.attach().unwrap();
                let mut rest = [0; 6];
                server.read_exact(&mut rest).await.unwrap();
                let mut later = [0; 5];
                server.read_exact(&mut later).await.unwrap();
                server.write_all(b"reply").await.unwrap();
                server.flush().await.unwrap();
                (rest, later)
            })
        });
        client.write_all(b"later").await.unwrap();
        client.flush().await.unwrap();
        let mut reply = [0; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
        let (rest, later) = moved.join().unwrap();
        assert_eq!((&rest, &later), (b"second", b"later"));
    }
}

//! Keeps the admin password off the wire: a stream wrapper that watches
//! the backend's messages during an admin login and fails the read when the
//! server asks for a cleartext or MD5 password.
//!
//! tokio-postgres answers whatever authentication request the server makes,
//! and has no setting to refuse weak ones. Sitting under it (on the
//! plaintext side of TLS), the guard sees the request before tokio-postgres
//! does: it returns an error instead of the bytes, so the password message
//! is never written. Once the server says AuthenticationOk (or anything
//! that is not an authentication request) the guard steps aside and costs
//! one branch per read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// AuthenticationCleartextPassword and AuthenticationMD5Password.
const CLEARTEXT: i32 = 3;
const MD5: i32 = 5;

/// Follows backend messages up to the end of authentication.
#[derive(Debug, Default, Clone)]
pub struct Watch {
    /// The current message's tag, length and first body word.
    head: [u8; 9],
    have: usize,
    /// Body bytes of the current message still to pass.
    skip: usize,
    /// Authentication is over: nothing more to watch.
    done: bool,
}

impl Watch {
    /// Feeds bytes read from the backend; an error when they ask for a
    /// password in a form the wire would expose.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let want = if self.have > 0 && self.head[0] == b'R' {
                9
            } else {
                5
            };
            let n = (want - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < 5 {
                continue;
            }
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]])
                as usize;
            let body = len
                .checked_sub(4)
                .ok_or("malformed message from the backend")?;
            if self.head[0] != b'R' {
                // ErrorResponse, NegotiateProtocolVersion, ...: the login is
                // past asking for a password.
                self.done = self.head[0] != b'v';
                self.skip = body;
                self.have = 0;
                continue;
            }
            if body < 4 {
                return Err("malformed authentication request from the backend");
            }
            if self.have < 9 {
                continue;
            }
            let code = i32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
            match code {
                CLEARTEXT => return Err("the backend asked the admin for a cleartext password"),
                MD5 => return Err("the backend asked the admin for an MD5 password"),
                0 => self.done = true,
                _ => {}
            }
            self.skip = body - 4;
            self.have = 0;
        }
        Ok(())
    }
}

/// A stream whose reads pass through a [`Watch`].
pub struct Guarded<S> {
    inner: S,
    watch: Watch,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Guarded<S> {
        Guarded {
            inner,
            watch: Watch::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            if !this.watch.done {
                if let Err(refusal) = this.watch.feed(&buf.filled()[before..]) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{refusal}; refused (set backend.allow_weak_auth to permit)"),
                    )));
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Guarded<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose stream is [`Guarded`]: the guard reads the
/// decrypted messages.
pub struct GuardedConnect<T>(pub T);

impl<S, T> TlsConnect<S> for GuardedConnect<T>
where
    T: TlsConnect<S>,
    T::Stream: Unpin,
    T::Future: Send + 'static,
{
    type Stream = Guarded<T::Stream>;
    type Error = T::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Guarded<T::Stream>, T::Error>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        let connecting = self.0.connect(stream);
        Box::pin(async move { connecting.await.map(Guarded::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&((8 + rest.len()) as u32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    fn fed_in_every_split(stream: &[u8]) -> Vec<Result<(), &'static str>> {
        (0..=stream.len())
            .map(|split| {
                let mut w = Watch::default();
                w.feed(&stream[..split])
                    .and_then(|()| w.feed(&stream[split..]))
            })
            .collect()
    }

    #[test]
    fn weak_requests_are_caught_in_any_split() {
        for code in [CLEARTEXT, MD5] {
            let mut stream = vec![b'v', 0, 0, 0, 8, 0, 0, 0, 0]; // NegotiateProtocolVersion
            stream.extend(auth(code, if code == MD5 { b"salt" } else { b"" }));
            for result in fed_in_every_split(&stream) {
                assert!(result.is_err());
            }
        }
    }

    #[test]
    fn scram_and_what_follows_authentication_pass() {
        let mut stream = auth(10, b"SCRAM-SHA-256\0\0");
        stream.extend(auth(11, b"r=abc,s=c2FsdA==,i=4096"));
        stream.extend(auth(12, b"v=xyz"));
        stream.extend(auth(0, b""));
        // After AuthenticationOk nothing is read as a request, not even
        // bytes that would look like one.
        stream.extend(auth(CLEARTEXT, b""));
        for result in fed_in_every_split(&stream) {
            assert_eq!(result, Ok(()));
        }
        let mut error_first = vec![b'E', 0, 0, 0, 5, 0];
        error_first.extend(auth(CLEARTEXT, b""));
        assert_eq!(Watch::default().feed(&error_first), Ok(()));
    }

    #[test]
    fn malformed_lengths_are_errors_not_panics() {
        assert!(Watch::default().feed(&[b'R', 0, 0, 0, 2]).is_err());
        assert!(Watch::default().feed(&[b'R', 0, 0, 0, 6, 0, 0]).is_err());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            let mut w = Watch::default();
            let _ = w.feed(&bytes[..(state % 9) as usize]);
        }
    }
}

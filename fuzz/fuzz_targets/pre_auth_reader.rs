//! The pre-authentication reader: a startup packet, then the password
//! message (the token), read from a peer that sends these bytes.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use rolemint::proxy::session::handshake::{self, Startup};
use rolemint::proxy::session::wire::StartupPacket;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A peer in memory: reads from the fuzz input, writes go nowhere.
struct Peer<'a> {
    input: &'a [u8],
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// In-memory I/O never waits: one poll finishes the future.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory read waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut peer = Peer { input: data };
    let Ok(Ok(packet)) = now(handshake::read_startup_packet(&mut peer)) else {
        return;
    };
    let startup = match packet {
        StartupPacket::Startup { minor, params } => match Startup::from_params(minor, params) {
            Ok(startup) => startup,
            Err(_) => return,
        },
        _ => return,
    };
    if let Ok(token) = now(handshake::read_token(&mut peer, &startup, 4096)) {
        assert!(token.expose().len() <= 4096);
    }
});

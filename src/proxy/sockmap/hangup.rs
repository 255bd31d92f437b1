//! Waiting for either socket of a spliced pair to hang up, without waking
//! for the traffic the kernel moves between them.
//!
//! A socket in the sockmap still signals "readable" to its pollers for every
//! segment the verdict program redirects, though a read finds nothing. So
//! the pair is not watched through tokio's reactor (which registers for
//! readable and writable) but through an epoll instance of its own that asks
//! for `EPOLLRDHUP` only (and, implicitly, `EPOLLERR` and `EPOLLHUP`):
//! epoll filters the data wakeups out in the kernel. The tokio reactor
//! watches that epoll fd, which becomes readable only once a hang-up is
//! ready.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Which socket hung up first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

struct Poller(Epoll);

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// The hang-up watch of one spliced pair.
pub struct HangUp {
    poller: AsyncFd<Poller>,
}

impl HangUp {
    /// Watches `client` and `backend`, which must stay open while this
    /// lives (the session owns them and drops this first).
    pub fn new(client: RawFd, backend: RawFd) -> io::Result<HangUp> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (fd, side) in [(client, Side::Client), (backend, Side::Backend)] {
            // SAFETY: the caller keeps both fds open for our lifetime.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLRDHUP, side as u64))?;
        }
        // SAFETY: the epoll fd is owned by the Poller inside the AsyncFd
        // and closed only when the AsyncFd (deregistered first) drops it.
        let poller = unsafe { AsyncFd::register_with_interest(Poller(epoll), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(HangUp { poller })
    }

    /// Resolves once either socket has hung up (or failed).
    pub async fn wait(&self) -> io::Result<Side> {
        loop {
            let mut ready = self.poller.readable().await?;
            let mut events = [EpollEvent::empty(); 2];
            let n = self
                .poller
                .get_ref()
                .0
                .wait(&mut events, EpollTimeout::ZERO)?;
            if let Some(event) = events[..n].first() {
                return Ok(if event.data() == Side::Client as u64 {
                    Side::Client
                } else {
                    Side::Backend
                });
            }
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn data_does_not_wake_it_and_a_close_does() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client_peer = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, _) = listener.accept().await.unwrap();
        let backend_peer = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (backend, _) = listener.accept().await.unwrap();
        let watch = HangUp::new(client.as_raw_fd(), backend.as_raw_fd()).unwrap();

        client_peer
            .write_all(b"bytes, not a hang-up")
            .await
            .unwrap();
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), watch.wait()).await;
        assert!(early.is_err(), "woke for data: {early:?}");

        drop(backend_peer);
        let side = tokio::time::timeout(std::time::Duration::from_secs(10), watch.wait())
            .await
            .expect("a close wakes it")
            .unwrap();
        assert_eq!(side, Side::Backend);
    }
}

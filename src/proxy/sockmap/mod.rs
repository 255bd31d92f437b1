//! The kernel splice: a session whose two legs are plaintext TCP can have
//! its bytes forwarded by the kernel, so that none of its steady state
//! crosses into user space (`[proxy] kernel_splice`).
//!
//! One BPF `SOCKHASH` and one `sk_skb` verdict program (`program.rs`), both
//! made once at startup through libbpf's low-level API: no object file, no
//! BPF toolchain. A spliced pair is two entries, each socket under its
//! peer's socket cookie; the program redirects every segment that arrives on
//! one socket out of the other. [`Spliced`] removes both entries when it is
//! dropped.
//!
//! The session still owns both sockets and watches them with
//! [`HangUp`] (`hangup.rs`), which wakes for a hang-up only, not for the
//! traffic the kernel moves. Byte counts come from `TCP_INFO`: what each
//! socket received while spliced.
//!
//! Needs CAP_BPF and CAP_NET_ADMIN (root, or the two capabilities on the
//! binary); without them [`Sockmap::new`] fails and sessions are relayed in
//! user space.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_sys as sys;

mod hangup;
mod program;

pub use hangup::{HangUp, Side};

/// `SO_COOKIE` (linux/asm-generic/socket.h).
const SO_COOKIE: libc::c_int = 57;

#[derive(Debug, thiserror::Error)]
pub enum SockmapError {
    /// The map or the program could not be made: no BPF here, or not
    /// permitted. Sessions are relayed in user space.
    #[error("BPF sockmap unavailable ({what}): {source}")]
    Unavailable {
        what: &'static str,
        source: io::Error,
    },
    /// One session's sockets could not be spliced; it is relayed in user
    /// space.
    #[error("socket not spliced: {0}")]
    Splice(io::Error),
}

/// The map and its attached program.
pub struct Sockmap {
    map: OwnedFd,
    // Attached to the map; closing it with the map detaches it.
    _program: OwnedFd,
}

impl std::fmt::Debug for Sockmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockmap")
            .field("map_fd", &self.map.as_raw_fd())
            .finish()
    }
}

/// The result of a libbpf call: a new fd, or the errno it failed with.
fn fd_or_error(ret: libc::c_int, what: &'static str) -> Result<OwnedFd, SockmapError> {
    if ret < 0 {
        return Err(SockmapError::Unavailable {
            what,
            source: io::Error::from_raw_os_error(-ret),
        });
    }
    // SAFETY: libbpf returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

impl Sockmap {
    /// Makes the map (room for `sessions` spliced pairs) and loads and
    /// attaches the program.
    pub fn new(sessions: u32) -> Result<Sockmap, SockmapError> {
        let entries = sessions.saturating_mul(2).max(2);
        // SAFETY: plain FFI calls with valid pointers; libbpf copies what
        // it needs before returning.
        let map = unsafe {
            sys::bpf_map_create(
                sys::BPF_MAP_TYPE_SOCKHASH,
                c"rolemint_splice".as_ptr(),
                8,
                4,
                entries,
                std::ptr::null(),
            )
        };
        let map = fd_or_error(map, "map")?;
        let insns = program::verdict(map.as_raw_fd());
        // SAFETY: as above; `insns` outlives the call.
        let prog = unsafe {
            sys::bpf_prog_load(
                sys::BPF_PROG_TYPE_SK_SKB,
                c"rolemint_splice".as_ptr(),
                c"GPL".as_ptr(),
                insns.as_ptr(),
                insns.len() as _,
                std::ptr::null_mut(),
            )
        };
        let program = fd_or_error(prog, "program")?;
        // SAFETY: both fds are ours and open.
        let attached = unsafe {
            sys::bpf_prog_attach(
                program.as_raw_fd(),
                map.as_raw_fd(),
                sys::BPF_SK_SKB_VERDICT,
                0,
            )
        };
        if attached < 0 {
            return Err(SockmapError::Unavailable {
                what: "attach",
                source: io::Error::from_raw_os_error(-attached),
            });
        }
        Ok(Sockmap {
            map,
            _program: program,
        })
    }

    /// Hands the pair to the kernel: from now on what arrives on either
    /// socket leaves through the other. Both must be connected TCP sockets
    /// with nothing unread (the caller has relayed everything so far).
    pub fn splice(&self, client: RawFd, backend: RawFd) -> Result<Spliced<'_>, SockmapError> {
        let cookie = |fd| socket_cookie(fd).map_err(SockmapError::Splice);
        let (c, b) = (cookie(client)?, cookie(backend)?);
        let start = (received(client), received(backend));
        let mut spliced = Spliced {
            map: self,
            keys: Vec::with_capacity(2),
            fds: (client, backend),
            start,
        };
        // Each socket under its peer's cookie. On failure the guard
        // removes what was inserted.
        self.insert(b, client).map_err(SockmapError::Splice)?;
        spliced.keys.push(b);
        self.insert(c, backend).map_err(SockmapError::Splice)?;
        spliced.keys.push(c);
        // Bytes that arrived before the insert are not redirected until
        // more arrive; the caller relays such a pair in user space.
        if unread(client) > 0 || unread(backend) > 0 {
            return Err(SockmapError::Splice(io::Error::other(
                "bytes were waiting on a socket",
            )));
        }
        Ok(spliced)
    }

    fn insert(&self, key: u64, fd: RawFd) -> io::Result<()> {
        let value = fd as u32;
        // SAFETY: key and value point to live values of the map's sizes.
        let ret = unsafe {
            sys::bpf_map_update_elem(
                self.map.as_raw_fd(),
                (&key as *const u64).cast(),
                (&value as *const u32).cast(),
                sys::BPF_NOEXIST.into(),
            )
        };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(())
    }

    fn remove(&self, key: u64) {
        // SAFETY: key points to a live u64. A missing key (ENOENT: the
        // socket closed, which removes it) is not an error here.
        unsafe {
            sys::bpf_map_delete_elem(self.map.as_raw_fd(), (&key as *const u64).cast());
        }
    }
}

/// A spliced pair; dropping it gives both sockets back to user space.
pub struct Spliced<'a> {
    map: &'a Sockmap,
    keys: Vec<u64>,
    fds: (RawFd, RawFd),
    start: (u64, u64),
}

impl Spliced<'_> {
    /// Bytes the kernel moved since the splice began: (client to backend,
    /// backend to client), as TCP counts what each socket received.
    pub fn traffic(&self) -> (u64, u64) {
        (
            received(self.fds.0).saturating_sub(self.start.0),
            received(self.fds.1).saturating_sub(self.start.1),
        )
    }
}

impl Drop for Spliced<'_> {
    fn drop(&mut self) {
        for key in &self.keys {
            self.map.remove(*key);
        }
    }
}

fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the out pointers are valid for the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Bytes of data a TCP socket received; 0 when it cannot be read.
/// `tcpi_bytes_received` counts the peer's FIN as one more byte (it is the
/// distance `rcv_nxt` moved, and a FIN takes a sequence number): without
/// taking it off, a leg whose peer hung up looks one byte short of
/// forwarded, and the end of the splice waited its whole settle timeout
/// before the client saw its EOF.
fn received(fd: RawFd) -> u64 {
    tcp_info(fd).map_or(0, |i| {
        let fin = u64::from(peer_sent_fin(i.tcpi_state));
        i.tcpi_bytes_received.saturating_sub(fin)
    })
}

/// Whether a socket in TCP state `state` (of a socket rolemint has not
/// closed) has received its peer's FIN: CLOSE_WAIT, LAST_ACK or CLOSING
/// (`include/net/tcp_states.h`).
fn peer_sent_fin(state: u8) -> bool {
    const TCP_CLOSE_WAIT: u8 = 8;
    const TCP_LAST_ACK: u8 = 9;
    const TCP_CLOSING: u8 = 11;
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}

/// `tcpi_bytes_acked` of a TCP socket: what its peer acknowledged.
pub fn bytes_acked(fd: RawFd) -> u64 {
    tcp_info(fd).map_or(0, |i| i.tcpi_bytes_acked)
}

/// Bytes written to a TCP socket and not yet acknowledged (`SIOCOUTQ`).
pub fn unacked(fd: RawFd) -> u64 {
    queued(fd, libc::TIOCOUTQ)
}

/// Bytes received by a TCP socket and not yet read (`SIOCINQ`).
fn unread(fd: RawFd) -> u64 {
    queued(fd, libc::FIONREAD)
}

fn queued(fd: RawFd, request: libc::Ioctl) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: the request writes one int.
    let ret = unsafe { libc::ioctl(fd, request, &mut n) };
    if ret < 0 {
        return 0;
    }
    u64::try_from(n).unwrap_or(0)
}

fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the out pointers are valid for the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (ret == 0).then_some(info)
}

//! The backend side: log in to PostgreSQL as the minted role.
//!
//! rolemint is a SCRAM-SHA-256 client here. What to answer is decided by
//! the sans-IO [`flow::Flow`] (which refuses a backend that asks for
//! a cleartext or MD5 password, or lets the role in without asking, unless
//! `backend.allow_weak_auth` is set: it means pg_hba.conf is not what the
//! operator thinks it is); this file opens connections and moves bytes.
//!
//! The login reads up to ReadyForQuery and keeps what it read, so the relay
//! can forward it with the BackendKeyData swapped.

pub mod flow;
pub mod params;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use self::flow::{LoginError, Step};
use crate::config::BackendConfig;
use crate::secret::Secret;
use crate::tls::{backend_server_name, BackendStream, MaybeTls, Socket};

/// Longest cancel secret protocol 3.2 allows (PostgreSQL 18's
/// `MAX_CANCEL_KEY_LENGTH`).
pub const MAX_CANCEL_SECRET: usize = 256;
/// Shortest cancel secret: protocol 3.0's four bytes.
pub const MIN_CANCEL_SECRET: usize = 4;

/// The secret half of a cancel key: 4 bytes in protocol 3.0, 4 to 256 in
/// 3.2 (PostgreSQL 18 sends 32). Shared, so copies of a key are cheap.
#[derive(Clone)]
pub struct CancelSecret(Bytes);

impl CancelSecret {
    /// `None` outside 4..=256 bytes.
    pub fn new(secret: &[u8]) -> Option<CancelSecret> {
        (MIN_CANCEL_SECRET..=MAX_CANCEL_SECRET)
            .contains(&secret.len())
            .then(|| CancelSecret(Bytes::copy_from_slice(secret)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Equal to `other`, compared in constant time (the length is not
    /// secret: the protocol version tells it).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.len() && bool::from(self.0.as_ref().ct_eq(other))
    }
}

impl PartialEq for CancelSecret {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other.as_bytes())
    }
}

impl Eq for CancelSecret {}

impl std::fmt::Debug for CancelSecret {
    // By hand: the secret is what makes a cancel request genuine.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelSecret({} bytes, ***)", self.0.len())
    }
}

/// Where a cancel for one session goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BackendKey {
    pub process_id: i32,
    pub secret: CancelSecret,
}

/// Largest message accepted from the backend before the splice; startup
/// messages are small, a megabyte is generous.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("backend refused TLS")]
    TlsRefused,
    #[error("TLS to backend: {0}")]
    Tls(String),
    #[error("backend I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend sent {0} unencrypted byte(s) after accepting TLS (CVE-2021-23222)")]
    BytesAfterTlsAccept(usize),
    #[error("backend login: {0}")]
    Login(#[from] LoginError),
    #[error("protocol error from backend: {0}")]
    Protocol(String),
}

/// A logged-in backend connection, stopped just after ReadyForQuery.
pub struct Login {
    pub stream: BackendStream,
    /// ParameterStatus and NoticeResponse messages, as received, to forward.
    pub startup: BytesMut,
    /// The backend's key, for cancel requests.
    pub key: BackendKey,
    /// The ReadyForQuery message, forwarded last.
    pub ready: Bytes,
    /// Bytes read past ReadyForQuery (an early notification, say): the
    /// client must get them before anything spliced.
    pub leftover: BytesMut,
}

// The backend's cancel key is a secret: Debug names nothing.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").finish_non_exhaustive()
    }
}

/// Opens a TCP connection to the backend, with TLS when configured.
pub async fn connect(
    config: &BackendConfig,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<BackendStream, BackendError> {
    let addr = format!("{}:{}", config.host, config.port);
    let tcp = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(BackendError::Connect { addr, source }),
        Err(_) => return Err(BackendError::ConnectTimeout(addr)),
    };
    crate::tls::tune_tcp(&tcp);
    let Some(tls) = tls else {
        return Ok(MaybeTls::Plain(tcp));
    };
    let mut tcp = tcp;
    // Direct TLS (PostgreSQL 17+): the ClientHello is the first byte sent.
    if config.sslnegotiation == crate::config::SslNegotiation::Postgres {
        match tokio::time::timeout(config.connect_timeout, request_tls(&mut tcp)).await {
            Ok(result) => result?,
            Err(_) => return Err(BackendError::ConnectTimeout(addr)),
        }
    }
    let name = backend_server_name(&config.host).map_err(|e| BackendError::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
    let stream = tokio::time::timeout(
        config.connect_timeout,
        connector.connect(name, Socket::from(tcp)),
    )
    .await
    .map_err(|_| BackendError::ConnectTimeout(addr))?
    .map_err(|e| BackendError::Tls(e.to_string()))?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// SSLRequest, then the backend's one-byte answer. Bytes the backend sent
/// behind its 'S' were never encrypted: a man in the middle injected them
/// (CVE-2021-23222). They are never fed to TLS as if they were; the
/// connection is aborted. Only what arrived with the answer can be checked
/// (later bytes are the TLS handshake's), as libpq does.
async fn request_tls(tcp: &mut TcpStream) -> Result<(), BackendError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(BackendError::TlsRefused);
    }
    // Timeout polls the peek once before its (zero) deadline: this asks
    // "is anything already there?" without waiting.
    let mut extra = [0u8; 64];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, tcp.peek(&mut extra)).await {
        if n > 0 {
            return Err(BackendError::BytesAfterTlsAccept(n));
        }
    }
    Ok(())
}

/// Sends a CancelRequest for `key` on a fresh connection.
pub async fn cancel(
    config: &BackendConfig,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    key: BackendKey,
) -> Result<(), BackendError> {
    let mut stream = connect(config, tls).await?;
    let buf = cancel_request(&key);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    // PostgreSQL answers nothing and closes; wait for that, briefly.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

/// The request code of a CancelRequest (1234.5678).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A CancelRequest carrying `key`, whatever its secret's length (a
/// PostgreSQL 18 backend that spoke 3.2 with us gave a longer one).
fn cancel_request(key: &BackendKey) -> BytesMut {
    use bytes::BufMut;
    let secret = key.secret.as_bytes();
    let mut buf = BytesMut::with_capacity(12 + secret.len());
    buf.put_u32(12 + secret.len() as u32);
    buf.put_u32(CANCEL_REQUEST_CODE);
    buf.put_i32(key.process_id);
    buf.extend_from_slice(secret);
    buf
}

/// Logs in as `user` and reads through ReadyForQuery: the [`flow::Flow`]
/// decides, this moves its bytes.
pub async fn login(
    mut stream: BackendStream,
    user: &str,
    password: &Secret,
    database: &str,
    forward: &[(String, String)],
    backend: &BackendConfig,
) -> Result<Login, BackendError> {
    let binding = flow::Binding {
        mode: backend.channel_binding,
        end_point: stream.tls_server_end_point(),
    };
    let mut flow = flow::Flow::new(user, password, backend.allow_weak_auth).with_binding(binding);
    stream
        .write_all(&flow.startup_message(database, forward)?)
        .await?;
    let mut reader = MessageReader::default();
    loop {
        let frame = reader.next(&mut stream).await?;
        match flow.step(&frame)? {
            Step::Send(out) => stream.write_all(&out).await?,
            Step::Read => {}
            Step::Ready(ready) => {
                return Ok(Login {
                    stream,
                    startup: ready.startup,
                    key: ready.key,
                    ready: ready.ready,
                    leftover: reader.buf,
                })
            }
        }
    }
}

/// Runs `sql` (one simple query of `SET`s) on a logged-in backend that is
/// idle at ReadyForQuery, and folds what it answers into `login` as if the
/// settings had been startup parameters: each ParameterStatus replaces the
/// one of the same name in `login.startup` (the client hears each setting
/// once, with its final value), notices are kept, and the new
/// ReadyForQuery replaces the old. For a pooled backend claimed by a
/// session (`warm_pool.rs`), whose client sent startup parameters the
/// pooled login could not know.
///
/// An ErrorResponse is an error: the caller discards the backend.
pub async fn apply_settings(login: &mut Login, sql: &str) -> Result<(), BackendError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out)?;
    login.stream.write_all(&out).await?;
    login.stream.flush().await?;
    let mut reader = MessageReader {
        buf: std::mem::take(&mut login.leftover),
    };
    loop {
        let frame = reader.next(&mut login.stream).await?;
        match frame[0] {
            b'C' => {}
            b'S' => fold_parameter_status(&mut login.startup, &frame),
            b'N' if login.startup.len() + frame.len() <= flow::MAX_STARTUP_BYTES => {
                login.startup.extend_from_slice(&frame)
            }
            b'N' => {}
            b'E' => {
                let text = String::from_utf8_lossy(&frame[5..]).replace('\0', " ");
                return Err(BackendError::Protocol(format!(
                    "applying startup parameters: {}",
                    text.trim()
                )));
            }
            b'Z' => {
                login.ready = frame;
                login.leftover = reader.buf;
                return Ok(());
            }
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} answering SET",
                    char::from(other)
                )))
            }
        }
    }
}

/// The parameter name of a ParameterStatus message (tag, length, name NUL
/// value NUL).
fn parameter_name(message: &[u8]) -> Option<&[u8]> {
    let body = message.get(5..)?;
    body.iter().position(|&b| b == 0).map(|end| &body[..end])
}

/// Appends ParameterStatus `message` to `startup`, dropping an earlier one
/// of the same parameter (sans IO).
pub fn fold_parameter_status(startup: &mut BytesMut, message: &[u8]) {
    let Some(name) = parameter_name(message) else {
        return;
    };
    let mut kept = BytesMut::with_capacity(startup.len() + message.len());
    let mut rest = &startup[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(one) = rest.get(..len + 1) else {
            break;
        };
        if !(one[0] == b'S' && parameter_name(one) == Some(name)) {
            kept.extend_from_slice(one);
        }
        rest = &rest[len + 1..];
    }
    kept.extend_from_slice(rest);
    kept.extend_from_slice(message);
    *startup = kept;
}

/// Reads whole messages into one buffer, with large reads.
#[derive(Default)]
struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    async fn next<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<Bytes, BackendError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if !(4..=MAX_STARTUP_MESSAGE).contains(&len) {
                    return Err(BackendError::Protocol(format!("message length {len}")));
                }
                if self.buf.len() > len {
                    return Ok(self.buf.split_to(len + 1).freeze());
                }
                self.buf.reserve(len + 1 - self.buf.len());
            } else {
                self.buf.reserve(4096);
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, value: &str) -> Vec<u8> {
        let body = format!("{name}\0{value}\0");
        let mut m = vec![b'S'];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body.as_bytes());
        m
    }

    #[test]
    fn a_later_parameter_status_replaces_the_earlier_one() {
        let mut startup = BytesMut::new();
        startup.extend_from_slice(&status("application_name", ""));
        startup.extend_from_slice(&status("TimeZone", "UTC"));
        fold_parameter_status(&mut startup, &status("application_name", "pgbench"));
        let mut want = status("TimeZone", "UTC");
        want.extend_from_slice(&status("application_name", "pgbench"));
        assert_eq!(&startup[..], &want[..]);
        // A new parameter is appended; nothing else changes.
        fold_parameter_status(&mut startup, &status("DateStyle", "ISO"));
        want.extend_from_slice(&status("DateStyle", "ISO"));
        assert_eq!(&startup[..], &want[..]);
        // A malformed message is ignored.
        fold_parameter_status(&mut startup, b"S\0\0");
        assert_eq!(&startup[..], &want[..]);
    }
}

//! The backend side: log in to PostgreSQL as the minted role.
//!
//! rolemint is a SCRAM-SHA-256 client here (the sans-IO `ScramSha256` of
//! `postgres-protocol` does the cryptography; this file moves its messages).
//! A backend that asks for a cleartext or MD5 password, or lets the role in
//! without asking, is refused unless `backend.allow_weak_auth` is set: it
//! means pg_hba.conf is not what the operator thinks it is.
//!
//! The login reads up to ReadyForQuery and keeps what it read, so the relay
//! can forward it with the BackendKeyData swapped.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire;
use crate::cancel::BackendKey;
use crate::config::BackendConfig;
use crate::secret::Secret;
use crate::tls::{backend_server_name, BackendStream, MaybeTls};

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
    #[error("backend error {code}: {message}")]
    Server { code: String, message: String },
    #[error("backend asked for {0}, refused (set backend.allow_weak_auth to permit)")]
    WeakAuth(&'static str),
    #[error("SCRAM exchange failed: {0}")]
    Scram(String),
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
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(BackendError::TlsRefused);
    }
    let name = backend_server_name(&config.host).map_err(|e| BackendError::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
    let stream = tokio::time::timeout(config.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| BackendError::ConnectTimeout(addr))?
        .map_err(|e| BackendError::Tls(e.to_string()))?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// Sends a CancelRequest for `key` on a fresh connection.
pub async fn cancel(
    config: &BackendConfig,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    key: BackendKey,
) -> Result<(), BackendError> {
    let mut stream = connect(config, tls).await?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(key.process_id, key.secret_key, &mut buf);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    // PostgreSQL answers nothing and closes; wait for that, briefly.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

/// Logs in as `user` and reads through ReadyForQuery.
pub async fn login(
    mut stream: BackendStream,
    user: &str,
    password: &Secret,
    database: &str,
    forward: &[(String, String)],
    allow_weak_auth: bool,
) -> Result<Login, BackendError> {
    let mut out = BytesMut::new();
    let params = [("user", user), ("database", database)]
        .into_iter()
        .chain(forward.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut out)?;
    stream.write_all(&out).await?;

    let mut reader = MessageReader::default();
    let mut scram: Option<ScramSha256> = None;
    let mut authenticated_by_password = false;
    let mut startup = BytesMut::new();
    let mut key = None;
    loop {
        let (tag, body) = reader.next(&mut stream).await?;
        match tag {
            b'R' => {
                let mut b = &body[..];
                if b.len() < 4 {
                    return Err(BackendError::Protocol(
                        "short authentication message".into(),
                    ));
                }
                let code = b.get_i32();
                out.clear();
                match code {
                    0 => {
                        if !authenticated_by_password && !allow_weak_auth {
                            return Err(BackendError::WeakAuth("no authentication (trust)"));
                        }
                        if scram.is_some() {
                            // AuthenticationOk before SASLFinal would skip
                            // the server-signature check.
                            return Err(BackendError::Scram(
                                "authentication ended before the server proved itself".into(),
                            ));
                        }
                        continue;
                    }
                    3 if allow_weak_auth => {
                        frontend::password_message(password.expose().as_bytes(), &mut out)?;
                        authenticated_by_password = true;
                    }
                    3 => return Err(BackendError::WeakAuth("a cleartext password")),
                    5 if allow_weak_auth => {
                        let salt: [u8; 4] = b
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| BackendError::Protocol("short MD5 salt".into()))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            password.expose().as_bytes(),
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut out)?;
                        authenticated_by_password = true;
                    }
                    5 => return Err(BackendError::WeakAuth("an MD5 password")),
                    10 => {
                        let offers_scram = b
                            .split(|c| *c == 0)
                            .any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                        if !offers_scram {
                            return Err(BackendError::Scram(
                                "backend does not offer SCRAM-SHA-256".into(),
                            ));
                        }
                        let s = ScramSha256::new(
                            password.expose().as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| {
                            BackendError::Protocol("SASLContinue without SASL".into())
                        })?;
                        s.update(b)
                            .map_err(|e| BackendError::Scram(e.to_string()))?;
                        frontend::sasl_response(s.message(), &mut out)?;
                    }
                    12 => {
                        let mut s = scram.take().ok_or_else(|| {
                            BackendError::Protocol("SASLFinal without SASL".into())
                        })?;
                        // Verifies the server signature: the backend knew
                        // the verifier we minted.
                        s.finish(b)
                            .map_err(|e| BackendError::Scram(e.to_string()))?;
                        authenticated_by_password = true;
                        continue;
                    }
                    other => {
                        return Err(BackendError::Protocol(format!(
                            "unsupported authentication request {other}"
                        )))
                    }
                }
                stream.write_all(&out).await?;
            }
            b'S' | b'N' => wire::message_with_body(tag, &body, &mut startup),
            b'K' => {
                let mut b = &body[..];
                if b.len() != 8 {
                    return Err(BackendError::Protocol("malformed BackendKeyData".into()));
                }
                key = Some(BackendKey {
                    process_id: b.get_i32(),
                    secret_key: b.get_i32(),
                });
            }
            b'E' => return Err(server_error(&body)),
            b'Z' => {
                let key = key.ok_or_else(|| {
                    BackendError::Protocol("no BackendKeyData before ReadyForQuery".into())
                })?;
                let mut ready = BytesMut::new();
                wire::message_with_body(tag, &body, &mut ready);
                return Ok(Login {
                    stream,
                    startup,
                    key,
                    ready: ready.freeze(),
                    leftover: reader.buf,
                });
            }
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )))
            }
        }
    }
}

/// The SQLSTATE and message of an ErrorResponse body, for the log.
fn server_error(body: &[u8]) -> BackendError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    BackendError::Server { code, message }
}

/// Reads whole messages into one buffer, with large reads.
#[derive(Default)]
struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(u8, Bytes), BackendError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if !(4..=MAX_STARTUP_MESSAGE).contains(&len) {
                    return Err(BackendError::Protocol(format!("message length {len}")));
                }
                if self.buf.len() > len {
                    let mut msg = self.buf.split_to(len + 1);
                    let tag = msg[0];
                    msg.advance(5);
                    return Ok((tag, msg.freeze()));
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

    #[test]
    fn error_fields_are_extracted() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
        match server_error(body) {
            BackendError::Server { code, message } => {
                assert_eq!(code, "28P01");
                assert_eq!(message, "password authentication failed");
            }
            e => panic!("{e}"),
        }
    }
}
